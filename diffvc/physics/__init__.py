"""Differentiable physics: states, models, steps and rollouts."""

from .particles import ParticleModel, ParticleState, particle_step, particle_step_torch
from .rollout import flatten_state, rollout, rollout_jvp, unflatten_state
from .springs import (SpringModel, SpringStep, spring_forces_torch, spring_step, spring_step_torch,
                      springs_from_mesh)

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
]
