"""Generalized winding number (Jacobson et al. 2013) and inside/outside occupancy of query points.

``w(q) = sum_f Omega_f(q) / (4 pi)`` with the solid angle ``Omega_f`` of triangle ``f`` seen from
``q`` (Van Oosterom & Strackee). For a closed, outward-oriented mesh ``w = 1`` inside and ``0``
outside; for meshes with holes or self-intersections it degrades gracefully (fractional values),
which is why it decides inside/outside robustly. Brute force over all faces, chunked over the
queries so memory stays bounded (``chunk_elems`` query-face pairs at a time).
"""

from __future__ import annotations

import math

import torch

from .._validate import as_float
from ._checks import check_mesh, check_points, exact_norm


def _solid_angles_sum(q: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    a = a0[None] - q[:, None]
    b = b0[None] - q[:, None]
    c = c0[None] - q[:, None]
    la, lb, lc = (exact_norm(x, rescale=False) for x in (a, b, c))  # exact, no floor
    num = (a * torch.cross(b, c, dim=-1)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
    # a query on a vertex or edge gives atan2(0, 0) whose gradient is 0/0: substitute (0, 1) there
    # atan2 is scale-free: divide both by a detached common magnitude first, so neither the flat
    # test nor the gradient depends on the mesh's absolute scale (no under/overflow of num^2 + den^2)
    m = torch.maximum(num.detach().abs(), den.detach().abs())
    flat = m == 0
    m = torch.where(flat, torch.ones_like(m), m)
    num = torch.where(flat, torch.zeros_like(num), num / m)
    den = torch.where(flat, torch.ones_like(den), den / m)
    return 2.0 * torch.atan2(num, den).sum(1)


def winding_number(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor,
                   chunk_elems: int = 2_000_000, method: str = "auto") -> torch.Tensor:
    """Generalized winding number ``(Q,)`` of ``points (Q, 3)`` w.r.t. the mesh ``(verts, faces)``.

    Differentiable (for a closed mesh the gradient is zero away from the surface; at the surface
    the function jumps and no gradient is defined).

    ``method``: ``"warp"`` (compiled brute force, float64, no autograd), ``"torch"`` (chunked,
    differentiable) or ``"auto"`` (warp unless a gradient is needed).
    """
    verts, faces = check_mesh(verts, faces)
    check_points(points, "points")
    if points.dtype != verts.dtype or points.device != verts.device:
        raise ValueError(f"points ({points.dtype}, {points.device}) must match verts ({verts.dtype}, {verts.device})")
    if faces.shape[0] == 0 or points.shape[0] == 0:
        return points.new_zeros(points.shape[0])
    if method not in ("auto", "torch", "warp"):
        raise ValueError(f"method must be 'auto', 'torch' or 'warp', got {method!r}")
    needs_grad = torch.is_grad_enabled() and (verts.requires_grad or points.requires_grad)
    if method == "warp" or (method == "auto" and not needs_grad):
        from diffvc._kernels.geometry import winding_numbers

        return winding_numbers(verts, faces, points)
    a0, b0, c0 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    step = max(1, chunk_elems // faces.shape[0])
    out = [_solid_angles_sum(points[i:i + step], a0, b0, c0) for i in range(0, points.shape[0], step)]
    return torch.cat(out) / (4.0 * math.pi)


def occupancy(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, threshold: float = 0.5,
              method: str = "auto") -> torch.Tensor:
    """Boolean ``(Q,)``: ``winding_number > threshold`` (inside the closed mesh).

    ``method``: ``"exact"`` (brute-force winding number, O(Q F)), ``"fast"`` (Warp BVH fast
    winding number, threshold 1/2 only; approximate within a few triangle sizes of the surface) or
    ``"auto"`` (exact below 2e8 query-face pairs, else fast).
    """
    if method not in ("auto", "exact", "fast"):
        raise ValueError(f"method must be 'auto', 'exact' or 'fast', got {method!r}")
    verts, faces = check_mesh(verts, faces)
    check_points(points, "points")
    threshold = as_float(threshold, "threshold")
    if method == "auto":
        method = "exact" if points.shape[0] * faces.shape[0] <= 2e8 or threshold != 0.5 else "fast"
    if method == "fast" and faces.shape[0] and points.shape[0]:
        if threshold != 0.5:
            raise ValueError(f"threshold must be 0.5 with method='fast', got {threshold}")
        from diffvc._kernels.geometry import inside_fast

        return inside_fast(verts, faces, points)
    with torch.no_grad():
        return winding_number(verts, faces, points) > threshold
