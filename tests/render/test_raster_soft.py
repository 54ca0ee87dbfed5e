"""Soft rasterizer: tends to the hard mask as sigma -> 0, blurs with sigma, smooth gradients
vs float64 finite differences (also from pixels outside the hard silhouette), bad input."""

import pytest
import torch

from diffvc.geometry import icosphere
from diffvc.render import Cameras, rasterize
from diffvc.render.soft import soft_silhouette
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _scene(W=32, H=28):
    v, f = icosphere(1)
    cams = Cameras.look_at(torch.tensor([[0.2, 0.5, 3.0], [2.0, 0.3, 1.5]]), width=W, height=H, fov_y=40.0).to(D64)
    return v.to(D64) * torch.tensor([1.0, 0.8, 0.9], dtype=D64), f, cams


def test_sharp_limit_is_the_hard_mask_and_sigma_blurs():
    v, f, cams = _scene()
    hard = (rasterize(cams, v, f).face_id >= 0).to(D64).unsqueeze(-1)
    sharp = soft_silhouette(cams, v, f, sigma=1e-3)
    assert ((sharp > 0.5) == (hard > 0.5)).to(D64).mean() > 0.99
    blurry = soft_silhouette(cams, v, f, sigma=4.0)
    assert (blurry >= 0).all() and (blurry < 1).all()
    # more blur spreads coverage outside the hard silhouette
    assert (blurry * (1 - hard)).sum() > 5 * (sharp * (1 - hard)).sum()


def test_soft_silhouette_gradients_match_finite_differences():
    v, f, cams = _scene(16, 14)
    verts = v.clone().requires_grad_()
    assert_grad_close(lambda x: soft_silhouette(cams, x, f, sigma=2.0), (verts,), rtol=1e-5, max_elements=30)
    K = cams.intrinsics.clone().requires_grad_()
    assert_grad_close(lambda k: soft_silhouette(Cameras(cams.R, cams.t, k, 16, 14), v, f, sigma=2.0), (K,), rtol=1e-5)


def test_bad_inputs():
    v, f, cams = _scene()
    with pytest.raises(ValueError, match="sigma"):
        soft_silhouette(cams, v, f, sigma=0.0)
    with pytest.raises(ValueError, match="faces indices must lie in"):
        soft_silhouette(cams, v, f + 1000)
    bad = v.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="verts contains non-finite"):
        soft_silhouette(cams, bad, f)
