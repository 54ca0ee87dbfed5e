"""Closed triangle mesh -> tetrahedral mesh for simulation (no external mesher).

Method: a Kuhn (6 tets per cube) lattice over the padded bounding box with cell size
``h = longest side / resolution``; a tet is kept when the generalized winding number at its centroid
exceeds 1/2 (robust for non-convex meshes and small defects). Optionally the boundary nodes are
moved onto the surface (their closest surface point) when that does not make any tet too flat:
in each tet whose volume would fall below ``min_volume_ratio * h^3 / 6`` the farthest-moved node is
restored to the lattice, repeatedly, so the result never has inverted or zero-volume tets.
"""

from __future__ import annotations

import torch

from .._validate import as_int
from ._checks import check_mesh
from .distance import closest_points
from .tet_mesh import _kuhn_lattice, remove_unreferenced, signed_tet_volumes, tet_boundary_faces
from .winding import occupancy


def _fill_nonmanifold_edges(gt: torch.Tensor, keep: torch.Tensor, n: int, rounds: int = 10) -> torch.Tensor:
    """Add every lattice tet around a boundary edge used by more than two boundary faces (two
    parts of the selection touching along an edge), so the boundary surface becomes manifold."""
    from .topology import edge_face_counts

    le = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
    tet_edge_keys = gt[:, le].sort(-1).values
    tet_edge_keys = tet_edge_keys[..., 0] * n + tet_edge_keys[..., 1]  # (T, 6)
    for _ in range(rounds):
        if not bool(keep.any()):
            break
        bf = tet_boundary_faces(gt[keep])
        e, counts = edge_face_counts(bf)
        bad = e[counts > 2]
        if bad.shape[0] == 0:
            break
        bad_keys = bad[:, 0] * n + bad[:, 1]
        keep = keep | torch.isin(tet_edge_keys, bad_keys).any(1)
    return keep


def tetrahedralize(verts: torch.Tensor, faces: torch.Tensor, resolution: int = 16, snap: bool = True,
                   min_volume_ratio: float = 0.1):
    """Tetrahedral mesh filling the closed surface ``(verts, faces)``.

    Args:
        verts: ``(V, 3)``; faces: ``(F, 3)`` closed, outward-oriented surface.
        resolution: lattice cells along the bounding box's longest side.
        snap: move boundary nodes onto the surface (where that keeps tets well shaped).
        min_volume_ratio: smallest allowed tet volume after snapping, as a fraction of a lattice
            tet's volume ``h^3 / 6``.

    Returns:
        ``(tet_verts (N, 3), tets (T, 4) long)`` in ``verts``' dtype and device, positively
        oriented, no unreferenced vertices. Not differentiable (topology is discrete); use
        barycentric coordinates of the tets to embed the surface if gradients must flow.
    """
    verts, faces = check_mesh(verts, faces)
    if faces.shape[0] == 0:
        raise ValueError("faces is empty: nothing to tetrahedralize")
    resolution = as_int(resolution, "resolution", minimum=1)
    dtype, device = verts.dtype, verts.device
    v64 = verts.detach().double().cpu()
    f = faces.cpu()
    lo, hi = v64.min(0).values, v64.max(0).values
    h = float((hi - lo).max()) / resolution
    if h <= 0:
        raise ValueError("verts span zero extent: nothing to tetrahedralize")
    counts = torch.ceil((hi - lo) / h).long().clamp_min(1) + 2
    center = (lo + hi) / 2
    glo = center - counts.double() * h / 2
    ghi = center + counts.double() * h / 2
    gv, gt = _kuhn_lattice(glo, ghi, counts.tolist())
    cent = gv[gt].mean(1)
    keep = occupancy(v64, f, cent)  # exact winding number, or the BVH fast one for big inputs
    keep = _fill_nonmanifold_edges(gt, keep, gv.shape[0])
    tets = gt[keep]
    if tets.shape[0] == 0:
        raise ValueError(f"resolution={resolution} is too coarse: no lattice tet lies inside the mesh")
    tv, tets = remove_unreferenced(gv, tets)
    if snap:
        bf = tet_boundary_faces(tets)
        bnodes = torch.unique(bf.reshape(-1))
        target, _ = closest_points(v64, f, tv[bnodes])
        new = tv.clone()
        new[bnodes] = target
        min_vol = min_volume_ratio * h ** 3 / 6.0
        moved = torch.zeros(tv.shape[0], dtype=torch.bool)
        moved[bnodes] = True
        disp = (new - tv).norm(dim=1)
        for _ in range(200):
            bad = signed_tet_volumes(new, tets) < min_vol
            if not bool(bad.any()):
                break
            # in each bad tet, restore the moved node that moved farthest (one node per tet per round)
            bt = tets[bad]
            score = torch.where(moved[bt], disp[bt], torch.full_like(disp[bt], -1.0))
            pick = bt.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
            pick = pick[moved[pick]]
            if pick.numel() == 0:
                break
            new[pick] = tv[pick]
            moved[pick] = False
        tv = new
    return tv.to(dtype=dtype, device=device), tets.to(device)
