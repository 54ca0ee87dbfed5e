"""Warp kernel for 2-D semi-Lagrangian advection on a MAC grid (:mod:`diffvc.physics.smoke`).

One thread per sample of the advected field (cell centres, or the faces of one velocity
component): the velocity at the sample point is the average of 2 or 4 staggered neighbours, the
point is traced back one Euler step and the field is interpolated bilinearly there (clamped at
walls, wrapped when periodic). The adjoint (Warp's, one unsplit launch) scatters into the field's
and the velocity's gradients with atomics. The plain-torch twin is
:meth:`diffvc.physics.SmokeModel.step_torch` (``grid_sample``).
"""

from __future__ import annotations

from typing import Any

from .bridge import wp


@wp.func
def _sample2(f: wp.array2d(dtype=Any), x: Any, y: Any, periodic: int):
    """Bilinear sample of ``f`` at index coordinates (x, y): clamped to the array (walls) or
    wrapped (periodic)."""
    nx = f.shape[0]
    ny = f.shape[1]
    zero = x - x
    fnx = type(x)(float(nx))
    fny = type(y)(float(ny))
    if periodic == 0:
        x = wp.min(wp.max(x, zero), fnx - type(x)(1.0))
        y = wp.min(wp.max(y, zero), fny - type(y)(1.0))
    else:
        x = x - wp.floor(x / fnx) * fnx          # into [0, n): no integer modulo
        y = y - wp.floor(y / fny) * fny
    fx = wp.floor(x)
    fy = wp.floor(y)
    wx = x - fx
    wy = y - fy
    i0 = int(fx)
    j0 = int(fy)
    if periodic == 0:
        i0 = wp.min(i0, nx - 1)
        j0 = wp.min(j0, ny - 1)
    else:  # rounding may put the wrapped coordinate at exactly n, the same point as 0
        i0 = wp.where(i0 >= nx, i0 - nx, i0)
        j0 = wp.where(j0 >= ny, j0 - ny, j0)
    i1 = i0 + 1
    j1 = j0 + 1
    if periodic == 0:
        i1 = wp.min(i1, nx - 1)
        j1 = wp.min(j1, ny - 1)
    else:
        i1 = wp.where(i1 == nx, 0, i1)
        j1 = wp.where(j1 == ny, 0, j1)
    one = wx - wx + type(wx)(1.0)
    a = f[i0, j0] * (one - wy) + f[i0, j1] * wy
    b = f[i1, j0] * (one - wy) + f[i1, j1] * wy
    return a * (one - wx) + b * wx


@wp.func
def _centre_u(u: wp.array2d(dtype=Any), i: int, j: int, axis: int, periodic: int):
    """Velocity component (faces normal to ``axis``) averaged to cell centre (i, j)."""
    half = u[0, 0] - u[0, 0] + type(u[0, 0])(0.5)
    if axis == 0:
        i1 = i + 1
        if periodic == 1:
            i1 = wp.where(i1 == u.shape[0], 0, i1)
        return (u[i, j] + u[i1, j]) * half
    j1 = j + 1
    if periodic == 1:
        j1 = wp.where(j1 == u.shape[1], 0, j1)
    return (u[i, j] + u[i, j1]) * half


@wp.kernel
def advect2d(
    f: wp.array2d(dtype=Any),
    u0: wp.array2d(dtype=Any),
    u1: wp.array2d(dtype=Any),
    kind: int,
    periodic: int,
    nx: int,
    ny: int,
    s: Any,
    out: wp.array2d(dtype=Any),
):
    """out[i, j] = f(point - s * u(point)): ``kind`` -1 for cell-centred ``f``, 0/1 for the
    faces of velocity component 0/1; ``s = dt / dx`` (cells per unit velocity)."""
    i, j = wp.tid()
    half = s - s + type(s)(0.5)
    vx = s - s
    vy = s - s
    if kind == -1:
        vx = _centre_u(u0, i, j, 0, periodic)
        vy = _centre_u(u1, i, j, 1, periodic)
    elif kind == 0:
        vx = u0[i, j]
        ia = i - 1
        ib = i
        if periodic == 1:
            ia = wp.where(ia < 0, nx - 1, ia)
        else:
            ia = wp.max(ia, 0)
            ib = wp.min(ib, nx - 1)
        vy = (_centre_u(u1, ia, j, 1, periodic) + _centre_u(u1, ib, j, 1, periodic)) * half
    else:
        vy = u1[i, j]
        ja = j - 1
        jb = j
        if periodic == 1:
            ja = wp.where(ja < 0, ny - 1, ja)
        else:
            ja = wp.max(ja, 0)
            jb = wp.min(jb, ny - 1)
        vx = (_centre_u(u0, i, ja, 0, periodic) + _centre_u(u0, i, jb, 0, periodic)) * half
    # sample point in field-index units: (i, j) - s v  (the offsets cancel between point and field)
    x = type(s)(float(i)) - s * vx
    y = type(s)(float(j)) - s * vy
    out[i, j] = _sample2(f, x, y, periodic)
