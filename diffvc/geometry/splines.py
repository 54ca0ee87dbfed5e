"""Parametric curves and surfaces: Bézier, B-spline and NURBS curves and tensor-product surfaces.

Everything is evaluated from the Cox--de Boor recursion in plain torch, so values, parameter
derivatives and normals are differentiable in the control points and the weights (the knots are
constants: no gradient flows to them). Conventions (as in Piegl & Tiller, *The NURBS Book*):

* a curve of degree ``p`` with ``n`` control points has ``n + p + 1`` non-decreasing knots; it is
  defined on ``[knots[p], knots[n]]``; spans are half-open ``[u_i, u_{i+1})`` except the last,
  which is closed, so the end point is the left limit;
* ``weights = None`` is a (polynomial) B-spline; with weights the curve is rational:
  ``C(t) = sum_i N_i(t) w_i P_i / sum_i N_i(t) w_i`` (weights > 0);
* a Bézier curve of degree ``p`` is the B-spline with knots ``[0]*(p+1) + [1]*(p+1)``.

Derivatives at a knot of multiplicity ``m`` are continuous up to order ``p - m``; above that the
returned value is the right-sided one (left-sided at the end of the domain).
"""

from __future__ import annotations

import math

import torch

from .._validate import as_float, as_int, check_float, check_same_dtype


