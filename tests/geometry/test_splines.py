"""Bézier / B-spline / NURBS curves and surfaces: closed forms (Bernstein, the exact NURBS circle and
sphere), derivatives against finite differences in t, gradients in control points and weights
against float64 FD, knot insertion / degree elevation, tessellation."""

import math

import pytest
import torch

from diffvc.geometry.splines import (bernstein, bezier_curve, bspline_basis, bspline_curve, bspline_surface,
                                     clamped_knots, elevate_bezier, insert_knot, nurbs_circle, surface_normals,
                                     tessellate_surface)
from diffvc.testing import assert_grad_close

D = torch.float64


def test_bezier_matches_bernstein_closed_form_and_derivative():
    P = torch.randn(5, 3, dtype=D)
    t = torch.linspace(0, 1, 41, dtype=D)
    C, C1 = bezier_curve(P, t, derivatives=1)
    assert torch.allclose(C, bernstein(4, t) @ P, atol=1e-13)
    # derivative of a Bézier curve: p * sum B_{i,p-1} (P_{i+1} - P_i)
    assert torch.allclose(C1, 4 * bernstein(3, t) @ (P[1:] - P[:-1]), atol=1e-12)
    assert torch.allclose(C[0], P[0]) and torch.allclose(C[-1], P[-1])


def test_basis_partition_of_unity_and_derivatives_match_fd():
    kn = torch.tensor([0, 0, 0, 0, 0.2, 0.5, 0.5, 0.8, 1, 1, 1, 1], dtype=D)
    t = torch.rand(200, dtype=D)
    N, N1, N2 = bspline_basis(t, kn, 3, 2)
    assert torch.allclose(N.sum(1), torch.ones(200, dtype=D), atol=1e-13)
    assert bool((N >= 0).all())
    assert torch.allclose(N1.sum(1), torch.zeros(200, dtype=D), atol=1e-11)
    h = 1e-6
    t_in = t[((t - 0.5).abs() > 1e-3) & ((t - 0.2).abs() > 1e-3) & ((t - 0.8).abs() > 1e-3) & (t > 1e-3) & (t < 1 - 1e-3)]
    Np, Nm = bspline_basis(t_in + h, kn, 3)[0], bspline_basis(t_in - h, kn, 3)[0]
    assert torch.allclose(bspline_basis(t_in, kn, 3, 1)[1], (Np - Nm) / (2 * h), atol=1e-6)
    N1p, N1m = bspline_basis(t_in + h, kn, 3, 1)[1], bspline_basis(t_in - h, kn, 3, 1)[1]
    assert torch.allclose(bspline_basis(t_in, kn, 3, 2)[2], (N1p - N1m) / (2 * h), atol=1e-4)


def test_nurbs_circle_is_exact_and_its_derivatives_are_tangent():
    P, w, kn = nurbs_circle(2.0, center=(0.5, -1.0))
    t = torch.linspace(0, 1, 401, dtype=D)
    C, C1, C2 = bspline_curve(P, t, 2, kn, w, derivatives=2)
    r = (C - torch.tensor([0.5, -1.0], dtype=D)).norm(dim=1)
    assert (r - 2.0).abs().max() < 1e-13
    # tangent orthogonal to the radius; curvature |C' x C''| / |C'|^3 = 1 / r
    rad = C - torch.tensor([0.5, -1.0], dtype=D)
    assert ((C1 * rad).sum(1) / C1.norm(dim=1)).abs().max() < 1e-11
    kappa = (C1[:, 0] * C2[:, 1] - C1[:, 1] * C2[:, 0]) / C1.norm(dim=1) ** 3
    assert (kappa - 0.5).abs().max() < 1e-10
    # the derivative against central differences in t (away from the knots)
    h = 1e-6
    ti = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=D)
    fd = (bspline_curve(P, ti + h, 2, kn, w) - bspline_curve(P, ti - h, 2, kn, w)) / (2 * h)
    assert torch.allclose(bspline_curve(P, ti, 2, kn, w, derivatives=1)[1], fd, atol=1e-6)


