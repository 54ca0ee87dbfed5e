"""Differentiable physics: states, models, steps and rollouts.

The simulator contract
----------------------
Every simulator in diffvc (and any a user adds) is three things:

* a **model**: a frozen dataclass of the topology and parameters (masses, stiffnesses, friction,
  contact planes ...), tensors that may require grad; it validates itself in ``__post_init__`` or
  ``validate()``;
* a **state**: a frozen dataclass of the tensors that change (positions, velocities, ...);
* ``model.step(state, dt, control=None) -> state``: advance by ``dt`` seconds and return a NEW
  state (nothing is mutated). ``control`` is the model's input for the step, documented in its
  ``step`` docstring (``None``: none): :class:`ParticleModel` an external force ``(N, 3)``,
  :class:`SpringModel` an actuation ``(S,)``, :class:`RigidBodyModel` a wrench ``(B, 6)``,
  :class:`FEMModel` nodal forces ``(N, 3)``, :class:`ArticulatedModel` actuator inputs / joint
  forces ``(B, nu)``.

Optional capabilities, used when present and never required:

* ``model.step_torch(state, dt, control=None)``: the plain-torch twin (same function; tests,
  benchmarks, forward mode via ``rollout(..., backend="torch")``);
* ``model.segment(state, dt, n, control=None, recompute=False, return_all=False) ->
  (state, states)``: ``n`` steps fused in one kernel segment (one autograd node); :func:`rollout`
  uses it when present. Particles, springs, rigid bodies, explicit FEM, 2-D smoke and MPM have
  one (the bridge's ``segment_op`` builds one from a solver's fixed sequence of launches).
* ``model.segment_workspace()`` and ``segment(..., workspace=ws)``: scratch buffers (and
  recorded launches) allocated once per rollout and reused by every segment and its recompute, so
  a long rollout's memory does not grow with its length; :func:`rollout` passes one when the model
  offers it (the spring solver does).

:func:`step` calls the contract; :func:`rollout` rolls any such model out (checkpointing,
truncation, controllers, substeps, observations), and also accepts a plain callable
``step(state) -> state``. The pipeline (:mod:`diffvc.pipeline`) renders any model's states through
bindings, so a new solver is a new module with a model, a state and a ``step`` -- nothing else
changes.
"""

from .._lazy import lazy_exports
from .particles import ParticleModel, ParticleState, particle_step, particle_step_torch
from .rollout import flatten_state, rollout, rollout_jvp, step, unflatten_state

# The other solvers load on first use (PEP 562): ``from diffvc.physics import FEMModel`` works as
# before, but a command that uses only particles does not import (and load the Warp kernels of)
# every solver -- that took ~0.7 s CPU of every ``diffvc run``.
_LAZY = {
    "springs": ("SpringModel", "spring_forces_torch", "spring_step", "spring_step_torch", "springs_from_mesh"),
    "rigid": ("RigidBodyModel", "RigidBodyState", "apply_impulse", "rigid_step", "rigid_step_torch"),
    "fem": ("FEMModel", "FEMState", "fem_implicit_step", "fem_static_solve", "fem_step", "fem_step_torch",
            "lame_parameters"),
    "mpm": ("MPMModel", "MPMState"),
    "cloth": ("ClothControl", "ClothModel", "ClothState", "cloth_hinges"),
    "smoke": ("SmokeModel", "SmokeState"),
    "articulated": ("ArticulatedModel", "ArticulatedState", "ArticulationBuilder"),
    "mjcf": ("load_mjcf",),
    "urdf": ("load_urdf",),
    "batch": ("BatchedModel", "batch_model", "batch_state", "unbatch"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = [
    "ParticleModel",
    "ParticleState",
    "particle_step",
    "particle_step_torch",
    "step",
    "rollout",
    "rollout_jvp",
    "flatten_state",
    "unflatten_state",
    "SpringModel",
    "spring_step",
    "spring_step_torch",
    "spring_forces_torch",
    "springs_from_mesh",
    "RigidBodyModel",
    "RigidBodyState",
    "rigid_step",
    "rigid_step_torch",
    "apply_impulse",
    "FEMModel",
    "FEMState",
    "fem_step",
    "fem_step_torch",
    "fem_implicit_step",
    "fem_static_solve",
    "lame_parameters",
    "MPMModel",
    "MPMState",
    "ClothModel",
    "ClothState",
    "ClothControl",
    "cloth_hinges",
    "SmokeModel",
    "SmokeState",
    "ArticulatedModel",
    "ArticulatedState",
    "ArticulationBuilder",
    "load_mjcf",
    "load_urdf",
    "BatchedModel",
    "batch_model",
    "batch_state",
    "unbatch",
]
