"""The renderer contract: any renderer turns placed frames of a scene into a video.

A renderer is an object with

* ``consumes``: the primitive kinds it draws, a subset of ``("mesh", "points", "volume")``
  (:mod:`diffvc.pipeline.primitives`);
* ``render(scene, frames) -> (T, V, H, W, 3)``: ``frames`` is a list of T
  :class:`~diffvc.pipeline.primitives.FrameGeometry` (one per video frame, from
  :func:`~diffvc.pipeline.video.scene_geometry`), ``scene`` gives the camera rig (V views of
  H x W pixels), the lights and the background. The result is linear RGB, differentiable w.r.t.
  every tensor the frames and the scene hold, each renderer stating its gradient at visibility
  discontinuities.

Renderers are registered by name, so examples and the CLI can say ``--renderer pathtrace``::

    from diffvc.pipeline import register_renderer

    class MyRenderer:
        consumes = ("mesh",)
        def __init__(self, **options): ...
        def render(self, scene, frames): ...   # -> (T, V, H, W, 3)

    register_renderer("mine", MyRenderer)
    render_trajectory(scene, states, renderer="mine", my_option=3)

A renderer adapter lives in :mod:`diffvc.pipeline` (it reads pipeline primitives; the
``diffvc.render`` package stays independent of the pipeline) and calls ``diffvc.render``'s
functions. Built in: ``"raster"`` (:class:`RasterRenderer`, the default) and ``"pathtrace"``
(:class:`PathTraceRenderer`); renderers in other modules of this package are listed in
``_LAZY`` and imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Protocol, Sequence

import torch

from ..geometry.normals import face_normals, vertex_normals
from .primitives import FrameGeometry

__all__ = ["Renderer", "register_renderer", "get_renderer", "available_renderers", "RasterRenderer",
           "PathTraceRenderer"]


class Renderer(Protocol):
    consumes: tuple

    def render(self, scene, frames: Sequence[FrameGeometry]) -> torch.Tensor: ...


_REGISTRY: dict[str, Callable[..., Renderer]] = {}
# name -> module that registers it when imported (renderers that live in their own module)
_LAZY: dict[str, str] = {
    "volume": "diffvc.pipeline.render_volume",
    "splat": "diffvc.pipeline.render_splat",
}


def register_renderer(name: str, factory: Callable[..., Renderer]) -> None:
    """Register ``factory(**options) -> renderer`` under ``name`` (replaces an earlier one)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def available_renderers() -> list[str]:
    """Names :func:`get_renderer` accepts (registered, and those whose module can be imported)."""
    names = set(_REGISTRY)
    for n, mod in _LAZY.items():
        if importlib.util.find_spec(mod) is not None:
            names.add(n)
    return sorted(names)


def get_renderer(renderer="raster", **options) -> Renderer:
    """A renderer from a registered name (built with ``options``) or a renderer object (returned
    as is; ``options`` must then be empty)."""
    if not isinstance(renderer, str):
        if options:
            raise ValueError(f"options {sorted(options)} apply to a renderer name, not to a renderer object")
        if not callable(getattr(renderer, "render", None)) or not hasattr(renderer, "consumes"):
            raise TypeError(f"renderer must be a registered name or an object with consumes and render(scene, "
                            f"frames), got {type(renderer).__name__}")
        return renderer
    if renderer not in _REGISTRY and renderer in _LAZY and importlib.util.find_spec(_LAZY[renderer]) is not None:
        importlib.import_module(_LAZY[renderer])
    if renderer not in _REGISTRY:
        raise ValueError(f"renderer: unknown renderer {renderer!r}; have {available_renderers()}")
    return _REGISTRY[renderer](**options)


def check_consumes(renderer: Renderer, scene, name: str) -> None:
    """Raise naming the first shape whose kind ``renderer`` cannot draw."""
    for s in scene.shapes:
        if s.kind not in renderer.consumes:
            raise ValueError(f"renderer: {name!r} draws {list(renderer.consumes)}, but shape {s.name!r} is "
                             f"{s.kind!r}; choose a renderer that draws it")


def _same_topology(frames: Sequence[FrameGeometry]):
    merged = [f.merged_mesh() for f in frames]
    faces = merged[0][1]
    for m in merged[1:]:
        if m[1].shape != faces.shape or not torch.equal(m[1], faces):
            raise ValueError("frames: the mesh topology changes between frames; render them separately")
    return merged


# --------------------------------------------------------------------------------------------
# rasterizer
# --------------------------------------------------------------------------------------------

