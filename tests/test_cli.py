import subprocess
import sys

import pytest

from diffvc.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "diffvc.cli", *args], capture_output=True, text=True)


def test_list_shows_examples(capsys):
    assert main(["list"]) == 0
    assert "bounce" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "nope"], "unknown example"),
        (["run", "bounce", "--iters", "0"], "positive integer"),
        (["run", "bounce", "--device", "tpu"], "invalid choice"),
        (["bench", "nope"], "unknown benchmark"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = _run(*args)
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cuda_without_cuda_is_a_clear_error():
    from diffvc._kernels import cuda_available

    r = _run("run", "bounce", "--device", "cuda", "--iters", "1", "--out", "/tmp/diffvc_cli_cuda")
    if cuda_available():
        assert r.returncode == 0
    else:
        assert r.returncode == 2 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_resume_and_nproc_errors_are_one_clear_line(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "diffvc.cli", "run", *args], capture_output=True, text=True,
                              timeout=300)

    r = run("bounce", "--resume", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "holds no checkpoints" in r.stderr and "Traceback" not in r.stderr
    r = run("bounce", "--nproc", "2")
    assert r.returncode == 2 and "does not split its work" in r.stderr
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    r = run("bounce", "--resume", str(tmp_path / "run"))
    assert r.returncode == 2 and "no checkpoint in" in r.stderr and "Traceback" not in r.stderr


def test_a_run_called_from_python_leaves_the_garbage_collector_as_it_was(tmp_path):
    """Only the command itself (argv from the command line) pauses the cyclic GC during its
    imports and freezes what they built; main(argv) from Python changes nothing."""
    import gc

    frozen = gc.get_freeze_count()
    assert main(["run", "bounce", "--iters", "2", "--no-progress", "--out", str(tmp_path)]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
