import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


@pytest.mark.parametrize("method", ["lu", "cg"])
def test_roundtrip_and_solver(method):
    v, f = G.icosphere(2, dtype=torch.float64)
    L = G.uniform_laplacian(f, v.shape[0], dtype=torch.float64)
    u = G.to_differential(L, v, 10.0)
    x = G.from_differential(L, u, 10.0, method=method)
    assert torch.allclose(x, v, atol=1e-9)
    M = G.system_matrix(L, 10.0).to_dense()
    assert torch.allclose(M @ v, u, atol=1e-12)


@pytest.mark.parametrize("method", ["lu", "cg"])
def test_grad_from_differential(method):
    v, f = G.icosphere(1, dtype=torch.float64)
    L = G.cotangent_laplacian(v, f).detach()
    u = (v + 0.1).requires_grad_()
    assert_grad_close(lambda a: G.from_differential(L, a, 5.0, method=method), (u,), max_elements=30, rtol=1e-6)
    x = v.clone().requires_grad_()
    assert_grad_close(lambda a: G.to_differential(L, a, 5.0), (x,), max_elements=30)


def test_float32_and_solver_cache():
    v, f = G.icosphere(2)
    L = G.uniform_laplacian(f, v.shape[0])
    u = G.to_differential(L, v, 20.0)
    x1 = G.from_differential(L, u, 20.0)
    x2 = G.from_differential(L, u, 20.0, method="cg")
    assert x1.dtype == torch.float32
    assert torch.allclose(x1, v, atol=1e-4) and torch.allclose(x2, v, atol=1e-4)
    from diffvc.geometry.large_steps import _CACHE

    assert (id(L), 20.0, "auto") in _CACHE


def test_large_steps_object_smooths_updates():
    v, f = G.icosphere(2, dtype=torch.float64)
    ls = G.LargeSteps(v, f, lam=20.0)
    assert torch.allclose(ls.verts(), v, atol=1e-9)
    # a gradient concentrated on one vertex becomes a smooth bump: many vertices move
    loss = ls.verts()[0, 1]
    loss.backward()
    with torch.no_grad():
        ls.u -= 0.1 * ls.u.grad
    moved = (ls.verts() - v).norm(dim=1)
    assert int((moved > 1e-3 * moved.max()).sum()) > 20
    ls.set_verts(v * 2)
    assert torch.allclose(ls.verts(), v * 2, atol=1e-9)
    with pytest.raises(ValueError, match="laplacian"):
        G.LargeSteps(v, f, laplacian="bogus")


def test_large_steps_fits_target_sphere():
    v, f = G.icosphere(2, dtype=torch.float64)
    target = v * torch.tensor([1.5, 0.8, 1.2], dtype=torch.float64)
    ls = G.LargeSteps(v, f, lam=10.0)
    opt = torch.optim.Adam(ls.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = ((ls.verts() - target) ** 2).sum(1).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_regularizers_values_and_grads():
    v, f = G.icosphere(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    vj = (v + 0.03 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
    for m in ("uniform", "cotangent"):
        assert_grad_close(lambda x: G.laplacian_smoothing_loss(x, f, m), (vj,), max_elements=30)
    assert_grad_close(lambda x: G.normal_consistency_loss(x, f), (vj,), max_elements=30)
    assert_grad_close(lambda x: G.edge_length_loss(x, f), (vj,), max_elements=30)
    assert_grad_close(lambda x: G.edge_length_loss(x, f, 0.3), (vj,), max_elements=30)
    # flat grid: zero normal consistency and zero uniform Laplacian at interior... and a known edge loss
    gv, gf = G.grid((1.0, 1.0), (1, 1), dtype=torch.float64)
    assert float(G.normal_consistency_loss(gv, gf)) < 1e-15
    e = G.edges(gf)
    assert abs(float(G.edge_length_loss(gv, gf)) - (4 * 1 + 2) / 5) < 1e-12
    # jitter increases the smoothness losses
    assert float(G.laplacian_smoothing_loss(vj, f)) > float(G.laplacian_smoothing_loss(v, f))
    assert float(G.normal_consistency_loss(vj, f)) > float(G.normal_consistency_loss(v, f))
    assert e.shape == (5, 2)


def test_regularizers_degenerate_finite():
    v = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [1, 3, 2]])
    loss = (G.laplacian_smoothing_loss(v, f) + G.laplacian_smoothing_loss(v, f, "cotangent")
            + G.normal_consistency_loss(v, f) + G.edge_length_loss(v, f, 0.5))
    (gr,) = torch.autograd.grad(loss, v)
    assert torch.isfinite(loss) and torch.isfinite(gr).all()
    ve = torch.zeros(0, 3, requires_grad=True)
    fe = torch.zeros(0, 3, dtype=torch.long)
    assert float(G.edge_length_loss(ve, fe)) == 0.0 and float(G.normal_consistency_loss(ve, fe)) == 0.0


def test_adam_uniform_step_and_fit():
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64, requires_grad=True)
    opt = G.AdamUniform([x], lr=0.1)
    (x * torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)).sum().backward()
    opt.step()
    # first step: lr * g / max|g| (one scale for all entries)
    exp = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64) - 0.1 * torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64) / 3.0
    assert torch.allclose(x.detach(), exp, atol=1e-9)
    v, f = G.icosphere(2, dtype=torch.float64)
    target = v * torch.tensor([1.4, 0.8, 1.1], dtype=torch.float64)
    ls = G.LargeSteps(v, f, lam=10.0)
    opt = G.AdamUniform(ls.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = ((ls.verts() - target) ** 2).sum(1).mean()
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_normal_consistency_follows_edited_and_new_face_tensors():
    """The adjacent-face pairs are kept per faces tensor: an in-place edit of the same tensor, a new
    tensor (possibly at a freed tensor's address) and a face list all give the loss of their own
    faces (compared with the pairs computed afresh)."""
    from diffvc.geometry.normals import mesh_normals

    def fresh(v, f):
        pairs, _ = G.face_adjacency(f)
        n = mesh_normals(v, f, backend="torch")[0]
        return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()

    v, f = G.icosphere(2, dtype=torch.float64)
    v = v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = f.clone()
    assert abs(float(G.normal_consistency_loss(v, f) - fresh(v, f))) < 1e-14
    f[:40] = f[:40, [0, 2, 1]]  # flip 40 faces in place: their normals (and the loss) change
    assert abs(float(G.normal_consistency_loss(v, f) - fresh(v, f))) < 1e-14
    for k in range(6):  # new tensors, each freed after use
        fk = f[torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(k))].contiguous()
        fk[: 10 * k] = fk[: 10 * k, [1, 0, 2]]
        assert abs(float(G.normal_consistency_loss(v, fk) - fresh(v, fk))) < 1e-14
        del fk
    assert abs(float(G.normal_consistency_loss(v, f.tolist()) - fresh(v, f))) < 1e-14


