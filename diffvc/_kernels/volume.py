"""Warp kernels for volume rendering (emission-absorption and absorption-only) and their autograd
bridges. The plain-torch twins live in :mod:`diffvc.render.volume` (``backend="torch"``).

Two ops, each a forward kernel and a hand-written backward kernel (no Warp generated adjoints:
``enable_backward=False``), one thread per ray, generic over float32 / float64:

* :func:`composite` - compositing of given samples ``(sigma, colour, delta, t)`` per ray (any
  field: a ``NeuralField``, an MLP; the samples and their activations are torch tensors).
* :func:`march_grid` - fused ray marching through dense grids: stratified samples between
  ``t_near`` and ``t_far``, trilinear density and colour features (RGB, or spherical-harmonic
  coefficients with a sigmoid), compositing. Memory-lean: forward saves the inputs and the
  per-ray outputs only; backward re-marches each ray in forward order and scatters gradients into
  the grids (no per-sample activation is ever stored). Specialised kernels serve the common cases
  with straight-line code: RGB emission (``march_rgb_*``: the density grid and the (X, Y, Z, 3)
  colour grid read in place, gradients scattered into grids of the same layout) and absorption only
  (``march_abs_*``); the generic kernels (packed table) serve SH coefficients and other channel
  counts.

Compositing (both ops), per ray with samples ``i = 0..S-1``::

    tau_i = max(sigma_i, 0) * delta_i  (derivative 1 at sigma_i = 0, as torch's clamp),  T_0 = 1,  T_{i+1} = T_i exp(-tau_i),  w_i = T_i - T_{i+1}
    colour = sum_i w_i c_i + T_end * background,  transmittance = T_end,  depth = sum_i w_i t_i

Early termination: the march stops before sample ``i`` once ``T_i < t_stop`` (``T_end`` is then
that ``T_i``). The gradient is that of the truncated sum actually computed (samples after the
stop get none; the value changes by at most ``t_stop``).

Backward (one forward-order pass per ray): with ``v_i = g_colour . c_i + g_depth t_i`` and the
total ``L = g_colour . colour + g_depth depth + g_T T_end``,
``dL/dtau_i = T_{i+1} v_i - (L - sum_{j<=i} w_j v_j)`` (the suffix sum carried in float64).

CPU: the forward launch is split over cores (disjoint per-ray outputs) into chunks of equal work
(rays that hit the box); the backward launch too, with one private set of grid-gradient buffers per
worker (Warp's CPU atomics are not atomic across threads): worker 0's are returned, the others are
added to them. Per-ray gradients are disjoint and shared.
"""

from __future__ import annotations

import functools

import threading
from typing import Any

import torch

from .bridge import _stream, run_split, to_warp, vec, warp_device, wp

wp.set_module_options({"enable_backward": False})


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


@wp.func
def _cell(u: Any, n: int):
    """Clamped cell of index coordinate ``u`` on an axis of ``n >= 2`` nodes: (i0, frac, d frac/du)."""
    z = u - u
    top = type(u)(n - 1)
    uc = wp.clamp(u, z, top)
    i0 = wp.min(int(wp.floor(uc)), n - 2)
    f = uc - type(u)(i0)
    m = wp.where(u >= z and u <= top, type(u)(1.0), z)
    return i0, f, m


@wp.func
def _occupied(occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any), px: Any, py: Any, pz: Any):
    """Is the occupancy cell containing world point p marked (index clamped to the grid)?"""
    i = wp.clamp(int(wp.floor(px * xo[0, 0] + xo[1, 0])), 0, occ.shape[0] - 1)
    j = wp.clamp(int(wp.floor(py * xo[0, 1] + xo[1, 1])), 0, occ.shape[1] - 1)
    k = wp.clamp(int(wp.floor(pz * xo[0, 2] + xo[1, 2])), 0, occ.shape[2] - 1)
    return occ[i, j, k] != wp.uint8(0)


# ----------------------------------------------------------------------------------------------
# compositing of given samples
# ----------------------------------------------------------------------------------------------


@wp.kernel
def composite_forward(offset: int, sigma: wp.array2d(dtype=Any), col: wp.array3d(dtype=Any),
                      delta: wp.array2d(dtype=Any), tval: wp.array2d(dtype=Any), bg: wp.array2d(dtype=Any),
                      t_stop: Any, color: wp.array2d(dtype=Any), trans: wp.array(dtype=Any),
                      depth: wp.array(dtype=Any)):
    r = wp.tid() + offset
    S = sigma.shape[1]
    C = col.shape[2]
    z = t_stop - t_stop
    T = z + type(z)(1.0)
    D = z
    for c in range(C):
        color[r, c] = z
    for s in range(S):
        if T < t_stop:
            break
        tau = wp.max(sigma[r, s], z) * delta[r, s]
        Tn = T * wp.exp(-tau)
        w = T - Tn
        for c in range(C):
            color[r, c] = color[r, c] + w * col[r, s, c]
        D = D + w * tval[r, s]
        T = Tn
    br = wp.min(r, bg.shape[0] - 1)
    for c in range(C):
        color[r, c] = color[r, c] + T * bg[br, c]
    trans[r] = T
    depth[r] = D


@wp.kernel
def composite_backward(offset: int, sigma: wp.array2d(dtype=Any), col: wp.array3d(dtype=Any),
                       delta: wp.array2d(dtype=Any), tval: wp.array2d(dtype=Any), t_stop: Any,
                       color: wp.array2d(dtype=Any), trans: wp.array(dtype=Any), depth: wp.array(dtype=Any),
                       g_color: wp.array2d(dtype=Any), g_trans: wp.array(dtype=Any), g_depth: wp.array(dtype=Any),
                       d_sigma: wp.array2d(dtype=Any), d_col: wp.array3d(dtype=Any),
                       d_delta: wp.array2d(dtype=Any), d_tval: wp.array2d(dtype=Any)):
    r = wp.tid() + offset
    S = sigma.shape[1]
    C = col.shape[2]
    z = t_stop - t_stop
    total = wp.float64(g_trans[r] * trans[r] + g_depth[r] * depth[r])
    for c in range(C):
        total = total + wp.float64(g_color[r, c] * color[r, c])
    T = z + type(z)(1.0)
    prefix = wp.float64(0.0)
    for s in range(S):
        if T < t_stop:
            break
        sg = sigma[r, s]
        tau = wp.max(sg, z) * delta[r, s]
        Tn = T * wp.exp(-tau)
        w = T - Tn
        v = g_depth[r] * tval[r, s]
        for c in range(C):
            v = v + g_color[r, c] * col[r, s, c]
            d_col[r, s, c] = g_color[r, c] * w
        prefix = prefix + wp.float64(w * v)
        dtau = Tn * v - type(z)(total - prefix)
        if sg >= z:
            d_sigma[r, s] = dtau * delta[r, s]
            d_delta[r, s] = dtau * sg
        d_tval[r, s] = g_depth[r] * w
        T = Tn


