"""Warp kernels for the multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022) and
its autograd bridge. The plain-torch twin is :meth:`diffvc.geometry.HashGridEncoding.forward_torch`.

One thread per point, looping over the levels (so each thread owns its output row and its point
gradient), generic over float32 / float64. Per point ``x`` and level ``l`` (resolution ``r_l``)::

    u = clamp((x - lo) * inv, 0, 1),  p = u r_l,  b = min(floor(p), r_l - 1),  f = p - b
    y[l F + c] = sum over the 8 corners k of  w_k(f) * table[start_l + index_l(b + k), c]

with ``w_k`` the trilinear weights and ``index_l`` the dense index ``(i (r+1) + j) (r+1) + k`` on
levels whose ``(r+1)^3`` nodes fit their table, else the spatial hash
``(i * 1) xor (j * 2654435761) xor (k * 805459861)`` taken modulo the (power-of-two) table size in
32-bit unsigned arithmetic (the same rows as the twin's 64-bit products: the low bits agree).

Backward (hand-written, ``enable_backward=False``): ``d table[row] += w_k g_y`` (scattered; on CPU
each launch chunk gets its own table-gradient buffer, Warp's CPU atomics are not atomic across
threads, summed afterwards) and ``d x_a = sum_{l,k,c} g_y table[row, c] dw_k/df_a r_l inv_a`` where
``0 <= u_a <= 1`` (0 where the clamp is active, as torch's clamp). Second derivatives (an eikonal
loss through a :class:`~diffvc.geometry.NeuralField`) go through the torch twin: when the backward
runs under ``create_graph=True`` it recomputes the level features with the twin and differentiates
them with graph (first-order results are the kernel's).
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import parallel_launch, split_chunks, twin_backward, wp

wp.set_module_options({"enable_backward": False})

_P1 = wp.constant(wp.uint32(2654435761))
_P2 = wp.constant(wp.uint32(805459861))


@wp.func
def _row(lv: wp.array2d(dtype=int), l: int, i: int, j: int, k: int):
    """Table row of grid node (i, j, k) on level l: dense index, or the spatial hash."""
    r1 = lv[l, 0] + 1
    idx = int(0)
    if lv[l, 3] != 0:
        idx = (i * r1 + j) * r1 + k
    else:
        h = wp.uint32(i) ^ (wp.uint32(j) * _P1) ^ (wp.uint32(k) * _P2)
        idx = int(h & wp.uint32(lv[l, 2] - 1))
    return lv[l, 1] + idx


@wp.func
def _axis(x: Any, lo: Any, inv: Any, r: int):
    """Cell, fraction and d fraction / d x of coordinate x on a level of resolution r."""
    z = x - x
    one = z + type(x)(1.0)
    u = (x - lo) * inv
    m = wp.where(u >= z and u <= one, inv * type(x)(r), z)
    u = wp.clamp(u, z, one)
    p = u * type(x)(r)
    b = wp.min(int(wp.floor(p)), r - 1)
    return b, p - type(x)(b), m


@wp.kernel
def hash_forward(offset: int, x: wp.array2d(dtype=Any), box: wp.array2d(dtype=Any), lv: wp.array2d(dtype=int),
                 table: wp.array2d(dtype=Any), y: wp.array2d(dtype=Any)):
    n = wp.tid() + offset
    F = table.shape[1]
    L = lv.shape[0]
    for l in range(L):
        r = lv[l, 0]
        bx, fx, mx = _axis(x[n, 0], box[0, 0], box[1, 0], r)
        by, fy, my = _axis(x[n, 1], box[0, 1], box[1, 1], r)
        bz, fz, mz = _axis(x[n, 2], box[0, 2], box[1, 2], r)
        one = fx - fx + type(fx)(1.0)
        for c in range(F):
            y[n, l * F + c] = fx - fx
        for k in range(8):
            ix = (k >> 2) & 1
            iy = (k >> 1) & 1
            iz = k & 1
            wx = wp.where(ix == 1, fx, one - fx)
            wy = wp.where(iy == 1, fy, one - fy)
            wz = wp.where(iz == 1, fz, one - fz)
            w = wx * wy * wz
            row = _row(lv, l, bx + ix, by + iy, bz + iz)
            for c in range(F):
                y[n, l * F + c] = y[n, l * F + c] + w * table[row, c]


@wp.kernel
def hash_backward(offset: int, x: wp.array2d(dtype=Any), box: wp.array2d(dtype=Any), lv: wp.array2d(dtype=int),
                  table: wp.array2d(dtype=Any), gy: wp.array2d(dtype=Any), want_x: int,
                  gtable: wp.array2d(dtype=Any), gx: wp.array2d(dtype=Any)):
    n = wp.tid() + offset
    F = table.shape[1]
    L = lv.shape[0]
    z = x[n, 0] - x[n, 0]
    dx = z
    dy = z
    dz = z
    for l in range(L):
        r = lv[l, 0]
        bx, fx, mx = _axis(x[n, 0], box[0, 0], box[1, 0], r)
        by, fy, my = _axis(x[n, 1], box[0, 1], box[1, 1], r)
        bz, fz, mz = _axis(x[n, 2], box[0, 2], box[1, 2], r)
        one = z + type(z)(1.0)
        for k in range(8):
            ix = (k >> 2) & 1
            iy = (k >> 1) & 1
            iz = k & 1
            wx = wp.where(ix == 1, fx, one - fx)
            wy = wp.where(iy == 1, fy, one - fy)
            wz = wp.where(iz == 1, fz, one - fz)
            w = wx * wy * wz
            row = _row(lv, l, bx + ix, by + iy, bz + iz)
            s = z
            for c in range(F):
                g = gy[n, l * F + c]
                gtable[row, c] = gtable[row, c] + w * g
                s = s + g * table[row, c]
            if want_x != 0:
                sx = wp.where(ix == 1, one, -one)
                sy = wp.where(iy == 1, one, -one)
                sz = wp.where(iz == 1, one, -one)
                dx = dx + s * sx * wy * wz * mx
                dy = dy + s * wx * sy * wz * my
                dz = dz + s * wx * wy * sz * mz
    if want_x != 0:
        gx[n, 0] = dx
        gx[n, 1] = dy
        gx[n, 2] = dz


def _levels(resolutions, offsets, sizes, dense, device) -> torch.Tensor:
    return torch.tensor([[r, o, s, int(d)] for r, o, s, d in zip(resolutions, offsets, sizes, dense)],
                        dtype=torch.int32, device=device)


class _HashEncodeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, box, lv, twin):
        N = x.shape[0]
        y = torch.empty(N, lv.shape[0] * table.shape[1], dtype=x.dtype, device=x.device)
        if N:
            parallel_launch(hash_forward, N, [x, box, lv, table], [y], device=x.device, min_per_thread=256)
        ctx.save_for_backward(x, table)
        ctx.box, ctx.lv, ctx.twin = box, lv, twin
        return y

    @staticmethod
    def backward(ctx, gy):
        x, table = ctx.saved_tensors
        want_x, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: second derivatives through the torch twin
            gx, gt = twin_backward(ctx.twin, (x, table), (want_x, want_t), (gy,))
            return gx, gt, None, None, None
        gy = gy.contiguous()
        N = x.shape[0]
        chunks = split_chunks(N, x.device, min_per_thread=256)
        bufs = [torch.zeros_like(table) for _ in chunks]
        gx = torch.zeros_like(x)
        if N:
            parallel_launch(hash_backward, N, [x, ctx.box, ctx.lv, table, gy, int(want_x)],
                            lambda k: [bufs[k], gx], device=x.device, min_per_thread=256)
        gt = bufs[0]
        for b in bufs[1:]:
            gt += b
        return (gx if want_x else None), (gt if want_t else None), None, None, None


def hash_encode(x: torch.Tensor, table: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, resolutions, offsets,
                sizes, dense, twin) -> torch.Tensor:
    """Warp hash-grid encoding of points ``x (N, 3)`` with ``table (rows, F)`` -> ``(N, L F)``.
    ``lo, hi`` (3,): the box mapped to the unit cube; per level: resolution, first table row,
    table size (a power of two on hashed levels), dense flag; ``twin(x, table)``: the torch twin
    (used for second derivatives). Inputs are trusted (validated by the encoding module)."""
    box = torch.stack([lo, 1.0 / (hi - lo)]).to(dtype=x.dtype, device=x.device).contiguous()
    lv = _levels(resolutions, offsets, sizes, dense, x.device)
    return _HashEncodeFn.apply(x.contiguous(), table.contiguous(), box, lv, twin)


__all__ = ["hash_encode", "hash_forward", "hash_backward"]
