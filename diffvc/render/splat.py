"""Differentiable 3D Gaussian splatting (Kerbl et al. 2023) and its training utilities.

A scene is a set of anisotropic 3D Gaussians (:class:`Gaussians`): means ``(N, 3)`` (m), scales
``(N, 3)`` (standard deviations along the local axes, m), rotations as quaternions ``(N, 4)``
in diffvc's one convention ``(w, x, y, z)`` (:func:`diffvc.geometry.quaternion_to_matrix`,
normalised inside), opacities ``(N,)`` in [0, 1] and colours as spherical-harmonic coefficients
``(N, K, 3)``, ``K = (degree + 1)^2``, degree 0..3 (3DGS's real-SH basis and sign convention,
so coefficients trained by 3DGS/gsplat load as they are).

Rendering (:func:`render_gaussians`) has three stages:

1. :func:`project_gaussians` (plain torch): world -> camera with the :class:`~diffvc.render.Cameras`
   extrinsics, the EWA splatting approximation ``cov2d = J W cov3d W^T J^T`` with the Jacobian
   ``J`` of the projection at the mean (its ``x/z``, ``y/z`` clamped to 1.3x the field of view,
   as in 3DGS), plus the low-pass (anti-aliasing) term ``eps2d * I`` (0.3 px^2). Gaussians whose
   mean is nearer than ``near`` or whose 3-sigma box misses the image are culled (``radii == 0``).
2. :func:`bin_gaussians` (torch, index work): every (Gaussian, touched 16x16 tile) pair, sorted
   by tile then depth.
3. :func:`rasterize_gaussians`: front-to-back alpha compositing per pixel with early termination
   (a Warp kernel with a hand-written reverse-order backward, :mod:`diffvc._kernels.splat`; or
   the plain-torch twin with ``backend="torch"``). Outputs colour, alpha and expected depth.

Gradients reach means, scales, rotations, opacities, SH coefficients and the cameras (R, t,
intrinsics). Discontinuities (zero gradient on the side the forward takes): a Gaussian entering
or leaving a tile list (its 3-sigma box), the alpha cut-offs (``alpha < 1/255`` skipped, clamped
at 0.99), early termination at transmittance 1e-4, culling at ``near``, the field-of-view clamp
of the Jacobian, and colours clamped at 0 after the SH evaluation (as in 3DGS).

Training utilities follow the 3DGS paper: :func:`ssim` and :func:`splat_loss`
(``(1 - l) L1 + l (1 - SSIM)``), :class:`DensityControl` (clone / split / prune, opacity
reset), :func:`init_splat_params`, :func:`splat_optimizer` (one Adam group per parameter with
its own learning rate) and :func:`exponential_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validate import as_float, as_int, check_float, check_same_dtype, describe
from ..geometry.transforms import quaternion_to_matrix
from .cameras import Cameras

__all__ = ["Gaussians", "ProjectedGaussians", "TileBins", "SplatImage", "project_gaussians", "eval_sh",
           "sh_degree", "bin_gaussians", "rasterize_gaussians", "render_gaussians", "ssim", "splat_loss",
           "psnr", "DensityControl", "init_splat_params", "gaussians_from_params", "splat_optimizer",
           "exponential_lr", "SH_C0", "rgb_to_sh", "points_to_gaussians"]

TILE = 16
SH_C0 = 0.28209479177387814


def _check_float(x, name: str, shape: tuple) -> torch.Tensor:
    return check_float(x, name, shape=shape, coerce=False)


def sh_degree(num_coeffs: int) -> int:
    """SH degree of ``num_coeffs = (degree + 1)^2`` coefficients (degree 0..3)."""
    for d in range(4):
        if (d + 1) ** 2 == num_coeffs:
            return d
    raise ValueError(f"sh must have (degree + 1)^2 = 1, 4, 9 or 16 coefficients per Gaussian, got {num_coeffs}")


@dataclass(frozen=True)
class Gaussians:
    """A set of N 3D Gaussians (see the module docstring for units and conventions).

    means (N, 3); scales (N, 3) >= 0 (m, standard deviations; zero is allowed and gives the
    low-pass footprint only); quats (N, 4) as (w, x, y, z), any non-zero length (a zero quaternion
    reads as the identity); opacities (N,) in [0, 1]; sh (N, K, 3), K in {1, 4, 9, 16}.
    Validated on construction: shapes, one dtype, finite values (NaN or inf raise ``ValueError``
    naming the field).
    """

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self):
        _check_float(self.means, "means", ("N", 3))
        n = self.means.shape[0]
        _check_float(self.scales, "scales", (n, 3))
        _check_float(self.quats, "quats", (n, 4))
        _check_float(self.opacities, "opacities", (n,))
        _check_float(self.sh, "sh", (n, "K", 3))
        sh_degree(self.sh.shape[1])
        for name in ("scales", "quats", "opacities", "sh"):
            if getattr(self, name).dtype != self.means.dtype:
                raise TypeError(f"{name} has dtype {getattr(self, name).dtype} but means has {self.means.dtype}")
        if n and bool((self.scales.detach() < 0).any()):
            raise ValueError("scales must be >= 0")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def degree(self) -> int:
        return sh_degree(self.sh.shape[1])


# ---------------------------------------------------------------------------------------------
# spherical harmonics (3DGS convention)
# ---------------------------------------------------------------------------------------------

_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
       1.445305721320277, -0.5900435899266435)


def _sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
                _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """Colour of spherical-harmonic coefficients seen along ``dirs``, as 3DGS computes it.

    Args:
        sh: (..., K, 3) coefficients, K = (d + 1)^2.
        dirs: (..., 3) view directions (camera centre -> Gaussian; normalised here, a zero
            direction gives the degree-0 colour).
        degree: use bands 0..degree (default: all of ``sh``); lets training raise the degree
            progressively.

    Returns:
        (..., 3) ``max(sum_k Y_k(dir) sh_k + 0.5, 0)`` (the clamp has zero gradient below 0).
    """
    full = sh_degree(sh.shape[-2])
    degree = full if degree is None else int(degree)
    if not 0 <= degree <= full:
        raise ValueError(f"degree must lie in [0, {full}] for {sh.shape[-2]} coefficients, got {degree}")
    n = dirs.norm(dim=-1, keepdim=True)
    d = dirs / torch.where(n > 1e-12, n, torch.ones_like(n))
    basis = _sh_basis(d, degree)  # (..., (degree+1)^2)
    k = (degree + 1) ** 2
    rgb = (basis.unsqueeze(-1) * sh[..., :k, :]).sum(-2)
    return (rgb + 0.5).clamp_min(0.0)


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Degree-0 coefficient giving colour ``rgb`` (before the +0.5 offset of :func:`eval_sh`)."""
    return (rgb - 0.5) / SH_C0


