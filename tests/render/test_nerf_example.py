"""The ``diffvc run nerf`` example: a shortened run in the default suite (few views, few samples
per pixel, a few iterations; outputs written and read back, both models improve on the held-out
views), the full ``--quick`` run (held-out PSNR >= 25 dB for both fields) marked slow."""

import json

import pytest

from diffvc.examples import RunConfig, run_example
from diffvc.examples import nerf
from diffvc.testing import check_outputs


def _check(out, m):
    for f in ("heldout.png", "views.gif", "curves.png"):
        assert (out / f).stat().st_size > 1000, f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["grid_iterations"] == m["grid_iterations"]
    for k in ("grid", "neural"):
        assert 0 < m[f"{k}_heldout_ssim"] <= 1
        assert m[f"{k}_seconds_per_iteration"] > 0 and m[f"{k}_cpu_seconds_per_iteration"] > 0
    check_outputs(out)


def test_nerf_example_short(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nerf, "N_TRAIN", 6)
    monkeypatch.setattr(nerf, "N_TEST", 2)
    monkeypatch.setattr(nerf, "SPP", {"quick": 4, "full": 4})
    monkeypatch.setattr(nerf, "RES", {"quick": 32, "full": 32})
    m = run_example("nerf", RunConfig(out=tmp_path / "out", quick=True, iters=10, progress=False))
    _check(tmp_path / "out", m)
    assert m["grid_final_loss"] < 0.9 * m["grid_initial_loss"]   # training lowers the photometric loss
    assert m["neural_final_loss"] < m["neural_initial_loss"]
    assert list((tmp_path / "cache" / "nerf").glob("train_*.pt"))  # targets cached


@pytest.mark.slow
def test_nerf_example_quick(tmp_path):
    m = run_example("nerf", RunConfig(out=tmp_path, quick=True, progress=False))
    _check(tmp_path, m)
    assert m["grid_heldout_psnr_db"] >= 25.0
    assert m["neural_heldout_psnr_db"] >= 25.0
