"""Warp kernels for particles: semi-implicit Euler with gravity and penalty plane contact."""

from __future__ import annotations

from typing import Any

from .bridge import wp


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
