"""Warp kernels for smoke on a MAC grid (:mod:`diffvc.physics.smoke`).

* :func:`advect2d` / :func:`advect3d`: semi-Lagrangian advection, one thread per sample of the
  advected field (cell centres, or the faces of one velocity component): the velocity at the
  sample point is the average of 2 or 4 staggered neighbours, the point is traced back one Euler
  step and the field is interpolated (bi-/trilinearly) there (clamped at walls, wrapped when
  periodic). Differentiated by Warp's adjoint (one unsplit launch scattering with atomics)
  through :func:`~diffvc._kernels.bridge.kernel_op`.
* :func:`smoke_segment2d`: K whole 2-D steps (advection, forces, divergence, pressure solve,
  gradient subtraction) as one autograd node of recorded launches, with row kernels and a
  hand-written advection adjoint; :class:`Jacobi2D`, the fixed-sweep pressure solve.

The plain-torch twin is :meth:`diffvc.physics.SmokeModel.step_torch` (``grid_sample``).
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import _SCALAR, _stream, to_warp, wp
from .springs import _record, _rows


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


# --------------------------------------------------------------------------------------------
# 3-D semi-Lagrangian advection (Euler back-trace), differentiated by Warp's adjoint
# --------------------------------------------------------------------------------------------

@wp.func
def _coord3(x: Any, n: int, periodic: int):
    """Index coordinate clamped to [0, n - 1] (walls) or wrapped into [0, n) (periodic)."""
    zero = x - x
    fn = type(x)(float(n))
    if periodic == 0:
        return wp.min(wp.max(x, zero), fn - type(x)(1.0))
    return x - wp.floor(x / fn) * fn


@wp.func
def _lo3(x: Any, n: int, periodic: int):
    """Lower stencil index of the (clamped or wrapped) coordinate x."""
    i0 = int(wp.floor(x))
    if periodic == 0:
        return wp.min(i0, n - 1)
    return wp.where(i0 >= n, i0 - n, i0)


@wp.func
def _hi3(i0: int, n: int, periodic: int):
    if periodic == 0:
        return wp.min(i0 + 1, n - 1)
    return wp.where(i0 + 1 == n, 0, i0 + 1)


@wp.func
def _sample3(f: wp.array3d(dtype=Any), x: Any, y: Any, z: Any, periodic: int):
    """Trilinear sample of ``f`` at index coordinates (x, y, z), clamped or wrapped. (No tuple
    returns on the differentiated path: Warp's adjoint of them measured wrong.)"""
    cx = _coord3(x, f.shape[0], periodic)
    cy = _coord3(y, f.shape[1], periodic)
    cz = _coord3(z, f.shape[2], periodic)
    i0 = _lo3(cx, f.shape[0], periodic)
    j0 = _lo3(cy, f.shape[1], periodic)
    k0 = _lo3(cz, f.shape[2], periodic)
    i1 = _hi3(i0, f.shape[0], periodic)
    j1 = _hi3(j0, f.shape[1], periodic)
    k1 = _hi3(k0, f.shape[2], periodic)
    wx = cx - wp.floor(cx)
    wy = cy - wp.floor(cy)
    wz = cz - wp.floor(cz)
    one = wx - wx + type(wx)(1.0)
    c00 = f[i0, j0, k0] * (one - wz) + f[i0, j0, k1] * wz
    c01 = f[i0, j1, k0] * (one - wz) + f[i0, j1, k1] * wz
    c10 = f[i1, j0, k0] * (one - wz) + f[i1, j0, k1] * wz
    c11 = f[i1, j1, k0] * (one - wz) + f[i1, j1, k1] * wz
    return (c00 * (one - wy) + c01 * wy) * (one - wx) + (c10 * (one - wy) + c11 * wy) * wx


@wp.func
def _centre3(u: wp.array3d(dtype=Any), i: int, j: int, k: int, axis: int, periodic: int):
    """Component ``axis`` (its faces normal to ``axis``) averaged to cell centre (i, j, k)."""
    half = u[0, 0, 0] - u[0, 0, 0] + type(u[0, 0, 0])(0.5)
    i1 = i
    j1 = j
    k1 = k
    if axis == 0:
        i1 = i + 1
        if periodic == 1:
            i1 = wp.where(i1 == u.shape[0], 0, i1)
    elif axis == 1:
        j1 = j + 1
        if periodic == 1:
            j1 = wp.where(j1 == u.shape[1], 0, j1)
    else:
        k1 = k + 1
        if periodic == 1:
            k1 = wp.where(k1 == u.shape[2], 0, k1)
    return (u[i, j, k] + u[i1, j1, k1]) * half


@wp.func
def _face_lo(idx: int, n: int, periodic: int):
    """Cell idx - 1 beside face idx along an axis of n cells (clamped or wrapped)."""
    if periodic == 1:
        return wp.where(idx - 1 < 0, n - 1, idx - 1)
    return wp.max(idx - 1, 0)


@wp.func
def _face_hi(idx: int, n: int, periodic: int):
    """Cell idx beside face idx (clamped at walls)."""
    if periodic == 1:
        return idx
    return wp.min(idx, n - 1)


@wp.func
def _vel3(u: wp.array3d(dtype=Any), b: int, i: int, j: int, k: int, kind: int, periodic: int,
          nx: int, ny: int, nz: int):
    """Velocity component ``b`` (array ``u``) at sample (i, j, k) of field ``kind`` (-1 cells, 0..2
    faces): the face value itself, the average of 2 neighbours (cells), or of two cell-centre
    averages beside the face (as ``SmokeModel._velocity_on``)."""
    half = u[0, 0, 0] - u[0, 0, 0] + type(u[0, 0, 0])(0.5)
    r = half - half
    if kind == -1:
        r = _centre3(u, i, j, k, b, periodic)
    elif kind == b:
        r = u[i, j, k]
    elif kind == 0:
        r = (_centre3(u, _face_lo(i, nx, periodic), j, k, b, periodic)
             + _centre3(u, _face_hi(i, nx, periodic), j, k, b, periodic)) * half
    elif kind == 1:
        r = (_centre3(u, i, _face_lo(j, ny, periodic), k, b, periodic)
             + _centre3(u, i, _face_hi(j, ny, periodic), k, b, periodic)) * half
    else:
        r = (_centre3(u, i, j, _face_lo(k, nz, periodic), b, periodic)
             + _centre3(u, i, j, _face_hi(k, nz, periodic), b, periodic)) * half
    return r


@wp.kernel
def advect3d(
    f: wp.array3d(dtype=Any),
    u0: wp.array3d(dtype=Any),
    u1: wp.array3d(dtype=Any),
    u2: wp.array3d(dtype=Any),
    kind: int,
    periodic: int,
    nx: int,
    ny: int,
    nz: int,
    s: Any,
    out: wp.array3d(dtype=Any),
):
    """out[i, j, k] = f(point - s * u(point)) on a 3-D MAC grid: ``kind`` -1 for cell-centred
    ``f``, 0/1/2 for the faces of velocity component 0/1/2; ``s = dt / dx``."""
    i, j, k = wp.tid()
    vx = _vel3(u0, 0, i, j, k, kind, periodic, nx, ny, nz)
    vy = _vel3(u1, 1, i, j, k, kind, periodic, nx, ny, nz)
    vz = _vel3(u2, 2, i, j, k, kind, periodic, nx, ny, nz)
    out[i, j, k] = _sample3(f, type(s)(float(i)) - s * vx, type(s)(float(j)) - s * vy,
                            type(s)(float(k)) - s * vz, periodic)


# --------------------------------------------------------------------------------------------
# the passes of the fused 2-D step: one thread per row (first index), a loop along the second
# index (on CPU this measured 1.7x (advection) to 2.4x (divergence) less time than one thread per
# sample: no per-thread index division), and a hand-written scatter adjoint for the advection
# --------------------------------------------------------------------------------------------

@wp.func
def _trace_velocity(u0: wp.array2d(dtype=Any), u1: wp.array2d(dtype=Any), i: int, j: int, kind: int,
                    periodic: int, nx: int, ny: int):
    """The velocity at sample (i, j) of field ``kind`` (-1 cells, 0/1 faces), as in :func:`advect2d`."""
    half = u0[0, 0] - u0[0, 0] + type(u0[0, 0])(0.5)
    vx = half - half
    vy = half - half
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
    return vx, vy


@wp.func
def _centre_u_adj(adj: wp.array2d(dtype=Any), i: int, j: int, axis: int, periodic: int, g: Any):
    """Scatter the adjoint ``g`` of :func:`_centre_u` (i, j) into ``adj``."""
    h = g * type(g)(0.5)
    if axis == 0:
        i1 = i + 1
        if periodic == 1:
            i1 = wp.where(i1 == adj.shape[0], 0, i1)
        adj[i, j] += h
        adj[i1, j] += h
    else:
        j1 = j + 1
        if periodic == 1:
            j1 = wp.where(j1 == adj.shape[1], 0, j1)
        adj[i, j] += h
        adj[i, j1] += h


@wp.func
def _trace_velocity_adj(adj0: wp.array2d(dtype=Any), adj1: wp.array2d(dtype=Any), i: int, j: int, kind: int,
                        periodic: int, nx: int, ny: int, gvx: Any, gvy: Any):
    """Scatter the adjoints (gvx, gvy) of :func:`_trace_velocity` into adj0, adj1."""
    half = gvx - gvx + type(gvx)(0.5)
    if kind == -1:
        _centre_u_adj(adj0, i, j, 0, periodic, gvx)
        _centre_u_adj(adj1, i, j, 1, periodic, gvy)
    elif kind == 0:
        adj0[i, j] += gvx
        ia = i - 1
        ib = i
        if periodic == 1:
            ia = wp.where(ia < 0, nx - 1, ia)
        else:
            ia = wp.max(ia, 0)
            ib = wp.min(ib, nx - 1)
        _centre_u_adj(adj1, ia, j, 1, periodic, gvy * half)
        _centre_u_adj(adj1, ib, j, 1, periodic, gvy * half)
    else:
        adj1[i, j] += gvy
        ja = j - 1
        jb = j
        if periodic == 1:
            ja = wp.where(ja < 0, ny - 1, ja)
        else:
            ja = wp.max(ja, 0)
            jb = wp.min(jb, ny - 1)
        _centre_u_adj(adj0, i, ja, 0, periodic, gvx * half)
        _centre_u_adj(adj0, i, jb, 0, periodic, gvx * half)


@wp.kernel
def advect2d_rows(
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
    """:func:`advect2d`, one thread per row ``i`` of ``out``."""
    i = wp.tid()
    for j in range(out.shape[1]):
        v = _trace_velocity(u0, u1, i, j, kind, periodic, nx, ny)
        out[i, j] = _sample2(f, type(s)(float(i)) - s * v[0], type(s)(float(j)) - s * v[1], periodic)


@wp.kernel
def advect2d_rows_adj(
    f: wp.array2d(dtype=Any),
    u0: wp.array2d(dtype=Any),
    u1: wp.array2d(dtype=Any),
    kind: int,
    periodic: int,
    nx: int,
    ny: int,
    s: Any,
    g: wp.array2d(dtype=Any),
    adj_f: wp.array2d(dtype=Any),
    adj_u0: wp.array2d(dtype=Any),
    adj_u1: wp.array2d(dtype=Any),
):
    """The adjoint of :func:`advect2d_rows` written out: given ``g = dL/d out``, accumulate
    dL/df into ``adj_f`` and dL/du into ``adj_u0``, ``adj_u1`` (scatter with ``+=``: atomics on
    CUDA; on CPU the launch is one thread, so plain adds). Clamping at walls passes the gradient
    only strictly inside ``(0, n - 1)`` (as Warp's generated adjoint of min/max does)."""
    i = wp.tid()
    nfx = f.shape[0]
    nfy = f.shape[1]
    one = s - s + type(s)(1.0)
    zero = s - s
    for j in range(g.shape[1]):
        gij = g[i, j]
        v = _trace_velocity(u0, u1, i, j, kind, periodic, nx, ny)
        x = type(s)(float(i)) - s * v[0]
        y = type(s)(float(j)) - s * v[1]
        px = one
        py = one
        fnx = type(s)(float(nfx))
        fny = type(s)(float(nfy))
        if periodic == 0:
            if not (x > zero and x < fnx - one):
                px = zero
            if not (y > zero and y < fny - one):
                py = zero
            x = wp.min(wp.max(x, zero), fnx - one)
            y = wp.min(wp.max(y, zero), fny - one)
        else:
            x = x - wp.floor(x / fnx) * fnx
            y = y - wp.floor(y / fny) * fny
        fx = wp.floor(x)
        fy = wp.floor(y)
        wx = x - fx
        wy = y - fy
        i0 = int(fx)
        j0 = int(fy)
        if periodic == 0:
            i0 = wp.min(i0, nfx - 1)
            j0 = wp.min(j0, nfy - 1)
        else:
            i0 = wp.where(i0 >= nfx, i0 - nfx, i0)
            j0 = wp.where(j0 >= nfy, j0 - nfy, j0)
        i1 = i0 + 1
        j1 = j0 + 1
        if periodic == 0:
            i1 = wp.min(i1, nfx - 1)
            j1 = wp.min(j1, nfy - 1)
        else:
            i1 = wp.where(i1 == nfx, 0, i1)
            j1 = wp.where(j1 == nfy, 0, j1)
        adj_f[i0, j0] += gij * (one - wx) * (one - wy)
        adj_f[i0, j1] += gij * (one - wx) * wy
        adj_f[i1, j0] += gij * wx * (one - wy)
        adj_f[i1, j1] += gij * wx * wy
        f00 = f[i0, j0]
        f01 = f[i0, j1]
        f10 = f[i1, j0]
        f11 = f[i1, j1]
        dwx = ((one - wy) * f10 + wy * f11) - ((one - wy) * f00 + wy * f01)
        dwy = (one - wx) * (f01 - f00) + wx * (f11 - f10)
        _trace_velocity_adj(adj_u0, adj_u1, i, j, kind, periodic, nx, ny, -s * gij * dwx * px,
                            -s * gij * dwy * py)


@wp.kernel
def forces2d(
    ua: wp.array2d(dtype=Any),
    d: wp.array2d(dtype=Any),
    buoy: wp.array(dtype=Any),
    c: wp.array2d(dtype=Any),
    comp: int,
    periodic: int,
    nx: int,
    ny: int,
    dt: Any,
    out: wp.array2d(dtype=Any),
):
    """out = ua + dt * (c + [comp == 1] buoy * face-averaged density), zero on wall faces.
    One thread per row of the faces of velocity component ``comp``."""
    i = wp.tid()
    for j in range(out.shape[1]):
        half = dt - dt + type(dt)(0.5)
        v = ua[i, j] + dt * c[i, j]
        if comp == 1:
            if periodic == 1:
                jm = wp.where(j == 0, ny - 1, j - 1)
                v = v + dt * buoy[0] * (d[i, jm] + d[i, j]) * half
            elif j > 0 and j < ny:
                v = v + dt * buoy[0] * (d[i, j - 1] + d[i, j]) * half
        if periodic == 0:
            if comp == 0 and (i == 0 or i == nx):
                v = dt - dt
            if comp == 1 and (j == 0 or j == ny):
                v = dt - dt
        out[i, j] = v


@wp.kernel
def neg_div2d(
    v0: wp.array2d(dtype=Any),
    v1: wp.array2d(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    inv_dx: Any,
    out: wp.array2d(dtype=Any),
):
    """out = -div(v) at cell centres (1/s); face i of an axis sits between cells i - 1 and i.
    One thread per row."""
    i = wp.tid()
    i1 = i + 1
    if periodic == 1:
        i1 = wp.where(i1 == nx, 0, i1)
    for j in range(ny):
        j1 = j + 1
        if periodic == 1:
            j1 = wp.where(j1 == ny, 0, j1)
        out[i, j] = -((v0[i1, j] - v0[i, j]) + (v1[i, j1] - v1[i, j])) * inv_dx


@wp.kernel
def sub_grad2d(
    v: wp.array2d(dtype=Any),
    phi: wp.array2d(dtype=Any),
    comp: int,
    periodic: int,
    nx: int,
    ny: int,
    inv_dx: Any,
    out: wp.array2d(dtype=Any),
):
    """out = v - grad(phi) on the faces of component ``comp`` (the gradient is zero on wall
    faces). One thread per row."""
    i = wp.tid()
    for j in range(out.shape[1]):
        g = inv_dx - inv_dx
        if comp == 0:
            if periodic == 1:
                g = (phi[i, j] - phi[wp.where(i == 0, nx - 1, i - 1), j]) * inv_dx
            elif i > 0 and i < nx:
                g = (phi[i, j] - phi[i - 1, j]) * inv_dx
        else:
            if periodic == 1:
                g = (phi[i, j] - phi[i, wp.where(j == 0, ny - 1, j - 1)]) * inv_dx
            elif j > 0 and j < ny:
                g = (phi[i, j] - phi[i, j - 1]) * inv_dx
        out[i, j] = v[i, j] - g


@wp.kernel
def jacobi2d(
    phi: wp.array2d(dtype=Any),
    b: wp.array2d(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    dx2: Any,
    out: wp.array2d(dtype=Any),
):
    """One Jacobi sweep for ``-lap(phi) = b`` (5-point, Neumann at walls, or periodic):
    out = (dx^2 b + sum of the neighbours' phi) / (number of neighbours). One thread per row."""
    i = wp.tid()
    im = wp.where(i == 0, nx - 1, i - 1)
    ip = wp.where(i == nx - 1, 0, i + 1)
    for j in range(ny):
        s = dx2 - dx2
        cnt = 0
        if periodic == 1:
            s = (phi[im, j] + phi[ip, j] + phi[i, wp.where(j == 0, ny - 1, j - 1)]
                 + phi[i, wp.where(j == ny - 1, 0, j + 1)])
            cnt = 4
        else:
            if i > 0:
                s = s + phi[i - 1, j]
                cnt = cnt + 1
            if i < nx - 1:
                s = s + phi[i + 1, j]
                cnt = cnt + 1
            if j > 0:
                s = s + phi[i, j - 1]
                cnt = cnt + 1
            if j < ny - 1:
                s = s + phi[i, j + 1]
                cnt = cnt + 1
        out[i, j] = (dx2 * b[i, j] + s) / type(dx2)(float(cnt))


# --------------------------------------------------------------------------------------------
# recorded launches: the fixed-sweep Jacobi solver and the fused 2-D segment
# --------------------------------------------------------------------------------------------

def _go(launch, stream) -> None:
    launch.launch(stream=stream) if stream is not None else launch.launch()


class Jacobi2D:
    """``x = P J_K P b``: ``K`` Jacobi sweeps (:func:`jacobi2d`) from ``x = 0`` for ``-lap(x) = b``
    on an ``nx x ny`` grid of cell size ``dx``, with ``P`` removing the mean. ``J_K = sum_{k<K}
    (D^-1 N)^k D^-1`` (``A = D - N``, ``D`` the neighbour counts / dx^2) is symmetric, so this
    linear map is its own adjoint: the exact gradient of the K sweeps is the same K sweeps applied
    to the incoming gradient. Buffers and launches are made once (recorded launches); one instance
    must not be called from two threads at once."""

    def __init__(self, nx: int, ny: int, iters: int, dx: float, periodic: bool, dtype, device):
        self.iters = int(iters)
        self.bufs = torch.zeros((3, nx, ny), dtype=dtype, device=device)   # b, x_even, x_odd
        b, xa, xb = (to_warp(self.bufs[k]) for k in range(3))
        dev = torch.device(device)
        dx2 = _SCALAR[dtype](float(dx) ** 2)
        p = 1 if periodic else 0
        self.launches = (_record(jacobi2d, nx, [xa, b, p, nx, ny, dx2], [xb], dev),
                         _record(jacobi2d, nx, [xb, b, p, nx, ny, dx2], [xa], dev))
        self.stream = _stream(dev)

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        b, xa, xb = self.bufs[0], self.bufs[1], self.bufs[2]
        b.copy_(rhs)
        b -= b.mean()
        xa.zero_()
        for k in range(self.iters):
            _go(self.launches[k % 2], self.stream)
        x = xb if self.iters % 2 == 1 else xa
        return x - x.mean()


# argument positions
_AD = {"f": 0, "u0": 1, "u1": 2, "out": 8}
_AA = {"f": 0, "u0": 1, "u1": 2, "g": 8, "adj_f": 9, "adj_u0": 10, "adj_u1": 11}
_FO = {"ua": 0, "d": 1, "buoy": 2, "c": 3, "out": 9}
_DV = {"v0": 0, "v1": 1, "out": 6}
_SG = {"v": 0, "phi": 1, "out": 7}


def _set(launch, params: dict, keys: dict, adjoint: bool = False) -> None:
    for name, c in params.items():
        launch.set_param_at_index_from_ctype(keys[name], c, adjoint=adjoint)


class _Segment2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, solve, recompute, return_all, d0, u0, u1, buoy, c0, c1):
        ctx.cfg, ctx.solve, ctx.recompute, ctx.return_all = cfg, solve, recompute, return_all
        inputs = (d0, u0, u1, buoy, c0, c1)
        bufs = _seg_forward(cfg, solve, inputs)
        ctx.save_for_backward(*inputs)
        ctx.bufs = None if recompute else bufs
        K = cfg[0]
        D, U0, U1 = bufs[0], bufs[1], bufs[2]
        outs = (D[K].clone(), U0[K].clone(), U1[K].clone())
        if return_all:
            return (*outs, D[1:], U0[1:], U1[1:])
        return outs

    @staticmethod
    def backward(ctx, gd, gu0, gu1, gds=None, gu0s=None, gu1s=None):
        inputs = ctx.saved_tensors
        bufs = ctx.bufs if ctx.bufs is not None else _seg_forward(ctx.cfg, ctx.solve, inputs)
        ctx.bufs = None
        grads = _seg_adjoint(ctx.cfg, ctx.solve, inputs, bufs, (gd, gu0, gu1), (gds, gu0s, gu1s))
        return (None, None, None, None, *grads)


def _launches(cfg, inputs, bufs, dev, adj=False):
    """The 8 recorded launches of one step (forward, or adjoint when ``adj``), with row-0
    pointers to be swapped per step. Adjoint: the advections (0, 1, 7) are launches of
    :func:`advect2d_rows_adj`, the linear passes Warp's generated adjoints."""
    K, dt, dx, periodic = cfg
    d0, u0, u1, buoy, c0, c1 = inputs
    nx, ny = d0.shape
    fs0, fs1 = u0.shape[0], u1.shape[0]
    fdt = _SCALAR[d0.dtype]
    s, inv_dx, tdt = fdt(dt / dx), fdt(1.0 / dx), fdt(dt)
    p = 1 if periodic else 0
    D, U0, U1, A0, A1, B0, B1, R, P = bufs[:9]
    w = {k: to_warp(t[0]) for k, t in dict(D=D, U0=U0, U1=U1, A0=A0, A1=A1, B0=B0, B1=B1, R=R, P=P).items()}
    wb, wc0, wc1 = to_warp(buoy), to_warp(c0), to_warp(c1)
    specs = [
        (advect2d_rows, fs0, [w["U0"], w["U0"], w["U1"], 0, p, nx, ny, s], [w["A0"]]),
        (advect2d_rows, fs1, [w["U1"], w["U0"], w["U1"], 1, p, nx, ny, s], [w["A1"]]),
        (forces2d, fs0, [w["A0"], w["D"], wb, wc0, 0, p, nx, ny, tdt], [w["B0"]]),
        (forces2d, fs1, [w["A1"], w["D"], wb, wc1, 1, p, nx, ny, tdt], [w["B1"]]),
        (neg_div2d, nx, [w["B0"], w["B1"], p, nx, ny, inv_dx], [w["R"]]),
        (sub_grad2d, fs0, [w["B0"], w["P"], 0, p, nx, ny, inv_dx], [w["U0"]]),
        (sub_grad2d, fs1, [w["B1"], w["P"], 1, p, nx, ny, inv_dx], [w["U1"]]),
        (advect2d_rows, nx, [w["D"], w["U0"], w["U1"], -1, p, nx, ny, s], [w["D"]]),
    ]
    out = []
    for kernel, dim, ins, outs in specs:
        if not adj:
            out.append(_record(kernel, dim, ins, outs, dev))
        elif kernel is advect2d_rows:
            # (f, u0, u1, ..., s, g, adj_f, adj_u0, adj_u1): placeholders, swapped before each replay
            out.append(_record(advect2d_rows_adj, dim, ins + [outs[0], ins[0], ins[1], ins[2]], [], dev))
        else:
            # adjoint placeholders: every array's adjoint pointer is swapped in before each replay
            a_ins = [x if isinstance(x, wp.array) else None for x in ins]
            out.append(_record(kernel, dim, ins, outs, dev, adj_inputs=a_ins, adj_outputs=list(outs)))
    return out


def _seg_forward(cfg, solve, inputs):
    K = cfg[0]
    d0, u0, u1, buoy, c0, c1 = inputs
    dev = d0.device
    D = torch.empty((K + 1, *d0.shape), dtype=d0.dtype, device=dev)
    U0 = torch.empty((K + 1, *u0.shape), dtype=d0.dtype, device=dev)
    U1 = torch.empty((K + 1, *u1.shape), dtype=d0.dtype, device=dev)
    D[0], U0[0], U1[0] = d0, u0, u1
    A0, A1, B0, B1 = (torch.empty((K, *t.shape), dtype=d0.dtype, device=dev) for t in (u0, u1, u0, u1))
    R, P = (torch.empty((K, *d0.shape), dtype=d0.dtype, device=dev) for _ in range(2))
    bufs = (D, U0, U1, A0, A1, B0, B1, R, P)
    rows = [_rows(t, None) for t in bufs]
    Dc, U0c, U1c, A0c, A1c, B0c, B1c, Rc, Pc = rows
    L = _launches(cfg, inputs, bufs, dev)
    stream = _stream(dev)
    for k in range(K):
        _set(L[0], dict(f=U0c[k], u0=U0c[k], u1=U1c[k], out=A0c[k]), _AD)
        _set(L[1], dict(f=U1c[k], u0=U0c[k], u1=U1c[k], out=A1c[k]), _AD)
        _set(L[2], dict(ua=A0c[k], d=Dc[k], out=B0c[k]), _FO)
        _set(L[3], dict(ua=A1c[k], d=Dc[k], out=B1c[k]), _FO)
        _set(L[4], dict(v0=B0c[k], v1=B1c[k], out=Rc[k]), _DV)
        for j in range(5):
            _go(L[j], stream)
        P[k] = solve(R[k])
        _set(L[5], dict(v=B0c[k], phi=Pc[k], out=U0c[k + 1]), _SG)
        _set(L[6], dict(v=B1c[k], phi=Pc[k], out=U1c[k + 1]), _SG)
        _set(L[7], dict(f=Dc[k], u0=U0c[k + 1], u1=U1c[k + 1], out=Dc[k + 1]), _AD)
        for j in range(5, 8):
            _go(L[j], stream)
    return bufs + (rows,)


def _seg_adjoint(cfg, solve, inputs, bufs, g_final, g_all):
    K = cfg[0]
    d0, u0, u1, buoy, c0, c1 = inputs
    dev = d0.device
    rows = bufs[9]
    Dc, U0c, U1c, A0c, A1c, B0c, B1c, Rc, Pc = rows
    # adjoint buffers: state k+1 ("next") and k ("cur") ping-pong, one step's intermediates
    gS = [[torch.zeros_like(t) for t in (d0, u0, u1)] for _ in range(2)]
    gA0, gA1, gB0, gB1 = (torch.zeros_like(t) for t in (u0, u1, u0, u1))
    gR, gP = torch.zeros_like(d0), torch.zeros_like(d0)
    g_buoy, g_c0, g_c1 = torch.zeros_like(buoy), torch.zeros_like(c0), torch.zeros_like(c1)
    for t, g in zip(gS[0], g_final):
        if g is not None:
            t += g
    for t, g in zip(gS[0], g_all):
        if g is not None:
            t += g[K - 1]
    wS = [[to_warp(t) for t in s] for s in gS]
    wA0, wA1, wB0, wB1, wR, wP = (to_warp(t) for t in (gA0, gA1, gB0, gB1, gR, gP))
    wb, wc0, wc1 = to_warp(g_buoy), to_warp(g_c0), to_warp(g_c1)
    L = _launches(cfg, inputs, bufs, dev, adj=True)
    stream = _stream(dev)
    for k in range(K - 1, -1, -1):
        nxt, cur = wS[(K - 1 - k) % 2], wS[(K - k) % 2]
        for t in gS[(K - k) % 2]:
            t.zero_()
        for t in (gA0, gA1, gB0, gB1, gP):
            t.zero_()
        # density advection by the new velocity
        _set(L[7], dict(f=Dc[k], u0=U0c[k + 1], u1=U1c[k + 1], g=nxt[0].__ctype__(), adj_f=cur[0].__ctype__(),
                        adj_u0=nxt[1].__ctype__(), adj_u1=nxt[2].__ctype__()), _AA)
        _go(L[7], stream)
        # gradient subtraction
        for j, (B, wB, U, gU) in ((5, (B0c, wB0, U0c, nxt[1])), (6, (B1c, wB1, U1c, nxt[2]))):
            _set(L[j], dict(v=B[k], phi=Pc[k], out=U[k + 1]), _SG)
            _set(L[j], dict(v=wB.__ctype__(), phi=wP.__ctype__(), out=gU.__ctype__()), _SG, adjoint=True)
            _go(L[j], stream)
        gR.copy_(solve(gP))
        _set(L[4], dict(v0=B0c[k], v1=B1c[k], out=Rc[k]), _DV)
        _set(L[4], dict(v0=wB0.__ctype__(), v1=wB1.__ctype__(), out=wR.__ctype__()), _DV, adjoint=True)
        _go(L[4], stream)
        for j, (A, wAg, B, wBg, wc) in ((2, (A0c, wA0, B0c, wB0, wc0)), (3, (A1c, wA1, B1c, wB1, wc1))):
            _set(L[j], dict(ua=A[k], d=Dc[k], out=B[k]), _FO)
            _set(L[j], dict(ua=wAg.__ctype__(), d=cur[0].__ctype__(), buoy=wb.__ctype__(), c=wc.__ctype__(),
                            out=wBg.__ctype__()), _FO, adjoint=True)
            _go(L[j], stream)
        for j, (U, gU, wAg) in ((0, (U0c, cur[1], wA0)), (1, (U1c, cur[2], wA1))):
            _set(L[j], dict(f=U[k], u0=U0c[k], u1=U1c[k], g=wAg.__ctype__(), adj_f=gU.__ctype__(),
                            adj_u0=cur[1].__ctype__(), adj_u1=cur[2].__ctype__()), _AA)
            _go(L[j], stream)
        if k > 0:
            for t, g in zip(gS[(K - k) % 2], g_all):
                if g is not None:
                    t += g[k - 1]
    gd0, gu0, gu1 = gS[K % 2]
    return gd0, gu0, gu1, g_buoy, g_c0, g_c1


def smoke_segment2d(K: int, dt: float, dx: float, periodic: bool, d0, u0, u1, buoy, c0, c1, solve,
                    recompute: bool = False, return_all: bool = False):
    """K fused 2-D smoke steps (Euler back-trace, semi-Lagrangian) as one differentiable torch op.

    One step, in :class:`~diffvc.physics.SmokeModel`'s order: advect both velocity components by
    the velocity (:func:`advect2d`), add ``dt * (control + buoyancy * density)`` and zero the wall
    faces (:func:`forces2d`), ``phi = solve(-div u)`` (:func:`neg_div2d`, then ``solve``), ``u -=
    grad(phi)`` (:func:`sub_grad2d`), advect the density by the new velocity. ``solve(b) -> x``
    must be a symmetric linear map (the backward applies it to the incoming gradient): the
    implicitly differentiated PCG solve or :class:`Jacobi2D`. Every launch is recorded once and
    replayed with swapped pointers; the backward replays Warp's adjoint kernels step by step in
    reverse. ``buoy``: shape (1,); ``c0``, ``c1``: per-face accelerations held over the segment.
    ``recompute``: keep only the inputs and re-run the forward in backward. Returns
    ``(d_K, u0_K, u1_K)`` and, with ``return_all``, the stacked states of steps 1..K.
    """
    cfg = (int(K), float(dt), float(dx), bool(periodic))
    return _Segment2D.apply(cfg, solve, recompute, return_all, d0.contiguous(), u0.contiguous(),
                            u1.contiguous(), buoy.contiguous(), c0.contiguous(), c1.contiguous())
