import math

import pytest
import torch

import diffvc.geometry as G
from diffvc._kernels.geometry import nearest_faces, winding_numbers
from diffvc.testing import assert_grad_close


def _q(n, seed=0, lo=-1.2, hi=1.2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * (hi - lo) + lo


def test_tet_box_structure():
    v, t = G.tet_box((2.0, 0.5, 0.25), (8, 2, 1), center=(1.0, 0, 0), dtype=torch.float64)
    assert v.shape == (9 * 3 * 2, 3) and t.shape == (6 * 16, 4)
    vol = G.tet_volumes(v, t)
    assert (vol > 0).all() and abs(float(vol.sum()) - 0.25) < 1e-12
    assert float(v[:, 0].min()) == 0.0 and float(v[:, 0].max()) == 2.0
    bf = G.tet_boundary_faces(t)
    assert G.is_watertight(bf)
    assert abs(float(G.volume(v, bf)) - 0.25) < 1e-12  # outward boundary
    assert abs(float(G.surface_area(v, bf)) - 2 * (2 * 0.5 + 2 * 0.25 + 0.5 * 0.25)) < 1e-12
    assert_grad_close(lambda x: G.tet_volumes(x, t), (v.clone().requires_grad_(),), max_elements=30)


def test_winding_number_warp_matches_torch_and_classifies():
    v, f = G.torus(0.8, 0.3, 24, 12, dtype=torch.float64)
    q = _q(300)
    w_t = G.winding_number(v, f, q, method="torch")
    torch.set_num_threads(2)  # the kernel launch is split over 2 CPU threads (disjoint outputs)
    w_w = winding_numbers(v, f, q)
    fi2 = nearest_faces(v, f, q)
    torch.set_num_threads(1)
    assert torch.allclose(w_t, w_w, atol=1e-12)
    assert torch.equal(fi2, nearest_faces(v, f, q))
    inside = G.sdf_torus(q, 0.8, 0.3) < -0.03
    outside = G.sdf_torus(q, 0.8, 0.3) > 0.03
    assert (w_w[inside] > 0.99).all() and (w_w[outside].abs() < 0.01).all()
    assert torch.equal(G.occupancy(v, f, q)[inside | outside], inside[inside | outside])
    # open mesh: a flat square seen from above has winding number in (0, 1/2)
    gv, gf = G.grid(1.0, 2, dtype=torch.float64)
    w = G.winding_number(gv, gf, torch.tensor([[0.0, 0.1, 0.0], [0.0, -0.1, 0.0]], dtype=torch.float64))
    assert 0.3 < float(w[1]) < 0.5 and -0.5 < float(w[0]) < -0.3


def test_fast_occupancy_matches_exact_away_from_surface():
    v, f = G.torus(0.8, 0.3, 32, 16, dtype=torch.float64)
    q = _q(2000, seed=9)
    exact = G.occupancy(v, f, q, method="exact")
    fast = G.occupancy(v, f, q, method="fast")
    far = G.mesh_to_sdf(v, f, q).abs() > 0.05
    assert torch.equal(fast[far], exact[far]) and bool(exact[far].any())
    assert float((fast != exact).double().mean()) < 0.01
    with pytest.raises(ValueError, match="threshold"):
        G.occupancy(v, f, q, threshold=0.3, method="fast")


def test_closest_point_triangle_regions_against_dense_reference():
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(3, generator=g, dtype=torch.float64) for _ in range(3))
    p = torch.randn(500, 3, generator=g, dtype=torch.float64) * 2
    cp = G.closest_point_on_triangle(p, a, b, c)
    # reference: minimise over a dense barycentric sampling
    s = torch.linspace(0, 1, 301, dtype=torch.float64)
    U, V = torch.meshgrid(s, s, indexing="ij")
    m = (U + V) <= 1
    bary = a + (b - a) * U[m][:, None] + (c - a) * V[m][:, None]
    ref = torch.cdist(p, bary).min(1).values
    d = (p - cp).norm(dim=1)
    assert (d <= ref + 1e-12).all() and float((ref - d).max()) < 5e-3


def test_distance_bvh_matches_brute_and_mesh_to_sdf():
    v, f = G.icosphere(3, 0.6, dtype=torch.float64)
    q = _q(400)
    d_b = G.point_mesh_distance(v, f, q, method="brute")
    d_w = G.point_mesh_distance(v, f, q, method="bvh")
    assert torch.allclose(d_b, d_w, atol=1e-6)
    # the BVH may pick another face on ties, but an equally close one
    fi_w = nearest_faces(v, f, q)
    d_fw = (G.closest_point_on_triangle(q, v[f[fi_w, 0]], v[f[fi_w, 1]], v[f[fi_w, 2]]) - q).norm(dim=1)
    assert torch.allclose(d_fw, d_b, atol=1e-6)
    s = G.mesh_to_sdf(v, f, q)
    exact = q.norm(dim=1) - 0.6
    assert float((s - exact).abs().max()) < 0.01
    assert ((s < 0) == (exact < 0))[exact.abs() > 0.01].all()
    # the sign by the BVH fast winding number (what "auto" picks for large point x face counts)
    s_fast = G.mesh_to_sdf(v, f, q, sign_method="fast")
    away = exact.abs() > 0.05
    assert away.sum() > 100 and torch.equal(s_fast[away], G.mesh_to_sdf(v, f, q, sign_method="exact")[away])
    with pytest.raises(ValueError, match="sign_method"):
        G.mesh_to_sdf(v, f, q, sign_method="guess")


