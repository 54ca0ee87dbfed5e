"""Differentiable physics: states, models, steps and rollouts."""

from .particles import ParticleModel, ParticleState, particle_step, particle_step_torch
from .rollout import flatten_state, rollout, rollout_jvp, unflatten_state

__all__ = [
    "ParticleModel",
    "ParticleState",
    "particle_step",
    "particle_step_torch",
    "rollout",
    "rollout_jvp",
    "flatten_state",
    "unflatten_state",
]
