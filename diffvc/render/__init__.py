"""Differentiable rendering: cameras, rasterization (rasterize, interpolate, antialias, texture,
soft silhouettes), shading (BRDFs, lights), ray and path tracing."""

from .cameras import Cameras, focal_from_fov, generate_rays, look_at, sphere_eyes

__all__ = ["Cameras", "look_at", "focal_from_fov", "generate_rays", "sphere_eyes"]
