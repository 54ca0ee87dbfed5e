"""Scale covariance of the mesh operators (issue 17, item 4).

A mesh scaled by ``s = 2^k`` (k = -20..20) must give each operator's unit-scale output times the
operator's power of ``s`` (areas ``s^2``, volume ``s^3``, normals and cotangents ``s^0``, ...), in
float64 and float32. Scaling by a power of two is exact in floating point, so any absolute floor
(the old ``1e-10`` under ``|cross|``, ``1e-12`` on cotangents, ``eps`` on vertex areas) shows up as
a mismatch far above the tolerances used here. Degenerate faces must give finite values and
gradients, and a zero-area face an area of exactly 0.
"""

import math

import pytest
import torch

import diffvc.geometry as G
from diffvc.geometry.diffusion import heat_diffuse

KS = list(range(-20, 21, 4))  # -20, -16, ..., 16, 20: both extremes included
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _meshes(dtype):
    vi, fi = G.icosphere(3, dtype=dtype)  # level 3: the mesh of the issue (old code: area 37%, cot L 32% off at 2^-14)
    vt, ft = G.torus(1.0, 0.3, 16, 8, dtype=dtype)
    # a non-uniform, non-symmetric copy of the torus: anisotropic stretch plus a smooth bump
    vt = vt * torch.tensor([1.0, 0.7, 1.3], dtype=dtype) + 0.05 * torch.sin(3 * vt[:, [1, 2, 0]])
    return {"icosphere": (vi, fi), "torus": (vt, ft)}


def _sparse_dense(L):
    return L.to_dense()


def _ops(v, f, s):
    """name -> (value, power of s). ``s`` enters only where an operator takes a length argument."""
    out = {}
    out["face_normals"] = (G.face_normals(v, f), 0)
    out["vertex_normals"] = (G.vertex_normals(v, f), 0)
    fn, vn = G.mesh_normals(v, f)
    out["mesh_normals.face"] = (fn, 0)
    out["mesh_normals.vertex"] = (vn, 0)
    out["face_normals.raw"] = (G.face_normals(v, f, normalize=False), 2)
    out["face_areas"] = (G.face_areas(v, f), 2)
    out["surface_area"] = (G.surface_area(v, f), 2)
    out["vertex_areas"] = (G.vertex_areas(v, f), 2)
    out["volume"] = (G.volume(v, f), 3)
    m, com, inertia = G.mass_properties(v, f, density=2.5)
    out["mass"] = (m, 3)
    out["com"] = (com, 1)
    out["inertia"] = (inertia, 5)
    out["cotangent_weights"] = (G.cotangent_weights(v, f), 0)
    L = G.cotangent_laplacian(v, f)
    out["cotangent_laplacian"] = (_sparse_dense(L), 0)
    Lx = torch.sparse.mm(L, v)
    out["cotangent_laplacian @ x"] = (Lx, 1)
    out["mean_curvature_normal (L x / 2A)"] = (Lx / (2 * G.vertex_areas(v, f))[:, None], -1)
    U = G.uniform_laplacian(f, v.shape[0], dtype=v.dtype)
    out["uniform_laplacian @ x"] = (torch.sparse.mm(U, v), 1)
    out["laplacian_smoothing_loss.uniform"] = (G.laplacian_smoothing_loss(v, f, "uniform"), 2)
    out["laplacian_smoothing_loss.cotangent"] = (G.laplacian_smoothing_loss(v, f, "cotangent"), -2)
    out["normal_consistency_loss"] = (G.normal_consistency_loss(v, f), 0)
    out["edge_length_loss"] = (G.edge_length_loss(v, f), 2)
    out["edge_length_loss.target"] = (G.edge_length_loss(v, f, target=0.2 * s), 4)
    gen = torch.Generator().manual_seed(7)
    pts, nrm = G.sample_points(v, f, 64, return_normals=True, generator=gen)
    out["sample_points"] = (pts, 1)
    out["sample_points.normals"] = (nrm, 0)
    vb, c, sc = G.normalize_to_unit_box(v)
    out["normalize_to_unit_box.points"] = (vb, 0)
    out["normalize_to_unit_box.scale"] = (sc, 1)
    return out


