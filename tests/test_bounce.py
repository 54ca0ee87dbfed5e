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


def test_plots_are_drawn_where_the_data_is(tmp_path):
    """The Pillow plots (diffvc.examples._lineplot): matplotlib's tick steps, a trajectory frame
    with the target star and the paths at their data positions, a curve plot of the viz layout."""
    import numpy as np
    from PIL import Image

    from diffvc.examples import _lineplot as lp
    from diffvc.examples.bounce import _frames

    np.testing.assert_allclose(lp.nice_ticks(-2.6, 1.0, 9), np.arange(-2.5, 1.01, 0.5))
    np.testing.assert_allclose(lp.nice_ticks(-4.05, 85.05, 8), np.arange(0, 81, 20))
    t = np.linspace(0.0, 1.0, 10)[:, None]
    a = np.concatenate([-0.5 - 0.7 * t, 1.0 - 0.5 * t, 0 * t], 1)       # away from the target
    b = np.concatenate([-0.5 + 0.9 * t, 1.0 - 0.9 * t, 0 * t], 1)       # to the wall corner
    frames = _frames([a, b], ["a", "b"])
    assert len(frames) == 10 and frames[0].shape == (240, 360, 3) and frames[0].dtype == np.uint8
    last = frames[-1].astype(int)
    red = (last[..., 0] > 200) & (last[..., 1] < 80) & (last[..., 2] < 80)
    blue = (np.abs(last - np.array(lp.TAB["tab:blue"])).sum(-1) < 60)
    ys, xs = np.nonzero(red)
    assert red.sum() > 20                                               # the target star
    by, bx = np.nonzero(blue)
    # the blue path runs from the start (right of the star, lower) down to the wall corner
    assert bx.max() > xs.max() and by.max() > ys.max()
    assert not np.array_equal(frames[0], frames[-1])
    lp.plot_curves(tmp_path / "c.png", {"loss": np.exp(-np.arange(20.0)), "x": np.arange(20.0)}, title="t")
    img = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert img.shape == (352, 924, 3)
    assert (np.abs(img.astype(int) - np.array(lp.TAB["tab:blue"])).sum(-1) < 60).sum() > 100  # the curves
