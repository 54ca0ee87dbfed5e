"""Heat diffusion of signals on a triangle mesh (output smoothing: a discontinuous per-vertex
signal becomes a smooth one whose gradients are spread over a neighbourhood).

Implicit Euler on the heat equation with the cotangent Laplacian ``L`` and lumped mass ``M``:
``(M + t L) u = M u0``, which is unconditionally stable; ``steps`` sub-steps of ``t / steps`` get
closer to the exact heat kernel ``exp(-t M^{-1} L)``. The mesh geometry is treated as constant;
gradients flow to the signal (each solve's adjoint is the same symmetric solve).
"""

from __future__ import annotations

import torch

from ._checks import check_mesh
from .laplacian import cotangent_laplacian, uniform_laplacian, vertex_areas
from .._validate import as_float, as_int, check_float
from .large_steps import SparseSolver, solve


class HeatDiffusion:
    """Reusable diffusion operator for one mesh and one time ``t`` (factorization cached).

    Args:
        verts, faces: the mesh; t: diffusion time (units of length^2; the smoothing radius is
            about ``sqrt(2 t)`` for the cotangent Laplacian); steps: implicit Euler sub-steps;
        laplacian: ``"cotangent"`` (geometric) or ``"uniform"`` (combinatorial, unit masses).
    """

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, t: float, steps: int = 1,
                 laplacian: str = "cotangent", method: str = "auto"):
        verts, faces = check_mesh(verts, faces)
        t = as_float(t, "t", nonneg=True)
        steps = as_int(steps, "steps", minimum=1)
        n = verts.shape[0]
        v = verts.detach()
        if laplacian == "cotangent":
            L = cotangent_laplacian(v, faces).detach()
            m = vertex_areas(v, faces).detach()
            # isolated vertices get a floor relative to the mesh's own areas (scale-covariant)
            m = m.clamp_min(torch.finfo(v.dtype).eps * (m.max() if n else m.new_zeros(())))
            m = torch.where(m > 0, m, torch.ones_like(m))
        elif laplacian == "uniform":
            L = uniform_laplacian(faces, n, dtype=v.dtype, device=v.device)
            m = torch.ones(n, dtype=v.dtype, device=v.device)
        else:
            raise ValueError(f"laplacian must be 'cotangent' or 'uniform', got {laplacian!r}")
        ar = torch.arange(n, device=v.device)
        Msp = torch.sparse_coo_tensor(torch.stack([ar, ar]), m, (n, n), check_invariants=False)
        self.mass = m
        self.steps = steps
        self.solver = SparseSolver((Msp + (t / steps) * L).coalesce(), method)

    def __call__(self, signal: torch.Tensor) -> torch.Tensor:
        """Diffuse ``signal (V,)`` or ``(V, C)``; returns the same shape."""
        signal = check_float(signal, "signal", coerce=False)
        if signal.dim() not in (1, 2) or signal.shape[0] != self.mass.shape[0]:
            raise ValueError(f"signal must have {self.mass.shape[0]} rows (one per vertex), got {tuple(signal.shape)}")
        u = signal
        m = self.mass.to(signal.dtype)
        for _ in range(self.steps):
            u = solve(self.solver, u * (m if u.dim() == 1 else m[:, None]))
        return u


def heat_diffuse(verts: torch.Tensor, faces: torch.Tensor, signal: torch.Tensor, t: float, steps: int = 1,
                 laplacian: str = "cotangent") -> torch.Tensor:
    """One-off :class:`HeatDiffusion` (build + apply). Preserves ``sum(M u)`` (total heat)."""
    return HeatDiffusion(verts, faces, t, steps, laplacian)(signal)
