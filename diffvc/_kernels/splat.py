"""Warp kernels for Gaussian splat rasterization (front-to-back alpha compositing per pixel).

Inputs are screen-space Gaussians per view ``b``: ``means2d[b, g] = (u, v)`` in pixels (pixel
centres at +0.5), ``conics[b, g] = (a, b, c)`` the upper triangle of the inverse 2D covariance,
``opac[b, g]`` in [0, 1] and ``feats[b, g]`` four composited features (RGB and view depth). A tile
list (``starts`` (B * tiles + 1,), ``ids`` (M,)) gives, per view and tile, the Gaussians whose
3-sigma box touches the tile, sorted front to back (built in torch by
:func:`diffvc.render.splat.bin_gaussians`).

Per pixel, walking the tile's list in order (as in 3D Gaussian splatting):

* ``power = -(a dx^2 + c dy^2) / 2 - b dx dy`` with ``(dx, dy) = pixel centre - mean``; a Gaussian
  with ``power > 0`` (numerically outside) is skipped;
* ``alpha = min(0.99, o exp(power))``; skipped when ``alpha < 1/255``;
* compositing stops before the Gaussian that would drop the transmittance below ``1e-4``;
* ``out = sum_i f_i alpha_i T_i`` and ``T_final = prod_i (1 - alpha_i)``.

Threads are pixels ordered tile-major (``tid -> (view, tile, pixel in tile)``), so a contiguous
range of threads is a set of whole tiles: the forward writes only its own pixel and is split over
CPU cores as is. The backward (hand-written, reverse compositing order: transmittance recovered
as ``T_i = T_{i+1} / (1 - alpha_i)``, the colour behind accumulated on the way) scatters into
per-Gaussian gradients; each CPU thread range gets private gradient buffers, summed
afterwards, because Warp CPU atomics are not atomic across threads. Per pixel only ``T_final``
and the end of its list (``last``) are stored.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import parallel_launch, wp
from .bridge import split_chunks
from .raster import _instantiate

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
P_MIN = -5.6  # exp(-5.6) = 0.0037 < 1/255: below this power a Gaussian is skipped in any case


@wp.kernel
def splat_forward(offset: int, means2d: wp.array(dtype=Any, ndim=3), conics: wp.array(dtype=Any, ndim=3),
                  opac: wp.array(dtype=Any, ndim=2), feats: wp.array(dtype=Any, ndim=3),
                  starts: wp.array(dtype=wp.int32), ids: wp.array(dtype=wp.int32), H: int, W: int, tile: int,
                  tiles_x: int, tiles_y: int,
                  out: wp.array(dtype=Any, ndim=4), trans: wp.array(dtype=Any, ndim=3),
                  last: wp.array(dtype=wp.int32, ndim=3)):
    t = wp.tid() + offset
    tp = tile * tile
    bt = t // tp
    loc = t - bt * tp
    nt = tiles_x * tiles_y
    b = bt // nt
    k = bt - b * nt
    ty = k // tiles_x
    tx = k - ty * tiles_x
    ly = loc // tile
    y = ty * tile + ly
    x = tx * tile + loc - ly * tile
    if x < W and y < H:
        w0 = opac[0, 0]
        zero = type(w0)(0.0)
        one = type(w0)(1.0)
        half = type(w0)(0.5)
        amax = type(w0)(ALPHA_MAX)
        amin = type(w0)(ALPHA_MIN)
        tmin = type(w0)(T_MIN)
        pmin = type(w0)(P_MIN)
        px = type(w0)(x) + half
        py = type(w0)(y) + half
        T = one
        f0 = zero
        f1 = zero
        f2 = zero
        f3 = zero
        s = starts[bt]
        end = s
        for e in range(s, starts[bt + 1]):
            g = ids[e]
            dx = px - means2d[b, g, 0]
            dy = py - means2d[b, g, 1]
            power = -half * (conics[b, g, 0] * dx * dx + conics[b, g, 2] * dy * dy) - conics[b, g, 1] * dx * dy
            # power < -5.6 gives alpha < exp(-5.6) < 1/255 (opacity <= 1): skip without the exp
            if power <= zero and power >= pmin:
                a = wp.min(amax, opac[b, g] * wp.exp(power))
                if a >= amin:
                    tn = T * (one - a)
                    if tn < tmin:
                        break
                    wgt = a * T
                    f0 = f0 + wgt * feats[b, g, 0]
                    f1 = f1 + wgt * feats[b, g, 1]
                    f2 = f2 + wgt * feats[b, g, 2]
                    f3 = f3 + wgt * feats[b, g, 3]
                    T = tn
                    end = e + 1
        out[b, y, x, 0] = f0
        out[b, y, x, 1] = f1
        out[b, y, x, 2] = f2
        out[b, y, x, 3] = f3
        trans[b, y, x] = T
        last[b, y, x] = end


@wp.kernel
def splat_backward(offset: int, means2d: wp.array(dtype=Any, ndim=3), conics: wp.array(dtype=Any, ndim=3),
                   opac: wp.array(dtype=Any, ndim=2), feats: wp.array(dtype=Any, ndim=3),
                   starts: wp.array(dtype=wp.int32), ids: wp.array(dtype=wp.int32), H: int, W: int, tile: int,
                   tiles_x: int, tiles_y: int, trans: wp.array(dtype=Any, ndim=3),
                   last: wp.array(dtype=wp.int32, ndim=3), g_out: wp.array(dtype=Any, ndim=4),
                   g_trans: wp.array(dtype=Any, ndim=3),
                   g_means2d: wp.array(dtype=Any, ndim=3), g_conics: wp.array(dtype=Any, ndim=3),
                   g_opac: wp.array(dtype=Any, ndim=2), g_feats: wp.array(dtype=Any, ndim=3)):
    """Adds d(loss)/d(inputs) of :func:`splat_forward` for one pixel (atomics: give every CPU
    thread range its own gradient buffers)."""
    t = wp.tid() + offset
    tp = tile * tile
    bt = t // tp
    loc = t - bt * tp
    nt = tiles_x * tiles_y
    b = bt // nt
    k = bt - b * nt
    ty = k // tiles_x
    tx = k - ty * tiles_x
    ly = loc // tile
    y = ty * tile + ly
    x = tx * tile + loc - ly * tile
    if x < W and y < H:
        w0 = opac[0, 0]
        zero = type(w0)(0.0)
        one = type(w0)(1.0)
        half = type(w0)(0.5)
        amax = type(w0)(ALPHA_MAX)
        amin = type(w0)(ALPHA_MIN)
        pmin = type(w0)(P_MIN)
        px = type(w0)(x) + half
        py = type(w0)(y) + half
        Tf = trans[b, y, x]
        T = Tf
        gT = g_trans[b, y, x]
        go0 = g_out[b, y, x, 0]
        go1 = g_out[b, y, x, 1]
        go2 = g_out[b, y, x, 2]
        go3 = g_out[b, y, x, 3]
        S0 = zero
        S1 = zero
        S2 = zero
        S3 = zero
        s = starts[bt]
        end = last[b, y, x]
        for j in range(end - s):
            e = end - 1 - j
            g = ids[e]
            dx = px - means2d[b, g, 0]
            dy = py - means2d[b, g, 1]
            ca = conics[b, g, 0]
            cb = conics[b, g, 1]
            cc = conics[b, g, 2]
            power = -half * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
            if power <= zero and power >= pmin:
                G = wp.exp(power)
                o = opac[b, g]
                a_raw = o * G
                a = wp.min(amax, a_raw)
                if a >= amin:
                    ra = one / (one - a)
                    T = T * ra  # transmittance in front of this Gaussian
                    wgt = a * T
                    c0 = feats[b, g, 0]
                    c1 = feats[b, g, 1]
                    c2 = feats[b, g, 2]
                    c3 = feats[b, g, 3]
                    wp.atomic_add(g_feats, b, g, 0, go0 * wgt)
                    wp.atomic_add(g_feats, b, g, 1, go1 * wgt)
                    wp.atomic_add(g_feats, b, g, 2, go2 * wgt)
                    wp.atomic_add(g_feats, b, g, 3, go3 * wgt)
                    dA = (go0 * (c0 * T - S0 * ra) + go1 * (c1 * T - S1 * ra) + go2 * (c2 * T - S2 * ra)
                          + go3 * (c3 * T - S3 * ra) - gT * Tf * ra)
                    S0 = S0 + c0 * wgt
                    S1 = S1 + c1 * wgt
                    S2 = S2 + c2 * wgt
                    S3 = S3 + c3 * wgt
                    if a_raw < amax:
                        wp.atomic_add(g_opac, b, g, dA * G)
                        dp = dA * a
                        wp.atomic_add(g_means2d, b, g, 0, dp * (ca * dx + cb * dy))
                        wp.atomic_add(g_means2d, b, g, 1, dp * (cb * dx + cc * dy))
                        wp.atomic_add(g_conics, b, g, 0, -half * dp * dx * dx)
                        wp.atomic_add(g_conics, b, g, 1, -dp * dx * dy)
                        wp.atomic_add(g_conics, b, g, 2, -half * dp * dy * dy)


_instantiate(splat_forward)
_instantiate(splat_backward)


def _grid(B: int, H: int, W: int, tile: int) -> tuple[int, int, int]:
    tiles_x = (W + tile - 1) // tile
    tiles_y = (H + tile - 1) // tile
    return tiles_x, tiles_y, B * tiles_x * tiles_y * tile * tile


class _SplatRaster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opac, feats, starts, ids, H, W, tile):
        B = means2d.shape[0]
        tiles_x, tiles_y, n = _grid(B, H, W, tile)
        dev, dt = means2d.device, means2d.dtype
        out = torch.empty((B, H, W, 4), dtype=dt, device=dev)  # every pixel written by its thread
        trans = torch.empty((B, H, W), dtype=dt, device=dev)
        last = torch.empty((B, H, W), dtype=torch.int32, device=dev)
        parallel_launch(splat_forward, n, [means2d, conics, opac, feats, starts, ids, H, W, tile, tiles_x, tiles_y],
                        [out, trans, last], min_per_thread=1024)
        ctx.mark_non_differentiable(last)
        ctx.geom = (H, W, tile, tiles_x, tiles_y, n)
        ctx.save_for_backward(means2d, conics, opac, feats, starts, ids, trans, last)
        return out, trans, last

    @staticmethod
    def backward(ctx, g_out, g_trans, _g_last):
        means2d, conics, opac, feats, starts, ids, trans, last = ctx.saved_tensors
        H, W, tile, tiles_x, tiles_y, n = ctx.geom
        B, N = opac.shape
        dev, dt = means2d.device, means2d.dtype
        g_out = torch.zeros((B, H, W, 4), dtype=dt, device=dev) if g_out is None else g_out.contiguous()
        g_trans = torch.zeros((B, H, W), dtype=dt, device=dev) if g_trans is None else g_trans.contiguous()
        P = len(split_chunks(n, dev, min_per_thread=1024))
        gm = torch.zeros((P, B, N, 2), dtype=dt, device=dev)
        gc = torch.zeros((P, B, N, 3), dtype=dt, device=dev)
        go = torch.zeros((P, B, N), dtype=dt, device=dev)
        gf = torch.zeros((P, B, N, 4), dtype=dt, device=dev)
        args = [means2d, conics, opac, feats, starts, ids, H, W, tile, tiles_x, tiles_y, trans, last, g_out, g_trans]
        # one set of gradient buffers per thread range (Warp CPU atomics are not atomic across threads)
        parallel_launch(splat_backward, n, args, lambda c: [gm[c], gc[c], go[c], gf[c]], device=dev,
                        min_per_thread=1024)
        return gm.sum(0), gc.sum(0), go.sum(0), gf.sum(0), None, None, None, None, None


def splat_raster_op(means2d, conics, opac, feats, starts, ids, H: int, W: int, tile: int):
    """Composite per-view splats front to back: ``(out (B, H, W, 4), trans (B, H, W), last (B, H, W))``.

    Differentiable w.r.t. ``means2d`` (B, N, 2), ``conics`` (B, N, 3), ``opac`` (B, N) and
    ``feats`` (B, N, 4) through the hand-written reverse-order adjoint.
    """
    return _SplatRaster.apply(means2d.contiguous(), conics.contiguous(), opac.contiguous(), feats.contiguous(),
                              starts, ids, int(H), int(W), int(tile))
