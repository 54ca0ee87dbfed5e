"""Analytic signed distance functions and smooth constructive solid geometry.

Every function maps query points ``p (..., 3)`` to signed distances ``(...)`` (negative inside),
is differentiable w.r.t. the points and the shape parameters (tensors or floats), and has finite
gradients everywhere (norms are taken with a clamped square root, so e.g. the gradient at a
sphere's centre is zero, not NaN).

Smooth CSG uses the polynomial smooth minimum of Quilez with radius ``k`` (``k = 0`` is the hard
min/max); it is exact far from the blend region and C1 inside it. Compose with lambdas::

    blob = lambda p: smooth_union(sdf_sphere(p, (-.3, 0, 0), .4), sdf_sphere(p, (.3, 0, 0), .35), k=.2)
    verts, faces = sdf_to_mesh(blob, resolution=48)
"""

from __future__ import annotations

import torch

from .._validate import as_tensor, check_finite, check_float, check_positive, check_same_dtype, describe
from ._checks import safe_norm


def _t(x, like: torch.Tensor, name: str = "value", kind: str = "scalar", positive: bool = False,
       nonneg: bool = False) -> torch.Tensor:
    """A shape parameter as a tensor of the points' dtype and device (tensors keep their autograd
    history): ``kind`` "scalar" (a number, or a tensor broadcastable against the distances) or
    "vec3" (shape ``(..., 3)``); finite, and > 0 / >= 0 when asked."""
    t = as_tensor(x, name, dtype=like.dtype, device=like.device)
    if kind == "vec3" and (t.dim() == 0 or t.shape[-1] != 3):
        raise ValueError(f"{name} must have shape (3,) (or (..., 3)), got {tuple(t.shape)}")
    if positive or nonneg:
        check_positive(t, name, strict=positive)
    else:
        check_finite(t, name)
    return t


def _check(p: torch.Tensor, name: str = "points") -> torch.Tensor:
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a floating tensor of shape (..., 3), got {type(p).__name__}")
    return check_float(p, name, shape=(..., 3))


def sdf_sphere(p: torch.Tensor, center=(0.0, 0.0, 0.0), radius=1.0) -> torch.Tensor:
    """Sphere of ``radius`` at ``center``: ``|p - c| - r``."""
    _check(p, "p")
    return safe_norm(p - _t(center, p, "center", "vec3")) - _t(radius, p, "radius", nonneg=True)


def sdf_box(p: torch.Tensor, half_size=(0.5, 0.5, 0.5), center=(0.0, 0.0, 0.0), rounding=0.0) -> torch.Tensor:
    """Axis-aligned box with half extents ``half_size`` (optionally rounded by ``rounding``)."""
    _check(p, "p")
    half_size = _t(half_size, p, "half_size", "vec3", nonneg=True)
    rounding = _t(rounding, p, "rounding", nonneg=True)
    q = (p - _t(center, p, "center", "vec3")).abs() - half_size + rounding
    outside = safe_norm(q.clamp_min(0.0))
    inside = q.max(-1).values.clamp_max(0.0)
    return outside + inside - rounding


