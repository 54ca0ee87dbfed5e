"""Learned and residual dynamics that follow the simulator contract.

:class:`ResidualModel` is ``simulator step + network correction``: the base model steps the state,
then a network of the *previous* state (and control) adds ``dt * net(features)`` to chosen state
fields (a learned acceleration/force residual for velocity fields, a drift for positions). With
``base=None`` it is a network alone (``state + dt * net``: a neural ODE with an Euler step). It is
a model like any other: ``rollout`` drives it (checkpointing, truncation, controllers), and
gradients reach the network's weights and the base model's parameters alike.

Features are the state's tensors (and the control, if given) concatenated along the last
dimension, row by row: every state tensor must have the same leading dimension (the batch of
environments for an :class:`~diffvc.physics.ArticulatedState`, the particles for a
:class:`~diffvc.physics.ParticleState` — then one network is shared by all particles).

Example: close a model mismatch (unknown joint friction, air drag) from observed trajectories::

    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    model = ResidualModel(base=articulated_model, net=net, fields=("qd",))
    pred = rollout(model, state0, 50, dt=0.01, truncate=25)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ResidualModel"]


@dataclass(frozen=True, eq=False)
class ResidualModel:
    """``new = base.step(state, dt, control)`` then ``new.f += dt * net(features)[..., slice_f]``
    for each field ``f`` in ``fields`` (all floating tensor fields when None).

    base: a model following the simulator contract, or None (network alone: ``new = state``
    before the correction); net: a module mapping (R, F_in) features to (R, sum of the corrected
    fields' widths) (R rows; F_in = total width of the state's tensor fields + the control's);
    fields: names of the corrected state fields; scale: multiplies the correction (start small
    to begin at the base model's prediction).
    """

    base: Any
    net: torch.nn.Module
    fields: tuple | None = None
    scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.net, torch.nn.Module) and not callable(self.net):
            raise TypeError(f"net must be a torch.nn.Module or a callable, got {type(self.net).__name__}")
        if self.base is not None and not callable(getattr(self.base, "step", None)):
            raise TypeError(f"base must follow the simulator contract (a step method) or be None, got {type(self.base).__name__}")
        if self.fields is not None and (isinstance(self.fields, str) or not all(isinstance(f, str) for f in self.fields)):
            raise TypeError(f"fields must be a tuple of field names, got {self.fields!r}")

    def _tensor_fields(self, state):
        if not dataclasses.is_dataclass(state):
            raise TypeError(f"state must be a dataclass of tensors, got {type(state).__name__}")
        names = [f.name for f in dataclasses.fields(state) if isinstance(getattr(state, f.name), torch.Tensor)
                 and getattr(state, f.name).is_floating_point()]
        corrected = list(self.fields) if self.fields is not None else names
        for n in corrected:
            if n not in names:
                raise ValueError(f"fields: {n!r} is not a floating tensor field of {type(state).__name__} ({names})")
        return names, corrected

    def features(self, state, control=None) -> torch.Tensor:
        """(R, F_in) the network's input: the state's tensor fields (and the control) side by side."""
        names, _ = self._tensor_fields(state)
        parts = [getattr(state, n) for n in names]
        rows = parts[0].shape[0]
        for n, p in zip(names, parts):
            if p.dim() != 2 or p.shape[0] != rows:
                raise ValueError(f"state.{n} must have shape ({rows}, k) like the other fields, got {tuple(p.shape)}")
        if control is not None:
            c = control if control.dim() == 2 else control.expand(rows, -1)
            parts.append(c.to(parts[0].dtype))
        return torch.cat(parts, -1)

    def step(self, state, dt: float, control: torch.Tensor | None = None):
        """One step: the base model's step plus ``dt * scale * net(features(state, control))``
        on the corrected fields. ``control`` goes to the base model and into the features."""
        names, corrected = self._tensor_fields(state)
        nxt = state if self.base is None else self.base.step(state, dt, control)
        out = self.net(self.features(state, control))
        widths = [getattr(state, n).shape[-1] for n in corrected]
        if out.dim() != 2 or out.shape[-1] != sum(widths):
            raise ValueError(f"net output must have shape (R, {sum(widths)}) (fields {corrected}), got {tuple(out.shape)}")
        new, i = {}, 0
        for n, w in zip(corrected, widths):
            new[n] = getattr(nxt, n) + (dt * self.scale) * out[:, i:i + w]
            i += w
        return dataclasses.replace(nxt, **new)

    def step_torch(self, state, dt: float, control: torch.Tensor | None = None):
        """Plain-torch twin: the base model's ``step_torch`` (when it has one) plus the correction."""
        if self.base is None or not callable(getattr(self.base, "step_torch", None)):
            return self.step(state, dt, control)
        return dataclasses.replace(self, base=_TorchTwin(self.base)).step(state, dt, control)


@dataclass(frozen=True, eq=False)
class _TorchTwin:
    model: Any

    def step(self, state, dt, control=None):
        return self.model.step_torch(state, dt, control)
