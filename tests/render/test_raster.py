"""Rasterize / interpolate / antialias: kernels vs their torch twins, depth test, exact areas,
gradients vs float64 finite differences (attributes, vertices, cameras, silhouettes), bad input."""

import math

import pytest
import torch

from diffvc.geometry import icosphere
from diffvc.render import Cameras
from diffvc.render.antialias import antialias, mesh_topology
from diffvc.render.interpolate import interpolate
from diffvc.render.rasterize import _face_ids_warp, rasterize, rasterize_screen
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _mesh(sub=1, seed=0, dtype=D64):
    v, f = icosphere(sub)
    g = torch.Generator().manual_seed(seed)
    v = v.to(dtype) * torch.tensor([1.0, 0.8, 0.9], dtype=dtype)
    return v + 0.05 * torch.randn(v.shape, generator=g).to(dtype), f


def _cams(ortho=False, dtype=D64, W=48, H=40):
    eyes = torch.tensor([[0.0, 0.5, 3.0], [2.0, 0.3, 1.5], [-1.0, -2.0, 2.0]])
    return Cameras.look_at(eyes, width=W, height=H, fov_y=40.0, orthographic=ortho, ortho_scale=2.6).to(dtype)


@pytest.mark.parametrize("ortho,dtype,sub", [(False, torch.float32, 2), (True, torch.float32, 2), (False, D64, 2),
                                             (True, D64, 2), (False, D64, 4)])
def test_kernel_matches_torch_twin_values_and_gradients(ortho, dtype, sub):
    """Sub-division 4 at 48 x 40 px gives sub-pixel triangles (vertex-fan and cusp paths of
    the silhouette search)."""
    v, f = _mesh(sub, dtype=dtype)
    cams = _cams(ortho, dtype)
    col = torch.rand(v.shape[0], 3, dtype=dtype)
    outs = {}
    for backend in ("warp", "torch"):
        vv = v.clone().requires_grad_()
        cc = col.clone().requires_grad_()
        fr = rasterize(cams, vv, f, backend=backend)
        img = antialias(interpolate(cc, fr, backend=backend), fr, backend=backend)
        w = torch.linspace(-1, 1, img.numel(), dtype=dtype).reshape(img.shape)
        ((img * w).sum() + (fr.depth * 0.1).sum()).backward()
        outs[backend] = (fr.face_id, fr.bary.detach(), fr.depth.detach(), img.detach(), vv.grad, cc.grad)
    a, b = outs["warp"], outs["torch"]
    assert (a[0] >= 0).sum() > 1000
    assert torch.equal(a[0], b[0])
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for x, y in zip(a[1:], b[1:]):
        assert torch.allclose(x, y, atol=tol, rtol=tol)


def test_tile_and_pixel_layouts_agree():
    """The CPU per-tile kernel (split over threads) and the CUDA per-pixel kernel give the same ids."""
    v, f = _mesh(3, dtype=torch.float32)
    cams = _cams(dtype=torch.float32, W=100, H=70)
    screen = cams.project(v)
    f32 = f.to(torch.int32)
    for tile in (4, 8, 16):
        a = _face_ids_warp(screen, f32, 70, 100, True, 1e-3, tile, "tiles")
        b = _face_ids_warp(screen, f32, 70, 100, True, 1e-3, tile, "pixels")
        assert torch.equal(a, b)


