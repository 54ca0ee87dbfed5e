"""Warp kernels for the soft rasterizer's silhouette (``diffvc.render.soft_silhouette``) and their
autograd bridge. The plain-torch twin is ``diffvc.render.soft._soft_logsum_torch`` (same values;
tests compare both, and second derivatives go through it).

Per (view, face) whose three vertices lie beyond ``near``, every pixel centre ``p`` inside the
face's screen box grown by ``pad`` pixels gets ``log(1 - D) = -softplus(delta d^2 / sigma)``
added to ``logsum[b, y, x]`` (``d``: distance from ``p`` to the triangle's boundary, ``delta`` = +1
inside, -1 outside). The faces are visited in blocks of ``FACE_BLOCK`` per CPU thread (each CPU
range of a split launch sums into its own image; Warp's CPU atomics are not atomic across threads)
and their pixels looped in the kernel: no (face, pixel) pair list is built (the twin's costs
~270 ms at 10k faces and 256^2).

Backward (hand-written, ``enable_backward=False``): per pair ``g_d2 = -g sigmoid(z) delta / sigma``
(``z = delta d^2 / sigma``), taken to the endpoints of the nearest edge (``d^2 = |a + t (b - a) -
p|^2``: ``2 e (1 - t)`` and ``2 e t``; the path through ``t`` vanishes, ``e`` being orthogonal to
the edge where ``t`` is not clamped), summed per face and added to the face's three vertices'
``x, y`` screen gradients. On a tie between two edges (a pixel nearest to their common vertex) the
first one is taken: both give that vertex the same gradient (the twin's ``torch.minimum`` splits
it between them; only where two of a face's vertices coincide does the split between those two
differ, their sum being the same).
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import parallel_launch, split_chunks, twin_backward, wp
from .raster import _edge, chunk_sum, cpu_zeros, face_launch

wp.set_module_options({"enable_backward": False})


@wp.func
def _seg(px: Any, py: Any, ax: Any, ay: Any, bx: Any, by: Any):
    """Squared distance from ``p`` to segment ``ab``, its parameter ``t`` and the offset ``e``."""
    dx = bx - ax
    dy = by - ay
    l2 = wp.max(dx * dx + dy * dy, type(px)(1e-20))
    t = wp.clamp(((px - ax) * dx + (py - ay) * dy) / l2, px - px, type(px)(1.0))
    ex = ax + t * dx - px
    ey = ay + t * dy - py
    return ex * ex + ey * ey, t, ex, ey


@wp.func
def _pixel(px: Any, py: Any, x0: Any, y0: Any, x1: Any, y1: Any, x2: Any, y2: Any, s: Any):
    """``(d^2, delta, k, t, ex, ey)`` of pixel centre ``p`` for the triangle: the squared distance
    to its nearest edge ``k`` (0: v0v1, 1: v1v2, 2: v2v0) with that edge's ``t`` and offset, and
    ``delta`` = +1 inside (``s``: the sign of the area, 0 for a degenerate triangle), else -1."""
    d2, t, ex, ey = _seg(px, py, x0, y0, x1, y1)
    k = int(0)
    d2b, tb, exb, eyb = _seg(px, py, x1, y1, x2, y2)
    if d2b < d2:
        d2 = d2b
        t = tb
        ex = exb
        ey = eyb
        k = 1
    d2c, tc, exc, eyc = _seg(px, py, x2, y2, x0, y0)
    if d2c < d2:
        d2 = d2c
        t = tc
        ex = exc
        ey = eyc
        k = 2
    w0 = _edge(x1, y1, x2, y2, px, py)
    w1 = _edge(x2, y2, x0, y0, px, py)
    w2 = _edge(x0, y0, x1, y1, px, py)
    z = px - px
    delta = -type(px)(1.0)
    if s != z and w0 * s >= z and w1 * s >= z and w2 * s >= z:
        delta = type(px)(1.0)
    return d2, delta, k, t, ex, ey


@wp.func
def _sign(a: Any):
    """+1, -1 or 0 (a degenerate triangle: no inside)."""
    r = a - a
    if a > r:
        r = type(a)(1.0)
    elif a < r:
        r = -type(a)(1.0)
    return r


@wp.func
def _box(lo: Any, hi: Any, pad: Any, n: int):
    """First and last pixel index whose centre lies in ``[lo - pad, hi + pad]`` (clamped to the image)."""
    half = type(lo)(0.5)
    a = int(wp.ceil(wp.clamp(lo - pad, type(lo)(-1.0), type(lo)(n + 1)) - half))
    c = int(wp.floor(wp.clamp(hi + pad, type(lo)(-1.0), type(lo)(n + 1)) - half))
    return wp.max(a, 0), wp.min(c, n - 1)


@wp.func
def _face(screen: wp.array3d(dtype=Any), b: int, i0: int, i1: int, i2: int, pad: Any, H: int, W: int):
    """A face's screen corners, the sign of its area (:func:`_sign`) and its pixel box grown by ``pad``."""
    x0 = screen[b, i0, 0]
    y0 = screen[b, i0, 1]
    x1 = screen[b, i1, 0]
    y1 = screen[b, i1, 1]
    x2 = screen[b, i2, 0]
    y2 = screen[b, i2, 1]
    xa, xb = _box(wp.min(x0, wp.min(x1, x2)), wp.max(x0, wp.max(x1, x2)), pad, W)
    ya, yb = _box(wp.min(y0, wp.min(y1, y2)), wp.max(y0, wp.max(y1, y2)), pad, H)
    return x0, y0, x1, y1, x2, y2, _sign(_edge(x0, y0, x1, y1, x2, y2)), xa, xb, ya, yb


