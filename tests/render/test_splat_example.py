"""The ``diffvc run splat`` example: a shortened run in the default suite (outputs written, the
splats improve on the held-out views), the full ``--quick`` run (held-out PSNR >= 25 dB) marked slow."""

import json

import pytest

from diffvc.examples import RunConfig, run_example


def _check_outputs(out, m):
    for f in ("heldout.png", "views.gif", "curves.png"):
        assert (out / f).stat().st_size > 1000, f
    assert json.loads((out / "metrics.json").read_text())["iterations"] == m["iterations"]
    assert m["train_views"] >= 24 and m["heldout_views"] >= 8 and m["resolution"] == 128
    assert m["num_gaussians"] > 0 and m["seconds_per_iteration"] > 0


def test_splat_example_short(tmp_path):
    m = run_example("splat", RunConfig(out=tmp_path, quick=True, iters=10, progress=False))
    _check_outputs(tmp_path, m)
    assert m["heldout_psnr_db"] > m["initial_heldout_psnr_db"] + 0.5


@pytest.mark.slow
def test_splat_example_quick(tmp_path):
    m = run_example("splat", RunConfig(out=tmp_path, quick=True, progress=False))
    _check_outputs(tmp_path, m)
    assert m["heldout_psnr_db"] >= 25.0
