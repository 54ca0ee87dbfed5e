"""What users see: the images and animations examples write are read back and must show
something (not blank, not saturated) and animations must move. The sysid side-by-side GIF used
to be one white frame per step (tile() returned uint8, save_animation rescaled it again)."""

import imageio.v2 as iio2
import numpy as np
import pytest
import torch

from diffvc.examples.sysid import RigidExperiment, RigidProblem, _side_by_side
from diffvc.testing import check_outputs
from diffvc.viz import save_animation, tile, to_uint8


def test_sysid_side_by_side_gif_reads_back_with_moving_labelled_frames(tmp_path):
    exp = RigidExperiment(RigidProblem(size=24, duration=0.2, every=10))
    with torch.no_grad():
        target = exp.video({"mass": torch.tensor(2.0, dtype=torch.float64), "mu": torch.tensor(0.4, dtype=torch.float64)})
        start = exp.video({"mass": torch.tensor(3.0, dtype=torch.float64), "mu": torch.tensor(0.25, dtype=torch.float64)})
    _side_by_side(tmp_path / "side_by_side.gif", target, start, target, panel=64)
    counts = check_outputs(tmp_path)
    assert counts["animations"] == 1 and counts["frames"] == target.shape[0]
    frame = iio2.mimread(tmp_path / "side_by_side.gif")[0]
    # three labelled panels of >= 64 px side by side, two views stacked
    assert frame.shape[1] >= 3 * 64 and frame.shape[0] >= 2 * 64


def test_tiled_uint8_frames_are_not_rescaled_again(tmp_path):
    a = np.full((8, 8, 3), 0.25)
    b = np.full((8, 8, 3), 0.75)
    t = tile([a, b])
    assert t.dtype == np.uint8 and int(t[0, 0, 0]) == 64
    assert np.array_equal(to_uint8(t), t)
    save_animation(tmp_path / "x.gif", [t, tile([b, a])], srgb=False)
    back = iio2.mimread(tmp_path / "x.gif")
    assert int(back[0][0, 0, 0]) in (63, 64, 65)


def test_check_outputs_rejects_white_still_and_black(tmp_path):
    white = np.full((16, 16, 3), 255, np.uint8)
    iio2.mimsave(tmp_path / "white.gif", [white, white], duration=0.1)
    # (the GIF writer merges identical frames, so an all-white animation reads back as one frame)
    with pytest.raises(AssertionError, match=r"white.gif (frame 0 is blank|has 1 frame)"):
        check_outputs(tmp_path)
    (tmp_path / "white.gif").unlink()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, (16, 16, 3), dtype=np.uint8)
    iio2.mimsave(tmp_path / "still.gif", [img, img, img, img], duration=0.1)
    with pytest.raises(AssertionError, match=r"still.gif (.*does not move|has 1 frame)"):
        check_outputs(tmp_path)
    (tmp_path / "still.gif").unlink()
    dark = np.zeros((16, 16, 3), np.uint8)
    dark[0, :8] = 200
    dark[1, :8] = 100
    iio2.imwrite(tmp_path / "render.png", dark)
    with pytest.raises(AssertionError, match="render.png is black"):
        check_outputs(tmp_path)
