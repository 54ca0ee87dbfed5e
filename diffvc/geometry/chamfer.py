"""Chamfer distance between point sets, with an optional normal-consistency term."""

from __future__ import annotations

import torch

from ._checks import check_points, exact_norm
from .knn import nearest_neighbor


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, x_normals: torch.Tensor | None = None,
                     y_normals: torch.Tensor | None = None, squared: bool = True, reduction: str = "mean",
                     method: str = "auto"):
    """Symmetric Chamfer distance ``mean_x d(x, Y) + mean_y d(y, X)``.

    Args:
        x: ``(N, 3)``; y: ``(M, 3)`` (same dtype and device).
        x_normals, y_normals: optional unit normals ``(N, 3)``, ``(M, 3)``; if both are given the
            normal term ``mean(1 - |cos|)`` between each point's normal and its nearest neighbour's
            normal is returned too (orientation-agnostic, as in PyTorch3D).
        squared: use squared distances (smooth; the default) or distances (with a finite gradient
            at coincident points).
        reduction: ``"mean"`` (each direction averaged, then summed) or ``"sum"``.
        method: nearest-neighbour search, see :func:`diffvc.geometry.knn`.

    Returns:
        ``loss`` (scalar), or ``(loss, normal_loss)`` when normals are given. Differentiable w.r.t.
        points and normals (the neighbour assignment is piecewise constant).
    """
    check_points(x, "x")
    check_points(y, "y")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"x and y must be non-empty, got {x.shape[0]} and {y.shape[0]} points")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    dxy, ixy = nearest_neighbor(x, y, method)
    dyx, iyx = nearest_neighbor(y, x, method)
    if not squared:
        dxy = exact_norm(x - y[ixy], rescale=False)
        dyx = exact_norm(y - x[iyx], rescale=False)
    red = torch.mean if reduction == "mean" else torch.sum
    loss = red(dxy) + red(dyx)
    if (x_normals is None) != (y_normals is None):
        raise ValueError("pass both x_normals and y_normals, or neither")
    if x_normals is None:
        return loss
    check_points(x_normals, "x_normals")
    check_points(y_normals, "y_normals")
    if x_normals.shape != x.shape or y_normals.shape != y.shape:
        raise ValueError("x_normals and y_normals must have the shapes of x and y")
    cxy = (x_normals * y_normals[ixy]).sum(-1).abs()
    cyx = (y_normals * x_normals[iyx]).sum(-1).abs()
    nloss = red(1 - cxy) + red(1 - cyx)
    return loss, nloss
