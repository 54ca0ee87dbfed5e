import json

import pytest
import torch

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example
from diffvc.examples.mass_spring import WalkerController, make_robot, simulate


def test_walker_gradient_is_finite_and_a_few_steps_walk_forward(tmp_path):
    """Short version of ``diffvc run mass_spring --quick``: 6 Adam iterations already move the
    robot forward by more than the initial controller's twitch; outputs are written."""
    metrics = run_example("mass_spring", RunConfig(out=tmp_path, quick=True, iters=6, progress=False))
    assert metrics["best_training_distance"] > abs(metrics["initial_distance"]) + 0.01
    assert metrics["distance"] == pytest.approx(metrics["best_training_distance"], rel=1e-4, abs=1e-5)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"distance", "body_length", "initial_distance", "ratio"} <= saved.keys()
    for f in ("curves.png", "walk.gif", "walk.png"):
        assert (tmp_path / f).stat().st_size > 1000
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move


def test_walker_checkpointed_gradient_equals_full_tape():
    torch.manual_seed(0)
    model, x0, act, n_act = make_robot(torch.float64)
    ctrl = WalkerController(x0.shape[0], n_act, act, torch.float64, init_scale=1.0)
    grads = []
    for ck in (None, 7):
        d = simulate(model, x0, ctrl, 30, checkpoint_every=ck)
        grads.append(torch.autograd.grad(d, list(ctrl.parameters())))
    for a, b in zip(*grads):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.slow
def test_mass_spring_quick_walks_more_than_a_body_length(tmp_path):
    metrics = run_example("mass_spring", RunConfig(out=tmp_path, quick=True, progress=False))
    assert metrics["distance"] > metrics["body_length"]
    assert metrics["distance"] >= 5 * abs(metrics["initial_distance"])
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
