"""Warp kernels for bilinear texture lookups and their autograd bridge. The plain-torch twin is
``diffvc.render.texture._bilinear_torch`` (``grid_sample``; tests compare both, and second
derivatives go through it).

A texture ``tex (Bt, Ht, Wt, C)`` (``Bt`` = 1: shared by every view) is looked up at
``uv (B, P, 2)``: texel units ``x = u Wt - 1/2``, ``y = (1 - v) Ht - 1/2`` (texel (i, j) has its
centre at ``x = j``, ``y = i``), the four texels around ``(x, y)`` blended bilinearly.
``wrap = 1`` (repeat): texel indices modulo the size. ``wrap = 0`` (clamp): ``x`` clamped to
``[0, Wt - 1]`` (``y`` likewise), no gradient to ``u`` where clamped, as ``grid_sample``'s
``padding_mode="border"``.

Threads: as the rasterizer's ``face_launch``: one per block of ``FACE_BLOCK`` lookups on the CPU
(a Warp CPU thread costs ~10 ns of launch overhead), one per lookup on CUDA. Backward (hand-written, ``enable_backward=False``): the texel
gradients are scattered (each CPU range of a split launch gets its own texture-gradient buffer:
Warp's CPU atomics are not atomic across threads), the uv gradient written per lookup. The
derivative w.r.t. ``uv`` on a texel-centre line is the one-sided one of the cell above/right of it
(``floor``), as ``grid_sample``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import parallel_launch, split_chunks, twin_backward, wp
from .raster import chunk_sum, cpu_zeros, face_launch

wp.set_module_options({"enable_backward": False})

@wp.func
def _axis(t: Any, n: int, wrap: int):
    """Texel indices (i0, i1), the weight of i1 and the derivative factor (0 where clamped) of
    texel coordinate ``t - 1/2`` (``t = u Wt`` or ``(1 - v) Ht``) on an axis of ``n`` texels.
    Repeat: ``t`` wrapped into ``[0, n)`` first (as ``torch.remainder``; float arithmetic, no
    integer division: three of those per axis cost more than the lookup)."""
    one = type(t)(1.0)
    half = type(t)(0.5)
    fn = type(t)(n)
    if wrap != 0:
        x = t - fn * wp.floor(t / fn) - half  # in [-1/2, n - 1/2]
        f = wp.floor(x)
        i0 = wp.min(int(f), n - 1)
        if i0 < 0:
            i0 = n - 1
        i1 = i0 + 1
        if i1 >= n:
            i1 = 0
        return i0, i1, x - f, one
    x = t - half
    top = type(t)(n - 1)
    d = one
    if x < x - x or x > top:
        d = x - x
    xc = wp.clamp(x, x - x, top)
    f = wp.floor(xc)
    i0 = int(f)
    return i0, wp.min(i0 + 1, n - 1), xc - f, d


@wp.func
def _cell(uv: wp.array3d(dtype=Any), b: int, p: int, Bt: int, Ht: int, Wt: int, wrap: int):
    """Lookup ``uv[b, p]``'s texels: the first texel (row of the flattened texture) of its two
    texel rows ``r0, r1``, its columns ``x0, x1``, the weights ``fx, fy`` of ``x1`` and ``r1`` and
    the derivative factors ``dx, dy`` (0 where clamped)."""
    u = uv[b, p, 0]
    v = uv[b, p, 1]
    x0, x1, fx, dx = _axis(u * type(u)(Wt), Wt, wrap)
    y0, y1, fy, dy = _axis((type(u)(1.0) - v) * type(u)(Ht), Ht, wrap)
    bt = wp.min(b, Bt - 1)  # a shared texture (Bt = 1) or the view's own
    return (bt * Ht + y0) * Wt, (bt * Ht + y1) * Wt, x0, x1, fx, fy, dx, dy


@wp.func
def _texels(tex: wp.array2d(dtype=Any), r0: int, r1: int, x0: int, x1: int, c: int):
    """Channel ``c`` of the four texels of a lookup (:func:`_cell`): (r0, x0), (r0, x1), (r1, x0), (r1, x1)."""
    return tex[r0 + x0, c], tex[r0 + x1, c], tex[r1 + x0, c], tex[r1 + x1, c]


@wp.kernel
def tex_lookup(offset: int, blk: int, tex: wp.array2d(dtype=Any), Bt: int, Ht: int, Wt: int,
               uv: wp.array3d(dtype=Any), wrap: int, out: wp.array3d(dtype=Any)):
    """``out[b, p, c]``: bilinear lookup of the texture (``tex``: its ``(Bt Ht Wt, C)`` rows) at
    ``uv[b, p]`` (lookups ``[j blk, (j+1) blk)`` of the flattened ``(B, P)``)."""
    j = wp.tid() + offset
    P = uv.shape[1]
    for q in range(j * blk, wp.min(j * blk + blk, uv.shape[0] * P)):
        b = q // P
        p = q - b * P
        r0, r1, x0, x1, fx, fy, dx, dy = _cell(uv, b, p, Bt, Ht, Wt, wrap)
        for c in range(tex.shape[1]):
            t00, t01, t10, t11 = _texels(tex, r0, r1, x0, x1, c)
            top = t00 + fx * (t01 - t00)
            out[b, p, c] = top + fy * (t10 + fx * (t11 - t10) - top)


@wp.kernel
def tex_lookup_adj(offset: int, blk: int, tex: wp.array2d(dtype=Any), Bt: int, Ht: int, Wt: int,
                   uv: wp.array3d(dtype=Any), wrap: int, g_out: wp.array3d(dtype=Any), want_tex: int, want_uv: int,
                   g_tex: wp.array2d(dtype=Any), g_uv: wp.array3d(dtype=Any)):
    """Adjoint of :func:`tex_lookup`: texel gradients added to ``g_tex`` (rows as ``tex``;
    ``want_tex``), the gradient of each ``uv[b, p]`` written to ``g_uv`` (``want_uv``)."""
    j = wp.tid() + offset
    P = uv.shape[1]
    for q in range(j * blk, wp.min(j * blk + blk, uv.shape[0] * P)):
        b = q // P
        p = q - b * P
        r0, r1, x0, x1, fx, fy, dx, dy = _cell(uv, b, p, Bt, Ht, Wt, wrap)
        one = type(fx)(1.0)
        gfx = fx - fx
        gfy = gfx
        for c in range(tex.shape[1]):
            g = g_out[b, p, c]
            if want_tex != 0:
                wp.atomic_add(g_tex, r0 + x0, c, (one - fx) * (one - fy) * g)
                wp.atomic_add(g_tex, r0 + x1, c, fx * (one - fy) * g)
                wp.atomic_add(g_tex, r1 + x0, c, (one - fx) * fy * g)
                wp.atomic_add(g_tex, r1 + x1, c, fx * fy * g)
            if want_uv != 0:
                t00, t01, t10, t11 = _texels(tex, r0, r1, x0, x1, c)
                gfx += g * ((one - fy) * (t01 - t00) + fy * (t11 - t10))
                gfy += g * ((t10 + fx * (t11 - t10)) - (t00 + fx * (t01 - t00)))
        if want_uv != 0:
            g_uv[b, p, 0] = gfx * dx * type(fx)(Wt)
            g_uv[b, p, 1] = -gfy * dy * type(fx)(Ht)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tex, uv, wrap, twin):
        B, P = uv.shape[:2]
        out = torch.empty((B, P, tex.shape[3]), dtype=tex.dtype, device=tex.device)  # every entry written
        blk, n, mpt = face_launch(B * P, uv.device)
        if B * P:
            parallel_launch(tex_lookup, n, [blk, tex.reshape(-1, tex.shape[3]), *tex.shape[:3], uv, wrap], [out],
                            device=uv.device, min_per_thread=mpt)
        ctx.wrap, ctx.twin = wrap, twin
        ctx.save_for_backward(tex, uv)
        return out

    @staticmethod
    def backward(ctx, g_out):
        tex, uv = ctx.saved_tensors
        want_tex, want_uv = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: second derivatives through the torch twin
            g_tex, g_uv = twin_backward(lambda t, u: ctx.twin(t, u, ctx.wrap), (tex, uv), (want_tex, want_uv), (g_out,))
            return g_tex, g_uv, None, None
        B, P = uv.shape[:2]
        blk, n, mpt = face_launch(B * P, uv.device)
        ranges = len(split_chunks(n, uv.device, mpt))
        C = tex.shape[3]
        bufs = [cpu_zeros((tex.numel() // C if want_tex else 1, C), tex) for _ in range(ranges)]
        g_uv = torch.empty_like(uv) if want_uv else uv.new_zeros((1, 1, 2))
        if B * P:
            parallel_launch(tex_lookup_adj, n, [blk, tex.reshape(-1, C), *tex.shape[:3], uv, ctx.wrap, g_out.contiguous(),
                                                int(want_tex), int(want_uv)],
                            lambda k: [bufs[k], g_uv], device=uv.device, min_per_thread=mpt)
        return (chunk_sum(bufs).reshape(tex.shape) if want_tex else None), (g_uv if want_uv else None), None, None


def lookup(tex: torch.Tensor, uv: torch.Tensor, repeat: bool, twin) -> torch.Tensor:
    """Bilinear lookups ``(B, P, C)`` of ``tex`` (1 or B, Ht, Wt, C) at ``uv`` (B, P, 2), both
    float32 or both float64 (validated by the caller), differentiable w.r.t. both;
    ``twin(tex, uv, wrap)`` the torch twin (second derivatives)."""
    return _Lookup.apply(tex.contiguous(), uv.contiguous(), int(bool(repeat)), twin)


__all__ = ["lookup", "tex_lookup", "tex_lookup_adj"]
