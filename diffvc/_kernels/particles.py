"""Warp kernels for particles: semi-implicit Euler with gravity and penalty plane contact, and a
fused multi-step segment of it (:func:`particle_segment`)."""

from __future__ import annotations

from typing import Any

from .bridge import Const, Row, Step, segment_op, vec, wp


MAX_PLANES = 8  # contact planes per model (unrolled in the step kernel)


@wp.func
def plane_contact_force(n: Any, c: Any, v: Any, ke: Any, kd: Any, mu: Any, vs: Any):
    """Penalty contact force on a point at signed distance ``c`` (< 0: penetrating) from a plane
    with unit normal ``n``, moving with velocity ``v``.

    normal:   f_n = -(ke * c + kd * min(v.n, 0))  (only when c < 0; pushes out, damps approach)
    friction: regularised Coulomb, f_t = -mu * |f_n| * v_t / sqrt(|v_t|^2 + vs^2)
    ``vs`` (m/s) is the friction smoothing velocity: below it friction is viscous, above Coulomb.
    """
    zero = c - c
    f = n * zero
    if c < zero:
        vn = wp.dot(n, v)
        fn = -(ke * c + kd * wp.min(vn, zero))
        fn = wp.max(fn, zero)
        vt = v - n * vn
        denom = wp.sqrt(wp.dot(vt, vt) + vs * vs)
        f = n * fn - vt * (mu * fn / denom)
    return f


@wp.kernel
def integrate_particles(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    radius: wp.array(dtype=Any),
    planes: wp.array(dtype=Any),
    contact: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    external: wp.array(dtype=Any),
    dt: Any,
    x_out: wp.array(dtype=Any),
    v_out: wp.array(dtype=Any),
):
    """One semi-implicit Euler step. planes[k] = (nx, ny, nz, d): plane n.x = d, free side n.x > d.
    contact = (ke, kd, mu, friction_smoothing). external[i]: extra force on particle i (N)."""
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    w = inv_mass[i]
    f = external[i]
    ke = contact[0]
    kd = contact[1]
    mu = contact[2]
    vs = contact[3]
    n_planes = planes.shape[0]
    # constant trip count: Warp unrolls the loop, which keeps the adjoint of the accumulated
    # force exact (reassigning a variable inside a dynamic loop is not differentiable in Warp)
    for k in range(MAX_PLANES):
        if k < n_planes:
            p = planes[k]
            n = type(xi)(p[0], p[1], p[2])
            c = wp.dot(n, xi) - p[3] - radius[i]
            f = f + plane_contact_force(n, c, vi, ke, kd, mu, vs)
    # kinematic particles (inverse mass 0) feel no gravity
    g = gravity[0] * wp.where(w > w - w, type(w)(1.0), type(w)(0.0))
    v1 = vi + (f * w + g) * dt
    x_out[i] = xi + v1 * dt
    v_out[i] = v1


def particle_segment(K: int, dt: float, x0, v0, inv_mass, radius, planes, contact, gravity, external,
                     recompute: bool = False, return_all: bool = False):
    """K fused :func:`integrate_particles` steps as one differentiable torch op
    (:func:`~diffvc._kernels.bridge.segment_op`): one recorded launch replayed per step.

    x0, v0, external: (N, 3); planes: (P, 4); gravity: (1, 3); external is held over the segment.
    Returns (x_K, v_K) and, with ``return_all``, the states of steps 1..K ``(K, N, 3)`` twice.
    """
    n = x0.shape[0]
    step = Step(integrate_particles, n, (Row("x"), Row("v"), Const(0), Const(1), Const(2), Const(3), Const(4),
                                         Const(5), float(dt), Row("x", 1), Row("v", 1)))
    return segment_op([step], K, [("x", x0, "vec"), ("v", v0, "vec")],
                      consts=[inv_mass, radius, vec(planes), contact, vec(gravity), vec(external)],
                      recompute=recompute, return_all=return_all)
