"""Compliance problems on a structured grid: supports, loads, passive elements.

Grid numbering as in :mod:`diffvc.topopt.elasticity` (top88's: node ``(i, j[, k])`` at ``x = i``,
``y = -j`` (``j`` counts down from the top), dofs ``d*node + component``, ``u_y`` positive up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

VOID, SOLID = 1, 2


@dataclass(frozen=True)
class GridProblem:
    """A compliance problem: element grid, fixed dofs, load cases, passive elements.

    Attributes:
        shape: element counts ``(nelx, nely)`` or ``(nelx, nely, nelz)``.
        fixed: bool ``(ndof,)``: displacement held at 0.
        loads: ``(ndof, n_loads)`` nodal forces, one column per load case (the objective is the
            sum of the load cases' compliances).
        passive: ``None`` or int8 tensor of ``shape``: 0 design, 1 (:data:`VOID`) held at density
            0, 2 (:data:`SOLID`) held at 1.
        name: a label.
    """

    shape: tuple
    fixed: torch.Tensor
    loads: torch.Tensor
    passive: torch.Tensor | None = None
    name: str = "problem"

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"shape must be (nelx, nely) or (nelx, nely, nelz) with positive entries, got {shape}")
        object.__setattr__(self, "shape", shape)
        nd = self.ndof
        if not isinstance(self.fixed, torch.Tensor) or self.fixed.dtype != torch.bool or self.fixed.shape != (nd,):
            raise ValueError(f"fixed must be a bool tensor of shape ({nd},)")
        if not bool(self.fixed.any()):
            raise ValueError("fixed: at least one dof must be fixed (else K is singular)")
        L = self.loads
        if not isinstance(L, torch.Tensor) or not L.is_floating_point() or L.dim() != 2 or L.shape[0] != nd:
            raise ValueError(f"loads must be a float tensor of shape ({nd}, n_loads), got {tuple(getattr(L, 'shape', ()))}")
        if not bool(torch.isfinite(L).all()):
            raise ValueError("loads must be finite")
        if self.passive is not None:
            P = self.passive
            if not isinstance(P, torch.Tensor) or P.shape != shape or P.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
                raise ValueError(f"passive must be an integer tensor of shape {shape}")
            if bool(((P != 0) & (P != VOID) & (P != SOLID)).any()):
                raise ValueError("passive entries must be 0 (design), 1 (void) or 2 (solid)")

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def n_nodes(self) -> int:
        return math.prod(s + 1 for s in self.shape)

    @property
    def ndof(self) -> int:
        return self.dim * self.n_nodes

    def node(self, *ijk) -> int:
        """Index of grid node ``(i, j[, k])``."""
        n = 0
        for c, s in zip(ijk, self.shape):
            if not 0 <= c <= s:
                raise ValueError(f"node index {ijk} outside the node grid {tuple(s + 1 for s in self.shape)}")
            n = n * (s + 1) + int(c)
        return n


def _node_ids(shape, sl) -> torch.Tensor:
    ids = torch.arange(math.prod(s + 1 for s in shape)).reshape(tuple(s + 1 for s in shape))
    return ids[sl].reshape(-1)


def mbb_beam(nelx: int = 60, nely: int = 20, dtype=torch.float64, device=None) -> GridProblem:
    """top88's MBB half-beam: symmetry (``u_x = 0``) on the left edge, a roller (``u_y = 0``) at the
    bottom-right corner, a unit downward force at the top-left node."""
    shape = (nelx, nely)
    nd = 2 * (nelx + 1) * (nely + 1)
    fixed = torch.zeros(nd, dtype=torch.bool)
    fixed[2 * _node_ids(shape, (0, slice(None)))] = True
    fixed[2 * _node_ids(shape, (nelx, nely)) + 1] = True
    F = torch.zeros(nd, 1, dtype=dtype)
    F[1, 0] = -1.0
    return GridProblem(shape, fixed.to(device), F.to(device), None, "mbb")


def cantilever(nelx: int = 80, nely: int = 40, load: str = "mid", dtype=torch.float64, device=None) -> GridProblem:
    """2D cantilever clamped on its left edge. ``load="mid"``: a unit downward force at the middle
    of the right edge; ``"two"``: two load cases (top88 sec. 5.3), a downward force at the
    top-right and an upward one at the bottom-right corner."""
    shape = (nelx, nely)
    nd = 2 * (nelx + 1) * (nely + 1)
    fixed = torch.zeros(nd, dtype=torch.bool)
    left = _node_ids(shape, (0, slice(None)))
    fixed[2 * left] = True
    fixed[2 * left + 1] = True
    if load == "mid":
        F = torch.zeros(nd, 1, dtype=dtype)
        F[2 * _node_ids(shape, (nelx, nely // 2)) + 1, 0] = -1.0
    elif load == "two":
        F = torch.zeros(nd, 2, dtype=dtype)
        F[2 * _node_ids(shape, (nelx, 0)) + 1, 0] = -1.0
        F[2 * _node_ids(shape, (nelx, nely)) + 1, 1] = 1.0
    else:
        raise ValueError(f"load must be 'mid' or 'two', got {load!r}")
    return GridProblem(shape, fixed.to(device), F.to(device), None, f"cantilever_{load}")


def cantilever_3d(nelx: int = 48, nely: int = 16, nelz: int = 8, dtype=torch.float64, device=None) -> GridProblem:
    """3D cantilever (top3d's): the ``x = 0`` face clamped, a unit downward force spread evenly
    over the nodes of the bottom edge of the ``x = nelx`` face (``j = nely``, all ``k``)."""
    shape = (nelx, nely, nelz)
    nd = 3 * (nelx + 1) * (nely + 1) * (nelz + 1)
    fixed = torch.zeros(nd, dtype=torch.bool)
    face = _node_ids(shape, (0, slice(None), slice(None)))
    for c in range(3):
        fixed[3 * face + c] = True
    F = torch.zeros(nd, 1, dtype=dtype)
    edge = _node_ids(shape, (nelx, nely, slice(None)))
    F[3 * edge + 1, 0] = -1.0 / len(edge)
    return GridProblem(shape, fixed.to(device), F.to(device), None, "cantilever3d")


def with_passive(problem: GridProblem, passive: torch.Tensor) -> GridProblem:
    """The same problem with passive elements (see :class:`GridProblem`)."""
    return GridProblem(problem.shape, problem.fixed, problem.loads, passive, problem.name)
