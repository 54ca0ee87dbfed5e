import math

import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


def test_sample_points_uniform_on_surface():
    v, f = G.box((1.0, 2.0, 3.0), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    p, n, fi = G.sample_points(v, f, 30000, return_normals=True, return_faces=True, generator=g)
    assert p.shape == (30000, 3) and n.shape == (30000, 3)
    # on the surface: some coordinate at its extreme, and the normal is that axis
    half = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    on = (p.abs() - half).abs().min(1).values
    assert float(on.max()) < 1e-12
    # fraction of samples per box side proportional to area (x-sides: 2*3=6 of total 22)
    frac_x = float((n[:, 0].abs() > 0.5).double().mean())
    assert abs(frac_x - 12 / 22) < 0.015
    # uniform within a face: mean of samples on the +z side is its centre
    top = n[:, 2] > 0.5
    assert torch.allclose(p[top, :2].mean(0), torch.zeros(2, dtype=torch.float64), atol=0.03)
    assert torch.equal(G.face_normals(v, f)[fi], n)


def test_sample_points_grad_fd():
    v, f = G.icosphere(1, dtype=torch.float64)
    v = v.requires_grad_()

    def fn(x):
        return G.sample_points(x, f, 50, return_normals=True, generator=torch.Generator().manual_seed(3))

    assert_grad_close(fn, (v,), max_elements=40)
    with pytest.raises(ValueError, match="zero total area"):
        G.sample_points(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 10)


@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_knn_matches_reference(method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 3, generator=g, dtype=torch.float64)
    y = torch.rand(200, 3, generator=g, dtype=torch.float64)
    d, i = G.knn(x, y, 4, method=method, chunk_elems=5000)
    ref = torch.cdist(x, y) ** 2
    rd, ri = ref.topk(4, dim=1, largest=False)
    assert torch.equal(i, ri) and torch.allclose(d, rd, atol=1e-12)
    d1, i1 = G.nearest_neighbor(x, y, method=method)
    assert torch.equal(i1, ri[:, 0])
    xg = x[:10].clone().requires_grad_()
    yg = y.clone().requires_grad_()
    assert_grad_close(lambda a, b: G.knn(a, b, 3, method=method)[0], (xg, yg), max_elements=30)


def test_chamfer_values_grads_and_normals():
    x = torch.tensor([[0.0, 0, 0], [1, 0, 0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.5, 0]], dtype=torch.float64)
    # x->y: (0.25 + 1.25)/2 = 0.75 ; y->x: 0.25
    assert abs(float(G.chamfer_distance(x, y)) - 1.0) < 1e-12
    assert abs(float(G.chamfer_distance(x, y, squared=False)) - ((0.5 + math.sqrt(1.25)) / 2 + 0.5)) < 1e-12
    assert abs(float(G.chamfer_distance(x, y, reduction="sum")) - 1.75) < 1e-12
    assert float(G.chamfer_distance(x, x)) == 0.0
    nx = torch.tensor([[0.0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    ny = torch.tensor([[0.0, -1, 0]], dtype=torch.float64)
    _, nl = G.chamfer_distance(x, y, nx, ny)
    assert abs(float(nl) - (0.5 + 0.0)) < 1e-12  # x->y: (0 + 1)/2, y->x: 0 (|cos| ignores orientation)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(30, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.rand(25, 3, generator=g, dtype=torch.float64).requires_grad_()
    na = torch.nn.functional.normalize(torch.randn(30, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    nb = torch.nn.functional.normalize(torch.randn(25, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    assert_grad_close(lambda p, q, m, n: G.chamfer_distance(p, q, m, n), (a, b, na, nb), max_elements=30)
    assert_grad_close(lambda p, q: G.chamfer_distance(p, q, squared=False), (a, b), max_elements=30)
    # coincident points with unsquared distance: finite gradient
    c = a.detach().clone().requires_grad_()
    (gc,) = torch.autograd.grad(G.chamfer_distance(c, a.detach(), squared=False), c)
    assert torch.isfinite(gc).all()
    with pytest.raises(ValueError, match="non-empty"):
        G.chamfer_distance(a, b[:0])
    with pytest.raises(TypeError, match="y is torch.float64 but x is torch.float32"):
        G.chamfer_distance(a.float(), b)


def test_marching_tets_sphere_chamfer_decreases():
    r = 0.7
    g = torch.Generator().manual_seed(0)
    s = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    s = r * s / s.norm(dim=1, keepdim=True)
    errs = []
    for res in (8, 16, 32):
        v, f = G.sdf_to_mesh(lambda p: G.sdf_sphere(p, radius=r), res, dtype=torch.float64)
        pts = G.sample_points(v, f, 20000, generator=torch.Generator().manual_seed(1))
        errs.append(float(G.chamfer_distance(pts, s)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 2e-4  # squared distance: ~ (0.01 of the radius)^2 level


def test_dtype_mix_and_nonfinite_errors_name_the_argument():
    v, f = G.icosphere(1, dtype=torch.float64)
    q32 = torch.rand(5, 3)
    with pytest.raises(ValueError, match="points"):
        G.winding_number(v, f, q32)
    with pytest.raises(ValueError, match="points"):
        G.mesh_to_sdf(v, f, q32)
    with pytest.raises(ValueError, match="values"):
        G.trilinear_sample(torch.zeros(4, 4, 4), torch.rand(3, 3, dtype=torch.float64))
    bad = torch.rand(5, 3, dtype=torch.float64)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="points"):
        G.winding_number(v, f, bad)
    with pytest.raises(ValueError, match="x"):
        G.chamfer_distance(bad, v)
    with pytest.raises(ValueError, match="k must"):
        G.knn(v, v[:3], 4)
    with pytest.raises(ValueError, match="sdf"):
        G.marching_tetrahedra(*G.tet_grid(2), torch.zeros(27, dtype=torch.float64, device="cpu")[:5])
    with pytest.raises(ValueError, match="u"):
        G.from_differential(G.uniform_laplacian(f, v.shape[0], dtype=torch.float64), bad, 1.0)