# ----------------------------------------------------------------------------------------------
# fused march through dense grids
# ----------------------------------------------------------------------------------------------
#
# The grids arrive packed in one table of short vectors: voxel v = (i * Y + j) * Z + k holds Q
# vectors of length L, table[v * Q + q], whose elements are [density, feature 0, ..., feature F-1]
# (zero padded). Emission: L = 4 (Q = ceil((1 + F) / 4)); absorption: L = 1, Q = 1 (the density
# grid itself, no copy). The 8 corners of a sample's cell are the elements o + x sx + y sy + z Q
# (sy = Z Q, sx = Y Z Q; x, y, z in {0, 1}); its 8 trilinear weights are computed once, and every
# lookup is a short-vector multiply-add, every gradient scatter a short-vector add.


@wp.func
def _weights(fx: Any, fy: Any, fz: Any):
    """The 8 trilinear weights; corner order by (x, y, z) bits: 000, 001, 010, 011, 100, ..., 111."""
    one = type(fx)(1.0)
    a = (one - fx) * (one - fy)
    b = (one - fx) * fy
    c = fx * (one - fy)
    d = fx * fy
    return a * (one - fz), a * fz, b * (one - fz), b * fz, c * (one - fz), c * fz, d * (one - fz), d * fz


@wp.func
def _interp(g: wp.array(dtype=Any), a: int, sz: int, sy: int, sx: int, w0: Any, w1: Any, w2: Any, w3: Any,
            w4: Any, w5: Any, w6: Any, w7: Any):
    """Trilinear value of the table vectors at corner elements ``a + {0, sz, sy, ...}``."""
    return (g[a] * w0 + g[a + sz] * w1 + g[a + sy] * w2 + g[a + sy + sz] * w3 + g[a + sx] * w4
            + g[a + sx + sz] * w5 + g[a + sx + sy] * w6 + g[a + sx + sy + sz] * w7)


@wp.func
def _slopes(g: wp.array(dtype=Any), a: int, sz: int, sy: int, sx: int, fx: Any, fy: Any, fz: Any):
    """Derivatives w.r.t. (fx, fy, fz) of the trilinear interpolant of the table vectors."""
    one = type(fx)(1.0)
    c000 = g[a]
    c001 = g[a + sz]
    c010 = g[a + sy]
    c011 = g[a + sy + sz]
    c100 = g[a + sx]
    c101 = g[a + sx + sz]
    c110 = g[a + sx + sy]
    c111 = g[a + sx + sy + sz]
    a0 = c000 * (one - fz) + c001 * fz
    a1 = c010 * (one - fz) + c011 * fz
    b0 = c100 * (one - fz) + c101 * fz
    b1 = c110 * (one - fz) + c111 * fz
    a_ = a0 * (one - fy) + a1 * fy
    b_ = b0 * (one - fy) + b1 * fy
    dx = b_ - a_
    dy = (a1 - a0) * (one - fx) + (b1 - b0) * fx
    dz = ((c001 - c000) * (one - fy) + (c011 - c010) * fy) * (one - fx) + \
        ((c101 - c100) * (one - fy) + (c111 - c110) * fy) * fx
    return dx, dy, dz


@wp.func
def _scatter(g: wp.array(dtype=Any), a: int, sz: int, sy: int, sx: int, v: Any, w0: Any, w1: Any, w2: Any,
             w3: Any, w4: Any, w5: Any, w6: Any, w7: Any):
    """Add ``v`` times the 8 trilinear weights to the corner vectors (plain adds on CPU, where each
    worker owns its buffer; atomic on CUDA)."""
    wp.atomic_add(g, a, v * w0)
    wp.atomic_add(g, a + sz, v * w1)
    wp.atomic_add(g, a + sy, v * w2)
    wp.atomic_add(g, a + sy + sz, v * w3)
    wp.atomic_add(g, a + sx, v * w4)
    wp.atomic_add(g, a + sx + sz, v * w5)
    wp.atomic_add(g, a + sx + sy, v * w6)
    wp.atomic_add(g, a + sx + sy + sz, v * w7)