def clamped_knots(n_ctrl: int, degree: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Uniform clamped (open) knot vector on ``[0, 1]``: ``degree + 1`` zeros, equally spaced
    interior knots, ``degree + 1`` ones; ``(n_ctrl + degree + 1,)``."""
    n_ctrl, degree = as_int(n_ctrl, "n_ctrl", minimum=1), as_int(degree, "degree", minimum=0)
    if degree < 0 or n_ctrl < degree + 1:
        raise ValueError(f"n_ctrl must be >= degree + 1 >= 1, got n_ctrl={n_ctrl}, degree={degree}")
    inner = torch.linspace(0, 1, n_ctrl - degree + 1, dtype=dtype, device=device)[1:-1]
    return torch.cat([torch.zeros(degree + 1, dtype=dtype, device=device), inner,
                      torch.ones(degree + 1, dtype=dtype, device=device)])


def _params(t, name: str, like: torch.Tensor) -> torch.Tensor:
    """Curve/surface parameters: a finite floating ``(T,)`` tensor, cast to ``like``'s dtype."""
    return check_float(t, name, shape=("T",), coerce=False).to(like.dtype)


def _check_knots(knots: torch.Tensor, n_ctrl: int, degree: int, name: str = "knots") -> None:
    check_float(knots, name, coerce=False)
    if knots.dim() != 1 or knots.shape[0] != n_ctrl + degree + 1:
        raise ValueError(f"{name} must have n_ctrl + degree + 1 = {n_ctrl + degree + 1} entries, got {tuple(knots.shape)}")
    if bool((knots[1:] < knots[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing")
    if not bool(knots[n_ctrl] > knots[degree]):
        raise ValueError(f"{name}: empty domain [knots[degree], knots[n_ctrl]]")


def bspline_basis(t: torch.Tensor, knots: torch.Tensor, degree: int, derivatives: int = 0) -> list[torch.Tensor]:
    """B-spline basis functions and their parameter derivatives.

    Args:
        t: ``(T,)`` parameters in ``[knots[degree], knots[-degree-1]]`` (clamped into it).
        knots: ``(n + degree + 1,)`` non-decreasing knots; degree: ``p >= 0``.
        derivatives: highest derivative order ``k`` to return.

    Returns:
        ``[N, dN/dt, ..., d^k N/dt^k]``, each ``(T, n)``. (Derivatives above ``p`` are zero.)
    """
    p = as_int(degree, "degree", minimum=0)
    as_int(derivatives, "derivatives", minimum=0)
    t = check_float(t, "t", shape=("T",), coerce=False)
    check_float(knots, "knots", shape=("K",), coerce=False)
    _check_knots(knots, knots.shape[0] - p - 1, p)
    n = knots.shape[0] - p - 1
    U = knots.to(t.dtype)
    t = t.clamp(U[p], U[n])
    # degree-0 basis: one-hot of the span index (last span closed)
    span = torch.searchsorted(U.detach().contiguous(), t.detach().contiguous(), right=True) - 1
    span = span.clamp(p, n - 1)
    Ns = [torch.nn.functional.one_hot(span, knots.shape[0] - 1).to(t.dtype)]
    for q in range(1, p + 1):
        m = knots.shape[0] - q - 1
        i = torch.arange(m, device=t.device)
        d1 = U[i + q] - U[i]
        d2 = U[i + q + 1] - U[i + 1]
        a = torch.where(d1 > 0, 1.0 / torch.where(d1 > 0, d1, torch.ones_like(d1)), torch.zeros_like(d1))
        b = torch.where(d2 > 0, 1.0 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.zeros_like(d2))
        prev = Ns[-1]
        Ns.append((t[:, None] - U[i]) * a * prev[:, :m] + (U[i + q + 1] - t[:, None]) * b * prev[:, 1:m + 1])

    def deriv(k: int, q: int) -> torch.Tensor:
        if k == 0:
            return Ns[q]
        m = knots.shape[0] - q - 1
        if q == 0:
            return torch.zeros_like(Ns[0][:, :m])
        i = torch.arange(m, device=t.device)
        d1 = U[i + q] - U[i]
        d2 = U[i + q + 1] - U[i + 1]
        a = torch.where(d1 > 0, 1.0 / torch.where(d1 > 0, d1, torch.ones_like(d1)), torch.zeros_like(d1))
        b = torch.where(d2 > 0, 1.0 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.zeros_like(d2))
        lower = deriv(k - 1, q - 1)
        return q * (a * lower[:, :m] - b * lower[:, 1:m + 1])

    return [deriv(k, p) for k in range(derivatives + 1)]


def _check_ctrl(ctrl: torch.Tensor, weights, n_dims: int, name: str = "ctrl"):
    check_float(ctrl, name, coerce=False)
    if weights is not None:
        check_float(weights, "weights", coerce=False)
    if ctrl.dim() != n_dims + 1:
        raise ValueError(f"{name} must be a float tensor with {n_dims} control-point axes and a coordinate axis, "
                         f"got {tuple(getattr(ctrl, 'shape', ()))}")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.shape != ctrl.shape[:-1]:
            raise ValueError(f"weights must have shape {tuple(ctrl.shape[:-1])}, got {tuple(getattr(weights, 'shape', ()))}")
        if bool((weights.detach() <= 0).any()):
            raise ValueError("weights must be > 0")


def bspline_curve(ctrl: torch.Tensor, t: torch.Tensor, degree: int = 3, knots: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None, derivatives: int = 0):
    """Evaluate a B-spline / NURBS curve and its parameter derivatives.

    Args:
        ctrl: ``(n, D)`` control points; t: ``(T,)`` parameters; degree: ``p``.
        knots: ``(n + p + 1,)`` (default: :func:`clamped_knots`, domain ``[0, 1]``).
        weights: ``(n,)`` positive weights (NURBS) or ``None``.
        derivatives: 0 returns ``C (T, D)``; ``k >= 1`` returns ``[C, C', ..., C^(k)]`` (k <= 2
            for rational curves).
    """
    _check_ctrl(ctrl, weights, 1)
    degree, derivatives = as_int(degree, "degree", minimum=0), as_int(derivatives, "derivatives", minimum=0)
    t = _params(t, "t", ctrl)
    n = ctrl.shape[0]
    if n < degree + 1:
        raise ValueError(f"ctrl: need at least degree + 1 = {degree + 1} control points, got {n}")
    knots = clamped_knots(n, degree, ctrl.dtype, ctrl.device) if knots is None else knots.to(ctrl.dtype)
    _check_knots(knots, n, degree)
    if weights is not None and derivatives > 2:
        raise ValueError(f"derivatives must be <= 2 for rational curves, got {derivatives}")
    Ns = bspline_basis(t.to(ctrl.dtype), knots, degree, derivatives)
    if weights is None:
        out = [N @ ctrl for N in Ns]
    else:
        A = [N @ (weights[:, None] * ctrl) for N in Ns]
        W = [(N @ weights)[:, None] for N in Ns]
        C = A[0] / W[0]
        out = [C]
        if derivatives >= 1:
            C1 = (A[1] - W[1] * C) / W[0]
            out.append(C1)
        if derivatives >= 2:
            out.append((A[2] - 2 * W[1] * C1 - W[2] * C) / W[0])
    return out[0] if derivatives == 0 else out


def bernstein(degree: int, t: torch.Tensor) -> torch.Tensor:
    """Bernstein polynomials ``B_{i,p}(t) = C(p, i) t^i (1 - t)^(p - i)``: ``(T, p + 1)``."""
    i = torch.arange(degree + 1, device=t.device, dtype=t.dtype)
    binom = torch.tensor([math.comb(degree, k) for k in range(degree + 1)], dtype=t.dtype, device=t.device)
    return binom * t[:, None] ** i * (1 - t[:, None]) ** (degree - i)


def bezier_curve(ctrl: torch.Tensor, t: torch.Tensor, weights: torch.Tensor | None = None, derivatives: int = 0):
    """Bézier (rational if ``weights``) curve of degree ``n - 1`` from ``ctrl (n, D)`` at ``t (T,)`` in
    [0, 1]; same returns as :func:`bspline_curve`."""
    _check_ctrl(ctrl, weights, 1)
    p = ctrl.shape[0] - 1
    knots = torch.cat([torch.zeros(p + 1), torch.ones(p + 1)]).to(ctrl.dtype).to(ctrl.device)
    return bspline_curve(ctrl, t, p, knots, weights, derivatives)


def bspline_surface(ctrl: torch.Tensor, u: torch.Tensor, v: torch.Tensor, degree=(3, 3), knots=(None, None),
                    weights: torch.Tensor | None = None, derivatives: bool = False):
    """Tensor-product B-spline / NURBS surface on the parameter grid ``u x v``.

    Args:
        ctrl: ``(nu, nv, D)`` control net; u: ``(U,)``, v: ``(V,)`` parameters.
        degree: ``(p, q)``; knots: pair of knot vectors or ``None`` (clamped uniform on [0, 1]).
        weights: ``(nu, nv)`` positive or ``None``.
        derivatives: also return the partial derivatives ``S_u``, ``S_v``.

    Returns:
        ``S (U, V, D)``, or ``(S, S_u, S_v)`` with ``derivatives=True``.
    """
    _check_ctrl(ctrl, weights, 2)
    u, v = _params(u, "u", ctrl), _params(v, "v", ctrl)
    p, q = (int(degree), int(degree)) if isinstance(degree, int) else (int(degree[0]), int(degree[1]))
    nu, nv = ctrl.shape[:2]
    if nu < p + 1 or nv < q + 1:
        raise ValueError(f"ctrl: a ({p}, {q}) surface needs at least ({p + 1}, {q + 1}) control points, got ({nu}, {nv})")
    ku = clamped_knots(nu, p, ctrl.dtype, ctrl.device) if knots[0] is None else knots[0].to(ctrl.dtype)
    kv = clamped_knots(nv, q, ctrl.dtype, ctrl.device) if knots[1] is None else knots[1].to(ctrl.dtype)
    _check_knots(ku, nu, p, "knots[0]")
    _check_knots(kv, nv, q, "knots[1]")
    k = 1 if derivatives else 0
    Nu = bspline_basis(u.to(ctrl.dtype), ku, p, k)
    Nv = bspline_basis(v.to(ctrl.dtype), kv, q, k)
    w = torch.ones(ctrl.shape[:2], dtype=ctrl.dtype, device=ctrl.device) if weights is None else weights
    Pw = torch.cat([w[..., None] * ctrl, w[..., None]], -1)  # homogeneous (nu, nv, D + 1)

    def ev(a, b):
        H = torch.einsum("ui,ijd,vj->uvd", a, Pw, b)
        return H[..., :-1], H[..., -1:]

    A, W = ev(Nu[0], Nv[0])
    S = A / W
    if not derivatives:
        return S
    Au, Wu = ev(Nu[1], Nv[0])
    Av, Wv = ev(Nu[0], Nv[1])
    return S, (Au - Wu * S) / W, (Av - Wv * S) / W


def surface_normals(Su: torch.Tensor, Sv: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Unit normals ``(S_u x S_v) / |S_u x S_v|`` (``(..., 3)``); where the surface is degenerate
    (``|S_u x S_v| = 0``, e.g. a sphere's poles) the result is 0 with a zero gradient."""
    check_float(Su, "Su", shape=(..., 3), coerce=False)
    check_float(Sv, "Sv", shape=(..., 3), coerce=False)
    check_same_dtype(("Su", Su), ("Sv", Sv))
    if Su.shape != Sv.shape:
        raise ValueError(f"Su {tuple(Su.shape)} and Sv {tuple(Sv.shape)} must have the same shape")
    n = torch.linalg.cross(Su, Sv, dim=-1)
    nn = (n * n).sum(-1, keepdim=True)
    ok = nn > eps
    return torch.where(ok, n * torch.rsqrt(torch.where(ok, nn, torch.ones_like(nn))), torch.zeros_like(n))


def grid_faces(U: int, V: int, device=None) -> torch.Tensor:
    """Triangles ``(2 (U-1)(V-1), 3)`` of a ``U x V`` vertex grid (vertex ``i V + j``), oriented
    so that their normals point along ``S_u x S_v``."""
    i, j = torch.meshgrid(torch.arange(U - 1, device=device), torch.arange(V - 1, device=device), indexing="ij")
    a = (i * V + j).reshape(-1)
    b, c, d = a + V, a + V + 1, a + 1
    return torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])


def tessellate_surface(ctrl: torch.Tensor, resolution=(32, 32), degree=(3, 3), knots=(None, None),
                       weights: torch.Tensor | None = None):
    """Sample a B-spline / NURBS surface on a uniform parameter grid over its domain and return a
    triangle mesh ``(verts (U V, D), faces (2 (U-1)(V-1), 3))`` for the renderers; ``verts``
    are differentiable in ``ctrl`` and ``weights``. Closed surfaces keep their seam duplicated."""
    _check_ctrl(ctrl, weights, 2)
    p, q = (degree, degree) if isinstance(degree, int) else degree
    nu, nv = ctrl.shape[:2]
    ku = clamped_knots(nu, p, ctrl.dtype, ctrl.device) if knots[0] is None else knots[0]
    kv = clamped_knots(nv, q, ctrl.dtype, ctrl.device) if knots[1] is None else knots[1]
    U, V = int(resolution[0]), int(resolution[1])
    if U < 2 or V < 2:
        raise ValueError(f"resolution must be >= (2, 2), got {resolution}")
    u = torch.linspace(float(ku[p]), float(ku[nu]), U, dtype=ctrl.dtype, device=ctrl.device)
    v = torch.linspace(float(kv[q]), float(kv[nv]), V, dtype=ctrl.dtype, device=ctrl.device)
    S = bspline_surface(ctrl, u, v, (p, q), (ku, kv), weights)
    return S.reshape(U * V, -1), grid_faces(U, V, ctrl.device)


def insert_knot(ctrl: torch.Tensor, knots: torch.Tensor, degree: int, t: float, weights: torch.Tensor | None = None):
    """Boehm's knot insertion: the same curve with the knot ``t`` added once.

    Returns ``(ctrl (n+1, D), knots (n+p+2,), weights (n+1,) or None)``; the new control points
    are affine combinations of the old ones (differentiable)."""
    _check_ctrl(ctrl, weights, 1)
    p = as_int(degree, "degree", minimum=0)
    n = ctrl.shape[0]
    _check_knots(knots, n, p)
    U = knots.to(ctrl.dtype)
    t = as_float(t, "t")
    if not float(U[p]) <= t <= float(U[n]):
        raise ValueError(f"t must lie in the domain [{float(U[p])}, {float(U[n])}], got {t}")
    k = int(torch.searchsorted(U, torch.tensor([t], dtype=U.dtype), right=True)[0]) - 1
    k = min(max(k, p), n - 1)
    w = torch.ones(n, dtype=ctrl.dtype, device=ctrl.device) if weights is None else weights
    Pw = torch.cat([w[:, None] * ctrl, w[:, None]], 1)
    rows = []
    for i in range(n + 1):
        if i <= k - p:
            rows.append(Pw[i])
        elif i > k:
            rows.append(Pw[i - 1])
        else:
            a = (t - float(U[i])) / (float(U[i + p]) - float(U[i]))
            rows.append(a * Pw[i] + (1 - a) * Pw[i - 1])
    Q = torch.stack(rows)
    new_knots = torch.cat([U[: k + 1], torch.tensor([t], dtype=U.dtype, device=U.device), U[k + 1:]])
    new_w = Q[:, -1]
    return Q[:, :-1] / new_w[:, None], new_knots, (None if weights is None else new_w)


def elevate_bezier(ctrl: torch.Tensor, weights: torch.Tensor | None = None):
    """Degree elevation of a (rational) Bézier curve: ``n`` control points -> ``n + 1`` describing
    the same curve (in homogeneous coordinates ``Q_i = i/(p+1) P_{i-1} + (1 - i/(p+1)) P_i``)."""
    _check_ctrl(ctrl, weights, 1)
    n = ctrl.shape[0]
    p = n - 1
    w = torch.ones(n, dtype=ctrl.dtype, device=ctrl.device) if weights is None else weights
    Pw = torch.cat([w[:, None] * ctrl, w[:, None]], 1)
    a = torch.arange(1, p + 1, dtype=ctrl.dtype, device=ctrl.device)[:, None] / (p + 1)
    Q = torch.cat([Pw[:1], a * Pw[:-1] + (1 - a) * Pw[1:], Pw[-1:]])
    return Q[:, :-1] / Q[:, -1:], (None if weights is None else Q[:, -1])


def nurbs_circle(radius: float = 1.0, center=(0.0, 0.0), dtype=torch.float64, device=None):
    """The exact NURBS circle (degree 2, 9 control points on a square, weights 1 and sqrt(2)/2,
    knots ``[0,0,0,1/4,1/4,1/2,1/2,3/4,3/4,1,1,1]``), counter-clockwise from ``(r, 0)``.
    Returns ``(ctrl (9, 2), weights (9,), knots (12,))``; the parameter is not arc length."""
    r = as_float(radius, "radius", positive=True)
    pts = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1], [1, 0]], dtype=dtype) * r
    pts = pts + torch.tensor(center, dtype=dtype)
    s = math.sqrt(0.5)
    w = torch.tensor([1, s, 1, s, 1, s, 1, s, 1], dtype=dtype)
    knots = torch.tensor([0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1], dtype=dtype)
    return pts.to(device), w.to(device), knots.to(device)
