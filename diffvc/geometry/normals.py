"""Face and vertex normals of triangle meshes."""

from __future__ import annotations

import torch

from ._checks import check_mesh, safe_normalize


def _face_cross(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return torch.cross(v1 - v0, v2 - v0, dim=-1)


def _scatter_corners(verts: torch.Tensor, faces: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Sum per-face vectors ``n (F, 3)`` into their three corners' vertices ``(V, 3)``.

    Three index_adds: measured faster on CPU than one index_add over ``repeat_interleave``d rows.
    """
    acc = torch.zeros_like(verts)
    for k in range(3):
        acc = acc.index_add(0, faces[:, k], n)
    return acc


def face_normals(verts: torch.Tensor, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-face normals, counter-clockwise winding is the front side.

    Args:
        verts: ``(V, 3)`` float vertex positions.
        faces: ``(F, 3)`` integer vertex indices.
        normalize: unit normals if True, else the area-weighted ``(v1-v0) x (v2-v0)`` (length = 2 * area).

    Returns:
        ``(F, 3)``. A zero-area face gets the zero normal and a finite gradient.
    """
    verts, faces = check_mesh(verts, faces)
    n = _face_cross(verts, faces)
    return safe_normalize(n) if normalize else n


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (sum of incident face cross products, normalised).

    Args:
        verts: ``(V, 3)``; faces: ``(F, 3)``.

    Returns:
        ``(V, 3)`` unit normals; isolated vertices (or only degenerate incident faces) get zero.
    """
    verts, faces = check_mesh(verts, faces)
    n = _face_cross(verts, faces)
    acc = _scatter_corners(verts, faces, n)
    return safe_normalize(acc)


def mesh_normals(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit face normals ``(F, 3)`` and area-weighted unit vertex normals ``(V, 3)`` in one pass
    (one validation, one cross product), same values as :func:`face_normals` / :func:`vertex_normals`."""
    verts, faces = check_mesh(verts, faces)
    n = _face_cross(verts, faces)
    acc = _scatter_corners(verts, faces, n)
    return safe_normalize(n), safe_normalize(acc)