@wp.func
def _colour_pre(table: wp.array(dtype=Any), a: int, sz: int, sy: int, sx: int, n_vec: int, n_len: int, n_feat: int,
                n_basis: int, basis: wp.array2d(dtype=Any), r: int, acc: wp.array2d(dtype=Any), v0: Any,
                w0: Any, w1: Any, w2: Any, w3: Any, w4: Any, w5: Any, w6: Any, w7: Any):
    """acc[r, c] = sum_b basis[r, b] f_{c n_basis + b}: the pre-activation colours of a sample whose
    first table vector (interpolated) is ``v0``."""
    c = int(0)
    b = int(0)
    vq = v0
    for q in range(n_vec):
        if q > 0:
            vq = _interp(table, a + q, sz, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
        for e in range(n_len):
            f = q * n_len + e - 1  # element 0 is the density
            if f >= 0 and f < n_feat:
                if b == 0:
                    acc[r, c] = basis[r, b] * vq[e]
                else:
                    acc[r, c] = acc[r, c] + basis[r, b] * vq[e]
                b = b + 1
                if b == n_basis:
                    b = 0
                    c = c + 1
    return c


@wp.kernel
def march_forward(offset: int, table: wp.array(dtype=Any), nx: int, ny: int, nz: int, n_vec: int, n_len: int,
                  basis: wp.array2d(dtype=Any), orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any),
                  tn: wp.array(dtype=Any), tf: wp.array(dtype=Any), jit: wp.array(dtype=Any),
                  xf: wp.array2d(dtype=Any), occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any),
                  use_occ: int, bg: wp.array2d(dtype=Any), n_samples: int, n_chan: int,
                  n_basis: int, emission: int, sigmoid: int, t_stop: Any, acc: wp.array2d(dtype=Any),
                  color: wp.array2d(dtype=Any), trans: wp.array(dtype=Any), depth: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    one = z + type(z)(1.0)
    sz = n_vec
    sy = nz * n_vec
    sx = ny * nz * n_vec
    n_feat = n_chan * n_basis
    T = one
    D = z
    for c in range(n_chan):
        color[r, c] = z
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        delta = (t1 - t0) / type(z)(n_samples)
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        jr = jit[r]
        for s in range(n_samples):
            if T < t_stop:
                break
            t = t0 + (type(z)(s) + jr) * delta
            px = ox + t * dx
            py = oy + t * dy
            pz = oz + t * dz
            if use_occ != 0:
                if not _occupied(occ, xo, px, py, pz):
                    continue
            i, fx, mx = _cell(px * xf[0, 0] + xf[1, 0], nx)
            j, fy, my = _cell(py * xf[0, 1] + xf[1, 1], ny)
            k, fz, mz = _cell(pz * xf[0, 2] + xf[1, 2], nz)
            a = ((i * ny + j) * nz + k) * n_vec
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            v0 = _interp(table, a, sz, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            sg = v0[0]
            if sg <= z:  # no absorption and no emission here (weight exactly 0)
                continue
            Tn = T * wp.exp(-sg * delta)
            w = T - Tn
            if emission != 0:
                _colour_pre(table, a, sz, sy, sx, n_vec, n_len, n_feat, n_basis, basis, r, acc, v0,
                            w0, w1, w2, w3, w4, w5, w6, w7)
                for c in range(n_chan):
                    pre = acc[r, c]
                    if sigmoid != 0:
                        pre = one / (one + wp.exp(-pre))
                    color[r, c] = color[r, c] + w * pre
            D = D + w * t
            T = Tn
    for c in range(n_chan):
        color[r, c] = color[r, c] + T * bg[wp.min(r, bg.shape[0] - 1), c]
    trans[r] = T
    depth[r] = D


@wp.kernel
def march_backward(offset: int, table: wp.array(dtype=Any), nx: int, ny: int, nz: int, n_vec: int, n_len: int,
                   basis: wp.array2d(dtype=Any), orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any),
                   tn: wp.array(dtype=Any), tf: wp.array(dtype=Any), jit: wp.array(dtype=Any),
                   xf: wp.array2d(dtype=Any), occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any),
                   use_occ: int, n_samples: int, n_chan: int, n_basis: int, emission: int,
                   sigmoid: int, want_rays: int, t_stop: Any,
                   color: wp.array2d(dtype=Any), trans: wp.array(dtype=Any), depth: wp.array(dtype=Any),
                   g_color: wp.array2d(dtype=Any), g_trans: wp.array(dtype=Any), g_depth: wp.array(dtype=Any),
                   acc: wp.array2d(dtype=Any), d_table: wp.array(dtype=Any), d_basis: wp.array2d(dtype=Any),
                   d_orig: wp.array2d(dtype=Any), d_dirs: wp.array2d(dtype=Any), d_tn: wp.array(dtype=Any),
                   d_tf: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    one = z + type(z)(1.0)
    sz = n_vec
    sy = nz * n_vec
    sx = ny * nz * n_vec
    n_feat = n_chan * n_basis
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        total = wp.float64(g_trans[r] * trans[r] + g_depth[r] * depth[r])
        for c in range(n_chan):
            total = total + wp.float64(g_color[r, c] * color[r, c])
        span = t1 - t0
        fS = type(z)(n_samples)
        delta = span / fS
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        jr = jit[r]
        gdep = g_depth[r]
        T = one
        prefix = wp.float64(0.0)
        g_delta = z
        g_t0 = z
        g_t1 = z
        gox = z
        goy = z
        goz = z
        gdx = z
        gdy = z
        gdz = z
        for s in range(n_samples):
            if T < t_stop:
                break
            frac = (type(z)(s) + jr) / fS
            t = t0 + frac * span
            px = ox + t * dx
            py = oy + t * dy
            pz = oz + t * dz
            if use_occ != 0:
                if not _occupied(occ, xo, px, py, pz):
                    continue
            i, fx, mx = _cell(px * xf[0, 0] + xf[1, 0], nx)
            j, fy, my = _cell(py * xf[0, 1] + xf[1, 1], ny)
            k, fz, mz = _cell(pz * xf[0, 2] + xf[1, 2], nz)
            a = ((i * ny + j) * nz + k) * n_vec
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            v0 = _interp(table, a, sz, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            sg = v0[0]
            if sg < z:  # clamped to 0: no value and no gradient
                continue
            Tn = T * wp.exp(-sg * delta)
            w = T - Tn
            v = gdep * t
            if emission != 0:
                _colour_pre(table, a, sz, sy, sx, n_vec, n_len, n_feat, n_basis, basis, r, acc, v0,
                            w0, w1, w2, w3, w4, w5, w6, w7)
                for c in range(n_chan):
                    pre = acc[r, c]
                    slope = one
                    if sigmoid != 0:
                        pre = one / (one + wp.exp(-pre))
                        slope = pre * (one - pre)
                    v = v + g_color[r, c] * pre
                    acc[r, c] = g_color[r, c] * w * slope  # now: d loss / d pre-activation c
            prefix = prefix + wp.float64(w * v)
            dtau = Tn * v - type(z)(total - prefix)
            gs = dtau * delta
            g_delta = g_delta + dtau * sg
            # per table vector: the gradient w.r.t. its interpolated value, scattered to the corners
            gux = z
            guy = z
            guz = z
            c = int(0)
            b = int(0)
            for q in range(n_vec):
                gq = v0 * z
                vq = v0
                if want_rays != 0 and q > 0:
                    vq = _interp(table, a + q, sz, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
                for e in range(n_len):
                    f = q * n_len + e - 1
                    if f < 0:
                        gq[e] = gs
                    elif f < n_feat:
                        gq[e] = acc[r, c] * basis[r, b]
                        if want_rays != 0:
                            d_basis[r, b] = d_basis[r, b] + acc[r, c] * vq[e]
                        b = b + 1
                        if b == n_basis:
                            b = 0
                            c = c + 1
                _scatter(d_table, a + q, sz, sy, sx, gq, w0, w1, w2, w3, w4, w5, w6, w7)
                if want_rays != 0:  # grid slopes only for ray / basis gradients
                    ex, ey, ez = _slopes(table, a + q, sz, sy, sx, fx, fy, fz)
                    gux = gux + wp.dot(gq, ex)
                    guy = guy + wp.dot(gq, ey)
                    guz = guz + wp.dot(gq, ez)
            # u = (o + t d) * scale + offset, with the clamp's derivative mask
            gpx = gux * mx * xf[0, 0]
            gpy = guy * my * xf[0, 1]
            gpz = guz * mz * xf[0, 2]
            gox = gox + gpx
            goy = goy + gpy
            goz = goz + gpz
            gdx = gdx + gpx * t
            gdy = gdy + gpy * t
            gdz = gdz + gpz * t
            gt = gpx * dx + gpy * dy + gpz * dz + gdep * w
            g_t0 = g_t0 + gt * (one - frac)
            g_t1 = g_t1 + gt * frac
            T = Tn
        d_orig[r, 0] = gox
        d_orig[r, 1] = goy
        d_orig[r, 2] = goz
        d_dirs[r, 0] = gdx
        d_dirs[r, 1] = gdy
        d_dirs[r, 2] = gdz
        d_tn[r] = g_t0 - g_delta / fS
        d_tf[r] = g_t1 + g_delta / fS


# ----------------------------------------------------------------------------------------------
# specialised marches: RGB emission (the density grid and the RGB grid as they are: a scalar array
# and an array of vec3, no packed copy) and absorption only (the density grid)
# ----------------------------------------------------------------------------------------------
#
# The same maths as march_forward / march_backward with straight-line code: no per-sample loops
# over table vectors and channels, colours and gradients kept in registers (the generic kernels
# go through the per-ray scratch ``acc``, which the compiler must treat as memory). The generic
# kernels remain for SH coefficients (sigmoid) and other feature counts.


@wp.kernel
def march_rgb_forward(offset: int, dens: wp.array(dtype=Any), feat: wp.array(dtype=Any), nx: int, ny: int, nz: int,
                      orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any), tn: wp.array(dtype=Any),
                      tf: wp.array(dtype=Any), jit: wp.array(dtype=Any), xf: wp.array2d(dtype=Any),
                      occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any), use_occ: int,
                      bg: wp.array2d(dtype=Any), n_samples: int, t_stop: Any, color: wp.array2d(dtype=Any),
                      trans: wp.array(dtype=Any), depth: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    T = z + type(z)(1.0)
    D = z
    col = feat[0] * z
    sy = nz
    sx = ny * nz
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        delta = (t1 - t0) / type(z)(n_samples)
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        ax = xf[0, 0]
        ay = xf[0, 1]
        az = xf[0, 2]
        bx = xf[1, 0]
        by = xf[1, 1]
        bz = xf[1, 2]
        jr = jit[r]
        # the ray in index coordinates: sample s at u0 + (s + jitter) du
        ux = (ox + t0 * dx) * ax + bx
        uy = (oy + t0 * dy) * ay + by
        uz = (oz + t0 * dz) * az + bz
        dux = dx * ax * delta
        duy = dy * ay * delta
        duz = dz * az * delta
        for s in range(n_samples):
            if T < t_stop:
                break
            q = type(z)(s) + jr
            t = t0 + q * delta
            if use_occ != 0:
                if not _occupied(occ, xo, ox + t * dx, oy + t * dy, oz + t * dz):
                    continue
            i, fx, mx = _cell(ux + q * dux, nx)
            j, fy, my = _cell(uy + q * duy, ny)
            k, fz, mz = _cell(uz + q * duz, nz)
            a = (i * ny + j) * nz + k
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            sg = _interp(dens, a, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            if sg <= z:  # no absorption and no emission here (weight exactly 0)
                continue
            Tn = T * wp.exp(-sg * delta)
            w = T - Tn
            col = col + w * _interp(feat, a, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            D = D + w * t
            T = Tn
    br = wp.min(r, bg.shape[0] - 1)
    color[r, 0] = col[0] + T * bg[br, 0]
    color[r, 1] = col[1] + T * bg[br, 1]
    color[r, 2] = col[2] + T * bg[br, 2]
    trans[r] = T
    depth[r] = D


@wp.kernel
def march_rgb_backward(offset: int, dens: wp.array(dtype=Any), feat: wp.array(dtype=Any), nx: int, ny: int, nz: int,
                       orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any), tn: wp.array(dtype=Any),
                       tf: wp.array(dtype=Any), jit: wp.array(dtype=Any), xf: wp.array2d(dtype=Any),
                       occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any), use_occ: int,
                       n_samples: int, want_rays: int, t_stop: Any, color: wp.array2d(dtype=Any),
                       trans: wp.array(dtype=Any), depth: wp.array(dtype=Any), g_color: wp.array2d(dtype=Any),
                       g_trans: wp.array(dtype=Any), g_depth: wp.array(dtype=Any), d_dens: wp.array(dtype=Any),
                       d_feat: wp.array(dtype=Any), d_orig: wp.array2d(dtype=Any), d_dirs: wp.array2d(dtype=Any),
                       d_tn: wp.array(dtype=Any), d_tf: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    one = z + type(z)(1.0)
    sy = nz
    sx = ny * nz
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        gc = feat[0] * z
        gc[0] = g_color[r, 0]
        gc[1] = g_color[r, 1]
        gc[2] = g_color[r, 2]
        gdep = g_depth[r]
        total = wp.float64(g_trans[r] * trans[r] + gdep * depth[r]) + wp.float64(gc[0] * color[r, 0]) \
            + wp.float64(gc[1] * color[r, 1]) + wp.float64(gc[2] * color[r, 2])
        fS = type(z)(n_samples)
        delta = (t1 - t0) / fS
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        ax = xf[0, 0]
        ay = xf[0, 1]
        az = xf[0, 2]
        bx = xf[1, 0]
        by = xf[1, 1]
        bz = xf[1, 2]
        jr = jit[r]
        # the ray in index coordinates: sample s at u0 + (s + jitter) du
        ux = (ox + t0 * dx) * ax + bx
        uy = (oy + t0 * dy) * ay + by
        uz = (oz + t0 * dz) * az + bz
        dux = dx * ax * delta
        duy = dy * ay * delta
        duz = dz * az * delta
        T = one
        prefix = wp.float64(0.0)
        g_delta = z
        g_t0 = z
        g_t1 = z
        gox = z
        goy = z
        goz = z
        gdx = z
        gdy = z
        gdz = z
        for s in range(n_samples):
            if T < t_stop:
                break
            q = type(z)(s) + jr
            t = t0 + q * delta
            if use_occ != 0:
                if not _occupied(occ, xo, ox + t * dx, oy + t * dy, oz + t * dz):
                    continue
            i, fx, mx = _cell(ux + q * dux, nx)
            j, fy, my = _cell(uy + q * duy, ny)
            k, fz, mz = _cell(uz + q * duz, nz)
            a = (i * ny + j) * nz + k
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            sg = _interp(dens, a, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            if sg < z:  # clamped to 0: no value and no gradient
                continue
            c = _interp(feat, a, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            Tn = T * wp.exp(-sg * delta)
            w = T - Tn
            vv = gdep * t + wp.dot(gc, c)
            prefix = prefix + wp.float64(w * vv)
            dtau = Tn * vv - type(z)(total - prefix)
            g_delta = g_delta + dtau * sg
            gs = dtau * delta
            gcw = gc * w
            _scatter(d_dens, a, 1, sy, sx, gs, w0, w1, w2, w3, w4, w5, w6, w7)
            _scatter(d_feat, a, 1, sy, sx, gcw, w0, w1, w2, w3, w4, w5, w6, w7)
            gt = gdep * w
            if want_rays != 0:  # grid slopes only for ray gradients
                hx, hy, hz = _slopes(dens, a, 1, sy, sx, fx, fy, fz)
                ex, ey, ez = _slopes(feat, a, 1, sy, sx, fx, fy, fz)
                gpx = (gs * hx + wp.dot(gcw, ex)) * mx * ax
                gpy = (gs * hy + wp.dot(gcw, ey)) * my * ay
                gpz = (gs * hz + wp.dot(gcw, ez)) * mz * az
                gox = gox + gpx
                goy = goy + gpy
                goz = goz + gpz
                gdx = gdx + gpx * t
                gdy = gdy + gpy * t
                gdz = gdz + gpz * t
                gt = gt + gpx * dx + gpy * dy + gpz * dz
            frac = q / fS
            g_t0 = g_t0 + gt * (one - frac)
            g_t1 = g_t1 + gt * frac
            T = Tn
        d_orig[r, 0] = gox
        d_orig[r, 1] = goy
        d_orig[r, 2] = goz
        d_dirs[r, 0] = gdx
        d_dirs[r, 1] = gdy
        d_dirs[r, 2] = gdz
        d_tn[r] = g_t0 - g_delta / fS
        d_tf[r] = g_t1 + g_delta / fS


@wp.kernel
def march_abs_forward(offset: int, table: wp.array(dtype=Any), nx: int, ny: int, nz: int,
                      orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any), tn: wp.array(dtype=Any),
                      tf: wp.array(dtype=Any), jit: wp.array(dtype=Any), xf: wp.array2d(dtype=Any),
                      occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any), use_occ: int,
                      bg: wp.array2d(dtype=Any), n_samples: int, t_stop: Any, color: wp.array2d(dtype=Any),
                      trans: wp.array(dtype=Any), depth: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    T = z + type(z)(1.0)
    D = z
    sy = nz
    sx = ny * nz
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        delta = (t1 - t0) / type(z)(n_samples)
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        ax = xf[0, 0]
        ay = xf[0, 1]
        az = xf[0, 2]
        bx = xf[1, 0]
        by = xf[1, 1]
        bz = xf[1, 2]
        jr = jit[r]
        # the ray in index coordinates: sample s at u0 + (s + jitter) du
        ux = (ox + t0 * dx) * ax + bx
        uy = (oy + t0 * dy) * ay + by
        uz = (oz + t0 * dz) * az + bz
        dux = dx * ax * delta
        duy = dy * ay * delta
        duz = dz * az * delta
        for s in range(n_samples):
            if T < t_stop:
                break
            q = type(z)(s) + jr
            t = t0 + q * delta
            if use_occ != 0:
                if not _occupied(occ, xo, ox + t * dx, oy + t * dy, oz + t * dz):
                    continue
            i, fx, mx = _cell(ux + q * dux, nx)
            j, fy, my = _cell(uy + q * duy, ny)
            k, fz, mz = _cell(uz + q * duz, nz)
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            sg = _interp(table, (i * ny + j) * nz + k, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            if sg <= z:
                continue
            Tn = T * wp.exp(-sg * delta)
            D = D + (T - Tn) * t
            T = Tn
    color[r, 0] = T * bg[wp.min(r, bg.shape[0] - 1), 0]
    trans[r] = T
    depth[r] = D


@wp.kernel
def march_abs_backward_image(offset: int, nx: int, ny: int, nz: int, orig: wp.array2d(dtype=Any),
                             dirs: wp.array2d(dtype=Any), tn: wp.array(dtype=Any), tf: wp.array(dtype=Any),
                             jit: wp.array(dtype=Any), xf: wp.array2d(dtype=Any), occ: wp.array3d(dtype=wp.uint8),
                             xo: wp.array2d(dtype=Any), use_occ: int, n_samples: int, color: wp.array2d(dtype=Any),
                             trans: wp.array(dtype=Any), g_color: wp.array2d(dtype=Any), g_trans: wp.array(dtype=Any),
                             d_table: wp.array(dtype=Any)):
    """:func:`march_abs_backward` for the common case it reduces to exactly: no early termination,
    no depth gradient, no ray gradients and a density grid without negative values (so no sample is
    clamped). Then ``dL/dsigma_s = -delta (g_T T + g_c c)`` is the same for every sample of a ray
    and the pass only scatters it: no density gather, no exponentials."""
    r = wp.tid() + offset
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        delta = (t1 - t0) / type(t0)(n_samples)
        gs = -(g_trans[r] * trans[r] + g_color[r, 0] * color[r, 0]) * delta
        sy = nz
        sx = ny * nz
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        ux = (ox + t0 * dx) * xf[0, 0] + xf[1, 0]
        uy = (oy + t0 * dy) * xf[0, 1] + xf[1, 1]
        uz = (oz + t0 * dz) * xf[0, 2] + xf[1, 2]
        dux = dx * xf[0, 0] * delta
        duy = dy * xf[0, 1] * delta
        duz = dz * xf[0, 2] * delta
        jr = jit[r]
        for s in range(n_samples):
            q = type(t0)(s) + jr
            if use_occ != 0:
                t = t0 + q * delta
                if not _occupied(occ, xo, ox + t * dx, oy + t * dy, oz + t * dz):
                    continue
            i, fx, mx = _cell(ux + q * dux, nx)
            j, fy, my = _cell(uy + q * duy, ny)
            k, fz, mz = _cell(uz + q * duz, nz)
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            _scatter(d_table, (i * ny + j) * nz + k, 1, sy, sx, gs, w0, w1, w2, w3, w4, w5, w6, w7)


@wp.kernel
def march_abs_backward(offset: int, table: wp.array(dtype=Any), nx: int, ny: int, nz: int,
                       orig: wp.array2d(dtype=Any), dirs: wp.array2d(dtype=Any), tn: wp.array(dtype=Any),
                       tf: wp.array(dtype=Any), jit: wp.array(dtype=Any), xf: wp.array2d(dtype=Any),
                       occ: wp.array3d(dtype=wp.uint8), xo: wp.array2d(dtype=Any), use_occ: int,
                       n_samples: int, want_rays: int, t_stop: Any, color: wp.array2d(dtype=Any),
                       trans: wp.array(dtype=Any), depth: wp.array(dtype=Any), g_color: wp.array2d(dtype=Any),
                       g_trans: wp.array(dtype=Any), g_depth: wp.array(dtype=Any), d_table: wp.array(dtype=Any),
                       d_orig: wp.array2d(dtype=Any), d_dirs: wp.array2d(dtype=Any), d_tn: wp.array(dtype=Any),
                       d_tf: wp.array(dtype=Any)):
    r = wp.tid() + offset
    z = t_stop - t_stop
    one = z + type(z)(1.0)
    sy = nz
    sx = ny * nz
    t0 = tn[r]
    t1 = tf[r]
    if t1 > t0:
        gdep = g_depth[r]
        total = wp.float64(g_trans[r] * trans[r] + gdep * depth[r]) + wp.float64(g_color[r, 0] * color[r, 0])
        fS = type(z)(n_samples)
        delta = (t1 - t0) / fS
        ox = orig[r, 0]
        oy = orig[r, 1]
        oz = orig[r, 2]
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        ax = xf[0, 0]
        ay = xf[0, 1]
        az = xf[0, 2]
        bx = xf[1, 0]
        by = xf[1, 1]
        bz = xf[1, 2]
        jr = jit[r]
        # the ray in index coordinates: sample s at u0 + (s + jitter) du
        ux = (ox + t0 * dx) * ax + bx
        uy = (oy + t0 * dy) * ay + by
        uz = (oz + t0 * dz) * az + bz
        dux = dx * ax * delta
        duy = dy * ay * delta
        duz = dz * az * delta
        T = one
        prefix = wp.float64(0.0)
        g_delta = z
        g_t0 = z
        g_t1 = z
        gox = z
        goy = z
        goz = z
        gdx = z
        gdy = z
        gdz = z
        for s in range(n_samples):
            if T < t_stop:
                break
            q = type(z)(s) + jr
            t = t0 + q * delta
            if use_occ != 0:
                if not _occupied(occ, xo, ox + t * dx, oy + t * dy, oz + t * dz):
                    continue
            i, fx, mx = _cell(ux + q * dux, nx)
            j, fy, my = _cell(uy + q * duy, ny)
            k, fz, mz = _cell(uz + q * duz, nz)
            a = (i * ny + j) * nz + k
            w0, w1, w2, w3, w4, w5, w6, w7 = _weights(fx, fy, fz)
            sg = _interp(table, a, 1, sy, sx, w0, w1, w2, w3, w4, w5, w6, w7)
            if sg < z:  # clamped to 0: no value and no gradient
                continue
            Tn = T * wp.exp(-sg * delta)
            w = T - Tn
            vv = gdep * t
            prefix = prefix + wp.float64(w * vv)
            dtau = Tn * vv - type(z)(total - prefix)
            g_delta = g_delta + dtau * sg
            gs = dtau * delta
            _scatter(d_table, a, 1, sy, sx, gs, w0, w1, w2, w3, w4, w5, w6, w7)
            gt = gdep * w
            if want_rays != 0:
                ex, ey, ez = _slopes(table, a, 1, sy, sx, fx, fy, fz)
                gpx = gs * ex * mx * ax
                gpy = gs * ey * my * ay
                gpz = gs * ez * mz * az
                gox = gox + gpx
                goy = goy + gpy
                goz = goz + gpz
                gdx = gdx + gpx * t
                gdy = gdy + gpy * t
                gdz = gdz + gpz * t
                gt = gt + gpx * dx + gpy * dy + gpz * dz
            frac = q / fS
            g_t0 = g_t0 + gt * (one - frac)
            g_t1 = g_t1 + gt * frac
            T = Tn
        d_orig[r, 0] = gox
        d_orig[r, 1] = goy
        d_orig[r, 2] = goz
        d_dirs[r, 0] = gdx
        d_dirs[r, 1] = gdy
        d_dirs[r, 2] = gdz
        d_tn[r] = g_t0 - g_delta / fS
        d_tf[r] = g_t1 + g_delta / fS


# ----------------------------------------------------------------------------------------------
# launching
# ----------------------------------------------------------------------------------------------

def _workers(device: torch.device, n: int, min_per_thread: int = 64) -> int:
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n // min_per_thread))


_WARM: set = set()
_WARM_LOCK = threading.Lock()


def _launch(kernel, n: int, args_for, device: torch.device, workers: int, spec, work: torch.Tensor | None = None) -> None:
    """Launch ``kernel(offset, *args)`` over ``n`` threads, in ``workers`` chunks on CPU
    (``args_for(w)`` gives chunk ``w`` its arguments, e.g. its own gradient buffers). ``spec``
    names the kernel's specialisation (its argument types: dtype, table vector length). ``work``:
    (n,) estimated cost per thread; the chunks then get equal shares of it (else equal counts)."""
    if n == 0:
        return
    wdev = warp_device(device)
    stream = _stream(device)   # the bridge's stream policy: Warp runs on torch's current stream
    key = (kernel.key, spec, wdev)
    if key not in _WARM:
        # the first launch of a generic kernel's specialisation resolves it: never concurrently
        with _WARM_LOCK:
            wp.launch(kernel, dim=n, inputs=[0] + args_for(0), device=wdev, stream=stream, record_tape=False)
            _WARM.add(key)
    elif workers <= 1:
        wp.launch(kernel, dim=n, inputs=[0] + args_for(0), device=wdev, stream=stream, record_tape=False)
    else:
        kernel.module.load(wdev)
        b = _bounds(n, workers, work)
        run_split([functools.partial(wp.launch, kernel, dim=b[w + 1] - b[w], inputs=[b[w]] + args_for(w),
                                     device=wdev, stream=stream, record_tape=False)
                   for w in range(workers) if b[w + 1] > b[w]])


def _bounds(n: int, workers: int, work: torch.Tensor | None) -> list[int]:
    """Chunk boundaries ``0 = b_0 <= ... <= b_workers = n``: equal counts, or equal shares of ``work``."""
    if work is None or work.numel() != n:
        chunk = (n + workers - 1) // workers
        return [min(w * chunk, n) for w in range(workers)] + [n]
    c = torch.cumsum(work.detach().to(device="cpu", dtype=torch.float64), 0)
    if not c[-1] > 0:
        return _bounds(n, workers, None)
    cuts = torch.searchsorted(c, c[-1] * torch.arange(1, workers, dtype=torch.float64) / workers) + 1
    return [0] + [int(x) for x in cuts.clamp(0, n)] + [n]


def _w(t: torch.Tensor):
    return to_warp(t.contiguous())


def _scalar(x: float, like: torch.Tensor):
    return wp.float64(x) if like.dtype == torch.float64 else wp.float32(x)


class _CompositeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma, col, delta, tval, bg, t_stop):
        N, S = sigma.shape
        C = col.shape[2]
        dev = sigma.device
        color = torch.empty(N, C, dtype=sigma.dtype, device=dev)
        trans = torch.empty(N, dtype=sigma.dtype, device=dev)
        depth = torch.empty(N, dtype=sigma.dtype, device=dev)
        args = [_w(sigma), _w(col), _w(delta), _w(tval), _w(bg), _scalar(t_stop, sigma), _w(color), _w(trans),
                _w(depth)]
        _launch(composite_forward, N, lambda w: args, dev, _workers(dev, N), sigma.dtype)
        ctx.save_for_backward(sigma, col, delta, tval, color, trans, depth)
        ctx.t_stop = t_stop
        ctx.bg_rows = bg.shape[0]
        return color, trans, depth

    @staticmethod
    def backward(ctx, g_color, g_trans, g_depth):
        sigma, col, delta, tval, color, trans, depth = ctx.saved_tensors
        N, S = sigma.shape
        dev = sigma.device
        g_color = torch.zeros_like(color) if g_color is None else g_color.contiguous()
        g_trans = torch.zeros_like(trans) if g_trans is None else g_trans.contiguous()
        g_depth = torch.zeros_like(depth) if g_depth is None else g_depth.contiguous()
        d_sigma = torch.zeros_like(sigma)
        d_col = torch.zeros_like(col)
        d_delta = torch.zeros_like(delta)
        d_tval = torch.zeros_like(tval)
        args = [_w(sigma), _w(col), _w(delta), _w(tval), _scalar(ctx.t_stop, sigma), _w(color), _w(trans),
                _w(depth), _w(g_color), _w(g_trans), _w(g_depth), _w(d_sigma), _w(d_col), _w(d_delta), _w(d_tval)]
        _launch(composite_backward, N, lambda w: args, dev, _workers(dev, N), sigma.dtype)
        d_bg = g_color * trans[:, None]
        if ctx.bg_rows == 1:
            d_bg = d_bg.sum(0, keepdim=True)
        return d_sigma, d_col, d_delta, d_tval, d_bg, None


def composite(sigma, col, delta, tval, bg, t_stop: float):
    """Warp compositing of ``N`` rays x ``S`` samples: sigma, delta, tval (N, S); col (N, S, C);
    bg (1 or N, C). Returns colour (N, C), transmittance (N,), depth (N,). Inputs are trusted
    (validated by :func:`diffvc.render.volume.composite_rays`)."""
    return _CompositeFn.apply(sigma.contiguous(), col.contiguous(), delta.contiguous(), tval.contiguous(),
                              bg.contiguous(), float(t_stop))


def _pack(dens: torch.Tensor, feat: torch.Tensor, emission: int) -> tuple[torch.Tensor, int, int]:
    """The kernels' grid table (see the section comment above the march kernels): (V * Q, L) with
    its Q and L."""
    if not emission:
        return dens.reshape(-1, 1), 1, 1
    V, F = dens.numel(), feat.shape[3]
    Q = (F + 4) // 4
    table = dens.new_empty(V, 4 * Q)
    table[:, 0] = dens.reshape(-1)
    table[:, 1:1 + F] = feat.reshape(V, F)
    if 4 * Q > 1 + F:
        table[:, 1 + F:] = 0
    return table.reshape(V * Q, 4), Q, 4


def _variant(emission: int, sigmoid: int, n_chan: int, n_basis: int) -> str:
    """Which march kernels serve a call: ``"abs"`` (absorption only: the density grid),
    ``"rgb"`` (RGB features used as is: the density grid and the (X, Y, Z, 3) grid read in place)
    or ``"generic"`` (SH coefficients with a sigmoid, or another number of feature channels: the
    packed table)."""
    if not emission:
        return "abs"
    if not sigmoid and n_basis == 1 and n_chan == 3:
        return "rgb"
    return "generic"


def _grid_args(dens: torch.Tensor, feat: torch.Tensor, variant: str) -> tuple[list, torch.Tensor | None, int, int]:
    """The kernels' grid arguments, the packed table they read (generic variant, else None), its Q, L."""
    if variant == "generic":
        table, Q, L = _pack(dens, feat, 1)
        return [_grid_arg(table), *dens.shape, Q, L], table, Q, L
    arrays = [_grid_arg(dens)] + ([_grid_arg(feat)] if variant == "rgb" else [])
    return arrays + list(dens.shape), None, 1, 1


class _MarchFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dens, feat, basis, orig, dirs, tn, tf, jit, bg, xf, occ, xo, opts):
        n_samples, n_chan, n_basis, emission, sigmoid, t_stop, use_occ = opts
        N = orig.shape[0]
        dev = orig.device
        variant = _variant(emission, sigmoid, n_chan, n_basis)
        color = torch.empty(N, n_chan, dtype=orig.dtype, device=dev)
        trans = torch.empty(N, dtype=orig.dtype, device=dev)
        depth = torch.empty(N, dtype=orig.dtype, device=dev)
        grid, table, Q, L = _grid_args(dens, feat, variant)
        ray_args = [_w(orig), _w(dirs), _w(tn), _w(tf), _w(jit), _w(xf), _w(occ), _w(xo), use_occ]
        if variant == "generic":
            acc = orig.new_empty(N, n_chan)  # per-ray scratch: a sample's colours before activation
            args = grid + [_w(basis), *ray_args, _w(bg), n_samples, n_chan, n_basis, emission, sigmoid,
                           _scalar(t_stop, orig), _w(acc), _w(color), _w(trans), _w(depth)]
            kernel = march_forward
        else:
            args = grid + [*ray_args, _w(bg), n_samples, _scalar(t_stop, orig), _w(color), _w(trans), _w(depth)]
            kernel = march_rgb_forward if variant == "rgb" else march_abs_forward
        work = (tf > tn) if dev.type == "cpu" else None  # a ray that misses the box costs ~nothing
        _launch(kernel, N, lambda w: args, dev, _workers(dev, N), (orig.dtype, L), work)
        del table, grid, args  # re-packed in backward: the forward keeps no copy of the grids
        ctx.save_for_backward(dens, feat, basis, orig, dirs, tn, tf, jit, xf, occ, xo, color, trans, depth)
        ctx.opts = opts
        ctx.bg_rows = bg.shape[0]
        return color, trans, depth

    @staticmethod
    def backward(ctx, g_color, g_trans, g_depth):
        dens, feat, basis, orig, dirs, tn, tf, jit, xf, occ, xo, color, trans, depth = ctx.saved_tensors
        n_samples, n_chan, n_basis, emission, sigmoid, t_stop, use_occ = ctx.opts
        variant = _variant(emission, sigmoid, n_chan, n_basis)
        N = orig.shape[0]
        dev = orig.device
        g_color = torch.zeros_like(color) if g_color is None else g_color.contiguous()
        g_trans = torch.zeros_like(trans) if g_trans is None else g_trans.contiguous()
        g_depth = torch.zeros_like(depth) if g_depth is None else g_depth.contiguous()
        workers = _workers(dev, N)
        grid, table, Q, L = _grid_args(dens, feat, variant)
        # private grid-gradient buffers per CPU worker (CPU atomics are not atomic across threads);
        # worker 0's are the returned gradients (the others are added to them)
        if variant == "generic":
            bufs = [[torch.zeros_like(table)] for _ in range(workers)]
        elif variant == "rgb":
            bufs = [[torch.zeros_like(dens), torch.zeros_like(feat)] for _ in range(workers)]
        else:
            bufs = [[torch.zeros_like(dens)] for _ in range(workers)]
        wbufs = [[_grid_arg(x) for x in b] for b in bufs]
        d_basis = torch.zeros_like(basis)
        d_orig = torch.zeros_like(orig)
        d_dirs = torch.zeros_like(dirs)
        d_tn = torch.zeros_like(tn)
        d_tf = torch.zeros_like(tf)
        want_rays = int(any(ctx.needs_input_grad[2:7]))  # basis, origins, directions, t_near, t_far
        ray_args = [_w(orig), _w(dirs), _w(tn), _w(tf), _w(jit), _w(xf), _w(occ), _w(xo), use_occ]
        outs = [_w(color), _w(trans), _w(depth), _w(g_color), _w(g_trans), _w(g_depth)]
        tail = [_w(d_orig), _w(d_dirs), _w(d_tn), _w(d_tf)]
        if variant == "generic":
            acc = orig.new_empty(N, n_chan)
            shared = grid + [_w(basis), *ray_args, n_samples, n_chan, n_basis, emission, sigmoid, want_rays,
                             _scalar(t_stop, orig), *outs, _w(acc)]
            tail = [_w(d_basis)] + tail
            kernel = march_backward
        elif variant == "abs" and not want_rays and t_stop <= 0 and not bool(g_depth.any()) and \
                not bool((dens.detach() < 0).any()):
            # image-only loss on a non-negative grid: every sample of a ray gets the same gradient
            shared = [*dens.shape, *ray_args, n_samples, _w(color), _w(trans), _w(g_color), _w(g_trans)]
            kernel = march_abs_backward_image
            tail = []
        else:
            shared = grid + [*ray_args, n_samples, want_rays, _scalar(t_stop, orig), *outs]
            kernel = march_rgb_backward if variant == "rgb" else march_abs_backward
        work = (tf > tn) if dev.type == "cpu" else None
        _launch(kernel, N, lambda w: shared + wbufs[w] + tail, dev, workers, (orig.dtype, L), work)
        del table, grid, shared, wbufs
        gd = gf = None
        if variant == "generic":  # sum the workers' tables and unpack them in one pass
            gts = [b[0].reshape(dens.numel(), Q * L) for b in bufs]
            del bufs
            if ctx.needs_input_grad[0]:
                gd = _sum_columns(gts, slice(0, 1)).reshape(dens.shape)
            if ctx.needs_input_grad[1]:
                gf = _sum_columns(gts, slice(1, 1 + feat.shape[3])).reshape(feat.shape)
        else:
            for b in bufs[1:]:
                for x, y in zip(bufs[0], b):
                    x += y
            gd = bufs[0][0]
            gf = bufs[0][1] if variant == "rgb" and ctx.needs_input_grad[1] else None
        d_bg = g_color * trans[:, None]
        if ctx.bg_rows == 1:
            d_bg = d_bg.sum(0, keepdim=True)
        return gd, gf, d_basis, d_orig, d_dirs, d_tn, d_tf, None, d_bg, None, None, None, None


def _grid_arg(x: torch.Tensor):
    """Warp view of a grid buffer: the packed table (V * Q, 4) and an RGB grid (X, Y, Z, 3) as
    arrays of vectors, a density grid (X, Y, Z) as a flat scalar array."""
    if x.dim() == 2:
        return to_warp(vec(x))
    if x.dim() == 4:
        return to_warp(vec(x.reshape(-1, x.shape[3])))
    return to_warp(x.reshape(-1))


def _sum_columns(parts: list, cols: slice) -> torch.Tensor:
    """``sum_k parts[k][:, cols]`` as a new contiguous tensor (one pass over the buffers)."""
    out = parts[0][:, cols].clone(memory_format=torch.contiguous_format) if len(parts) == 1 else \
        torch.add(parts[0][:, cols], parts[1][:, cols])
    for x in parts[2:]:
        out += x[:, cols]
    return out


def march_grid(dens, feat, basis, orig, dirs, tn, tf, jit, bg, xf, n_samples: int, emission: bool, sigmoid: bool,
               t_stop: float, occ=None, xo=None):
    """Fused Warp march through dense grids. dens (X, Y, Z); feat (X, Y, Z, C*K) channels last
    (ignored unless ``emission``); basis (N, K); orig, dirs (N, 3); tn, tf, jit (N,); bg (1 or N, C);
    xf (2, 3): per-axis index map ``u = x * xf[0] + xf[1]``; occ (A, B, C) uint8 occupancy cells
    (samples in a zero cell are skipped) with its map ``xo`` (cell = floor(x * xo[0] + xo[1])), or
    None. Returns colour (N, C), transmittance
    (N,), depth (N,). Inputs are trusted (validated by :func:`diffvc.render.volume.render_grid`)."""
    n_chan = bg.shape[1]
    n_basis = basis.shape[1]
    use_occ = int(occ is not None)
    opts = (int(n_samples), int(n_chan), int(n_basis), int(bool(emission)), int(bool(sigmoid)), float(t_stop), use_occ)
    c = lambda t: t.contiguous()  # noqa: E731
    if occ is None:  # not read (use_occ = 0)
        occ = torch.ones(1, 1, 1, dtype=torch.uint8, device=orig.device)
        xo = torch.zeros(2, 3, dtype=orig.dtype, device=orig.device)
    return _MarchFn.apply(c(dens), c(feat), c(basis), c(orig), c(dirs), c(tn), c(tf), c(jit), c(bg), c(xf),
                          c(occ.to(torch.uint8)), c(xo.to(orig.dtype)), opts)


__all__ = ["composite", "march_grid"]
