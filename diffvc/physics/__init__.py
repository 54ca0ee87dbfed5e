"""Differentiable physics: states, models, steps and rollouts."""

from .particles import ParticleModel, ParticleState, particle_step, particle_step_torch
from .rollout import flatten_state, rollout, rollout_jvp, unflatten_state
from .springs import (SpringModel, SpringStep, spring_forces_torch, spring_step, spring_step_torch,
                      springs_from_mesh)
from .rigid import RigidBodyModel, RigidBodyState, apply_impulse, rigid_step, rigid_step_torch
from .fem import (FEMModel, FEMState, fem_implicit_step, fem_static_solve, fem_step, fem_step_torch,
                  lame_parameters)

__all__ = [
    "ParticleModel",
    "ParticleState",
    "particle_step",
    "particle_step_torch",
    "rollout",
    "rollout_jvp",
    "flatten_state",
    "unflatten_state",
    "SpringModel",
    "SpringStep",
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
]
