"""Implicit layers: solutions of equations and optimisation problems as differentiable functions.

A layer's forward pass runs any solver (no tape is kept); its backward pass uses the implicit
function theorem at the solution instead of differentiating the solver's iterations. For a root
``f(x*, theta) = 0`` and an incoming gradient ``g = dL/dx*``,

    (df/dx)^T lam = g,        dL/dtheta = -lam^T df/dtheta,

solved matrix-free: ``df/dx^T v`` and ``df/dtheta^T v`` are vector-Jacobian products of one
recorded evaluation of ``f`` at ``x*``, and the adjoint system is solved by GMRES (general),
conjugate gradients (symmetric positive definite: minimisation) or a dense factorisation of the
Jacobian assembled from VJPs (small problems). Memory is that of one ``f`` evaluation, whatever
the number of solver iterations.

* :func:`root_solve` -- ``x*`` with ``f(x*, *params) = 0`` (default forward: damped Newton);
* :func:`fixed_point` -- ``x* = g(x*, *params)`` (forward: fixed-point iteration, optionally
  Anderson-accelerated);
* :func:`minimize` -- ``x* = argmin_x fun(x, *params)`` (forward: Newton with a dense Hessian,
  or L-BFGS; backward: CG on Hessian-vector products);
* :func:`qp_solve` -- a quadratic programme with equality and inequality constraints (forward:
  primal-dual interior point; backward: the same IFT on its KKT conditions, as in OptNet);
* :func:`gmres`, :func:`cg` -- the matrix-free Krylov solvers used by the adjoints.

Gradient contract: exact for the solution map where ``df/dx`` is invertible (the adjoint solve is
converged to ``backward_tol``); it ignores how well the forward solver converged, so a loose
forward tolerance gives the gradient at the point it stopped as if it were a solution. Where
``df/dx`` is singular (a bifurcation, a QP with a weakly active constraint) the adjoint solve
returns its least-squares iterate and the gradient is not meaningful. Only tensors passed in
``params`` receive gradients (tensors captured by ``f``'s closure do not: pass them).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._validate import as_float, as_int, check_float, check_same_dtype, describe

__all__ = ["root_solve", "fixed_point", "minimize", "qp_solve", "gmres", "cg"]


# --------------------------------------------------------------------------------------------
# Krylov solvers on flat vectors
# --------------------------------------------------------------------------------------------

def _check_krylov(A, b, x0, tol, maxiter) -> float:
    if not callable(A):
        raise TypeError(f"A must be a callable v -> A v, got {describe(A)}")
    check_float(b, "b", coerce=False)
    if x0 is not None:
        check_float(x0, "x0", shape=tuple(b.shape), coerce=False)
    as_int(maxiter, "maxiter", minimum=1, allow_none=True)
    return as_float(tol, "tol", positive=True)


def cg(A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
       tol: float = 1e-10, maxiter: int | None = None) -> torch.Tensor:
    """Conjugate gradients for ``A x = b`` with ``A`` symmetric positive definite, given as a
    function ``A(v) -> A v`` on tensors shaped like ``b``. Stops at ``|r| <= tol |b|``."""
    tol = _check_krylov(A, b, x0, tol, maxiter)
    maxiter = maxiter or 10 * b.numel()
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - A(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = (r * r).sum()
    bnorm = b.norm()
    if float(bnorm) == 0.0:
        return torch.zeros_like(b)
    for _ in range(maxiter):
        if float(rr.sqrt()) <= tol * float(bnorm):
            break
        Ap = A(p)
        pAp = (p * Ap).sum()
        if float(pAp) <= 0:  # not positive definite along p: stop with the current iterate
            break
        alpha = rr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def gmres(A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
          tol: float = 1e-10, restart: int = 50, maxiter: int | None = None) -> torch.Tensor:
    """Restarted GMRES for ``A x = b`` with ``A`` given as ``A(v) -> A v`` (any square operator).
    Stops at ``|b - A x| <= tol |b|`` or after ``maxiter`` operator applications."""
    tol = _check_krylov(A, b, x0, tol, maxiter)
    restart = as_int(restart, "restart", minimum=1)
    shape = b.shape
    bf = b.reshape(-1)
    n = bf.numel()
    maxiter = maxiter or 10 * n + restart
    Af = lambda v: A(v.reshape(shape)).reshape(-1)  # noqa: E731
    x = torch.zeros_like(bf) if x0 is None else x0.reshape(-1).clone()
    bnorm = float(bf.norm())
    if bnorm == 0.0:
        return torch.zeros_like(b)
    used = 0
    while used < maxiter:
        r = bf - Af(x) if used or x0 is not None else bf.clone()
        beta = float(r.norm())
        if beta <= tol * bnorm:
            break
        m = min(restart, n, maxiter - used)
        V = [r / beta]
        H = torch.zeros(m + 1, m, dtype=b.dtype, device=b.device)
        k_done = 0
        for k in range(m):
            w = Af(V[k])
            used += 1
            for i in range(k + 1):  # modified Gram-Schmidt
                H[i, k] = (w * V[i]).sum()
                w = w - H[i, k] * V[i]
            H[k + 1, k] = w.norm()
            k_done = k + 1
            e1 = torch.zeros(k + 2, dtype=b.dtype, device=b.device)
            e1[0] = beta
            y = torch.linalg.lstsq(H[:k + 2, :k + 1], e1[:, None]).solution[:, 0]
            res = float((H[:k + 2, :k + 1] @ y - e1).norm())
            if res <= tol * bnorm or float(H[k + 1, k]) <= 1e-300:
                break
            V.append(w / H[k + 1, k])
        x = x + torch.stack(V[:k_done], 1) @ y
        if res <= tol * bnorm:
            break
    return x.reshape(shape)


# --------------------------------------------------------------------------------------------
# the IFT backward, shared by every layer
# --------------------------------------------------------------------------------------------

_BACKWARDS = ("gmres", "cg", "direct")


def _adjoint_solve(vjp_x: Callable, grad: torch.Tensor, method: str, tol: float, maxiter: int | None, n: int):
    """Solve ``J^T lam = grad`` where ``vjp_x(v) = J^T v``."""
    if method == "cg":
        return cg(vjp_x, grad, tol=tol, maxiter=maxiter)
    if method == "gmres":
        return gmres(vjp_x, grad, tol=tol, maxiter=maxiter)
    # direct: assemble J^T column by column from VJPs of unit vectors (n small)
    eye = torch.eye(n, dtype=grad.dtype, device=grad.device)
    JT = torch.stack([vjp_x(eye[i].reshape(grad.shape)).reshape(-1) for i in range(n)], 0).T  # JT[:, i] = J^T e_i
    return torch.linalg.solve(JT, grad.reshape(-1)).reshape(grad.shape)


class _ImplicitRoot(torch.autograd.Function):
    """Identity on the solution x* in forward; IFT adjoint of ``f(x*, params) = 0`` in backward."""

    @staticmethod
    def forward(ctx, f, opts, x_star, *params):
        ctx.f, ctx.opts = f, opts
        ctx.save_for_backward(x_star, *params)
        return x_star.clone()

    @staticmethod
    def backward(ctx, grad):
        x_star, *params = ctx.saved_tensors
        f, (method, tol, maxiter) = ctx.f, ctx.opts
        with torch.enable_grad():
            x = x_star.detach().requires_grad_(True)
            ps = [p.detach().requires_grad_(p.requires_grad) for p in params]
            fx = f(x, *ps)

            def vjp_x(v):
                return torch.autograd.grad(fx, x, v, retain_graph=True)[0]

            lam = _adjoint_solve(vjp_x, grad.detach(), method, tol, maxiter, x.numel())
            diff = [p for p in ps if p.requires_grad]
            gp = torch.autograd.grad(fx, diff, -lam, allow_unused=True) if diff else ()
        it = iter(gp)
        out = [None if not p.requires_grad else next(it) for p in ps]
        return (None, None, None, *out)


def _check_common(x0, params, backward, tol, maxiter, fn, fn_name: str):
    if not callable(fn):
        raise TypeError(f"{fn_name} must be a callable, got {describe(fn)}")
    check_float(x0, "x0", coerce=False)
    tol = as_float(tol, "tol", positive=True)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a tensor (pass every differentiable input), got {type(p).__name__}")
    if backward not in _BACKWARDS:
        raise ValueError(f"backward must be one of {_BACKWARDS}, got {backward!r}")
    as_int(maxiter, "maxiter", minimum=1)


def _attach(f, x_star, params, backward, backward_tol, backward_maxiter):
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _ImplicitRoot.apply(f, (backward, backward_tol, backward_maxiter), x_star, *params)
    return x_star


def _dense(op, fn, x):
    """A dense Jacobian/Hessian by vectorised VJPs (vmap), falling back to a loop of VJPs for
    functions vmap cannot batch (e.g. ones that call Warp kernels)."""
    try:
        return op(fn, x, vectorize=True)
    except RuntimeError:
        return op(fn, x, vectorize=False)


def _newton(f, x0, params, tol, maxiter):
    """Damped Newton with a dense Jacobian (from VJPs) and backtracking on |f|."""
    x = x0.detach().clone()
    n = x.numel()
    shape = x.shape
    ps = [p.detach() for p in params]
    for _ in range(maxiter):
        fx = f(x, *ps)
        fn = float(fx.norm())
        if fn <= tol:
            break
        J = _dense(torch.autograd.functional.jacobian, lambda z: f(z.reshape(shape), *ps).reshape(-1), x.reshape(-1))
        dx = torch.linalg.lstsq(J.reshape(n, n), -fx.reshape(-1, 1)).solution.reshape(shape)
        t = 1.0
        for _ in range(30):
            xn = x + t * dx
            if float(f(xn, *ps).norm()) < (1 - 1e-4 * t) * fn:
                break
            t *= 0.5
        x = xn
    return x


# --------------------------------------------------------------------------------------------
# public layers
# --------------------------------------------------------------------------------------------

def root_solve(f: Callable[..., torch.Tensor], x0: torch.Tensor, *params: torch.Tensor,
               solve: Callable | None = None, tol: float = 1e-10, maxiter: int = 50, backward: str = "gmres",
               backward_tol: float = 1e-10, backward_maxiter: int | None = None) -> torch.Tensor:
    """The root ``x*`` of ``f(x, *params) = 0`` near ``x0``, differentiable in ``params``.

    Args:
        f: residual ``f(x, *params) -> tensor`` shaped like ``x`` (any shape), differentiable.
        x0: initial guess.
        params: the tensors ``f`` depends on that should receive gradients.
        solve: forward solver ``solve(f_of_x, x0) -> x*`` (``f_of_x(x)`` closes over detached
            params); default damped Newton with a dense Jacobian (small problems).
        tol, maxiter: forward tolerance on ``|f|`` and Newton iterations.
        backward: ``"gmres"`` (default), ``"cg"`` (only if df/dx is symmetric positive
            definite) or ``"direct"`` (dense, n VJPs).
        backward_tol, backward_maxiter: adjoint solve tolerance (relative residual) / budget.

    Returns:
        ``x*`` (shape of ``x0``); gradient by the implicit function theorem (module doc).
    """
    _check_common(x0, params, backward, tol, maxiter, f, "f")
    with torch.no_grad():
        if solve is None:
            x_star = _newton(f, x0, params, tol, maxiter)
        else:
            ps = [p.detach() for p in params]
            x_star = solve(lambda x: f(x, *ps), x0.detach())
    return _attach(f, x_star, params, backward, backward_tol, backward_maxiter)


def fixed_point(g: Callable[..., torch.Tensor], x0: torch.Tensor, *params: torch.Tensor, tol: float = 1e-10,
                maxiter: int = 1000, anderson: int = 0, backward: str = "gmres", backward_tol: float = 1e-10,
                backward_maxiter: int | None = None) -> torch.Tensor:
    """The fixed point ``x* = g(x*, *params)``, by iteration from ``x0`` (Anderson acceleration
    with ``anderson`` > 0 past iterates); backward: IFT on ``f(x) = g(x) - x``.

    Stops when ``|g(x) - x| <= tol (1 + |x|)``. ``g`` should be a contraction near ``x*``.
    """
    _check_common(x0, params, backward, tol, maxiter, g, "g")
    if not isinstance(anderson, int) or anderson < 0:
        raise ValueError(f"anderson must be an int >= 0, got {anderson!r}")
    with torch.no_grad():
        ps = [p.detach() for p in params]
        x = x0.detach().clone()
        X, G = [], []
        for _ in range(maxiter):
            gx = g(x, *ps)
            r = gx - x
            if float(r.norm()) <= tol * (1 + float(x.norm())):
                x = gx
                break
            if anderson:
                X.append(x.reshape(-1))
                G.append(gx.reshape(-1))
                X, G = X[-(anderson + 1):], G[-(anderson + 1):]
                if len(X) > 1:
                    R = torch.stack([gg - xx for gg, xx in zip(G, X)], 1)  # residual history (n, m)
                    dR = R[:, 1:] - R[:, :-1]
                    gamma = torch.linalg.lstsq(dR, R[:, -1:]).solution[:, 0]
                    Gm = torch.stack(G, 1)
                    x = (Gm[:, -1] - (Gm[:, 1:] - Gm[:, :-1]) @ gamma).reshape(x.shape)
                    continue
            x = gx
    return _attach(lambda z, *p: g(z, *p) - z, x, params, backward, backward_tol, backward_maxiter)


def minimize(fun: Callable[..., torch.Tensor], x0: torch.Tensor, *params: torch.Tensor, method: str = "newton",
             tol: float = 1e-10, maxiter: int = 100, backward: str = "cg", backward_tol: float = 1e-10,
             backward_maxiter: int | None = None) -> torch.Tensor:
    """``x* = argmin_x fun(x, *params)`` (a local minimum near ``x0``), differentiable in ``params``.

    method: ``"newton"`` (dense Hessian, backtracking; small problems) or ``"lbfgs"``
    (torch.optim.LBFGS, strong Wolfe). Stops when ``|grad_x fun| <= tol``. Backward: the IFT on
    ``grad_x fun(x*, params) = 0``: CG on Hessian-vector products (the Hessian is symmetric
    positive definite at a strict minimum), then a mixed second-derivative VJP.
    """
    _check_common(x0, params, backward, tol, maxiter, fun, "fun")
    if method not in ("newton", "lbfgs"):
        raise ValueError(f"method must be 'newton' or 'lbfgs', got {method!r}")

    def grad_f(x, *p):
        with torch.enable_grad():
            xx = x if x.requires_grad else x.detach().requires_grad_(True)
            return torch.autograd.grad(fun(xx, *p), xx, create_graph=torch.is_grad_enabled() and (x.requires_grad or any(q.requires_grad for q in p)))[0]

    with torch.no_grad():
        ps = [p.detach() for p in params]
        if method == "newton":
            x = x0.detach().clone()
            n, shape = x.numel(), x.shape
            for _ in range(maxiter):
                gx = grad_f(x, *ps)
                if float(gx.norm()) <= tol:
                    break
                with torch.enable_grad():
                    H = _dense(torch.autograd.functional.hessian, lambda z: fun(z.reshape(shape), *ps), x.reshape(-1))
                H = 0.5 * (H + H.T).reshape(n, n)
                try:
                    L = torch.linalg.cholesky(H)
                    dx = torch.cholesky_solve(-gx.reshape(-1, 1), L).reshape(shape)
                except RuntimeError:  # not convex here: fall back to a gradient step
                    dx = -gx
                f0, t = float(fun(x, *ps)), 1.0
                slope = float((gx * dx).sum())
                # near the minimum f's decrease drowns in roundoff: accept a full step that
                # shrinks the gradient, else backtrack on the Armijo condition
                if float(grad_f(x + dx, *ps).norm()) > 0.5 * float(gx.norm()):
                    for _ in range(40):
                        if float(fun(x + t * dx, *ps)) <= f0 + 1e-4 * t * slope:
                            break
                        t *= 0.5
                x = x + t * dx
        else:
            x = x0.detach().clone().requires_grad_(True)
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=maxiter, tolerance_grad=tol, tolerance_change=1e-16,
                                    history_size=20, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                with torch.enable_grad():
                    val = fun(x, *ps)
                    val.backward()
                return val

            with torch.enable_grad():
                opt.step(closure)
            x = x.detach()
    return _attach(grad_f, x, params, backward, backward_tol, backward_maxiter)


# --------------------------------------------------------------------------------------------
# quadratic programmes
# --------------------------------------------------------------------------------------------

def _kkt_residual(z, Q, p, G, h, A, b, n, m, k):
    """Residual of the KKT conditions in z = (x, lam, nu): stationarity, complementarity
    lam_i (G x - h)_i = 0 (the form OptNet differentiates), primal equality."""
    x, lam, nu = z[:n], z[n:n + m], z[n + m:]
    r = [Q @ x + p]
    if m:
        r[0] = r[0] + G.T @ lam
        r.append(lam * (G @ x - h))
    if k:
        r[0] = r[0] + A.T @ nu
        r.append(A @ x - b)
    return torch.cat(r)


def _interior_point(Q, p, G, h, A, b, tol, maxiter):
    """Primal-dual interior point (Mehrotra predictor-corrector) for a convex QP (float64)."""
    n, m, k = p.shape[0], h.shape[0], b.shape[0]
    dt = p.dtype
    x = torch.zeros(n, dtype=dt, device=p.device)
    s = torch.ones(m, dtype=dt, device=p.device)  # slacks: G x + s = h
    lam = torch.ones(m, dtype=dt, device=p.device)
    nu = torch.zeros(k, dtype=dt, device=p.device)
    for _ in range(maxiter):
        rd = Q @ x + p + G.T @ lam + A.T @ nu
        rp = G @ x + s - h
        re = A @ x - b
        mu = float((s * lam).sum() / max(m, 1))
        if max(float(rd.norm()), float(rp.norm()) if m else 0.0, float(re.norm()) if k else 0.0) < tol and mu < tol:
            break

        def solve_dir(rs):
            # eliminate ds, dlam: (Q + G^T D G) dx + A^T dnu = -rd - G^T (lam/s * (-rp) ... )
            Dg = lam / s
            KK = torch.zeros(n + k, n + k, dtype=dt, device=p.device)
            KK[:n, :n] = Q + G.T @ (Dg[:, None] * G)
            if k:
                KK[:n, n:] = A.T
                KK[n:, :n] = A
            rhs = torch.cat([-rd + G.T @ ((rs - lam * rp) / s), -re])
            sol = torch.linalg.solve(KK + 1e-14 * torch.eye(n + k, dtype=dt, device=p.device), rhs)
            dx, dnu = sol[:n], sol[n:]
            ds = -rp - G @ dx
            dlam = (-rs - lam * ds) / s
            return dx, ds, dlam, dnu

        def step_len(v, dv):
            neg = dv < 0
            return min(1.0, float((-v[neg] / dv[neg]).min())) if bool(neg.any()) else 1.0

        # predictor (affine scaling), then a centred corrector
        dx, ds, dlam, dnu = solve_dir(s * lam)
        a = min(step_len(s, ds), step_len(lam, dlam))
        mu_aff = float(((s + a * ds) * (lam + a * dlam)).sum() / max(m, 1))
        sigma = (mu_aff / mu) ** 3 if mu > 0 else 0.0
        dx, ds, dlam, dnu = solve_dir(s * lam + ds * dlam - sigma * mu)
        a = 0.99 * min(step_len(s, ds), step_len(lam, dlam))
        x, s, lam, nu = x + a * dx, s + a * ds, lam + a * dlam, nu + a * dnu
    return torch.cat([x, lam, nu])


def qp_solve(Q: torch.Tensor, p: torch.Tensor, G: torch.Tensor | None = None, h: torch.Tensor | None = None,
             A: torch.Tensor | None = None, b: torch.Tensor | None = None, tol: float = 1e-12, maxiter: int = 100,
             backward: str = "direct", return_duals: bool = False):
    """Differentiable convex quadratic programme::

        x* = argmin_x  1/2 x^T Q x + p^T x   s.t.  G x <= h,  A x = b

    Q: (n, n) symmetric positive (semi)definite; p: (n,); G: (m, n), h: (m,); A: (k, n), b: (k,)
    (constraints optional). Forward: primal-dual interior point in the inputs' dtype (use
    float64). Backward: the IFT on the KKT conditions in (x, lam, nu) (OptNet's differentiation):
    exact where strict complementarity holds (each active constraint has lam_i > 0); at a weakly
    active constraint the KKT Jacobian is singular and the gradient undefined.
    Gradients reach Q, p, G, h, A and b. Returns x* (n,), or (x*, lam, nu) with ``return_duals``.
    """
    check_float(Q, "Q", coerce=False)
    if Q.dim() != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be a square (n, n) tensor, got {tuple(Q.shape)}")
    n = Q.shape[0]
    check_float(p, "p", shape=(n,), coerce=False)
    for name, t in (("G", G), ("h", h), ("A", A), ("b", b)):
        if t is not None:
            check_float(t, name, coerce=False)
    check_same_dtype(("Q", Q), ("p", p), ("G", G), ("h", h), ("A", A), ("b", b))
    dt, dev = Q.dtype, Q.device
    if (G is None) != (h is None):
        raise ValueError("G and h must be given together")
    if (A is None) != (b is None):
        raise ValueError("A and b must be given together")
    G = torch.zeros(0, n, dtype=dt, device=dev) if G is None else G
    h = torch.zeros(0, dtype=dt, device=dev) if h is None else h
    A = torch.zeros(0, n, dtype=dt, device=dev) if A is None else A
    b = torch.zeros(0, dtype=dt, device=dev) if b is None else b
    m, k = h.shape[0], b.shape[0]
    if G.shape != (m, n):
        raise ValueError(f"G must have shape ({m}, {n}) to match h, got {tuple(G.shape)}")
    if A.shape != (k, n):
        raise ValueError(f"A must have shape ({k}, {n}) to match b, got {tuple(A.shape)}")
    params = (Q, p, G, h, A, b)
    with torch.no_grad():
        z = _interior_point(*[t.detach() for t in params], tol, maxiter)
    f = lambda zz, *ps: _kkt_residual(zz, *ps, n, m, k)  # noqa: E731
    z = _attach(f, z, params, backward, 1e-12, None)
    x, lam, nu = z[:n], z[n:n + m], z[n + m:]
    return (x, lam, nu) if return_duals else x
