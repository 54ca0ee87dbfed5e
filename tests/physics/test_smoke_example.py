"""The smoke-control example's quick path (one iteration): files written, loss going down,
the projected velocity divergence free."""

import json

import torch

from diffvc.examples import RunConfig, run_example


def test_smoke_example_quick(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = run_example("smoke", RunConfig(out=tmp_path, quick=True, iters=1, progress=False))
    finally:
        torch.set_num_threads(n)
    for f in ("smoke.gif", "panels.png", "curves.png", "metrics.json"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 1
    assert m["final_loss"] < m["initial_loss"]
    assert m["final_max_abs_divergence"] < 1e-4