# ---------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProjectedGaussians:
    """Screen-space Gaussians of B views.

    means2d (B, N, 2) pixels (u right, v down; pixel centres at +0.5); conics (B, N, 3) the upper
    triangle ``(a, b, c)`` of the inverse 2D covariance (px^-2); depths (B, N) view depth (m);
    radii (B, N) int32 3-sigma radius in pixels, 0 for culled Gaussians; cov2d (B, N, 3) the 2D
    covariance ``(xx, xy, yy)`` including the low-pass term.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    cov2d: torch.Tensor


def covariance_3d(scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """World covariances ``R S S R^T`` (N, 3, 3) from scales (N, 3) and quaternions (N, 4) (w, x, y, z)."""
    M = quaternion_to_matrix(quats) * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(means: torch.Tensor, scales: torch.Tensor, quats: torch.Tensor, cameras: Cameras,
                      eps2d: float = 0.3, near: float = 0.01,
                      opacities: torch.Tensor | None = None) -> ProjectedGaussians:
    """EWA projection of 3D Gaussians into every view of ``cameras``.

    Args:
        means (N, 3), scales (N, 3), quats (N, 4): see :class:`Gaussians`.
        cameras: B cameras (perspective or orthographic; see :mod:`diffvc.render.cameras`).
        eps2d: low-pass term added to the 2D covariance (px^2), so every splat covers about a
            pixel (anti-aliasing, and a finite inverse for degenerate Gaussians).
        near: Gaussians with view depth ``<= max(near, cameras.near)`` are culled.
        opacities: (N,) optional; when given, the radius is ``min(3, sqrt(2 ln(255 o)))`` standard
            deviations instead of 3 (beyond it ``alpha < 1/255`` and the compositor skips the
            Gaussian anyway, so the image is unchanged and tile lists are shorter); Gaussians with
            ``o < 1/255`` are culled.

    Returns:
        :class:`ProjectedGaussians`. Differentiable (plain torch) w.r.t. means, scales, quats and
        the cameras' R, t, intrinsics. Culled Gaussians get finite placeholder values and radius 0.
    """
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be diffvc.render.Cameras, got {type(cameras).__name__}")
    _check_float(means, "means", ("N", 3))
    n = means.shape[0]
    _check_float(scales, "scales", (n, 3))
    _check_float(quats, "quats", (n, 4))
    if opacities is not None:
        _check_float(opacities, "opacities", (n,))
    check_same_dtype(("means", means), ("scales", scales), ("quats", quats), ("opacities", opacities))
    eps2d, near = as_float(eps2d, "eps2d", nonneg=True), as_float(near, "near", nonneg=True)
    dt = means.dtype
    R, t, K = cameras.R.to(dt), cameras.t.to(dt), cameras.intrinsics.to(dt)
    B, H, W = cameras.batch_size, cameras.height, cameras.width
    # OpenCV-style camera frame (x right, y down, z forward): flip diffvc's y and z axes
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=dt, device=means.device)
    Rc = R * flip[None, :, None]
    tc = t * flip[None, :]
    pc = torch.einsum("bij,nj->bni", Rc, means) + tc[:, None, :]  # (B, N, 3)
    cov = covariance_3d(scales, quats)
    covc = torch.einsum("bij,njk,blk->bnil", Rc, cov, Rc)  # (B, N, 3, 3)
    z = pc[..., 2]
    valid = z > max(float(near), float(cameras.near))
    fx, fy, cx, cy = (K[:, i, None] for i in range(4))
    zero = torch.zeros_like(z)
    if cameras.orthographic:
        u = cx + fx * pc[..., 0]
        v = cy + fy * pc[..., 1]
        J0 = torch.stack([fx.expand_as(z), zero, zero], -1)
        J1 = torch.stack([zero, fy.expand_as(z), zero], -1)
    else:
        zs = torch.where(valid, z, torch.ones_like(z))
        xz, yz = pc[..., 0] / zs, pc[..., 1] / zs
        u = cx + fx * xz
        v = cy + fy * yz
        tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
        xc = zs * torch.minimum(torch.maximum(xz, -(cx / fx + 0.3 * tan_x)), (W - cx) / fx + 0.3 * tan_x)
        yc = zs * torch.minimum(torch.maximum(yz, -(cy / fy + 0.3 * tan_y)), (H - cy) / fy + 0.3 * tan_y)
        J0 = torch.stack([fx / zs, zero, -fx * xc / (zs * zs)], -1)
        J1 = torch.stack([zero, fy / zs, -fy * yc / (zs * zs)], -1)
    J = torch.stack([J0, J1], -2)  # (B, N, 2, 3)
    c2 = J @ covc @ J.transpose(-1, -2)
    a = c2[..., 0, 0] + eps2d
    b = 0.5 * (c2[..., 0, 1] + c2[..., 1, 0])
    c = c2[..., 1, 1] + eps2d
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([u, v], -1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
        k = torch.full_like(lam, 3.0)
        if opacities is not None:
            o = opacities.detach().to(lam.dtype)[None, :]
            k = torch.minimum(k, torch.sqrt(2 * torch.log((255.0 * o).clamp_min(1.0))))
        r = torch.ceil(k * torch.sqrt(lam)) * (k > 0)
        inside = (u + r > 0) & (u - r < W) & (v + r > 0) & (v - r < H)
        radii = torch.where(valid & inside, r, torch.zeros_like(r)).clamp_max(4.0 * (H + W)).to(torch.int32)
    return ProjectedGaussians(means2d, conics, z, radii, torch.stack([a, b, c], -1))


# ---------------------------------------------------------------------------------------------
# tile binning
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileBins:
    """Per view and tile, the Gaussians touching it, front to back.

    starts: (B * tiles_y * tiles_x + 1,) int32 offsets into ``ids`` (tile k of view b is entry
    ``b * tiles_y * tiles_x + ty * tiles_x + tx``); ids: (M,) int32 Gaussian indices within
    their view.
    """

    starts: torch.Tensor
    ids: torch.Tensor
    tiles_x: int
    tiles_y: int
    tile: int

    @property
    def num_pairs(self) -> int:
        return int(self.ids.shape[0])


@torch.no_grad()
def bin_gaussians(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, height: int, width: int,
                  tile: int = TILE) -> TileBins:
    """Tile lists for :func:`rasterize_gaussians`: every Gaussian with ``radii > 0`` goes into each
    ``tile x tile`` tile its box ``mean +- radius`` touches; each list is sorted by depth (ties by
    index). means2d (B, N, 2), radii (B, N), depths (B, N)."""
    B, N = radii.shape
    dev = means2d.device
    tx, ty = (width + tile - 1) // tile, (height + tile - 1) // tile
    nt = tx * ty
    m = means2d.detach().to(torch.float64)
    r = radii.to(torch.float64)
    lo_x = torch.floor(((m[..., 0] - r) / tile).clamp(-1, tx + 1)).long().clamp(0, tx)
    hi_x = torch.ceil(((m[..., 0] + r) / tile).clamp(-1, tx + 1)).long().clamp(0, tx)
    lo_y = torch.floor(((m[..., 1] - r) / tile).clamp(-1, ty + 1)).long().clamp(0, ty)
    hi_y = torch.ceil(((m[..., 1] + r) / tile).clamp(-1, ty + 1)).long().clamp(0, ty)
    wx = (hi_x - lo_x).clamp_min(0)
    count = (wx * (hi_y - lo_y).clamp_min(0) * (radii > 0)).reshape(-1)
    M = int(count.sum())
    if M == 0:
        return TileBins(torch.zeros(B * nt + 1, dtype=torch.int32, device=dev),
                        torch.zeros(0, dtype=torch.int32, device=dev), tx, ty, tile)
    rep = torch.repeat_interleave(torch.arange(B * N, device=dev), count)
    first = torch.cumsum(count, 0) - count
    local = torch.arange(M, device=dev) - first[rep]
    w = wx.reshape(-1)[rep]
    tile_x = lo_x.reshape(-1)[rep] + local % w
    tile_y = lo_y.reshape(-1)[rep] + local // w
    b = rep // N
    g = rep - b * N
    tile_id = b * nt + tile_y * tx + tile_x
    order = torch.argsort(depths.detach(), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=dev).expand(B, N).contiguous())
    key = tile_id * N + rank.reshape(-1)[rep]
    _, perm = torch.sort(key)
    ids = g[perm].to(torch.int32)
    counts = torch.bincount(tile_id, minlength=B * nt)
    starts = torch.zeros(B * nt + 1, dtype=torch.int64, device=dev)
    starts[1:] = torch.cumsum(counts, 0)
    return TileBins(starts.to(torch.int32), ids.contiguous(), tx, ty, tile)


# ---------------------------------------------------------------------------------------------
# rasterization
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplatImage:
    """Rendered splats: color (B, H, W, 3) composited over the background, alpha (B, H, W)
    (1 - final transmittance), depth (B, H, W) expected view depth of the splats
    (``sum d_i alpha_i T_i / alpha``, 0 where alpha = 0), and the projection (its ``means2d``
    gradient drives :class:`DensityControl`)."""

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    projected: ProjectedGaussians | None = None

    def __post_init__(self):
        check_float(self.color, "color", shape=("B", "H", "W", 3), coerce=False)
        check_float(self.alpha, "alpha", shape=tuple(self.color.shape[:3]), coerce=False)
        check_float(self.depth, "depth", shape=tuple(self.color.shape[:3]), coerce=False)
        if self.projected is not None and not isinstance(self.projected, ProjectedGaussians):
            raise TypeError(f"projected must be a ProjectedGaussians or None, got {describe(self.projected)}")


_ALPHA_MAX, _ALPHA_MIN, _T_MIN = 0.99, 1.0 / 255.0, 1e-4


def _composite_tiles_torch(means2d, conics, opac, feats, starts, ids, tile_ids, nt, tiles_x, tile, L):
    """Plain-torch compositing of the tiles ``tile_ids`` (C,) -> (C, tile*tile, 4), (C, tile*tile)."""
    dev, dt = means2d.device, means2d.dtype
    s = starts[tile_ids].long()
    n = starts[tile_ids + 1].long() - s
    ar = torch.arange(L, device=dev)
    mask = ar[None, :] < n[:, None]                                  # (C, L)
    e = (s[:, None] + ar[None, :]).clamp(max=max(ids.shape[0] - 1, 0))
    g = torch.where(mask, ids[e].long(), torch.zeros_like(e)) if ids.numel() else torch.zeros_like(e)
    b = (tile_ids // nt)[:, None].expand_as(g)
    k = tile_ids % nt
    ty, tx = k // tiles_x, k % tiles_x
    ly, lx = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    px = (tx[:, None] * tile + lx.reshape(1, -1)).to(dt) + 0.5        # (C, P)
    py = (ty[:, None] * tile + ly.reshape(1, -1)).to(dt) + 0.5
    mu = means2d[b, g]                                                # (C, L, 2)
    con = conics[b, g]
    dx = px[:, :, None] - mu[:, None, :, 0]                           # (C, P, L)
    dy = py[:, :, None] - mu[:, None, :, 1]
    power = -0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy) - con[:, None, :, 1] * dx * dy
    alpha = (opac[b, g][:, None, :] * torch.exp(power.clamp_max(0.0))).clamp_max(_ALPHA_MAX)
    with torch.no_grad():
        valid = mask[:, None, :] & (power <= 0) & (alpha >= _ALPHA_MIN)
        a0 = torch.where(valid, alpha, torch.zeros_like(alpha))
        stop = valid & (torch.cumprod(1 - a0, -1) < _T_MIN)
        keep = valid & ~(torch.cumsum(stop.to(torch.int32), -1) > 0)
    a = torch.where(keep, alpha, torch.zeros_like(alpha))
    T = torch.cumprod(1 - a, -1)
    T_ex = torch.cat([torch.ones_like(T[..., :1]), T[..., :-1]], -1)
    out = torch.einsum("cpl,clk->cpk", a * T_ex, feats[b, g])
    return out, T[..., -1]


def _rasterize_torch(means2d, conics, opac, feats, bins: TileBins, H: int, W: int):
    B = means2d.shape[0]
    tile, tiles_x, tiles_y = bins.tile, bins.tiles_x, bins.tiles_y
    nt = tiles_x * tiles_y
    lens = (bins.starts[1:] - bins.starts[:-1]).long()
    total = B * nt
    outs, trans = [], []
    budget = 1 << 22  # elements of one (tiles, pixels, list) block
    need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (means2d, conics, opac, feats))
    start = 0
    while start < total:
        # grow the chunk while the padded block stays within the budget
        end = start + 1
        L = int(lens[start])
        while end < total:
            L2 = max(L, int(lens[end]))
            if (end + 1 - start) * tile * tile * max(L2, 1) > budget:
                break
            L, end = L2, end + 1
        tid = torch.arange(start, end, device=means2d.device)
        args = (means2d, conics, opac, feats, bins.starts, bins.ids, tid, nt, tiles_x, tile, max(L, 1))
        if need_grad:
            o, tr = torch.utils.checkpoint.checkpoint(_composite_tiles_torch, *args, use_reentrant=False)
        else:
            o, tr = _composite_tiles_torch(*args)
        outs.append(o)
        trans.append(tr)
        start = end
    out = torch.cat(outs).reshape(B, tiles_y, tiles_x, tile, tile, 4).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(B, tiles_y * tile, tiles_x * tile, 4)[:, :H, :W]
    tr = torch.cat(trans).reshape(B, tiles_y, tiles_x, tile, tile).permute(0, 1, 3, 2, 4)
    tr = tr.reshape(B, tiles_y * tile, tiles_x * tile)[:, :H, :W]
    return out, tr


def rasterize_gaussians(projected: ProjectedGaussians, colors: torch.Tensor, opacities: torch.Tensor, height: int,
                        width: int, background: torch.Tensor | None = None, backend: str = "warp",
                        tile: int = TILE, bins: TileBins | None = None) -> SplatImage:
    """Alpha-composite projected Gaussians front to back in every view.

    Args:
        projected: :func:`project_gaussians` output for B views of N Gaussians.
        colors: (N, 3) or (B, N, 3) linear RGB per Gaussian (per view when view-dependent).
        opacities: (N,) or (B, N) in [0, 1].
        height, width: image size in pixels.
        background: (3,) colour behind the splats (default black).
        backend: ``"warp"`` (kernel) or ``"torch"`` (the plain-torch twin; identical decisions).
        tile: tile size in pixels.
        bins: precomputed :func:`bin_gaussians` (computed when None).

    Returns:
        :class:`SplatImage`. Per pixel, Gaussians of its tile are taken in depth order; one with
        ``alpha = min(0.99, o exp(-d^T conic d / 2)) < 1/255`` is skipped, and compositing stops
        before the first one that would bring the transmittance below 1e-4. Gradients w.r.t.
        means2d, conics, depths, colours and opacities are exact for these discrete decisions.
    """
    if backend not in ("warp", "torch"):
        raise ValueError(f"backend must be 'warp' or 'torch', got {backend!r}")
    H, W = as_int(height, "height", minimum=1), as_int(width, "width", minimum=1)
    tile = as_int(tile, "tile", minimum=1)
    if not isinstance(projected, ProjectedGaussians):
        raise TypeError(f"projected must be a ProjectedGaussians (from project_gaussians), got {describe(projected)}")
    means2d, conics, depths = projected.means2d, projected.conics, projected.depths
    B, N = depths.shape
    dt = means2d.dtype
    check_float(colors, "colors", coerce=False)
    check_float(opacities, "opacities", coerce=False)
    if colors.dim() == 2:
        colors = colors.unsqueeze(0).expand(B, N, colors.shape[-1])
    if colors.shape != (B, N, 3):
        raise ValueError(f"colors must have shape ({N}, 3) or ({B}, {N}, 3), got {tuple(colors.shape)}")
    if opacities.dim() == 1:
        opacities = opacities.unsqueeze(0).expand(B, N)
    if opacities.shape != (B, N):
        raise ValueError(f"opacities must have shape ({N},) or ({B}, {N}), got {tuple(opacities.shape)}")
    if bins is None:
        bins = bin_gaussians(means2d, projected.radii, depths, H, W, tile)
    feats = torch.cat([colors.to(dt), depths.unsqueeze(-1)], -1)
    opac = opacities.to(dt)
    if N == 0:
        out = torch.zeros((B, H, W, 4), dtype=dt, device=means2d.device)
        trans = torch.ones((B, H, W), dtype=dt, device=means2d.device)
    elif backend == "warp":
        from .._kernels.splat import splat_raster_op

        out, trans, _ = splat_raster_op(means2d, conics, opac, feats, bins.starts, bins.ids, H, W, bins.tile)
    else:
        out, trans = _rasterize_torch(means2d, conics, opac.contiguous(), feats, bins, H, W)
    alpha = 1 - trans
    color = out[..., :3]
    if background is not None:
        color = color + trans.unsqueeze(-1) * background.to(dt)
    has = alpha > 1e-10
    depth = torch.where(has, out[..., 3] / torch.where(has, alpha, torch.ones_like(alpha)), torch.zeros_like(alpha))
    return SplatImage(color, alpha, depth, projected)


def render_gaussians(gaussians: Gaussians, cameras: Cameras, background=None, sh_degree: int | None = None,
                     backend: str = "warp", eps2d: float = 0.3, near: float = 0.01) -> SplatImage:
    """Render ``gaussians`` from every view of ``cameras``: projection, SH colours along each
    view's rays (camera centre -> mean), binning and compositing. Returns a :class:`SplatImage`
    with ``color`` (B, H, W, 3). ``sh_degree`` limits the SH bands used (default: all).
    Differentiable w.r.t. every field of ``gaussians`` and the cameras' R, t and intrinsics."""
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"gaussians must be diffvc.render.Gaussians, got {type(gaussians).__name__}")
    dt = gaussians.means.dtype
    bg = None
    if background is not None:
        bg = background if isinstance(background, torch.Tensor) else torch.as_tensor(background, dtype=dt)
        bg = _check_float(bg.to(dtype=dt, device=gaussians.means.device), "background", (3,))
    proj = project_gaussians(gaussians.means, gaussians.scales, gaussians.quats, cameras, eps2d=eps2d, near=near,
                             opacities=gaussians.opacities)
    centers = cameras.centers.to(dt)
    if gaussians.sh.shape[1] == 1 or sh_degree == 0:
        colors = eval_sh(gaussians.sh[:, :1], gaussians.means)  # direction-free
    else:
        dirs = gaussians.means[None] - centers[:, None, :]
        colors = eval_sh(gaussians.sh[None].expand(centers.shape[0], -1, -1, -1), dirs, sh_degree)
    return rasterize_gaussians(proj, colors, gaussians.opacities, cameras.height, cameras.width, bg, backend)


