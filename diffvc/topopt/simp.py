"""SIMP topology optimisation: minimum compliance under a volume fraction.

``E(x) = Emin + x^p (E0 - Emin)`` per element (penalised density), the physical density obtained
from the design variables by an optional density filter and Heaviside projection, passive
elements held at 0 or 1, the compliance summed over the load cases. :class:`SIMP` exposes each
piece as a torch function (``physical``, ``young``, ``compliance``, ``volume``), so the compliance
is an ordinary differentiable loss (its gradient comes from the adjoint of the FEM solve) that can
be combined with any other loss; :meth:`SIMP.optimize` runs the classic loop (OC or MMA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .elasticity import ElasticityGrid, compliance as _compliance
from .filters import DensityFilter, heaviside
from .optimizers import MMA, oc_update
from .problems import SOLID, VOID, GridProblem

_FILTERS = ("sensitivity", "density", "none")


@dataclass
class SIMPResult:
    """What :meth:`SIMP.optimize` did. ``compliance[i]``, ``volume[i]`` are those of the design
    at the start of iteration ``i`` (as top88 prints them); ``change[i]`` is ``max |x_new - x|``."""

    x: torch.Tensor
    density: torch.Tensor
    compliance: list = field(default_factory=list)
    volume: list = field(default_factory=list)
    change: list = field(default_factory=list)
    beta: list = field(default_factory=list)
    cg_iterations: list = field(default_factory=list)
    seconds_per_iter: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    converged: bool = False

    @property
    def iterations(self) -> int:
        return len(self.compliance)


class SIMP:
    """A SIMP compliance problem with its filter and projection.

    Args:
        problem: the :class:`~diffvc.topopt.problems.GridProblem`.
        volfrac: allowed mean physical density in (0, 1].
        penal: SIMP exponent ``p``; E0, Emin: solid and void Young's moduli; nu: Poisson ratio.
        rmin: filter radius (element widths).
        filter: ``"sensitivity"`` (top88 ``ft=1``: densities are used as they are and the
            gradient is replaced by the filtered one -- a heuristic), ``"density"`` (``ft=2``: the
            physical density is the filtered design, exact gradients) or ``"none"``.
        beta: ``None`` or the initial sharpness of a tanh Heaviside projection applied after the
            density filter (threshold ``eta``); ``beta_max``/``beta_every``: the continuation
            (beta doubles every ``beta_every`` iterations, or when the change falls below tol,
            up to ``beta_max``).
        solver, tol: the FEM solver (see :class:`~diffvc.topopt.elasticity.ElasticityGrid`).
    """

    def __init__(self, problem: GridProblem, volfrac: float = 0.5, penal: float = 3.0, rmin: float = 1.5,
                 filter: str = "density", beta: float | None = None, eta: float = 0.5, beta_max: float = 32.0,
                 beta_every: int = 50, E0: float = 1.0, Emin: float = 1e-9, nu: float = 0.3, solver: str = "auto",
                 tol: float = 1e-9, dtype=torch.float64):
        if not isinstance(problem, GridProblem):
            raise TypeError(f"problem must be a GridProblem, got {type(problem).__name__}")
        if not 0.0 < volfrac <= 1.0:
            raise ValueError(f"volfrac must lie in (0, 1], got {volfrac}")
        if not penal >= 1.0:
            raise ValueError(f"penal must be >= 1, got {penal}")
        if filter not in _FILTERS:
            raise ValueError(f"filter must be one of {_FILTERS}, got {filter!r}")
        if beta is not None and filter == "sensitivity":
            raise ValueError("beta: the Heaviside projection needs filter='density' (or 'none')")
        if not 0.0 < Emin < E0:
            raise ValueError(f"need 0 < Emin < E0 (Emin = 0 makes K singular in void regions), got Emin={Emin}, E0={E0}")
        self.problem, self.volfrac, self.penal = problem, float(volfrac), float(penal)
        self.filter_kind, self.beta, self.eta = filter, beta, eta
        self.beta_max, self.beta_every = beta_max, beta_every
        self.E0, self.Emin = float(E0), float(Emin)
        self.dtype = dtype
        self.device = problem.fixed.device
        self.shape = problem.shape
        self.grid = ElasticityGrid(problem.shape, problem.fixed, nu=nu, solver=solver, tol=tol)
        self.filter = DensityFilter(problem.shape, rmin, dtype=dtype, device=self.device)
        self.loads = problem.loads.to(dtype)
        self.passive = problem.passive

    # ------------------------------------------------------------------ the differentiable pieces
    def apply_passive(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with void passive elements at 0 and solid ones at 1 (zero gradient there)."""
        if self.passive is None:
            return x
        P = self.passive.to(x.device)
        return torch.where(P == VOID, torch.zeros_like(x), torch.where(P == SOLID, torch.ones_like(x), x))

    def physical(self, x: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        """Physical densities from design variables ``x`` (of ``shape``): density filter (if
        ``filter="density"``), Heaviside projection (if a ``beta`` is set), passive elements."""
        if x.shape != self.shape:
            raise ValueError(f"x must have shape {self.shape}, got {tuple(x.shape)}")
        xp = self.filter(x) if self.filter_kind == "density" else x
        b = self.beta if beta is None else beta
        if b is not None:
            xp = heaviside(xp, b, self.eta)
        return self.apply_passive(xp)

    def young(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Element Young's moduli ``Emin + x^p (E0 - Emin)``, flattened ``(n_elements,)``."""
        return self.Emin + x_phys.reshape(-1).clamp_min(0.0) ** self.penal * (self.E0 - self.Emin)

    def compliance(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Total compliance ``sum_cases f^T u`` of the physical densities ``x_phys`` (a scalar
        torch loss; gradient by the adjoint, ``dc/dE_e = -sum u_e^T K_e u_e``)."""
        return _compliance(self.young(x_phys), self.loads, self.grid).sum()

    def volume(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Mean physical density."""
        return x_phys.mean()

    # ------------------------------------------------------------------ the loop
    def initial_design(self) -> torch.Tensor:
        return self.apply_passive(torch.full(self.shape, self.volfrac, dtype=self.dtype, device=self.device))

    def optimize(self, update: str = "oc", max_iter: int = 1000, tol: float = 0.01, move: float | None = None,
                 x0: torch.Tensor | None = None, extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 snapshot_every: int = 0, callback: Callable[[int, SIMPResult], None] | None = None,
                 progress: bool = False) -> SIMPResult:
        """Minimise the compliance (plus ``extra_loss(x_phys)`` if given) s.t. ``volume <= volfrac``.

        Args:
            update: ``"oc"`` (top88's optimality criteria, move 0.2 by default) or ``"mma"`` (move
                0.5 by default; objective scaled by its first value).
            max_iter: iteration cap; tol: stop when ``max |x_new - x| <= tol`` (top88: 0.01).
            x0: initial design (default: ``volfrac`` everywhere).
            snapshot_every: keep the physical density every this many iterations (0: never).
        """
        if update not in ("oc", "mma"):
            raise ValueError(f"update must be 'oc' or 'mma', got {update!r}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        move = (0.2 if update == "oc" else 0.5) if move is None else move
        x = self.initial_design() if x0 is None else self.apply_passive(x0.to(self.dtype).detach().clone())
        n = x.numel()
        target = self.volfrac * n
        mma = MMA(0.0, 1.0, move) if update == "mma" else None
        beta = self.beta
        res = SIMPResult(x=x, density=x)
        c0 = None
        since_beta = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_iter, desc=f"topopt {self.problem.name}", leave=False)
        for it in range(max_iter):
            t0 = time.perf_counter()
            xr = x.detach().requires_grad_()
            xp = self.physical(xr, beta)
            c = self.compliance(xp)
            obj = c if extra_loss is None else c + extra_loss(xp)
            vol_sum = xp.sum()
            dv, = torch.autograd.grad(vol_sum, xr, retain_graph=True)
            dc, = torch.autograd.grad(obj, xr)
            xp = xp.detach()
            if self.filter_kind == "sensitivity":
                dc = self.filter.sensitivity(x, dc)
            if update == "oc":
                dvv = dv
                if self.passive is not None:
                    dvv = torch.where(self.passive.to(x.device) != 0, torch.ones_like(dvv), dvv)
                if beta is None:
                    # without projection the physical volume is affine in x (filter and passive
                    # overrides are): sum(x_phys(x_new)) = sum(x_phys(x)) + <dv, x_new - x>, exactly
                    v0 = float(vol_sum.detach())
                    volume = lambda xn: v0 + float((dv * (xn - x)).sum())  # noqa: E731
                else:
                    volume = lambda xn: float(self.physical(xn, beta).sum())  # noqa: E731
                with torch.no_grad():
                    xnew = oc_update(x, dc, dvv, volume, target, move=move, fixed=self.apply_passive)
            else:
                if c0 is None:
                    c0 = float(obj.detach())
                xnew = mma.step(x, dc / abs(c0), float(vol_sum.detach()) / target - 1.0, dv / target)
                xnew = self.apply_passive(xnew)
            change = float((xnew - x).abs().max())
            x = xnew.detach()
            res.compliance.append(float(c.detach()))
            res.volume.append(float(xp.mean()))
            res.change.append(change)
            res.beta.append(beta if beta is not None else 0.0)
            res.cg_iterations.append(self.grid.last_iterations)
            res.seconds_per_iter.append(time.perf_counter() - t0)
            if snapshot_every and it % snapshot_every == 0:
                res.snapshots.append((it, xp.float().cpu()))
            if callback is not None:
                callback(it, res)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(c=f"{res.compliance[-1]:.4g}", vol=f"{res.volume[-1]:.3f}", ch=f"{change:.3f}")
            since_beta += 1
            if beta is not None and beta < self.beta_max and (since_beta >= self.beta_every or change <= tol):
                beta = min(2.0 * beta, self.beta_max)
                since_beta = 0
                continue
            if change <= tol:
                res.converged = True
                break
        if bar is not None:
            bar.close()
        res.x = x
        res.density = self.physical(x, beta).detach()
        if snapshot_every:
            res.snapshots.append((res.iterations, res.density.float().cpu()))
        return res
