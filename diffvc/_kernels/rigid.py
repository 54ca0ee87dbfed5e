"""Warp kernels for rigid bodies: penalty contact forces and semi-implicit integration.

Quaternions are stored as ``(x, y, z, w)`` 4-vectors (Warp's order). The contact force law is
the one of :func:`diffvc._kernels.particles.plane_contact_force` (one contact model in diffvc),
applied at the contact point of a body's collision point or sphere.
"""

from __future__ import annotations

from typing import Any

from .bridge import Const, Row, Step, mat, segment_op, vec, wp
from .particles import MAX_PLANES, plane_contact_force


@wp.func
def quat_apply(q: Any, v: Any):
    """Rotate 3-vector ``v`` by unit quaternion ``q = (x, y, z, w)``."""
    u = type(v)(q[0], q[1], q[2])
    two = q[3] - q[3] + type(q[3])(2.0)
    t = wp.cross(u, v) * two
    return v + t * q[3] + wp.cross(u, t)


@wp.func
def quat_apply_inv(q: Any, v: Any):
    """Rotate 3-vector ``v`` by the inverse of unit quaternion ``q``."""
    u = type(v)(-q[0], -q[1], -q[2])
    two = q[3] - q[3] + type(q[3])(2.0)
    t = wp.cross(u, v) * two
    return v + t * q[3] + wp.cross(u, t)


@wp.func
def smooth_contact_force(n: Any, c: Any, v: Any, ke: Any, kd: Any, mu: Any, vs: Any, delta: Any):
    """:func:`plane_contact_force` with the contact onset smoothed over a length ``delta`` (m).

    delta = 0: exactly ``plane_contact_force`` (force switches on with a kink at c = 0).
    delta > 0: the penetration ``c`` is replaced by ``-delta softplus(-c / delta)`` and the
    approach damping is gated by ``sigmoid(-c / delta)``, so the normal force is a smooth
    function of the state (it reaches ``ke delta e^-20`` at ``c = 20 delta`` and is cut there).
    Friction is the same regularised Coulomb law, proportional to the (smooth) normal force.
    """
    zero = c - c
    f = n * zero
    if delta > zero:
        if c < delta * type(c)(20.0):
            one = zero + type(c)(1.0)
            z = -c / delta
            e = wp.exp(-wp.abs(z))
            softplus = wp.log(one + e) + wp.max(z, zero)
            gate = wp.where(z >= zero, one / (one + e), e / (one + e))
            vn = wp.dot(n, v)
            fn = delta * softplus * ke - kd * gate * wp.min(vn, zero)
            vt = v - n * vn
            denom = wp.sqrt(wp.dot(vt, vt) + vs * vs)
            f = n * fn - vt * (mu * fn / denom)
    else:
        f = plane_contact_force(n, c, v, ke, kd, mu, vs)
    return f


@wp.func
def row3(a: Any, i: int, k: int):
    """Entries k..k+2 of row i of a 2-D array as a 3-vector."""
    return wp.vector(a[i, k], a[i, k + 1], a[i, k + 2])


@wp.func
def row4(a: Any, i: int, k: int):
    """Entries k..k+3 of row i of a 2-D array as a 4-vector."""
    return wp.vector(a[i, k], a[i, k + 1], a[i, k + 2], a[i, k + 3])


# Packed layouts (fewer arrays per launch: the bridge's per-array cost dominates small scenes):
#   body  (B, 13): x (0..2), q (3..6, x y z w), v (7..9), w (10..12)
#   geo   (P, 4):  collision point in the body frame (0..2), radius (3)
#   params (10,):  plane contact (ke, kd, mu, vs, delta), then body-body contact (same five)
#   ft    (B, 6):  force (0..2), torque about the centre of mass (3..5)
#   env   (5,):    gravity (0..2), linear and angular damping (3, 4)


