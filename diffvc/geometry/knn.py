"""Nearest neighbours and k-nearest neighbours between point sets (memory bounded).

The neighbour *search* runs without autograd (a SciPy k-d tree on the CPU, chunked brute force
with ``torch.cdist`` elsewhere or on request); the returned distances are recomputed in torch from
the chosen pairs, so they are differentiable w.r.t. both point sets (piecewise: where the nearest
neighbour switches, the distance is continuous and its gradient jumps).
"""

from __future__ import annotations

import torch

from .._validate import as_int, check_float, check_same_device, check_same_dtype


@torch.no_grad()
def _knn_brute(x: torch.Tensor, y: torch.Tensor, k: int, chunk_elems: int) -> torch.Tensor:
    step = max(1, chunk_elems // max(1, y.shape[0]))
    out = []
    for i in range(0, x.shape[0], step):
        d = torch.cdist(x[i:i + step], y)
        out.append(d.argmin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=x.device)


@torch.no_grad()
def _knn_kdtree(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    from scipy.spatial import cKDTree

    tree = cKDTree(y.detach().cpu().double().numpy())
    _, idx = tree.query(x.detach().cpu().double().numpy(), k=k, workers=-1)
    idx = torch.from_numpy(idx).long().reshape(x.shape[0], k)
    return idx.to(x.device)


def knn(x: torch.Tensor, y: torch.Tensor, k: int = 1, method: str = "auto", chunk_elems: int = 4_000_000):
    """The ``k`` nearest points of ``y (M, D)`` to each point of ``x (N, D)``.

    Args:
        method: ``"kdtree"`` (SciPy, CPU), ``"brute"`` (chunked ``torch.cdist``, any device; at most
            ``chunk_elems`` pair distances in memory) or ``"auto"`` (kdtree on CPU, brute elsewhere).

    Returns:
        ``(sq_dists (N, k), idx (N, k) long)`` sorted by distance; ``sq_dists`` is differentiable.
    """
    check_float(x, "x", shape=("N", "D"), coerce=False)
    check_float(y, "y", shape=("M", "D"), coerce=False)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must hold points of one dimension, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    check_same_dtype(("x", x), ("y", y))
    check_same_device(("x", x), ("y", y))
    k = as_int(k, "k")
    if not 1 <= k <= y.shape[0]:
        raise ValueError(f"k must lie in [1, {y.shape[0]}] (the number of points in y), got {k}")
    if method == "auto":
        method = "kdtree" if x.device.type == "cpu" else "brute"
    if method == "kdtree":
        idx = _knn_kdtree(x, y, k)
    elif method == "brute":
        idx = _knn_brute(x.detach(), y.detach(), k, chunk_elems)
    else:
        raise ValueError(f"method must be 'auto', 'kdtree' or 'brute', got {method!r}")
    d = x[:, None, :] - y[idx]
    return (d * d).sum(-1), idx


def nearest_neighbor(x: torch.Tensor, y: torch.Tensor, method: str = "auto"):
    """Nearest point of ``y`` for each point of ``x``: ``(sq_dist (N,), idx (N,))``."""
    d, i = knn(x, y, 1, method)
    return d[:, 0], i[:, 0]
