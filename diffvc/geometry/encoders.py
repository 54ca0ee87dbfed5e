"""Neural encoders on geometry: PointNet and DGCNN (EdgeConv) for point clouds, a Laplacian mesh
convolution for meshes. Plain ``torch.nn.Module``s; inputs are differentiable (gradients reach the
points / vertex features, so an encoder can sit inside a geometry or rendering pipeline).

* :class:`PointNetEncoder` (Qi et al. 2017, without the input/feature transform nets): a shared
  per-point MLP, a symmetric max-pool, an MLP head. Invariant to the order of the points. The
  max-pool's gradient goes to the arg-max point of each channel (ties: one of them).
* :class:`EdgeConv` / :class:`DGCNNEncoder` (Wang et al. 2019): per point, ``max_j h([x_i, x_j -
  x_i])`` over its ``k`` nearest neighbours in the current feature space (the neighbour sets are
  piecewise constant: no gradient through the choice of neighbours).
* :class:`MeshConv` / :class:`MeshEncoder`: a first-order Chebyshev graph convolution on a mesh,
  ``y = x W0 + (A_norm x) W1`` with ``A_norm = D^-1 A`` the row-normalised vertex adjacency
  (``I - A_norm`` is the random-walk uniform Laplacian); equivariant to vertex relabelling.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import as_int, check_faces, check_float
from .topology import edges as mesh_edges


def _sizes(**sizes) -> tuple:
    """Layer sizes: each an int >= 1 (the error names the argument)."""
    return tuple(as_int(v, k, minimum=1) for k, v in sizes.items())


def _mlp(dims, last_act: bool = True) -> nn.Sequential:
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check_points(x: torch.Tensor, in_dim: int, name: str = "points") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() not in (2, 3) or x.shape[-1] != in_dim:
        raise ValueError(f"{name} must be a float tensor (N, {in_dim}) or (B, N, {in_dim}), got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} is empty")
    return x[None] if x.dim() == 2 else x


class PointNetEncoder(nn.Module):
    """Point cloud ``(B, N, in_dim)`` (or ``(N, in_dim)``) -> global feature ``(B, out_dim)``.

    Args:
        in_dim: per-point input channels (3 for xyz); widths: the shared MLP's widths;
        out_dim: output size (after a 2-layer head).
    """

    def __init__(self, in_dim: int = 3, out_dim: int = 64, widths=(64, 128, 256)):
        super().__init__()
        in_dim, out_dim = _sizes(in_dim=in_dim, out_dim=out_dim)
        widths = tuple(as_int(w, "widths", minimum=1) for w in widths)
        self.in_dim = in_dim
        self.point_mlp = _mlp((in_dim,) + tuple(widths))
        self.head = _mlp((widths[-1], widths[-1] // 2, out_dim), last_act=False)

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """Per-point features ``(B, N, widths[-1])``."""
        return self.point_mlp(_check_points(points, self.in_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        squeeze = points.dim() == 2
        g = self.point_features(points).amax(dim=1)
        out = self.head(g)
        return out[0] if squeeze else out


def knn_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, N, k)`` of each point's ``k`` nearest neighbours (itself included) in
    ``x (B, N, C)`` or ``(N, C)`` (brute force; ``O(N^2)`` memory); ``k`` is capped at ``N``."""
    check_float(x, "x", shape=(..., "N", "C"), coerce=False)
    k = as_int(k, "k", minimum=1)
    if x.shape[-2] == 0:
        raise ValueError("x holds no points")
    d = torch.cdist(x.detach(), x.detach())
    return d.topk(min(k, x.shape[-2]), dim=-1, largest=False).indices


