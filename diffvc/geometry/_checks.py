"""Boundary validation of geometry inputs (private).

Public functions call these once at their entry; inner code trusts its inputs. Errors name the
offending argument and the expected shape.
"""

from __future__ import annotations

import torch


def check_points(x, name: str = "verts", dim: int = 3, finite: bool = True) -> torch.Tensor:
    """``x`` must be a floating tensor of shape ``(N, dim)`` with finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {dim}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/float64), got {x.dtype}")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_faces(faces, num_verts: int, device: torch.device, name: str = "faces", k: int = 3) -> torch.Tensor:
    """``faces`` must be an integer tensor ``(F, k)`` on ``device`` indexing ``[0, num_verts)``.

    Returns the faces as ``int64``.
    """
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (F, {k}), got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[1] != k:
        raise ValueError(f"{name} must have shape (F, {k}), got {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.dtype == torch.bool or faces.is_complex():
        raise TypeError(f"{name} must be an integer tensor (int64 preferred), got {faces.dtype}")
    if faces.device != torch.device(device) and not (
        faces.device.type == torch.device(device).type and torch.device(device).index is None
    ):
        raise ValueError(f"{name} is on {faces.device} but the vertices are on {device}")
    if faces.numel():
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= num_verts:
            raise IndexError(f"{name} indices must lie in [0, {num_verts}), got range [{lo}, {hi}]")
    return faces.long()


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
