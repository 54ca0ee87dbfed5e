"""The cartpole example: the quick path's machinery (a few iterations) in the default suite, the
whole quick run (pole ends upright) marked slow."""

import json
import math

import pytest
import torch

from diffvc.examples import RunConfig, run_example
from diffvc.examples.cartpole import T, controls, cost, make_model, simulate


def test_swingup_gradient_reaches_every_knot_and_a_few_iterations_lower_the_cost(tmp_path):
    model = make_model()
    a = (0.5 * torch.randn(2, 20)).requires_grad_()
    c = cost(simulate(model, a)).sum()
    g, = torch.autograd.grad(c, a)
    assert torch.isfinite(g).all() and (g.abs() > 0).all()
    assert controls(a).shape == (2, T) and float(controls(a.detach()).abs().max()) < 1
    m = run_example("cartpole", RunConfig(out=tmp_path, quick=True, iters=2, progress=False))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["iterations"] == 2 and saved["final_cost_best"] <= saved["initial_cost_best"]
    for f in ("curves.png", "trajectory.png", "frames.png", "swingup.gif"):
        assert (tmp_path / f).stat().st_size > 1000
    assert set(m) >= {"final_angle_from_upright_deg", "final_angular_velocity_rad_s", "final_cart_velocity_m_s"}


@pytest.mark.slow
def test_quick_swingup_ends_upright_and_nearly_still(tmp_path):
    m = run_example("cartpole", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["final_angle_from_upright_deg"] < 10
    assert abs(m["final_angular_velocity_rad_s"]) < 0.5
