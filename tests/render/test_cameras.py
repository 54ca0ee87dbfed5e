"""Cameras: the documented convention, ray/projection consistency, gradients vs finite differences."""

import torch
import pytest

from diffvc.render import Cameras, generate_rays, look_at, sphere_eyes
from diffvc.testing import assert_grad_close


def _cams(ortho=False, dtype=torch.float64):
    eyes = torch.tensor([[0.0, 0.5, 3.0], [2.0, 1.0, -1.5], [-2.5, -0.7, 0.3]], dtype=dtype)
    return Cameras.look_at(eyes, (0.1, 0.0, -0.2), width=40, height=30, fov_y=50.0, orthographic=ortho,
                           ortho_scale=3.0)


def test_look_at_convention():
    R, t = look_at(torch.tensor([[0.0, 0.0, 5.0]]), (0.0, 0.0, 0.0))
    assert torch.allclose(R[0], torch.eye(3), atol=1e-6)  # looks down -z, y up
    cam = Cameras(R, t, torch.tensor([[10.0, 10.0, 8.0, 6.0]]), 16, 12)
    uvd = cam.project(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.allclose(uvd[0, 0], torch.tensor([8.0, 6.0, 5.0]))
    # +x world -> right (u grows), +y world -> up (v, the row, shrinks)
    assert torch.allclose(uvd[0, 1], torch.tensor([8.0 + 2.0, 6.0 - 2.0, 5.0]))
    assert torch.allclose(cam.centers, torch.tensor([[0.0, 0.0, 5.0]]))
    RtR = R[0].T @ R[0]
    assert torch.allclose(RtR, torch.eye(3), atol=1e-6)


@pytest.mark.parametrize("ortho", [False, True])
def test_rays_project_back_to_pixel_centres(ortho):
    cams = _cams(ortho)
    o, d = generate_rays(cams)
    assert o.shape == (3, 30, 40, 3) and d.shape == (3, 30, 40, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones((), dtype=torch.float64), atol=1e-12)
    pts = o + 2.5 * d
    uvd = torch.stack([cams[b].project(pts[b].reshape(-1, 3))[0] for b in range(3)])
    centres = cams.pixel_centers().reshape(-1, 2)
    assert torch.allclose(uvd[..., :2], centres.expand(3, -1, -1), atol=1e-9)
    assert (uvd[..., 2] > 0).all()


def test_project_gradients_points_extrinsics_intrinsics():
    for ortho in (False, True):
        cams = _cams(ortho)
        pts = torch.randn(7, 3, dtype=torch.float64).requires_grad_()
        R = cams.R.clone().requires_grad_()
        t = cams.t.clone().requires_grad_()
        K = cams.intrinsics.clone().requires_grad_()

        def f(p, R, t, K):
            return Cameras(R, t, K, 40, 30, ortho).project(p)

        assert_grad_close(f, (pts, R, t, K), rtol=1e-6)


def test_look_at_and_rays_gradients():
    eye = torch.tensor([[0.3, 0.5, 3.0], [2.0, 1.0, -1.5]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.1, 0.0, -0.2], dtype=torch.float64, requires_grad=True)
    K = torch.tensor([[30.0, 31.0, 10.0, 8.0]] * 2, dtype=torch.float64, requires_grad=True)

    def f(eye, target, K):
        R, t = look_at(eye, target)
        return generate_rays(Cameras(R, t, K, 20, 16), 8, 10)

    assert_grad_close(f, (eye, target, K), rtol=1e-6)


def test_bad_inputs_name_the_argument():
    cams = _cams()
    with pytest.raises(ValueError, match="points"):
        cams.project(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="width"):
        Cameras(cams.R, cams.t, cams.intrinsics, 0, 10)
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras(cams.R, cams.t, cams.intrinsics[:, :3], 10, 10)
    with pytest.raises(ValueError, match="height"):
        generate_rays(cams, -1, 4)


def test_sphere_eyes_spread():
    e = sphere_eyes(20, 3.0)
    assert e.shape == (20, 3)
    assert torch.allclose(e.norm(dim=-1), torch.full((20,), 3.0), atol=1e-5)
    assert torch.cdist(e, e).add(torch.eye(20) * 10).min() > 0.5