def _close(a, b, rtol):
    """max |a - b| relative to max |b| (per operator, so one tolerance fits every output)."""
    den = float(b.abs().max())
    return float((a - b).abs().max()) <= rtol * max(den, torch.finfo(b.dtype).tiny)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_operators_covariant_from_2e_minus_20_to_2e20(dtype):
    rtol = RTOL[dtype]
    for mesh, (v0, f) in _meshes(dtype).items():
        ref = _ops(v0, f, 1.0)
        # sanity of the unit-scale reference itself
        assert float(ref["surface_area"][0]) > 0 and float(ref["volume"][0]) > 0
        for k in KS:
            s = 2.0 ** k
            got = _ops(v0 * s, f, s)
            bad = []
            for name, (val, p) in got.items():
                want = ref[name][0]
                if not torch.isfinite(val).all() or not _close(val / s ** p, want, rtol):
                    err = float((val / s ** p - want).abs().max() / want.abs().max())
                    bad.append(f"{name}: rel err {err:.3g}")
            assert not bad, f"{mesh} {dtype} k={k}: " + "; ".join(bad)
            for name in ("face_normals", "vertex_normals", "mesh_normals.face", "sample_points.normals"):
                n = got[name][0].norm(dim=-1)
                assert float((n - 1).abs().max()) < 10 * torch.finfo(dtype).eps, (mesh, k, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_covariant_across_scales(dtype):
    rtol = 10 * RTOL[dtype]
    v0, f = _meshes(dtype)["torus"]
    losses = {  # name -> (loss(v), power of s of d loss / d v)
        "surface_area": (lambda v: G.surface_area(v, f), 1),
        "volume": (lambda v: G.volume(v, f), 2),
        "normal_consistency": (lambda v: G.normal_consistency_loss(v, f), -1),
        "vertex_normals": (lambda v: (G.vertex_normals(v, f)[:, 0] * torch.arange(v.shape[0], dtype=v.dtype)).sum(), -1),
        "cot_smoothing": (lambda v: G.laplacian_smoothing_loss(v, f, "cotangent"), -3),
        "cotangent_weights": (lambda v: (G.cotangent_weights(v, f) ** 2).sum(), -1),
    }
    for name, (fn, p) in losses.items():
        x0 = v0.clone().requires_grad_(True)
        (g0,) = torch.autograd.grad(fn(x0), x0)
        for k in (-20, -8, 8, 20):
            s = 2.0 ** k
            x = (v0 * s).requires_grad_(True)
            (g,) = torch.autograd.grad(fn(x), x)
            assert torch.isfinite(g).all(), (name, k)
            assert _close(g / s ** p, g0, rtol), (name, dtype, k, float((g / s ** p - g0).abs().max() / g0.abs().max()))


def test_heat_diffusion_covariant():
    v0, f = _meshes(torch.float64)["icosphere"]
    sig = torch.zeros(v0.shape[0], 1, dtype=torch.float64)
    sig[0] = 1.0
    ref = heat_diffuse(v0, f, sig, t=0.01)
    for k in (-20, -12, 12, 20):
        s = 2.0 ** k
        got = heat_diffuse(v0 * s, f, sig, t=0.01 * s * s)  # diffusion time scales as length^2
        assert _close(got, ref, 1e-8), k


def _degenerate_mesh(dtype):
    # face 0: collinear (zero area); face 1: duplicate vertex (zero area); face 2: fine;
    # face 3: repeated index (zero area); face 4: a thin but genuine sliver (aspect 1e3)
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0], [0, 1, 0], [0.5, 1e-3, 0.2]], dtype=dtype)
    f = torch.tensor([[0, 1, 2], [0, 3, 4], [0, 1, 4], [1, 1, 2], [0, 2, 5]])
    return v, f


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_faces_finite_and_zero_area_exact(dtype):
    v0, f = _degenerate_mesh(dtype)
    for k in (-20, 0, 20):
        s = 2.0 ** k
        v = (v0 * s).requires_grad_(True)
        a = G.face_areas(v, f)
        assert a[0].item() == 0.0 and a[1].item() == 0.0 and a[3].item() == 0.0
        assert a[2].item() == pytest.approx(0.5 * s * s, rel=RTOL[dtype])
        sliver = 0.5 * s * s * math.hypot(2e-3, 0.4)  # |(2,0,0) x (0.5,1e-3,0.2)| / 2
        assert a[4].item() == pytest.approx(sliver, rel=1e-4 if dtype == torch.float32 else 1e-12)
        fn = G.face_normals(v, f)
        assert float(fn[[0, 1, 3]].detach().abs().max()) == 0.0  # degenerate faces: zero normal
        assert float((fn[[2, 4]].detach().norm(dim=-1) - 1).abs().max()) < 1e-5
        cw = G.cotangent_weights(v, f)
        assert float(cw[[0, 1, 3]].detach().abs().max()) == 0.0
        L = G.cotangent_laplacian(v, f)
        fnn, vnn = G.mesh_normals(v, f)
        m, com, inertia = G.mass_properties(v, f)
        outs = [a, fn, G.vertex_normals(v, f), fnn, vnn, cw, G.volume(v, f), torch.sparse.mm(L, v),
                m, com, inertia, G.vertex_areas(v, f), G.laplacian_smoothing_loss(v, f, "cotangent"),
                G.laplacian_smoothing_loss(v, f, "uniform"), G.normal_consistency_loss(v, f),
                G.edge_length_loss(v, f, target=s)]
        for o in outs:
            assert torch.isfinite(o).all()
        # one gradient per output, so a NaN in any single backward is caught
        for i, o in enumerate(outs):
            w = torch.linspace(0.3, 1.7, o.numel(), dtype=dtype).reshape(o.shape)
            (g,) = torch.autograd.grad((o * w).sum(), v, retain_graph=True, allow_unused=True)
            assert g is None or torch.isfinite(g).all(), (k, i)
        pts, nrm = G.sample_points(v, f, 32, return_normals=True, generator=torch.Generator().manual_seed(0))
        (g,) = torch.autograd.grad(pts.sum() + nrm.sum(), v)
        assert torch.isfinite(pts).all() and torch.isfinite(g).all()


