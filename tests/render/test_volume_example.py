"""The tomography example: a shortened quick run recovers the density and writes its outputs."""

import json

import torch

from diffvc.examples import RunConfig, run_example
from diffvc.examples.tomography import box_filter, phantom
from diffvc.render import read_vol
from diffvc.testing import check_outputs


def test_phantom_is_heterogeneous_and_box_filter_keeps_mass():
    fine = phantom(32)
    coarse = box_filter(fine, 16)
    assert coarse.shape == (16, 16, 16)
    torch.testing.assert_close(coarse.mean(), fine.mean())
    assert len(torch.unique(fine)) >= 5 and float(fine.min()) == 0.0 and float(fine.max()) == 3.0


def test_tomography_shortened_quick_run(tmp_path):
    m = run_example("tomography", RunConfig(out=tmp_path, quick=True, iters=40, progress=False))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["iterations"] == 40 and saved["grid"] >= 48 and saved["train_views"] >= 16
    assert saved["heldout_views"] >= 8
    # 40 of the quick run's iterations already improve both measures a lot
    assert m["heldout_psnr_db"] > m["heldout_psnr_db_initial"] + 6
    assert m["density_rel_l2"] < 0.75 * m["density_rel_l2_initial"]
    vol, lo, hi = read_vol(tmp_path / "density.vol")
    assert vol.shape == (48, 48, 48) and lo.tolist() == [-1, -1, -1] and bool((vol >= 0).all())
    for f in ("curves.png", "heldout_views.png", "density_slices.png", "turntable.gif"):
        assert (tmp_path / f).stat().st_size > 1000
    check_outputs(tmp_path)
