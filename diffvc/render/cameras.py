"""Cameras: pinhole perspective and orthographic, batched over views.

Convention (used by every renderer in diffvc):

* World: right-handed, y up.
* Extrinsics are **world-to-camera**: ``x_cam = R @ x_world + t`` with ``R`` (B, 3, 3) a rotation
  and ``t`` (B, 3). The camera centre in world space is ``-R^T t``.
* Camera space is OpenGL-like: x right, y up, the camera **looks down -z**. The *view depth* of a
  point is ``d = -z_cam`` (positive in front of the camera).
* Intrinsics are in pixels: ``(fx, fy, cx, cy)``, (B, 4). Image coordinates ``(u, v)`` have u to
  the right and v **down** (v is the row coordinate), with pixel ``(row i, column j)`` covering
  ``[j, j+1) x [i, i+1)`` and its centre at ``(j + 0.5, i + 0.5)``. Perspective:
  ``u = cx + fx * x_cam / d``, ``v = cy - fy * y_cam / d``. Orthographic: ``u = cx + fx * x_cam``,
  ``v = cy - fy * y_cam`` (fx, fy in pixels per world unit).

Everything here is plain torch and differentiable w.r.t. the points, ``R``, ``t`` and the
intrinsics. Images are ``(B, H, W, C)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .._validate import as_float, as_int, as_tensor, check_float, check_same_device, check_same_dtype


def _as_tensor(x, dtype=None, device=None, name: str = "value") -> torch.Tensor:
    return as_tensor(x, name, dtype=dtype, device=device)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera extrinsics of cameras at ``eye`` looking at ``target``.

    Args:
        eye: (B, 3) or (3,) camera centres (world units).
        target: (B, 3) or (3,) points looked at.
        up: (B, 3) or (3,) approximate up direction (must not be parallel to ``target - eye``).

    Returns:
        ``(R, t)`` with R (B, 3, 3), t (B, 3) such that ``x_cam = R x + t``; the camera looks down
        its -z axis at ``target`` and its +y axis is ``up`` made orthogonal. Differentiable w.r.t.
        all inputs (singular only when ``eye == target`` or ``up`` is parallel to the view axis).
    """
    eye = check_float(_as_tensor(eye, name="eye"), "eye", shape=(..., 3))
    target = _as_tensor(target, None if isinstance(target, torch.Tensor) else eye.dtype, eye.device, "target")
    up = _as_tensor(up, None if isinstance(up, torch.Tensor) else eye.dtype, eye.device, "up")
    check_float(target, "target", shape=(..., 3))
    check_float(up, "up", shape=(..., 3))
    check_same_dtype(("eye", eye), ("target", target), ("up", up))
    try:
        eye, target, up = torch.broadcast_tensors(eye.reshape(-1, 3), target.reshape(-1, 3), up.reshape(-1, 3))
    except RuntimeError:
        raise ValueError(f"eye {tuple(eye.shape)}, target {tuple(target.shape)} and up {tuple(up.shape)} "
                         "must be (3,) or (B, 3) with one B") from None
    back = eye - target  # camera +z points away from the target
    dist = back.detach().norm(dim=-1)
    if bool((dist <= 1e-9 * (1 + eye.detach().norm(dim=-1))).any()):
        raise ValueError("eye and target coincide: the view direction is undefined")
    cosang = (torch.linalg.cross(up.detach(), back.detach(), dim=-1).norm(dim=-1)
              / (up.detach().norm(dim=-1) * dist).clamp_min(1e-30))
    if bool((cosang < 1e-6).any()):
        raise ValueError("up must not be zero or parallel to target - eye")
    z = back / back.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = torch.linalg.cross(up, z, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows are the camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    return R, t


def focal_from_fov(fov_y_degrees: float, height: int) -> float:
    """Focal length in pixels of a pinhole with vertical field of view ``fov_y_degrees``
    (in (0, 180) degrees) and image ``height`` (pixels, >= 1)."""
    fov_y_degrees = as_float(fov_y_degrees, "fov_y_degrees", positive=True)
    if fov_y_degrees >= 180:
        raise ValueError(f"fov_y_degrees must lie in (0, 180), got {fov_y_degrees}")
    height = as_int(height, "height", minimum=1)
    return 0.5 * height / math.tan(math.radians(fov_y_degrees) / 2)


@dataclass(frozen=True)
class Cameras:
    """A batch of B cameras sharing one image size.

    R: (B, 3, 3) world-to-camera rotations; t: (B, 3) translations (``x_cam = R x + t``);
    intrinsics: (B, 4) ``(fx, fy, cx, cy)`` in pixels (orthographic: fx, fy in pixels per world
    unit); width, height: image size in pixels; orthographic: projection kind; near: view depth
    (world units) below which geometry is not rendered (perspective rasterization clips triangles
    at ``d = near``; orthographic rasterization drops triangles with a vertex nearer than ``near``).
    """

    R: torch.Tensor
    t: torch.Tensor
    intrinsics: torch.Tensor
    width: int
    height: int
    orthographic: bool = False
    near: float = 1e-3

    def __post_init__(self):
        for name in ("R", "t", "intrinsics"):
            check_float(getattr(self, name), name, coerce=False)
        check_same_dtype(("R", self.R), ("t", self.t), ("intrinsics", self.intrinsics))
        check_same_device(("R", self.R), ("t", self.t), ("intrinsics", self.intrinsics))
        as_int(self.width, "width", minimum=1)
        as_int(self.height, "height", minimum=1)
        if not isinstance(self.orthographic, bool):
            raise TypeError(f"orthographic must be a bool, got {type(self.orthographic).__name__}")
        # perspective views need a near plane in front of the camera (a near <= 0 would draw
        # triangles behind it); orthographic ones only a finite depth
        as_float(self.near, "near", positive=not self.orthographic)
        B = self.R.shape[0] if self.R.dim() == 3 else -1
        if self.R.dim() != 3 or self.R.shape[1:] != (3, 3):
            raise ValueError(f"R must have shape (B, 3, 3), got {tuple(self.R.shape)}")
        if self.t.shape != (B, 3):
            raise ValueError(f"t must have shape ({B}, 3), got {tuple(self.t.shape)}")
        if self.intrinsics.shape != (B, 4):
            raise ValueError(f"intrinsics must have shape ({B}, 4), got {tuple(self.intrinsics.shape)}")
        if B and bool((self.intrinsics.detach()[:, :2] == 0).any()):
            raise ValueError("intrinsics: focal lengths fx, fy must be non-zero")

    @property
    def batch_size(self) -> int:
        return self.R.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.R.dtype

    @property
    def device(self) -> torch.device:
        return self.R.device

    @staticmethod
    def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), width: int = 256, height: int = 256,
                fov_y: float = 45.0, orthographic: bool = False, ortho_scale: float | None = None,
                near: float = 1e-3, dtype=None, device=None) -> "Cameras":
        """Cameras at ``eye`` (B, 3) looking at ``target``, principal point at the image centre.

        Perspective: square pixels with vertical field of view ``fov_y`` degrees. Orthographic:
        the image height spans ``ortho_scale`` world units (default 2).
        """
        eye = _as_tensor(eye, dtype, device, "eye")
        width, height = as_int(width, "width", minimum=1), as_int(height, "height", minimum=1)
        R, t = look_at(eye, target, up)
        B = R.shape[0]
        fov_y = as_float(fov_y, "fov_y", positive=True)
        if orthographic:
            f = height / (as_float(ortho_scale, "ortho_scale", positive=True) if ortho_scale is not None else 2.0)
        else:
            if fov_y >= 180:
                raise ValueError(f"fov_y must lie in (0, 180) degrees, got {fov_y}")
            f = focal_from_fov(fov_y, height)
        K = torch.tensor([f, f, width / 2, height / 2], dtype=R.dtype, device=R.device).expand(B, 4).clone()
        return Cameras(R, t, K, int(width), int(height), orthographic, near)

    def to(self, dtype=None, device=None) -> "Cameras":
        return replace(self, R=self.R.to(dtype=dtype, device=device), t=self.t.to(dtype=dtype, device=device),
                       intrinsics=self.intrinsics.to(dtype=dtype, device=device))

    def __getitem__(self, idx) -> "Cameras":
        """The sub-batch of views ``idx`` (an int, slice, list or index tensor)."""
        if isinstance(idx, int):
            idx = [idx]
        return replace(self, R=self.R[idx], t=self.t[idx], intrinsics=self.intrinsics[idx])

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world space, (B, 3)."""
        return -(self.R.transpose(-1, -2) @ self.t.unsqueeze(-1)).squeeze(-1)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """Points (N, 3) or (B, N, 3) in world space -> camera space (B, N, 3)."""
        points = _points(points, self.batch_size)
        check_same_dtype(("cameras", self.R), ("points", points))
        check_same_device(("cameras", self.R), ("points", points))
        return points @ self.R.transpose(-1, -2) + self.t.unsqueeze(1)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Points (N, 3) or (B, N, 3) -> screen coordinates (B, N, 3): ``(u, v, d)``.

        u, v in pixels (see the module convention), d the view depth (world units, positive in
        front of the camera). Differentiable w.r.t. points, R, t and intrinsics. Perspective
        projection divides by ``d``; points at ``d <= 0`` give meaningless (but finite where
        ``d != 0``) u, v, which the rasterizer discards via ``near``.
        """
        pc = self.world_to_camera(points)
        d = -pc[..., 2]
        K = self.intrinsics.unsqueeze(1)
        if self.orthographic:
            x, y = pc[..., 0], pc[..., 1]
        else:
            safe = torch.where(d.abs() > 1e-12, d, torch.full_like(d, 1e-12))
            x, y = pc[..., 0] / safe, pc[..., 1] / safe
        u = K[..., 2] + K[..., 0] * x
        v = K[..., 3] - K[..., 1] * y
        return torch.stack([u, v, d], dim=-1)

    def pixel_centers(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Pixel-centre image coordinates (H, W, 2) as (u, v) = (j + 0.5, i + 0.5)."""
        H = int(height or self.height)
        W = int(width or self.width)
        v, u = torch.meshgrid(torch.arange(H, dtype=self.dtype, device=self.device) + 0.5,
                              torch.arange(W, dtype=self.dtype, device=self.device) + 0.5, indexing="ij")
        return torch.stack([u, v], dim=-1)


def _points(points: torch.Tensor, B: int) -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if not points.is_floating_point():
        raise TypeError(f"points must be a floating tensor, got {points.dtype}")
    if points.dim() == 2 and points.shape[1] == 3:
        return points.unsqueeze(0).expand(B, -1, -1)
    if points.dim() == 3 and points.shape[2] == 3 and points.shape[0] in (1, B):
        return points.expand(B, -1, -1)
    raise ValueError(f"points must have shape (N, 3) or ({B}, N, 3), got {tuple(points.shape)}")


def generate_rays(cameras: Cameras, height: int | None = None, width: int | None = None):
    """Primary rays through pixel centres, for ray and path tracing.

    Args:
        cameras: B cameras.
        height, width: image size (defaults: the cameras' own). The intrinsics refer to the
            cameras' own size; a different size rescales the pixel grid (same field of view).

    Returns:
        ``(origins, directions)``, each (B, H, W, 3) in world space; directions are unit length.
        Perspective rays start at the camera centre; orthographic rays start on the plane
        ``z_cam = 0`` and all point along the view axis. Differentiable w.r.t. R, t, intrinsics.
    """
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be a diffvc.render.Cameras, got {type(cameras).__name__}")
    H = cameras.height if height is None else as_int(height, "height", minimum=1)
    W = cameras.width if width is None else as_int(width, "width", minimum=1)
    sx, sy = cameras.width / W, cameras.height / H
    uv = cameras.pixel_centers(H, W) * torch.tensor([sx, sy], dtype=cameras.dtype, device=cameras.device)
    K = cameras.intrinsics[:, None, None, :]
    x = (uv[..., 0] - K[..., 2]) / K[..., 0]  # (B, H, W)
    y = -(uv[..., 1] - K[..., 3]) / K[..., 1]
    Rt = cameras.R.transpose(-1, -2)[:, None, None]  # camera -> world rotation
    center = cameras.centers[:, None, None, :]
    if cameras.orthographic:
        local = torch.stack([x, y, torch.zeros_like(x)], dim=-1)
        origins = (Rt @ local.unsqueeze(-1)).squeeze(-1) + center
        axis = -cameras.R[:, 2, :]  # camera -z in world
        directions = axis[:, None, None, :].expand_as(origins)
    else:
        dcam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
        dcam = dcam / dcam.norm(dim=-1, keepdim=True)
        directions = (Rt @ dcam.unsqueeze(-1)).squeeze(-1)
        origins = center.expand_as(directions)
    return origins, directions


def sphere_eyes(n: int, radius: float = 3.0, seed: int | None = None, dtype=None, device=None) -> torch.Tensor:
    """``n`` camera positions spread over a sphere of ``radius`` (Fibonacci lattice), (n, 3).

    With ``seed`` the lattice is rotated randomly (for held-out views). Poles are avoided so
    ``look_at`` with up = +y stays well defined.
    """
    n = as_int(n, "n", minimum=1)
    radius = as_float(radius, "radius", positive=True)
    seed = as_int(seed, "seed", allow_none=True)
    dtype = dtype or torch.get_default_dtype()
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    y = y.clamp(-0.95, 0.95)
    r = torch.sqrt(1 - y * y)
    phi = i * math.pi * (3 - math.sqrt(5))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        phi = phi + torch.rand((), generator=g, dtype=torch.float64) * 2 * math.pi
        y = (y + (torch.rand((), generator=g, dtype=torch.float64) - 0.5) * (1.0 / n)).clamp(-0.95, 0.95)
        r = torch.sqrt(1 - y * y)
    pts = torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], dim=-1) * radius
    return pts.to(dtype=dtype, device=device)