@wp.kernel
def soft_logsum(offset: int, blk: int, screen: wp.array3d(dtype=Any), faces: wp.array2d(dtype=wp.int32), H: int,
                W: int, near: Any, sigma: Any, pad: Any, logsum: wp.array3d(dtype=Any)):
    """Adds ``-softplus(delta d^2 / sigma)`` of (view, face) items ``[j blk, (j+1) blk)`` to their
    pixels' ``logsum`` (B, H, W)."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for q in range(j * blk, wp.min(j * blk + blk, screen.shape[0] * F)):
        b = q // F
        f = q - b * F
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        if screen[b, i0, 2] > near and screen[b, i1, 2] > near and screen[b, i2, 2] > near:
            x0, y0, x1, y1, x2, y2, s, xa, xb, ya, yb = _face(screen, b, i0, i1, i2, pad, H, W)
            for y in range(ya, yb + 1):
                py = type(x0)(y) + type(x0)(0.5)
                for x in range(xa, xb + 1):
                    px = type(x0)(x) + type(x0)(0.5)
                    d2, delta, k, t, ex, ey = _pixel(px, py, x0, y0, x1, y1, x2, y2, s)
                    zz = delta * d2 / sigma
                    # -softplus(z) = -(max(z, 0) + log(1 + exp(-|z|)))
                    wp.atomic_add(logsum, b, y, x, -(wp.max(zz, zz - zz) + wp.log(type(x0)(1.0) + wp.exp(-wp.abs(zz)))))


@wp.kernel
def soft_logsum_adj(offset: int, blk: int, screen: wp.array3d(dtype=Any), faces: wp.array2d(dtype=wp.int32), H: int,
                    W: int, near: Any, sigma: Any, pad: Any, g_logsum: wp.array3d(dtype=Any),
                    g_screen: wp.array3d(dtype=Any)):
    """Adjoint of :func:`soft_logsum`: the ``x, y`` screen gradients of each item's three vertices,
    added to ``g_screen`` (B, V, 3)."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for q in range(j * blk, wp.min(j * blk + blk, screen.shape[0] * F)):
        b = q // F
        f = q - b * F
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        if screen[b, i0, 2] > near and screen[b, i1, 2] > near and screen[b, i2, 2] > near:
            x0, y0, x1, y1, x2, y2, s, xa, xb, ya, yb = _face(screen, b, i0, i1, i2, pad, H, W)
            z0 = x0 - x0
            gx0 = z0
            gy0 = z0
            gx1 = z0
            gy1 = z0
            gx2 = z0
            gy2 = z0
            for y in range(ya, yb + 1):
                py = type(x0)(y) + type(x0)(0.5)
                for x in range(xa, xb + 1):
                    gl = g_logsum[b, y, x]
                    if gl != z0:
                        px = type(x0)(x) + type(x0)(0.5)
                        d2, delta, k, t, ex, ey = _pixel(px, py, x0, y0, x1, y1, x2, y2, s)
                        zz = delta * d2 / sigma
                        sig = type(x0)(1.0) / (type(x0)(1.0) + wp.exp(-zz))
                        gd = -gl * sig * delta / sigma * type(x0)(2.0)
                        ga = gd * (type(x0)(1.0) - t)  # edge start
                        gb = gd * t  # edge end
                        if k == 0:
                            gx0 += ga * ex
                            gy0 += ga * ey
                            gx1 += gb * ex
                            gy1 += gb * ey
                        elif k == 1:
                            gx1 += ga * ex
                            gy1 += ga * ey
                            gx2 += gb * ex
                            gy2 += gb * ey
                        else:
                            gx2 += ga * ex
                            gy2 += ga * ey
                            gx0 += gb * ex
                            gy0 += gb * ey
            wp.atomic_add(g_screen, b, i0, 0, gx0)
            wp.atomic_add(g_screen, b, i0, 1, gy0)
            wp.atomic_add(g_screen, b, i1, 0, gx1)
            wp.atomic_add(g_screen, b, i1, 1, gy1)
            wp.atomic_add(g_screen, b, i2, 0, gx2)
            wp.atomic_add(g_screen, b, i2, 1, gy2)