@pytest.mark.parametrize("perspective", [True, False])
def test_tile_kernel_shortcuts_keep_the_twins_ids_on_a_triangle_soup(perspective):
    """raster_tiles tests per row only the pixels its edges' crossings leave open and skips pixels
    whose stored key is below a triangle's lowest key: on a soup of overlapping triangles (slivers
    thinner than 1e-4 px, edges through pixel centres, near-equal depths) the ids equal the torch
    twin's and the per-pixel layout's (which test every pixel of the box)."""
    g = torch.Generator().manual_seed(3)
    H, W, n = 40, 48, 400
    c = torch.rand(n, 1, 2, generator=g) * torch.tensor([W, H])
    off = (torch.rand(n, 3, 2, generator=g) - 0.5) * 14.0
    xy = c + off
    sl = torch.arange(n) % 4 == 0  # slivers: third vertex 1e-5 px off the first edge
    xy[sl, 2] = xy[sl, 0] + 0.37 * (xy[sl, 1] - xy[sl, 0]) + 1e-5
    on = torch.arange(n) % 5 == 1  # vertices on pixel centres: edges through them, exact ties
    xy[on] = torch.floor(xy[on]) + 0.5
    d = 2.0 + 0.001 * torch.rand(n, 3, generator=g)  # near-equal depths
    d[torch.arange(n) % 7 == 2] = 2.0005  # equal constant depths: ties by face id
    pts = torch.cat([xy, d[..., None]], -1).reshape(1, 3 * n, 3).to(torch.float32)
    f = torch.arange(3 * n, dtype=torch.int32).reshape(n, 3)
    twin = rasterize_screen(pts, f, H, W, perspective=perspective, near=0.1, backend="torch").face_id
    for tile in (4, 16):
        a = _face_ids_warp(pts, f, H, W, perspective, 0.1, tile, "tiles")
        b = _face_ids_warp(pts, f, H, W, perspective, 0.1, tile, "pixels")
        assert torch.equal(a, twin) and torch.equal(b, twin)
    assert (twin >= 0).sum() > 0.5 * H * W


def test_depth_test_nearest_wins_in_either_order():
    near_tri = [[10.0, 10.0, 2.0], [30.0, 10.0, 2.0], [10.0, 30.0, 2.0]]
    far_tri = [[5.0, 5.0, 5.0], [35.0, 5.0, 5.0], [5.0, 35.0, 5.0]]
    for order in ((near_tri, far_tri), (far_tri, near_tri)):
        screen = torch.tensor([order[0] + order[1]], dtype=D64)
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        for persp in (True, False):
            fr = rasterize_screen(screen, faces, 40, 40, perspective=persp)
            nearest = 0 if order[0] is near_tri else 1
            assert fr.face_id[0, 15, 15] == nearest
            assert fr.face_id[0, 6, 33] == 1 - nearest  # only the big far triangle here
            assert fr.face_id[0, 38, 38] == -1
            assert fr.depth[0, 15, 15] == pytest.approx(2.0)
            assert fr.bary[0, 15, 15].sum() == pytest.approx(1.0)


def test_perspective_correct_interpolation():
    """Interpolated camera-space depth equals the rasterized depth, and interpolated world
    positions project back onto the pixel centres (perspective-correct barycentrics)."""
    v, f = _mesh(2)
    cams = _cams()
    fr = rasterize(cams, v, f)
    pos = interpolate(v, fr)
    m = fr.face_id >= 0
    for b in range(3):
        uvd = cams[b].project(pos[b][m[b]])[0]
        centres = cams.pixel_centers()[m[b]]
        assert torch.allclose(uvd[:, :2], centres, atol=1e-8)
        assert torch.allclose(uvd[:, 2], fr.depth[b][m[b]], atol=1e-10)


def test_covered_area_matches_exact_projected_area():
    """Sum of the antialiased coverage of one triangle = its exact screen-space area. The
    antialiasing is a midpoint-rule integral along rows/columns, exact for straight edges; the
    residual comes from the three corners (O(1) pixel each), so 2 px^2 (about half a pixel per
    corner) + 0.2% is the tolerance; the plain pixel count is checked to be worse on average.
    Triangles thinner than ~2 px (both edges inside one pixel pair) are outside this model and
    are not drawn here: every triangle has all heights >= 3 px."""
    g = torch.Generator().manual_seed(3)
    n, errs = 0, []
    while n < 8:
        xy = torch.rand(3, 2, generator=g, dtype=D64) * torch.tensor([60.0, 44.0]) + 2
        e = xy.roll(-1, 0) - xy
        area2 = abs(e[0, 0] * e[1, 1] - e[0, 1] * e[1, 0])
        if (area2 / e.norm(dim=1)).min() < 3.0:
            continue
        n += 1
        screen = torch.cat([xy, torch.full((3, 1), 2.0, dtype=D64)], 1)[None]
        fr = rasterize_screen(screen, torch.tensor([[0, 1, 2]]), 48, 64)
        cov = antialias(fr.mask, fr).sum().item()
        (x0, y0), (x1, y1), (x2, y2) = xy.tolist()
        exact = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) / 2
        errs.append((cov - exact, exact, fr.mask.sum().item() - exact))
    for err, exact, _ in errs:
        assert abs(err) < 2.0 + 2e-3 * exact
    # without antialiasing the pixel count is only accurate to O(perimeter)
    assert sum(abs(e[0]) for e in errs) < 0.5 * sum(abs(e[2]) for e in errs)
    # a projected 3D triangle seen by a perspective camera
    cams = _cams()
    tri = torch.tensor([[-0.6, -0.5, 0.2], [0.7, -0.3, -0.1], [0.0, 0.6, 0.0]], dtype=D64)
    fr = rasterize(cams, tri, torch.tensor([[0, 1, 2]]))
    cov = antialias(fr.mask, fr).sum((1, 2, 3))
    s = fr.screen[..., :2]
    exact = ((s[:, 1, 0] - s[:, 0, 0]) * (s[:, 2, 1] - s[:, 0, 1]) - (s[:, 1, 1] - s[:, 0, 1]) * (s[:, 2, 0] - s[:, 0, 0])).abs() / 2
    assert torch.allclose(cov, exact, rtol=3e-3, atol=1.0)


