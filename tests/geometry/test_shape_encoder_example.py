"""`diffvc run shape_encoder`, shortened: trained only through the NURBS surface's Chamfer loss, the
PointNet's held-out centre and radius errors fall."""

import torch

from diffvc.examples import RunConfig, run_example
from diffvc.examples.shape_encoder import EllipsoidDecoder


def test_decoder_gives_exact_ellipsoids():
    p = torch.tensor([[0.1, -0.2, 0.05, 0.5, 0.8, 0.3]], dtype=torch.float64)
    dec = EllipsoidDecoder(torch.float64)
    S = dec(p)[0]
    q = (S - p[0, :3]) / p[0, 3:]
    assert ((q.norm(dim=1) - 1).abs().max()) < 1e-12


def test_shape_encoder_short(tmp_path):
    m = run_example("shape_encoder", RunConfig(out=tmp_path, quick=True, iters=100, progress=False))
    assert m["heldout_center_mae"] < 0.6 * m["heldout_center_mae_initial"]
    assert m["heldout_radius_mae"] < 0.5 * m["heldout_radius_mae_initial"]
    assert m["heldout_chamfer"] < 0.5 * m["heldout_chamfer_initial"]
    for f in ("predictions.png", "training.gif", "curves.png", "metrics.json"):
        assert (tmp_path / f).stat().st_size > 100