def sdf_torus(p: torch.Tensor, major_radius=1.0, minor_radius=0.25, center=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Torus around the y axis (matches :func:`diffvc.geometry.torus`)."""
    _check(p, "p")
    q = p - _t(center, p, "center", "vec3")
    ring = safe_norm(q[..., [0, 2]]) - _t(major_radius, p, "major_radius", nonneg=True)
    return safe_norm(torch.stack([ring, q[..., 1]], -1)) - _t(minor_radius, p, "minor_radius", nonneg=True)


def sdf_capsule(p: torch.Tensor, a=(0.0, -0.5, 0.0), b=(0.0, 0.5, 0.0), radius=0.25) -> torch.Tensor:
    """Capsule: points within ``radius`` of the segment ``a``-``b``."""
    _check(p, "p")
    a, b = _t(a, p, "a", "vec3"), _t(b, p, "b", "vec3")
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-30)).clamp(0.0, 1.0)
    return safe_norm(pa - h[..., None] * ba) - _t(radius, p, "radius", nonneg=True)


def sdf_cylinder(p: torch.Tensor, radius=0.5, height=1.0, center=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Capped cylinder along y (matches :func:`diffvc.geometry.cylinder`)."""
    _check(p, "p")
    q = p - _t(center, p, "center", "vec3")
    d = torch.stack([safe_norm(q[..., [0, 2]]) - _t(radius, p, "radius", nonneg=True),
                     q[..., 1].abs() - _t(height, p, "height", nonneg=True) / 2], -1)
    return d.max(-1).values.clamp_max(0.0) + safe_norm(d.clamp_min(0.0))


def sdf_plane(p: torch.Tensor, normal=(0.0, 1.0, 0.0), offset=0.0) -> torch.Tensor:
    """Half-space ``n . p - offset`` (``normal`` normalised inside; negative below)."""
    _check(p, "p")
    n = _t(normal, p, "normal", "vec3")
    if bool((n.detach().abs().sum(-1) == 0).any()):
        raise ValueError("normal must be non-zero")
    n = n / safe_norm(n, keepdim=True)
    return (p * n).sum(-1) - _t(offset, p, "offset")


def _check_distances(*named) -> None:
    """Floating distance tensors of one dtype whose shapes broadcast (values at the same points)."""
    if not named:
        raise ValueError("ds: give at least one tensor of distances")
    for name, d in named:
        if not isinstance(d, torch.Tensor) or not d.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor of distances, got {describe(d)}")
    check_same_dtype(*named)
    try:
        torch.broadcast_shapes(*(d.shape for _, d in named))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(d.shape)}" for n, d in named)
        raise ValueError(f"distances must broadcast (values at the same points): {shapes}") from None


def smooth_union(a: torch.Tensor, b: torch.Tensor, k=0.1) -> torch.Tensor:
    """Smooth minimum of two distances with blend radius ``k`` (>= 0; 0 = hard union)."""
    _check_distances(("a", a), ("b", b))
    k = _t(k, a, "k", nonneg=True)
    ks = k.clamp_min(torch.finfo(a.dtype).tiny)
    h = (0.5 + 0.5 * (b - a) / ks).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smooth_intersection(a: torch.Tensor, b: torch.Tensor, k=0.1) -> torch.Tensor:
    """Smooth maximum (intersection) with blend radius ``k``."""
    _check_distances(("a", a), ("b", b))
    return -smooth_union(-a, -b, k)


def smooth_difference(a: torch.Tensor, b: torch.Tensor, k=0.1) -> torch.Tensor:
    """``a`` minus ``b`` (``a`` intersected with the complement of ``b``), blend radius ``k``."""
    _check_distances(("a", a), ("b", b))
    return smooth_intersection(a, -b, k)


def union(*ds: torch.Tensor) -> torch.Tensor:
    """Hard union (minimum) of any number of distances (tensors that broadcast)."""
    _check_distances(*((f"ds[{i}]", d) for i, d in enumerate(ds)))
    return torch.stack(torch.broadcast_tensors(*ds)).min(0).values


def intersection(*ds: torch.Tensor) -> torch.Tensor:
    """Hard intersection (maximum) of any number of distances (tensors that broadcast)."""
    _check_distances(*((f"ds[{i}]", d) for i, d in enumerate(ds)))
    return torch.stack(torch.broadcast_tensors(*ds)).max(0).values


def sdf_normal(sdf_fn, p: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Unit gradient of ``sdf_fn`` at ``p (N, 3)`` by autograd (the outward surface normal)."""
    if not callable(sdf_fn):
        raise TypeError(f"sdf_fn must be a callable p (N, 3) -> distances (N,), got {describe(sdf_fn)}")
    _check(p, "p")
    with torch.enable_grad():
        x = p if p.requires_grad else p.detach().requires_grad_(True)
        d = sdf_fn(x)
        (g,) = torch.autograd.grad(d.sum(), x, create_graph=create_graph)
    return g / safe_norm(g, keepdim=True).clamp_min(1e-12)
