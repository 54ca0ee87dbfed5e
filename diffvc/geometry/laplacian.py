"""Mesh Laplacians as torch sparse matrices (positive semi-definite convention ``L = D - W``).

``L @ x`` is zero for constant ``x``. The cotangent Laplacian is also zero for any linear function
at interior vertices (it is the FEM stiffness matrix of piecewise-linear functions).
"""

from __future__ import annotations

import torch

from .._validate import check_faces as _check_faces
from .._validate import as_int, check_finite, check_same_device, check_same_dtype, describe
from ._checks import check_mesh, exact_norm, safe_div
from .normals import _degenerate_faces, _face_cross
from .topology import edges as _edges


def _assemble(i: torch.Tensor, j: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse ``L`` with off-diagonals ``-w`` at (i, j) and (j, i) and row sums on the diagonal."""
    diag = torch.zeros(n, dtype=w.dtype, device=w.device).index_add(0, i, w).index_add(0, j, w)
    ar = torch.arange(n, device=w.device)
    idx = torch.cat([torch.stack([i, j]), torch.stack([j, i]), torch.stack([ar, ar])], dim=1)
    val = torch.cat([-w, -w, diag])
    return torch.sparse_coo_tensor(idx, val, (n, n), check_invariants=False).coalesce()


def uniform_laplacian(faces: torch.Tensor, num_verts: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Combinatorial (graph) Laplacian: ``L_ii = degree(i)``, ``L_ij = -1`` for each edge.

    Args:
        faces: ``(F, 3)`` integer indices; num_verts: ``V``.

    Returns:
        ``(V, V)`` sparse COO (coalesced), ``dtype`` on ``device`` (default: faces' device).
    """
    num_verts = as_int(num_verts, "num_verts", minimum=0)
    faces = _check_faces(faces, num_verts, device=faces.device if isinstance(faces, torch.Tensor) else None,
                         size_name="num_verts")
    device = faces.device if device is None else torch.device(device)
    e = _edges(faces).to(device)
    w = torch.ones(e.shape[0], dtype=dtype, device=device)
    return _assemble(e[:, 0], e[:, 1], w, num_verts)


def cotangent_weights(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-face cotangents ``(F, 3)``: entry k is the cotangent of the angle at corner k.

    ``cot = (a . b) / |a x b|`` with no absolute floor, so scale-free at every scale. A degenerate
    face (zero area up to rounding relative to its own longest edge squared, see
    :func:`diffvc.geometry.face_normals`) gets cotangents 0 with a zero gradient: it contributes
    nothing to the Laplacian (its stiffness is undefined), never a huge or NaN weight.
    """
    verts, faces = check_mesh(verts, faces)
    return _cotangent_weights(verts, faces)


def _cotangent_weights(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    v = [verts[faces[:, k]] for k in range(3)]
    cross = _face_cross(verts, faces)  # |a x b| is twice the area at every corner
    c = exact_norm(cross)
    ok = ~_degenerate_faces(verts, faces, cross)
    cots = []
    for k in range(3):
        a = v[(k + 1) % 3] - v[k]
        b = v[(k + 2) % 3] - v[k]
        cots.append(safe_div((a * b).sum(-1), c, ok))
    return torch.stack(cots, dim=1)


def cotangent_laplacian(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Cotangent Laplacian ``L_ij = -(cot a_ij + cot b_ij) / 2``, ``L_ii = -sum_j L_ij``.

    Differentiable w.r.t. ``verts`` (the sparse values carry autograd). Not normalised by vertex
    areas: ``L`` is the stiffness matrix; see :func:`vertex_areas` for the lumped mass matrix.

    Args:
        verts: ``(V, 3)``; faces: ``(F, 3)``.

    Returns:
        ``(V, V)`` sparse COO, coalesced, dtype of ``verts``.
    """
    verts, faces = check_mesh(verts, faces)
    return _assemble(*_cotangent_edges(verts, faces), verts.shape[0])


def _cotangent_edges(verts: torch.Tensor, faces: torch.Tensor):
    """``(i, j, w)`` of :func:`cotangent_laplacian` (:func:`_corner_edges` of its cotangents)."""
    return _corner_edges(faces, _cotangent_weights(verts, faces))


def _corner_edges(faces: torch.Tensor, cot: torch.Tensor):
    """``(i, j, w)`` per face corner (an edge shared by two faces appears twice): the edge opposite
    corner k joins corners k+1 and k+2, with weight ``cot[:, k] / 2`` (``cot`` (F, 3))."""
    i = torch.cat([faces[:, 1], faces[:, 2], faces[:, 0]])
    j = torch.cat([faces[:, 2], faces[:, 0], faces[:, 1]])
    return i, j, 0.5 * torch.cat([cot[:, 0], cot[:, 1], cot[:, 2]])


def _edge_apply(i: torch.Tensor, j: torch.Tensor, w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``L x`` for the Laplacian :func:`_assemble` builds from ``(i, j, w)`` (``w = None``: 1), without
    forming it: ``sum_j w_ij (x_i - x_j)`` by two scatters, so its backward is linear in the edge
    count (``torch.sparse.mm``'s gradient w.r.t. differentiable values is dense V x V, see :func:`_spmm`)."""
    d = x[i] - x[j]
    if w is not None:
        d = w[:, None] * d
    return torch.zeros_like(x).index_add(0, i, d).index_add(0, j, -d)


def vertex_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Barycentric (lumped) vertex areas ``(V,)``: a third of each incident face's area."""
    from .measures import face_areas

    verts, faces = check_mesh(verts, faces)
    a = face_areas(verts, faces) / 3.0
    out = torch.zeros(verts.shape[0], dtype=verts.dtype, device=verts.device)
    for k in range(3):
        out = out.index_add(0, faces[:, k], a)
    return out


def laplacian_apply(L: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``L @ x`` for a sparse ``L`` ``(V, V)`` and ``x`` ``(V, C)`` or ``(V,)`` of the same dtype
    (differentiable in both ``L``'s values and ``x``)."""
    if not isinstance(L, torch.Tensor) or L.dim() != 2 or L.shape[0] != L.shape[1]:
        raise ValueError(f"L must be a square (V, V) sparse tensor, got {describe(L)}")
    if not isinstance(x, torch.Tensor) or x.dim() not in (1, 2) or x.shape[0] != L.shape[1]:
        raise ValueError(f"x must have shape ({L.shape[1]}, C) or ({L.shape[1]},), got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    check_finite(x, "x")
    check_same_dtype(("L", L), ("x", x))
    check_same_device(("L", L), ("x", x))
    if x.dim() == 1:
        return _spmm(L, x[:, None])[:, 0] if L.is_sparse else L @ x
    return _spmm(L, x) if L.is_sparse else L @ x


def _spmm(L: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``L @ x`` for a sparse COO ``L`` ``(V, V)`` and a dense ``x`` ``(V, C)`` (checked by the
    caller). Where ``L``'s values carry a gradient (a cotangent Laplacian of vertices being
    optimised) the product is a gather and a scatter over the nonzeros, whose backward is O(nnz):
    ``torch.sparse.mm``'s gradient w.r.t. a sparse matrix forms the dense ``g x^T`` (V x V) first
    (100k-face mesh: 11 s and 20 GB for one backward, against milliseconds here). Otherwise
    ``torch.sparse.mm``."""
    if not L.requires_grad:
        return torch.sparse.mm(L, x)
    Lc = L if L.is_coalesced() else L.coalesce()
    idx, val = Lc.indices(), Lc.values()
    out = torch.zeros(L.shape[0], x.shape[1], dtype=torch.result_type(val, x), device=x.device)
    return out.index_add(0, idx[0], val[:, None] * x[idx[1]])