def points_to_gaussians(positions: torch.Tensor, radii: torch.Tensor, colors: torch.Tensor,
                        opacities: torch.Tensor) -> Gaussians:
    """Isotropic splats for particles: positions (N, 3) m, radii (N,) m (the Gaussian's standard
    deviation), colors (N, 3) linear RGB (degree-0 SH, view-independent), opacities (N,) in
    [0, 1]. Differentiable w.r.t. all four."""
    n = positions.shape[0] if isinstance(positions, torch.Tensor) and positions.dim() == 2 else -1
    _check_float(positions, "positions", ("N", 3))
    _check_float(radii, "radii", (n,))
    _check_float(colors, "colors", (n, 3))
    _check_float(opacities, "opacities", (n,))
    dt = positions.dtype
    quats = torch.zeros((n, 4), dtype=dt, device=positions.device)
    quats[:, 0] = 1
    scales = radii.to(dt).clamp_min(0.0)[:, None].expand(n, 3)
    return Gaussians(positions, scales, quats, opacities.to(dt).clamp(0.0, 1.0),
                     rgb_to_sh(colors.to(dt)).reshape(n, 1, 3))


# ---------------------------------------------------------------------------------------------
# losses and metrics
# ---------------------------------------------------------------------------------------------

def _gauss_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    """The normalised 1-D Gaussian ``(size,)``; SSIM's 2-D window is its outer product."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def _check_images(pred, target) -> None:
    check_float(pred, "pred", shape=(..., "H", "W", "C"), coerce=False)
    check_float(target, "target", shape=(..., "H", "W", "C"), coerce=False)
    check_same_dtype(("pred", pred), ("target", target))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of images ``(..., H, W, C)`` with values in [0, 1] (Wang et al.
    2004; 11x11 Gaussian window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding as in 3DGS)."""
    _check_images(pred, target)
    window, sigma = as_int(window, "window", minimum=1), as_float(sigma, "sigma", positive=True)
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal (..., H, W, C)")
    H, W, C = pred.shape[-3:]
    x = pred.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    y = target.reshape(-1, H, W, C).permute(0, 3, 1, 2).to(x.dtype)
    g = _gauss_window(window, sigma, x.dtype, x.device)
    # the five local means in one separable pass (the window is an outer product and zero padding
    # separates): a column then a row filter over x, y, x^2, y^2, xy stacked as channels
    # (512^2 RGB, forward + backward: 94 ms against 144 ms for five 11x11 filters, one thread)
    k = 5 * C
    z = torch.cat([x, y, x * x, y * y, x * y], 1)
    z = F.conv2d(z, g.reshape(1, 1, -1, 1).expand(k, 1, window, 1).contiguous(), padding=(window // 2, 0), groups=k)
    z = F.conv2d(z, g.reshape(1, 1, 1, -1).expand(k, 1, 1, window).contiguous(), padding=(0, window // 2), groups=k)
    mx, my, exx, eyy, exy = z.split(C, 1)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def splat_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS's photometric loss ``(1 - l) * L1 + l * (1 - SSIM)``, images ``(..., H, W, C)``."""
    _check_images(pred, target)
    lambda_dssim = as_float(lambda_dssim, "lambda_dssim", nonneg=True)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have equal shapes")
    l1 = (pred - target).abs().mean()
    return (1 - lambda_dssim) * l1 + lambda_dssim * (1 - ssim(pred, target))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images with peak 1: ``-10 log10(MSE)``."""
    mse = float(((pred.detach().double() - target.detach().double()) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-20))


# ---------------------------------------------------------------------------------------------
# training: parameters, optimizer, schedules, adaptive density control
# ---------------------------------------------------------------------------------------------

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def init_splat_params(points: torch.Tensor, colors: torch.Tensor | None = None, sh_degree: int = 3,
                      opacity: float = 0.1, scale_neighbors: int = 3) -> dict[str, torch.nn.Parameter]:
    """Trainable splat parameters from a point cloud, initialised as in 3DGS.

    Args:
        points: (N, 3) positions (an SfM cloud, or points sampled on a surface).
        colors: (N, 3) initial RGB in [0, 1] (default 0.5 grey).
        sh_degree: SH degree of the colours (0..3).
        opacity: initial opacity.
        scale_neighbors: isotropic initial scale = RMS distance to this many nearest neighbours.

    Returns:
        ``{"means" (N, 3), "scales" (N, 3) log, "quats" (N, 4) raw (w, x, y, z), "opacities" (N,)
        logit, "sh0" (N, 1, 3), "shN" (N, K - 1, 3)}`` as leaf parameters; read them with
        :func:`gaussians_from_params`.
    """
    from ..geometry.knn import knn

    _check_float(points, "points", ("N", 3))
    sh_degree = as_int(sh_degree, "sh_degree", minimum=0)
    if sh_degree > 3:
        raise ValueError(f"sh_degree must lie in [0, 3], got {sh_degree}")
    opacity = as_float(opacity, "opacity")
    if not 0 < opacity < 1:
        raise ValueError(f"opacity must lie in (0, 1), got {opacity}")
    n, dt, dev = points.shape[0], points.dtype, points.device
    k = min(scale_neighbors + 1, n)
    if k >= 2:
        d2, _ = knn(points.detach(), points.detach(), k=k)
        dist = d2[:, 1:].mean(-1).clamp_min(1e-14).sqrt()
    else:
        dist = torch.full((n,), 0.01, dtype=dt, device=dev)
    rgb = torch.full((n, 3), 0.5, dtype=dt, device=dev) if colors is None else _check_float(colors, "colors", (n, 3))
    K = (int(sh_degree) + 1) ** 2
    q = torch.zeros((n, 4), dtype=dt, device=dev)
    q[:, 0] = 1
    p = {
        "means": points.detach().clone(),
        "scales": torch.log(dist)[:, None].repeat(1, 3),
        "quats": q,
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), dtype=dt, device=dev),
        "sh0": rgb_to_sh(rgb.detach()).reshape(n, 1, 3).clone(),
        "shN": torch.zeros((n, K - 1, 3), dtype=dt, device=dev),
    }
    return {k_: torch.nn.Parameter(v.contiguous()) for k_, v in p.items()}


def _check_params(params, name: str) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"{name} must be a dict of tensors (init_splat_params), got {describe(params)}")
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"{name}: missing {missing} (init_splat_params makes {list(PARAM_NAMES)})")
    for k in PARAM_NAMES:
        if not isinstance(params[k], torch.Tensor):
            raise TypeError(f"{name}['{k}'] must be a tensor, got {describe(params[k])}")


def gaussians_from_params(params: dict[str, torch.Tensor]) -> Gaussians:
    """:class:`Gaussians` read through the parameterisation of :func:`init_splat_params`
    (``exp`` scales, ``sigmoid`` opacities, SH = [sh0, shN])."""
    _check_params(params, "params")
    return Gaussians(params["means"], torch.exp(params["scales"]), params["quats"], torch.sigmoid(params["opacities"]),
                     torch.cat([params["sh0"], params["shN"]], 1))


def splat_optimizer(params: dict[str, torch.nn.Parameter], lrs: dict[str, float]) -> torch.optim.Adam:
    """Adam with one parameter group per splat parameter (``group["name"]``) and its own learning
    rate ``lrs[name]`` (3DGS defaults are means 1.6e-4 x scene extent, scales 5e-3, quats 1e-3,
    opacities 5e-2, sh0 2.5e-3, shN 2.5e-3 / 20)."""
    _check_params(params, "params")
    if not isinstance(lrs, dict):
        raise TypeError(f"lrs must be a dict of parameter name -> learning rate, got {describe(lrs)}")
    missing = [k for k in PARAM_NAMES if k not in lrs]
    if missing:
        raise ValueError(f"lrs: missing learning rates for {missing}")
    groups = [{"params": [params[k]], "lr": float(lrs[k]), "name": k} for k in PARAM_NAMES]
    return torch.optim.Adam(groups, eps=1e-15)


def exponential_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear decay from ``lr_init`` (step 0) to ``lr_final`` (step ``max_steps``), as 3DGS's
    position schedule."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr_init) + t * math.log(lr_final))


def _set_rows(optimizer: torch.optim.Optimizer, params: dict, new_values: dict, src: torch.Tensor,
              fresh: torch.Tensor) -> dict:
    """Replace every parameter by ``new_values[name]`` (rows taken from old rows ``src``), keeping
    Adam's moments of surviving rows and zeroing them for ``fresh`` rows."""
    out = {}
    for group in optimizer.param_groups:
        name = group["name"]
        old = group["params"][0]
        new = torch.nn.Parameter(new_values[name].detach().contiguous())
        state = optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                s = state[key][src].clone()
                s[fresh] = 0
                state[key] = s
            optimizer.state[new] = state
        group["params"][0] = new
        out[name] = new
    for k in params:
        if k not in out:
            out[k] = params[k]
    return out


class DensityControl:
    """Adaptive density control of 3D Gaussian splatting (Kerbl et al. 2023, sec. 5).

    Between densification steps, :meth:`accumulate` sums, per Gaussian, the norm of the loss
    gradient w.r.t. its projected mean (in NDC units: pixels x (W/2, H/2)) over the views that
    see it. :meth:`densify_and_prune` then

    * clones Gaussians with mean gradient >= ``grad_threshold`` and largest scale <=
      ``percent_dense * scene_extent`` (under-reconstruction: a copy at the same place),
    * splits those with a larger scale into ``n_split`` Gaussians sampled from the original,
      scales divided by ``0.8 * n_split`` (over-reconstruction),
    * prunes Gaussians with opacity < ``min_opacity``, or (with ``max_screen_radius``) a screen
      radius above it or a world scale above ``0.1 * scene_extent``,

    keeping the optimizer's Adam moments of surviving Gaussians (new ones start from zero).
    :meth:`reset_opacity` caps opacities (3DGS resets them to 0.01 every 3000 steps).
    """

    def __init__(self, scene_extent: float, grad_threshold: float = 2e-4, percent_dense: float = 0.01,
                 min_opacity: float = 0.005, n_split: int = 2, max_screen_radius: float | None = None):
        scene_extent = as_float(scene_extent, "scene_extent", positive=True)
        n_split = as_int(n_split, "n_split", minimum=1)
        grad_threshold = as_float(grad_threshold, "grad_threshold", nonneg=True)
        percent_dense = as_float(percent_dense, "percent_dense", nonneg=True)
        min_opacity = as_float(min_opacity, "min_opacity", nonneg=True)
        self.extent, self.grad_threshold, self.percent_dense = float(scene_extent), float(grad_threshold), \
            float(percent_dense)
        self.min_opacity, self.n_split, self.max_screen_radius = float(min_opacity), int(n_split), max_screen_radius
        self.grad_sum = self.count = self.max_radii = None

    def _reset(self, n: int, ref: torch.Tensor) -> None:
        self.grad_sum = torch.zeros(n, dtype=torch.float64, device=ref.device)
        self.count = torch.zeros(n, dtype=torch.float64, device=ref.device)
        self.max_radii = torch.zeros(n, dtype=torch.int32, device=ref.device)

    @torch.no_grad()
    def accumulate(self, means2d_grad: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Add one step's view-space gradients ``means2d_grad`` (B, N, 2) of the Gaussians seen
        (``radii`` (B, N) > 0) in images of ``width`` x ``height`` pixels."""
        B, N = radii.shape
        if self.grad_sum is None or self.grad_sum.shape[0] != N:
            self._reset(N, radii)
        scale = torch.tensor([width / 2, height / 2], dtype=torch.float64, device=radii.device)
        g = (means2d_grad.double() * scale).norm(dim=-1)
        seen = radii > 0
        self.grad_sum += (g * seen).sum(0)
        self.count += seen.sum(0)
        self.max_radii = torch.maximum(self.max_radii, radii.max(0).values)

    @torch.no_grad()
    def densify_and_prune(self, params: dict, optimizer: torch.optim.Optimizer, densify: bool = True,
                          generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """Clone, split and prune (see the class docstring); returns ``(new params, counts)`` with
        counts ``{"cloned", "split", "pruned", "total"}``. The optimizer's groups now hold the new
        parameters."""
        n = params["means"].shape[0]
        ref = params["means"]
        if self.grad_sum is None or self.grad_sum.shape[0] != n:
            self._reset(n, ref)
        avg = self.grad_sum / self.count.clamp_min(1)
        scales = torch.exp(params["scales"])
        big = scales.max(-1).values > self.percent_dense * self.extent
        hot = (avg >= self.grad_threshold) if densify else torch.zeros_like(big)
        clone = hot & ~big
        split = hot & big
        opac = torch.sigmoid(params["opacities"])
        prune = opac < self.min_opacity
        if self.max_screen_radius is not None:
            prune |= (self.max_radii > self.max_screen_radius) | (scales.max(-1).values > 0.1 * self.extent)
        prune &= ~split  # a split Gaussian is replaced anyway
        idx = torch.arange(n, device=ref.device)
        keep_idx = idx[~prune & ~split]
        clone_idx = idx[clone & ~prune]
        split_idx = idx[split]
        k = self.n_split
        src = torch.cat([keep_idx, clone_idx, split_idx.repeat(k)])
        fresh = torch.zeros(src.shape[0], dtype=torch.bool, device=ref.device)
        fresh[keep_idx.shape[0]:] = True
        new = {name: params[name][src].clone() for name in PARAM_NAMES}
        if split_idx.numel():
            m = split_idx.numel() * k
            s = scales[split_idx].repeat(k, 1)
            R = quaternion_to_matrix(params["quats"][split_idx]).repeat(k, 1, 1)
            noise = torch.randn((m, 3), dtype=s.dtype, device=s.device, generator=generator) * s
            new["means"][-m:] = params["means"][split_idx].repeat(k, 1) + (R @ noise.unsqueeze(-1)).squeeze(-1)
            new["scales"][-m:] = torch.log(s / (0.8 * k))
        params = _set_rows(optimizer, params, new, src, fresh)
        self._reset(src.shape[0], ref)
        return params, {"cloned": int(clone_idx.numel()), "split": int(split_idx.numel()),
                        "pruned": int(prune.sum()), "total": int(src.shape[0])}

    @torch.no_grad()
    def reset_opacity(self, params: dict, optimizer: torch.optim.Optimizer, value: float = 0.01) -> dict:
        """Cap every opacity at ``value`` (its Adam moments are zeroed)."""
        cap = math.log(value / (1 - value))
        new = dict(params)
        new["opacities"] = params["opacities"].clamp_max(cap)
        n = params["means"].shape[0]
        src = torch.arange(n, device=params["means"].device)
        out = {}
        for group in optimizer.param_groups:
            if group["name"] != "opacities":
                continue
            old = group["params"][0]
            p = torch.nn.Parameter(new["opacities"].detach().contiguous())
            state = optimizer.state.pop(old, None)
            if state:
                state["exp_avg"] = torch.zeros_like(state["exp_avg"])
                state["exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
                optimizer.state[p] = state
            group["params"][0] = p
            out["opacities"] = p
        del src
        return {**params, **out}
