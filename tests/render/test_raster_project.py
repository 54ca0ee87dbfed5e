"""The rasterizer's projection kernel (``project_verts`` + its hand-written adjoint) against
``Cameras.project`` with the depth guard (the torch twin) and float64 finite differences."""

import pytest
import torch

from diffvc._kernels import raster as K
from diffvc.render import Cameras
from diffvc.render.rasterize import _project_torch
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _cams(ortho, B=3):
    eyes = torch.tensor([[0.0, 0.5, 3.0], [2.0, 0.3, 1.5], [-1.0, -2.0, 2.0]])[:B]
    return Cameras.look_at(eyes, width=48, height=40, fov_y=40.0, orthographic=ortho, ortho_scale=2.6).to(D64)


def _kernel(cams, verts):
    return K.project_op(verts if verts.dim() == 3 else verts.unsqueeze(0), cams.R, cams.t, cams.intrinsics,
                        int(not cams.orthographic))


@pytest.mark.parametrize("ortho", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_projection_kernel_matches_twin_and_fd(ortho, batched):
    g = torch.Generator().manual_seed(1)
    cams = _cams(ortho)
    v = torch.randn((3, 150, 3) if batched else (150, 3), generator=g, dtype=D64)
    assert torch.allclose(_kernel(cams, v), _project_torch(cams, v), rtol=1e-12, atol=1e-9)
    w = torch.randn(_project_torch(cams, v).shape, generator=g, dtype=D64)
    R, t, Kin = cams.R.clone(), cams.t.clone(), cams.intrinsics.clone()
    vs = v[:20].clone() if batched is False else v[:, :20].clone()

    def loss(fn):
        return lambda vv, RR, tt, KK: (fn(Cameras(RR, tt, KK, 48, 40, ortho), vv) * w[:, :20]).sum()

    assert_grad_close(loss(_kernel), tuple(x.requires_grad_() for x in (vs, R, t, Kin)), rtol=1e-6)
    # same gradients as the twin, all inputs at once (float64)
    ins = [x.detach().clone().requires_grad_() for x in (v, R, t, Kin)]
    (_kernel(Cameras(ins[1], ins[2], ins[3], 48, 40, ortho), ins[0]) * w).sum().backward()
    ins2 = [x.detach().clone().requires_grad_() for x in (v, R, t, Kin)]
    (_project_torch(Cameras(ins2[1], ins2[2], ins2[3], 48, 40, ortho), ins2[0]) * w).sum().backward()
    for a, b in zip(ins, ins2):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_projection_kernel_float32_split_matches_twin():
    torch.manual_seed(0)
    cams = _cams(False).to(torch.float32)
    v = torch.randn(5000, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # split launch: per-range camera-gradient buffers
        vv = v.clone().requires_grad_()
        R = cams.R.clone().requires_grad_()
        _kernel(Cameras(R, cams.t, cams.intrinsics, 48, 40), vv).sum().backward()
    finally:
        torch.set_num_threads(threads)
    v2 = v.clone().requires_grad_()
    R2 = cams.R.clone().requires_grad_()
    _project_torch(Cameras(R2, cams.t, cams.intrinsics, 48, 40), v2).sum().backward()
    assert torch.allclose(vv.grad, v2.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(R.grad, R2.grad, rtol=1e-4, atol=1e-2)


def test_projection_kernel_camera_plane_guard():
    """A vertex exactly on the camera plane (d = 0) gets the depth 1e-12 and no depth gradient,
    as in the twin."""
    Kin = torch.tensor([[30.0, 30.0, 16.0, 12.0]], dtype=D64)
    cams = Cameras(torch.eye(3, dtype=D64)[None], torch.zeros(1, 3, dtype=D64), Kin, 32, 24)
    v = torch.tensor([[1e-13, 0.0, 0.0], [0.3, -0.2, -2.0]], dtype=D64)
    out = _kernel(cams, v)
    assert float(out[0, 0, 2]) == 1e-12 and torch.allclose(out, _project_torch(cams, v), rtol=1e-12, atol=0)
    w = torch.tensor([[[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]], dtype=D64)
    grads = []
    for fn in (_kernel, _project_torch):
        vv = v.clone().requires_grad_()
        (fn(cams, vv) * w).sum().backward()
        grads.append(vv.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=0)
