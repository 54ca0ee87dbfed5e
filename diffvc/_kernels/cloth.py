"""Warp kernels for cloth (:mod:`diffvc.physics.cloth`): StVK membrane forces per triangle,
dihedral bending forces per hinge, and per-vertex contact + semi-implicit velocity update.

The force kernels accumulate into the vertex force array with atomics; they are launched as
one thread range each (never split, see :mod:`diffvc._kernels.bridge`), and so are their
adjoints. Contact uses the rigid solver's smoothed penalty law (:func:`smooth_contact_force`).
The plain-torch twin is :meth:`diffvc.physics.ClothModel.step_torch`.
"""

from __future__ import annotations

from typing import Any

from .bridge import wp
from .rigid import smooth_contact_force

MAX_OBSTACLES = 8  # planes, spheres and boxes each (loops unrolled: exact adjoints)
EPS2 = 1e-12       # m^2 floor under squared lengths (finite at degenerate triangles)


@wp.kernel
def cloth_triangle_forces(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    faces: wp.array2d(dtype=wp.int32),
    Dm_inv: wp.array(dtype=Any),
    area: wp.array(dtype=Any),
    mu: wp.array(dtype=Any),
    lam: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
):
    """StVK membrane + strain-rate damping of one triangle: S = 2 mu E + lam tr(E) I +
    2 kd sym(F^T dF/dt), H = -A F S Dm^-T; vertices 1, 2 get H's columns, vertex 0 minus their sum."""
    t = wp.tid()
    i0 = faces[t, 0]
    i1 = faces[t, 1]
    i2 = faces[t, 2]
    x0 = x[i0]
    v0 = v[i0]
    e1 = x[i1] - x0
    e2 = x[i2] - x0
    d1 = v[i1] - v0
    d2 = v[i2] - v0
    D = Dm_inv[t]
    fa = e1 * D[0, 0] + e2 * D[1, 0]       # columns of F = Ds Dm^-1
    fb = e1 * D[0, 1] + e2 * D[1, 1]
    ga = d1 * D[0, 0] + d2 * D[1, 0]       # columns of dF/dt
    gb = d1 * D[0, 1] + d2 * D[1, 1]
    half = area[t] - area[t] + type(area[t])(0.5)
    one = half + half
    two = one + one
    Eaa = (wp.dot(fa, fa) - one) * half
    Ebb = (wp.dot(fb, fb) - one) * half
    Eab = wp.dot(fa, fb) * half
    tr = Eaa + Ebb
    kd = damping[0]
    Saa = two * mu[t] * Eaa + lam[t] * tr + kd * two * wp.dot(fa, ga)
    Sbb = two * mu[t] * Ebb + lam[t] * tr + kd * two * wp.dot(fb, gb)
    Sab = two * mu[t] * Eab + kd * (wp.dot(fa, gb) + wp.dot(fb, ga))
    Pa = fa * Saa + fb * Sab               # columns of P = F S
    Pb = fa * Sab + fb * Sbb
    A = area[t]
    h1 = (Pa * D[0, 0] + Pb * D[0, 1]) * (-A)   # columns of H = -A P Dm^-T
    h2 = (Pa * D[1, 0] + Pb * D[1, 1]) * (-A)
    wp.atomic_add(f, i1, h1)
    wp.atomic_add(f, i2, h2)
    wp.atomic_sub(f, i0, h1 + h2)


