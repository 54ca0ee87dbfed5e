"""Discrete curvature against closed forms on spheres and tori, converging under refinement;
Gauss--Bonnet; float64 FD gradients; scale covariance; degenerate faces."""

import math

import pytest
import torch

from diffvc.geometry import icosphere, torus
from diffvc.geometry.curvature import (angle_defect, angle_weighted_normals, corner_angles, gaussian_curvature,
                                       mean_curvature, mean_curvature_normal, principal_curvatures, voronoi_areas)
from diffvc.testing import assert_grad_close

D = torch.float64


def _torus(m, R=1.0, r=0.4):
    v, f = torus(R, r, m, m // 2, dtype=D)
    W = (torch.arange(m // 2, dtype=D) * 2 * math.pi / (m // 2)).repeat(m)
    U = (torch.arange(m, dtype=D) * 2 * math.pi / m).repeat_interleave(m // 2)
    c = torch.cos(W)
    closed = {"K": c / (r * (R + r * c)), "H": (R + 2 * r * c) / (2 * r * (R + r * c)),
              "k1": torch.full_like(c, 1 / r), "k2": c / (R + r * c)}
    # direction of the larger curvature 1/r: along the tube's cross-section circle
    t_minor = torch.stack([-torch.sin(W) * torch.cos(U), torch.cos(W), torch.sin(W) * torch.sin(U)], -1)
    return v, f, closed, t_minor


def test_sphere_closed_forms_converge():
    R = 2.0
    errs = []
    for s in (2, 3, 4):
        v, f = icosphere(s, R, dtype=D)
        H, K = mean_curvature(v, f), gaussian_curvature(v, f)
        k1, k2, d1, d2 = principal_curvatures(v, f)
        n = angle_weighted_normals(v, f)
        # angle-weighted normals are first-order accurate on irregular meshes (~h)
        assert (n - v / R).norm(dim=1).max() < 0.06 / 2 ** s
        assert abs(float(voronoi_areas(v, f).sum()) - float(_area(v, f))) < 1e-12
        assert abs(float(angle_defect(v, f).sum()) - 4 * math.pi) < 1e-10  # Gauss--Bonnet, chi = 2
        errs.append([float((H - 1 / R).abs().max()), float((K - 1 / R ** 2).abs().max()),
                     float((k1 - 1 / R).abs().max()), float((k2 - 1 / R).abs().max())])
    for a, b in zip(errs[:-1], errs[1:]):
        for ea, eb in zip(a, b):
            assert eb < 0.4 * ea, errs  # second order: ~4x per subdivision
    assert errs[-1][0] < 1e-5 and errs[-1][1] < 5e-4 and errs[-1][3] < 1e-3, errs


def _area(v, f):
    return 0.5 * torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1).norm(dim=1).sum()


def test_torus_closed_forms_converge_with_directions():
    prev = None
    for m in (24, 48, 96):
        v, f, cf, t_minor = _torus(m)
        k1, k2, d1, d2 = principal_curvatures(v, f)
        e = {"H": (mean_curvature(v, f) - cf["H"]).abs().max(), "K": (gaussian_curvature(v, f) - cf["K"]).abs().max(),
             "k1": (k1 - cf["k1"]).abs().max(), "k2": (k2 - cf["k2"]).abs().max()}
        e = {k: float(x) for k, x in e.items()}
        assert abs(float(angle_defect(v, f).sum())) < 1e-9  # chi = 0
        align = (d1 * t_minor).sum(-1).abs()
        assert float(align.min()) > 0.99
        assert float(((d1 * d2).sum(-1)).abs().max()) < 1e-12
        if prev is not None:
            for k in e:
                assert e[k] < 0.35 * prev[k], (k, e, prev)
        prev = e
    assert prev["H"] < 0.01 and prev["K"] < 0.01 and prev["k1"] < 0.02 and prev["k2"] < 0.02, prev


def test_scale_covariance_from_2e_minus_20_to_2e20():
    v, f = icosphere(2, 1.0, dtype=D)
    ref = {"A": voronoi_areas(v, f), "H": mean_curvature(v, f), "K": gaussian_curvature(v, f),
           "n": angle_weighted_normals(v, f), "ang": corner_angles(v, f)}
    for e in (-20, -10, 10, 20):
        s = 2.0 ** e
        vs = v * s
        assert torch.allclose(voronoi_areas(vs, f) / s ** 2, ref["A"], rtol=1e-12, atol=0)
        assert torch.allclose(mean_curvature(vs, f) * s, ref["H"], rtol=1e-12, atol=0)
        assert torch.allclose(gaussian_curvature(vs, f) * s ** 2, ref["K"], rtol=1e-10, atol=0)
        assert torch.allclose(angle_weighted_normals(vs, f), ref["n"], rtol=0, atol=1e-14)
        assert torch.allclose(corner_angles(vs, f), ref["ang"], rtol=0, atol=1e-14)


def test_gradients_match_fd():
    v, f = icosphere(1, 1.0, dtype=D)
    v = (v * torch.tensor([1.0, 0.8, 1.2], dtype=D) + 0.02 * torch.randn_like(v)).requires_grad_()
    for fn in (corner_angles, angle_weighted_normals, voronoi_areas, angle_defect, gaussian_curvature,
               mean_curvature_normal, mean_curvature):
        assert_grad_close(lambda x: fn(x, f), (v,), rtol=1e-6, max_elements=40)
    assert_grad_close(lambda x: principal_curvatures(x, f)[:3], (v,), rtol=1e-5, max_elements=40)


def test_degenerate_faces_are_finite():
    # a zero-area sliver and a face with two coincident vertices inside a small mesh
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [1, 0, 0], [0.5, 0.5, 1]], dtype=D, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 4, 2], [0, 1, 5], [1, 2, 5], [2, 0, 5]])
    outs = [corner_angles(v, f), angle_weighted_normals(v, f), voronoi_areas(v, f), angle_defect(v, f),
            gaussian_curvature(v, f), mean_curvature(v, f)] + list(principal_curvatures(v, f))
    total = sum(o.sum() for o in outs)
    total.backward()
    assert all(torch.isfinite(o).all() for o in outs) and torch.isfinite(v.grad).all()
    A = voronoi_areas(v, f)
    assert float(A.detach().sum()) == pytest.approx(float(_area(v.detach(), f)), rel=1e-12)
