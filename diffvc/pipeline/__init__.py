"""The glue between stages: a scene (shapes, bodies, cameras, lights), bindings from simulated
states to render primitives, and the renderer contract that turns a trajectory into a video."""

from .binding import RigidBinding, SoftBinding, StaticBinding, rigid_vertices, soft_vertices
from .primitives import FrameGeometry, MeshItem, Points, Volume
from .renderers import (PathTraceRenderer, RasterRenderer, Renderer, available_renderers, get_renderer,
                        register_renderer)
from .scene import Scene, Shape, traverse
from .video import render_frame, render_trajectory, scene_geometry

__all__ = ["Scene", "Shape", "traverse", "RigidBinding", "SoftBinding", "StaticBinding", "rigid_vertices",
           "soft_vertices", "FrameGeometry", "MeshItem", "Points", "Volume", "Renderer", "RasterRenderer",
           "PathTraceRenderer", "register_renderer", "get_renderer", "available_renderers", "render_frame",
           "render_trajectory", "scene_geometry"]
