import math

import pytest
import torch

import diffvc.geometry as G
from diffvc.testing import assert_grad_close


def _jitter(v, f, s=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (v.double() + s * torch.randn(v.shape, generator=g, dtype=torch.float64)), f


PRIMS = {
    "icosphere": lambda: G.icosphere(2),
    "uv_sphere": lambda: G.uv_sphere(8, 12),
    "box": lambda: G.box((1.0, 2.0, 0.5), segments=2),
    "cylinder": lambda: G.cylinder(0.5, 1.0, 12, rings=2),
    "torus": lambda: G.torus(1.0, 0.3, 16, 8),
}


@pytest.mark.parametrize("name", list(PRIMS))
def test_primitives_watertight_outward(name):
    v, f = PRIMS[name]()
    assert v.dtype == torch.float32 and f.dtype == torch.long
    assert G.is_watertight(f)
    assert float(G.volume(v, f)) > 0
    # outward: face normals point away from the centroid on average (weighted)
    n = G.face_normals(v, f)
    c = v[f].mean(1)
    assert float((n * c).sum(-1).mean()) > 0
    # Euler characteristic: genus 0 except the torus
    e = G.edges(f)
    chi = v.shape[0] - e.shape[0] + f.shape[0]
    assert chi == (0 if name == "torus" else 2)


def test_primitive_dtype_device_kwargs():
    v, f = G.icosphere(1, 2.0, dtype=torch.float64, device="cpu")
    assert v.dtype == torch.float64 and torch.allclose(v.norm(dim=1), torch.full((v.shape[0],), 2.0, dtype=torch.float64))


def test_grid_normal_up_and_open():
    v, f = G.grid((2.0, 1.0), (4, 2))
    assert v.shape == (15, 3) and f.shape == (16, 3)
    assert torch.allclose(G.face_normals(v, f), torch.tensor([0.0, 1.0, 0.0]).expand(16, 3))
    assert not G.is_watertight(f)
    assert G.boundary_vertices(f).sum() == 12
    assert abs(float(G.surface_area(v, f)) - 2.0) < 1e-6


def test_box_closed_forms():
    a, b, c = 1.0, 2.0, 0.5
    v, f = G.box((a, b, c), segments=3, dtype=torch.float64)
    v = v + torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    assert abs(float(G.volume(v, f)) - a * b * c) < 1e-12
    assert abs(float(G.surface_area(v, f)) - 2 * (a * b + b * c + a * c)) < 1e-12
    m, com, inertia = G.mass_properties(v, f, density=3.0)
    M = 3.0 * a * b * c
    assert abs(float(m) - M) < 1e-12
    assert torch.allclose(com, torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64), atol=1e-12)
    expect = torch.diag(torch.tensor([M / 12 * (b * b + c * c), M / 12 * (a * a + c * c), M / 12 * (a * a + b * b)],
                                     dtype=torch.float64))
    assert torch.allclose(inertia, expect, atol=1e-12)


def test_box_rotated_inertia_transforms_as_tensor():
    v, f = G.box((1.0, 2.0, 0.5), dtype=torch.float64)
    R = G.axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64))
    _, _, I0 = G.mass_properties(v, f)
    _, com, I1 = G.mass_properties(G.rigid_transform(v, R, torch.tensor([1.0, 2, 3], dtype=torch.float64)), f)
    assert torch.allclose(I1, R @ I0 @ R.T, atol=1e-12)
    assert torch.allclose(com, torch.tensor([1.0, 2, 3], dtype=torch.float64), atol=1e-12)


def test_sphere_converges_with_refinement():
    r = 0.7
    errs = []
    for s in (1, 2, 3, 4):
        v, f = G.icosphere(s, r, dtype=torch.float64)
        m, com, inertia = G.mass_properties(v, f)
        vol = 4 / 3 * math.pi * r ** 3
        e_vol = abs(float(m) - vol) / vol
        e_area = abs(float(G.surface_area(v, f)) - 4 * math.pi * r * r) / (4 * math.pi * r * r)
        i_exact = 2 / 5 * vol * r * r
        e_in = float((inertia - i_exact * torch.eye(3, dtype=torch.float64)).abs().max()) / i_exact
        assert float(com.abs().max()) < 1e-12
        errs.append((e_vol, e_area, e_in))
    for k in range(3):
        seq = [e[k] for e in errs]
        assert all(b < a / 3 for a, b in zip(seq, seq[1:])), seq  # ~ 4x per subdivision
    assert errs[-1][0] < 3e-3 and errs[-1][2] < 5e-3