@wp.kernel
def cloth_hinge_forces(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    hinges: wp.array2d(dtype=wp.int32),
    rest: wp.array(dtype=Any),
    weight: wp.array(dtype=Any),
    kb: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
):
    """Dihedral bending of one hinge (a, b, c, d): energy kb/2 w (theta - rest)^2 and damping
    kd_bend w dtheta/dt; forces -w (kb (theta - rest) + kd_bend dtheta/dt) grad(theta)."""
    h = wp.tid()
    ia = hinges[h, 0]
    ib = hinges[h, 1]
    ic = hinges[h, 2]
    i3 = hinges[h, 3]
    x0 = x[ia]
    x1 = x[ib]
    x2 = x[ic]
    x3 = x[i3]
    eps = rest[h] - rest[h] + type(rest[h])(EPS2)
    one = eps - eps + type(eps)(1.0)
    e = x1 - x0
    L2 = wp.dot(e, e) + eps
    L = wp.sqrt(L2)
    n1 = wp.cross(e, x2 - x0)
    n2 = wp.cross(x3 - x0, e)
    n1sq = wp.dot(n1, n1) + eps
    n2sq = wp.dot(n2, n2) + eps
    cosv = wp.dot(n1, n2)
    sinv = wp.dot(wp.cross(n1, n2), e) / L
    theta = wp.atan2(sinv, cosv)
    g2 = n1 * (-L / n1sq)
    g3 = n2 * (-L / n2sq)
    a1 = wp.dot(x2 - x0, e) / L2
    a2 = wp.dot(x3 - x0, e) / L2
    g0 = g2 * (a1 - one) + g3 * (a2 - one)
    g1 = g2 * (-a1) + g3 * (-a2)
    theta_dot = wp.dot(g0, v[ia]) + wp.dot(g1, v[ib]) + wp.dot(g2, v[ic]) + wp.dot(g3, v[i3])
    s = weight[h] * (kb[h] * (theta - rest[h]) + damping[1] * theta_dot)
    wp.atomic_sub(f, ia, g0 * s)
    wp.atomic_sub(f, ib, g1 * s)
    wp.atomic_sub(f, ic, g2 * s)
    wp.atomic_sub(f, i3, g3 * s)


@wp.func
def box_distance(p: Any, b: wp.array2d(dtype=Any), k: int):
    """Signed distance to box k (rows: centre, half size) and its outward normal (nearest face
    inside) packed as a 4-vector (nx, ny, nz, distance)."""
    zero = p[0] - p[0]
    one = zero + type(zero)(1.0)
    q = type(p)(p[0] - b[k, 0], p[1] - b[k, 1], p[2] - b[k, 2])
    s = type(p)(wp.where(q[0] >= zero, one, -one), wp.where(q[1] >= zero, one, -one),
                wp.where(q[2] >= zero, one, -one))
    d = type(p)(wp.abs(q[0]) - b[k, 3], wp.abs(q[1]) - b[k, 4], wp.abs(q[2]) - b[k, 5])
    o = type(p)(wp.max(d[0], zero), wp.max(d[1], zero), wp.max(d[2], zero))
    on = wp.sqrt(wp.dot(o, o) + type(zero)(1e-18))
    m = wp.max(d[0], wp.max(d[1], d[2]))
    n = type(p)(zero, zero, zero)
    if m > zero:
        n = type(p)(s[0] * o[0], s[1] * o[1], s[2] * o[2]) / on
    else:
        if d[0] >= d[1] and d[0] >= d[2]:
            n = type(p)(s[0], zero, zero)
        elif d[1] >= d[2]:
            n = type(p)(zero, s[1], zero)
        else:
            n = type(p)(zero, zero, s[2])
    return wp.vector(n[0], n[1], n[2], on + wp.min(m, zero))


@wp.kernel
def cloth_integrate(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
    inv_mass: wp.array(dtype=Any),
    planes: wp.array2d(dtype=Any),
    spheres: wp.array2d(dtype=Any),
    boxes: wp.array2d(dtype=Any),
    counts: wp.array(dtype=wp.int32),
    contact: wp.array(dtype=Any),
    thickness: wp.array(dtype=Any),
    gravity: wp.array(dtype=Any),
    damping: wp.array(dtype=Any),
    dt: Any,
    v_out: wp.array(dtype=Any),
):
    """New velocity of one vertex: contact with ``counts = (planes, spheres, boxes)`` obstacles,
    gravity, drag ``v /= 1 + drag dt`` (semi-implicit Euler; positions are updated in torch)."""
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    fi = f[i]
    r = thickness[0]
    ke = contact[0]
    kd = contact[1]
    mu = contact[2]
    vs = contact[3]
    delta = contact[4]
    for k in range(MAX_OBSTACLES):
        if k < counts[0]:
            n = type(xi)(planes[k, 0], planes[k, 1], planes[k, 2])
            c = wp.dot(n, xi) - planes[k, 3] - r
            fi = fi + smooth_contact_force(n, c, vi, ke, kd, mu, vs, delta)
    for k in range(MAX_OBSTACLES):
        if k < counts[1]:
            d = xi - type(xi)(spheres[k, 0], spheres[k, 1], spheres[k, 2])
            dist = wp.sqrt(wp.dot(d, d) + type(r)(1e-18))
            fi = fi + smooth_contact_force(d / dist, dist - spheres[k, 3] - r, vi, ke, kd, mu, vs, delta)
    for k in range(MAX_OBSTACLES):
        if k < counts[2]:
            nd = box_distance(xi, boxes, k)
            n = type(xi)(nd[0], nd[1], nd[2])
            fi = fi + smooth_contact_force(n, nd[3] - r, vi, ke, kd, mu, vs, delta)
    one = dt - dt + type(dt)(1.0)
    v_out[i] = (vi + (fi * inv_mass[i] + gravity[0]) * dt) / (one + damping[2] * dt)


