"""The cloth example's quick path (one iteration): pipeline-rendered videos written, the loss
and the metrics sane."""

import json
import math

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