class _SoftLogsum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, screen, faces, H, W, near, sigma, pad, twin):
        B, F = screen.shape[0], faces.shape[0]
        blk, n, mpt = face_launch(B * F, screen.device)
        bufs = [cpu_zeros((B, H, W), screen) for _ in range(len(split_chunks(n, screen.device, mpt)))]
        if B * F:
            parallel_launch(soft_logsum, n, [blk, screen, faces, H, W, near, sigma, pad], lambda k: [bufs[k]],
                            device=screen.device, min_per_thread=mpt)
        ctx.args = (H, W, near, sigma, pad)
        ctx.twin = twin
        ctx.save_for_backward(screen, faces)
        return chunk_sum(bufs)

    @staticmethod
    def backward(ctx, g):
        screen, faces = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        if torch.is_grad_enabled():  # create_graph=True: second derivatives through the torch twin
            (gs,) = twin_backward(lambda s: ctx.twin(s, faces, *ctx.args), (screen,), (True,), (g,))
            return (gs,) + (None,) * 7
        H, W, near, sigma, pad = ctx.args
        B, F = screen.shape[0], faces.shape[0]
        blk, n, mpt = face_launch(B * F, screen.device)
        bufs = [cpu_zeros(screen.shape, screen) for _ in range(len(split_chunks(n, screen.device, mpt)))]
        if B * F:
            parallel_launch(soft_logsum_adj, n, [blk, screen, faces, H, W, near, sigma, pad, g.contiguous()],
                            lambda k: [bufs[k]], device=screen.device, min_per_thread=mpt)
        return (chunk_sum(bufs),) + (None,) * 7


def soft_logsum_op(screen: torch.Tensor, faces: torch.Tensor, H: int, W: int, near: float, sigma: float, pad: float,
                   twin) -> torch.Tensor:
    """``sum_j log(1 - D_j)`` per pixel, ``(B, H, W)``, of the screen points ``screen`` (B, V, 3)
    (float32/float64) and ``faces`` (F, 3) (validated by the caller), differentiable w.r.t.
    ``screen``; ``twin(screen, faces, H, W, near, sigma, pad)`` the torch twin."""
    return _SoftLogsum.apply(screen.contiguous(), faces.to(torch.int32).contiguous(), int(H), int(W), float(near),
                             float(sigma), float(pad), twin)


__all__ = ["soft_logsum_op", "soft_logsum", "soft_logsum_adj"]
