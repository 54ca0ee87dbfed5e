"""Warp kernels for smoke on a MAC grid (:mod:`diffvc.physics.smoke`).

* :func:`advect2d` / :func:`advect3d`: semi-Lagrangian advection, one thread per sample of the
  advected field (cell centres, or the faces of one velocity component): the velocity at the
  sample point is the average of 2 or 4 staggered neighbours, the point is traced back one Euler
  step and the field is interpolated (bi-/trilinearly) there (clamped at walls, wrapped when
  periodic). Differentiated by Warp's adjoint (one unsplit launch scattering with atomics)
  through :func:`~diffvc._kernels.bridge.kernel_op`.
* :func:`smoke_segment2d`: K whole 2-D steps (advection, forces with the divergence, pressure
  solve, gradient subtraction) as one autograd node of recorded launches, with row kernels and
  hand-written adjoints; on CPU every pass is split into row ranges run on diffvc's launch thread
  pool (advection adjoints scatter into per-range buffers; the fixed-sweep Jacobi solve runs per
  range on overlapping windows, :func:`jacobi_block2d`); :class:`Jacobi2D`, the fixed-sweep
  pressure solve.

The plain-torch twin is :meth:`diffvc.physics.SmokeModel.step_torch` (``grid_sample``).
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import _SCALAR, _stream, kernel_guard, run_split, to_warp, warp_device, wp
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




# --------------------------------------------------------------------------------------------
# the passes of the fused 2-D step. Each kernel handles whole rows (first index) ``i = wp.tid() +
# off`` with a loop along the second index (on CPU this measured 1.7x (advection) to 2.4x
# (divergence) less time than one thread per sample). On CPU a pass is split into T row ranges run
# on T threads (``off`` the range's first row); every pass writes only its own rows, except the
# advection adjoints, which scatter into per-range private buffers (``pu0``, ``pu1``, ``pd``,
# indexed by range) that the next pass sums in a fixed order (Warp's CPU atomics are not atomic
# across threads). Passes are fused where no row needs another range's output of the same pass.
# --------------------------------------------------------------------------------------------

@wp.func
def _adv_row(f: wp.array2d(dtype=Any), u0: wp.array2d(dtype=Any), u1: wp.array2d(dtype=Any), i: int, kind: int,
             periodic: int, nx: int, ny: int, s: Any, out: wp.array2d(dtype=Any)):
    """Row ``i`` of the semi-Lagrangian advection of ``f`` (as :func:`advect2d`) into ``out``."""
    for j in range(out.shape[1]):
        v = _trace_velocity(u0, u1, i, j, kind, periodic, nx, ny)
        out[i, j] = _sample2(f, type(s)(float(i)) - s * v[0], type(s)(float(j)) - s * v[1], periodic)


@wp.func
def _adv_adj_row(f: wp.array2d(dtype=Any), u0: wp.array2d(dtype=Any), u1: wp.array2d(dtype=Any), i: int, kind: int,
                 periodic: int, nx: int, ny: int, s: Any, g: wp.array2d(dtype=Any), adj_f: wp.array2d(dtype=Any),
                 adj_u0: wp.array2d(dtype=Any), adj_u1: wp.array2d(dtype=Any)):
    """The adjoint of :func:`_adv_row` written out: given ``g = dL/d out`` (row ``i``), add dL/df
    into ``adj_f`` and dL/du into ``adj_u0``, ``adj_u1`` (a scatter: ``+=``, atomics on CUDA; on
    CPU into the range's private buffers). Clamping at walls passes the gradient only strictly
    inside ``(0, n - 1)`` (as Warp's generated adjoint of min/max does)."""
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
def adv_pass2d(
    off: int,
    u0: wp.array2d(dtype=Any),
    u1: wp.array2d(dtype=Any),
    d: wp.array2d(dtype=Any),
    do_u: int,
    do_d: int,
    periodic: int,
    nx: int,
    ny: int,
    s: Any,
    a0: wp.array2d(dtype=Any),
    a1: wp.array2d(dtype=Any),
    d_out: wp.array2d(dtype=Any),
):
    """Advection by the velocity (u0, u1), rows ``off + tid``: with ``do_u``, both velocity
    components by themselves (into a0, a1: the start of a step); with ``do_d``, the density ``d``
    (into d_out: the end of the previous step, advected by the same velocity)."""
    i = wp.tid() + off
    if do_u == 1:
        if i < a0.shape[0]:
            _adv_row(u0, u0, u1, i, 0, periodic, nx, ny, s, a0)
        if i < a1.shape[0]:
            _adv_row(u1, u0, u1, i, 1, periodic, nx, ny, s, a1)
    if do_d == 1 and i < d_out.shape[0]:
        _adv_row(d, u0, u1, i, -1, periodic, nx, ny, s, d_out)


@wp.kernel
def adv_adj_pass2d(
    off: int,
    u0: wp.array2d(dtype=Any),
    u1: wp.array2d(dtype=Any),
    d: wp.array2d(dtype=Any),
    ga0: wp.array2d(dtype=Any),
    ga1: wp.array2d(dtype=Any),
    gd: wp.array2d(dtype=Any),
    do_u: int,
    do_d: int,
    periodic: int,
    nx: int,
    ny: int,
    s: Any,
    pu0: wp.array2d(dtype=Any),
    pu1: wp.array2d(dtype=Any),
    pd: wp.array2d(dtype=Any),
):
    """The adjoint of :func:`adv_pass2d` (rows ``off + tid`` of the gradients ga0, ga1, gd),
    scattered into this range's private buffers pu0, pu1 (velocity) and pd (density)."""
    i = wp.tid() + off
    if do_u == 1:
        if i < ga0.shape[0]:
            _adv_adj_row(u0, u0, u1, i, 0, periodic, nx, ny, s, ga0, pu0, pu0, pu1)
        if i < ga1.shape[0]:
            _adv_adj_row(u1, u0, u1, i, 1, periodic, nx, ny, s, ga1, pu1, pu0, pu1)
    if do_d == 1 and i < gd.shape[0]:
        _adv_adj_row(d, u0, u1, i, -1, periodic, nx, ny, s, gd, pd, pu0, pu1)


@wp.func
def _face0(a0: wp.array2d(dtype=Any), c0: wp.array2d(dtype=Any), i: int, j: int, periodic: int, nx: int, dt: Any):
    """Velocity component 0 after the forces (no buoyancy along x), zero on wall faces."""
    if periodic == 0 and (i == 0 or i == nx):
        return dt - dt
    return a0[i, j] + dt * c0[i, j]


@wp.func
def _face1(a1: wp.array2d(dtype=Any), c1: wp.array2d(dtype=Any), d: wp.array2d(dtype=Any), bu: Any, i: int,
           j: int, periodic: int, ny: int, dt: Any):
    """Velocity component 1 after the forces: control plus buoyancy times the face-averaged
    density, zero on wall faces."""
    half = dt - dt + type(dt)(0.5)
    v = a1[i, j] + dt * c1[i, j]
    if periodic == 1:
        jm = wp.where(j == 0, ny - 1, j - 1)
        v = v + dt * bu * (d[i, jm] + d[i, j]) * half
    else:
        if j == 0 or j == ny:
            return dt - dt
        v = v + dt * bu * (d[i, j - 1] + d[i, j]) * half
    return v


@wp.kernel
def forces_div2d(
    off: int,
    a0: wp.array2d(dtype=Any),
    a1: wp.array2d(dtype=Any),
    d: wp.array2d(dtype=Any),
    buoy: wp.array(dtype=Any),
    c0: wp.array2d(dtype=Any),
    c1: wp.array2d(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    dt: Any,
    inv_dx: Any,
    b0: wp.array2d(dtype=Any),
    b1: wp.array2d(dtype=Any),
    r: wp.array2d(dtype=Any),
    rsum: wp.array(dtype=Any),
):
    """b = a + dt * (c + [component 1] buoy * face-averaged density), zero on wall faces, and
    r = -div(b) at cell centres (1/s; face i of an axis sits between cells i - 1 and i), rsum[i]
    the sum of row i of r. Row ``off + tid``: the divergence's one value from the next row is
    recomputed (:func:`_face0`)."""
    i = wp.tid() + off
    bu = buoy[0]
    if i < b0.shape[0]:
        for j in range(ny):
            b0[i, j] = _face0(a0, c0, i, j, periodic, nx, dt)
    if i < nx:
        for j in range(b1.shape[1]):
            b1[i, j] = _face1(a1, c1, d, bu, i, j, periodic, ny, dt)
        i1 = i + 1
        if periodic == 1:
            i1 = wp.where(i1 == nx, 0, i1)
        acc = dt - dt
        for j in range(ny):
            j1 = j + 1
            if periodic == 1:
                j1 = wp.where(j1 == ny, 0, j1)
            v = -((_face0(a0, c0, i1, j, periodic, nx, dt) - b0[i, j]) + (b1[i, j1] - b1[i, j])) * inv_dx
            r[i, j] = v
            acc = acc + v
        rsum[i] = acc


@wp.kernel
def sub_grad_pass2d(
    off: int,
    b0: wp.array2d(dtype=Any),
    b1: wp.array2d(dtype=Any),
    phi: wp.array2d(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    inv_dx: Any,
    u0: wp.array2d(dtype=Any),
    u1: wp.array2d(dtype=Any),
):
    """u = b - grad(phi) on the faces of both components (the gradient is zero on wall faces),
    row ``off + tid``."""
    i = wp.tid() + off
    if i < u0.shape[0]:
        for j in range(ny):
            g = inv_dx - inv_dx
            if periodic == 1:
                g = (phi[i, j] - phi[wp.where(i == 0, nx - 1, i - 1), j]) * inv_dx
            elif i > 0 and i < nx:
                g = (phi[i, j] - phi[i - 1, j]) * inv_dx
            u0[i, j] = b0[i, j] - g
    if i < nx:
        for j in range(u1.shape[1]):
            g = inv_dx - inv_dx
            if periodic == 1:
                g = (phi[i, j] - phi[i, wp.where(j == 0, ny - 1, j - 1)]) * inv_dx
            elif j > 0 and j < ny:
                g = (phi[i, j] - phi[i, j - 1]) * inv_dx
            u1[i, j] = b1[i, j] - g


@wp.func
def _psum(p: wp.array3d(dtype=Any), i: int, j: int):
    """Sum of the private buffers p[0..T-1] at (i, j), in range order."""
    v = p[0, i, j]
    for c in range(1, p.shape[0]):
        v = v + p[c, i, j]
    return v


@wp.kernel
def reduce_div_adj2d(
    off: int,
    pu0: wp.array3d(dtype=Any),
    pu1: wp.array3d(dtype=Any),
    pd: wp.array3d(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    inv_dx: Any,
    gb0: wp.array2d(dtype=Any),
    gb1: wp.array2d(dtype=Any),
    gphi: wp.array2d(dtype=Any),
    gd: wp.array2d(dtype=Any),
    rsum: wp.array(dtype=Any),
):
    """Sums the private scatter buffers (velocity gradient -> gb0, gb1: the adjoint of ``u = b -
    grad(phi)`` w.r.t. b is the identity; density -> gd) and gphi = -grad^T(gu), the adjoint
    w.r.t. phi (a divergence; the one value from the next row is summed again), rsum[i] the sum of
    row i of gphi. Row ``off + tid``."""
    i = wp.tid() + off
    if i < gb0.shape[0]:
        for j in range(ny):
            gb0[i, j] = _psum(pu0, i, j)
    if i < nx:
        for j in range(gb1.shape[1]):
            gb1[i, j] = _psum(pu1, i, j)
        for j in range(ny):
            gd[i, j] = _psum(pd, i, j)
        i1 = i + 1
        if periodic == 1:
            i1 = wp.where(i1 == nx, 0, i1)
        rs = inv_dx - inv_dx
        for j in range(ny):
            j1 = j + 1
            if periodic == 1:
                j1 = wp.where(j1 == ny, 0, j1)
            acc = inv_dx - inv_dx
            if periodic == 1 or i > 0:
                acc = acc + gb0[i, j]
            if periodic == 1 or i1 < nx:
                acc = acc - _psum(pu0, i1, j)
            if periodic == 1 or j > 0:
                acc = acc + gb1[i, j]
            if periodic == 1 or j1 < ny:
                acc = acc - gb1[i, j1]
            v = -acc * inv_dx
            gphi[i, j] = v
            rs = rs + v
        rsum[i] = rs


@wp.kernel
def forces_div_adj2d(
    off: int,
    gb0: wp.array2d(dtype=Any),
    gb1: wp.array2d(dtype=Any),
    gr: wp.array2d(dtype=Any),
    d: wp.array2d(dtype=Any),
    buoy: wp.array(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    dt: Any,
    inv_dx: Any,
    ga0: wp.array2d(dtype=Any),
    ga1: wp.array2d(dtype=Any),
    gc0: wp.array2d(dtype=Any),
    gc1: wp.array2d(dtype=Any),
    gbuoy: wp.array(dtype=Any),
    gd: wp.array2d(dtype=Any),
    pu0: wp.array3d(dtype=Any),
    pu1: wp.array3d(dtype=Any),
    pd: wp.array3d(dtype=Any),
):
    """The adjoint of :func:`forces_div2d`, row ``off + tid``: the face gradients gb plus the
    divergence's adjoint (a gradient of ``gr``), masked on wall faces, give the gradients of a
    (``ga``, set) and of the controls (``gc``, added); the buoyancy's gradient is added to
    ``gbuoy[i]`` (one entry per row, summed at the end) and the density's to ``gd`` (same row).
    Then clears this row of the private scatter buffers for the next advection adjoint."""
    i = wp.tid() + off
    half = dt - dt + type(dt)(0.5)
    zero = dt - dt
    bu = buoy[0]
    if i < ga0.shape[0]:
        im = i - 1
        if periodic == 1:
            im = wp.where(i == 0, nx - 1, i - 1)
        for j in range(ny):
            t = gb0[i, j]
            if periodic == 1 or i < nx:
                t = t + gr[i, j] * inv_dx
            if periodic == 1 or i > 0:
                t = t - gr[im, j] * inv_dx
            if periodic == 0 and (i == 0 or i == nx):
                t = zero
            ga0[i, j] = t
            gc0[i, j] += dt * t
    if i < nx:
        gbs = zero
        for j in range(ga1.shape[1]):
            jm = j - 1
            if periodic == 1:
                jm = wp.where(j == 0, ny - 1, j - 1)
            t = gb1[i, j]
            if periodic == 1 or j < ny:
                t = t + gr[i, j] * inv_dx
            if periodic == 1 or j > 0:
                t = t - gr[i, jm] * inv_dx
            if periodic == 0 and (j == 0 or j == ny):
                t = zero
            ga1[i, j] = t
            gc1[i, j] += dt * t
            if periodic == 1 or (j > 0 and j < ny):
                gbs = gbs + dt * t * (d[i, jm] + d[i, j]) * half
                h = dt * bu * t * half
                gd[i, jm] += h
                gd[i, j] += h
        gbuoy[i] += gbs
    # clear this row of the private buffers (all their readers have run)
    for c in range(pu0.shape[0]):
        if i < pu0.shape[1]:
            for j in range(pu0.shape[2]):
                pu0[c, i, j] = zero
        if i < pu1.shape[1]:
            for j in range(pu1.shape[2]):
                pu1[c, i, j] = zero
        if i < pd.shape[1]:
            for j in range(pd.shape[2]):
                pd[c, i, j] = zero


@wp.func
def _jrow(g: int, nx: int, periodic: int):
    """Global row of window row index g (wrapped when periodic)."""
    if periodic == 1:
        return ((g % nx) + nx) % nx
    return g


@wp.kernel
def jacobi_block2d(
    r0: int,
    r1: int,
    halo: int,
    b: wp.array2d(dtype=Any),
    rsum: wp.array(dtype=Any),
    periodic: int,
    nx: int,
    ny: int,
    dx2: Any,
    iters: int,
    x: wp.array3d(dtype=Any),
    out: wp.array2d(dtype=Any),
):
    """``iters`` Jacobi sweeps (as :func:`jacobi2d`, from zero, for ``-lap(phi) = b - mean(b)``,
    the mean from the row sums ``rsum``, summed in row order by every range alike) on
    rows [r0, r1), one thread, without synchronising with the threads of the other row ranges:
    the sweeps run on the window [r0 - halo, r1 + halo) (clipped at walls) in the private buffer
    ``x`` (2 x window rows x ny); a window edge that is not the grid's edge corrupts one more row
    per sweep, so ``halo = iters - 1`` leaves rows [r0, r1) exact. A range covering all rows
    (``halo = 0``) is the plain sweep. Writes rows [r0, r1) of ``out``."""
    lo = r0 - halo
    hi = r1 + halo
    cut_lo = 1
    cut_hi = 1
    full = 0
    if r1 - r0 == nx:
        full = 1
        cut_lo = 0
        cut_hi = 0
    if periodic == 0:
        if lo <= 0:
            lo = 0
            cut_lo = 0
        if hi >= nx:
            hi = nx
            cut_hi = 0
    W = hi - lo
    m = rsum[0]
    for g in range(1, nx):
        m = m + rsum[g]
    m = m / type(dx2)(float(nx * ny))
    for w in range(W):
        g = _jrow(lo + w, nx, periodic)
        for j in range(ny):
            cnt = 4
            if periodic == 0:
                cnt = 0
                if g > 0:
                    cnt = cnt + 1
                if g < nx - 1:
                    cnt = cnt + 1
                if j > 0:
                    cnt = cnt + 1
                if j < ny - 1:
                    cnt = cnt + 1
            v = (dx2 * (b[g, j] - m) + (dx2 - dx2)) / type(dx2)(float(cnt))
            x[0, w, j] = v
            x[1, w, j] = v
    for it in range(1, iters):
        src = (it - 1) % 2
        dst = it % 2
        for w in range(cut_lo, W - cut_hi):
            g = _jrow(lo + w, nx, periodic)
            wm = w - 1
            wq = w + 1
            if full == 1 and periodic == 1:
                wm = wp.where(w == 0, W - 1, w - 1)
                wq = wp.where(w == W - 1, 0, w + 1)
            for j in range(ny):
                s = dx2 - dx2
                cnt = 0
                if periodic == 1:
                    s = (x[src, wm, j] + x[src, wq, j] + x[src, w, wp.where(j == 0, ny - 1, j - 1)]
                         + x[src, w, wp.where(j == ny - 1, 0, j + 1)])
                    cnt = 4
                else:
                    if g > 0:
                        s = s + x[src, wm, j]
                        cnt = cnt + 1
                    if g < nx - 1:
                        s = s + x[src, wq, j]
                        cnt = cnt + 1
                    if j > 0:
                        s = s + x[src, w, j - 1]
                        cnt = cnt + 1
                    if j < ny - 1:
                        s = s + x[src, w, j + 1]
                        cnt = cnt + 1
                x[dst, w, j] = (dx2 * (b[g, j] - m) + s) / type(dx2)(float(cnt))
    last = (iters - 1) % 2
    for g in range(r0, r1):
        w = g - lo
        for j in range(ny):
            out[g, j] = x[last, w, j]


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

#: a CPU segment is split into row ranges only when every range gets at least this many cells
#: (each split pass is a thread-pool round trip; tests lower it to split tiny grids)
MIN_CELLS_PER_THREAD = 2048


def _go(launch, stream) -> None:
    launch.launch(stream=stream) if stream is not None else launch.launch()


def _index(kernel) -> dict:
    return {a.label: i for i, a in enumerate(kernel.adj.args)}


def _parts(n: int, T: int) -> list:
    step = (n + T - 1) // T
    return [(s, min(step, n - s)) for s in range(0, n, step)]


class _Pass:
    """One kernel's recorded launches over the row ranges of a segment: ``args(k, off)`` gives
    range k's argument list (its first argument the range's first row). :meth:`run` launches
    ranges on the calling thread and diffvc's launch workers (:func:`~diffvc._kernels.bridge.run_split`)."""

    def __init__(self, kernel, rows: int, T: int, args, dev, dim_of=None):
        self.index = _index(kernel)
        parts = _parts(rows, T)
        self.launches = []
        for k, (off, count) in enumerate(parts):
            with kernel_guard(kernel):
                self.launches.append(wp.launch(kernel, dim=count if dim_of is None else dim_of(k, count),
                                               inputs=args(k, off), device=warp_device(dev), record_tape=False,
                                               record_cmd=True))
        self.stream = _stream(dev)

    def set(self, **ctypes_by_name) -> None:
        idx = self.index
        for L in self.launches:
            for name, c in ctypes_by_name.items():
                L.set_param_at_index_from_ctype(idx[name], c)

    def set_value(self, name: str, value) -> None:
        i = self.index[name]
        for L in self.launches:
            L.set_param_at_index(i, value)

    def run(self) -> None:
        if len(self.launches) == 1:
            _go(self.launches[0], self.stream)
            return
        run_split([L.launch for L in self.launches])


class Jacobi2D:
    """``x = P J_K P b``: ``K`` Jacobi sweeps (:func:`jacobi2d`) from ``x = 0`` for ``-lap(x) = b``
    on an ``nx x ny`` grid of cell size ``dx``, with ``P`` removing the mean. ``J_K = sum_{k<K}
    (D^-1 N)^k D^-1`` (``A = D - N``, ``D`` the neighbour counts / dx^2) is symmetric, so this
    linear map is its own adjoint: the exact gradient of the K sweeps is the same K sweeps applied
    to the incoming gradient. Buffers and launches are made once (recorded launches); one instance
    must not be called from two threads at once."""

    def __init__(self, nx: int, ny: int, iters: int, dx: float, periodic: bool, dtype, device):
        self.iters = int(iters)
        self.nx, self.ny, self.dx, self.periodic, self.dtype = nx, ny, float(dx), bool(periodic), dtype
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


class _BlockJacobi:
    """The map of :class:`Jacobi2D` up to an added constant (the mean of the result is not
    removed: only its gradient is used) on T row ranges at once, one :func:`jacobi_block2d`
    launch per range (CPU): ``run()`` solves ``self.b`` into ``self.out``, ``self.rsum`` holding
    the row sums of ``self.b`` (written by the pass that writes ``self.b``; no torch op in the
    loop: torch's OpenMP threads spin after each parallel op and took the core from the ranges).
    Ranges overlap by ``iters - 1`` rows of redundant sweeps; used when that overlap is at most
    half a range (otherwise one range, no overlap)."""

    def __init__(self, jac: Jacobi2D, T: int, dev):
        nx, ny, K = jac.nx, jac.ny, jac.iters
        dtype = jac.dtype
        halo = K - 1
        if T > 1 and 2 * halo > nx // T:
            T = 1
        parts = _parts(nx, T)
        if len(parts) == 1:
            halo = 0
        wmax = max(c for _, c in parts) + 2 * halo
        self.b = torch.zeros((nx, ny), dtype=dtype, device=dev)
        self.out = torch.zeros((nx, ny), dtype=dtype, device=dev)
        self.rsum = torch.zeros(nx, dtype=dtype, device=dev)
        self.x = torch.zeros((len(parts), 2, wmax, ny), dtype=dtype, device=dev)
        wb, wo, wm = to_warp(self.b), to_warp(self.out), to_warp(self.rsum)
        wx = [to_warp(self.x[k]) for k in range(len(parts))]
        dx2 = _SCALAR[dtype](jac.dx ** 2)
        p = 1 if jac.periodic else 0
        self.pass_ = _Pass(jacobi_block2d, nx, T,
                           lambda k, off: [off, off + parts[k][1], halo, wb, wm, p, nx, ny, dx2, K, wx[k], wo],
                           dev, dim_of=lambda k, count: 1)

    def run(self) -> None:
        self.pass_.run()


def _threads(nx: int, ny: int, dev) -> int:
    """Row ranges of a segment: torch's thread count on CPU when every range gets at least
    :data:`MIN_CELLS_PER_THREAD` cells (and a row), else 1 (always 1 on CUDA)."""
    if dev.type != "cpu":
        return 1
    T = max(1, torch.get_num_threads())
    while T > 1 and (nx * ny < T * MIN_CELLS_PER_THREAD or nx < T):
        T -= 1
    return T


class _Plan:
    """Buffers and recorded launches of one run of a segment (forward, or its adjoint)."""

    def __init__(self, cfg, solve, inputs, adjoint: bool):
        K, dt, dx, periodic = cfg
        d0, u0, u1, buoy, c0, c1 = inputs
        dev, dtype = d0.device, d0.dtype
        nx, ny = d0.shape
        self.T = T = _threads(nx, ny, dev)
        self.rows = rows = u0.shape[0]             # nx + 1 (walls) or nx (periodic)
        S = _SCALAR[dtype]
        s, inv_dx, fdt = S(dt / dx), S(1.0 / dx), S(dt)
        p = 1 if periodic else 0
        self.solve = solve
        self.jacobi = None
        if isinstance(solve, Jacobi2D) and dev.type == "cpu":
            self.jacobi = _BlockJacobi(solve, T, dev)
        z = lambda t: torch.zeros_like(t)          # noqa: E731
        # per-step work buffers (one step's intermediates; the states are kept per step)
        self.a0, self.a1, self.b0, self.b1 = z(u0), z(u1), z(u0), z(u1)
        self.r, self.phi = z(d0), z(d0)
        self.rsum = torch.zeros(nx, dtype=dtype, device=dev)
        if self.jacobi is not None:
            self.r, self.phi, self.rsum = self.jacobi.b, self.jacobi.out, self.jacobi.rsum
        w = {k: to_warp(getattr(self, k)) for k in ("a0", "a1", "b0", "b1", "r", "phi", "rsum")}
        wd, wu0, wu1 = to_warp(d0), to_warp(u0), to_warp(u1)     # placeholders, swapped per step
        wbuoy, wc0, wc1 = to_warp(buoy), to_warp(c0), to_warp(c1)
        if not adjoint:
            self.adv = _Pass(adv_pass2d, rows, T, lambda k, off: [off, wu0, wu1, wd, 1, 0, p, nx, ny, s,
                                                                  w["a0"], w["a1"], wd], dev)
            self.forces = _Pass(forces_div2d, rows, T, lambda k, off: [off, w["a0"], w["a1"], wd, wbuoy, wc0, wc1,
                                                                       p, nx, ny, fdt, inv_dx, w["b0"], w["b1"],
                                                                       w["r"], w["rsum"]], dev)
            self.subgrad = _Pass(sub_grad_pass2d, rows, T, lambda k, off: [off, w["b0"], w["b1"], w["phi"], p, nx, ny,
                                                                           inv_dx, wu0, wu1], dev)
            return
        # adjoint: private scatter buffers per range, gradients of the work buffers and parameters
        self.pu0 = torch.zeros((T, *u0.shape), dtype=dtype, device=dev)
        self.pu1 = torch.zeros((T, *u1.shape), dtype=dtype, device=dev)
        self.pd = torch.zeros((T, *d0.shape), dtype=dtype, device=dev)
        self.gd = z(d0)
        self.gc0, self.gc1 = z(c0), z(c1)
        self.gbuoy = torch.zeros(nx, dtype=dtype, device=dev)
        g = {k: to_warp(v) for k, v in dict(pu0=self.pu0, pu1=self.pu1, pd=self.pd, gd=self.gd, gc0=self.gc0,
                                              gc1=self.gc1, gbuoy=self.gbuoy).items()}
        pr = {k: [to_warp(getattr(self, k)[c]) for c in range(T)] for k in ("pu0", "pu1", "pd")}
        # a0/a1 hold the gradients of a (ga), b0/b1 of b (gb); r of phi (gphi), phi of r (gr)
        self.adv = _Pass(adv_adj_pass2d, rows, T, lambda k, off: [off, wu0, wu1, wd, w["a0"], w["a1"], g["gd"], 1, 1,
                                                                  p, nx, ny, s, pr["pu0"][k], pr["pu1"][k],
                                                                  pr["pd"][k]], dev)
        self.reduce = _Pass(reduce_div_adj2d, rows, T, lambda k, off: [off, g["pu0"], g["pu1"], g["pd"], p, nx, ny,
                                                                       inv_dx, w["b0"], w["b1"], w["r"], g["gd"],
                                                                       w["rsum"]], dev)
        self.forces = _Pass(forces_div_adj2d, rows, T, lambda k, off: [off, w["b0"], w["b1"], w["phi"], wd, wbuoy,
                                                                       p, nx, ny, fdt, inv_dx, w["a0"], w["a1"],
                                                                       g["gc0"], g["gc1"], g["gbuoy"], g["gd"],
                                                                       g["pu0"], g["pu1"], g["pd"]], dev)

    def solve_into(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """dst = solve(src) (for the block Jacobi, src and dst are its own buffers). A torch solve
        runs on one intra-op thread while the passes are split (measured: torch's OpenMP workers,
        spinning after each small parallel op, took the other core from the row ranges: the 128^2,
        99-step PCG benchmark iteration took 6.9 CPU s that way, 0.9 s with this; loaded machine)."""
        if self.jacobi is not None:
            self.jacobi.run()
        elif self.T > 1:
            n = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                dst.copy_(self.solve(src))
            finally:
                torch.set_num_threads(n)
        else:
            dst.copy_(self.solve(src))


class _Segment2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, solve, recompute, return_all, d0, u0, u1, buoy, c0, c1):
        ctx.cfg, ctx.solve, ctx.recompute, ctx.return_all = cfg, solve, recompute, return_all
        inputs = (d0, u0, u1, buoy, c0, c1)
        states = _seg_forward(cfg, solve, inputs)
        ctx.save_for_backward(*inputs)
        ctx.states = None if recompute else states
        K = cfg[0]
        D, U0, U1 = states[:3]
        outs = (D[K].clone(), U0[K].clone(), U1[K].clone())
        if return_all:
            return (*outs, D[1:], U0[1:], U1[1:])
        return outs

    @staticmethod
    def backward(ctx, gd, gu0, gu1, gds=None, gu0s=None, gu1s=None):
        inputs = ctx.saved_tensors
        states = ctx.states if ctx.states is not None else _seg_forward(ctx.cfg, ctx.solve, inputs)
        ctx.states = None
        grads = _seg_adjoint(ctx.cfg, ctx.solve, inputs, states, (gd, gu0, gu1), (gds, gu0s, gu1s))
        return (None, None, None, None, *grads)


def _seg_forward(cfg, solve, inputs):
    """K steps: the states D, U0, U1 (K + 1 each) and their row pointers."""
    K = cfg[0]
    d0, u0, u1 = inputs[:3]
    dev = d0.device
    D = torch.empty((K + 1, *d0.shape), dtype=d0.dtype, device=dev)
    U0 = torch.empty((K + 1, *u0.shape), dtype=d0.dtype, device=dev)
    U1 = torch.empty((K + 1, *u1.shape), dtype=d0.dtype, device=dev)
    D[0], U0[0], U1[0] = d0, u0, u1
    Dc, U0c, U1c = _rows(D, None), _rows(U0, None), _rows(U1, None)
    P = _Plan(cfg, solve, inputs, adjoint=False)
    # step k: forces + divergence, solve, gradient subtraction into U[k+1], then one advection
    # pass by U[k+1]: the density (end of step k) and the velocity (start of step k+1)
    P.adv.set(u0=U0c[0], u1=U1c[0])
    P.adv.run()
    P.adv.set_value("do_d", 1)
    for k in range(K):
        P.forces.set(d=Dc[k])
        P.forces.run()
        P.solve_into(P.r, P.phi)
        P.subgrad.set(u0=U0c[k + 1], u1=U1c[k + 1])
        P.subgrad.run()
        if k == K - 1:
            P.adv.set_value("do_u", 0)
        P.adv.set(u0=U0c[k + 1], u1=U1c[k + 1], d=Dc[k], d_out=Dc[k + 1])
        P.adv.run()
    return D, U0, U1, Dc, U0c, U1c


def _seg_adjoint(cfg, solve, inputs, states, g_final, g_all):
    K = cfg[0]
    d0, u0, u1, buoy, c0, c1 = inputs
    D, U0, U1, Dc, U0c, U1c = states
    P = _Plan(cfg, solve, inputs, adjoint=True)
    # gradients of state K: density into gd, velocity into the first private buffer
    for t, g in zip((P.gd, P.pu0[0], P.pu1[0]), g_final):
        if g is not None:
            t += g
    for t, g in zip((P.gd, P.pu0[0], P.pu1[0]), g_all):
        if g is not None:
            t += g[K - 1]
    # the last density advection (step K-1, by U[K]) alone
    P.adv.set_value("do_u", 0)
    P.adv.set(u0=U0c[K], u1=U1c[K], d=Dc[K - 1])
    P.adv.run()
    P.adv.set_value("do_u", 1)
    for k in range(K - 1, -1, -1):
        P.reduce.run()                      # gb = gu[k+1] (summed), gphi, gd (advection part)
        P.solve_into(P.r, P.phi)            # gr = solve(gphi)
        P.forces.set(d=Dc[k])
        P.forces.run()                      # ga, gc, gbuoy, gd[k] complete; private buffers cleared
        if k > 0:
            for t, g in zip((P.gd, P.pu0[0], P.pu1[0]), g_all):
                if g is not None:
                    t += g[k - 1]
        else:
            P.adv.set_value("do_d", 0)
        # velocity advection of step k (by U[k]) and density advection of step k-1 (by U[k])
        P.adv.set(u0=U0c[k], u1=U1c[k], d=Dc[max(k - 1, 0)])
        P.adv.run()
    gu0 = P.pu0.sum(0) if P.T > 1 else P.pu0[0].clone()
    gu1 = P.pu1.sum(0) if P.T > 1 else P.pu1[0].clone()
    return P.gd, gu0, gu1, P.gbuoy.sum().reshape(1), P.gc0, P.gc1


def smoke_segment2d(K: int, dt: float, dx: float, periodic: bool, d0, u0, u1, buoy, c0, c1, solve,
                    recompute: bool = False, return_all: bool = False):
    """K fused 2-D smoke steps (Euler back-trace, semi-Lagrangian) as one differentiable torch op.

    One step, in :class:`~diffvc.physics.SmokeModel`'s order: advect both velocity components by
    the velocity, add ``dt * (control + buoyancy * density)`` and zero the wall faces, ``phi =
    solve(-div u)``, ``u -= grad(phi)`` (:func:`forces_div2d`, ``solve``,
    :func:`sub_grad_pass2d`), advect the density by the new velocity (in the same pass as the
    next step's velocity advection, :func:`adv_pass2d`). ``solve(b) -> x`` must be a symmetric
    linear map whose result is used only through its gradient (the backward applies it to the
    incoming gradient): the implicitly differentiated PCG solve or a :class:`Jacobi2D` (on CPU
    run as :func:`jacobi_block2d` on each row range). Every launch is recorded once and replayed
    with swapped pointers; the backward runs the hand-written adjoint passes step by step in
    reverse. On CPU every pass is split into row ranges on torch's threads (see
    :data:`MIN_CELLS_PER_THREAD`); the result does not depend on the split beyond the order of
    floating-point sums of the scattered advection gradients. ``buoy``: shape (1,); ``c0``,
    ``c1``: per-face accelerations held over the segment. ``recompute``: keep only the inputs and
    re-run the forward in backward. Returns ``(d_K, u0_K, u1_K)`` and, with ``return_all``, the
    stacked states of steps 1..K.
    """
    cfg = (int(K), float(dt), float(dx), bool(periodic))
    return _Segment2D.apply(cfg, solve, recompute, return_all, d0.contiguous(), u0.contiguous(),
                            u1.contiguous(), buoy.contiguous(), c0.contiguous(), c1.contiguous())
