"""The cloth example's quick path (one iteration): pipeline-rendered videos written, the loss
and the metrics sane."""

import json
import math

import pytest

from diffvc.examples import RunConfig, run_example


def test_cloth_example_quick(tmp_path):
    m = run_example("cloth", RunConfig(out=tmp_path, quick=True, iters=1, progress=False))
    for f in ("side_by_side.gif", "side_by_side.png", "curves.png", "metrics.json"):
        assert (tmp_path / f).stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["iterations"] == 1 and saved["views"] == 2
    assert m["initial_loss"] > 0 and math.isfinite(m["final_loss"])
    # one Adam step moves both parameters away from the start (gradients reached them)
    assert m["mu_estimate"] != m["mu_start"] and m["kb_estimate"] != m["kb_start"]


@pytest.mark.slow
def test_cloth_example_full_recovers_stiffness(tmp_path):
    """The full run (40 iterations, 21 frames, 64 px): measured mu 3.2% and kb 1.5% off."""
    m = run_example("cloth", RunConfig(out=tmp_path, quick=False, progress=False))
    assert m["rel_error_mu"] < 0.1 and m["rel_error_kb"] < 0.1
    assert m["final_loss"] < 0.05 * m["initial_loss"]
