"""Warp kernels for linear tetrahedral FEM: per-tet elastic + damping forces, per-vertex
semi-implicit integration with ground/plane contact (the rigid module's smoothed penalty law)."""

from __future__ import annotations

from typing import Any

from .bridge import wp
from .particles import MAX_PLANES
from .rigid import smooth_contact_force

POLAR_ITERS = 10  # scaled Newton iterations for the polar rotation (unrolled: <= wp.config.max_unroll)
NEOHOOKEAN = 0
COROTATED = 1


@wp.func
def cofactor(F: Any):
    """dJ/dF for J = det F: the matrix whose columns are c0 = f1 x f2, c1 = f2 x f0, c2 = f0 x f1."""
    Ft = wp.transpose(F)
    return wp.matrix_from_cols(wp.cross(Ft[1], Ft[2]), wp.cross(Ft[2], Ft[0]), wp.cross(Ft[0], Ft[1]))


@wp.func
def polar_rotation(F: Any):
    """Orthogonal polar factor of F by scaled Newton iterations X <- (g X + (g X)^-T) / 2,
    g = |det X|^(-1/3); determinants are kept away from 0 (|det| >= 1e-8) so that degenerate F give
    finite results. For det F < 0 the result is a reflection (corotated elasticity is not
    inversion-robust; use the stable Neo-Hookean material for large deformation)."""
    X = F
    eps = F[0, 0] - F[0, 0] + type(F[0, 0])(1e-8)
    half = type(F[0, 0])(0.5)
    third = type(F[0, 0])(-1.0) / type(F[0, 0])(3.0)  # exact in float64 (literals are float32)
    for _it in range(POLAR_ITERS):
        C = cofactor(X)
        det = wp.dot(wp.transpose(X)[0], wp.transpose(C)[0])
        ad = wp.max(wp.abs(det), eps)
        sdet = wp.where(det < det - det, -ad, ad)
        g = wp.pow(ad, third)
        X = (X * g + C * (type(g)(1.0) / (g * sdet))) * half
    return X


@wp.func
def element_stress(F: Any, Fd: Any, mu: Any, lam: Any, beta: Any, material: int):
    """First Piola-Kirchhoff stress (Pa) of the elastic material plus strain-rate damping.

    Stable Neo-Hookean (Smith et al. 2018), with Lame parameters remapped so that it linearises
    to linear elasticity with (mu, lam): mu' = 4/3 mu, lam' = lam + 5/6 mu, alpha = 1 + 3 mu'/(4 lam'),
    Psi = mu'/2 (I_C - 3) + lam'/2 (J - alpha)^2 - mu'/2 log(I_C + 1), finite for J <= 0.
    Corotated linear: Psi = mu |F - R|^2 + lam/2 tr(R^T F - I)^2.
    Damping: P_d = beta F (2 mu E' + lam tr(E') I), E' = sym(F^T dF/dt) (rotation invariant,
    Rayleigh stiffness-proportional at rest).
    """
    one = mu - mu + type(mu)(1.0)
    I3 = wp.identity(n=3, dtype=type(mu))
    P = F * (mu - mu)
    if material == 0:
        mu_s = mu * type(mu)(4.0) / type(mu)(3.0)
        lam_s = lam + mu * type(mu)(5.0) / type(mu)(6.0)
        alpha = one + type(mu)(0.75) * mu_s / lam_s
        C = cofactor(F)
        J = wp.dot(wp.transpose(F)[0], wp.transpose(C)[0])
        Ic = wp.ddot(F, F)
        P = F * (mu_s * (one - one / (Ic + one))) + C * (lam_s * (J - alpha))
    else:
        R = polar_rotation(F)
        tr = wp.trace(wp.transpose(R) * F)
        P = (F - R) * (type(mu)(2.0) * mu) + R * (lam * (tr - type(mu)(3.0)))
    FtFd = wp.transpose(F) * Fd
    Ed = (FtFd + wp.transpose(FtFd)) * type(mu)(0.5)
    S = Ed * (type(mu)(2.0) * mu) + I3 * (lam * wp.trace(Ed))
    return P + F * S * beta


@wp.kernel
def tet_forces(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    tets: wp.array2d(dtype=wp.int32),
    Dm_inv: wp.array(dtype=Any),
    volume: wp.array(dtype=Any),
    lame: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    material: int,
    f: wp.array(dtype=Any),
):
    """Elastic + damping nodal forces (N) of one tet, atomically added to ``f`` (N, 3): with
    H = -vol P Dm^-T, vertices 1..3 get H's columns and vertex 0 minus their sum."""
    t = wp.tid()
    i0 = tets[t, 0]
    i1 = tets[t, 1]
    i2 = tets[t, 2]
    i3 = tets[t, 3]
    x0 = x[i0]
    v0 = v[i0]
    Ds = wp.matrix_from_cols(x[i1] - x0, x[i2] - x0, x[i3] - x0)
    Dv = wp.matrix_from_cols(v[i1] - v0, v[i2] - v0, v[i3] - v0)
    Dmi = Dm_inv[t]
    F = Ds * Dmi
    Fd = Dv * Dmi
    ml = lame[t]
    P = element_stress(F, Fd, ml[0], ml[1], damping[1], material)
    H = P * wp.transpose(Dmi) * (-volume[t])
    Ht = wp.transpose(H)
    wp.atomic_add(f, i1, Ht[0])
    wp.atomic_add(f, i2, Ht[1])
    wp.atomic_add(f, i3, Ht[2])
    wp.atomic_sub(f, i0, Ht[0] + Ht[1] + Ht[2])


@wp.kernel
def integrate_vertices(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    free: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    n_planes: int,
    dt: Any,
    x_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
):
    """Semi-implicit Euler for one vertex: contact against the planes, gravity, mass-proportional
    damping v /= 1 + alpha dt; pinned vertices (free = 0) keep their position."""
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    fi = f[i]
    for k in range(MAX_PLANES):
        if k < n_planes:
            p = planes[k]
            n = type(xi)(p[0], p[1], p[2])
            c = wp.dot(n, xi) - p[3]
            fi = fi + smooth_contact_force(n, c, vi, contact[0], contact[1], contact[2], contact[3], contact[4])
    one = dt - dt + type(dt)(1.0)
    v1 = (vi + (fi * inv_mass[i] + gravity[0]) * dt) / (one + damping[0] * dt) * free[i]
    x_out[i] = xi + v1 * dt
    v_out[i] = v1
