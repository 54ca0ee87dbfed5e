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


# --------------------------------------------------------------------------------------------
# implicit step / static solve: residual and its sparse Jacobian assembled in Warp
# --------------------------------------------------------------------------------------------

@wp.func
def cofactor_jvp(F: Any, dF: Any):
    """Directional derivative of :func:`cofactor` at F along dF."""
    Ft = wp.transpose(F)
    dFt = wp.transpose(dF)
    return wp.matrix_from_cols(wp.cross(dFt[1], Ft[2]) + wp.cross(Ft[1], dFt[2]),
                               wp.cross(dFt[2], Ft[0]) + wp.cross(Ft[2], dFt[0]),
                               wp.cross(dFt[0], Ft[1]) + wp.cross(Ft[0], dFt[1]))


@wp.func
def polar_rotation_jvp(F: Any, dF: Any):
    """Directional derivative along dF of :func:`polar_rotation` (the fixed scaled-Newton iteration
    differentiated step by step, so it is the exact derivative of what the forces use)."""
    X = F
    dX = dF
    zero = F[0, 0] - F[0, 0]
    eps = zero + type(F[0, 0])(1e-8)
    half = type(F[0, 0])(0.5)
    third = type(F[0, 0])(-1.0) / type(F[0, 0])(3.0)
    for _it in range(POLAR_ITERS):
        C = cofactor(X)
        dC = cofactor_jvp(X, dX)
        det = wp.dot(wp.transpose(X)[0], wp.transpose(C)[0])
        ddet = wp.ddot(C, dX)
        ad = wp.max(wp.abs(det), eps)
        dad = wp.where(wp.abs(det) > eps, wp.where(det < zero, -ddet, ddet), zero)
        sdet = wp.where(det < zero, -ad, ad)
        dsdet = wp.where(wp.abs(det) > eps, ddet, zero)
        g = wp.pow(ad, third)
        dg = third * g / ad * dad
        gs = g * sdet
        dgs = dg * sdet + g * dsdet
        dX = (dX * g + X * dg + dC * (type(g)(1.0) / gs) - C * (dgs / (gs * gs))) * half
        X = (X * g + C * (type(g)(1.0) / gs)) * half
    return dX


@wp.func
def element_stress_jvp(F: Any, Fd: Any, dF: Any, dFd: Any, mu: Any, lam: Any, beta: Any, material: int):
    """Directional derivative of :func:`element_stress` along (dF, dFd)."""
    one = mu - mu + type(mu)(1.0)
    I3 = wp.identity(n=3, dtype=type(mu))
    dP = F * (mu - mu)
    if material == 0:
        mu_s = mu * type(mu)(4.0) / type(mu)(3.0)
        lam_s = lam + mu * type(mu)(5.0) / type(mu)(6.0)
        alpha = one + type(mu)(0.75) * mu_s / lam_s
        C = cofactor(F)
        dC = cofactor_jvp(F, dF)
        J = wp.dot(wp.transpose(F)[0], wp.transpose(C)[0])
        dJ = wp.ddot(C, dF)
        Ic = wp.ddot(F, F)
        dIc = type(mu)(2.0) * wp.ddot(F, dF)
        a = mu_s * (one - one / (Ic + one))
        da = mu_s / ((Ic + one) * (Ic + one)) * dIc
        dP = dF * a + F * da + dC * (lam_s * (J - alpha)) + C * (lam_s * dJ)
    else:
        R = polar_rotation(F)
        dR = polar_rotation_jvp(F, dF)
        tr = wp.trace(wp.transpose(R) * F)
        dtr = wp.ddot(dR, F) + wp.ddot(R, dF)
        dP = (dF - dR) * (type(mu)(2.0) * mu) + R * (lam * dtr) + dR * (lam * (tr - type(mu)(3.0)))
    FtFd = wp.transpose(F) * Fd
    Ed = (FtFd + wp.transpose(FtFd)) * type(mu)(0.5)
    S = Ed * (type(mu)(2.0) * mu) + I3 * (lam * wp.trace(Ed))
    dFtFd = wp.transpose(dF) * Fd + wp.transpose(F) * dFd
    dEd = (dFtFd + wp.transpose(dFtFd)) * type(mu)(0.5)
    dS = dEd * (type(mu)(2.0) * mu) + I3 * (lam * wp.trace(dEd))
    return dP + (dF * S + F * dS) * beta


