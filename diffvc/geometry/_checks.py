"""Boundary validation of geometry inputs (private).

Public functions call these once at their entry; inner code trusts its inputs. Errors name the
offending argument and the expected shape.
"""

from __future__ import annotations

import torch

from .._validate import check_faces as _check_faces
from .._validate import check_float, check_same_dtype  # noqa: F401  (re-exported for geometry modules)


def check_points(x, name: str = "verts", dim: int = 3, finite: bool = True) -> torch.Tensor:
    """``x`` must be a floating tensor of shape ``(N, dim)`` with finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {dim}), got {type(x).__name__}")
    return check_float(x, name, shape=("N", dim), finite=finite)


def check_faces(faces, num_verts: int, device: torch.device, name: str = "faces", k: int = 3) -> torch.Tensor:
    """``faces`` must be an integer tensor ``(F, k)`` on ``device`` indexing ``[0, num_verts)``
    (:func:`diffvc._validate.check_faces`). Returns the faces as ``int64``."""
    return _check_faces(faces, num_verts, name=name, device=device, k=k)


def check_mesh(verts, faces, vname: str = "verts", fname: str = "faces", finite: bool = True):
    """Validate a triangle mesh; returns ``(verts, faces_long)``."""
    verts = check_points(verts, vname, finite=finite)
    faces = check_faces(faces, verts.shape[0], verts.device, fname)
    return verts, faces


def safe_norm(v: torch.Tensor, dim: int = -1, keepdim: bool = False, eps: float = 1e-20) -> torch.Tensor:
    """Euclidean norm with a finite gradient at zero (``sqrt(max(|v|^2, eps))``; zero gradient there)."""
    sq = (v * v).sum(dim=dim, keepdim=keepdim)
    return torch.sqrt(sq.clamp_min(eps))


def safe_normalize(v: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``v / |v|``; a zero vector maps to zero (finite gradient), never NaN."""
    n = safe_norm(v, dim=dim, keepdim=True, eps=eps * eps)
    return v / n.clamp_min(eps)
