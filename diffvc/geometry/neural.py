"""Neural fields: positional (Fourier) encoding, multiresolution hash-grid encoding (Instant-NGP,
Mueller et al. 2022) in plain torch, an MLP, and a field module combining them.

All modules map points ``(N, 3)`` to features, are differentiable w.r.t. their parameters and the
input points (the hash grid is trilinear per level: C0 in the points, like :func:`trilinear_sample`).
"""

from __future__ import annotations

import math

import torch

from .._validate import as_float, as_int, check_float


class PositionalEncoding(torch.nn.Module):
    """``[x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^{L-1} pi x), cos(2^{L-1} pi x)]`` per coordinate.

    Output dim: ``in_dim * (2 L + include_input)``.
    """

    def __init__(self, in_dim: int = 3, num_freqs: int = 6, include_input: bool = True):
        super().__init__()
        in_dim, num_freqs = as_int(in_dim, "in_dim", minimum=1), as_int(num_freqs, "num_freqs", minimum=0)
        self.in_dim, self.num_freqs, self.include_input = in_dim, num_freqs, include_input
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.num_freqs + int(self.include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float(x, "x", shape=(..., self.in_dim), coerce=False)
        xf = x[..., None] * self.freqs.to(x.dtype)  # (N, D, L)
        enc = torch.cat([torch.sin(xf), torch.cos(xf)], -1).flatten(-2)
        return torch.cat([x, enc], -1) if self.include_input else enc


_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoding(torch.nn.Module):
    """Multiresolution hash encoding of 3D points in ``bounds``.

    Args:
        levels: number of resolutions; features: features per level; log2_table: table size
            ``2^log2_table`` per level (levels whose dense grid is smaller are stored densely);
        base_resolution, max_resolution: resolutions of the coarsest and finest levels
            (geometric progression between them).
        bounds: ``(lo, hi)`` box mapped to the unit cube (points outside are clamped: zero
            gradient w.r.t. the clamped coordinate).
        init_scale: table entries start uniform in ``[-init_scale, init_scale]``.
        backend: ``"warp"`` (kernel, :mod:`diffvc._kernels.hashgrid`: one thread per point, all
            levels; second derivatives through the twin) or ``"torch"`` (:meth:`forward_torch`,
            the twin: all levels vectorised, every derivative by autograd).

    Output dim: ``levels * features``. Per level the value is the trilinear interpolation of the
    table rows at the 8 corners of the point's cell: C0 in the points (the gradient jumps across
    cell faces; on a face it is the one of the cell ``floor`` selects).
    """

    def __init__(self, levels: int = 12, features: int = 2, log2_table: int = 17, base_resolution: int = 16,
                 max_resolution: int = 512, bounds=(-1.0, 1.0), init_scale: float = 1e-4, backend: str = "warp"):
        super().__init__()
        levels, features = as_int(levels, "levels", minimum=1), as_int(features, "features", minimum=1)
        log2_table = as_int(log2_table, "log2_table", minimum=1)
        if log2_table > 30:
            raise ValueError(f"log2_table must be <= 30 (a table of 2^log2_table rows per level), got {log2_table}")
        base_resolution = as_int(base_resolution, "base_resolution", minimum=1)
        max_resolution = as_int(max_resolution, "max_resolution", minimum=base_resolution)
        if max_resolution > 2 ** 20:
            raise ValueError(f"max_resolution must be <= 2^20, got {max_resolution}")
        init_scale = as_float(init_scale, "init_scale", nonneg=True)
        self.backend = backend
        self.levels, self.features, self.bounds = levels, features, bounds
        self.table_size = 2 ** log2_table
        b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(1, levels - 1))
        self.resolutions = [int(math.floor(base_resolution * b ** lvl)) for lvl in range(levels)]
        sizes = [min((r + 1) ** 3, self.table_size) for r in self.resolutions]
        self.dense = [(r + 1) ** 3 <= self.table_size for r in self.resolutions]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.sizes = sizes
        self.table = torch.nn.Parameter((torch.rand(self.offsets[-1], features) * 2 - 1) * init_scale)
        self._consts: dict = {}

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in ("warp", "torch"):
            raise ValueError(f"backend must be 'warp' or 'torch', got {value!r}")
        self._backend = value

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def _box(self, x: torch.Tensor):
        lo = torch.as_tensor(self.bounds[0], dtype=x.dtype, device=x.device).reshape(-1).expand(3)
        hi = torch.as_tensor(self.bounds[1], dtype=x.dtype, device=x.device).reshape(-1).expand(3)
        return lo, hi

    def _level_consts(self, device):
        """Per-level tensors (resolution, first row, table size, dense flag) and the 8 corner offsets."""
        key = str(device)
        if key not in self._consts:
            L = self.levels
            self._consts[key] = (
                torch.tensor(self.resolutions, device=device).reshape(1, L, 1, 1),
                torch.tensor(self.offsets[:-1], device=device).reshape(1, L, 1),
                torch.tensor(self.sizes, device=device).reshape(1, L, 1),
                torch.tensor(self.dense, device=device).reshape(1, L, 1),
                torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=device))
        return self._consts[key]

    def forward_torch(self, x: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The plain-torch twin (all levels at once; differentiable to any order): ``(N, 3) -> (N, L F)``."""
        table = self.table.to(x.dtype) if table is None else table
        lo, hi = self._box(x)
        res, first, size, dense, corners = self._level_consts(x.device)
        N, L = x.shape[0], self.levels
        u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        pos = u[:, None, :] * res[..., 0].to(x.dtype)  # (N, L, 3)
        base = pos.detach().floor().long().clamp(max=res[..., 0] - 1)
        frac = pos - base.to(x.dtype)
        c = base[:, :, None, :] + corners  # (N, L, 8, 3)
        r1 = res + 1
        idx_dense = (c[..., 0] * r1[..., 0] + c[..., 1]) * r1[..., 0] + c[..., 2]
        h = (c[..., 0] * _PRIMES[0]) ^ (c[..., 1] * _PRIMES[1]) ^ (c[..., 2] * _PRIMES[2])
        idx = first + torch.where(dense, idx_dense, h % size)  # (N, L, 8)
        feats = table[idx]  # (N, L, 8, F)
        w = torch.where(corners.bool(), frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)  # (N, L, 8)
        return (feats * w[..., None]).sum(2).reshape(N, L * self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float(x, "x", shape=("N", 3), coerce=False)
        if self.backend == "torch":
            return self.forward_torch(x)
        from .._kernels.hashgrid import hash_encode
        lo, hi = self._box(x)
        return hash_encode(x, self.table.to(x.dtype), lo, hi, self.resolutions, self.offsets[:-1], self.sizes,
                           self.dense, self.forward_torch)


class MLP(torch.nn.Module):
    """Fully connected network ``in_dim -> hidden x layers -> out_dim`` with ``activation`` between layers."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 2, activation: str = "softplus"):
        super().__init__()
        acts = {"relu": torch.nn.ReLU, "softplus": lambda: torch.nn.Softplus(beta=100), "silu": torch.nn.SiLU,
                "tanh": torch.nn.Tanh}
        if not isinstance(activation, str) or activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        in_dim, out_dim = as_int(in_dim, "in_dim", minimum=1), as_int(out_dim, "out_dim", minimum=1)
        hidden, layers = as_int(hidden, "hidden", minimum=1), as_int(layers, "layers", minimum=0)
        dims = [in_dim] + [hidden] * layers + [out_dim]
        mods = []
        for i in range(len(dims) - 1):
            mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                mods.append(acts[activation]())
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NeuralField(torch.nn.Module):
    """``points (N, 3) -> (N, out_dim)`` (or ``(N,)`` when ``out_dim == 1`` and ``squeeze``): an
    encoding followed by an MLP.

    Args:
        encoding: ``"hash"`` (:class:`HashGridEncoding`), ``"frequency"`` (:class:`PositionalEncoding`)
            or ``"none"`` (raw coordinates).
        sphere_init: add ``|x| - sphere_init`` to the output (an SDF prior: the field starts as a
            sphere of that radius); None disables it.
        encoding_kwargs / hidden / layers / activation: passed on.
    """

    def __init__(self, out_dim: int = 1, encoding: str = "hash", hidden: int = 64, layers: int = 2,
                 activation: str = "softplus", sphere_init: float | None = None, squeeze: bool = True,
                 **encoding_kwargs):
        super().__init__()
        out_dim = as_int(out_dim, "out_dim", minimum=1)
        if sphere_init is not None:
            sphere_init = as_float(sphere_init, "sphere_init")
        if encoding == "hash":
            self.encoding = HashGridEncoding(**encoding_kwargs)
            in_dim = self.encoding.out_dim + 3
        elif encoding == "frequency":
            self.encoding = PositionalEncoding(**encoding_kwargs)
            in_dim = self.encoding.out_dim
        elif encoding == "none":
            self.encoding = None
            in_dim = 3
        else:
            raise ValueError(f"encoding must be 'hash', 'frequency' or 'none', got {encoding!r}")
        self.kind = encoding
        self.mlp = MLP(in_dim, out_dim, hidden, layers, activation)
        self.sphere_init = sphere_init
        self.squeeze = squeeze and out_dim == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float(x, "x", shape=(..., 3), coerce=False)
        if self.encoding is None:
            h = x
        elif self.kind == "hash":
            h = torch.cat([x, self.encoding(x)], -1)
        else:
            h = self.encoding(x)
        out = self.mlp(h.to(self.mlp.net[0].weight.dtype))
        if self.sphere_init is not None:
            out = out + (x.norm(dim=-1, keepdim=True) - self.sphere_init).to(out.dtype)
        return out[..., 0] if self.squeeze else out
