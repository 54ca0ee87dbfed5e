"""Warp kernels for MLS-MPM (2D and 3D), and a fused multi-step segment with a hand-run adjoint.

One MLS-MPM step (Hu et al. 2018, as in DiffTaichi's ``diffmpm.py``) is three launches:

* :func:`p2g_2d` / :func:`p2g_3d` (one thread per particle): F <- (I + dt C) F, plastic
  projection, Kirchhoff stress, actuation stress, then a scatter of momentum + affine stress
  impulse and mass onto the 3^d quadratic B-spline stencil of grid nodes;
* :func:`grid_2d` / :func:`grid_3d` (one thread per node): velocity = momentum / mass, gravity,
  wall conditions (empty nodes: 0);
* :func:`g2p_2d` / :func:`g2p_3d` (one thread per particle): gather velocity and affine field C,
  advect.

P2G is a scatter. On CPU a Warp launch runs on one thread, and Warp's CPU atomics are not atomic
across threads, so the split forward P2G gives every CPU thread its own grid (a ``slot``, the
first axis of the grid buffers), summed afterwards in a fixed order (deterministic, no lost
adds). Adjoint launches (whose generated code scatters into the grid adjoint and into
per-particle parameters) are never split. On CUDA there is one slot and atomics are real.

:func:`mpm_segment` runs K steps as ONE torch autograd node: particle states of every step live in
preallocated buffers (grids are not stored: backward recomputes each step's P2G and grid update,
as DiffTaichi does, unless the segment's grids fit in ``GRID_STORE_BYTES``: then they are kept),
and the backward pass launches the adjoint kernels of each step in reverse. With
``recompute=True`` the node keeps only its inputs and re-runs its forward (keeping grids) at the
start of backward (a checkpoint segment).

Materials (``material`` per particle): 0 fixed-corotated, 1 Neo-Hookean, 2 snow (fixed-corotated
with singular values clamped to [1 - theta_c, 1 + theta_s] and hardening exp(xi (1 - J_p))),
3 sand (Drucker-Prager return mapping in Hencky strain, Klar et al. 2016; J_p holds the
log-volume correction). Polar rotations are closed form (2D) or scaled Newton (3D, shared with
the FEM kernels); only the plastic projections use SVD.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import _SCALAR, _stream, run_split, to_warp, wp
from .fem import polar_rotation
from .springs import _record, _rows

COROTATED, NEOHOOKEAN, SNOW, SAND = 0, 1, 2, 3
STICKY, SLIP, SEPARATE = 0, 1, 2
J_MIN = 1e-6  # Neo-Hookean: log J is evaluated at max(J, J_MIN) (finite for inverted particles)
SAND_SIG_MIN = 1e-4  # sand: log |sigma| is evaluated at max(|sigma|, 1e-4)
HARDEN_MIN, HARDEN_MAX = 0.1, 5.0  # snow hardening factor range (as in Taichi's mpm99)
MAX_SLOTS = 8  # most grid copies (CPU threads) of the split forward P2G


# --------------------------------------------------------------------------------------------
# shared math
# --------------------------------------------------------------------------------------------

@wp.func
def polar2(F: Any):
    """Rotation of the 2D polar decomposition F = R S, closed form; identity when F has no
    rotational part (F00 + F11 = F10 - F01 = 0)."""
    a = F[0, 0] + F[1, 1]
    b = F[1, 0] - F[0, 1]
    n2 = a * a + b * b
    c = a - a + type(a)(1.0)
    s = a - a
    if n2 > type(a)(1e-30):
        n = wp.sqrt(n2)
        c = a / n
        s = b / n
    return type(F)(c, -s, s, c)


@wp.func
def corotated_tau(F: Any, R: Any, I: Any, mu: Any, lam: Any):
    """Kirchhoff stress of fixed-corotated elasticity: 2 mu (F - R) F^T + lam (J - 1) J I."""
    J = wp.determinant(F)
    return (F - R) * wp.transpose(F) * (type(mu)(2.0) * mu) + I * (lam * (J - type(mu)(1.0)) * J)


@wp.func
def neohookean_tau(F: Any, I: Any, mu: Any, lam: Any):
    """Kirchhoff stress of compressible Neo-Hookean: mu (F F^T - I) + lam log(J) I."""
    J = wp.max(wp.determinant(F), type(mu)(J_MIN))
    return (F * wp.transpose(F) - I) * mu + I * (lam * wp.log(J))


@wp.func
def wall(v: Any, n: Any, kind: int, mu: Any):
    """Grid velocity at a wall with inward normal n: sticky (0), slip (1: normal part removed),
    separate (2: only when moving into the wall; Coulomb friction mu on the tangential part)."""
    out = v
    if kind == 0:
        out = v * (mu - mu)
    elif kind == 1:
        out = v - n * wp.dot(v, n)
    else:
        lin = wp.dot(v, n)
        if lin < type(mu)(0.0):
            vt = v - n * lin
            lit = wp.sqrt(wp.dot(vt, vt) + type(mu)(1e-20))
            if lit + mu * lin <= type(mu)(0.0):
                out = v * (mu - mu)
            else:
                out = vt * (type(mu)(1.0) + mu * lin / lit)
    return out


@wp.func
def hardening_factor(jp: Any, xi: Any):
    return wp.clamp(wp.exp(xi * (type(xi)(1.0) - jp)), type(xi)(HARDEN_MIN), type(xi)(HARDEN_MAX))


# --------------------------------------------------------------------------------------------
# 2D
# --------------------------------------------------------------------------------------------

@wp.func
def sand_2d(Fn: Any, jp: Any, mu: Any, lam: Any, alpha: Any):
    """Drucker-Prager return mapping in Hencky strain (Klar et al. 2016) and the Hencky
    St. Venant-Kirchhoff Kirchhoff stress: returns (F_elastic, log-volume correction, tau)."""
    F = Fn
    j = jp
    U, sig, V = wp.svd2(F)
    e0 = wp.log(wp.max(wp.abs(sig[0]), type(mu)(SAND_SIG_MIN)))
    e1 = wp.log(wp.max(wp.abs(sig[1]), type(mu)(SAND_SIG_MIN)))
    tr = e0 + e1 + jp
    h0 = e0 - tr * type(mu)(0.5)
    h1 = e1 - tr * type(mu)(0.5)
    hn = wp.sqrt(h0 * h0 + h1 * h1 + type(mu)(1e-30))
    if tr >= type(mu)(0.0):  # separation: stress free
        e0 = mu - mu
        e1 = mu - mu
        j = tr
    else:
        j = mu - mu
        dg = hn + (type(mu)(2.0) * lam + type(mu)(2.0) * mu) / (type(mu)(2.0) * mu) * tr * alpha
        if dg > type(mu)(0.0):
            e0 = e0 - dg / hn * h0
            e1 = e1 - dg / hn * h1
    F = U * wp.diag(wp.vector(wp.exp(e0), wp.exp(e1))) * wp.transpose(V)
    te = e0 + e1
    tau = U * wp.diag(wp.vector(type(mu)(2.0) * mu * e0 + lam * te, type(mu)(2.0) * mu * e1 + lam * te)) * wp.transpose(U)
    return F, j, tau


@wp.func
def snow_2d(Fn: Any, jp: Any, mu: Any, lam: Any, theta_c: Any, theta_s: Any, xi: Any):
    """Singular values clamped to [1 - theta_c, 1 + theta_s] (Stomakhin et al. 2013), then
    hardened fixed-corotated stress: returns (F_elastic, J_p, tau)."""
    I = wp.identity(n=2, dtype=type(mu))
    one = type(mu)(1.0)
    F = Fn
    j = jp
    U, sig, V = wp.svd2(F)  # the projection (and its gradient) only when a clamp is active
    lo = one - theta_c
    hi = one + theta_s
    if sig[0] < lo or sig[0] > hi or sig[1] < lo or sig[1] > hi:
        c0 = wp.clamp(sig[0], lo, hi)
        c1 = wp.clamp(sig[1], lo, hi)
        j = jp * (sig[0] * sig[1]) / (c0 * c1)
        F = U * wp.diag(wp.vector(c0, c1)) * wp.transpose(V)
    h = hardening_factor(j, xi)
    return F, j, corotated_tau(F, polar2(F), I, mu * h, lam * h)


@wp.func
def stress_2d(Fn: Any, jp: Any, mu: Any, lam: Any, material: int, theta_c: Any, theta_s: Any, xi: Any,
              alpha: Any):
    """Plastic projection and Kirchhoff stress of one 2D particle: returns (F_elastic, J_p, tau).
    One function per material so an adjoint only pays for the branch it takes."""
    I = wp.identity(n=2, dtype=type(mu))
    F = Fn
    j = jp
    tau = I * (mu - mu)
    if material == 3:
        F, j, tau = sand_2d(Fn, jp, mu, lam, alpha)
    elif material == 2:
        F, j, tau = snow_2d(Fn, jp, mu, lam, theta_c, theta_s, xi)
    elif material == 1:
        tau = neohookean_tau(Fn, I, mu, lam)
    else:
        tau = corotated_tau(Fn, polar2(Fn), I, mu, lam)
    return F, j, tau


@wp.kernel
def p2g_2d(
    offset: int,
    slot: int,
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    C: wp.array(dtype=Any),
    F: wp.array(dtype=Any),
    Jp: wp.array(dtype=Any),
    mass: wp.array(dtype=Any),
    volume: wp.array(dtype=Any),
    mu: wp.array(dtype=Any),
    lam: wp.array(dtype=Any),
    material: wp.array(dtype=wp.int32),
    act: wp.array(dtype=Any),
    act_dir: wp.array(dtype=Any),
    dt: Any,
    inv_dx: Any,
    res_x: int,
    res_y: int,
    theta_c: Any,
    theta_s: Any,
    xi: Any,
    alpha: Any,
    grid_mv: wp.array2d(dtype=Any),
    grid_m: wp.array2d(dtype=Any),
    F_out: wp.array(dtype=Any),
    Jp_out: wp.array(dtype=Any),
):
    """Particle p = tid + offset: update F, stress, scatter into grid slot ``slot``."""
    p = wp.tid() + offset
    xg = x[p] * inv_dx
    bx = wp.clamp(int(wp.floor(xg[0] - type(dt)(0.5))), 0, res_x - 3)
    by = wp.clamp(int(wp.floor(xg[1] - type(dt)(0.5))), 0, res_y - 3)
    fx = xg - type(xg)(type(dt)(bx), type(dt)(by))
    w0 = wp.cw_mul(type(xg)(type(dt)(1.5), type(dt)(1.5)) - fx, type(xg)(type(dt)(1.5), type(dt)(1.5)) - fx) * type(dt)(0.5)
    d1 = fx - type(xg)(type(dt)(1.0), type(dt)(1.0))
    w1 = type(xg)(type(dt)(0.75), type(dt)(0.75)) - wp.cw_mul(d1, d1)
    d2 = fx - type(xg)(type(dt)(0.5), type(dt)(0.5))
    w2 = wp.cw_mul(d2, d2) * type(dt)(0.5)
    W = wp.matrix_from_rows(w0, w1, w2)
    I = wp.identity(n=2, dtype=type(dt))
    Cp = C[p]
    Fn = (I + Cp * dt) * F[p]
    Fe, jn, tau = stress_2d(Fn, Jp[p], mu[p], lam[p], material[p], theta_c, theta_s, xi, alpha)
    a = act_dir[p]
    tau = tau + Fe * wp.outer(a, a) * wp.transpose(Fe) * act[p]
    F_out[p] = Fe
    Jp_out[p] = jn
    mp = mass[p]
    affine = tau * (-dt * volume[p] * type(dt)(4.0) * inv_dx * inv_dx) + Cp * mp
    mv = v[p] * mp
    dx = type(dt)(1.0) / inv_dx
    # float offsets are counted (type(dt)(i) of a loop constant trips Warp's constant cache)
    one = type(dt)(1.0)
    fi = dt - dt
    for i in range(3):
        fj = dt - dt
        for j in range(3):
            wgt = W[i, 0] * W[j, 1]
            dpos = (type(xg)(fi, fj) - fx) * dx
            node = (bx + i) * res_y + by + j
            wp.atomic_add(grid_mv, slot, node, (mv + affine * dpos) * wgt)
            wp.atomic_add(grid_m, slot, node, mp * wgt)
            fj = fj + one
        fi = fi + one


@wp.func
def node_velocity_2d(mv: Any, m: Any, g: Any, dt: Any, i: int, j: int, res_x: int, res_y: int, bound: int,
                     wall_kind: wp.array(dtype=wp.int32), wall_mu: wp.array(dtype=Any)):
    """Velocity of a non-empty node: momentum / mass + dt g, then the walls (x-low, x-high, y-low,
    y-high) whose band holds the node."""
    vn = mv / m + g * dt
    one = type(dt)(1.0)
    zero = type(dt)(0.0)
    if i < bound:
        vn = wall(vn, type(vn)(one, zero), wall_kind[0], wall_mu[0])
    if i > res_x - bound:
        vn = wall(vn, type(vn)(-one, zero), wall_kind[1], wall_mu[1])
    if j < bound:
        vn = wall(vn, type(vn)(zero, one), wall_kind[2], wall_mu[2])
    if j > res_y - bound:
        vn = wall(vn, type(vn)(zero, -one), wall_kind[3], wall_mu[3])
    return vn


@wp.kernel
def grid_2d(
    offset: int,
    grid_mv: wp.array(dtype=Any),
    grid_m: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    wall_kind: wp.array(dtype=wp.int32),
    wall_mu: wp.array(dtype=Any),
    dt: Any,
    res_x: int,
    res_y: int,
    bound: int,
    grid_v: wp.array(dtype=Any),
):
    """Node velocities (:func:`node_velocity_2d`); 0 at empty nodes, which no particle reads with a
    nonzero weight (skipping them is most of the grid, and most of the adjoint's cost)."""
    node = wp.tid() + offset
    m = grid_m[node]
    if m <= type(dt)(0.0):
        grid_v[node] = grid_mv[node] * (dt - dt)
        return
    i = node / res_y
    grid_v[node] = node_velocity_2d(grid_mv[node], m, gravity[0], dt, i, node - i * res_y, res_x, res_y, bound,
                                    wall_kind, wall_mu)


@wp.kernel
def g2p_2d(
    offset: int,
    x: wp.array(dtype=Any),
    grid_v: wp.array(dtype=Any),
    dt: Any,
    inv_dx: Any,
    res_x: int,
    res_y: int,
    x_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
    C_out: wp.array(dtype=Any),
):
    """Gather velocity and APIC affine field C = 4/dx^2 sum w v (x_i - x_p)^T; advect."""
    p = wp.tid() + offset
    xp = x[p]
    xg = xp * inv_dx
    bx = wp.clamp(int(wp.floor(xg[0] - type(dt)(0.5))), 0, res_x - 3)
    by = wp.clamp(int(wp.floor(xg[1] - type(dt)(0.5))), 0, res_y - 3)
    fx = xg - type(xg)(type(dt)(bx), type(dt)(by))
    w0 = wp.cw_mul(type(xg)(type(dt)(1.5), type(dt)(1.5)) - fx, type(xg)(type(dt)(1.5), type(dt)(1.5)) - fx) * type(dt)(0.5)
    d1 = fx - type(xg)(type(dt)(1.0), type(dt)(1.0))
    w1 = type(xg)(type(dt)(0.75), type(dt)(0.75)) - wp.cw_mul(d1, d1)
    d2 = fx - type(xg)(type(dt)(0.5), type(dt)(0.5))
    w2 = wp.cw_mul(d2, d2) * type(dt)(0.5)
    W = wp.matrix_from_rows(w0, w1, w2)
    nv = xp * (dt - dt)
    nC = wp.outer(nv, nv)
    one = type(dt)(1.0)
    fi = dt - dt
    for i in range(3):
        fj = dt - dt
        for j in range(3):
            wgt = W[i, 0] * W[j, 1]
            dpos = type(xg)(fi, fj) - fx
            g = grid_v[(bx + i) * res_y + by + j]
            nv = nv + g * wgt
            nC = nC + wp.outer(g, dpos) * (type(dt)(4.0) * inv_dx * wgt)
            fj = fj + one
        fi = fi + one
    v_out[p] = nv
    C_out[p] = nC
    x_out[p] = xp + nv * dt


# --------------------------------------------------------------------------------------------
# 3D
# --------------------------------------------------------------------------------------------

@wp.func
def sand_3d(Fn: Any, jp: Any, mu: Any, lam: Any, alpha: Any):
    """Drucker-Prager return mapping in Hencky strain (Klar et al. 2016) and the Hencky
    St. Venant-Kirchhoff Kirchhoff stress: returns (F_elastic, log-volume correction, tau)."""
    F = Fn
    j = jp
    U, sig, V = wp.svd3(F)
    e0 = wp.log(wp.max(wp.abs(sig[0]), type(mu)(SAND_SIG_MIN)))
    e1 = wp.log(wp.max(wp.abs(sig[1]), type(mu)(SAND_SIG_MIN)))
    e2 = wp.log(wp.max(wp.abs(sig[2]), type(mu)(SAND_SIG_MIN)))
    tr = e0 + e1 + e2 + jp
    third = type(mu)(1.0) / type(mu)(3.0)
    h0 = e0 - tr * third
    h1 = e1 - tr * third
    h2 = e2 - tr * third
    hn = wp.sqrt(h0 * h0 + h1 * h1 + h2 * h2 + type(mu)(1e-30))
    if tr >= type(mu)(0.0):
        e0 = mu - mu
        e1 = mu - mu
        e2 = mu - mu
        j = tr
    else:
        j = mu - mu
        dg = hn + (type(mu)(3.0) * lam + type(mu)(2.0) * mu) / (type(mu)(2.0) * mu) * tr * alpha
        if dg > type(mu)(0.0):
            e0 = e0 - dg / hn * h0
            e1 = e1 - dg / hn * h1
            e2 = e2 - dg / hn * h2
    F = U * wp.diag(wp.vector(wp.exp(e0), wp.exp(e1), wp.exp(e2))) * wp.transpose(V)
    te = e0 + e1 + e2
    tm = type(mu)(2.0) * mu
    tau = U * wp.diag(wp.vector(tm * e0 + lam * te, tm * e1 + lam * te, tm * e2 + lam * te)) * wp.transpose(U)
    return F, j, tau


@wp.func
def snow_3d(Fn: Any, jp: Any, mu: Any, lam: Any, theta_c: Any, theta_s: Any, xi: Any):
    """Singular values clamped to [1 - theta_c, 1 + theta_s] (Stomakhin et al. 2013), then
    hardened fixed-corotated stress: returns (F_elastic, J_p, tau)."""
    I = wp.identity(n=3, dtype=type(mu))
    one = type(mu)(1.0)
    F = Fn
    j = jp
    U, sig, V = wp.svd3(F)
    lo = one - theta_c
    hi = one + theta_s
    out = sig[0] < lo or sig[0] > hi or sig[1] < lo or sig[1] > hi or sig[2] < lo or sig[2] > hi
    if out:
        c0 = wp.clamp(sig[0], lo, hi)
        c1 = wp.clamp(sig[1], lo, hi)
        c2 = wp.clamp(sig[2], lo, hi)
        j = jp * (sig[0] * sig[1] * sig[2]) / (c0 * c1 * c2)
        F = U * wp.diag(wp.vector(c0, c1, c2)) * wp.transpose(V)
    h = hardening_factor(j, xi)
    return F, j, corotated_tau(F, polar_rotation(F), I, mu * h, lam * h)


@wp.func
def stress_3d(Fn: Any, jp: Any, mu: Any, lam: Any, material: int, theta_c: Any, theta_s: Any, xi: Any,
              alpha: Any):
    """Plastic projection and Kirchhoff stress of one 3D particle: returns (F_elastic, J_p, tau).
    One function per material so an adjoint only pays for the branch it takes."""
    I = wp.identity(n=3, dtype=type(mu))
    F = Fn
    j = jp
    tau = I * (mu - mu)
    if material == 3:
        F, j, tau = sand_3d(Fn, jp, mu, lam, alpha)
    elif material == 2:
        F, j, tau = snow_3d(Fn, jp, mu, lam, theta_c, theta_s, xi)
    elif material == 1:
        tau = neohookean_tau(Fn, I, mu, lam)
    else:
        tau = corotated_tau(Fn, polar_rotation(Fn), I, mu, lam)
    return F, j, tau


@wp.kernel
def p2g_3d(
    offset: int,
    slot: int,
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    C: wp.array(dtype=Any),
    F: wp.array(dtype=Any),
    Jp: wp.array(dtype=Any),
    mass: wp.array(dtype=Any),
    volume: wp.array(dtype=Any),
    mu: wp.array(dtype=Any),
    lam: wp.array(dtype=Any),
    material: wp.array(dtype=wp.int32),
    act: wp.array(dtype=Any),
    act_dir: wp.array(dtype=Any),
    dt: Any,
    inv_dx: Any,
    res_x: int,
    res_y: int,
    res_z: int,
    theta_c: Any,
    theta_s: Any,
    xi: Any,
    alpha: Any,
    grid_mv: wp.array2d(dtype=Any),
    grid_m: wp.array2d(dtype=Any),
    F_out: wp.array(dtype=Any),
    Jp_out: wp.array(dtype=Any),
):
    """3D twin of :func:`p2g_2d` (27-node stencil)."""
    p = wp.tid() + offset
    xg = x[p] * inv_dx
    h = type(dt)(0.5)
    bx = wp.clamp(int(wp.floor(xg[0] - h)), 0, res_x - 3)
    by = wp.clamp(int(wp.floor(xg[1] - h)), 0, res_y - 3)
    bz = wp.clamp(int(wp.floor(xg[2] - h)), 0, res_z - 3)
    fx = xg - type(xg)(type(dt)(bx), type(dt)(by), type(dt)(bz))
    c15 = type(xg)(type(dt)(1.5), type(dt)(1.5), type(dt)(1.5))
    w0 = wp.cw_mul(c15 - fx, c15 - fx) * h
    d1 = fx - type(xg)(type(dt)(1.0), type(dt)(1.0), type(dt)(1.0))
    w1 = type(xg)(type(dt)(0.75), type(dt)(0.75), type(dt)(0.75)) - wp.cw_mul(d1, d1)
    d2 = fx - type(xg)(h, h, h)
    w2 = wp.cw_mul(d2, d2) * h
    W = wp.matrix_from_rows(w0, w1, w2)
    I = wp.identity(n=3, dtype=type(dt))
    Cp = C[p]
    Fn = (I + Cp * dt) * F[p]
    Fe, jn, tau = stress_3d(Fn, Jp[p], mu[p], lam[p], material[p], theta_c, theta_s, xi, alpha)
    a = act_dir[p]
    tau = tau + Fe * wp.outer(a, a) * wp.transpose(Fe) * act[p]
    F_out[p] = Fe
    Jp_out[p] = jn
    mp = mass[p]
    affine = tau * (-dt * volume[p] * type(dt)(4.0) * inv_dx * inv_dx) + Cp * mp
    mv = v[p] * mp
    dx = type(dt)(1.0) / inv_dx
    one = type(dt)(1.0)
    fi = dt - dt
    for i in range(3):
        fj = dt - dt
        for j in range(3):
            fk = dt - dt
            for k in range(3):
                wgt = W[i, 0] * W[j, 1] * W[k, 2]
                dpos = (type(xg)(fi, fj, fk) - fx) * dx
                node = ((bx + i) * res_y + by + j) * res_z + bz + k
                wp.atomic_add(grid_mv, slot, node, (mv + affine * dpos) * wgt)
                wp.atomic_add(grid_m, slot, node, mp * wgt)
                fk = fk + one
            fj = fj + one
        fi = fi + one


@wp.func
def node_velocity_3d(mv: Any, m: Any, g: Any, dt: Any, i: int, j: int, k: int, res_x: int, res_y: int, res_z: int,
                     bound: int, wall_kind: wp.array(dtype=wp.int32), wall_mu: wp.array(dtype=Any)):
    """3D twin of :func:`node_velocity_2d`; walls x-low, x-high, y-low, y-high, z-low, z-high."""
    vn = mv / m + g * dt
    one = type(dt)(1.0)
    zero = type(dt)(0.0)
    if i < bound:
        vn = wall(vn, type(vn)(one, zero, zero), wall_kind[0], wall_mu[0])
    if i > res_x - bound:
        vn = wall(vn, type(vn)(-one, zero, zero), wall_kind[1], wall_mu[1])
    if j < bound:
        vn = wall(vn, type(vn)(zero, one, zero), wall_kind[2], wall_mu[2])
    if j > res_y - bound:
        vn = wall(vn, type(vn)(zero, -one, zero), wall_kind[3], wall_mu[3])
    if k < bound:
        vn = wall(vn, type(vn)(zero, zero, one), wall_kind[4], wall_mu[4])
    if k > res_z - bound:
        vn = wall(vn, type(vn)(zero, zero, -one), wall_kind[5], wall_mu[5])
    return vn


@wp.kernel
def grid_3d(
    offset: int,
    grid_mv: wp.array(dtype=Any),
    grid_m: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    wall_kind: wp.array(dtype=wp.int32),
    wall_mu: wp.array(dtype=Any),
    dt: Any,
    res_x: int,
    res_y: int,
    res_z: int,
    bound: int,
    grid_v: wp.array(dtype=Any),
):
    """3D twin of :func:`grid_2d`."""
    node = wp.tid() + offset
    m = grid_m[node]
    if m <= type(dt)(0.0):
        grid_v[node] = grid_mv[node] * (dt - dt)
        return
    k = node % res_z
    ij = node / res_z
    j = ij % res_y
    grid_v[node] = node_velocity_3d(grid_mv[node], m, gravity[0], dt, ij / res_y, j, k, res_x, res_y, res_z, bound,
                                    wall_kind, wall_mu)


@wp.kernel
def g2p_3d(
    offset: int,
    x: wp.array(dtype=Any),
    grid_v: wp.array(dtype=Any),
    dt: Any,
    inv_dx: Any,
    res_x: int,
    res_y: int,
    res_z: int,
    x_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
    C_out: wp.array(dtype=Any),
):
    """3D twin of :func:`g2p_2d`."""
    p = wp.tid() + offset
    xp = x[p]
    xg = xp * inv_dx
    h = type(dt)(0.5)
    bx = wp.clamp(int(wp.floor(xg[0] - h)), 0, res_x - 3)
    by = wp.clamp(int(wp.floor(xg[1] - h)), 0, res_y - 3)
    bz = wp.clamp(int(wp.floor(xg[2] - h)), 0, res_z - 3)
    fx = xg - type(xg)(type(dt)(bx), type(dt)(by), type(dt)(bz))
    c15 = type(xg)(type(dt)(1.5), type(dt)(1.5), type(dt)(1.5))
    w0 = wp.cw_mul(c15 - fx, c15 - fx) * h
    d1 = fx - type(xg)(type(dt)(1.0), type(dt)(1.0), type(dt)(1.0))
    w1 = type(xg)(type(dt)(0.75), type(dt)(0.75), type(dt)(0.75)) - wp.cw_mul(d1, d1)
    d2 = fx - type(xg)(h, h, h)
    w2 = wp.cw_mul(d2, d2) * h
    W = wp.matrix_from_rows(w0, w1, w2)
    nv = xp * (dt - dt)
    nC = wp.outer(nv, nv)
    one = type(dt)(1.0)
    fi = dt - dt
    for i in range(3):
        fj = dt - dt
        for j in range(3):
            fk = dt - dt
            for k in range(3):
                wgt = W[i, 0] * W[j, 1] * W[k, 2]
                dpos = type(xg)(fi, fj, fk) - fx
                g = grid_v[((bx + i) * res_y + by + j) * res_z + bz + k]
                nv = nv + g * wgt
                nC = nC + wp.outer(g, dpos) * (type(dt)(4.0) * inv_dx * wgt)
                fk = fk + one
            fj = fj + one
        fi = fi + one
    v_out[p] = nv
    C_out[p] = nC
    x_out[p] = xp + nv * dt


_KERNELS = {2: (p2g_2d, grid_2d, g2p_2d), 3: (p2g_3d, grid_3d, g2p_3d)}


def _index(kernel) -> dict:
    return {a.label: i for i, a in enumerate(kernel.adj.args)}


# --------------------------------------------------------------------------------------------
# fused segment
# --------------------------------------------------------------------------------------------

def default_slots(device: torch.device, n: int, min_per_thread: int = 16384) -> int:
    """CPU threads (and grid copies of the forward P2G) for ``n`` particles: torch's thread count
    when every thread gets at least ``min_per_thread`` particles, else 1; 1 on CUDA. (Each split
    launch is a thread-pool round trip; on a loaded 2-core machine a round trip costs
    milliseconds, so small problems -- DiffTaichi's 2,976-particle robot -- stay on one thread.)"""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_SLOTS, n // min_per_thread))


def _parts(n: int, threads: int) -> list:
    chunk = (n + threads - 1) // threads
    return [(s * chunk, min(chunk, n - s * chunk)) for s in range(threads) if s * chunk < n]


class _Group:
    """One kernel's recorded launches over disjoint sub-ranges ``[offset, offset + count)``, run
    on the calling thread and the launch workers when there are several (CPU), else as one launch.
    ``inputs(offset, part)`` builds the argument list of a part."""

    def __init__(self, kernel, parts, inputs, outputs, dev, adj_inputs=None, adj_outputs=None):
        self.index = _index(kernel)
        self.launches = [_record(kernel, count, inputs(off, i), outputs, dev,
                                 adj_inputs=None if adj_inputs is None else adj_inputs(off, i),
                                 adj_outputs=adj_outputs) for i, (off, count) in enumerate(parts)]
        self.stream = _stream(dev)

    def set(self, pairs, adjoint: bool = False) -> None:
        idx = self.index
        for L in self.launches:
            for key, c in pairs:
                L.set_param_at_index_from_ctype(idx[key], c, adjoint=adjoint)

    def run(self) -> None:
        if len(self.launches) > 1:
            run_split([L.launch for L in self.launches])
        elif self.stream is not None:
            self.launches[0].launch(stream=self.stream)
        else:
            self.launches[0].launch()


class _Segment:
    """Buffers and recorded launches of one segment run (forward or its recomputation).

    With T = ``slots`` CPU threads, P2G, grid update and G2P run split in T parts (P2G into T grid
    copies); in backward the P2G and grid adjoints (disjoint writes) are split too, the G2P
    adjoint (which scatters into the grid adjoint) runs on one thread."""

    def __init__(self, cfg, inputs, store_grids: bool = False):
        (K, dt, res, inv_dx, bound, slots, plastic) = cfg
        (x0, v0, C0, F0, Jp0, mass, volume, mu, lam, material, act, act_dir, gravity, wall_kind, wall_mu) = inputs
        d = x0.shape[1]
        n = x0.shape[0]
        dev, dtype = x0.device, x0.dtype
        G = 1
        for r in res:
            G *= r
        self.K, self.n, self.d, self.G, self.dev = K, n, d, G, dev
        self.pparts = _parts(n, slots)
        self.gparts = _parts(G, max(1, min(slots, G // 65536)))
        self.slots = slots = len(self.pparts)
        self.xs = torch.empty((K + 1, n, d), dtype=dtype, device=dev)
        self.vs = torch.empty((K + 1, n, d), dtype=dtype, device=dev)
        self.Cs = torch.empty((K + 1, n, d, d), dtype=dtype, device=dev)
        self.Fs = torch.empty((K + 1, n, d, d), dtype=dtype, device=dev)
        self.Jps = torch.empty((K + 1, n), dtype=dtype, device=dev)
        for buf, t in ((self.xs, x0), (self.vs, v0), (self.Cs, C0), (self.Fs, F0), (self.Jps, Jp0)):
            buf[0] = t
        self.gmv = torch.zeros((slots, G, d), dtype=dtype, device=dev)
        self.gm = torch.zeros((slots, G), dtype=dtype, device=dev)
        # the grid kernel reads the slot sum (torch's sum over the slot axis: a fixed order)
        self.smv = self.gmv[0] if slots == 1 else torch.zeros((G, d), dtype=dtype, device=dev)
        self.sm = self.gm[0] if slots == 1 else torch.zeros(G, dtype=dtype, device=dev)
        self.gv = torch.zeros((G, d), dtype=dtype, device=dev)
        # with store_grids, each step's summed grid and node velocities are kept so that backward
        # need not recompute them (used for short segments: K (2d + 1) G values)
        self.stored = None
        if store_grids:
            self.stored = (torch.empty((K, G, d), dtype=dtype, device=dev), torch.empty((K, G), dtype=dtype, device=dev),
                           torch.empty((K, G, d), dtype=dtype, device=dev))
        self.rows = (_rows(self.xs, "vec"), _rows(self.vs, "vec"), _rows(self.Cs, "mat"), _rows(self.Fs, "mat"),
                     _rows(self.Jps, None))
        self.act_rows = _rows(act, None)
        if act.shape[0] == 1:
            self.act_rows = self.act_rows * K
        S = _SCALAR[dtype]
        self.fdt, self.finv = S(dt), S(inv_dx)
        p2g, grid, g2p = _KERNELS[d]
        self.kernels = (p2g, grid, g2p)
        self.res = [int(r) for r in res]
        self.plastic = [S(float(p)) for p in plastic]
        self.params = [to_warp(mass), to_warp(volume), to_warp(mu), to_warp(lam), to_warp(material)]
        self.w_actdir = to_warp(act_dir, "vec")
        self.w_grav = to_warp(gravity.reshape(1, d), "vec")
        self.w_kind, self.w_wmu = to_warp(wall_kind), to_warp(wall_mu)
        self.bound = int(bound)
        self.w_gmv, self.w_gm, self.w_gv = to_warp(self.gmv, "vec"), to_warp(self.gm), to_warp(self.gv, "vec")
        self.w_smv, self.w_sm = to_warp(self.smv, "vec"), to_warp(self.sm)
        wx, wv, wC, wF, wJ = (to_warp(self.xs[0], "vec"), to_warp(self.vs[0], "vec"), to_warp(self.Cs[0], "mat"),
                              to_warp(self.Fs[0], "mat"), to_warp(self.Jps[0]))
        self.wstate = (wx, wv, wC, wF, wJ)
        self.wa = wa = to_warp(act[0])
        self.p2g = _Group(p2g, self.pparts, lambda off, s: self._p2g_inputs(off, s, wx, wv, wC, wF, wJ, wa),
                          [self.w_gmv, self.w_gm, wF, wJ], dev)
        self.grid = _Group(grid, self.gparts, lambda off, s: self._grid_inputs(off), [self.w_gv], dev)
        self.g2p = _Group(g2p, self.pparts, lambda off, s: self._g2p_inputs(off, wx), [wx, wv, wC], dev)

    def _p2g_inputs(self, offset, slot, wx, wv, wC, wF, wJ, wa, params=None, actdir=None):
        params = self.params if params is None else params
        actdir = self.w_actdir if actdir is None else actdir
        return [offset, slot, wx, wv, wC, wF, wJ, *params, wa, actdir, self.fdt, self.finv, *self.res, *self.plastic]

    def _grid_inputs(self, offset, gmv=None, gm=None, grav=None, wmu=None):
        pick = (lambda a, b: b if a is None else a)
        return [offset, pick(gmv, self.w_smv), pick(gm, self.w_sm), pick(grav, self.w_grav), self.w_kind,
                pick(wmu, self.w_wmu), self.fdt, *self.res, self.bound]

    def _g2p_inputs(self, offset, wx, gv=None):
        return [offset, wx, self.w_gv if gv is None else gv, self.fdt, self.finv, *self.res]

    def p2g_grid(self, k: int) -> None:
        """Zero the grid, scatter particles of step k (one grid copy per thread), grid update."""
        xc, vc, Cc, Fc, Jc = self.rows
        self.gmv.zero_()
        self.gm.zero_()
        self.p2g.set((("x", xc[k]), ("v", vc[k]), ("C", Cc[k]), ("F", Fc[k]), ("Jp", Jc[k]),
                      ("act", self.act_rows[k]), ("F_out", Fc[k + 1]), ("Jp_out", Jc[k + 1])))
        self.p2g.run()
        if self.slots > 1:
            torch.sum(self.gmv, 0, out=self.smv)
            torch.sum(self.gm, 0, out=self.sm)
        self.grid.run()

    def forward(self) -> None:
        xc, vc, Cc, _, _ = self.rows
        for k in range(self.K):
            self.p2g_grid(k)
            if self.stored is not None:
                self.stored[0][k].copy_(self.smv)
                self.stored[1][k].copy_(self.sm)
                self.stored[2][k].copy_(self.gv)
            self.g2p.set((("x", xc[k]), ("x_out", xc[k + 1]), ("v_out", vc[k + 1]), ("C_out", Cc[k + 1])))
            self.g2p.run()


def _adjoint(seg: _Segment, inputs, grads_out):
    (x0, v0, C0, F0, Jp0, mass, volume, mu, lam, material, act, act_dir, gravity, wall_kind, wall_mu) = inputs
    K, dev = seg.K, seg.dev
    # two rolling adjoint buffers per field: [k % 2] holds d/d(state k), [(k + 1) % 2] d/d(state k+1)
    adj = [torch.zeros((2,) + tuple(b.shape[1:]), dtype=b.dtype, device=b.device)
           for b in (seg.xs, seg.vs, seg.Cs, seg.Fs, seg.Jps)]
    final, stacked = grads_out
    for a, g, gs in zip(adj, final, stacked):
        if g is not None:
            a[K % 2] += g
        if gs is not None:
            a[K % 2] += gs[K - 1]
    axc, avc, aCc, aFc, aJc = (_rows(adj[0], "vec"), _rows(adj[1], "vec"), _rows(adj[2], "mat"),
                               _rows(adj[3], "mat"), _rows(adj[4], None))
    g_params = [torch.zeros_like(t) for t in (mass, volume, mu, lam)]
    g_act = torch.zeros_like(act)
    g_actdir = torch.zeros_like(act_dir)
    aact = _rows(g_act, None)
    if act.shape[0] == 1:
        aact = aact * K
    # the P2G adjoint reads the summed grid's adjoint (slot 0: the slot sum's adjoint is the same
    # for every slot); its split parts write disjoint per-particle adjoints
    agmv, agm, agv = seg.gmv[:1].clone(), seg.gm[:1].clone(), torch.zeros_like(seg.gv)
    w_agmv, w_agm, w_agv = to_warp(agmv, "vec"), to_warp(agm), to_warp(agv, "vec")
    scratch_g = [torch.zeros_like(gravity.reshape(1, -1)) for _ in seg.gparts]
    scratch_mu = [torch.zeros_like(wall_mu) for _ in seg.gparts]
    p2g, grid, g2p = seg.kernels
    wx, wv, wC, wF, wJ = seg.wstate
    ax0, av0, aC0, aF0, aJ0 = (to_warp(adj[0][0], "vec"), to_warp(adj[1][0], "vec"), to_warp(adj[2][0], "mat"),
                               to_warp(adj[3][0], "mat"), to_warp(adj[4][0]))
    wa, wga = seg.wa, to_warp(g_act[0])
    a_params = [to_warp(g) for g in g_params] + [None]
    w_gad = to_warp(g_actdir, "vec")
    Lp = _Group(p2g, seg.pparts, lambda off, s: seg._p2g_inputs(off, 0, wx, wv, wC, wF, wJ, wa),
                [seg.w_gmv, seg.w_gm, wF, wJ], dev,
                adj_inputs=lambda off, s: seg._p2g_inputs(off, 0, ax0, av0, aC0, aF0, aJ0, wga, params=a_params,
                                                          actdir=w_gad),
                adj_outputs=[w_agmv, w_agm, aF0, aJ0])
    Lg = _Group(grid, seg.gparts, lambda off, s: seg._grid_inputs(off), [seg.w_gv], dev,
                adj_inputs=lambda off, s: seg._grid_inputs(off, to_warp(agmv[0], "vec"), to_warp(agm[0]),
                                                           to_warp(scratch_g[s], "vec"), to_warp(scratch_mu[s])),
                adj_outputs=[w_agv])
    L2 = _Group(g2p, [(0, seg.n)], lambda off, s: seg._g2p_inputs(off, wx), [wx, wv, wC], dev,
                adj_inputs=lambda off, s: seg._g2p_inputs(off, ax0, w_agv), adj_outputs=[ax0, av0, aC0])
    xc, vc, Cc, Fc, Jc = seg.rows
    for k in range(K - 1, -1, -1):
        if seg.stored is not None:  # this step's grid, kept by the forward run
            seg.smv.copy_(seg.stored[0][k])
            seg.sm.copy_(seg.stored[1][k])
            seg.gv.copy_(seg.stored[2][k])
        else:
            seg.p2g_grid(k)  # recompute this step's grid
        for a, gs in zip(adj, stacked):
            a[k % 2].zero_()
            if gs is not None and k >= 1:
                a[k % 2] += gs[k - 1]
        agmv.zero_()
        agm.zero_()
        agv.zero_()
        p, q = k % 2, (k + 1) % 2
        L2.set((("x", xc[k]), ("x_out", xc[k + 1]), ("v_out", vc[k + 1]), ("C_out", Cc[k + 1])))
        L2.set((("x", axc[p]), ("x_out", axc[q]), ("v_out", avc[q]), ("C_out", aCc[q])), adjoint=True)
        L2.run()
        Lg.run()
        Lp.set((("x", xc[k]), ("v", vc[k]), ("C", Cc[k]), ("F", Fc[k]), ("Jp", Jc[k]), ("act", seg.act_rows[k]),
                ("F_out", Fc[k + 1]), ("Jp_out", Jc[k + 1])))
        Lp.set((("x", axc[p]), ("v", avc[p]), ("C", aCc[p]), ("F", aFc[p]), ("Jp", aJc[p]), ("act", aact[k]),
                ("F_out", aFc[q]), ("Jp_out", aJc[q])), adjoint=True)
        Lp.run()
    return (adj[0][0], adj[1][0], adj[2][0], adj[3][0], adj[4][0], *g_params, g_act)


GRID_STORE_BYTES = 64 << 20  # a segment keeps its per-step grids for backward up to this size


def _grid_bytes(cfg, inputs) -> int:
    K, res, x0 = cfg[0], cfg[2], inputs[0]
    G = 1
    for r in res:
        G *= r
    return K * G * (2 * x0.shape[1] + 1) * x0.element_size()


class _MPMSegment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, recompute, return_all, *inputs):
        seg = _Segment(cfg, inputs, store_grids=not recompute and _grid_bytes(cfg, inputs) <= GRID_STORE_BYTES)
        seg.forward()
        ctx.cfg, ctx.recompute, ctx.return_all = cfg, recompute, return_all
        ctx.save_for_backward(*inputs)
        ctx.seg = None if recompute else seg
        K = cfg[0]
        bufs = (seg.xs, seg.vs, seg.Cs, seg.Fs, seg.Jps)
        final = tuple(b[K].clone() for b in bufs)
        if return_all:
            return (*final, *(b[1:] for b in bufs))
        return final

    @staticmethod
    def backward(ctx, *grads):
        inputs = ctx.saved_tensors
        seg = ctx.seg
        if seg is None:  # checkpoint: re-run the segment, keeping its grids when they fit
            seg = _Segment(ctx.cfg, inputs, store_grids=_grid_bytes(ctx.cfg, inputs) <= GRID_STORE_BYTES)
            seg.forward()
        final = grads[:5]
        stacked = grads[5:10] if ctx.return_all else (None,) * 5
        out = _adjoint(seg, inputs, (final, stacked))
        ctx.seg = None
        gx, gv, gC, gF, gJ, gm, gvol, gmu, glam, gact = out
        return (None, None, None, gx, gv, gC, gF, gJ, gm, gvol, gmu, glam, None, gact, None, None, None, None)


def mpm_segment(K: int, dt: float, res: tuple, dx: float, bound: int, plastic: tuple, x0, v0, C0, F0, Jp0, mass,
                volume, mu, lam, material, act, act_dir, gravity, wall_kind, wall_mu, recompute: bool = False,
                return_all: bool = False, slots: int | None = None):
    """K fused MLS-MPM steps as one differentiable torch op (see module doc).

    Shapes (d = 2 or 3, N particles): x0, v0 (N, d); C0, F0 (N, d, d); Jp0 (N,); mass, volume,
    mu, lam (N,); material (N,) int32; act (1, N) held or (K, N) per step; act_dir (N, d);
    gravity (d,); wall_kind (2d,) int32; wall_mu (2d,). plastic = (theta_c, theta_s, xi,
    alpha). slots: grid copies for the split forward P2G (default :func:`default_slots`).
    Returns (x, v, C, F, Jp) after K steps and, if ``return_all``, the stacked states of steps
    1..K. Gradients reach the initial state, mass, volume, mu, lam and act.
    """
    if slots is None:
        slots = default_slots(x0.device, x0.shape[0])
    cfg = (int(K), float(dt), tuple(int(r) for r in res), 1.0 / float(dx), int(bound), int(slots), tuple(plastic))
    c = [t.contiguous() for t in (x0, v0, C0, F0, Jp0, mass, volume, mu, lam, material, act, act_dir, gravity,
                                  wall_kind, wall_mu)]
    return _MPMSegment.apply(cfg, recompute, return_all, *c)
