"""Differentiable physics: states, models, steps and rollouts."""

from .particles import ParticleModel, ParticleState, particle_step, particle_step_torch

__all__ = ["ParticleModel", "ParticleState", "particle_step", "particle_step_torch"]