def test_interpolate_gradients_attributes_and_vertices():
    v, f = _mesh(1)
    cams = _cams(W=20, H=16)
    attr = torch.randn(v.shape[0], 2, dtype=D64, requires_grad=True)
    verts = v.clone().requires_grad_()
    assert_grad_close(lambda a, x: interpolate(a, rasterize(cams, x, f)), (attr, verts), rtol=1e-5, max_elements=40)
    assert_grad_close(lambda x: rasterize(cams, x, f).depth, (verts,), rtol=1e-5, max_elements=40)


def test_camera_gradients_through_rasterization():
    v, f = _mesh(1)
    cams = _cams(W=20, H=16)
    R = cams.R.clone().requires_grad_()
    t = cams.t.clone().requires_grad_()
    K = cams.intrinsics.clone().requires_grad_()
    col = torch.randn(v.shape[0], 3, dtype=D64)

    def f_(R, t, K):
        fr = rasterize(Cameras(R, t, K, 20, 16), v, f)
        return interpolate(col, fr)

    assert_grad_close(f_, (R, t, K), rtol=1e-5)


def test_antialias_gradients_colour():
    v, f = _mesh(1)
    cams = _cams(W=20, H=16)
    fr = rasterize(cams, v, f)
    col = torch.rand(3, 16, 20, 3, dtype=D64, requires_grad=True)
    assert_grad_close(lambda c: antialias(c, fr), (col,), rtol=1e-6, max_elements=60)


def test_silhouette_vertex_gradients_match_finite_differences():
    """Vertex gradient of an antialiased silhouette loss vs central differences of the same loss.

    The antialiased image is continuous in the vertices almost everywhere but only piecewise
    smooth: kinks where an edge passes a pixel centre or the middle of a pixel pair. A central
    difference with step h is wrong only for pixels whose kink lies within h, a few percent of
    the aggregate at most for h = 1e-4 world units (about 0.002 px here). It also has rare jumps
    no gradient accounts for (a silhouette vertex crossing a pixel-centre row or column, where
    the crossing moves from one edge to the next; cusps of the silhouette). A jump inside
    [-h, h] makes the differences at h and h/2 disagree (J/2h vs J/h or 0), so coordinates whose
    two estimates differ by more than 10% are excluded; there must be few of them (< 5%). On the
    rest the gradient must match within 5% in aggregate (2-norm) with cosine > 0.995."""
    v, f = _mesh(1)
    cams = _cams()
    topo = mesh_topology(f)
    target = torch.zeros(3, 40, 48, 1, dtype=D64)
    target[:, 10:30, 12:36] = 1

    def loss(x):
        fr = rasterize(cams, x, f)
        return ((antialias(fr.mask, fr, topo) - target) ** 2).sum()

    x = v.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x), x)
    g = g.reshape(-1)
    h = 1e-4
    fd = torch.zeros_like(g)
    fd_half = torch.zeros_like(g)
    with torch.no_grad():
        for i in range(g.numel()):
            for step, out in ((h, fd), (h / 2, fd_half)):
                d = torch.zeros_like(g)
                d[i] = step
                out[i] = (loss(v + d.reshape(v.shape)) - loss(v - d.reshape(v.shape))) / (2 * step)
    smooth = (fd - fd_half).abs() <= 0.1 * fd.abs().clamp_min(1.0)
    assert (~smooth).sum() <= 0.05 * g.numel(), (~smooth).sum()
    a, n = g[smooth], fd[smooth]
    assert n.norm() > 100  # silhouettes do move the loss
    assert (a - n).norm() < 0.05 * n.norm(), ((a - n).norm() / n.norm()).item()
    assert (a @ n) / (a.norm() * n.norm()) > 0.995


