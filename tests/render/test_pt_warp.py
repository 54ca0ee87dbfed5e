"""The warped-area parameterisation of the path tracer's geometry terms (render/pt_edges.py)."""

import pytest
import torch

from diffvc.geometry.distance import _closest_barycentric
from diffvc.render import Cameras
from diffvc.render.pathtrace import path_trace
from diffvc.render.pt_edges import _Warp
from diffvc.render.pt_scene import PathTracingScene, PTMaterial, cornell_box, cornell_camera, oriented_box, quad


def test_closest_barycentric_matches_a_dense_search():
    g = torch.Generator().manual_seed(0)
    tri = torch.randn(6, 3, 3, generator=g, dtype=torch.float64)
    p = torch.randn(40, 3, generator=g, dtype=torch.float64) * 1.5
    b = _closest_barycentric(p[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])  # (40, 6, 3)
    assert (b >= -1e-12).all() and torch.allclose(b.sum(-1), torch.ones(40, 6, dtype=torch.float64))
    q = (b[..., None] * tri[None]).sum(2)
    d = (q - p[:, None]).norm(dim=-1)
    n = 300
    s, t = torch.meshgrid(torch.linspace(0, 1, n, dtype=torch.float64), torch.linspace(0, 1, n, dtype=torch.float64),
                          indexing="ij")
    keep = (s + t) <= 1
    w = torch.stack([1 - s[keep] - t[keep], s[keep], t[keep]], -1)  # dense barycentric grid
    dense = (w[None, :, :, None] * tri[:, None]).sum(2)  # (6, G, 3)
    dd = torch.cdist(p, dense.reshape(-1, 3)).reshape(40, 6, -1).amin(-1)
    assert (d <= dd + 1e-12).all()
    assert (dd - d).max() < 5e-3  # grid spacing ~ 1/300 of an edge


def _cornell():
    scene, info = cornell_box(dtype=torch.float64)
    return scene.replace(dynamic_faces=info["tall_box_faces"]), info


def _directional(fn, v0, T):
    """d fn(v) / d v along T (fn returns a tensor; the result has its shape)."""
    v = v0.clone().requires_grad_(True)
    out = fn(v)
    rows = [torch.autograd.grad(o, v, retain_graph=True, allow_unused=True)[0] for o in out.reshape(-1)]
    return torch.stack([(r * T).sum() if r is not None else torch.zeros((), dtype=v0.dtype) for r in rows]).reshape(
        out.shape)


