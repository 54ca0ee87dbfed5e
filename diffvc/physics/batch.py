"""Batched simulation: many independent environments of one model in one kernel launch per step.

:func:`batch_model` replicates a model's topology ``n_envs`` times into ONE flat model of the same
class -- particles, springs, bodies, collision points, tets, faces, hinges and pins of environment
``e`` are those of the single model shifted by ``e`` times its counts, and every index array
(springs, tets, faces, hinges, pins, point_body, rigid contact pairs) is offset accordingly -- and
wraps it in a :class:`BatchedModel`. Each step of the batch is then the model's own step on the
flat model: every Warp kernel (and a fused segment, for models that have one) runs once per step
over all environments. Nothing in the kernels changes, and environments cannot interact: every
force is computed from an index array whose entries stay inside one environment's block (rigid
sphere-sphere contact, for example, only tests the pairs of the model, offset into each
environment; plane/obstacle contact is per particle or point).

States carry a leading environment axis: a batched state is the model's state class with every
tensor ``(B, ...)`` (e.g. :class:`~diffvc.physics.ParticleState` with ``x, v`` of shape
``(B, N, 3)``); :func:`batch_state` builds one from a single state (copied) or a list of states,
:func:`unbatch` splits it. A :class:`BatchedModel` follows the simulator contract
(:mod:`diffvc.physics`): ``step(state, dt, control)`` with ``control`` the model's control with a
leading ``(B, ...)`` axis (springs: actuation ``(B, S)``; particles / FEM: forces ``(B, N, 3)``;
rigid: wrenches ``(B, nb, 6)``; cloth: pin targets ``(B, P, 3)``), ``step_torch`` and ``segment``
when the model has them, so :func:`~diffvc.physics.rollout` (checkpointing, truncation,
controllers that map a batched state to a batched control, observations) works unchanged.

Per-environment parameters. ``batch_model(model, B, mass=m)`` with ``m`` of shape
``(B, *field.shape)`` (one value per item and environment) or ``(B, *field.shape[1:])`` (one value
per environment, broadcast over the items; e.g. ``(B,)`` for the ``(N,)`` masses) replaces that
field in every environment; the flat field is a reshape of ``m``, so gradients flow back to ``m``
and row ``e`` of ``m.grad`` is environment ``e``'s gradient. Fields not given are shared (a
gradient with respect to a shared tensor sums over environments). Per-item and per-element fields
can vary per environment; the fields the kernels read as ONE value for the whole model (contact
planes, contact parameters, gravity, damping, cloth obstacles) cannot, and naming one raises a
``ValueError`` (varying them per environment needs an environment index in the kernels).

Gradient: the batched step is the same arithmetic as the single-environment step on each block,
so the gradient of ``sum_e loss_e`` with respect to environment ``e``'s state and parameters
equals the gradient of ``loss_e`` for that environment alone (tests: float64, 1e-10 against a
loop over environments), with the contact-onset conventions of each model.

Supported: :class:`~diffvc.physics.ParticleModel`, :class:`~diffvc.physics.SpringModel`,
:class:`~diffvc.physics.RigidBodyModel`, :class:`~diffvc.physics.FEMModel`,
:class:`~diffvc.physics.ClothModel` (without obstacles attached to rigid bodies: their
``RigidBodyState`` control has no environment axis, so such a cloth is refused with a
``ValueError``). Grid solvers (:class:`~diffvc.physics.MPMModel`,
:class:`~diffvc.physics.SmokeModel`) are not: their environments would share one grid (MPM
particle-to-grid transfer and the smoke pressure solve would couple them); batch those by an
environment axis in the grid kernels. :class:`~diffvc.physics.ArticulatedModel` keeps its tree
topology in Python tuples and is not batched here either.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from .._validate import as_tensor
from .cloth import ClothModel
from .fem import FEMModel
from .particles import ParticleModel
from .rigid import RigidBodyModel
from .springs import SpringModel

__all__ = ["BatchedModel", "batch_model", "batch_state", "unbatch", "batchable"]

# Field kinds of each batchable model: ("per", dim) one row per item of dimension ``dim``;
# ("index", rows_dim, target_dim) an index array with one row per ``rows_dim`` item pointing at
# ``target_dim`` items (offset per environment); ("scalar_or_per", dim) a scalar shared by every
# item or one value per ``dim`` item; "global": one value for the whole model (shared).
_G = "global"
_SPECS: dict[type, dict[str, object]] = {
    ParticleModel: {"mass": ("per", "N"), "radius": ("per", "N"), "planes": _G, "contact": _G, "gravity": _G},
    SpringModel: {"mass": ("per", "N"), "radius": ("per", "N"), "springs": ("index", "S", "N"),
                  "rest": ("per", "S"), "ke": ("per", "S"), "kd": ("per", "S"), "gain": ("per", "S"),
                  "planes": _G, "contact": _G, "gravity": _G},
    RigidBodyModel: {"mass": ("per", "B"), "inertia": ("per", "B"), "points": ("per", "P"),
                     "point_body": ("index", "P", "B"), "point_radius": ("per", "P"),
                     "pairs": ("index", "C", "P"), "planes": _G, "contact": _G, "pair_contact": _G,
                     "gravity": _G, "damping": _G},
    FEMModel: {"rest": ("per", "N"), "tets": ("index", "T", "N"), "Dm_inv": ("per", "T"), "volume": ("per", "T"),
               "mass": ("per", "N"), "lame": ("per", "T"), "damping": _G, "gravity": _G, "planes": _G,
               "contact": _G, "pinned": ("per", "N")},
    ClothModel: {"faces": ("index", "F", "V"), "hinges": ("index", "H", "V"), "Dm_inv": ("per", "F"),
                 "area": ("per", "F"), "hinge_rest": ("per", "H"), "hinge_weight": ("per", "H"),
                 "mass": ("per", "V"), "pins": ("index", "P", "V"), "mu": ("scalar_or_per", "F"),
                 "lam": ("scalar_or_per", "F"), "kb": ("scalar_or_per", "H"), "damping": _G, "gravity": _G,
                 "thickness": _G, "planes": _G, "spheres": _G, "boxes": _G, "contact": _G},
}

_WHY_NOT = {
    "MPMModel": "its environments would share one MPM grid (particle-to-grid transfers would couple them)",
    "SmokeModel": "its environments would share one grid and one pressure solve",
    "ArticulatedModel": "its tree topology lives in Python tuples, not in offsettable index arrays",
}


def batchable(model) -> bool:
    """Whether :func:`batch_model` supports ``model``: its class, and for a cloth no obstacles
    attached to rigid bodies."""
    return type(model) in _SPECS and not (isinstance(model, ClothModel) and model.has_bodies)


def _spec(model) -> dict:
    spec = _SPECS.get(type(model))
    if spec is None:
        name = type(model).__name__
        why = _WHY_NOT.get(name, "it is not one of " + ", ".join(c.__name__ for c in _SPECS))
        raise TypeError(f"model: batch_model cannot batch a {name}: {why}")
    if isinstance(model, ClothModel) and model.has_bodies:
        raise ValueError("model: batch_model cannot batch a ClothModel with obstacles attached to rigid bodies "
                         "(body_spheres / body_boxes): every step takes one RigidBodyState of those bodies, which "
                         "the flat model would share across environments instead of offsetting per environment; "
                         "batch a cloth without body obstacles (static spheres / boxes are fine) or step the "
                         "environments one by one")
    return spec


def _counts(model, spec) -> dict[str, int]:
    """Item counts per dimension name (N particles, S springs, ...) read from the model's fields."""
    counts: dict[str, int] = {}
    for name, kind in spec.items():
        if kind == _G:
            continue
        t = getattr(model, name)
        if kind[0] in ("per", "index"):
            counts.setdefault(kind[1], t.shape[0])
    return counts


