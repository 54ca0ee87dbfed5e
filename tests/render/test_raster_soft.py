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


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_soft_kernels_match_the_twin(dtype, tol):
    """The Warp soft silhouette (default backend) against the torch twin: values and vertex
    gradients, two views with their own vertices, one and two threads (2,300 faces: split), with a
    face behind the camera (skipped), a zero-area face and a face far outside the image; second
    derivatives (through the twin)."""
    from diffvc.geometry import torus

    v, f = torus(1.0, 0.4, 46, 25, dtype=dtype)
    V = v.shape[0]
    extra = torch.tensor([[0.0, 0.0, 5.0], [0.2, 0.0, 5.0], [0.0, 0.2, 5.0],  # behind the first camera
                          [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.3, 0.2, 0.0],  # zero area
                          [40.0, 0.0, 0.0], [41.0, 0.0, 0.0], [40.0, 1.0, 0.0]], dtype=dtype)  # off screen
    v = torch.cat([v, extra])
    f = torch.cat([f, torch.arange(V, V + 9).reshape(3, 3)])
    vb = torch.stack([v, v * 1.1 + 0.05])  # (B, V, 3)
    cams = Cameras.look_at(torch.tensor([[0.0, 0.4, 3.0], [2.0, 1.0, 2.0]]), width=40, height=32,
                           fov_y=50.0).to(dtype)
    w = torch.rand(2, 32, 40, 1, generator=torch.Generator().manual_seed(3)).to(dtype)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res = []
        for backend in ("warp", "torch"):
            x = vb.clone().requires_grad_()
            s = soft_silhouette(cams, x, f, sigma=1.5, backend=backend)
            (s * w).sum().backward()
            res.append((s.detach(), x.grad))
        torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=tol)
        # the two coincident vertices of the zero-area face: edges tie there, and the twin's
        # torch.minimum splits the gradient between tied edges where the kernel takes the first;
        # their sum is the same
        ga, gb = res[0][1].clone(), res[1][1].clone()
        atol = tol * float(gb.abs().max())
        torch.testing.assert_close(ga[:, V + 3] + ga[:, V + 4], gb[:, V + 3] + gb[:, V + 4], rtol=tol, atol=atol)
        ga[:, V + 3:V + 5] = 0
        gb[:, V + 3:V + 5] = 0
        torch.testing.assert_close(ga, gb, rtol=tol, atol=atol)
    assert float(res[0][0].max()) > 0.9 and float(res[0][0].min()) < 1e-3
    vs, fs = icosphere(0, dtype=torch.float64)
    c1 = Cameras.look_at(torch.tensor([[0.0, 0.3, 3.0]]), width=10, height=9, fov_y=60.0).to(torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: soft_silhouette(c1, x, fs, sigma=2.0), (vs.clone().requires_grad_(),))
    with pytest.raises(ValueError, match="backend"):
        soft_silhouette(c1, vs, fs, backend="cuda")