def _sphere_net(R=1.5):
    """Unit-sphere NURBS: the circle (9 points, u) times a semicircle meridian (5 points, v)."""
    Pc, wc, kc = nurbs_circle(1.0)
    s = math.sqrt(0.5)
    mer = torch.tensor([[0, -1], [1, -1], [1, 0], [1, 1], [0, 1]], dtype=D)  # (radius, z)
    wm = torch.tensor([1, s, 1, s, 1], dtype=D)
    km = torch.tensor([0, 0, 0, 0.5, 0.5, 1, 1, 1], dtype=D)
    ctrl = torch.stack([torch.cat([Pc[:, None, :] * mer[None, :, :1], mer[None, :, 1:].expand(9, 5, 1)], -1)], 0)[0] * R
    return ctrl, wc[:, None] * wm[None, :], (kc, km)


def test_nurbs_sphere_surface_is_exact_with_radial_normals():
    ctrl, w, kn = _sphere_net(1.5)
    u = torch.linspace(0, 1, 37, dtype=D)
    v = torch.linspace(0.01, 0.99, 23, dtype=D)
    S, Su, Sv = bspline_surface(ctrl, u, v, (2, 2), kn, w, derivatives=True)
    assert (S.norm(dim=-1) - 1.5).abs().max() < 1e-13
    n = surface_normals(Su, Sv)
    cosang = (n * S).sum(-1) / S.norm(dim=-1)
    assert (cosang.abs() - 1).abs().max() < 1e-10
    verts, faces = tessellate_surface(ctrl, (33, 17), (2, 2), kn, w)
    assert verts.shape == (33 * 17, 3) and faces.shape == (2 * 32 * 16, 3)
    assert (verts.norm(dim=1) - 1.5).abs().max() < 1e-13


def test_gradients_in_control_points_and_weights_match_fd():
    P = torch.randn(6, 3, dtype=D, requires_grad=True)
    w = (0.5 + torch.rand(6, dtype=D)).requires_grad_()
    kn = clamped_knots(6, 3)
    t = torch.rand(17, dtype=D)
    assert_grad_close(lambda P, w: bspline_curve(P, t, 3, kn, w, derivatives=2), (P, w))
    ctrl = torch.randn(5, 4, 3, dtype=D, requires_grad=True)
    ws = (0.5 + torch.rand(5, 4, dtype=D)).requires_grad_()
    u, v = torch.rand(6, dtype=D), torch.rand(5, dtype=D)

    def f(c, ww):
        S, Su, Sv = bspline_surface(c, u, v, (3, 2), weights=ww, derivatives=True)
        return S, surface_normals(Su, Sv)
    assert_grad_close(f, (ctrl, ws))


def test_knot_insertion_and_degree_elevation_preserve_the_curve():
    P, w, kn = nurbs_circle(1.0)
    t = torch.linspace(0, 1, 101, dtype=D)
    C = bspline_curve(P, t, 2, kn, w)
    P2, kn2, w2 = insert_knot(P, kn, 2, 0.4, w)
    assert P2.shape == (10, 2) and kn2.shape == (13,)
    assert torch.allclose(bspline_curve(P2, t, 2, kn2, w2), C, atol=1e-13)
    Q = torch.randn(4, 3, dtype=D)
    wq = 0.5 + torch.rand(4, dtype=D)
    Q2, wq2 = elevate_bezier(Q, wq)
    assert Q2.shape == (5, 3)
    assert torch.allclose(bezier_curve(Q2, t, wq2), bezier_curve(Q, t, wq), atol=1e-13)


def test_bad_input():
    with pytest.raises(ValueError, match="weights"):
        bspline_curve(torch.randn(4, 2, dtype=D), torch.rand(3, dtype=D), 3, weights=-torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match="knots"):
        bspline_curve(torch.randn(4, 2, dtype=D), torch.rand(3, dtype=D), 3, knots=torch.zeros(5, dtype=D))
    with pytest.raises(ValueError, match="ctrl"):
        bspline_curve(torch.randn(2, 2, dtype=D), torch.rand(3, dtype=D), 3)
    # a degenerate control net (all points equal) gives finite normals (zero) and gradients
    c = torch.zeros(4, 4, 3, dtype=D, requires_grad=True)
    S, Su, Sv = bspline_surface(c, torch.rand(3, dtype=D), torch.rand(3, dtype=D), derivatives=True)
    n = surface_normals(Su, Sv)
    n.sum().backward()
    assert torch.isfinite(n).all() and torch.isfinite(c.grad).all()
