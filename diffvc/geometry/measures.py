"""Integral measures of triangle meshes: areas, enclosed volume, mass properties of the solid.

Volume, centre of mass and inertia use the divergence theorem on the closed surface (a signed
tetrahedron per face), so they are exact for a closed, consistently outward-oriented mesh and
differentiable everywhere (polynomials in the vertex positions).
"""

from __future__ import annotations

import torch

from .._validate import as_tensor, check_positive
from ._checks import check_mesh, exact_norm
from .normals import _face_cross


def face_areas(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area of each face, ``(F,)`` (units of ``verts`` squared).

    ``|(v1-v0) x (v2-v0)| / 2`` with no floor, so exact (covariant, ``s^2``) at every scale; a
    zero-area face gives exactly 0 with a zero (finite) gradient.
    """
    verts, faces = check_mesh(verts, faces)
    return 0.5 * exact_norm(_face_cross(verts, faces))


def surface_area(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Total surface area (scalar)."""
    return face_areas(verts, faces).sum()


def _signed_tets(verts, faces, origin):
    a = verts[faces[:, 0]] - origin
    b = verts[faces[:, 1]] - origin
    c = verts[faces[:, 2]] - origin
    det = (a * torch.cross(b, c, dim=-1)).sum(-1)  # 6 * signed volume of tet (origin, a, b, c)
    return a, b, c, det


def volume(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Signed enclosed volume (scalar); positive for a closed outward-oriented mesh.

    Computed as signed tets from the (detached) vertex mean, so for a closed mesh the value and
    gradient are exact; for an open mesh the value depends on that reference point.
    """
    verts, faces = check_mesh(verts, faces)
    origin = verts.detach().mean(0) if verts.shape[0] else verts.new_zeros(3)
    _, _, _, det = _signed_tets(verts, faces, origin)
    return det.sum() / 6.0


def mass_properties(verts: torch.Tensor, faces: torch.Tensor, density: float | torch.Tensor = 1.0):
    """Mass, centre of mass and inertia tensor (about the centre of mass) of the enclosed solid.

    Args:
        verts: ``(V, 3)``; faces: ``(F, 3)`` closed, outward-oriented surface.
        density: uniform density (kg/m^3), float or scalar tensor (differentiable).

    Returns:
        ``(mass, com, inertia)``: scalar, ``(3,)``, ``(3, 3)`` (kg m^2, world axes). An empty or
        zero-volume mesh (|volume| at most ``100 eps`` times its bounding box's volume, i.e. zero up
        to rounding; relative, so the result is covariant at every scale) gives zero mass, the vertex mean as the centre and zero inertia (finite
        gradients). An open surface is closed by the cone from the vertex mean to its boundary
        (the signed tetrahedra from that point): the result is that solid's, not a guess at a
        missing face.
    """
    verts, faces = check_mesh(verts, faces)
    origin = verts.detach().mean(0) if verts.shape[0] else verts.new_zeros(3)
    a, b, c, det = _signed_tets(verts, faces, origin)
    vol = det.sum() / 6.0
    s = a + b + c
    first = (det[:, None] * s).sum(0) / 24.0  # integral of x dV (origin-relative)
    # integral of x x^T dV over tet (0, a, b, c) = det/120 * (a a^T + b b^T + c c^T + s s^T)
    outer = (a[:, :, None] * a[:, None, :] + b[:, :, None] * b[:, None, :] + c[:, :, None] * c[:, None, :]
             + s[:, :, None] * s[:, None, :])
    second = (det[:, None, None] * outer).sum(0) / 120.0
    ext = (verts.detach().amax(0) - verts.detach().amin(0)).max() if verts.shape[0] else verts.new_zeros(())
    tiny = 100 * torch.finfo(verts.dtype).eps * ext ** 3
    solid = (vol.detach().abs() > tiny) & (vol.detach() != 0)
    vol = torch.where(solid, vol, torch.zeros_like(vol))
    vol_safe = torch.where(solid, vol, torch.full_like(vol, 1.0))
    com_rel = torch.where(solid, first / vol_safe, torch.zeros_like(first))
    second = torch.where(solid, second, torch.zeros_like(second))
    cov = second - vol * com_rel[:, None] * com_rel[None, :]  # second moment about the COM
    density = as_tensor(density, "density", dtype=verts.dtype, device=verts.device)
    if density.numel() != 1:
        raise ValueError(f"density must be a scalar, got shape {tuple(density.shape)}")
    density = check_positive(density.reshape(()), "density", strict=False)
    eye = torch.eye(3, dtype=verts.dtype, device=verts.device)
    inertia = density * (torch.diagonal(cov).sum() * eye - cov)
    return density * vol, origin + com_rel, inertia