def _check_n(n_envs) -> int:
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an int >= 1, got {n_envs!r}")
    return n_envs


def batch_model(model, n_envs: int, **per_env) -> "BatchedModel":
    """``n_envs`` independent copies of ``model`` as one :class:`BatchedModel`.

    Args:
        model: a single-environment model (:func:`batchable`).
        n_envs: number of environments B (>= 1).
        **per_env: per-environment values of the model's per-item fields, each ``(B,
            *field.shape)`` or ``(B, *field.shape[1:])`` (broadcast over the field's items), e.g.
            ``mass=(B, N)`` or ``mass=(B,)``, ``ke=(B, S)``, ``lame=(B, T, 2)``; cloth ``mu``,
            ``lam``, ``kb`` also take ``(B,)``. Tensors keep their autograd history (gradients
            reach them per environment). Index fields (topology) and the model-wide fields
            (planes, contact, gravity, damping, obstacles) are shared by every environment.

    Returns:
        a :class:`BatchedModel` whose ``model`` is the flat model (counts multiplied by B).
    """
    spec = _spec(model)
    b = _check_n(n_envs)
    counts = _counts(model, spec)
    for name in per_env:
        if name not in spec:
            raise ValueError(f"{name}: not a field of {type(model).__name__} (fields: {', '.join(spec)})")
        kind = spec[name]
        if kind == _G:
            raise ValueError(f"{name}: {type(model).__name__}'s kernels read one {name} for the whole model, so it "
                             f"cannot vary per environment (give it in the model; per-environment {name} needs an "
                             f"environment index in the kernels)")
        if kind[0] == "index":
            raise ValueError(f"{name}: the topology is shared by every environment (batch models of one topology)")
    ref = next(getattr(model, k) for k, kind in spec.items() if kind != _G and getattr(model, k).is_floating_point())
    changes = {}
    for name, kind in spec.items():
        t = getattr(model, name)
        if kind == _G:
            continue
        if kind[0] == "index":
            offs = torch.arange(b, dtype=t.dtype, device=t.device) * counts[kind[2]]
            changes[name] = (t.unsqueeze(0) + offs.reshape(b, *([1] * t.dim()))).reshape(b * t.shape[0],
                                                                                        *t.shape[1:])
            continue
        v = per_env.get(name)
        if kind[0] == "scalar_or_per" and t.dim() == 0:
            item_shape = (counts[kind[1]],) if v is not None else ()
            if v is None:
                continue  # a shared scalar stays a scalar
            t = t.expand(item_shape)
        if v is None:
            changes[name] = t.unsqueeze(0).expand(b, *t.shape).reshape(b * t.shape[0], *t.shape[1:])
            continue
        v = as_tensor(v, name, dtype=None if t.dtype == torch.bool else t.dtype, device=t.device,
                      floating=t.dtype != torch.bool)
        if t.dtype == torch.bool:
            v = v.to(torch.bool)
        elif v.dtype != ref.dtype:
            raise TypeError(f"{name}: dtype {v.dtype} differs from the model's {ref.dtype}")
        if tuple(v.shape) == (b, *t.shape):
            pass
        elif tuple(v.shape) == (b, *t.shape[1:]):
            v = v.unsqueeze(1).expand(b, *t.shape)
        else:
            raise ValueError(f"{name}: per-environment values must have shape {(b, *t.shape)} or "
                             f"{(b, *t.shape[1:])}, got {tuple(v.shape)}")
        changes[name] = v.reshape(b * t.shape[0], *t.shape[1:])
    return BatchedModel(dataclasses.replace(model, **changes), b)


