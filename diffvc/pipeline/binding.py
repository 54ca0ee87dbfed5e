"""Binding simulated states to render geometry.

A *binding* turns one simulated state into the world-space vertex positions ``(V, 3)`` of a
render mesh. Two kinds cover the pipeline:

* :class:`RigidBinding` - a rigid body's pose (position of its centre of mass and orientation
  quaternion) moves the body's mesh, given in body coordinates (centre of mass at the origin):
  ``x_world = R(q) x_body + p``. Differentiable w.r.t. the pose and the body-space vertices.
* :class:`SoftBinding` - a deformable body's simulated nodes (FEM tet-mesh vertices, particles)
  *are* vertices of the render mesh: the surface mesh (e.g. the boundary faces of a tet mesh)
  indexes a subset of the nodes, ``x_world = x_nodes[index]``. Differentiable w.r.t. the nodes
  (a gather; its adjoint scatters back).

Both read their inputs from the state by attribute name (``state.x``, ``state.q`` ...), or, for a
state that is a plain tensor, use it directly, so any solver's state dataclass works without
adapters. Rotations act on row vectors as in :mod:`diffvc.geometry.transforms`; quaternions are
``(w, x, y, z)`` as everywhere in diffvc (rigid-body states included).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validate import check_float, check_index, check_same_dtype
from ..geometry.transforms import quaternion_to_matrix

__all__ = ["rigid_vertices", "soft_vertices", "RigidBinding", "SoftBinding", "StaticBinding"]


def _check_verts(v, name: str) -> torch.Tensor:
    return check_float(v, name, shape=("V", 3), coerce=False)


def rigid_vertices(verts: torch.Tensor, position: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """World positions of a rigid body's mesh vertices.

    Args:
        verts: ``(V, 3)`` vertices in body coordinates (metres, centre of mass at the origin).
        position: ``(..., 3)`` world position of the body origin (any leading batch dims, e.g.
            time ``(T, 3)``).
        rotation: ``(..., 4)`` orientation quaternion ``(w, x, y, z)`` (normalised inside), or
            ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., V, 3)`` world vertices. Smooth in every input (no discontinuity).
    """
    _check_verts(verts, "verts")
    check_float(position, "position", shape=(..., 3), coerce=False)
    check_float(rotation, "rotation", coerce=False)
    check_same_dtype(("verts", verts), ("position", position), ("rotation", rotation))
    if rotation.shape[-2:] == (3, 3):
        R = rotation
    elif rotation.shape[-1] == 4:
        R = quaternion_to_matrix(rotation)
    else:
        raise ValueError(f"rotation must have shape (..., 4) or (..., 3, 3), got {tuple(rotation.shape)}")
    if R.shape[:-2] != position.shape[:-1]:
        raise ValueError(f"rotation batch shape {tuple(R.shape[:-2])} must match position's {tuple(position.shape[:-1])}")
    return verts @ R.transpose(-1, -2) + position[..., None, :]


def soft_vertices(nodes: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Render vertices driven by simulated nodes: ``nodes[..., index, :]`` (``index=None``: all).

    Args:
        nodes: ``(..., N, 3)`` simulated node positions.
        index: ``(V,)`` long, which node each render vertex is.
    """
    check_float(nodes, "nodes", shape=(..., "N", 3), coerce=False)
    if index is None:
        return nodes
    return nodes.index_select(-2, check_index(index, "index", nodes.shape[-2], shape=("V",), device=nodes.device,
                                              size_name="the number of nodes"))


def _get(state: Any, name: str | None, slot: int | None, what: str) -> torch.Tensor:
    t = state if (name is None or isinstance(state, torch.Tensor)) else getattr(state, name, None)
    if t is None:
        raise AttributeError(f"state of type {type(state).__name__} has no field {name!r} ({what}); "
                             f"pass the field name to the binding")
    if slot is not None:
        t = t[slot]
    return t


