import json

import pytest
import torch

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example
from diffvc.examples import billiards
from diffvc.testing import assert_grad_close

D = torch.float64


def test_cue_velocity_gradient_of_last_ball_matches_finite_differences():
    """Through three ball-ball collisions and sliding/rolling ground friction (60 frames, 1.2 s)."""
    model = billiards.make_model(D)

    def last_ball(v0):
        return billiards.simulate(v0, model, frames=60)[-1]

    v0 = torch.tensor(billiards.V0, dtype=D)
    with torch.no_grad():
        moved = billiards.simulate(v0, model, frames=60)[-1, 0] - billiards.BALLS_X[-1]
    assert moved > 0.1  # the momentum reached the last ball
    assert_grad_close(last_ball, [v0.clone().requires_grad_()], rtol=1e-4, atol=1e-8, eps=1e-6)


def test_short_billiards_run_reduces_the_loss_and_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(billiards, "FRAMES", 30)  # 0.6 s instead of 2.5 s
    monkeypatch.setattr(billiards, "TARGET", (0.7, 0.0))
    m = run_example("billiards", RunConfig(out=tmp_path, quick=True, iters=1, progress=False))
    assert m["final_distance"] < 0.5 * m["initial_distance"]
    for f in ("metrics.json", "curves.png", "table.gif", "table_before.png", "table_after.png"):
        assert (tmp_path / f).exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["balls"] == 4
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move


@pytest.mark.slow
def test_billiards_quick_reaches_the_target(tmp_path):
    m = run_example("billiards", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["final_distance"] < 0.01
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
