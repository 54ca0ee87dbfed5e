"""Point-to-mesh distances, closest points and mesh -> signed distance on query points.

The nearest face is found by a chunked brute-force search (memory bounded by ``chunk_elems``
query-face pairs), then the closest point on that face is recomputed with autograd, so distances
are differentiable w.r.t. both the query points and the mesh vertices (the choice of face is
piecewise constant: where the nearest face switches, the distance is continuous but its gradient
jumps). The sign of :func:`mesh_to_sdf` comes from the generalized winding number.
"""

from __future__ import annotations

import torch

from ._checks import check_float, check_mesh, check_points, check_same_dtype, exact_norm, safe_div
from .winding import occupancy


def _div(n: torch.Tensor, d: torch.Tensor, ok: torch.Tensor | None = None) -> torch.Tensor:
    """``n / d`` where ``ok`` (default ``d != 0``), else 0: no absolute floor (scale-covariant)."""
    return safe_div(n, d, ok)


def closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Closest point on triangles ``(a, b, c)`` to ``p``; all ``(..., 3)`` broadcastable (Ericson's regions).

    Degenerate triangles give a finite point on the triangle's extent and finite gradients.
    """
    named = [(n, check_float(x, n, shape=(..., 3), coerce=False)) for n, x in (("p", p), ("a", a), ("b", b), ("c", c))]
    check_same_dtype(*named)
    try:
        torch.broadcast_shapes(*(x.shape for _, x in named))
    except RuntimeError:
        raise ValueError("p, a, b and c must broadcast: " + ", ".join(f"{n} {tuple(x.shape)}" for n, x in named)) from None
    return _closest_point_on_triangle(p, a, b, c)


def _closest_barycentric(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Barycentric weights ``(..., 3)`` of the points of triangles ``(a, b, c)`` closest to ``p``
    (all broadcast to ``(..., 3)``; Ericson, Real-Time Collision Detection 5.1.5). A degenerate
    triangle's interior weights are (1, 0, 0) (its vertex ``a``), its edge and vertex regions as usual."""
    p, a, b, c = torch.broadcast_tensors(p, a, b, c)   # views: every weight below has the same shape
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    vc = d1 * d4 - d3 * d2
    vb = d5 * d2 - d1 * d6
    va = d3 * d6 - d5 * d4
    # interior (default)
    den = va + vb + vc  # = |ab x ac|^2; degenerate when zero up to rounding relative to |ab|^2 |ac|^2
    ok = den > 16 * torch.finfo(den.dtype).eps * (ab * ab).sum(-1) * (ac * ac).sum(-1)
    v = _div(vb, den, ok)
    w = _div(vc, den, ok)
    out = torch.stack([1 - v - w, v, w], -1)
    one, zero = torch.ones_like(d1), torch.zeros_like(d1)
    wbc = _div(d4 - d3, (d4 - d3) + (d5 - d6))
    wac = _div(d2, d2 - d6)
    vab = _div(d1, d1 - d3)
    regions = [((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), torch.stack([zero, 1 - wbc, wbc], -1)),
               ((vb <= 0) & (d2 >= 0) & (d6 <= 0), torch.stack([1 - wac, zero, wac], -1)),
               ((d6 >= 0) & (d5 <= d6), torch.stack([zero, zero, one], -1)),
               ((vc <= 0) & (d1 >= 0) & (d3 <= 0), torch.stack([1 - vab, vab, zero], -1)),
               ((d3 >= 0) & (d4 <= d3), torch.stack([zero, one, zero], -1)),
               ((d1 <= 0) & (d2 <= 0), torch.stack([one, zero, zero], -1))]
    for cond, val in regions:  # in reverse priority, so the earlier tests of Ericson's order win
        out = torch.where(cond[..., None], val, out)
    return out


def _closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    wts = _closest_barycentric(p, a, b, c)
    return a * wts[..., 0:1] + b * wts[..., 1:2] + c * wts[..., 2:3]


@torch.no_grad()
def _nearest_face(verts, faces, points, chunk_elems):
    a0, b0, c0 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    step = max(1, chunk_elems // faces.shape[0])
    out = []
    for i in range(0, points.shape[0], step):
        q = points[i:i + step, None]
        cp = _closest_point_on_triangle(q, a0[None], b0[None], c0[None])
        out.append(((cp - q) ** 2).sum(-1).argmin(1))
    return torch.cat(out)


def closest_points(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, chunk_elems: int = 1_000_000,
                   method: str = "auto"):
    """Closest points on the mesh surface.

    ``method`` picks how the nearest face is searched: ``"bvh"`` (Warp BVH, float32 search; ties
    and near-ties may pick a different but equally close face), ``"brute"`` (chunked torch, exact
    in the input dtype) or ``"auto"`` (bvh). The closest point itself is always recomputed in torch.

    Returns:
        ``(closest (Q, 3), face_index (Q,) long)``; ``closest`` is differentiable w.r.t. ``verts``
        and ``points``.
    """
    verts, faces = check_mesh(verts, faces)
    check_points(points, "points")
    if points.dtype != verts.dtype or points.device != verts.device:
        raise ValueError(f"points ({points.dtype}, {points.device}) must match verts ({verts.dtype}, {verts.device})")
    if faces.shape[0] == 0:
        raise ValueError("faces is empty: no surface to measure the distance to")
    if method not in ("auto", "bvh", "brute"):
        raise ValueError(f"method must be 'auto', 'bvh' or 'brute', got {method!r}")
    if method == "brute":
        fi = _nearest_face(verts.detach(), faces, points.detach(), chunk_elems)
    else:
        from diffvc._kernels.geometry import nearest_faces

        fi = nearest_faces(verts, faces, points)
    f = faces[fi]
    cp = _closest_point_on_triangle(points, verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]])
    return cp, fi


def point_mesh_distance(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, squared: bool = False,
                        method: str = "auto"):
    """Unsigned distance ``(Q,)`` from each point to the surface (squared if asked; finite gradient on the surface)."""
    cp, _ = closest_points(verts, faces, points, method=method)
    d2 = ((points - cp) ** 2).sum(-1)
    return d2 if squared else exact_norm(points - cp, rescale=False)


def mesh_to_sdf(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, method: str = "auto",
                sign_method: str = "auto") -> torch.Tensor:
    """Signed distance ``(Q,)`` of ``points`` to a closed mesh: negative inside (winding number > 1/2).

    Differentiable w.r.t. ``points`` and ``verts`` through the unsigned distance; the sign is
    piecewise constant. ``method``: the closest-point search (:func:`closest_points`);
    ``sign_method``: the inside test (:func:`~diffvc.geometry.occupancy`: ``"exact"`` brute-force
    winding number, ``"fast"`` BVH fast winding number, approximate within a few triangle sizes of
    the surface, where ``|sdf|`` is small; ``"auto"``: exact below 2e8 point-face pairs). 10k points
    on a 100k-face mesh: the exact sign alone took 11.5 s.
    """
    if sign_method not in ("auto", "exact", "fast"):
        raise ValueError(f"sign_method must be 'auto', 'exact' or 'fast', got {sign_method!r}")
    d = point_mesh_distance(verts, faces, points, method=method)
    with torch.no_grad():
        inside = occupancy(verts.detach(), faces, points.detach(), method=sign_method)
    return torch.where(inside, -d, d)