class RasterRenderer:
    """Rasterize -> shade -> antialias (:mod:`diffvc.render`), all frames and views in one batch.

    Each frame's meshes are merged, rasterized from every camera of the rig, shaded (flat face
    normals, or interpolated vertex normals for ``smooth`` shapes; each shape's albedo; Lambert
    under the scene's lights via :func:`diffvc.render.shade`, two-sided), composited over the
    background and, with ``antialiased``, passed through :func:`diffvc.render.antialias` (edges at
    the image border blend towards the background, so a shape leaving the frame keeps its
    coverage gradient).

    Gradient contract: inside a shape, exact derivatives of the shading w.r.t. normals,
    positions, albedo, lights and cameras; at silhouettes and occlusion boundaries the
    antialiasing gradient (nvdiffrast's analytic approximation); at a change of which face is
    visible *inside* the silhouette no visibility gradient: for flat shading the image jumps where
    a crease between two front-facing faces of different normals crosses a pixel centre (coplanar
    triangles share a normal and do not jump); smooth shading is continuous there.

    Args:
        antialiased: apply analytic antialiasing (needed for silhouette gradients).
        backend: ``"warp"`` (kernels) or ``"torch"`` (the plain-torch twins).
    """

    consumes = ("mesh",)

    def __init__(self, antialiased: bool = True, backend: str = "warp"):
        if backend not in ("warp", "torch"):
            raise ValueError(f"backend must be 'warp' or 'torch', got {backend!r}")
        self.antialiased, self.backend = bool(antialiased), backend

    def render(self, scene, frames: Sequence[FrameGeometry]) -> torch.Tensor:
        merged = _same_topology(frames)
        faces, face_albedo, smooth = merged[0][1], merged[0][2], merged[0][3]
        verts = torch.stack([m[0] for m in merged])
        topology = None
        if self.antialiased:
            from ..render.antialias import mesh_topology

            topology = mesh_topology(faces.to(torch.int32), verts.shape[1])
        return self._render(scene, verts, faces, face_albedo, smooth, topology)

    def _render(self, scene, verts, faces, face_albedo, smooth, topology) -> torch.Tensor:
        from ..render.interpolate import interpolate
        from ..render.rasterize import rasterize
        from ..render.shading import _shade

        backend = self.backend
        T = verts.shape[0]
        cams = scene.cameras
        if cams.dtype != verts.dtype:
            cams = cams.to(dtype=verts.dtype)
        nv = cams.batch_size
        # batch b = t * V + v: frame t seen by view v
        cams_b = dataclasses.replace(cams, R=cams.R.repeat(T, 1, 1), t=cams.t.repeat(T, 1),
                                     intrinsics=cams.intrinsics.repeat(T, 1))
        verts_b = verts.repeat_interleave(nv, dim=0)
        frags = rasterize(cams_b, verts_b, faces, backend=backend)
        fid = frags.face_id.long()
        hit = (fid >= 0).unsqueeze(-1)
        idx = fid.clamp_min(0)
        # the T frames as one mesh of T disjoint copies: one normals call instead of T (row-wise
        # formulas, so each frame's normals are the same values as a per-frame call's)
        nvt, nf = verts.shape[1], faces.shape[0]
        flat_v = verts.reshape(T * nvt, 3)
        flat_f = (faces.long()[None] + nvt * torch.arange(T, device=faces.device)[:, None, None]).reshape(T * nf, 3)
        n_face = face_normals(flat_v, flat_f).reshape(T, nf, 3).repeat_interleave(nv, dim=0)  # (B, F, 3)
        bidx = torch.arange(idx.shape[0], device=idx.device)[:, None, None]
        normals = n_face[bidx, idx]                             # (B, H, W, 3) flat shading
        if bool(smooth.any()):
            n_vert = vertex_normals(flat_v, flat_f).reshape(T, nvt, 3).repeat_interleave(nv, dim=0)
            ns = interpolate(n_vert, frags, backend=backend)
            ns = ns / ns.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            normals = torch.where(smooth.to(idx.device)[idx].unsqueeze(-1), ns, normals)
        albedo = face_albedo[idx]
        pos = interpolate(verts_b, frags, backend=backend)
        eye = cams_b.centers[:, None, None, :]
        view = eye - pos
        view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # two-sided: flip normals facing away from the camera (thin or open shapes stay lit)
        facing = (normals * view).sum(-1, keepdim=True)
        normals = torch.where(facing < 0, -normals, normals)
        # Lambert only (roughness and f0 unused); inputs correct by construction: the unchecked core
        color = _shade(pos, normals, view, albedo, None, None, list(scene.lights), specular=False)
        bg = scene.background.to(verts.dtype)
        img = torch.where(hit, color, bg.expand_as(color))
        if self.antialiased:
            from ..render.antialias import antialias

            img = antialias(img, frags, topology=topology, backend=backend, background=bg)
        return img.reshape((T, nv) + img.shape[1:])


