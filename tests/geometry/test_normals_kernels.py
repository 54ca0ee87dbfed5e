"""The Warp normals kernels (``diffvc._kernels.normals``) against their torch twin.

Same values (to rounding) and gradients on a mesh with every degenerate case the normals define:
a zero-area face (repeated vertex), a collinear face, an isolated vertex, and two vertices whose
incident normals cancel (a face and its reverse); with one and with two threads (the split launch
scatters into per-range buffers), float32 and float64. Gradients of the kernel path against
central finite differences in float64; second derivatives (through the twin) by gradgradcheck.
"""

import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


def _mesh(dtype=torch.float64, seg=(80, 60)):  # 9,600 faces: split over 2 threads
    v, f = G.torus(1.0, 0.3, *seg, dtype=dtype)
    v = v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    V = v.shape[0]
    extra = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 2.0], [2.0, 0.0, 2.0],  # collinear
                          [0.0, 3.0, 0.0], [1.0, 3.0, 0.0], [0.0, 3.0, 1.0],  # a face and its reverse
                          [5.0, 5.0, 5.0]], dtype=dtype)  # isolated
    v = torch.cat([v, extra])
    deg = torch.tensor([[0, 0, 1],  # zero area: repeated vertex
                        [V, V + 1, V + 2], [V + 3, V + 4, V + 5], [V + 3, V + 5, V + 4]])
    return v, torch.cat([f, deg])


def _both(v, f, backend, ga, gb):
    x = v.clone().requires_grad_()
    a, b = G.mesh_normals(x, f, backend=backend)
    ((a * ga).sum() + (b * gb).sum()).backward()
    return a.detach(), b.detach(), x.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_the_twin_with_degenerate_faces_and_vertices(dtype, tol, threads):
    torch.set_num_threads(threads)
    v, f = _mesh(dtype)
    V, F = v.shape[0], f.shape[0]
    gen = torch.Generator().manual_seed(1)
    ga = torch.randn(F, 3, generator=gen).to(dtype)
    gb = torch.randn(V, 3, generator=gen).to(dtype)
    a, b, g = _both(v, f, "warp", ga, gb)
    a2, b2, g2 = _both(v, f, "torch", ga, gb)
    torch.testing.assert_close(a, a2, rtol=0, atol=tol)
    torch.testing.assert_close(b, b2, rtol=0, atol=tol)
    torch.testing.assert_close(g, g2, rtol=tol, atol=tol * float(g2.abs().max()))
    assert torch.isfinite(g).all()
    # the degenerate cases: zero normals; unit normals elsewhere
    assert torch.equal(a[-4:-2], torch.zeros(2, 3, dtype=dtype))  # zero area, collinear
    assert torch.equal(b[-1], torch.zeros(3, dtype=dtype))  # isolated
    assert torch.equal(b[-4:-1], torch.zeros(3, 3, dtype=dtype))  # a face and its reverse cancel
    assert torch.equal(g[-1], torch.zeros(3, dtype=dtype))
    torch.testing.assert_close(a[:-4].norm(dim=1), torch.ones(F - 4, dtype=dtype), rtol=0, atol=10 * tol)
    # each output alone (the other's gradient absent)
    for face in (True, False):
        x = v.clone().requires_grad_()
        y = v.clone().requires_grad_()
        out = G.face_normals(x, f) if face else G.vertex_normals(x, f)
        ref = G.face_normals(y, f, backend="torch") if face else G.vertex_normals(y, f, backend="torch")
        torch.testing.assert_close(out, ref, rtol=0, atol=tol)
        (out * (ga if face else gb)).sum().backward()
        (ref * (ga if face else gb)).sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=tol, atol=tol * float(y.grad.abs().max()))


def test_kernel_gradients_match_finite_differences_and_second_derivatives():
    v, f = G.torus(1.0, 0.4, 6, 5, dtype=torch.float64)
    v = (v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    v = v.requires_grad_()
    assert_grad_close(lambda x: G.mesh_normals(x, f), (v,))
    assert_grad_close(lambda x: G.face_normals(x, f), (v,))
    assert_grad_close(lambda x: G.vertex_normals(x, f), (v,))
    torch.set_num_threads(2)
    big_v, big_f = G.torus(1.0, 0.4, 120, 80, dtype=torch.float64)  # large enough to split over 2 threads
    big_v = big_v.requires_grad_()
    assert_grad_close(lambda x: G.mesh_normals(x, big_f), (big_v,), max_elements=30)
    # second derivatives go through the torch twin
    assert torch.autograd.gradgradcheck(lambda x: G.mesh_normals(x, f), (v,))
    x = v.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(G.vertex_normals(x, f).pow(2).sum() + G.vertex_normals(x, f)[:, 0].sum(), x,
                               create_graph=True)
    y = v.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(G.vertex_normals(y, f, backend="torch").pow(2).sum()
                                + G.vertex_normals(y, f, backend="torch")[:, 0].sum(), y, create_graph=True)
    torch.testing.assert_close(g, g2, rtol=1e-10, atol=1e-12)
    (h,) = torch.autograd.grad(g.pow(2).sum(), x)
    (h2,) = torch.autograd.grad(g2.pow(2).sum(), y)
    torch.testing.assert_close(h, h2, rtol=1e-10, atol=1e-12)


def test_normals_backend_is_checked():
    v, f = G.icosphere(1)
    for fn in (G.face_normals, G.vertex_normals, G.mesh_normals):
        with pytest.raises(ValueError, match="backend"):
            fn(v, f, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        G.face_normals(v, f, normalize=False, backend="numpy")
