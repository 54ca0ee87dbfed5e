"""Near-plane clipping in the rasterizer: a ground quad crossing the near plane (and passing
behind the camera) renders exactly its visible part, with the barycentrics/depth of the original
triangles, float64 finite-difference gradients, kernel == twin, and no NaN at d = 0."""

import pytest
import torch

from diffvc.geometry import plane
from diffvc.render import Cameras
from diffvc.render.interpolate import interpolate
from diffvc.render.rasterize import rasterize
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _standing_cam(W=128, H=96, dtype=D64, near=0.05):
    return Cameras.look_at(torch.tensor([[0.3, 1.6, 0.2]]), target=(0.0, 1.1, -3.0), width=W, height=H,
                           fov_y=60.0, near=near).to(dtype)


def _ground_hits(cam, half):
    """Analytic reference: per pixel centre, the ray's hit with y = 0 inside |x|, |z| <= half at
    view depth > near. Returns (mask (H, W), hit points (H, W, 3), depth (H, W))."""
    uv = cam.pixel_centers()
    fx, fy, cx, cy = cam.intrinsics[0]
    dc = torch.stack([(uv[..., 0] - cx) / fx, -(uv[..., 1] - cy) / fy, -torch.ones_like(uv[..., 0])], -1)
    R, t = cam.R[0], cam.t[0]
    eye = -R.T @ t
    dw = dc @ R  # R^T dc per pixel; dc has unit view depth
    s = -eye[1] / dw[..., 1]
    p = eye + s[..., None] * dw
    mask = (dw[..., 1] < 0) & (p[..., 0].abs() <= half) & (p[..., 2].abs() <= half) & (s > cam.near)
    return mask, p, s


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_ground_quad_crossing_near_plane_coverage_and_barycentrics(backend):
    cam = _standing_cam()
    half = 50.0
    v, f = plane(size=2 * half, resolution=1, dtype=D64)
    fr = rasterize(cam, v, f, backend=backend)
    mask, p, s = _ground_hits(cam, half)
    got = fr.face_id[0] >= 0
    assert int(mask.sum()) > 4000  # the ground fills the lower part of the view
    # every crossing pixel is drawn: coverage equals the analytic ray/quad hits up to edge pixels
    assert int((got != mask).sum()) <= 4, int((got != mask).sum())
    # same pixels as the quad split into a 40 x 40 grid (whose cells are mostly unclipped)
    vg, fg = plane(size=2 * half, resolution=40, dtype=D64)
    fine = rasterize(cam, vg, fg, backend=backend).face_id[0] >= 0
    assert int((got != fine).sum()) <= 4
    both = got & mask
    # barycentrics of the ORIGINAL triangles: interpolated world positions hit the analytic points
    pos = interpolate(v, fr)[0]
    assert torch.allclose(pos[both], p[both], atol=1e-7 * half, rtol=1e-9)
    assert torch.allclose(fr.depth[0][both], s[both], rtol=1e-6), float(((fr.depth[0][both] - s[both]).abs() / s[both]).max())
    assert torch.isfinite(fr.bary).all() and bool((fr.bary[0][both] >= -1e-12).all())


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_clipped_kernel_matches_twin(dtype):
    cam = _standing_cam(W=64, H=48, dtype=dtype)
    v, f = plane(size=20.0, resolution=3, dtype=dtype)  # crossing, behind and ordinary cells
    g = torch.Generator().manual_seed(1)
    v = v + 0.05 * torch.randn(v.shape, generator=g).to(dtype)
    attr = torch.rand(v.shape[0], 3, generator=g).to(dtype)
    outs = {}
    for backend in ("warp", "torch"):
        vv = v.clone().requires_grad_()
        fr = rasterize(cam, vv, f, backend=backend)
        img = interpolate(attr, fr, backend=backend)
        w = torch.linspace(-1, 1, img.numel(), dtype=dtype).reshape(img.shape)
        ((img * w).sum() + 0.1 * fr.depth.sum()).backward()
        outs[backend] = (fr.face_id, fr.bary.detach(), fr.depth.detach(), vv.grad)
    a, b = outs["warp"], outs["torch"]
    assert (a[0] >= 0).sum() > 800
    assert torch.equal(a[0], b[0])
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for x, y in zip(a[1:], b[1:]):
        assert torch.isfinite(x).all()
        assert torch.allclose(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_clipped_quad_gradients_match_finite_differences(backend):
    """Interpolated-attribute + depth loss of a two-triangle quad crossing the near plane (one
    corner behind the camera): gradients w.r.t. the vertices and the camera translation vs
    float64 central differences (the pixel -> face assignment is piecewise constant, so the
    loss is smooth for small steps)."""
    cam = _standing_cam(W=24, H=18)
    v, f = plane(size=8.0, resolution=1, dtype=D64)
    attr = torch.tensor([[1.0, 0.2], [0.3, 0.9], [0.5, 0.1], [0.8, 0.7]], dtype=D64)
    w = torch.rand(1, 18, 24, 2, generator=torch.Generator().manual_seed(0), dtype=D64)
    assert int((rasterize(cam, v, f, backend=backend).face_id >= 0).sum()) > 100

    def loss(verts, t):
        fr = rasterize(Cameras(cam.R, t, cam.intrinsics, 24, 18, near=cam.near), verts, f, backend=backend)
        return (interpolate(attr, fr, backend=backend) * w).sum() + 0.05 * fr.depth.sum()

    verts = v.clone().requires_grad_()
    t = cam.t.clone().requires_grad_()
    assert_grad_close(loss, (verts, t), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_triangle_behind_camera_renders_nothing(backend):
    cam = _standing_cam(W=32, H=24)
    eye = -cam.R[0].T @ cam.t[0]
    fwd = -cam.R[0][2]  # viewing direction
    right = cam.R[0][0]
    up = cam.R[0][1]
    c = eye - 2.0 * fwd  # fully behind: its flipped projection would land inside the image
    v = torch.stack([c - right - up, c + right - up, c + up])
    fr = rasterize(cam, v, torch.tensor([[0, 1, 2]]), backend=backend)
    assert int((fr.face_id >= 0).sum()) == 0
    # the same triangle in front is drawn (the test can fail)
    fr2 = rasterize(cam, v + 4.0 * fwd, torch.tensor([[0, 1, 2]]), backend=backend)
    assert int((fr2.face_id >= 0).sum()) > 20


@pytest.mark.parametrize("backend", ["warp", "torch"])
def test_vertex_on_camera_plane_is_finite(backend):
    """A vertex exactly on the camera plane (view depth 0, w = 0): finite fragments and
    gradients, and the triangle's part beyond the near plane is drawn."""
    K = torch.tensor([[30.0, 30.0, 16.0, 12.0]], dtype=D64)
    cam = Cameras(torch.eye(3, dtype=D64)[None], torch.zeros(1, 3, dtype=D64), K, 32, 24, near=0.05)
    v = torch.tensor([[0.5, -0.3, 0.0], [-1.0, -0.5, -3.0], [1.0, -0.5, -3.0]], dtype=D64)  # camera looks down -z
    verts = v.clone().requires_grad_()
    assert float(cam.project(v)[0, 0, 2]) == 0.0
    fr = rasterize(cam, verts, torch.tensor([[0, 1, 2]]), backend=backend)
    assert int((fr.face_id >= 0).sum()) > 20
    img = interpolate(torch.eye(3, dtype=D64), fr, backend=backend)
    assert torch.isfinite(img).all() and torch.isfinite(fr.depth).all()
    (img.sum() + fr.depth.sum()).backward()
    assert torch.isfinite(verts.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_face_orientations_kept_by_rasterize_match_antialias_own(dtype):
    """rasterize's coverage pass keeps each face's orientation for antialias (``_facing``, from
    ``tri_setup``): equal to antialias's own ``face_facing`` pass, also for faces with vertices
    behind the camera, and antialias gives the same image and gradients with or without it."""
    import dataclasses

    from diffvc._kernels import parallel_launch
    from diffvc._kernels import raster as RK
    from diffvc.render import antialias, mesh_topology

    cam = _standing_cam(W=64, H=48, dtype=dtype)
    v, f = plane(size=20.0, resolution=3, dtype=dtype)  # crossing, behind and ordinary cells
    g = torch.Generator().manual_seed(2)
    v = v + 0.05 * torch.randn(v.shape, generator=g).to(dtype)
    f = torch.where(torch.arange(f.shape[0])[:, None] % 3 == 0, f[:, [0, 2, 1]], f)  # both orientations
    attr = torch.rand(v.shape[0], 3, generator=g).to(dtype)
    topo = mesh_topology(f, v.shape[0])
    fr = rasterize(cam, v, f)
    kept = fr._facing
    screen = fr.screen.detach().contiguous()
    assert bool((screen[0, :, 2] < 0).any()) and bool((screen[0, :, 2] > 0).any())
    own = torch.empty_like(kept)
    blk, n_f, mpt = RK.face_launch(f.shape[0], "cpu")
    parallel_launch(RK.face_facing, n_f, [blk, screen, fr.faces, 1], [own], min_per_thread=mpt)
    assert torch.equal(kept, own)
    assert bool((kept > 0).any()) and bool((kept < 0).any())
    outs = []
    for frags in (fr, dataclasses.replace(fr)):
        assert hasattr(frags, "_facing") == (frags is fr)
        c = attr.clone().requires_grad_()
        img = antialias(interpolate(c, frags), frags, topo)
        img.sum().backward()
        outs.append((img.detach(), c.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
