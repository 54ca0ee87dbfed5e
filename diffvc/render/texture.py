"""UV-mapped textures: bilinear lookups, optionally trilinear across a mipmap pyramid.

Conventions: a texture is ``(Ht, Wt, C)`` (shared by all views) or ``(B, Ht, Wt, C)``; texture
coordinates ``uv`` are ``(B, H, W, 2)``, u along the texture's width (columns), v along its
height with **v = 0 at the bottom row** (OpenGL / OBJ convention); texel (i, j) has its centre
at ``((j + 0.5) / Wt, 1 - (i + 0.5) / Ht)``. ``wrap="repeat"`` tiles the texture,
``"clamp"`` extends its border texels.

Gradients flow to the texture values and to ``uv`` (bilinear interpolation is continuous and
piecewise bilinear; its derivative at texel-centre lines is the one-sided value torch's
``grid_sample`` picks). With mipmapping, the level of detail is computed from screen-space uv
differences between neighbouring pixels and is treated as a constant (no gradient through the
level selection; the blend between the two levels is differentiable w.r.t. the texture).
"""

from __future__ import annotations

import math

import torch

from .._validate import as_int, as_tuple, check_float, check_same_dtype
import torch.nn.functional as Fn

WRAPS = ("repeat", "clamp")
FILTERS = ("bilinear", "mipmap")
BACKENDS = ("warp", "torch")


def _check(tex: torch.Tensor, uv: torch.Tensor):
    check_float(tex, "tex", coerce=False)
    check_float(uv, "uv", coerce=False)
    check_same_dtype(("tex", tex), ("uv", uv))
    if not isinstance(tex, torch.Tensor) or not tex.is_floating_point() or tex.dim() not in (3, 4):
        raise ValueError(f"tex must be a floating tensor (Ht, Wt, C) or (B, Ht, Wt, C), got "
                         f"{tuple(tex.shape) if isinstance(tex, torch.Tensor) else type(tex).__name__}")
    if tex.shape[-2] == 0 or tex.shape[-3] == 0:
        raise ValueError(f"tex must have a positive size, got {tuple(tex.shape)}")
    if not isinstance(uv, torch.Tensor) or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape (B, H, W, 2), got "
                         f"{tuple(uv.shape) if isinstance(uv, torch.Tensor) else type(uv).__name__}")
    if tex.dim() == 4 and tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"tex batch {tex.shape[0]} does not match uv batch {uv.shape[0]}")


def _prepare(tex: torch.Tensor, B: int, wrap: str) -> tuple[torch.Tensor, bool]:
    """``tex`` (1 or B, Ht, Wt, C) as grid_sample's input (B, C, Ht, Wt); with ``wrap="repeat"``
    padded by one texel on each side with the opposite border (prepare once, sample many times)."""
    t = tex.expand(B, -1, -1, -1).permute(0, 3, 1, 2)  # (B, C, Ht, Wt)
    if wrap == "repeat":
        t = torch.cat([t[..., -1:], t, t[..., :1]], dim=3)
        t = torch.cat([t[..., -1:, :], t, t[..., :1, :]], dim=2)
    return t, wrap == "repeat"