@wp.kernel
def rigid_contact_forces(
    body: wp.array2d(dtype=Any),
    geo: wp.array2d(dtype=Any),
    point_body: wp.array(dtype=wp.int32),
    pairs: wp.array2d(dtype=wp.int32),
    planes: wp.array(dtype=Any),
    params: wp.array(dtype=Any),
    n_points: int,
    n_pairs: int,
    n_planes: int,
    ft: wp.array2d(dtype=Any),
):
    """Threads ``0..n_points-1``: point/sphere vs planes; threads ``n_points..n_points+n_pairs-1``:
    sphere vs sphere (point pairs of different bodies). Each thread atomically adds the contact
    force (N) and torque about the body's centre of mass (N m) into ``ft`` (B, 6).
    Launch single-threaded on CPU (atomics); the adjoint gathers."""
    tid = wp.tid()
    if tid < n_points:
        b = point_body[tid]
        xb = row3(body, b, 0)
        q = row4(body, b, 3)
        vb = row3(body, b, 7)
        wb = row3(body, b, 10)
        r = geo[tid, 3]
        p = xb + quat_apply(q, row3(geo, tid, 0))
        ke = params[0]
        kd = params[1]
        mu = params[2]
        vs = params[3]
        delta = params[4]
        f_tot = xb * (r - r)
        t_tot = xb * (r - r)
        # constant trip count: Warp unrolls it, keeping the adjoint of the sums exact
        for k in range(MAX_PLANES):
            if k < n_planes:
                pl = planes[k]
                n = type(xb)(pl[0], pl[1], pl[2])
                c = wp.dot(n, p) - pl[3] - r
                arm = p - n * r - xb
                vel = vb + wp.cross(wb, arm)
                f = smooth_contact_force(n, c, vel, ke, kd, mu, vs, delta)
                f_tot = f_tot + f
                t_tot = t_tot + wp.cross(arm, f)
        for k in range(3):
            wp.atomic_add(ft, b, k, f_tot[k])
            wp.atomic_add(ft, b, k + 3, t_tot[k])
    elif tid < n_points + n_pairs:
        k = tid - n_points
        i = pairs[k, 0]
        j = pairs[k, 1]
        bi = point_body[i]
        bj = point_body[j]
        xi = row3(body, bi, 0)
        xj = row3(body, bj, 0)
        ri = geo[i, 3]
        rj = geo[j, 3]
        pi = xi + quat_apply(row4(body, bi, 3), row3(geo, i, 0))
        pj = xj + quat_apply(row4(body, bj, 3), row3(geo, j, 0))
        d = pj - pi
        tiny = type(ri)(1e-12)
        dist = wp.sqrt(wp.dot(d, d) + tiny * tiny)  # smooth at coincident centres (finite gradient)
        n = d / dist
        c = dist - ri - rj
        half = type(ri)(0.5)
        cp = pi + n * (ri + c * half)
        vi = row3(body, bi, 7) + wp.cross(row3(body, bi, 10), cp - xi)
        vj = row3(body, bj, 7) + wp.cross(row3(body, bj, 10), cp - xj)
        f = smooth_contact_force(n, c, vj - vi, params[5], params[6], params[7], params[8], params[9])
        tj = wp.cross(cp - xj, f)
        ti = wp.cross(cp - xi, f)
        for m in range(3):
            wp.atomic_add(ft, bj, m, f[m])
            wp.atomic_add(ft, bj, m + 3, tj[m])
            wp.atomic_sub(ft, bi, m, f[m])
            wp.atomic_sub(ft, bi, m + 3, ti[m])