@wp.func
def _quat_apply(q: wp.array2d(dtype=Any), b: int, p: Any, sign: Any):
    """Rotate ``p`` by quaternion row ``b`` of ``q`` (w, x, y, z) -- by its conjugate when
    ``sign = -1``: ``p + w t + u x t`` with ``t = 2 u x p`` (as
    :func:`diffvc.geometry.transforms.quaternion_apply`; q used as given)."""
    u = type(p)(q[b, 1], q[b, 2], q[b, 3]) * sign
    t = wp.cross(u, p) * (sign - sign + type(sign)(2.0))
    return p + t * q[b, 0] + wp.cross(u, t)


@wp.kernel
def cloth_body_contact(
    x: wp.array(dtype=Any),
    v: wp.array(dtype=Any),
    bx: wp.array(dtype=Any),
    bq: wp.array2d(dtype=Any),
    bv: wp.array(dtype=Any),
    bw: wp.array(dtype=Any),
    spheres: wp.array2d(dtype=Any),
    sphere_body: wp.array(dtype=wp.int32),
    boxes: wp.array2d(dtype=Any),
    box_body: wp.array(dtype=wp.int32),
    counts: wp.array(dtype=wp.int32),
    contact: wp.array(dtype=Any),
    thickness: wp.array(dtype=Any),
    f: wp.array(dtype=Any),
):
    """Contact force on one vertex from obstacles attached to rigid bodies: spheres (rows: centre
    in the body frame, radius) and boxes (rows: centre in the body frame, half size) of bodies
    ``sphere_body`` / ``box_body`` at the poses (bx, bq) moving with (bv, bw). The law is
    :func:`smooth_contact_force` with the vertex velocity relative to the body's velocity at the
    vertex, ``v - (bv + bw x (x - bx))``."""
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    zero = thickness[0] - thickness[0]
    one = zero + type(zero)(1.0)
    r = thickness[0]
    ke = contact[0]
    kd = contact[1]
    mu = contact[2]
    vs = contact[3]
    delta = contact[4]
    fi = xi * zero
    for k in range(MAX_OBSTACLES):
        if k < counts[0]:
            b = sphere_body[k]
            c = bx[b] + _quat_apply(bq, b, type(xi)(spheres[k, 0], spheres[k, 1], spheres[k, 2]), one)
            d = xi - c
            dist = wp.sqrt(wp.dot(d, d) + type(r)(1e-18))
            ub = bv[b] + wp.cross(bw[b], xi - bx[b])
            fi = fi + smooth_contact_force(d / dist, dist - spheres[k, 3] - r, vi - ub, ke, kd, mu, vs, delta)
    for k in range(MAX_OBSTACLES):
        if k < counts[1]:
            b = box_body[k]
            pb = _quat_apply(bq, b, xi - bx[b], -one)
            nd = box_distance(pb, boxes, k)
            n = _quat_apply(bq, b, type(xi)(nd[0], nd[1], nd[2]), one)
            ub = bv[b] + wp.cross(bw[b], xi - bx[b])
            fi = fi + smooth_contact_force(n, nd[3] - r, vi - ub, ke, kd, mu, vs, delta)
    f[i] = fi