def test_warp_carries_static_points_next_to_the_moving_box_along_and_leaves_far_ones():
    scene, info = _cornell()
    w = _Warp(scene)
    assert 0.05 < w.R < 0.1236  # the tall box is 0.1236 from the short box's edges
    dyn_v = torch.unique(scene.faces[info["tall_box_faces"]].reshape(-1))
    T = torch.zeros_like(scene.vertices)
    T[dyn_v, 0] = 1.0  # translate the tall box along x
    floor = int(torch.nonzero(scene.face_material == 0)[0])  # first white face: the floor
    assert abs(float(w.normal[floor][1])) > 0.99
    # a floor point 0.004 in front of the tall box's front-left bottom corner, and one far away
    y = torch.tensor([[-0.5379, 0.0, 0.0953 + 0.004], [0.8, 0.0, 0.8]], dtype=torch.float64)
    face = torch.tensor([floor, floor])
    dX = _directional(lambda v: w.points(v, face, y)[0], scene.vertices, T)
    rho = (1 - (0.004 / w.R) ** 2) ** 3
    torch.testing.assert_close(dX[0], torch.tensor([rho, 0.0, 0.0], dtype=torch.float64), atol=2e-3, rtol=0)
    assert dX[1].abs().max() == 0
    # points of the moving box are material points
    top = int(torch.nonzero(info["tall_box_faces"])[3])
    yb = scene.vertices[scene.faces[top]].mean(0, keepdim=True)
    dXb = _directional(lambda v: w.points(v, torch.tensor([top]), yb)[0], scene.vertices, T)
    torch.testing.assert_close(dXb[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_warp_area_element_is_the_area_change_of_warped_triangles():
    """J's derivative (the surface divergence of the warp) against the area change of a small
    triangle of warped floor points, for a general motion of the box's vertices."""
    scene, info = _cornell()
    w = _Warp(scene)
    g = torch.Generator().manual_seed(3)
    T = torch.zeros_like(scene.vertices)
    dyn_v = torch.unique(scene.faces[info["tall_box_faces"]].reshape(-1))
    T[dyn_v] = torch.randn(dyn_v.numel(), 3, generator=g, dtype=torch.float64)
    floor = int(torch.nonzero(scene.face_material == 0)[0])
    c = torch.tensor([-0.5379 + 0.02, 0.0, 0.0953 + 0.5 * w.R], dtype=torch.float64)
    h = 1e-4
    tri = c + torch.tensor([[0.0, 0, 0], [h, 0, 0], [0, 0, h]], dtype=torch.float64)

    def area(v):
        X = w.points(v, torch.full((3,), floor), tri)[0]
        return torch.linalg.cross(X[1] - X[0], X[2] - X[0], dim=-1).norm()[None]

    d_area = _directional(area, scene.vertices, T) / (h * h)  # relative change of the area
    dJ = _directional(lambda v: w.points(v, torch.tensor([floor]), tri.mean(0, keepdim=True))[2], scene.vertices, T)
    assert abs(float(dJ[0])) > 1.0  # the field varies across the band
    assert abs(float(d_area[0] - dJ[0])) < 2e-3 * abs(float(dJ[0])), (float(d_area[0]), float(dJ[0]))


def _contact_scene(cx):
    """A box resting on a floor (contact band) under a square area light, black sky."""
    fv, ff = quad((-2, 0, -2), (-2, 0, 2), (2, 0, 2), (2, 0, -2), dtype=torch.float64)
    bv, bf = oriented_box(torch.stack([cx, torch.tensor(0.3, dtype=torch.float64),
                                       torch.tensor(0.0, dtype=torch.float64)]), (0.6, 0.6, 0.6), 0.4,
                          dtype=torch.float64)
    lv, lf = quad((-0.4, 1.6, -0.4), (0.4, 1.6, -0.4), (0.4, 1.6, 0.4), (-0.4, 1.6, 0.4), dtype=torch.float64)
    s = PathTracingScene.from_meshes(
        [(fv, ff, 0), (bv, bf, 1), (lv, lf, 2)],
        [PTMaterial("diffuse", (0.7, 0.7, 0.7)), PTMaterial("diffuse", (0.6, 0.3, 0.2)),
         PTMaterial("diffuse", (0.0,) * 3, emission=(6.0,) * 3)], dtype=torch.float64)
    return s.replace(dynamic_faces=(torch.arange(16) >= 2) & (torch.arange(16) < 14))


def _contact_check(depth, ad_seeds, fd_seeds):
    """d/dx of the left and right image halves (the box moves from one into the other)."""
    H = 6
    cam = Cameras.look_at([[0.0, 1.6, 2.2]], (0.0, 0.2, 0.0), width=H, height=H, fov_y=40.0, dtype=torch.float64)
    x0 = torch.tensor(0.1, dtype=torch.float64)

    def halves(x, spp, seed, **kw):
        im = path_trace(_contact_scene(x), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=100, **kw).sum(-1)
        return torch.stack([im[:, :3].sum(), im[:, 3:].sum()])

    g = torch.zeros(2, dtype=torch.float64)
    for seed in ad_seeds:
        x = x0.clone().requires_grad_()
        b = halves(x, 1, seed, edge_samples=4000, edge_spp=8, secondary_spp=64, interior_spp=64)
        g += torch.stack([torch.autograd.grad(b[i], x, retain_graph=True)[0] for i in range(2)]) / len(ad_seeds)
    with torch.no_grad():
        fd = sum((halves(x0 + 0.02, 4096, s) - halves(x0 - 0.02, 4096, s)) / 0.04 for s in fd_seeds) / len(fd_seeds)
    return g, fd


def test_contact_gradient_matches_finite_differences():
    """A box resting on a floor (the contact band), translated along x, direct light: primary
    edges + warped interior and boundary terms + pixel borders against central differences of
    the two image halves (AD 5.26 / -4.62 vs FD 5.16 / -4.59 when written; the sliding form's
    image sum had a per-seed spread of 0.2-0.75 where FD gives 0.6)."""
    g, fd = _contact_check(1, (0, 1), (101, 102, 103))
    assert ((g - fd).abs() < 0.1 * fd.abs()).all(), (g, fd)


@pytest.mark.slow
def test_contact_gradient_two_bounces_matches_finite_differences():
    g, fd = _contact_check(2, (0, 1, 2, 3), (101, 102, 103, 104, 105))
    assert ((g - fd).abs() < 0.12 * fd.abs()).all(), (g, fd)


@pytest.mark.parametrize("kw", [dict(secondary_spp=8), dict(interior_spp=8)])
def test_one_kind_of_term_alone_keeps_the_sliding_form(kw):
    """Secondary or interior terms alone use the sliding parameterisation: finite gradients."""
    scene, _ = _cornell()
    v = scene.vertices.clone().requires_grad_()
    img = path_trace(scene.replace(vertices=v), cornell_camera(4, 4, dtype=torch.float64), spp=1, max_depth=2,
                     seed=0, **kw)
    img.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