@wp.kernel
def tet_system(
    x: wp.array(dtype=Any),
    x0: wp.array(dtype=Any),
    tets: wp.array2d(dtype=wp.int32),
    Dm_inv: wp.array(dtype=Any),
    volume: wp.array(dtype=Any),
    lame: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    free: wp.array(dtype=Any),
    blocks: wp.array2d(dtype=wp.int32),
    material: int,
    inv_dt: Any,
    scale: Any,
    want_jacobian: int,
    f: wp.array(dtype=Any),
    A: wp.array(dtype=Any),
):
    """Per tet: elastic + strain-rate damping nodal forces at x (deformation rate (F - F0) inv_dt,
    inv_dt = 0 for a static solve) accumulated into f (N, 3); with ``want_jacobian``, the
    12x12 stiffness ``-scale * d f / d x`` as sixteen 3x3 blocks added to ``A[blocks[t, 4 a + b]]``
    (rows of pinned vertices, free = 0, left out)."""
    t = wp.tid()
    i0 = tets[t, 0]
    i1 = tets[t, 1]
    i2 = tets[t, 2]
    i3 = tets[t, 3]
    p0 = x[i0]
    q0 = x0[i0]
    Ds = wp.matrix_from_cols(x[i1] - p0, x[i2] - p0, x[i3] - p0)
    D0 = wp.matrix_from_cols(x0[i1] - q0, x0[i2] - q0, x0[i3] - q0)
    Dmi = Dm_inv[t]
    F = Ds * Dmi
    Fd = (Ds - D0) * Dmi * inv_dt
    ml = lame[t]
    mu = ml[0]
    lam = ml[1]
    beta = damping[1]
    vol = volume[t]
    P = element_stress(F, Fd, mu, lam, beta, material)
    H = P * wp.transpose(Dmi) * (-vol)
    Ht = wp.transpose(H)
    wp.atomic_add(f, i1, Ht[0])
    wp.atomic_add(f, i2, Ht[1])
    wp.atomic_add(f, i3, Ht[2])
    wp.atomic_sub(f, i0, Ht[0] + Ht[1] + Ht[2])
    if want_jacobian != 0:
        I3 = wp.identity(n=3, dtype=type(mu))
        g1 = Dmi[0]
        g2 = Dmi[1]
        g3 = Dmi[2]
        g0 = -(g1 + g2 + g3)
        w0 = free[i0] * vol * scale
        w1 = free[i1] * vol * scale
        w2 = free[i2] * vol * scale
        w3 = free[i3] * vol * scale
        # column blocks of vertex 0 are minus the sum of the others' (g0 = -(g1 + g2 + g3))
        M00 = I3 * (mu - mu)
        M10 = I3 * (mu - mu)
        M20 = I3 * (mu - mu)
        M30 = I3 * (mu - mu)
        for b in range(3):
            gb = Dmi[b]
            dP0 = element_stress_jvp(F, Fd, wp.outer(I3[0], gb), wp.outer(I3[0], gb) * inv_dt, mu, lam, beta, material)
            dP1 = element_stress_jvp(F, Fd, wp.outer(I3[1], gb), wp.outer(I3[1], gb) * inv_dt, mu, lam, beta, material)
            dP2 = element_stress_jvp(F, Fd, wp.outer(I3[2], gb), wp.outer(I3[2], gb) * inv_dt, mu, lam, beta, material)
            Ma0 = wp.matrix_from_cols(dP0 * g0, dP1 * g0, dP2 * g0) * w0
            Ma1 = wp.matrix_from_cols(dP0 * g1, dP1 * g1, dP2 * g1) * w1
            Ma2 = wp.matrix_from_cols(dP0 * g2, dP1 * g2, dP2 * g2) * w2
            Ma3 = wp.matrix_from_cols(dP0 * g3, dP1 * g3, dP2 * g3) * w3
            wp.atomic_add(A, blocks[t, 0 + b + 1], Ma0)
            wp.atomic_add(A, blocks[t, 4 + b + 1], Ma1)
            wp.atomic_add(A, blocks[t, 8 + b + 1], Ma2)
            wp.atomic_add(A, blocks[t, 12 + b + 1], Ma3)
            M00 = M00 - Ma0
            M10 = M10 - Ma1
            M20 = M20 - Ma2
            M30 = M30 - Ma3
        wp.atomic_add(A, blocks[t, 0], M00)
        wp.atomic_add(A, blocks[t, 4], M10)
        wp.atomic_add(A, blocks[t, 8], M20)
        wp.atomic_add(A, blocks[t, 12], M30)