def test_torus_closed_forms():
    R, r = 1.0, 0.3
    vol, area = 2 * math.pi ** 2 * R * r * r, 4 * math.pi ** 2 * R * r
    i_axis = vol * (R * R + 0.75 * r * r)  # about the symmetry axis (y)
    i_perp = vol * (R * R / 2 + 5 / 8 * r * r)
    prev = None
    for n in (16, 64):
        v, f = G.torus(R, r, 2 * n, n, dtype=torch.float64)
        m, com, inertia = G.mass_properties(v, f)
        err = abs(float(m) - vol) / vol
        assert abs(float(G.surface_area(v, f)) - area) / area < 0.05
        assert float(com.abs().max()) < 1e-12
        exp = torch.diag(torch.tensor([i_perp, i_axis, i_perp], dtype=torch.float64))
        assert float((inertia - exp).abs().max()) / i_axis < 5 * err + 1e-12
        if prev is not None:
            assert err < prev / 10
        prev = err
    assert prev < 3e-3


def test_cylinder_volume_converges():
    v, f = G.cylinder(0.5, 2.0, 256, dtype=torch.float64)
    assert abs(float(G.volume(v, f)) - math.pi * 0.25 * 2.0) / (math.pi * 0.5) < 1e-3


def test_laplacian_linear_function_vanishes_interior():
    v, f = G.grid((2.0, 2.0), (6, 6), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    v = v + 0.05 * torch.randn(v.shape, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    L = G.cotangent_laplacian(v, f)
    lin = v @ torch.tensor([[0.3], [0.0], [-1.2]], dtype=torch.float64) + 0.7
    r = torch.sparse.mm(L, lin).squeeze(1)
    interior = ~G.boundary_vertices(f, v.shape[0])
    assert interior.sum() == 25
    assert float(r[interior].abs().max()) < 1e-12
    assert float(r[~interior].abs().max()) > 1e-3  # the boundary does not vanish: the test can fail
    # constants are in the null space of both Laplacians
    Lu = G.uniform_laplacian(f, v.shape[0], dtype=torch.float64)
    one = torch.ones(v.shape[0], 1, dtype=torch.float64)
    assert float(torch.sparse.mm(Lu, one).abs().max()) == 0.0
    assert float(torch.sparse.mm(L, one).abs().max()) < 1e-12
    # uniform Laplacian: degrees on the diagonal
    deg = torch.bincount(G.edges(f).reshape(-1), minlength=v.shape[0]).double()
    assert torch.equal(Lu.to_dense().diagonal(), deg)


def test_cotangent_laplacian_matches_dense_reference():
    v, f = _jitter(*G.icosphere(1))
    L = G.cotangent_laplacian(v, f).to_dense()
    ref = torch.zeros(v.shape[0], v.shape[0], dtype=torch.float64)
    for tri in f.tolist():
        for k in range(3):
            i, j, o = tri[(k + 1) % 3], tri[(k + 2) % 3], tri[k]
            a, b = v[i] - v[o], v[j] - v[o]
            cot = float(a @ b / torch.linalg.cross(a, b).norm())
            ref[i, j] -= cot / 2
            ref[j, i] -= cot / 2
            ref[i, i] += cot / 2
            ref[j, j] += cot / 2
    assert torch.allclose(L, ref, atol=1e-12)
    assert torch.allclose(L, L.T)


def test_grad_face_vertex_normals_areas_volume_mass():
    v, f = _jitter(*G.icosphere(1))
    v = v.requires_grad_()
    assert_grad_close(lambda x: G.face_normals(x, f), (v,), max_elements=40)
    assert_grad_close(lambda x: G.face_normals(x, f, normalize=False), (v,), max_elements=20)
    assert_grad_close(lambda x: G.vertex_normals(x, f), (v,), max_elements=40)
    fn, vn = G.mesh_normals(v, f)
    assert torch.equal(fn, G.face_normals(v, f)) and torch.allclose(vn, G.vertex_normals(v, f), atol=1e-15)
    assert_grad_close(lambda x: G.mesh_normals(x, f), (v,), max_elements=30)
    assert_grad_close(lambda x: G.face_areas(x, f), (v,), max_elements=40)
    assert_grad_close(lambda x: G.surface_area(x, f), (v,), max_elements=40)
    assert_grad_close(lambda x: G.volume(x, f), (v,), max_elements=40)
    d = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert_grad_close(lambda x, dd: G.mass_properties(x, f, dd), (v, d), max_elements=40)


def test_grad_laplacian_values_and_transforms():
    v, f = _jitter(*G.icosphere(1))
    v = v.requires_grad_()
    x = torch.randn(v.shape[0], 2, dtype=torch.float64)
    assert_grad_close(lambda p: torch.sparse.mm(G.cotangent_laplacian(p, f), x), (v,), max_elements=40)
    assert_grad_close(lambda p: G.vertex_areas(p, f), (v,), max_elements=30)
    aa = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    assert_grad_close(lambda p, a, tt: G.rigid_transform(p, a, tt), (v, aa, t), max_elements=20)
    aa0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # Taylor branch at the identity
    assert_grad_close(lambda a: G.axis_angle_to_matrix(a), (aa0,))
    q = torch.tensor([0.9, 0.1, -0.3, 0.2], dtype=torch.float64, requires_grad=True)
    assert_grad_close(G.quaternion_to_matrix, (q,))
    e = torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64, requires_grad=True)
    assert_grad_close(G.euler_to_matrix, (e,))


def test_rotations_are_orthonormal_and_consistent():
    aa = torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64)
    R = G.axis_angle_to_matrix(aa)
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64))
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    assert torch.allclose(G.quaternion_to_matrix(q), R, atol=1e-12)
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = torch.tensor([1.0, 2, 3])
    p = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(G.transform_points(p, M), G.rigid_transform(p, R, M[:3, 3]))


