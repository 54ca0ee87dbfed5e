"""Tetrahedral meshes: structured tet lattices of boxes, tet volumes, boundary surfaces.

Convention: a tet ``(i0, i1, i2, i3)`` is positively oriented when
``det[x1-x0, x2-x0, x3-x0] > 0``; all builders here return positively oriented tets.
"""

from __future__ import annotations

import itertools

import torch

from .._validate import as_int, as_tuple, check_index
from ._checks import check_faces, check_points


def _kuhn_lattice(lo: torch.Tensor, hi: torch.Tensor, counts) -> tuple[torch.Tensor, torch.Tensor]:
    """Box ``[lo, hi]`` with ``counts = (nx, ny, nz)`` cells, each split into 6 Kuhn tets (conforming).

    Vertex ``(i, j, k)`` has index ``(i (ny+1) + j) (nz+1) + k``. float64 on the CPU.
    """
    nx, ny, nz = (int(c) for c in counts)
    axes = [torch.linspace(float(lo[d]), float(hi[d]), n + 1, dtype=torch.float64) for d, n in enumerate((nx, ny, nz))]
    X, Y, Z = torch.meshgrid(*axes, indexing="ij")
    verts = torch.stack([X, Y, Z], -1).reshape(-1, 3)
    ci, cj, ck = torch.meshgrid(torch.arange(nx), torch.arange(ny), torch.arange(nz), indexing="ij")
    base = ((ci * (ny + 1) + cj) * (nz + 1) + ck).reshape(-1)
    step = [(ny + 1) * (nz + 1), nz + 1, 1]
    tets = []
    for perm in itertools.permutations(range(3)):
        b = base + step[perm[0]]
        c = b + step[perm[1]]
        d = c + step[perm[2]]
        tets.append(torch.stack([base, b, c, d], 1))
    tets = torch.cat(tets)
    return verts, orient_tets(verts, tets)


def signed_tet_volumes(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Signed volumes ``(T,)`` = ``det[x1-x0, x2-x0, x3-x0] / 6`` (differentiable w.r.t. ``verts``)."""
    x = verts[tets]
    a, b, c = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]
    return (a * torch.cross(b, c, dim=-1)).sum(-1) / 6.0


def tet_volumes(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Signed volume of each tet ``(T,)`` (public, validated)."""
    check_points(verts, "verts")
    tets = check_faces(tets, verts.shape[0], verts.device, "tets", k=4)
    return signed_tet_volumes(verts, tets)


def orient_tets(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Swap two indices of negatively oriented tets so every tet has positive volume."""
    check_points(verts, "verts")
    tets = check_faces(tets, verts.shape[0], verts.device, "tets", k=4)
    neg = signed_tet_volumes(verts.detach(), tets) < 0
    return torch.where(neg[:, None], tets[:, [0, 2, 1, 3]], tets)


def tet_grid(resolution: int = 16, bounds=(-1.0, 1.0), dtype=torch.float32, device="cpu"):
    """Conforming tetrahedral grid of an axis-aligned cube (Kuhn / Freudenthal split, 6 tets per cell).

    Args:
        resolution: cells per axis ``n`` (``(n+1)^3`` vertices, ``6 n^3`` tets).
        bounds: ``(lo, hi)`` for all axes, or ``((xlo, ylo, zlo), (xhi, yhi, zhi))``.

    Returns:
        ``(verts ((n+1)^3, 3), tets (6 n^3, 4) long)``, positively oriented.
    """
    n = as_int(resolution, "resolution", minimum=1)
    lo = torch.as_tensor(bounds[0], dtype=torch.float64).expand(3)
    hi = torch.as_tensor(bounds[1], dtype=torch.float64).expand(3)
    if bool((hi <= lo).any()):
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
    v, t = _kuhn_lattice(lo, hi, (n, n, n))
    return v.to(dtype=dtype, device=device), t.to(device)


def tet_box(size=1.0, resolution=4, center=(0.0, 0.0, 0.0), dtype=torch.float32, device="cpu"):
    """Structured tet mesh of a box (e.g. the FEM cantilever beam).

    Args:
        size: side lengths, scalar or ``(sx, sy, sz)``.
        resolution: cells per axis, int or ``(nx, ny, nz)``.
        center: box centre.

    Returns:
        ``(verts ((nx+1)(ny+1)(nz+1), 3), tets (6 nx ny nz, 4) long)``, positively oriented.
        Vertex ``(i, j, k)`` (i along x) has index ``(i (ny+1) + j) (nz+1) + k``, so e.g. the
        ``x = min`` face is ``verts[:, 0] == verts[:, 0].min()``.
    """
    s = torch.tensor(as_tuple(size, "size", 3, positive=True), dtype=torch.float64)
    res = list(as_tuple(resolution, "resolution", 3, integer=True, minimum=1))
    c = torch.tensor(as_tuple(center, "center", 3), dtype=torch.float64)
    v, t = _kuhn_lattice(c - s / 2, c + s / 2, res)
    return v.to(dtype=dtype, device=device), t.to(device)


_OUT_FACES = torch.tensor([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])


def tet_faces(tets: torch.Tensor) -> torch.Tensor:
    """All ``4 T`` faces ``(4T, 3)`` of positively oriented tets, oriented outward from their tet
    (face ``k`` of tet ``t`` is row ``k T + t`` and is opposite corner ``k``)."""
    tets = check_index(tets, "tets", 2 ** 62, shape=("T", 4), size_name="any vertex index")
    return tets[:, _OUT_FACES.to(tets.device)].permute(1, 0, 2).reshape(-1, 3)


def tet_boundary_faces(tets: torch.Tensor) -> torch.Tensor:
    """Boundary surface ``(F, 3)`` of a tet mesh (faces used by one tet), outward oriented.

    Needs positively oriented tets (see :func:`orient_tets`). Indices refer to the tet vertices.
    """
    tets = check_index(tets, "tets", 2 ** 62, shape=("T", 4), size_name="any vertex index")
    f = tet_faces(tets)
    key = f.sort(1).values
    _, inv, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    return f[counts[inv] == 1]


def remove_unreferenced(verts: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop vertices no cell uses and reindex ``cells`` (faces or tets).

    Args:
        verts: ``(V, D)`` vertex positions (any ``D``; finite).
        cells: ``(C, k)`` integer indices into ``verts`` (faces ``k = 3``, tets ``k = 4``, ...).
    """
    check_points(verts, "verts", dim=verts.shape[-1] if isinstance(verts, torch.Tensor) and verts.dim() else 3)
    cells = check_index(cells, "cells", verts.shape[0], shape=("C", "k"), device=verts.device)
    used = torch.zeros(verts.shape[0], dtype=torch.bool, device=verts.device)
    used[cells.reshape(-1)] = True
    new_id = torch.cumsum(used.long(), 0) - 1
    return verts[used], new_id[cells]
