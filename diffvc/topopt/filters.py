"""Density filter, sensitivity filter and Heaviside projection on a structured element grid.

The filter weights are top88's: ``H_ij = max(0, rmin - |c_i - c_j|)`` between element centres
(in element widths), over the grid only (elements outside are not there: the weights are
renormalised by ``Hs_i = sum_j H_ij``). Both filters are one ``conv{2,3}d`` with that kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tF


class DensityFilter:
    """``x_filtered = (H x) / Hs`` on a density field of ``shape`` (elements).

    Args:
        shape: element counts ``(nelx, nely[, nelz])``; rmin: filter radius in element widths
            (> 0; ``rmin <= 1`` is the identity).

    The map is linear, so its gradient is exact everywhere (``H^T (g / Hs)``, by autograd).
    """

    def __init__(self, shape, rmin: float, dtype=torch.float64, device=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"shape must have 2 or 3 entries, got {shape}")
        if not rmin > 0:
            raise ValueError(f"rmin must be > 0, got {rmin}")
        self.shape, self.rmin = shape, float(rmin)
        r = int(math.ceil(rmin)) - 1
        ax = torch.arange(-r, r + 1, dtype=torch.float64)
        grids = torch.meshgrid(*([ax] * len(shape)), indexing="ij")
        dist = torch.sqrt(sum(g * g for g in grids))
        self.r = r
        self.kernel = (self.rmin - dist).clamp_min(0.0)[None, None].to(dtype=dtype, device=device)
        self.Hs = self._conv(torch.ones(shape, dtype=dtype, device=device))

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        conv = tF.conv2d if len(self.shape) == 2 else tF.conv3d
        k = self.kernel.to(dtype=x.dtype, device=x.device)
        return conv(x[None, None], k, padding=self.r)[0, 0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Filtered field (same shape as ``x``)."""
        if x.shape != self.shape:
            raise ValueError(f"x must have shape {self.shape}, got {tuple(x.shape)}")
        return self._conv(x) / self.Hs.to(x.dtype)

    def sensitivity(self, x: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        """Sigmund's sensitivity filter (top88 ``ft = 1``): ``H (x dc) / Hs / max(1e-3, x)``.
        A heuristic that replaces the gradient; it is not the gradient of any function."""
        return self._conv(x * dc) / self.Hs.to(x.dtype) / x.clamp_min(1e-3)


def heaviside(x: torch.Tensor, beta: float, eta: float = 0.5) -> torch.Tensor:
    """Smoothed Heaviside projection (Wang, Lazarov & Sigmund 2011):
    ``(tanh(beta eta) + tanh(beta (x - eta))) / (tanh(beta eta) + tanh(beta (1 - eta)))``.
    Maps [0, 1] onto [0, 1]; ``beta -> 0`` is the identity, ``beta -> inf`` a step at ``eta``.
    Smooth for finite ``beta``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must lie in (0, 1), got {eta}")
    a = math.tanh(beta * eta)
    return (a + torch.tanh(beta * (x - eta))) / (a + math.tanh(beta * (1.0 - eta)))
