"""Resumable runs: a run killed by SIGTERM after a checkpoint resumes to exactly the result of an
uninterrupted run (parameters, optimiser state, lr schedule, RNG, history); bad checkpoints
give clear errors, never a silent restart."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffvc.optim import CheckpointError, Free, ParameterSet, optimize, run_context

SCRIPT = str(Path(__file__).with_name("problems.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _run(out, resume, iters=12, sleep=0.0, wait=True):
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = [sys.executable, SCRIPT, "resumable", str(out), "1" if resume else "0", str(iters), str(sleep)]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    full = _run(tmp_path / "full", resume=False)
    # the same run, killed by SIGTERM once its first checkpoint (iteration 3 of 12) exists
    p = _run(tmp_path / "killed", resume=False, sleep=0.4, wait=False)
    ck = tmp_path / "killed" / "checkpoints" / "00_stage_1.pt"
    t0 = time.monotonic()
    while not ck.exists():
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM          # it left the way SIGTERM asks
    saved = torch.load(ck, weights_only=False)
    assert not saved["finished"] and 3 <= saved["next"] < 12
    resumed = _run(tmp_path / "killed", resume=True)
    assert resumed == full                               # bit for bit: params, both loss histories


def test_resume_errors_are_clear(tmp_path):
    ps = ParameterSet(x=Free([1.0, 2.0]))
    loss = lambda: (ps["x"] ** 2).sum()  # noqa: E731
    with pytest.raises(CheckpointError, match="no checkpoint"):
        with run_context(tmp_path / "empty", resume=True):
            pass
    with run_context(tmp_path / "a", every=2):
        optimize(ps, loss, iters=4, progress=False, desc="fit")
    # another problem (other parameter shape) in the same directory
    other = ParameterSet(x=Free([1.0, 2.0, 3.0]))
    with pytest.raises(CheckpointError, match="another problem: shapes"):
        with run_context(tmp_path / "a", resume=True):
            optimize(other, lambda: (other["x"] ** 2).sum(), iters=4, progress=False, desc="fit")
    (tmp_path / "a" / "00_fit.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="00_fit.pt is corrupted"):
        with run_context(tmp_path / "a", resume=True):
            optimize(ps, loss, iters=4, progress=False, desc="fit")


def test_a_finished_stage_is_not_run_again(tmp_path):
    ps = ParameterSet(x=Free([1.0, 2.0]))
    calls = []

    def loss():
        calls.append(1)
        return (ps["x"] ** 2).sum()

    with run_context(tmp_path, every=2):
        h = optimize(ps, loss, iters=5, lr=0.1, progress=False, desc="fit")
    final = ps["x"].detach().clone()
    ps2 = ParameterSet(x=Free([1.0, 2.0]))
    n = len(calls)
    with run_context(tmp_path, resume=True):
        h2 = optimize(ps2, loss, iters=5, lr=0.1, progress=False, desc="fit")
    assert len(calls) == n and h2.loss == h.loss and torch.equal(ps2["x"].detach(), final)
