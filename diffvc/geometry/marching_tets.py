"""Tetrahedral grids and marching tetrahedra (the differentiable iso-surface of DMTet, Shen et al. 2021).

:func:`marching_tetrahedra` extracts the zero level set of values on a tetrahedral grid. Each output
vertex lies on a grid edge whose endpoint values change sign, at the linear zero crossing
``(x_a s_b - x_b s_a) / (s_b - s_a)``, so it is differentiable w.r.t. both the values ``s`` and the
grid positions ``x``. The mesh's connectivity depends on the signs only: its gradient is zero
w.r.t. topology (a sign flip is a discontinuity that no gradient sees).

On a conforming tet grid (every face shared by at most two tets, like :func:`tet_grid`), the output
is a closed, consistently oriented surface (normals point from negative to positive values, i.e.
outward for an SDF) wherever the level set stays inside the grid.
"""

from __future__ import annotations

import torch

from ._checks import check_faces, check_points
from .tet_mesh import tet_grid
from .._validate import all_finite

_TET_EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def _edge_id(a: int, b: int) -> int:
    return _TET_EDGES.index((min(a, b), max(a, b)))


def _build_table():
    """Per occupancy code (bit i = vertex i inside): up to 2 triangles as local edge ids (unoriented)."""
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for code in range(16):
        inside = [i for i in range(4) if code >> i & 1]
        outside = [i for i in range(4) if not code >> i & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, 0] = torch.tensor([_edge_id(lone, o) for o in others])
            count[code] = 1
        elif len(inside) == 2:
            a, b = inside
            c, d = outside
            cyc = [_edge_id(a, c), _edge_id(a, d), _edge_id(b, d), _edge_id(b, c)]  # consecutive share a face
            table[code, 0] = torch.tensor([cyc[0], cyc[1], cyc[2]])
            table[code, 1] = torch.tensor([cyc[0], cyc[2], cyc[3]])
            count[code] = 2
    return table, count


_TABLE, _COUNT = _build_table()


def marching_tetrahedra(verts: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor, return_edges: bool = False):
    """Triangle mesh of the zero level set of ``sdf`` on a tetrahedral grid.

    Args:
        verts: ``(N, 3)`` grid vertex positions (differentiable; DMTet-style deformation).
        tets: ``(T, 4)`` long vertex indices.
        sdf: ``(N,)`` values (differentiable); ``< 0`` is inside.
        return_edges: also return the ``(V_out, 2)`` grid edge each output vertex lies on.

    Returns:
        ``(mesh_verts (V_out, 3), faces (F, 3) long)``, oriented with normals towards positive
        values. Empty tensors when the level set misses the grid.
    """
    check_points(verts, "verts")
    tets = check_faces(tets, verts.shape[0], verts.device, "tets", k=4)
    if not isinstance(sdf, torch.Tensor) or sdf.shape != (verts.shape[0],):
        raise ValueError(f"sdf must have shape ({verts.shape[0]},), got {getattr(sdf, 'shape', type(sdf).__name__)}")
    if not sdf.is_floating_point():
        raise TypeError(f"sdf must be a floating tensor, got {sdf.dtype}")
    if sdf.device != verts.device:
        raise ValueError(f"sdf is on {sdf.device} but verts is on {verts.device}")
    if not all_finite(sdf):
        raise ValueError("sdf contains non-finite values (NaN or inf)")
    dev = verts.device
    sdf = sdf.to(verts.dtype)
    occ = sdf.detach() < 0
    tocc = occ[tets]
    cnt = tocc.sum(1)
    valid = (cnt > 0) & (cnt < 4)
    vt = tets[valid]
    empty = (verts.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev))
    if vt.shape[0] == 0:
        return (*empty, torch.zeros(0, 2, dtype=torch.long, device=dev)) if return_edges else empty
    le = torch.tensor(_TET_EDGES, device=dev)
    e = vt[:, le]  # (T', 6, 2)
    e, _ = e.sort(-1)
    crossing = occ[e[..., 0]] != occ[e[..., 1]]
    ce = e[crossing]
    uniq, inv = torch.unique(ce, dim=0, return_inverse=True)
    edge_map = torch.full(crossing.shape, -1, dtype=torch.long, device=dev)
    edge_map[crossing] = inv
    # vertices at the linear zero crossings
    sa, sb = sdf[uniq[:, 0]], sdf[uniq[:, 1]]
    xa, xb = verts[uniq[:, 0]], verts[uniq[:, 1]]
    denom = sb - sa  # signs differ, so |denom| > 0
    out_v = (xa * sb[:, None] - xb * sa[:, None]) / denom[:, None]
    # triangles from the table
    code = (tocc[valid].long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(1)
    table, count = _TABLE.to(dev), _COUNT.to(dev)
    tri_local = table[code]  # (T', 2, 3)
    has = torch.arange(2, device=dev)[None, :] < count[code][:, None]  # (T', 2)
    tet_idx = torch.arange(vt.shape[0], device=dev)[:, None].expand(-1, 2)[has]
    tri_local = tri_local[has]  # (F, 3)
    faces = torch.gather(edge_map[tet_idx], 1, tri_local)
    # orient each triangle from inside (negative) towards outside (positive) vertices of its tet.
    # The test uses the triangle through the edge *midpoints* (same combinatorics, never degenerate
    # for a non-flat tet), so exact zeros in ``sdf`` cannot flip an orientation.
    with torch.no_grad():
        tv = verts[vt[tet_idx]].detach()  # (F, 4, 3)
        to = tocc[valid][tet_idx].to(tv.dtype)[..., None]  # inside mask
        cin = (tv * to).sum(1) / to.sum(1)
        cout = (tv * (1 - to)).sum(1) / (1 - to).sum(1)
        mid = 0.5 * (xa + xb).detach()
        p = mid[faces]
        nrm = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
        flip = (nrm * (cout - cin)).sum(-1) < 0
    faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    if return_edges:
        return out_v, faces, uniq
    return out_v, faces


def sdf_to_mesh(sdf_fn, resolution: int = 32, bounds=(-1.0, 1.0), dtype=torch.float32, device="cpu"):
    """One-liner: evaluate ``sdf_fn(points (N, 3)) -> (N,)`` on :func:`tet_grid` and run
    :func:`marching_tetrahedra`. Gradients flow to whatever parameters ``sdf_fn`` closes over.

    Returns ``(verts (V, 3), faces (F, 3))``, outward-oriented, closed if the surface lies inside ``bounds``.
    """
    if not callable(sdf_fn):
        raise TypeError(f"sdf_fn must be a callable points (N, 3) -> distances (N,), got {type(sdf_fn).__name__}")
    gv, gt = tet_grid(resolution, bounds, dtype=dtype, device=device)
    s = sdf_fn(gv)
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"sdf_fn must return a tensor, got {type(s).__name__}")
    return marching_tetrahedra(gv, gt, s.reshape(-1))