@wp.func
def body_step(body: Any, b: int, mass: Any, inertia: Any, ft: Any, env: Any, dt: Any):
    """One body's semi-implicit Euler step (see :func:`integrate_bodies`): returns the new
    centre of mass, quaternion (x, y, z, w), linear and angular velocity."""
    one = dt - dt + type(dt)(1.0)
    half = type(dt)(0.5)
    qb = row4(body, b, 3)
    g = wp.vector(env[0], env[1], env[2])
    v1 = (row3(body, b, 7) + (row3(ft, b, 0) / mass[b] + g) * dt) / (one + env[3] * dt)
    # angular velocity in the body frame
    wl = quat_apply_inv(qb, row3(body, b, 10))
    tl = quat_apply_inv(qb, row3(ft, b, 3))
    I = inertia[b]
    wa = wl + wp.inverse(I) * tl * dt
    # implicit gyroscopic term: solve I (w - wa) + dt w x (I w) = 0 by one Newton step from wa
    Iw = I * wa
    J = I + (wp.skew(wa) * I - wp.skew(Iw)) * dt
    wb = wa - wp.inverse(J) * (wp.cross(wa, Iw) * dt)
    wb = wb / (one + env[4] * dt)
    w1 = quat_apply(qb, wb)
    # q' = 0.5 (w1, 0) (x) q
    qv = type(w1)(qb[0], qb[1], qb[2])
    dqv = (w1 * qb[3] + wp.cross(w1, qv)) * half
    dqs = -wp.dot(w1, qv) * half
    qn = type(qb)(qb[0] + dqv[0] * dt, qb[1] + dqv[1] * dt, qb[2] + dqv[2] * dt, qb[3] + dqs * dt)
    qn = qn / wp.sqrt(wp.dot(qn, qn))
    return row3(body, b, 0) + v1 * dt, qn, v1, w1


@wp.kernel
def integrate_bodies(
    body: wp.array2d(dtype=Any),
    mass: wp.array(dtype=Any),
    inertia: wp.array(dtype=Any),
    ft: wp.array2d(dtype=Any),
    env: wp.array(dtype=Any),
    dt: Any,
    x_out: wp.array(dtype=Any),
    q_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
    w_out: wp.array(dtype=Any),
):
    """Semi-implicit Euler for one body: velocities first (forces, gravity, damping, implicit
    gyroscopic term by one Newton step in the body frame), then positions with the new
    velocities; the quaternion is integrated and renormalised (q / |q|, smooth)."""
    b = wp.tid()
    x1, q1, v1, w1 = body_step(body, b, mass, inertia, ft, env, dt)
    x_out[b] = x1
    q_out[b] = q1
    v_out[b] = v1
    w_out[b] = w1


@wp.kernel
def integrate_bodies_packed(
    body: wp.array2d(dtype=Any),
    mass: wp.array(dtype=Any),
    inertia: wp.array(dtype=Any),
    ft: wp.array2d(dtype=Any),
    env: wp.array(dtype=Any),
    dt: Any,
    body_out: wp.array2d(dtype=Any),
):
    """:func:`integrate_bodies` writing the packed body layout (B, 13) -- the state of the next
    step of a fused segment (:func:`rigid_segment`)."""
    b = wp.tid()
    x1, q1, v1, w1 = body_step(body, b, mass, inertia, ft, env, dt)
    for k in range(3):
        body_out[b, k] = x1[k]
        body_out[b, k + 7] = v1[k]
        body_out[b, k + 10] = w1[k]
    for k in range(4):
        body_out[b, k + 3] = q1[k]


def rigid_segment(K: int, dt: float, body0, geo, point_body, pairs, planes, params, n_points: int, n_pairs: int,
                  n_planes: int, mass, inertia, env, wrench=None, recompute: bool = False, return_all: bool = False):
    """K fused rigid-body steps (contact forces, then integration) as one differentiable torch op
    (:func:`~diffvc._kernels.bridge.segment_op`): two recorded launches replayed per step.

    body0: (B, 13) packed state; wrench: optional (1, B, 6) external force and torque held over
    the segment (it initialises each step's force accumulator). Returns the packed state after K
    steps (B, 13) and, with ``return_all``, those of steps 1..K ``(K, B, 13)``.
    """
    nb = body0.shape[0]
    contact = Step(rigid_contact_forces, n_points + n_pairs,
                   (Row("body"), Const(0), Const(1), Const(2), Const(3), Const(4), int(n_points), int(n_pairs),
                    int(n_planes), Row("ft")))
    integ = Step(integrate_bodies_packed, nb, (Row("body"), Const(5), Const(6), Row("ft"), Const(7), float(dt),
                                               Row("body", 1)))
    return segment_op([contact, integ], K, [("body", body0, None)],
                      consts=[geo, point_body, pairs, vec(planes), params, mass, mat(inertia), env],
                      work=[("ft", (nb, 6), None, wrench)], recompute=recompute, return_all=return_all)