class EdgeConv(nn.Module):
    """``y_i = max_{j in knn(i)} MLP([x_i, x_j - x_i])`` on ``x (B, N, C_in)`` -> ``(B, N, C_out)``."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 16):
        super().__init__()
        in_dim, out_dim, k = _sizes(in_dim=in_dim, out_dim=out_dim, k=k)
        self.k = k
        self.mlp = _mlp((2 * in_dim, out_dim, out_dim))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        idx = knn_graph(x, self.k) if idx is None else idx
        B, N, C = x.shape
        nb = x[torch.arange(B, device=x.device)[:, None, None], idx]  # (B, N, k, C)
        e = torch.cat([x[:, :, None].expand_as(nb), nb - x[:, :, None]], -1)
        return self.mlp(e).amax(dim=2)


class DGCNNEncoder(nn.Module):
    """Dynamic-graph CNN: EdgeConv layers (neighbours recomputed in each layer's input feature
    space), their outputs concatenated, a shared linear layer, max-pool, MLP head.
    ``(B, N, in_dim)`` -> ``(B, out_dim)``."""

    def __init__(self, in_dim: int = 3, out_dim: int = 64, widths=(64, 64, 128), k: int = 16, emb: int = 256):
        super().__init__()
        in_dim, out_dim, k, emb = _sizes(in_dim=in_dim, out_dim=out_dim, k=k, emb=emb)
        widths = tuple(as_int(w, "widths", minimum=1) for w in widths)
        self.in_dim = in_dim
        dims = (in_dim,) + tuple(widths)
        self.convs = nn.ModuleList([EdgeConv(dims[i], dims[i + 1], k) for i in range(len(widths))])
        self.embed = _mlp((sum(widths), emb))
        self.head = _mlp((emb, emb // 2, out_dim), last_act=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        squeeze = points.dim() == 2
        x = _check_points(points, self.in_dim)
        feats = []
        for conv in self.convs:
            x = conv(x)
            feats.append(x)
        out = self.head(self.embed(torch.cat(feats, -1)).amax(dim=1))
        return out[0] if squeeze else out


def normalized_adjacency(faces: torch.Tensor, num_verts: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Row-normalised vertex adjacency ``D^-1 A`` ``(V, V)`` (torch sparse COO) of a triangle mesh;
    isolated vertices get an all-zero row."""
    num_verts = as_int(num_verts, "num_verts", minimum=1)
    faces = check_faces(faces, num_verts, device=device)
    e = mesh_edges(faces.to(device))
    i = torch.cat([e[:, 0], e[:, 1]])
    j = torch.cat([e[:, 1], e[:, 0]])
    deg = torch.zeros(num_verts, dtype=dtype, device=device).index_add_(0, i, torch.ones_like(i, dtype=dtype))
    w = 1.0 / deg[i]
    return torch.sparse_coo_tensor(torch.stack([i, j]), w, (num_verts, num_verts), check_invariants=False).coalesce()


class MeshConv(nn.Module):
    """First-order Chebyshev mesh convolution ``y = x W0 + (A_norm x) W1 + b`` on vertex features
    ``x (V, C_in)`` or ``(B, V, C_in)`` (same mesh for the batch) -> ``(..., V, C_out)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        in_dim, out_dim = _sizes(in_dim=in_dim, out_dim=out_dim)
        self.self_lin = nn.Linear(in_dim, out_dim)
        self.nb_lin = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            ax = torch.sparse.mm(adj, x)
        else:
            B, V, C = x.shape
            ax = torch.sparse.mm(adj, x.transpose(0, 1).reshape(V, B * C)).reshape(V, B, C).transpose(0, 1)
        return self.self_lin(x) + self.nb_lin(ax)


class MeshEncoder(nn.Module):
    """Vertex features ``(V, in_dim)`` or ``(B, V, in_dim)`` of a mesh -> global feature
    ``(out_dim,)`` / ``(B, out_dim)``: :class:`MeshConv` layers with ReLU, max-pool, MLP head.
    Build the adjacency once with :func:`normalized_adjacency` and pass it to ``forward``."""

    def __init__(self, in_dim: int = 3, out_dim: int = 64, widths=(32, 64, 128)):
        super().__init__()
        in_dim, out_dim = _sizes(in_dim=in_dim, out_dim=out_dim)
        widths = tuple(as_int(w, "widths", minimum=1) for w in widths)
        dims = (in_dim,) + tuple(widths)
        self.in_dim = in_dim
        self.convs = nn.ModuleList([MeshConv(dims[i], dims[i + 1]) for i in range(len(widths))])
        self.head = _mlp((widths[-1], widths[-1], out_dim), last_act=False)

    def vertex_features(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        if adj.shape != (x.shape[-2], x.shape[-2]):
            raise ValueError(f"adj must be ({x.shape[-2]}, {x.shape[-2]}), got {tuple(adj.shape)}")
        for conv in self.convs:
            x = torch.relu(conv(x, adj.to(x.dtype)))
        return x

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        _check_points(x, self.in_dim, "x")
        return self.head(self.vertex_features(x, adj).amax(dim=-2))
