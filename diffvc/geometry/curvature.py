"""Discrete curvature of triangle meshes: angle-weighted normals, mixed Voronoi areas, Gaussian
curvature (angle defect), mean curvature (cotangent Laplacian), principal curvatures and
directions (Meyer et al. 2003 values, Rusinkiewicz 2004 directions).

Conventions (libigl's, where libigl has the quantity; checked against libigl in
``tests/geometry/test_curvature_libigl.py``):

* :func:`angle_weighted_normals` = ``igl.per_vertex_normals(V, F, ANGLE)`` (Thürmer & Wüthrich);
* :func:`voronoi_areas` = the diagonal of ``igl.massmatrix(V, F, MASSMATRIX_TYPE_VORONOI)`` (Meyer
  et al. 2003: Voronoi areas, half the triangle's area to an obtuse corner and a quarter to the
  others);
* :func:`angle_defect` = ``igl.gaussian_curvature(V, F)``: ``2 pi - sum of incident angles``, the
  *integrated* Gaussian curvature (also at boundary vertices, where it is not meaningful);
  :func:`gaussian_curvature` divides it by the Voronoi area (pointwise ``K``);
* :func:`mean_curvature_normal` = ``-M^{-1} L V / 2`` with libigl's ``L = igl.cotmatrix`` and
  ``M`` the Voronoi mass matrix: ``H n`` with ``H = (k1 + k2) / 2``; for outward-oriented faces
  a sphere of radius ``R`` has ``H = 1 / R`` (libigl's tutorial plots ``|-M^{-1} L V| = 2 |H|``).
* :func:`principal_curvatures`: ``k1 >= k2`` (``H = (k1 + k2) / 2``), positive where the surface
  bends away from its normal (a sphere with outward normals: ``1/R``); libigl's
  ``principal_curvature`` (quadric fitting) estimates the same quantities by another method.

Every quantity is invariant (angles, normals, directions) or covariant (areas ~ s^2, curvatures ~
1/s) under a uniform scale ``s``: no absolute floors. Degenerate faces (zero area, coincident
vertices) contribute nothing and give finite values and gradients (the gradient of a degenerate
face's angle is taken as 0).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_mesh
from .laplacian import _corner_edges, _edge_apply


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` over the last axis with a zero (not NaN) gradient at ``x = 0``."""
    s = (x * x).sum(-1)
    ok = s > 0
    return torch.where(ok, torch.sqrt(torch.where(ok, s, torch.ones_like(s))), torch.zeros_like(s))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    n = _safe_norm(x)[..., None]
    return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))


def _corners(verts, faces):
    """Per corner k: edge vectors to the next two corners, their dot, |cross| and the face cross."""
    v = [verts[faces[:, k]] for k in range(3)]
    a = [v[(k + 1) % 3] - v[k] for k in range(3)]
    b = [v[(k + 2) % 3] - v[k] for k in range(3)]
    dots = torch.stack([(a[k] * b[k]).sum(-1) for k in range(3)], 1)
    cross = torch.linalg.cross(v[1] - v[0], v[2] - v[0], dim=-1)
    return v, dots, cross