def test_degenerate_and_clipped_geometry_is_finite():
    # a zero-area triangle, a triangle with a vertex behind the camera (clipped at the near plane:
    # drawn where its plane lies beyond it, test_raster_clip.py), and a normal one
    screen = torch.tensor([[[5.0, 5.0, 2.0], [10.0, 10.0, 2.0], [15.0, 15.0, 2.0],
                            [1.0, 1.0, -1.0], [30.0, 2.0, 2.0], [2.0, 30.0, 2.0],
                            [3.0, 3.0, 3.0], [20.0, 4.0, 3.0], [4.0, 20.0, 3.0]]], dtype=D64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    fr = rasterize_screen(screen, faces, 24, 24)
    assert set(fr.face_id.unique().tolist()) == {-1, 1, 2}
    img = antialias(interpolate(screen[0], fr), fr)
    img.sum().backward()
    assert torch.isfinite(img).all() and torch.isfinite(screen.grad).all()
    # empty face list
    fr = rasterize_screen(screen, torch.zeros(0, 3, dtype=torch.long), 8, 8)
    assert (fr.face_id == -1).all()


def test_bad_inputs_raise_naming_the_argument():
    v, f = _mesh(0)
    cams = _cams()
    with pytest.raises(ValueError, match=r"faces indices must lie in \[0, 12\)"):
        rasterize(cams, v, f + 100)
    with pytest.raises(ValueError, match=r"faces indices must lie in \[0, 12\)"):
        rasterize(cams, v, f - 1)
    bad = v.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="verts contains non-finite"):
        rasterize(cams, bad, f)
    with pytest.raises(ValueError, match="height must be >= 1"):
        rasterize_screen(cams.project(v), f, 0, 10)
    with pytest.raises(ValueError, match="height must be >= 1"):
        Cameras(cams.R, cams.t, cams.intrinsics, 10, 0)
    with pytest.raises(ValueError, match="verts batch 2"):
        rasterize(cams, v.expand(2, -1, -1), f)
    with pytest.raises(ValueError, match="faces must have shape"):
        rasterize(cams, v, f[:, :2])
    with pytest.raises(TypeError, match="faces must be an integer"):
        rasterize(cams, v, f.double())
    fr = rasterize(cams, v, f)
    with pytest.raises(ValueError, match="attr must have shape"):
        interpolate(torch.zeros(5, 3, dtype=D64), fr)
    with pytest.raises(ValueError, match="color must have shape"):
        antialias(torch.zeros(1, 2, 3, 3, dtype=D64), fr)


def test_split_forward_and_adjoint_match_twin_on_a_large_image():
    """Images above the split threshold run the per-pixel kernels and their adjoints over
    several threads with private gradient buffers; compare with the twin (values, gradients)."""
    torch.set_num_threads(2)
    v, f = _mesh(3)
    cams = _cams(W=120, H=90)
    col = torch.rand(v.shape[0], 3, dtype=D64)
    res = {}
    for backend in ("warp", "torch"):
        vv = v.clone().requires_grad_()
        cc = col.clone().requires_grad_()
        fr = rasterize(cams, vv, f, backend=backend)
        img = interpolate(cc, fr, backend=backend)
        w = torch.cos(torch.arange(img.numel(), dtype=D64)).reshape(img.shape)
        ((img * w).sum() + fr.depth.sum()).backward()
        res[backend] = (img.detach(), vv.grad, cc.grad)
    for a, b in zip(res["warp"], res["torch"]):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)


