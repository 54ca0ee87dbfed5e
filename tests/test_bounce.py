import json

import torch

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example
from diffvc.examples.bounce import make_model, simulate
from diffvc.testing import assert_grad_close, grad_check


def test_final_position_gradient_through_contacts_matches_fd():
    model = make_model(torch.float64)
    v0 = torch.tensor([5.0, -5.0, 0.0], dtype=torch.float64, requires_grad=True)
    final, traj = simulate(v0.detach(), model, record=True)
    assert (traj[:, 1] < 0.11).any() and (traj[:, 0] > 0.39).any()  # both contacts happen
    assert_grad_close(lambda v: simulate(v, model), (v0,), rtol=1e-5, eps=1e-5)


def test_fd_check_fails_for_a_wrong_gradient():
    model = make_model(torch.float64)
    v0 = torch.tensor([5.0, -5.0, 0.0], dtype=torch.float64, requires_grad=True)

    def no_contact_gradient(v):  # gradient of free flight only: wrong through the contacts
        final = simulate(v, model)
        ballistic = v * 0.6
        return final.detach() + ballistic - ballistic.detach()

    assert grad_check(no_contact_gradient, (v0,), eps=1e-5).max_rel_error > 0.1


def test_bounce_quick_reaches_target_and_writes_outputs(tmp_path):
    metrics = run_example("bounce", RunConfig(out=tmp_path, quick=True, progress=False))
    assert metrics["final_distance"] < 0.05
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"final_distance", "iterations", "seconds"} <= saved.keys()
    for f in ("curves.png", "trajectory.gif", "trajectory.png"):
        assert (tmp_path / f).stat().st_size > 1000
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
