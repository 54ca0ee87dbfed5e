"""Data parallel on torch.distributed: two gloo processes on loopback, each with half of the
views, give the single-process gradient (all-reduced) and the same optimisation result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from diffvc.optim import distributed

SCRIPT = str(Path(__file__).with_name("problems.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _sharded(nproc, tmp_path):
    out = tmp_path / f"n{nproc}.json"
    code = (f"import runpy, sys; sys.argv = [{SCRIPT!r}, 'sharded', '5'];"
            f"import contextlib, io; buf = io.StringIO()\n"
            f"with contextlib.redirect_stdout(buf): runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
            f"import os\n"
            f"if os.environ.get('RANK', '0') == '0': open({str(out)!r}, 'w').write(buf.getvalue())")
    status = distributed.launch(["-c", code], nproc, threads=1, timeout_s=240,
                                env={"PYTHONPATH": ROOT, "GLOO_SOCKET_IFNAME": "lo"})
    assert status == 0
    return json.loads(out.read_text().strip().splitlines()[-1])


def test_two_gloo_processes_all_reduce_to_the_single_process_gradient(tmp_path):
    one = _sharded(1, tmp_path)
    two = _sharded(2, tmp_path)
    assert one["world"] == 1 and two["world"] == 2
    torch.testing.assert_close(torch.tensor(two["grad"]), torch.tensor(one["grad"]), rtol=1e-12, atol=1e-12)
    # every step used the summed gradient: the same iterates and the same (summed) losses
    torch.testing.assert_close(torch.tensor(two["x"]), torch.tensor(one["x"]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-12, atol=1e-12)


def test_shard_and_seeds_do_not_depend_on_the_process_count():
    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]      # one process: everything
    assert distributed.rank_seed(7, 3) == distributed.rank_seed(7, 3) != distributed.rank_seed(7, 4)
    status = distributed.launch(["-c", "import sys; sys.exit(3)"], 2, timeout_s=60)
    assert status == 3                                                  # a failing rank is reported
