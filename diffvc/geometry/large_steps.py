"""Laplacian-preconditioned vertex parameterization ("Large Steps in Inverse Rendering of
Geometry", Nicolet, Jacobson & Jakob 2021).

Vertices ``x (V, 3)`` are optimized through ``u = (I + lam L) x``. A gradient step on ``u`` is a
smoothed (Sobolev-preconditioned) step on ``x``, so large steps stay free of the spikes and
self-intersections plain vertex optimization makes. Recovering ``x`` needs the sparse solve
``x = (I + lam L)^{-1} u``; its backward is another solve with the same (symmetric) matrix.

Solvers (:class:`SparseSolver`): ``"lu"`` factors once with SciPy's SuperLU on the CPU and reuses
the factorization; ``"cg"`` is Jacobi-preconditioned conjugate gradients in torch, so it runs on
any device (CUDA included) and is the default off the CPU.

Usage::

    ls = LargeSteps(verts, faces, lam=20.0)          # ls.u is a torch.nn.Parameter
    opt = torch.optim.Adam([ls.u], lr=1e-2)
    loss = render_loss(ls.verts(), faces); loss.backward(); opt.step()
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from .._validate import all_finite, as_float, describe
from ._checks import check_mesh, check_points
from .laplacian import cotangent_laplacian, uniform_laplacian


def _check_laplacian(L, name: str = "L") -> torch.Tensor:
    if not isinstance(L, torch.Tensor) or not L.is_sparse or L.dim() != 2 or L.shape[0] != L.shape[1]:
        raise TypeError(f"{name} must be a square torch sparse (COO) matrix (V, V), e.g. from uniform_laplacian, "
                        f"got {describe(L)}")
    if not L.is_floating_point():
        raise TypeError(f"{name} must be a floating sparse matrix, got {L.dtype}")
    return L


def system_matrix(L: torch.Tensor, lam: float) -> torch.Tensor:
    """``M = I + lam * L`` as a coalesced sparse tensor (``L``: sparse ``(V, V)``; ``lam >= 0``)."""
    _check_laplacian(L)
    lam = as_float(lam, "lam", nonneg=True)
    n = L.shape[0]
    ar = torch.arange(n, device=L.device)
    eye = torch.sparse_coo_tensor(torch.stack([ar, ar]), torch.ones(n, dtype=L.dtype, device=L.device), (n, n),
                                  check_invariants=False)
    return (eye + float(lam) * L.detach()).coalesce()


class SparseSolver:
    """Solves ``M x = b`` for a fixed sparse symmetric positive-definite ``M`` (``(V, V)`` torch sparse).

    Args:
        M: the matrix (torch sparse COO).
        method: ``"lu"`` (SciPy SuperLU factorization on CPU, reused; exact), ``"cg"`` (Jacobi-
            preconditioned conjugate gradients in torch; any device) or ``"auto"`` (lu on CPU,
            cg elsewhere).
        tol: relative residual tolerance of CG; iters: its iteration cap.
    """

    def __init__(self, M: torch.Tensor, method: str = "auto", tol: float | None = None, iters: int = 1000):
        _check_laplacian(M, "M")
        if method == "auto":
            method = "lu" if M.device.type == "cpu" else "cg"
        if method not in ("lu", "cg"):
            raise ValueError(f"method must be 'auto', 'lu' or 'cg', got {method!r}")
        self.method = method
        self.M = M.coalesce()
        self.n = M.shape[0]
        self.tol = tol
        self.iters = iters
        if method == "lu":
            import scipy.sparse as sp
            import scipy.sparse.linalg as spl

            idx = self.M.indices().cpu().numpy()
            val = self.M.values().detach().cpu().double().numpy()
            A = sp.csc_matrix((val, (idx[0], idx[1])), shape=(self.n, self.n))
            self._lu = spl.splu(A) if self.n else None
        else:
            d = torch.zeros(self.n, dtype=M.dtype, device=M.device)
            idx = self.M.indices()
            on = idx[0] == idx[1]
            d = d.index_add(0, idx[0][on], self.M.values()[on].detach())
            self._inv_diag = 1.0 / d

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``M^{-1} b`` for ``b (V,)`` or ``(V, k)`` (no autograd; see :func:`from_differential`)."""
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"b must be a torch.Tensor, got {describe(b)}")
        if not b.is_floating_point():
            raise TypeError(f"b must be a floating tensor (float32/float64), got {b.dtype}")
        if b.dim() not in (1, 2) or b.shape[0] != self.n:
            raise ValueError(f"b must have shape ({self.n},) or ({self.n}, k), got {tuple(b.shape)}")
        if not all_finite(b):
            raise ValueError("b contains non-finite values (NaN or inf)")
        squeeze = b.dim() == 1
        B = b[:, None] if squeeze else b
        if self.n == 0:
            return b.clone()
        if self.method == "lu":
            x = self._lu.solve(np.ascontiguousarray(B.detach().cpu().double().numpy()))
            X = torch.from_numpy(np.asarray(x).reshape(B.shape)).to(dtype=b.dtype, device=b.device)
        else:
            X = self._cg(B.detach())
        return X[:, 0] if squeeze else X

    def _cg(self, B: torch.Tensor) -> torch.Tensor:
        M = self.M.to(B.dtype)
        tol = self.tol if self.tol is not None else (1e-12 if B.dtype == torch.float64 else 1e-6)
        X = torch.zeros_like(B)
        R = B.clone()
        Z = self._inv_diag.to(B.dtype)[:, None] * R
        P = Z.clone()
        rz = (R * Z).sum(0)
        bnorm = B.norm(dim=0).clamp_min(torch.finfo(B.dtype).tiny)
        for _ in range(self.iters):
            AP = torch.sparse.mm(M, P)
            pap = (P * AP).sum(0)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(B.dtype).tiny), torch.zeros_like(rz))
            X = X + alpha * P
            R = R - alpha * AP
            if bool((R.norm(dim=0) <= tol * bnorm).all()):
                break
            Z = self._inv_diag.to(B.dtype)[:, None] * R
            rz_new = (R * Z).sum(0)
            beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(B.dtype).tiny), torch.zeros_like(rz))
            P = Z + beta * P
            rz = rz_new
        return X