def _sample(prep: tuple[torch.Tensor, bool], uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup in a :func:`_prepare` d texture at ``uv`` (B, H, W, 2) -> (B, H, W, C)."""
    t, padded = prep
    Hp, Wp = t.shape[2], t.shape[3]
    Ht, Wt = (Hp - 2, Wp - 2) if padded else (Hp, Wp)
    x = uv[..., 0] * Wt  # texel units, centres at j + 0.5
    y = (1 - uv[..., 1]) * Ht
    if padded:  # wrap into [0, W), shifted by the padding texel
        x = torch.remainder(x, Wt) + 1
        y = torch.remainder(y, Ht) + 1
    gx = 2 * x / Wp - 1  # grid_sample, align_corners=False: -1 / +1 at the outer texel edges
    gy = 2 * y / Hp - 1
    grid = torch.stack([gx, gy], dim=-1).to(t.dtype)
    out = Fn.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def _bilinear_torch(tex: torch.Tensor, uv: torch.Tensor, wrap: str) -> torch.Tensor:
    """The torch twin of the lookup kernels: tex (1 or B, Ht, Wt, C), uv (B, H, W, 2) -> (B, H, W, C)."""
    return _sample(_prepare(tex, uv.shape[0], wrap), uv)


def _twin(tex: torch.Tensor, uv: torch.Tensor, repeat: int) -> torch.Tensor:
    """:func:`_bilinear_torch` on the kernels' layout: uv (B, P, 2) -> (B, P, C)."""
    return _bilinear_torch(tex, uv.unsqueeze(1), "repeat" if repeat else "clamp").squeeze(1)


class _Sampler:
    """Bilinear lookups in one texture ``(1 or B, Ht, Wt, C)`` at ``uv (B, P, 2)`` -> ``(B, P, C)``:
    the Warp kernels (float32/float64), or the twin with its padded copy made once."""

    def __init__(self, tex: torch.Tensor, wrap: str, backend: str):
        self.tex, self.wrap = tex, wrap
        self.kernel = backend == "warp" and tex.dtype in (torch.float32, torch.float64)
        self.prep = None

    def __call__(self, uv: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            from .._kernels import texture as K

            return K.lookup(self.tex, uv, self.wrap == "repeat", _twin)
        if self.prep is None:
            self.prep = _prepare(self.tex, uv.shape[0], self.wrap)
        return _sample(self.prep, uv.unsqueeze(1)).squeeze(1)


def mipmaps(tex: torch.Tensor, levels: int | None = None) -> list[torch.Tensor]:
    """Pyramid of 2x2 box-filtered levels of ``tex`` (B, Ht, Wt, C), down to 1 texel (or
    ``levels`` levels); odd sizes drop the last row/column. Differentiable."""
    check_float(tex, "tex", shape=("B", "Ht", "Wt", "C"), coerce=False)
    levels = as_int(levels, "levels", minimum=1, allow_none=True)
    out = [tex]
    n = levels if levels is not None else int(math.floor(math.log2(max(tex.shape[1], tex.shape[2])))) + 1
    while len(out) < n and min(out[-1].shape[1], out[-1].shape[2]) >= 2:
        t = out[-1].permute(0, 3, 1, 2)
        out.append(Fn.avg_pool2d(t, 2).permute(0, 2, 3, 1))
    return out


def level_of_detail(uv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mip level (B, H, W) from the screen-space footprint of a pixel in texels: log2 of the
    larger of |d(uv*size)/dx| and |d(uv*size)/dy| (one-sided differences to the next pixel,
    the previous one at the last row/column), clamped at 0. Not differentiated."""
    check_float(uv, "uv", shape=("B", "H", "W", 2), coerce=False)
    size = as_tuple(size, "size", 2, integer=True, minimum=1)
    with torch.no_grad():
        s = uv.detach() * torch.tensor([size[1], size[0]], dtype=uv.dtype, device=uv.device)
        dx = torch.zeros_like(s)
        dy = torch.zeros_like(s)
        if s.shape[2] > 1:
            dx[:, :, :-1] = s[:, :, 1:] - s[:, :, :-1]
            dx[:, :, -1] = dx[:, :, -2]
        if s.shape[1] > 1:
            dy[:, :-1] = s[:, 1:] - s[:, :-1]
            dy[:, -1] = dy[:, -2]
        rho = torch.maximum(dx.norm(dim=-1), dy.norm(dim=-1))
        return torch.log2(rho.clamp_min(1e-12)).clamp_min(0)


def texture(tex: torch.Tensor, uv: torch.Tensor, filter: str = "bilinear", wrap: str = "repeat",
            lod: torch.Tensor | None = None, backend: str = "warp") -> torch.Tensor:
    """Sample ``tex`` at ``uv`` (see the module docstring for conventions).

    Args:
        tex: (Ht, Wt, C) or (B, Ht, Wt, C) texture values.
        uv: (B, H, W, 2) texture coordinates (e.g. ``interpolate(uvs, frags)``).
        filter: ``"bilinear"`` or ``"mipmap"`` (trilinear: bilinear in the two nearest levels of
            :func:`mipmaps`, blended by the fractional level of detail).
        wrap: ``"repeat"`` or ``"clamp"``.
        lod: optional (B, H, W) level of detail for ``"mipmap"`` (default :func:`level_of_detail`).
        backend: ``"warp"`` (the lookup kernels of ``diffvc._kernels.texture``; float32/float64,
            other dtypes use the twin) or ``"torch"`` (``grid_sample``, the twin; second
            derivatives go through it with either). 512^2 bilinear lookups in a 1024^2 RGB
            texture, forward + backward of an MSE, one thread: 22.9 ms against the twin's 49.5 ms
            (``bench.texture``).

    Returns:
        (B, H, W, C), differentiable w.r.t. ``tex`` and ``uv``.
    """
    _check(tex, uv)
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if wrap not in WRAPS:
        raise ValueError(f"wrap must be one of {WRAPS}, got {wrap!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if tex.dim() == 3:
        tex = tex.unsqueeze(0)
    uv = uv.to(tex.dtype)
    B, H, W = uv.shape[:3]
    C = tex.shape[-1]
    if filter == "bilinear":
        return _Sampler(tex, wrap, backend)(uv.reshape(B, H * W, 2)).reshape(B, H, W, C)
    pyr = mipmaps(tex)
    if lod is None:
        lod = level_of_detail(uv, (tex.shape[1], tex.shape[2]))
    lod = lod.clamp(0, len(pyr) - 1).to(tex.dtype)
    n = H * W
    # per pixel the two nearest levels lo = floor(lod) and lo + 1, weights 1 - frac and frac (the
    # hat weights max(0, 1 - |lod - k|)); pixels grouped by lo, each group sampled in its two
    # levels only (512^2 pixels spanning 7 levels of a 1024^2 texture, forward + backward of an MSE,
    # both with grid_sample: 192 -> 96 ms against sampling every level at every pixel)
    lo = lod.detach().floor().clamp(max=len(pyr) - 1).to(torch.long).reshape(B, n)
    frac = (lod - lo.reshape(lod.shape).to(lod.dtype)).reshape(B, n, 1)
    outs = []
    for b in range(B):
        order = torch.argsort(lo[b])
        counts = torch.bincount(lo[b], minlength=len(pyr)).tolist()
        uv_b = uv[b].reshape(n, 2)[order]
        f_b = frac[b][order]
        parts, start = [], 0
        samplers: dict = {}  # level k of view b

        def level(k):
            if k not in samplers:
                samplers[k] = _Sampler(pyr[k][b:b + 1] if pyr[k].shape[0] > 1 else pyr[k], wrap, backend)
            return samplers[k]

        for k, cnt in enumerate(counts):
            if cnt == 0:
                continue
            q = uv_b[start:start + cnt].reshape(1, cnt, 2)
            fk = f_b[start:start + cnt]
            val = level(k)(q).reshape(cnt, C)
            if k + 1 < len(pyr):  # lod = k exactly at the last level: frac = 0 there
                val = (1 - fk) * val + fk * level(k + 1)(q).reshape(cnt, C)
            parts.append(val)
            start += cnt
        outs.append(torch.empty(n, C, dtype=tex.dtype, device=tex.device).index_copy(0, order, torch.cat(parts)))
    return torch.stack(outs).reshape(B, H, W, C)