def test_distance_grads_fd_and_degenerate_finite():
    v, f = G.icosphere(1, 0.6, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    v = (v + 0.02 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
    q = _q(15, seed=5).requires_grad_()
    assert_grad_close(lambda x, p: G.mesh_to_sdf(x, f, p), (v, q), max_elements=40)
    assert_grad_close(lambda x, p: G.winding_number(x, f, p, method="torch"), (v, q), max_elements=20)
    assert_grad_close(lambda x, p: G.point_mesh_distance(x, f, p, squared=True), (v, q), max_elements=40)
    # query on a vertex, degenerate triangle: finite values and gradients
    vd = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], dtype=torch.float64, requires_grad=True)
    fd = torch.tensor([[0, 1, 2], [0, 1, 3]])
    pd = torch.tensor([[0.0, 0, 0], [1.5, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    d = G.point_mesh_distance(vd, fd, pd, method="brute")
    gv, gp = torch.autograd.grad(d.sum(), (vd, pd))
    assert torch.isfinite(d).all() and torch.isfinite(gv).all() and torch.isfinite(gp).all()
    assert abs(d[2].item() - 1.0) < 1e-12
    w = G.winding_number(vd, fd, pd, method="torch")  # queries on a vertex and on an edge
    gv, gp = torch.autograd.grad(w.sum(), (vd, pd))
    assert torch.isfinite(w).all() and torch.isfinite(gv).all() and torch.isfinite(gp).all()


def _nonconvex():
    shape = lambda p: G.smooth_difference(G.sdf_box(p, (0.6, 0.4, 0.4)), G.sdf_sphere(p, (0.0, 0.45, 0.0), 0.35), 0.05)
    return shape, G.sdf_to_mesh(shape, 16, dtype=torch.float64)


@pytest.mark.parametrize("name", ["icosphere", "box", "torus", "cylinder", "nonconvex"])
def test_tetrahedralize_valid(name):
    if name == "nonconvex":
        _, (v, f) = _nonconvex()
    else:
        v, f = {"icosphere": lambda: G.icosphere(3), "box": lambda: G.box((1.0, 2.0, 0.5)),
                "torus": lambda: G.torus(1.0, 0.35, 32, 16), "cylinder": lambda: G.cylinder(0.5, 1.0, 32)}[name]()
        v = v.double()
    res = 16 if name == "torus" else 12  # the torus tube needs a few cells across
    tv, tt = G.tetrahedralize(v, f, res)
    vol = G.tet_volumes(tv, tt)
    h = float((v.max(0).values - v.min(0).values).max()) / res
    assert (vol >= 0.1 * h ** 3 / 6 * 0.999).all()  # no inverted / flat tets
    assert tv.shape[0] == int(tt.unique().numel())  # no unreferenced vertices
    bf = G.tet_boundary_faces(tt)
    assert G.is_watertight(bf)
    exact = float(G.volume(v, f))
    assert abs(float(vol.sum()) - exact) / exact < 0.05
    # the tets lie inside the surface (centroid winding number); a few boundary tets added to make
    # the boundary manifold, or moved by snapping in concave regions, may poke out
    assert float((G.winding_number(v, f, tv[tt].mean(1)) > 0.5).double().mean()) > 0.95
    # snapped boundary nodes are on the surface (most of them)
    bn = bf.unique()
    d = G.point_mesh_distance(v, f, tv[bn])
    assert float((d < 1e-9).double().mean()) > 0.5


def test_tetrahedralize_converges_and_errors():
    v, f = G.icosphere(3, dtype=torch.float64)
    exact = float(G.volume(v, f))
    e = [abs(float(G.tet_volumes(*G.tetrahedralize(v, f, r)).sum()) - exact) / exact for r in (4, 8)]
    e_nosnap = abs(float(G.tet_volumes(*G.tetrahedralize(v, f, 8, snap=False)).sum()) - exact) / exact
    assert e[1] < 0.02 and e[1] < e_nosnap
    with pytest.raises(ValueError, match="faces"):
        G.tetrahedralize(v, f[:0])
    with pytest.raises(ValueError, match="resolution"):
        G.tetrahedralize(v, f, 0)
