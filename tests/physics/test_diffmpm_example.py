"""The diffmpm example end to end: a shortened run (fewer steps) in the default suite, the real
``--quick`` run marked slow."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from diffvc.examples import RunConfig, run_example
from diffvc.examples import diffmpm


def _check_outputs(out, metrics):
    for f in ("robot.gif", "robot.png", "curves.png", "metrics.json"):
        assert (out / f).exists(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["iterations"] == metrics["iterations"]
    gif = iio.imread(out / "robot.gif")
    assert gif.shape[0] > 5
    assert np.abs(gif[-1].astype(float) - gif[0].astype(float)).max() > 50  # frames move
    assert gif[0].std() > 10  # not blank


def test_diffmpm_short_run_learns_to_move_right(tmp_path, monkeypatch):
    """257-step episodes, 4 gradient steps: the loss (minus the mean x) goes down, the learned
    actuation carries the robot further right than the initial one (measured: the loss drops by
    2.2e-4 in 4 steps at this horizon; a wrong gradient sign raises it)."""
    monkeypatch.setattr(diffmpm, "STEPS", 257)
    monkeypatch.setattr(diffmpm, "VIS_STEPS", 320)
    monkeypatch.setattr(diffmpm, "VIS_EVERY", 32)
    m = run_example("diffmpm", RunConfig(out=tmp_path, iters=4, progress=False))
    assert m["steps"] == 256 and m["particles"] == 2976
    assert m["final_loss"] < m["initial_loss"] - 1e-4
    assert m["distance_learned_actuation"] > m["distance_initial_actuation"] + 1e-4
    _check_outputs(tmp_path, m)


@pytest.mark.slow
def test_diffmpm_quick(tmp_path):
    m = run_example("diffmpm", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["iterations"] == 10
    assert m["final_loss"] < m["initial_loss"] - 0.02
    assert m["distance_learned_actuation"] > m["distance_initial_actuation"] + 0.02
    _check_outputs(tmp_path, m)
