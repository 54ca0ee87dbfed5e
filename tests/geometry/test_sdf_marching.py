import math

import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


def _pts(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2


def test_sdf_primitives_match_definitions():
    p = _pts()
    assert torch.allclose(G.sdf_sphere(p, (0.1, 0, 0), 0.5), (p - torch.tensor([0.1, 0, 0], dtype=torch.float64)).norm(dim=1) - 0.5)
    # box: inside distance = -(distance to nearest face); outside = distance to the box
    hs = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    d = G.sdf_box(p, hs)
    q = p.abs() - hs
    inside = (q < 0).all(1)
    assert torch.allclose(d[inside], q[inside].max(1).values)
    assert torch.allclose(d[~inside], q[~inside].clamp_min(0).norm(dim=1))
    # torus: distance to the centre circle minus the tube radius
    R, r = 0.8, 0.2
    circ = torch.stack([p[:, [0, 2]].norm(dim=1) - R, p[:, 1]], 1).norm(dim=1) - r
    assert torch.allclose(G.sdf_torus(p, R, r), circ)
    # capsule: distance to a segment
    d = G.sdf_capsule(p, (0, -0.5, 0), (0, 0.5, 0), 0.25)
    y = p[:, 1].clamp(-0.5, 0.5)
    ref = (p - torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], 1)).norm(dim=1) - 0.25
    assert torch.allclose(d, ref)
    cyl = G.sdf_cylinder(p, 0.5, 1.0)
    assert ((cyl < 0) == ((p[:, [0, 2]].norm(dim=1) < 0.5) & (p[:, 1].abs() < 0.5))).all()
    assert torch.allclose(G.sdf_plane(p, (0, 2.0, 0), 0.1), p[:, 1] - 0.1)


def test_smooth_csg_properties():
    a, b = torch.tensor([0.3, -0.2, 1.0, 0.05], dtype=torch.float64), torch.tensor([0.5, 0.4, -1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(G.smooth_union(a, b, 0.0), torch.minimum(a, b))
    su = G.smooth_union(a, b, 0.2)
    assert (su <= torch.minimum(a, b) + 1e-15).all()
    far = (a - b).abs() >= 0.2
    assert torch.allclose(su[far], torch.minimum(a, b)[far])
    assert (G.smooth_intersection(a, b, 0.2) >= torch.maximum(a, b) - 1e-15).all()
    assert torch.allclose(G.smooth_difference(a, b, 0.0), torch.maximum(a, -b))
    assert torch.allclose(G.union(a, b), torch.minimum(a, b)) and torch.allclose(G.intersection(a, b), torch.maximum(a, b))


def test_sdf_grads_fd_and_finite_at_singular_points():
    p = _pts(20).requires_grad_()
    c = torch.tensor([0.1, 0.0, -0.1], dtype=torch.float64, requires_grad=True)
    r = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    k = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert_grad_close(lambda x, cc, rr: G.sdf_sphere(x, cc, rr), (p, c, r))
    assert_grad_close(lambda x: G.sdf_box(x, (0.3, 0.5, 0.2), rounding=0.05), (p,))
    assert_grad_close(lambda x: G.sdf_torus(x, 0.8, 0.2), (p,))
    assert_grad_close(lambda x: G.sdf_capsule(x), (p,))
    assert_grad_close(lambda x: G.sdf_cylinder(x), (p,))
    assert_grad_close(lambda x, kk: G.smooth_union(G.sdf_sphere(x, (-0.3, 0, 0), 0.4), G.sdf_sphere(x, (0.3, 0, 0), 0.4), kk), (p, k))
    assert_grad_close(lambda x, kk: G.smooth_difference(G.sdf_box(x), G.sdf_sphere(x, radius=0.6), kk), (p, k))
    # singular points: sphere centre, torus axis, box centre
    q = torch.tensor([[0.0, 0, 0], [0, 0.3, 0]], dtype=torch.float64, requires_grad=True)
    tot = G.sdf_sphere(q).sum() + G.sdf_torus(q).sum() + G.sdf_box(q).sum() + G.sdf_capsule(q).sum()
    (g,) = torch.autograd.grad(tot, q)
    assert torch.isfinite(g).all()
    n = G.sdf_normal(lambda x: G.sdf_sphere(x, radius=0.5), torch.tensor([[0.0, 0.9, 0.0]]))
    assert torch.allclose(n, torch.tensor([[0.0, 1.0, 0.0]]))


def test_tet_grid_conforming_and_positive():
    v, t = G.tet_grid(3, (-1.0, 2.0), dtype=torch.float64)
    assert v.shape == (64, 3) and t.shape == (162, 4)
    x = v[t]
    vol = torch.linalg.det(torch.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], -1)) / 6
    assert (vol > 0).all()
    assert abs(float(vol.sum()) - 27.0) < 1e-12
    # conforming: every triangle face is shared by at most two tets, boundary faces tile the cube surface
    f = torch.cat([t[:, [0, 1, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 3]], t[:, [1, 2, 3]]]).sort(1).values
    _, counts = torch.unique(f, dim=0, return_counts=True)
    assert counts.max() == 2 and int((counts == 1).sum()) == 6 * 9 * 2


