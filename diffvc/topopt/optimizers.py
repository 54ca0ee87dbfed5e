"""Design updates for density-based topology optimisation: optimality criteria (OC, as top88) and
the Method of Moving Asymptotes (MMA, Svanberg 1987) for one inequality constraint."""

from __future__ import annotations

from typing import Callable

import torch


def oc_update(x: torch.Tensor, dc: torch.Tensor, dv: torch.Tensor, volume: Callable[[torch.Tensor], float],
              target: float, move: float = 0.2, fixed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """One optimality-criteria update (top88): ``x_new = clamp(x sqrt(-dc / (dv lmid)), x +- move, [0, 1])``
    with the Lagrange multiplier ``lmid`` found by bisection (``l1 = 0``, ``l2 = 1e9``, until
    ``(l2 - l1) / (l1 + l2) <= 1e-3``) so that ``volume(x_new) <= target``.

    Args:
        x: design densities (any shape); dc: objective sensitivities (``<= 0`` for compliance;
            positive entries are treated as 0); dv: volume sensitivities (> 0).
        volume: ``volume(x_new) -> float``, the constrained quantity (e.g. the sum of the physical
            densities after filtering/projection); target: its bound.
        move: move limit. fixed: optional map applied to every candidate (passive elements).
    """
    if not move > 0:
        raise ValueError(f"move must be > 0, got {move}")
    ratio = (-dc).clamp_min(0.0) / dv.clamp_min(torch.finfo(dv.dtype).tiny)
    l1, l2 = 0.0, 1e9
    xnew = x
    while (l2 - l1) / (l1 + l2) > 1e-3:
        lmid = 0.5 * (l2 + l1)
        xnew = torch.minimum(torch.maximum(x * torch.sqrt(ratio / lmid), x - move), x + move).clamp(0.0, 1.0)
        if fixed is not None:
            xnew = fixed(xnew)
        if volume(xnew) > target:
            l1 = lmid
        else:
            l2 = lmid
    return xnew


class MMA:
    """Svanberg's Method of Moving Asymptotes for ``min f(x)`` s.t. ``g(x) <= 0``, ``xmin <= x <= xmax``
    (one constraint). Each step builds MMA's convex separable approximation from the values and
    gradients at the current point (asymptotes updated as in Svanberg's ``mmasub``: init 0.5,
    increase 1.2, decrease 0.7) and solves it exactly through its one-dimensional dual (bisection
    on the multiplier; the approximate constraint is decreasing in it).

    Args:
        xmin, xmax: bounds (floats); move: move limit as a fraction of ``xmax - xmin``.
    """

    def __init__(self, xmin: float = 0.0, xmax: float = 1.0, move: float = 0.5, asyinit: float = 0.5,
                 asyincr: float = 1.2, asydecr: float = 0.7):
        if not xmax > xmin:
            raise ValueError(f"xmax must be > xmin, got {xmin}, {xmax}")
        self.xmin, self.xmax, self.move = float(xmin), float(xmax), float(move)
        self.asyinit, self.asyincr, self.asydecr = asyinit, asyincr, asydecr
        self.k = 0
        self.xold1 = self.xold2 = self.low = self.upp = None

    def step(self, x: torch.Tensor, df: torch.Tensor, g: float, dg: torch.Tensor) -> torch.Tensor:
        """New design from ``x``, the objective gradient ``df``, the constraint value ``g`` (``<= 0``
        is feasible) and its gradient ``dg`` (all of ``x``'s shape)."""
        x, df, dg = x.detach(), df.detach(), dg.detach()
        span = self.xmax - self.xmin
        self.k += 1
        if self.k <= 2:
            low = x - self.asyinit * span
            upp = x + self.asyinit * span
        else:
            zz = (x - self.xold1) * (self.xold1 - self.xold2)
            gamma = torch.where(zz > 0, torch.full_like(x, self.asyincr),
                                torch.where(zz < 0, torch.full_like(x, self.asydecr), torch.ones_like(x)))
            low = x - gamma * (self.xold1 - self.low)
            upp = x + gamma * (self.upp - self.xold1)
            low = torch.minimum(torch.maximum(low, x - 10 * span), x - 0.01 * span)
            upp = torch.minimum(torch.maximum(upp, x + 0.01 * span), x + 10 * span)
        alpha = torch.maximum(torch.maximum(low + 0.1 * (x - low), x - self.move * span), torch.full_like(x, self.xmin))
        beta = torch.minimum(torch.minimum(upp - 0.1 * (upp - x), x + self.move * span), torch.full_like(x, self.xmax))
        ux2, xl2 = (upp - x) ** 2, (x - low) ** 2
        reg = 1e-5 / span

        def pq(d):
            dp, dm = d.clamp_min(0.0), (-d).clamp_min(0.0)
            return ux2 * (1.001 * dp + 0.001 * dm + reg), xl2 * (0.001 * dp + 1.001 * dm + reg)

        p0, q0 = pq(df)
        p1, q1 = pq(dg)
        b = (p1 / (upp - x) + q1 / (x - low)).sum() - float(g)

        def x_of(lam):
            sp, sq = torch.sqrt(p0 + lam * p1), torch.sqrt(q0 + lam * q1)
            return torch.minimum(torch.maximum((sp * low + sq * upp) / (sp + sq), alpha), beta)

        def g_of(lam):
            xs = x_of(lam)
            return float((p1 / (upp - xs) + q1 / (xs - low)).sum() - b)

        if g_of(0.0) <= 0:
            lam = 0.0
        else:
            lo, hi = 0.0, 1.0
            while g_of(hi) > 0 and hi < 1e30:
                lo, hi = hi, hi * 2.0
            for _ in range(100):
                mid = 0.5 * (lo + hi)
                if g_of(mid) > 0:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-12 * hi:
                    break
            lam = hi
        xnew = x_of(lam)
        self.xold2, self.xold1 = self.xold1, x
        self.low, self.upp = low, upp
        return xnew