# --------------------------------------------------------------------------------------------
# path tracer
# --------------------------------------------------------------------------------------------

class PathTraceRenderer:
    """Path tracing (:func:`diffvc.render.path_trace`) of each frame from each view.

    The scene's meshes become diffuse materials of their shape colours; the scene's lights map to
    the path tracer's: :class:`~diffvc.render.DirectionalLight` -> a directional light (its
    ``direction`` is where light travels; irradiance kept), :class:`~diffvc.render.PointLight` -> a
    point light; the background colour becomes a constant environment (the sky, seen directly
    and lighting the scene), so :class:`~diffvc.render.AmbientLight` is not added again (its
    role is the sky's); other light types raise.

    Gradient contract (see :func:`diffvc.render.path_trace`): colours, lights and the background
    by path replay; vertex positions -- hence everything a simulation feeds them -- by the
    primary-visibility boundary term (``edge_samples`` edge samples per view), the
    secondary-visibility term at camera-ray hits (``secondary_spp``; moving shadows) and the
    interior term (``interior_spp``). All estimates are Monte Carlo: fix ``seed`` for common
    random numbers between a target and an estimate (each frame and view uses ``seed`` + its index).

    Args:
        spp, max_depth, rr_depth: samples per pixel, bounces, Russian-roulette start.
        edge_samples, edge_spp, secondary_spp, interior_spp: the geometry-gradient estimators of
            :func:`diffvc.render.path_trace`.
        seed: base random seed.
    """

    consumes = ("mesh",)

    def __init__(self, spp: int = 16, max_depth: int = 3, rr_depth: int = 5, edge_samples: int = 4096,
                 edge_spp: int = 2, secondary_spp: int = 1, interior_spp: int = 0, seed: int = 0):
        for name, v, lo in (("spp", spp, 1), ("max_depth", max_depth, 0), ("rr_depth", rr_depth, 0),
                            ("edge_samples", edge_samples, 0), ("edge_spp", edge_spp, 1),
                            ("secondary_spp", secondary_spp, 0), ("interior_spp", interior_spp, 0), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.opts = dict(spp=spp, max_depth=max_depth, rr_depth=rr_depth, edge_samples=edge_samples,
                         edge_spp=edge_spp, secondary_spp=secondary_spp, interior_spp=interior_spp)
        self.seed = seed

    def _lights(self, scene, dtype):
        from ..render.lights import AmbientLight, DirectionalLight, PointLight

        points, dirs = [], []
        for i, light in enumerate(scene.lights):
            if isinstance(light, DirectionalLight):
                dirs.append((-light.direction.to(dtype), light.irradiance_value.to(dtype)))
            elif isinstance(light, PointLight):
                points.append((light.position.to(dtype), light.intensity.to(dtype)))
            elif not isinstance(light, AmbientLight):
                raise ValueError(f"scene.lights[{i}]: the path tracer has no counterpart of {type(light).__name__}")
        return points or None, dirs or None

    def render(self, scene, frames: Sequence[FrameGeometry]) -> torch.Tensor:
        from ..render.pathtrace import path_trace
        from ..render.pt_scene import PathTracingScene, PTMaterial

        out = []
        for t, frame in enumerate(frames):
            if not frame.meshes:
                raise ValueError("frames: the path tracer needs at least one mesh shape")
            dtype = frame.merged_mesh()[0].dtype
            device = frame.meshes[0].verts.device
            materials = [PTMaterial("diffuse", m.color.to(dtype)) for m in frame.meshes]
            meshes = [(m.verts, m.faces, k) for k, m in enumerate(frame.meshes)]
            points, dirs = self._lights(scene, dtype)
            env = scene.background.to(dtype).reshape(1, 1, 3)
            pts = PathTracingScene.from_meshes(meshes, materials, point_lights=points, directional_lights=dirs,
                                               environment=env, dtype=dtype, device=device)
            cams = scene.cameras.to(dtype=dtype) if scene.cameras.dtype != dtype else scene.cameras
            views = [path_trace(pts, cams[v], seed=self.seed + 1000 * t + v, **self.opts)
                     for v in range(cams.batch_size)]
            out.append(torch.stack(views))
        return torch.stack(out)


register_renderer("raster", RasterRenderer)
register_renderer("pathtrace", PathTraceRenderer)
