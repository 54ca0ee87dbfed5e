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


def exact_norm(v: torch.Tensor, dim: int = -1, keepdim: bool = False, rescale: bool = True) -> torch.Tensor:
    """Euclidean norm without any floor: exact at every scale, ``0`` (with a zero gradient, not
    NaN) for the zero vector.

    With ``rescale`` it is computed as ``m * |v / m|`` with ``m = max |v_i|`` (detached), so the
    squares neither underflow nor overflow whatever the magnitude (float32 included); the gradient
    is ``v / |v|``. ``rescale=False`` is about 2x cheaper (1M vectors, forward+backward, one
    thread: median 0.039 s against 0.093 s, as fast as the floored ``safe_norm``) and exact while ``|v|^2`` stays in the dtype's normal range (``|v|`` in about
    ``[1e-19, 1e19]`` for float32): for per-point fields evaluated on large grids (SDFs).
    """
    if not rescale:
        sq = (v * v).sum(dim=dim, keepdim=keepdim)
        ok = sq > 0
        return torch.where(ok, torch.sqrt(torch.where(ok, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    m = v.detach().abs().amax(dim=dim, keepdim=True) if v.numel() else v.detach().abs().sum(dim, keepdim=True)
    ok = m > 0
    u = v / torch.where(ok, m, torch.ones_like(m))
    s = (u * u).sum(dim=dim, keepdim=True)
    n = torch.where(ok, m * torch.sqrt(torch.where(ok, s, torch.ones_like(s))), torch.zeros_like(s))
    return n if keepdim else n.squeeze(dim)


def safe_div(a: torch.Tensor, b: torch.Tensor, ok: torch.Tensor | None = None) -> torch.Tensor:
    """``a / b`` where ``ok`` (default ``b != 0``), else ``0``; finite values and gradients
    everywhere (the masked branch never divides by zero)."""
    ok = (b != 0) if ok is None else ok
    return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(a))


def exact_normalize(v: torch.Tensor, dim: int = -1, degenerate: torch.Tensor | None = None) -> torch.Tensor:
    """``v / |v|`` with no absolute floor (unit length at every scale); the zero vector, and rows
    flagged ``degenerate`` (a boolean mask broadcastable to ``|v|``, e.g. "zero up to rounding"
    relative to the row's own scale), map to zero with a zero gradient, never NaN."""
    n = exact_norm(v, dim=dim, keepdim=True)
    ok = n > 0
    if degenerate is not None:
        ok = ok & ~degenerate.reshape(n.shape)
    return safe_div(v, n, ok)
