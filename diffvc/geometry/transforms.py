"""Rigid and affine transforms of point sets (differentiable in points and transform parameters).

Rotations act on row-vector points as ``x' = x R^T + t``. Quaternions are ``(w, x, y, z)``
(scalar first) everywhere in diffvc: here, in rigid-body states (:mod:`diffvc.physics.rigid`)
and in the pipeline's bindings.
"""

from __future__ import annotations

import torch

from .._validate import as_tensor, check_finite, check_float, check_same_device, check_same_dtype
from ._checks import check_points, safe_norm


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from axis-angle vectors ``(..., 3)`` (angle = norm, radians).

    Uses Rodrigues' formula with a Taylor expansion near zero angle, so the gradient at the
    identity is finite and exact.
    """
    check_float(axis_angle, "axis_angle", shape=(..., 3), coerce=False)
    th2 = (axis_angle * axis_angle).sum(-1)
    small = th2 < 1e-8
    th2s = torch.where(small, torch.ones_like(th2), th2)
    th = torch.sqrt(th2s)
    a = torch.where(small, 1 - th2 / 6 + th2 * th2 / 120, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24 + th2 * th2 / 720, (1 - torch.cos(th)) / th2s)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(axis_angle.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(K)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` as (w, x, y, z); normalised inside."""
    check_float(q, "q", shape=(..., 4), coerce=False)
    q = q / safe_norm(q, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    return m.reshape(q.shape[:-1] + (3, 3))


def quaternion_apply(q: torch.Tensor, v: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate vectors ``v (..., 3)`` by unit quaternions ``q (..., 4)`` as (w, x, y, z)
    (broadcast; ``inverse``: by the conjugate). ``q`` is used as given (not normalised)."""
    check_float(q, "q", shape=(..., 4), coerce=False)
    check_float(v, "v", shape=(..., 3), coerce=False)
    check_same_dtype(("q", q), ("v", v))
    try:
        batch = torch.broadcast_shapes(q.shape[:-1], v.shape[:-1])
    except RuntimeError:
        raise ValueError(f"q {tuple(q.shape)} and v {tuple(v.shape)} must broadcast over their leading "
                         "dimensions") from None
    u = (-q[..., 1:] if inverse else q[..., 1:]).expand(*batch, 3)
    s = q[..., :1]
    v = v.expand(*batch, 3)
    t = 2.0 * torch.linalg.cross(u, v, dim=-1)
    return v + s * t + torch.linalg.cross(u, t, dim=-1)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation ``Rz(c) @ Ry(b) @ Rx(a)`` from ``angles (..., 3) = (a, b, c)`` in radians."""
    check_float(angles, "angles", shape=(..., 3), coerce=False)
    eye = torch.eye(3, dtype=angles.dtype, device=angles.device)
    rx = axis_angle_to_matrix(angles[..., 0:1] * eye[0])
    ry = axis_angle_to_matrix(angles[..., 1:2] * eye[1])
    rz = axis_angle_to_matrix(angles[..., 2:3] * eye[2])
    return rz @ ry @ rx


def transform_points(points: torch.Tensor, matrix: torch.Tensor, translation: torch.Tensor | None = None) -> torch.Tensor:
    """Apply an affine map to ``points (N, 3)``.

    Args:
        matrix: ``(3, 3)`` linear part (``x' = x M^T + t``) or ``(4, 4)`` homogeneous matrix (then
            ``translation`` must be None; a projective last row divides by w).
        translation: optional ``(3,)``.
    """
    check_points(points, "points")
    check_float(matrix, "matrix", coerce=False)
    if translation is not None:
        check_float(translation, "translation", coerce=False)
    check_same_dtype(("points", points), ("matrix", matrix), ("translation", translation))
    check_same_device(("points", points), ("matrix", matrix), ("translation", translation))
    if matrix.shape == (4, 4):
        if translation is not None:
            raise ValueError("translation must be None when matrix is a (4, 4) homogeneous matrix")
        h = points @ matrix[:3, :3].T + matrix[:3, 3]
        w = points @ matrix[3, :3] + matrix[3, 3]
        if bool((matrix[3] != torch.tensor([0, 0, 0, 1], dtype=matrix.dtype, device=matrix.device)).any()):
            return h / w[:, None]
        return h
    if matrix.shape != (3, 3):
        raise ValueError(f"matrix must have shape (3, 3) or (4, 4), got {tuple(matrix.shape)}")
    out = points @ matrix.T
    if translation is not None:
        if translation.shape != (3,):
            raise ValueError(f"translation must have shape (3,), got {tuple(translation.shape)}")
        out = out + translation
    return out


def rigid_transform(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``x' = x R^T + t``; ``rotation`` is a ``(3, 3)`` matrix or an axis-angle ``(3,)``."""
    check_float(rotation, "rotation", coerce=False)
    if rotation.shape == (3,):
        rotation = axis_angle_to_matrix(rotation)
    return transform_points(points, rotation, translation)


def scale(points: torch.Tensor, factor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Scale ``points`` by ``factor`` (scalar or ``(3,)``) about ``center`` (default origin)."""
    check_points(points, "points")
    factor = as_tensor(factor, "factor", dtype=points.dtype, device=points.device)
    if factor.numel() not in (1, 3):
        raise ValueError(f"factor must be a scalar or (3,), got shape {tuple(factor.shape)}")
    check_finite(factor, "factor")
    factor = factor.reshape(-1)
    if center is None:
        return points * factor
    center = check_float(as_tensor(center, "center", dtype=points.dtype, device=points.device), "center", shape=(3,))
    return (points - center) * factor + center


def translate(points: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``points + offset`` with ``offset (3,)``."""
    check_points(points, "points")
    offset = as_tensor(offset, "offset", dtype=points.dtype, device=points.device)
    return points + check_float(offset, "offset", shape=(3,))


def normalize_to_unit_box(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre the bounding box at the origin and scale its longest side to 1; returns ``(points', center, scale)``."""
    check_points(points, "points")
    lo, hi = points.min(0).values, points.max(0).values
    center = (lo + hi) / 2
    s = (hi - lo).max()
    s = torch.where(s > 0, s, torch.ones_like(s))  # no absolute floor: covariant at every scale; a point set of one point keeps scale 1
    return (points - center) / s, center, s