def _chamfer_to_sphere(v, f, r, n=4000):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n, 3, generator=g, dtype=torch.float64)
    s = r * s / s.norm(dim=1, keepdim=True)
    d_mesh_to_sphere = ((v.norm(dim=1) - r) ** 2).mean()
    d_sphere_to_mesh = torch.cdist(s, v.double()).min(1).values.pow(2).mean()
    return float(d_mesh_to_sphere + d_sphere_to_mesh)


def test_marching_tets_reproduces_sphere_and_converges():
    r = 0.7
    errs = []
    for res in (8, 16, 32):
        v, f = G.sdf_to_mesh(lambda p: G.sdf_sphere(p, radius=r), res, dtype=torch.float64)
        assert G.is_watertight(f)
        assert float(G.volume(v, f)) > 0
        n = G.face_normals(v, f)
        assert float(((n * v[f].mean(1)).sum(-1) > 0).double().mean()) > 0.99  # outward
        errs.append(_chamfer_to_sphere(v, f, r))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 5e-4
    vol_err = abs(float(G.volume(v, f)) - 4 / 3 * math.pi * r ** 3) / (4 / 3 * math.pi * r ** 3)
    assert vol_err < 0.01


def test_marching_tets_nonconvex_blob_genus0_and_torus_genus1():
    blob = lambda p: G.smooth_union(G.sdf_sphere(p, (-0.35, 0, 0), 0.4),
                                    G.smooth_difference(G.sdf_sphere(p, (0.35, 0.1, 0), 0.4),
                                                        G.sdf_sphere(p, (0.6, 0.3, 0), 0.2), 0.05), 0.15)
    v, f = G.sdf_to_mesh(blob, 24)
    assert G.is_watertight(f)
    chi = v.shape[0] - G.edges(f).shape[0] + f.shape[0]
    assert chi == 2
    v, f = G.sdf_to_mesh(lambda p: G.sdf_torus(p, 0.6, 0.25), 24)
    assert G.is_watertight(f) and v.shape[0] - G.edges(f).shape[0] + f.shape[0] == 0
    assert float(G.volume(v, f)) > 0


def test_marching_tets_grad_fd_sdf_and_verts():
    gv, gt = G.tet_grid(3, (-1.0, 1.0), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    s = gv.norm(dim=1) - 0.75 + 0.05 * torch.randn(gv.shape[0], generator=g, dtype=torch.float64)
    assert float(s.abs().min()) > 1e-3
    s = s.requires_grad_()
    x = (gv + 0.02 * torch.randn(gv.shape, generator=g, dtype=torch.float64)).requires_grad_()
    v, f = G.marching_tetrahedra(x, gt, s)
    assert f.shape[0] > 20
    assert_grad_close(lambda xx, ss: G.marching_tetrahedra(xx, gt, ss)[0], (x, s), max_elements=40)
    # a loss on the extracted mesh's volume: its gradient reaches the sdf values
    assert_grad_close(lambda ss: G.volume(*G.marching_tetrahedra(gv, gt, ss)), (s,), max_elements=40)


def test_marching_tets_degenerate_and_errors():
    gv, gt = G.tet_grid(2, (-1.0, 1.0), dtype=torch.float64)
    # no crossing -> empty mesh
    v, f = G.marching_tetrahedra(gv, gt, torch.ones(gv.shape[0], dtype=torch.float64))
    assert v.shape == (0, 3) and f.shape == (0, 3)
    # exact zeros on grid vertices (plane through a grid layer): finite values and grads
    s = gv[:, 1].clone().requires_grad_()
    v, f = G.marching_tetrahedra(gv, gt, s)
    assert torch.isfinite(v).all() and f.shape[0] > 0
    (gr,) = torch.autograd.grad(v.sum(), s)
    assert torch.isfinite(gr).all()
    with pytest.raises(ValueError, match="sdf"):
        G.marching_tetrahedra(gv, gt, s[:-1])
    bad = s.detach().clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="sdf"):
        G.marching_tetrahedra(gv, gt, bad)
    with pytest.raises(ValueError, match="tets"):
        G.marching_tetrahedra(gv, gt[:, :3], s)