def test_zero_area_face_gradient_is_zero_and_area_exact():
    # an exactly collinear face: area exactly 0, gradient finite (zero, the subgradient at |x| = 0)
    v = torch.tensor([[0.0, 0, 0], [1, 1, 1], [3, 3, 3]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2]])
    a = G.face_areas(v, f)
    assert a.item() == 0.0
    (g,) = torch.autograd.grad(a.sum(), v)
    assert torch.equal(g, torch.zeros_like(g))
    (g,) = torch.autograd.grad(G.face_normals(v, f).sum() + G.cotangent_weights(v, f).sum(), v)
    assert torch.isfinite(g).all()


def test_old_floors_would_fail_here():
    """Guard that the sweep is sensitive: an absolute floor of 1e-10 under |cross| (the old code)
    changes the 2^-20 icosphere's area by far more than the tolerance."""
    v, f = G.icosphere(2, dtype=torch.float64)
    s = 2.0 ** -20
    c = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1) * s * s
    floored = 0.5 * torch.sqrt(((c * c).sum(-1)).clamp_min(1e-20)).sum()
    exact = G.surface_area(v * s, f)
    assert abs(float(floored / exact) - 1) > 0.1
    assert abs(float(exact / (s * s * G.surface_area(v, f))) - 1) < 1e-14


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_point_queries_covariant(dtype):
    """Distances (``s``), Chamfer (``s^2`` squared, ``s`` not), winding numbers (``s^0``)."""
    rtol = 10 * RTOL[dtype]
    v0, f = _meshes(dtype)["torus"]
    q0 = torch.rand(40, 3, generator=torch.Generator().manual_seed(3), dtype=dtype) * 3 - 1.5
    y0 = v0[::3] + 0.01

    def ops(v, q, y):
        return {
            "point_mesh_distance": (G.point_mesh_distance(v, f, q, method="brute"), 1),
            "closest_points": (G.closest_points(v, f, q, method="brute")[0], 1),
            "winding_number": (G.winding_number(v, f, q, method="torch"), 0),
            "chamfer.squared": (G.chamfer_distance(q, y, method="brute"), 2),
            "chamfer": (G.chamfer_distance(q, y, squared=False, method="brute"), 1),
        }

    ref = ops(v0, q0, y0)
    for k in KS:
        s = 2.0 ** k
        got = ops(v0 * s, q0 * s, y0 * s)
        for name, (val, p) in got.items():
            assert torch.isfinite(val).all() and _close(val / s ** p, ref[name][0], rtol), (name, k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_box_primitive_covariant(dtype):
    """A box built with size ``s`` is ``s`` times the unit box (its vertex welding is relative)."""
    v1, f1 = G.box(size=1.0, segments=2, dtype=dtype)
    for k in (-32, -20, -12, 12, 20):  # 2^-32 is below the weld tolerance 1e-9 of the unit box
        s = 2.0 ** k
        vb, fb = G.box(size=s, segments=2, dtype=dtype)
        assert torch.equal(fb, f1) and _close(vb / s, v1, RTOL[dtype]), k
