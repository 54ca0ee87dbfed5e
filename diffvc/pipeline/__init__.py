"""The glue between stages: a scene (shapes, bodies, cameras, lights), bindings from simulated
states to render geometry, and rendering a trajectory to a video."""

from .binding import RigidBinding, SoftBinding, StaticBinding, rigid_vertices, soft_vertices
from .scene import Scene, Shape, traverse

__all__ = ["Scene", "Shape", "traverse", "RigidBinding", "SoftBinding", "StaticBinding", "rigid_vertices",
           "soft_vertices"]