@wp.func
def smooth_contact_jacobian(n: Any, c: Any, v: Any, ke: Any, kd: Any, mu: Any, vs: Any, delta: Any, dv: int):
    """Jacobian of :func:`~diffvc._kernels.rigid.smooth_contact_force` w.r.t. the point's
    position (``dv = 0``; through c = n.x - d) or velocity (``dv = 1``), a 3x3 matrix. At the
    kinks of the sharp law (delta = 0: onset c = 0, vn = 0, fn = 0) it is the one-sided derivative
    of the branch the force evaluates."""
    zero = c - c
    one = zero + type(c)(1.0)
    J = wp.outer(n, n) * zero
    fn = zero
    dfn_dc = zero
    dfn_dv = n * zero
    active = int(0)
    vn = wp.dot(n, v)
    if delta > zero:
        if c < delta * type(c)(20.0):
            active = 1
            z = -c / delta
            e = wp.exp(-wp.abs(z))
            softplus = wp.log(one + e) + wp.max(z, zero)
            gate = wp.where(z >= zero, one / (one + e), e / (one + e))
            vneg = wp.min(vn, zero)
            fn = delta * softplus * ke - kd * gate * vneg
            dfn_dc = -ke * gate + kd * vneg * gate * (one - gate) / delta
            dfn_dv = n * wp.where(vn < zero, -kd * gate, zero)
    else:
        if c < zero:
            fn = -(ke * c + kd * wp.min(vn, zero))
            if fn > zero:
                active = 1
                dfn_dc = -ke
                dfn_dv = n * wp.where(vn < zero, -kd, zero)
    if active != 0:
        vt = v - n * vn
        denom = wp.sqrt(wp.dot(vt, vt) + vs * vs)
        a = n - vt * (mu / denom)
        if dv == 0:
            J = wp.outer(a, n) * dfn_dc
        else:
            I3 = wp.identity(n=3, dtype=type(c))
            Pn = I3 - wp.outer(n, n)
            J = wp.outer(a, dfn_dv) - (Pn - wp.outer(vt, vt) / (denom * denom)) * (mu * fn / denom)
    return J


@wp.func
def vertex_total_force(xi: Any, vi: Any, fi: Any, m: Any, planes: Any, contact: Any, gravity: Any, damping: Any,
                       n_planes: int):
    """Tet force fi + plane contact at velocity vi + m g - alpha m vi on one vertex."""
    ft = fi + gravity[0] * m - vi * (damping[0] * m)
    for k in range(MAX_PLANES):
        if k < n_planes:
            p = planes[k]
            n = type(xi)(p[0], p[1], p[2])
            c = wp.dot(n, xi) - p[3]
            ft = ft + smooth_contact_force(n, c, vi, contact[0], contact[1], contact[2], contact[3], contact[4])
    return ft


@wp.kernel
def vertex_residual(
    x: wp.array(dtype=Any),
    x0: wp.array(dtype=Any),
    v0: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
    mass: wp.array(dtype=Any),
    free: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    n_planes: int,
    dt: Any,
    inv_dt: Any,
    scale: Any,
    inertia: Any,
    r: wp.array(dtype=Any),
):
    """Per vertex: the residual ``inertia m (x - x0 - dt v0) - scale f_total`` (f_total: the
    tet forces f + plane contact at velocity (x - x0) inv_dt + m g - alpha m v), pinned rows
    (free = 0) ``m (x - x0)``."""
    i = wp.tid()
    xi = x[i]
    x0i = x0[i]
    m = mass[i]
    fr = free[i]
    ft = vertex_total_force(xi, (xi - x0i) * inv_dt, f[i], m, planes, contact, gravity, damping, n_planes)
    res = (xi - x0i - v0[i] * dt) * (inertia * m) - ft * scale
    r[i] = res * fr + (xi - x0i) * ((type(m)(1.0) - fr) * wp.max(m, type(m)(1e-30)))


@wp.kernel
def vertex_system(
    x: wp.array(dtype=Any),
    x0: wp.array(dtype=Any),
    v0: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
    mass: wp.array(dtype=Any),
    free: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    diag: wp.array(dtype=wp.int32),
    n_planes: int,
    dt: Any,
    inv_dt: Any,
    scale: Any,
    inertia: Any,
    want_jacobian: int,
    r: wp.array(dtype=Any),
    A: wp.array(dtype=Any),
):
    """:func:`vertex_residual` and, with ``want_jacobian``, its diagonal 3x3 block added to
    ``A[diag[i]]`` (inertia, mass damping, contact)."""
    i = wp.tid()
    xi = x[i]
    x0i = x0[i]
    m = mass[i]
    fr = free[i]
    vi = (xi - x0i) * inv_dt
    ft = vertex_total_force(xi, vi, f[i], m, planes, contact, gravity, damping, n_planes)
    mc = wp.max(m, type(m)(1e-30))
    res = (xi - x0i - v0[i] * dt) * (inertia * m) - ft * scale
    r[i] = res * fr + (xi - x0i) * ((type(m)(1.0) - fr) * mc)
    if want_jacobian != 0:
        zero = m - m
        Jx = wp.outer(xi, xi) * zero
        Jv = wp.outer(xi, xi) * zero
        for k in range(MAX_PLANES):
            if k < n_planes:
                p = planes[k]
                n = type(xi)(p[0], p[1], p[2])
                c = wp.dot(n, xi) - p[3]
                Jx = Jx + smooth_contact_jacobian(n, c, vi, contact[0], contact[1], contact[2], contact[3],
                                                  contact[4], 0)
                Jv = Jv + smooth_contact_jacobian(n, c, vi, contact[0], contact[1], contact[2], contact[3],
                                                  contact[4], 1)
        I3 = wp.identity(n=3, dtype=type(m))
        B = I3 * (inertia * m * (type(m)(1.0) + dt * damping[0])) - (Jx + Jv * inv_dt) * scale
        wp.atomic_add(A, diag[i], B * fr + I3 * ((type(m)(1.0) - fr) * mc))
