"""Uniform random sampling of points on triangle mesh surfaces (differentiable w.r.t. vertices).

Faces are drawn with probability proportional to their area and points uniformly inside a face
(``sqrt`` barycentric trick). The sample positions are barycentric combinations of the vertices,
so gradients reach the vertices; the discrete choice of faces gets no gradient (area changes move
samples only through the vertices, the standard PyTorch3D estimator).
"""

from __future__ import annotations

import torch

from .._validate import as_int
from ._checks import check_mesh, exact_norm
from .normals import _face_cross, _unit_face_normals


def sample_points(verts: torch.Tensor, faces: torch.Tensor, n: int, return_normals: bool = False,
                  return_faces: bool = False, generator: torch.Generator | None = None):
    """Sample ``n`` points uniformly on the surface.

    Args:
        verts: ``(V, 3)``; faces: ``(F, 3)``; n: number of samples.
        return_normals: also return the unit face normal of each sample ``(n, 3)``.
        return_faces: also return the face index of each sample ``(n,)``.
        generator: optional ``torch.Generator`` (on the verts' device) for reproducibility.

    Returns:
        ``points (n, 3)`` (and normals / face ids as asked, in that order). A mesh with zero
        total area raises ``ValueError``.
    """
    verts, faces = check_mesh(verts, faces)
    n = as_int(n, "n", minimum=1)
    cross = _face_cross(verts, faces)
    with torch.no_grad():
        areas = exact_norm(cross).to(torch.float64)
        if faces.shape[0] == 0 or not bool(areas.sum() > 0):
            raise ValueError("faces: the mesh has zero total area, nothing to sample")
        fi = torch.multinomial(areas, n, replacement=True, generator=generator)
        r = torch.rand(n, 2, dtype=verts.dtype, device=verts.device, generator=generator)
        s = r[:, 0].sqrt()
        w0 = 1.0 - s
        w1 = s * (1.0 - r[:, 1])
        w2 = s * r[:, 1]
    f = faces[fi]
    pts = w0[:, None] * verts[f[:, 0]] + w1[:, None] * verts[f[:, 1]] + w2[:, None] * verts[f[:, 2]]
    out = [pts]
    if return_normals:
        out.append(_unit_face_normals(verts, faces, cross)[fi])
    if return_faces:
        out.append(fi)
    return out[0] if len(out) == 1 else tuple(out)