def corner_angles(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interior angle (radians) at each corner, ``(F, 3)``: ``atan2(|a x b|, a . b)`` (accurate at
    any scale and near 0 or pi). A corner with a zero-length edge gets angle 0, gradient 0."""
    verts, faces = check_mesh(verts, faces)
    return _angles(verts, faces)


def _angles(verts, faces):
    v, dots, cross = _corners(verts, faces)
    c = _safe_norm(cross)[:, None].expand_as(dots)
    zero = (c == 0) & (dots == 0)
    return torch.atan2(c, torch.where(zero, torch.ones_like(dots), dots))


def _scatter(values: torch.Tensor, faces: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-corner values ``(F, 3[, C])`` onto vertices ``(V[, C])``."""
    out = torch.zeros((n,) + values.shape[2:], dtype=values.dtype, device=values.device)
    return out.index_add(0, faces.reshape(-1), values.reshape((-1,) + values.shape[2:]))


def angle_weighted_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals ``(V, 3)``: the sum of the incident unit face normals weighted by the
    corner angles (libigl ``per_vertex_normals(..., ANGLE)``); 0 for isolated vertices or where
    the sum vanishes."""
    verts, faces = check_mesh(verts, faces)
    return _angle_normals(verts, faces)


def _angle_normals(verts, faces):
    _, _, cross = _corners(verts, faces)
    nf = _normalize(cross)
    ang = _angles(verts, faces)
    return _normalize(_scatter(ang[:, :, None] * nf[:, None, :], faces, verts.shape[0]))


def _corner_voronoi(verts, faces):
    """Per-corner mixed Voronoi areas ``(F, 3)`` (Meyer et al. 2003, as libigl's massmatrix)."""
    v, dots, cross = _corners(verts, faces)
    c2 = _safe_norm(cross)  # twice the area
    area = 0.5 * c2
    l2 = [((v[(k + 2) % 3] - v[(k + 1) % 3]) ** 2).sum(-1) for k in range(3)]  # squared length opposite corner k
    obtuse = (dots < 0).any(1)
    safe = torch.where(c2 > 0, c2, torch.ones_like(c2))
    cot = dots / safe[:, None]  # cot at each corner
    # Voronoi part of corner k: (|e_k,k+1|^2 cot(k+2) + |e_k,k+2|^2 cot(k+1)) / 8
    vor = torch.stack([(l2[(k + 2) % 3] * cot[:, (k + 2) % 3] + l2[(k + 1) % 3] * cot[:, (k + 1) % 3]) / 8.0
                       for k in range(3)], 1)
    obt = torch.where(dots < 0, 0.5 * area[:, None], 0.25 * area[:, None])
    use_vor = (~obtuse & (c2 > 0))[:, None]
    return torch.where(use_vor, vor, obt)


def voronoi_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mixed Voronoi vertex areas ``(V,)`` (the lumped mass matrix's diagonal; libigl
    ``massmatrix(..., VORONOI)``); they sum to the surface area."""
    verts, faces = check_mesh(verts, faces)
    return _scatter(_corner_voronoi(verts, faces), faces, verts.shape[0])


def angle_defect(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Integrated Gaussian curvature ``2 pi - sum of incident corner angles`` ``(V,)`` (libigl
    ``gaussian_curvature``). On a closed mesh the sum is ``2 pi chi`` (Gauss--Bonnet, exactly)."""
    verts, faces = check_mesh(verts, faces)
    return 2 * math.pi - _scatter(_angles(verts, faces), faces, verts.shape[0])


def _safe_div(a, b):
    ok = b > 0
    return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(a))


def gaussian_curvature(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Pointwise Gaussian curvature ``K = angle_defect / voronoi_area`` ``(V,)`` (1/m^2); 0 at
    vertices with no area. Meaningless at boundary vertices."""
    verts, faces = check_mesh(verts, faces)
    n = verts.shape[0]
    return _safe_div(2 * math.pi - _scatter(_angles(verts, faces), faces, n), _scatter(_corner_voronoi(verts, faces), faces, n))


def _cot_laplacian_apply(verts, faces):
    """``L V`` with ``L = D - W`` (positive semi-definite) and ``W_ij = (cot a + cot b) / 2``."""
    v, dots, cross = _corners(verts, faces)
    c2 = _safe_norm(cross)
    cot = torch.where((c2 > 0)[:, None], dots / torch.where(c2 > 0, c2, torch.ones_like(c2))[:, None],
                      torch.zeros_like(dots))
    return _edge_apply(*_corner_edges(faces, cot), verts)


def mean_curvature_normal(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean-curvature normal ``H n = -M^{-1} L V / 2`` (libigl's ``L = cotmatrix`` and Voronoi ``M``),
    ``(V, 3)`` (1/m). On a sphere of radius R it is ``n / R`` along the outward normal."""
    verts, faces = check_mesh(verts, faces)
    A = _scatter(_corner_voronoi(verts, faces), faces, verts.shape[0])
    return _safe_div(0.5 * _cot_laplacian_apply(verts, faces), A[:, None].expand(-1, 3))


def mean_curvature(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Signed mean curvature ``H = (k1 + k2) / 2`` ``(V,)`` (1/m): the mean-curvature normal
    projected on the angle-weighted normal (positive on a sphere with outward faces)."""
    verts, faces = check_mesh(verts, faces)
    return (mean_curvature_normal(verts, faces) * _angle_normals(verts, faces)).sum(-1)


def _tangent_frame(n):
    """An orthonormal tangent basis ``(u, w)`` of each unit normal ``n (V, 3)`` (deterministic)."""
    ax = torch.zeros_like(n)
    idx = n.detach().abs().argmin(-1)
    ax[torch.arange(n.shape[0]), idx] = 1.0
    u = _normalize(torch.linalg.cross(n, ax, dim=-1))
    w = torch.linalg.cross(n, u, dim=-1)
    return u, w


def principal_curvatures(verts: torch.Tensor, faces: torch.Tensor):
    """Principal curvatures and directions per vertex (Rusinkiewicz 2004).

    Values as Meyer et al. (2003): ``k1,2 = H +- sqrt(max(H^2 - K, 0))`` from :func:`mean_curvature`
    and :func:`gaussian_curvature`, which converge under refinement (the normal-difference tensor's
    own eigenvalues do not on irregular meshes: vertex normals are only first-order accurate there;
    measured ~2% error on icospheres at every level). Directions: per face, the second
    fundamental form ``II`` is the least-squares fit of the changes of the angle-weighted vertex
    normals along the three edges (``II e = dn``, Rusinkiewicz 2004); it is projected into each
    corner's vertex tangent frame, averaged with the corner's mixed Voronoi area as weight, and
    its eigenvector of the larger eigenvalue is ``d1``.

    Returns:
        ``(k1 (V,), k2 (V,), d1 (V, 3), d2 (V, 3))`` with ``k1 >= k2`` (1/m) and unit tangent
        directions ``d1 ⟂ d2 ⟂ n``. At umbilics (``k1 = k2``) the directions are arbitrary and
        the gradient of ``k1 - k2`` is taken as 0.
    """
    verts, faces = check_mesh(verts, faces)
    n_v = _angle_normals(verts, faces)
    v, _, cross = _corners(verts, faces)
    nf = _normalize(cross)
    e0 = v[2] - v[1]
    uf = _normalize(e0)
    wf = torch.linalg.cross(nf, uf, dim=-1)
    rows, rhs = [], []
    for k in range(3):
        e = v[(k + 2) % 3] - v[(k + 1) % 3]
        dn = n_v[faces[:, (k + 2) % 3]] - n_v[faces[:, (k + 1) % 3]]
        eu, ew = (e * uf).sum(-1), (e * wf).sum(-1)
        z = torch.zeros_like(eu)
        rows += [torch.stack([eu, ew, z], -1), torch.stack([z, eu, ew], -1)]
        rhs += [(dn * uf).sum(-1), (dn * wf).sum(-1)]
    A = torch.stack(rows, 1)  # (F, 6, 3)
    b = torch.stack(rhs, 1)  # (F, 6)
    AtA = A.transpose(1, 2) @ A
    Atb = (A.transpose(1, 2) @ b[..., None])[..., 0]
    # scale-free regularisation of degenerate faces: AtA is ~|e|^2, so a relative ridge
    tr = AtA.diagonal(dim1=1, dim2=2).sum(-1)
    ok = tr > 0
    ridge = torch.where(ok, 1e-12 * tr, torch.ones_like(tr))[:, None, None] * torch.eye(3, dtype=verts.dtype, device=verts.device)
    sol = torch.linalg.solve(AtA + ridge, Atb[..., None])[..., 0] * ok[:, None]
    # the face tensor in 3D: T = [uf wf] [[e f][f g]] [uf wf]^T
    Bf = torch.stack([uf, wf], -1)  # (F, 3, 2)
    II = torch.stack([torch.stack([sol[:, 0], sol[:, 1]], -1), torch.stack([sol[:, 1], sol[:, 2]], -1)], -2)
    T = Bf @ II @ Bf.transpose(1, 2)  # (F, 3, 3)
    wts = _corner_voronoi(verts, faces)  # (F, 3)
    nV = verts.shape[0]
    acc = _scatter(wts[:, :, None, None] * T[:, None], faces, nV)  # (V, 3, 3)
    wsum = _scatter(wts, faces, nV)
    Tv = _safe_div(acc, wsum[:, None, None].expand_as(acc))
    u, w = _tangent_frame(n_v)
    P = torch.stack([u, w], -1)  # (V, 3, 2)
    S = P.transpose(1, 2) @ Tv @ P  # (V, 2, 2)
    a, bb, c = S[:, 0, 0], 0.5 * (S[:, 0, 1] + S[:, 1, 0]), S[:, 1, 1]
    # values: Meyer et al. (2003) from the convergent H (cotangent) and K (angle defect);
    # directions: the eigenvectors of the averaged shape operator
    n = verts.shape[0]
    A = _scatter(wts, faces, n)
    H = (_safe_div(0.5 * _cot_laplacian_apply(verts, faces), A[:, None].expand(-1, 3)) * n_v).sum(-1)
    K = _safe_div(2 * math.pi - _scatter(_angles(verts, faces), faces, n), A)
    disc = H * H - K
    root = torch.where(disc > 0, torch.sqrt(torch.where(disc > 0, disc, torch.ones_like(disc))), torch.zeros_like(disc))
    k1, k2 = H + root, H - root
    x, y = a - c, 2 * bb
    zero = (x == 0) & (y == 0)
    theta = 0.5 * torch.atan2(y, torch.where(zero, torch.ones_like(x), x))
    d1 = torch.cos(theta)[:, None] * u + torch.sin(theta)[:, None] * w
    d2 = torch.linalg.cross(n_v, d1, dim=-1)
    return k1, k2, d1, d2