def test_degenerate_inputs_finite():
    # zero-area faces and duplicate vertices
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [0, 3, 4], [0, 1, 4], [1, 1, 2]])
    outs = [G.face_normals(v, f), G.vertex_normals(v, f), G.face_areas(v, f), G.volume(v, f),
            torch.sparse.mm(G.cotangent_laplacian(v, f), v).sum(), *G.mass_properties(v, f), G.vertex_areas(v, f)]
    loss = sum((o.double() * 1.3).sum() for o in outs)
    (g,) = torch.autograd.grad(loss, v)
    assert all(torch.isfinite(o).all() for o in outs)
    assert torch.isfinite(g).all()
    # empty mesh
    ve = torch.zeros(0, 3, requires_grad=True)
    fe = torch.zeros(0, 3, dtype=torch.long)
    assert G.face_normals(ve, fe).shape == (0, 3) and G.vertex_normals(ve, fe).shape == (0, 3)
    assert float(G.volume(ve, fe)) == 0.0 and float(G.surface_area(ve, fe)) == 0.0
    m, c, i = G.mass_properties(ve, fe)
    assert float(m) == 0 and torch.isfinite(c).all() and torch.isfinite(i).all()
    assert G.edges(fe).shape == (0, 2)
    assert G.cotangent_laplacian(ve, fe).shape == (0, 0)


def test_bad_inputs_raise_naming_argument():
    v, f = G.icosphere(0)
    with pytest.raises(ValueError, match="verts"):
        G.face_normals(v[:, :2], f)
    with pytest.raises(TypeError, match="faces"):
        G.face_normals(v, f.float())
    with pytest.raises(IndexError, match="faces"):
        G.face_normals(v, f + 100)
    bad = v.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        G.volume(bad, f)
    with pytest.raises(TypeError, match="verts"):
        G.volume(v.long(), f)


def test_grad_affine_helpers():
    g = torch.Generator().manual_seed(7)
    p = torch.randn(6, 3, generator=g, dtype=torch.float64).requires_grad_()
    M = (torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert_grad_close(lambda x, m: G.transform_points(x, m), (p, M))  # projective (last row not 0 0 0 1)
    s = torch.tensor([1.5, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    assert_grad_close(lambda x, ss, cc: G.scale(x, ss, cc), (p, s, c))
    assert_grad_close(lambda x, cc: G.translate(x, cc), (p, c))
    assert_grad_close(lambda x: G.normalize_to_unit_box(x)[0], (p,))