def test_laplacian_smoothing_equals_the_sparse_matrix_product_and_spmm_gradients():
    """The edge-summed ``L x`` of laplacian_smoothing_loss is the product with the documented sparse
    Laplacians (uniform_laplacian, cotangent_laplacian), values and gradients; laplacian_apply with a
    differentiable cotangent Laplacian (the gather/scatter product of ``_spmm``) matches
    ``torch.sparse.mm`` and central differences in float64; the cached edges follow the vertex count."""
    from diffvc.geometry.laplacian import laplacian_apply

    v, f = G.icosphere(2, dtype=torch.float64)
    v = v + 0.04 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    n = v.shape[0]

    def reference(x, method):
        if method == "uniform":
            L = G.uniform_laplacian(f, n, dtype=x.dtype)
            deg = torch.bincount(G.edges(f).reshape(-1), minlength=n).to(x.dtype)
            d = torch.sparse.mm(L, x) / deg.clamp_min(1)[:, None]
        else:
            d = torch.sparse.mm(G.cotangent_laplacian(x, f), x) / (2 * G.vertex_areas(x, f))[:, None]
        return (d * d).sum(-1).mean()

    for method in ("uniform", "cotangent"):
        x = v.clone().requires_grad_()
        y = v.clone().requires_grad_()
        a, b = G.laplacian_smoothing_loss(x, f, method), reference(y, method)
        assert abs(float(a - b)) <= 1e-13 * float(b)
        (ga,) = torch.autograd.grad(a, x)
        (gb,) = torch.autograd.grad(b, y)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12 * float(gb.abs().max()))
    X = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = v.clone().requires_grad_()
    y = v.clone().requires_grad_()
    a = laplacian_apply(G.cotangent_laplacian(x, f), X)
    b = torch.sparse.mm(G.cotangent_laplacian(y, f), X)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, y, g)[0], rtol=1e-10, atol=1e-10)
    vs, fs = G.icosphere(1, dtype=torch.float64)
    vs = (vs + 0.03 * torch.randn(vs.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    vs = vs.requires_grad_()
    Xs = X[: vs.shape[0]]
    assert_grad_close(lambda p: laplacian_apply(G.cotangent_laplacian(p, fs), Xs), (vs,), max_elements=30)
    assert_grad_close(lambda p, q: laplacian_apply(G.cotangent_laplacian(p, fs), q), (vs, Xs.clone().requires_grad_()),
                      max_elements=30)
    # the same faces tensor with one more (isolated) vertex: the cached degrees follow the count
    v2 = torch.cat([v, torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)])
    G.laplacian_smoothing_loss(v, f)
    expect = reference(v, "uniform") * n / (n + 1)  # the isolated vertex adds a zero term to the mean
    assert abs(float(G.laplacian_smoothing_loss(v2, f) - expect)) <= 1e-13 * float(expect)