def _merge(t: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[0] != b:
        raise ValueError(f"{name}: a batched tensor needs a leading axis of the {b} environments and an item axis, "
                         f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t.reshape(b * t.shape[1], *t.shape[2:])


def _map_state(state, fn):
    if isinstance(state, torch.Tensor):
        return fn(state, "state")
    if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        raise TypeError(f"state must be a state dataclass of tensors, got {type(state).__name__}")
    kw = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        kw[f.name] = fn(v, f"state.{f.name}") if isinstance(v, torch.Tensor) else v
    return type(state)(**kw)


@dataclass(frozen=True)
class BatchedModel:
    """B independent environments of one model (see the module doc); follows the simulator contract.

    model: the flat model (every per-item field has ``B`` times the items, index arrays offset);
    n_envs: B. States and controls carry a leading ``(B, ...)`` axis.
    """

    model: object
    n_envs: int

    def __post_init__(self):
        _spec(self.model)
        _check_n(self.n_envs)
        counts = _counts(self.model, _spec(self.model))
        bad = {k: c for k, c in counts.items() if c % self.n_envs}
        if bad:
            raise ValueError(f"model: item counts {bad} are not multiples of n_envs={self.n_envs}")

    @property
    def counts(self) -> dict[str, int]:
        """Items per environment, by dimension name (e.g. ``{"N": 20, "S": 63}`` for springs)."""
        return {k: c // self.n_envs for k, c in _counts(self.model, _spec(self.model)).items()}

    def flatten(self, state):
        """A batched state ``(B, n, ...)`` as the flat model's state ``(B n, ...)`` (views)."""
        return _map_state(state, lambda t, name: _merge(t, self.n_envs, name))

    def split(self, state):
        """The flat model's state ``(B n, ...)`` as a batched state ``(B, n, ...)`` (views)."""
        b = self.n_envs
        return _map_state(state, lambda t, name: t.reshape(b, t.shape[0] // b, *t.shape[1:]))

    def _control(self, control):
        return None if control is None else _merge(control, self.n_envs, "control")

    def step(self, state, dt: float, control=None):
        """Simulator contract: the model's ``step`` on every environment at once. ``state``: the
        model's state with ``(B, ...)`` tensors; ``control``: the model's control with a leading
        ``(B, ...)`` axis, or None. Returns the new batched state."""
        return self.split(self.model.step(self.flatten(state), dt, self._control(control)))

    def step_torch(self, state, dt: float, control=None):
        """Plain-torch twin of :meth:`step` (the model's ``step_torch`` on the flat model)."""
        twin = getattr(self.model, "step_torch", None)
        if not callable(twin):
            raise TypeError(f"backend='torch': {type(self.model).__name__} has no step_torch twin")
        return self.split(twin(self.flatten(state), dt, self._control(control)))

    @property
    def segment(self):
        """The model's fused ``segment(state, dt, n, control=None, recompute=False,
        return_all=False)`` on the batch (``None`` when the model has none, so
        :func:`~diffvc.physics.rollout` steps instead)."""
        seg = getattr(self.model, "segment", None)
        if not callable(seg):
            return None
        return functools.partial(self._segment, seg)

    def _segment(self, seg, state, dt, n, control=None, recompute=False, return_all=False):
        final, states = seg(self.flatten(state), dt, n, control=self._control(control), recompute=recompute,
                            return_all=return_all)
        return self.split(final), [self.split(s) for s in states]

    def env_model(self, e: int):
        """Environment ``e``'s single model (slices of the flat fields, so gradients reach the
        batched parameters; index arrays shifted back)."""
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.n_envs:
            raise ValueError(f"e must be an environment index in [0, {self.n_envs}), got {e!r}")
        spec, counts = _spec(self.model), self.counts
        changes = {}
        for name, kind in spec.items():
            t = getattr(self.model, name)
            if kind == _G or (kind[0] == "scalar_or_per" and t.dim() == 0):
                continue
            n = counts[kind[1]]
            block = t[e * n:(e + 1) * n]
            changes[name] = block - e * counts[kind[2]] if kind[0] == "index" else block
        return dataclasses.replace(self.model, **changes)


def batch_state(state, n_envs: int | None = None):
    """A batched state: ``state`` (one environment's) copied into ``n_envs`` environments, or a
    list of single-environment states stacked (``n_envs`` None or their number). Tensors keep
    their autograd history (a copied state's gradient sums over environments)."""
    if isinstance(state, (list, tuple)) and not isinstance(state, torch.Tensor):
        if not state:
            raise ValueError("state: need at least one environment's state")
        if n_envs is not None and _check_n(n_envs) != len(state):
            raise ValueError(f"n_envs={n_envs} but {len(state)} states were given")
        first = state[0]
        if any(type(s) is not type(first) for s in state):
            raise TypeError("state: every environment's state must be of one class")
        kw = {}
        for f in dataclasses.fields(first):
            v = getattr(first, f.name)
            kw[f.name] = torch.stack([getattr(s, f.name) for s in state]) if isinstance(v, torch.Tensor) else v
        return type(first)(**kw)
    if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        raise TypeError(f"state must be a state dataclass or a list of them, got {type(state).__name__}")
    b = _check_n(n_envs)
    return _map_state(state, lambda t, name: t.unsqueeze(0).expand(b, *t.shape).clone())


def unbatch(state) -> list:
    """A batched state ``(B, ...)`` as a list of B single-environment states (views)."""
    if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
        raise TypeError(f"state must be a state dataclass of tensors, got {type(state).__name__}")
    tensors = [getattr(state, f.name) for f in dataclasses.fields(state)
               if isinstance(getattr(state, f.name), torch.Tensor)]
    if not tensors:
        raise ValueError("state: no tensors to split")
    b = tensors[0].shape[0]
    return [_map_state(state, lambda t, name, e=e: t[e]) for e in range(b)]