def _stack(ts: list) -> torch.Tensor | None:
    """``torch.stack(ts)``, or None when they are not tensors of one shape, dtype and device."""
    t0 = ts[0]
    if not all(isinstance(t, torch.Tensor) and t.shape == t0.shape and t.dtype == t0.dtype and t.device == t0.device
               for t in ts):
        return None
    return torch.stack(ts)


class RigidBinding:
    """Binds body ``body`` of a rigid-body state to a mesh in body coordinates.

    Args:
        verts: ``(V, 3)`` body-space vertices (centre of mass at the origin).
        body: index of the body in the state's batched arrays (``None``: the state holds one body
            with unbatched ``(3,)``/``(4,)`` fields).
        position, rotation: names of the state fields holding positions ``(B, 3)`` and
            orientation quaternions ``(B, 4)`` as ``(w, x, y, z)`` (or matrices ``(B, 3, 3)``).
    """

    def __init__(self, verts: torch.Tensor, body: int | None = 0, position: str = "x",
                 rotation: str = "q"):
        self.verts = _check_verts(verts, "verts")
        self.body, self.position, self.rotation = body, position, rotation

    def __call__(self, state) -> torch.Tensor:
        p = _get(state, self.position, self.body, "position")
        q = _get(state, self.rotation, self.body, "rotation")
        return rigid_vertices(self.verts.to(p.dtype), p, q)

    def batch(self, states) -> torch.Tensor:
        """``(T, V, 3)``: the vertices for each of ``states`` (a sequence), placed in one call
        (equal to stacking ``self(state)``)."""
        p = _stack([_get(st, self.position, self.body, "position") for st in states])
        q = _stack([_get(st, self.rotation, self.body, "rotation") for st in states])
        if p is None or q is None:          # fields of differing shapes: per state, for its error
            return torch.stack([self(st) for st in states])
        return rigid_vertices(self.verts.to(p.dtype), p, q)


class SoftBinding:
    """Binds a deformable state's nodes ``state.<field>`` ``(N, 3)`` to render vertices ``nodes[index]``.

    Args:
        index: ``(V,)`` node index of each render vertex (e.g. the vertices used by the boundary
            faces of a tet mesh, renumbered), or ``None`` when every node is a render vertex.
        field: name of the state field holding node positions.
        num_nodes: if given, the binding checks states against it.
    """

    def __init__(self, index: torch.Tensor | None = None, field: str = "x", num_nodes: int | None = None):
        if index is not None:
            index = check_index(index, "index", num_nodes if num_nodes is not None else 2 ** 62, shape=("V",),
                                size_name="num_nodes")
        self.index, self.field, self.num_nodes = index, field, num_nodes

    def __call__(self, state) -> torch.Tensor:
        return self._vertices(_get(state, self.field, None, "node positions"))

    def batch(self, states) -> torch.Tensor:
        """``(T, V, 3)``: the vertices for each of ``states`` (a sequence), gathered in one call
        (equal to stacking ``self(state)``)."""
        x = _stack([_get(st, self.field, None, "node positions") for st in states])
        if x is None:                       # states of differing shapes: per state, for its error
            return torch.stack([self(st) for st in states])
        return self._vertices(x)

    def _vertices(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_nodes is not None and x.shape[-2] != self.num_nodes:
            raise ValueError(f"state.{self.field} has {x.shape[-2]} nodes, binding expects {self.num_nodes}")
        idx = None if self.index is None else self.index.to(x.device)
        return soft_vertices(x, idx)


class StaticBinding:
    """A shape that does not move: always returns its own ``(V, 3)`` vertices."""

    def __init__(self, verts: torch.Tensor):
        self.verts = _check_verts(verts, "verts")

    def __call__(self, state) -> torch.Tensor:
        return self.verts

    def batch(self, states) -> torch.Tensor:
        """``(T, V, 3)``: its vertices once per state (an expanded view)."""
        return self.verts.expand(len(states), *self.verts.shape)

