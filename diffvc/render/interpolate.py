"""Interpolation of vertex attributes to pixels with the rasterizer's barycentrics."""

from __future__ import annotations

import torch

from .._validate import check_finite, check_same_dtype

from .._kernels import raster as K
from .rasterize import BACKENDS, Fragments


def interpolate(attr: torch.Tensor, frags: Fragments, backend: str = "warp") -> torch.Tensor:
    """Per-pixel attributes ``sum_k bary_k * attr[face_vertex_k]``.

    Args:
        attr: (V, C) or (B, V, C) vertex attributes (colours, normals, UVs, positions...).
        frags: :class:`~diffvc.render.Fragments` from :func:`~diffvc.render.rasterize`.
        backend: ``"warp"`` (kernel; its adjoint scatters into ``attr``) or ``"torch"`` (twin).

    Returns:
        (B, H, W, C); zeros on background pixels. Differentiable w.r.t. ``attr`` and, through
        ``frags.bary``, the vertex positions. No gradient for visibility changes (see
        :func:`~diffvc.render.antialias`).
    """
    if not isinstance(frags, Fragments):
        raise TypeError(f"frags must be the Fragments of rasterize, got {type(frags).__name__}")
    B, H, W = frags.shape
    V = frags.screen.shape[1]
    if not isinstance(attr, torch.Tensor) or not attr.is_floating_point():
        raise TypeError("attr must be a floating torch.Tensor")
    check_finite(attr, "attr")
    check_same_dtype(("frags", frags.screen), ("attr", attr))
    if attr.dim() == 2:
        attr = attr.unsqueeze(0)
    if attr.dim() != 3 or attr.shape[1] != V or attr.shape[0] not in (1, B):
        raise ValueError(f"attr must have shape ({V}, C) or ({B}, {V}, C), got {tuple(attr.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    attr = attr.to(frags.bary.dtype).expand(B, -1, -1).contiguous()
    if backend == "warp" and frags.faces.shape[0] > 0:
        return K.interpolate_op(attr, frags.faces, frags.face_id, frags.bary)
    return interpolate_torch(attr, frags)


def interpolate_torch(attr: torch.Tensor, frags: Fragments) -> torch.Tensor:
    """Plain-torch twin of :func:`interpolate` for ``attr`` (B, V, C)."""
    B = attr.shape[0]
    valid = (frags.face_id >= 0).unsqueeze(-1)
    vi = frags.faces.long()[frags.face_id.clamp_min(0).long()]  # (B, H, W, 3)
    bidx = torch.arange(B, device=attr.device)[:, None, None, None]
    a = attr[bidx, vi]  # (B, H, W, 3, C)
    out = (frags.bary.unsqueeze(-1) * a).sum(-2)
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
