"""The silhouettes example: a short run by default, the --quick run (asserting the issue's
targets: chamfer < 0.01 of the bbox diagonal, held-out IoU > 0.97) as a slow test."""

import json

import pytest
import torch

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example
from diffvc.examples.silhouettes import make_target
from diffvc.geometry import edges


def test_target_is_genus_zero_and_non_convex():
    v, f = make_target(40)
    assert v.shape[0] - edges(f).shape[0] + f.shape[0] == 2  # Euler characteristic of a sphere
    # non-convex: the convex hull is clearly larger than the shape
    from scipy.spatial import ConvexHull
    from diffvc.geometry import volume

    assert ConvexHull(v.double().numpy()).volume > 1.3 * float(volume(v.double(), f))


def test_short_run_reduces_loss_and_improves_silhouettes(tmp_path):
    cfg = RunConfig(out=tmp_path, quick=True, iters=25, progress=False)
    cfg.size, cfg.subdivisions = 64, 3
    m = run_example("silhouettes", cfg)
    assert m["final_loss"] < 0.75 * m["initial_loss"]
    assert m["iou"] > m["iou_start"] + 0.05
    assert m["chamfer"] < m["chamfer_start"]
    for name in ("target.png", "start.png", "result.png", "comparison.png", "curves.png", "metrics.json"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 25
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move


@pytest.mark.slow
def test_quick_run_meets_targets(tmp_path):
    m = run_example("silhouettes", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["chamfer"] < 0.01
    assert m["iou"] > 0.97
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
