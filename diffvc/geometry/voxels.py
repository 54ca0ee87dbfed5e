"""Dense voxel grids: differentiable trilinear sampling, mesh voxelization, grid -> mesh.

Convention: ``values[..., i, j, k]`` (channels first, optional) sits at the point
``lo + (i, j, k) * (hi - lo) / (n - 1)``: samples at the grid *nodes*, ``i`` along x, ``j`` along
y, ``k`` along z. This matches the vertex layout of :func:`diffvc.geometry.tet_grid`, so a dense
``(n+1)^3`` SDF grid feeds :func:`marching_tetrahedra` directly (:func:`grid_to_mesh`).
"""

from __future__ import annotations

import torch

from .._validate import as_int, as_tuple, check_float
from ._checks import check_mesh, check_points


def _bounds(bounds, like):
    lo = torch.as_tensor(bounds[0], dtype=like.dtype, device=like.device).expand(3)
    hi = torch.as_tensor(bounds[1], dtype=like.dtype, device=like.device).expand(3)
    return lo, hi


def grid_points(resolution, bounds=(-1.0, 1.0), dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Node positions ``(nx, ny, nz, 3)`` of a grid with ``resolution`` nodes per axis (int or 3 ints)."""
    res = list(as_tuple(resolution, "resolution", 3, integer=True, minimum=2))
    z = torch.zeros((), dtype=dtype, device=device)
    lo, hi = _bounds(bounds, z)
    axes = [torch.linspace(float(lo[d]), float(hi[d]), res[d], dtype=dtype, device=device) for d in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


def trilinear_sample(values: torch.Tensor, points: torch.Tensor, bounds=(-1.0, 1.0)) -> torch.Tensor:
    """Trilinear interpolation of a node grid at ``points``.

    Args:
        values: ``(nx, ny, nz)`` or ``(C, nx, ny, nz)`` grid values (differentiable).
        points: ``(N, 3)`` query positions (differentiable); outside the box the border value is
            used (clamped coordinates: zero gradient w.r.t. points across the border).
        bounds: ``(lo, hi)`` box of the grid nodes.

    Returns:
        ``(N,)`` or ``(N, C)``. The gradient w.r.t. ``points`` is piecewise constant per cell
        (the interpolant is C0 across cell faces).
    """
    check_points(points, "points")
    check_float(values, "values", coerce=False)
    if values.dim() not in (3, 4):
        raise ValueError(f"values must have shape (nx, ny, nz) or (C, nx, ny, nz), got {tuple(values.shape)}")
    if values.dtype != points.dtype or values.device != points.device:
        raise ValueError(f"values ({values.dtype}, {values.device}) and points ({points.dtype}, {points.device}) must match")
    squeeze = values.dim() == 3
    v = values[None] if squeeze else values
    lo, hi = _bounds(bounds, points)
    u = (points - lo) / (hi - lo) * 2 - 1  # [-1, 1] over the nodes (align_corners=True)
    grid = u[:, [2, 1, 0]].reshape(1, -1, 1, 1, 3)  # grid_sample's (x, y, z) index (W, H, D) = (k, j, i)
    out = torch.nn.functional.grid_sample(v[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = out.reshape(v.shape[0], -1).T
    return out[:, 0] if squeeze else out


class DenseGrid(torch.nn.Module):
    """A learnable dense field: ``forward(points (N, 3)) -> (N, C)`` (or ``(N,)`` if ``channels`` is None).

    Args:
        resolution: nodes per axis; channels: feature channels (None = scalar field).
        bounds: the box; init: initial value or tensor of the values' shape.
    """

    def __init__(self, resolution: int = 32, channels: int | None = None, bounds=(-1.0, 1.0), init=0.0,
                 dtype=torch.float32, device="cpu"):
        super().__init__()
        resolution = as_int(resolution, "resolution", minimum=2)
        channels = as_int(channels, "channels", minimum=1, allow_none=True)
        shape = (resolution,) * 3 if channels is None else (channels,) + (resolution,) * 3
        if isinstance(init, torch.Tensor):
            vals = init.to(dtype=dtype, device=device).clone()
            if vals.shape != shape:
                raise ValueError(f"init must have shape {shape}, got {tuple(vals.shape)}")
        else:
            vals = torch.full(shape, float(init), dtype=dtype, device=device)
        self.values = torch.nn.Parameter(vals)
        self.bounds = bounds

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return trilinear_sample(self.values, points, self.bounds)

    def points(self) -> torch.Tensor:
        """Node positions ``(n, n, n, 3)``."""
        return grid_points(self.values.shape[-1], self.bounds, self.values.dtype, self.values.device)


def voxelize(verts: torch.Tensor, faces: torch.Tensor, resolution: int = 32, bounds=(-1.0, 1.0),
             sdf: bool = False) -> torch.Tensor:
    """Occupancy (bool) or signed distance (float) of a closed mesh at the nodes of a grid ``(n, n, n)``.

    Inside/outside from the generalized winding number; ``sdf=True`` is differentiable w.r.t.
    ``verts`` (see :func:`diffvc.geometry.mesh_to_sdf`).
    """
    from .distance import mesh_to_sdf
    from .winding import occupancy

    verts, _ = check_mesh(verts, faces)
    resolution = as_int(resolution, "resolution", minimum=2)
    p = grid_points(resolution, bounds, verts.dtype, verts.device).reshape(-1, 3)
    out = mesh_to_sdf(verts, faces, p) if sdf else occupancy(verts, faces, p)
    return out.reshape((resolution,) * 3)


def grid_to_mesh(values: torch.Tensor, bounds=(-1.0, 1.0)):
    """Zero level set of a node grid ``(n+1, n+1, n+1)`` (negative inside) by marching tetrahedra.

    Differentiable w.r.t. ``values``. Returns ``(verts, faces)`` outward-oriented.
    """
    from .marching_tets import marching_tetrahedra
    from .tet_mesh import tet_grid

    check_float(values, "values", coerce=False)
    if values.dim() != 3 or len(set(values.shape)) != 1 or values.shape[0] < 2:
        raise ValueError(f"values must be a cubic grid (n+1, n+1, n+1), got {tuple(values.shape)}")
    gv, gt = tet_grid(values.shape[0] - 1, bounds, dtype=values.dtype, device=values.device)
    return marching_tetrahedra(gv, gt, values.reshape(-1))
