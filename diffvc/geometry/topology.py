"""Combinatorial structure of triangle meshes: edges, edge-face adjacency, boundary.

Edge-face adjacency is computed here and nowhere else (:func:`face_adjacency`,
:func:`face_neighbors`; the renderer's antialiasing and the springs' bending pairs use them)."""

from __future__ import annotations

import torch

from .._validate import as_int, check_index
from .._validate import check_faces as _check_faces
from ._checks import check_faces


def _faces_arg(faces, num_verts=None):
    """Faces checked by the one face validator; without ``num_verts`` any index >= 0 is a vertex."""
    if num_verts is None:
        return check_index(faces, "faces", 2 ** 62, shape=("F", 3), size_name="any vertex index")
    num_verts = as_int(num_verts, "num_verts", minimum=0)
    return _check_faces(faces, num_verts, device=faces.device if isinstance(faces, torch.Tensor) else None,
                        size_name="num_verts")


def edges(faces: torch.Tensor, return_inverse: bool = False):
    """Unique undirected edges of a triangle mesh.

    Args:
        faces: ``(F, 3)`` integer vertex indices.
        return_inverse: also return ``(F, 3)`` edge ids of each face's edges
            (edge k of a face joins corners k and k+1).

    Returns:
        ``(E, 2)`` long tensor with ``edges[:, 0] < edges[:, 1]``, sorted lexicographically
        (and the inverse map if asked).
    """
    faces = _faces_arg(faces)
    e = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)  # (3F, 2)
    e, _ = e.sort(dim=1)
    n = int(faces.max()) + 1 if faces.numel() else 1
    key = e[:, 0] * n + e[:, 1]  # 1-D keys: much faster than unique(dim=0)
    ukey, inv = torch.unique(key, return_inverse=True)
    uniq = torch.stack([ukey // n, ukey % n], 1)
    if return_inverse:
        return uniq, inv.reshape(-1, 3)
    return uniq


def edge_face_counts(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique edges ``(E, 2)`` and how many faces use each ``(E,)``. A closed manifold mesh has 2 everywhere."""
    e, inv = edges(faces, return_inverse=True)
    counts = torch.bincount(inv.reshape(-1), minlength=e.shape[0])
    return e, counts


def boundary_vertices(faces: torch.Tensor, num_verts: int | None = None) -> torch.Tensor:
    """Boolean mask ``(V,)`` of vertices on a boundary edge (an edge used by exactly one face)."""
    faces = _faces_arg(faces, num_verts)
    n = int(num_verts) if num_verts is not None else (int(faces.max()) + 1 if faces.numel() else 0)
    e, counts = edge_face_counts(faces)
    mask = torch.zeros(n, dtype=torch.bool, device=faces.device)
    b = e[counts == 1].reshape(-1)
    mask[b] = True
    return mask


def is_watertight(faces: torch.Tensor) -> bool:
    """True when every edge is shared by exactly two faces with opposite directions (closed, oriented)."""
    faces = _faces_arg(faces)
    if faces.shape[0] == 0:
        return False
    directed = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    n = int(faces.max()) + 1
    key = directed[:, 0] * n + directed[:, 1]
    rkey = directed[:, 1] * n + directed[:, 0]
    if torch.unique(key).numel() != key.numel():
        return False  # a directed edge used twice: inconsistent orientation or non-manifold
    return bool(torch.isin(rkey, key).all())


def _interior_edge_corners(faces: torch.Tensor):
    """The one edge-face adjacency computation: for every edge used by exactly two faces, its
    vertices and the two face-corner slots (``3 * face + k``, edge k joins corners k, k+1)."""
    e, inv = edges(faces, return_inverse=True)
    flat = inv.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=e.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    two = (counts == 2).nonzero().squeeze(1)
    return e[two], order[starts[two]], order[starts[two] + 1]


def face_adjacency(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of faces sharing an interior edge.

    Returns:
        ``(pairs (P, 2), edge_verts (P, 2))``: the two face ids and the shared edge's vertices,
        for every edge used by exactly two faces.
    """
    e, i, j = _interior_edge_corners(faces)
    return torch.stack([i // 3, j // 3], 1), e


def face_neighbors(faces: torch.Tensor) -> torch.Tensor:
    """Per face and edge k (from corner k to corner k+1) the face across that edge, ``(F, 3)``
    long; -1 for boundary edges and for edges shared by more than two faces."""
    faces = _faces_arg(faces)
    _, i, j = _interior_edge_corners(faces)
    out = torch.full((faces.shape[0] * 3,), -1, dtype=torch.long, device=faces.device)
    out[i] = j // 3
    out[j] = i // 3
    return out.reshape(-1, 3)


def edge_owners(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unique edge with the faces that use it: ``(edges (E, 2) sorted pairs, first face
    (E,), last face (E,), face count (E,))``; boundary edges have count 1 (first == last),
    non-manifold edges count > 2. Edges are in ``torch.unique`` order of their sorted pairs."""
    faces = _faces_arg(faces)
    F = faces.shape[0]
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    owner = torch.arange(F, device=faces.device).repeat(3)
    uniq, inv, counts = torch.unique(e.sort(dim=1)[0], dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    start = torch.cumsum(counts, 0) - counts
    return uniq, owner[order[start]], owner[order[start + counts - 1]], counts