class _Solve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, b, solver):
        ctx.solver = solver
        return solver.solve(b)

    @staticmethod
    def backward(ctx, g):
        return ctx.solver.solve(g.contiguous()), None  # M symmetric: M^{-T} g = M^{-1} g


def solve(solver: SparseSolver, b: torch.Tensor) -> torch.Tensor:
    """Differentiable ``M^{-1} b`` (gradient w.r.t. ``b`` is ``M^{-1} g``; ``M`` is treated as constant)."""
    if not isinstance(solver, SparseSolver):
        raise TypeError(f"solver must be a SparseSolver, got {describe(solver)}")
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor, got {describe(b)}")
    return _Solve.apply(b, solver)


_CACHE: dict[tuple, SparseSolver] = {}


def _cached_solver(L: torch.Tensor, lam: float, method: str) -> SparseSolver:
    key = (id(L), float(lam), method)
    s = _CACHE.get(key)
    if s is None:
        s = SparseSolver(system_matrix(L, lam), method)
        _CACHE[key] = s
        weakref.finalize(L, _CACHE.pop, key, None)
    return s


def to_differential(L: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """``u = (I + lam L) x`` for ``x (V, 3)`` and a sparse Laplacian ``L (V, V)`` (differentiable in ``x``)."""
    _check_laplacian(L)
    lam = as_float(lam, "lam", nonneg=True)
    check_points(x, "x", dim=x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() == 2 else 3)
    if L.shape[0] != x.shape[0]:
        raise ValueError(f"L is {tuple(L.shape)} but x has {x.shape[0]} rows")
    return x + float(lam) * torch.sparse.mm(L.detach().to(x.dtype), x)


def from_differential(L: torch.Tensor, u: torch.Tensor, lam: float, method: str = "auto") -> torch.Tensor:
    """``x = (I + lam L)^{-1} u`` with the solver cached per ``(L, lam, method)`` (differentiable in ``u``)."""
    _check_laplacian(L)
    lam = as_float(lam, "lam", nonneg=True)
    check_points(u, "u", dim=u.shape[-1] if isinstance(u, torch.Tensor) and u.dim() == 2 else 3)
    if L.shape[0] != u.shape[0]:
        raise ValueError(f"L is {tuple(L.shape)} but u has {u.shape[0]} rows")
    return solve(_cached_solver(L, lam, method), u)


class AdamUniform(torch.optim.Optimizer):
    """Adam with one second-moment scalar per parameter tensor (the maximum squared gradient
    entry), as used with the large-steps parameterization by Nicolet et al. 2021: every vertex
    gets the same step scale, so the smoothing of ``(I + lam L)^{-1}`` is not undone per entry.

    Args:
        params: parameters (e.g. ``[LargeSteps.u]``); lr: step size; betas, eps: as in Adam.
    """

    def __init__(self, params, lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8):
        lr = as_float(lr, "lr", positive=True)
        if params is None or isinstance(params, (str, torch.Tensor)):
            raise TypeError(f"params must be an iterable of tensors (e.g. [LargeSteps.u]), got {describe(params)}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m1"] = torch.zeros_like(p)
                    st["m2"] = torch.zeros((), dtype=p.dtype, device=p.device)
                st["t"] += 1
                t = st["t"]
                st["m1"].mul_(b1).add_(g, alpha=1 - b1)
                st["m2"].mul_(b2).add_((g * g).max() * (1 - b2))
                m1_hat = st["m1"] / (1 - b1 ** t)
                m2_hat = st["m2"] / (1 - b2 ** t)
                p.sub_(group["lr"] * m1_hat / (m2_hat.sqrt() + group["eps"]))
        return loss


class LargeSteps(torch.nn.Module):
    """Vertex positions reparameterized as ``u = (I + lam L) x`` (Nicolet et al. 2021).

    Args:
        verts: ``(V, 3)`` initial positions; faces: ``(F, 3)``.
        lam: smoothing weight (the paper uses 10-100; larger = smoother steps).
        laplacian: ``"uniform"`` (the paper's combinatorial Laplacian) or ``"cotangent"``
            (built once at the initial positions).
        method: solver, see :class:`SparseSolver`.

    Attributes:
        u: ``torch.nn.Parameter (V, 3)``: optimize this (``torch.optim.Adam`` or the paper's
            :class:`AdamUniform`).
        faces: the faces, for convenience.
    """

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, lam: float = 20.0, laplacian: str = "uniform",
                 method: str = "auto"):
        super().__init__()
        verts, faces = check_mesh(verts, faces)
        lam = as_float(lam, "lam", nonneg=True)
        if laplacian == "uniform":
            L = uniform_laplacian(faces, verts.shape[0], dtype=verts.dtype, device=verts.device)
        elif laplacian == "cotangent":
            L = cotangent_laplacian(verts.detach(), faces).detach()
        else:
            raise ValueError(f"laplacian must be 'uniform' or 'cotangent', got {laplacian!r}")
        self.lam = float(lam)
        self.L = L
        self.register_buffer("faces", faces)
        self.solver = SparseSolver(system_matrix(L, lam), method)
        self.u = torch.nn.Parameter(to_differential(L, verts.detach(), lam))

    def verts(self) -> torch.Tensor:
        """Current vertex positions ``(V, 3)``, differentiable w.r.t. :attr:`u`."""
        return solve(self.solver, self.u)

    def forward(self) -> torch.Tensor:
        return self.verts()

    def set_verts(self, verts: torch.Tensor) -> None:
        """Reset :attr:`u` so that :meth:`verts` returns ``verts`` (e.g. after remeshing positions)."""
        with torch.no_grad():
            self.u.copy_(to_differential(self.L, verts.to(self.u.dtype), self.lam))