def test_validated_faces_are_remembered_until_either_tensor_changes():
    """rasterize validates a faces tensor once (check_faces memo): the same int32 tensor comes back
    while neither the input nor the returned tensor is modified in place; a change revalidates."""
    from diffvc.render.rasterize import check_faces

    f = torch.tensor([[0, 1, 2], [1, 2, 3]])
    a = check_faces(f, 4)
    assert check_faces(f, 4) is a and a.dtype == torch.int32
    a[0, 0] = 3  # the result modified in place: not reused
    c = check_faces(f, 4)
    assert c is not a and int(c[0, 0]) == 0
    f[0, 0] = 9  # the input modified in place: validated again
    with pytest.raises(ValueError, match="faces"):
        check_faces(f, 4)


def test_blend_split_over_threads_matches_one_thread(monkeypatch):
    """The CPU blend over the detected pairs split into thread ranges with disjoint pixels (and the
    pairs between two ranges run after them): values and gradients equal the 1-thread blend up to
    rounding, and the ranges and tails cover every pair once with no pixel row shared by two ranges."""
    import numpy as np

    from diffvc._kernels import raster as K
    from diffvc._kernels.raster import pair_ranges

    monkeypatch.setattr(K, "PAIRS_PER_THREAD", 64)  # split this small render's pairs too
    v, f = _mesh(4, seed=3)
    cams = _cams(W=200, H=160)
    col = torch.rand(v.shape[0], 3, dtype=D64, generator=torch.Generator().manual_seed(1))
    topo = mesh_topology(f, v.shape[0])
    res = {}
    for threads in (1, 2, 3):  # (the suite's autouse fixture restores the thread count)
        torch.set_num_threads(threads)
        vv = v.clone().requires_grad_()
        cc = col.clone().requires_grad_()
        fr = rasterize(cams, vv, f)
        img = antialias(interpolate(cc, fr), fr, topo, background=0.25)
        w = torch.cos(torch.arange(img.numel(), dtype=D64)).reshape(img.shape)
        (img * w).sum().backward()
        res[threads] = (img.detach(), vv.grad, cc.grad)
    for threads in (2, 3):
        for a, b in zip(res[threads], res[1]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    rng = np.random.default_rng(0)
    W = 200
    found = torch.from_numpy(np.unique(rng.integers(0, 3 * 161 * 201 * 2, 20_000)).astype(np.int32))
    for threads in (2, 3, 7):
        ranges, tails = pair_ranges(found, W, threads)
        assert len(ranges) >= 2
        cover = sorted(ranges + tails)
        assert cover[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(cover, cover[1:]))
        assert cover[-1][0] + cover[-1][1] == found.shape[0]
        rows = [set() for _ in ranges]
        for k, (a, n) in enumerate(ranges):
            g = found[a:a + n].numpy() // (2 * (W + 1))
            rows[k] = set(g.tolist()) | set((g + 1).tolist())  # the rows its pairs touch
        assert all(not (rows[i] & rows[j]) for i in range(len(rows)) for j in range(i + 1, len(rows)))


def test_row_ranges_partition_the_rows_by_covered_work():
    """The per-pixel kernels' split over threads: contiguous row ranges that cover every image row
    once, each with about the same covered-pixel work (one row's worth), not the same row count;
    None when the launch is not split."""
    from diffvc._kernels import raster as K

    B, H, W = 2, 100, 64
    face_id = torch.full((B, H, W), -1, dtype=torch.int32)
    face_id[0, 70:] = 5  # view 0: only its bottom 30 rows covered
    face_id[1, :, :8] = 3  # view 1: a narrow covered strip on every row
    cov = (face_id >= 0).sum(-1).reshape(-1).double() + K.ROW_BACKGROUND_COST * W
    for threads in (2, 3, 5):
        torch.set_num_threads(threads)  # (the suite's autouse fixture restores the thread count)
        ranges = K.row_ranges(face_id, B * H, 8)
        assert len(ranges) == threads
        assert ranges[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))
        assert ranges[-1][0] + ranges[-1][1] == B * H and all(n > 0 for _, n in ranges)
        work = torch.stack([cov[a:a + n].sum() for a, n in ranges])
        assert float(work.max() - work.min()) <= 2 * float(cov.max()), (ranges, work)
        counts = [n for _, n in ranges]
        assert max(counts) - min(counts) > 10  # not an equal split of the rows
    torch.set_num_threads(2)
    assert K.row_ranges(face_id, B * H, 4096) is None  # too few rows per thread: one launch
