"""Rendering simulated trajectories to video tensors, differentiably.

One frame: every shape of the scene is placed by its binding (rigid pose, FEM nodes, static),
the shapes are merged into one mesh, rasterized from every camera of the rig
(:func:`diffvc.render.rasterize`), shaded (flat face normals, or interpolated vertex normals for
``smooth`` shapes; each shape's albedo; Lambert under
the scene's lights via :func:`diffvc.render.shade`), composited over the background and passed
through :func:`diffvc.render.antialias`, whose analytic edge antialiasing turns silhouette and
occlusion edges into gradients w.r.t. the vertex positions. A trajectory (one state per physics
step, or per recorded frame) becomes a video ``(T, V, H, W, 3)``: T frames, V camera views,
linear RGB; with ``every=k`` only every k-th state is rendered (physics and rendering at
different rates).

Gradient contract: inside a shape, exact derivatives of the shading w.r.t. normals, positions,
albedo, lights and cameras; at silhouettes and occlusion boundaries, the antialiasing gradient
(nvdiffrast's analytic approximation; see :func:`diffvc.render.antialias`); at a change of which
face is visible *inside* the silhouette no visibility gradient: for flat shading the image jumps
where a crease between two front-facing faces of different normals crosses a pixel centre (the
loss is piecewise smooth; coplanar triangles share a normal and do not jump); smooth shading is
continuous there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from ..geometry.normals import face_normals, vertex_normals
from .scene import Scene

__all__ = ["scene_mesh", "render_frame", "render_trajectory"]


def _state_for(state: Any, body: str | None):
    if body is not None and isinstance(state, dict):
        if body not in state:
            raise KeyError(f"state: no entry for body {body!r}; have {sorted(state)}")
        return state[body]
    return state


def scene_mesh(scene: Scene, state: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the scene's shapes, placed for ``state``, into one mesh.

    Args:
        scene: the :class:`~diffvc.pipeline.Scene`.
        state: a simulator state (passed to every binding) or a dict ``{body: state}`` (each shape
            gets the state of its ``body``).

    Returns:
        ``verts (N, 3)``, ``faces (F, 3)`` long, ``face_albedo (F, 3)`` (each face's shape colour).
        Use :func:`face_smooth` for the faces' shading mode.
    """
    if not scene.shapes:
        raise ValueError("scene has no shapes")
    verts, faces, albedo = [], [], []
    n = 0
    for s in scene.shapes:
        v = s.binding(_state_for(state, s.body))
        if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.shape[1] != 3:
            raise ValueError(f"binding of shape {s.name!r} must return (V, 3) vertices, got "
                             f"{tuple(getattr(v, 'shape', ()))}")
        if s.faces.numel() and int(s.faces.max()) >= v.shape[0]:
            raise ValueError(f"faces of shape {s.name!r} index past its {v.shape[0]} vertices")
        verts.append(v)
        faces.append(s.faces + n)
        albedo.append(s.color.to(v.dtype).expand(s.faces.shape[0], 3))
        n += v.shape[0]
    dtype = torch.promote_types(*(v.dtype for v in verts)) if len(verts) > 1 else verts[0].dtype
    return torch.cat([v.to(dtype) for v in verts]), torch.cat(faces), torch.cat([a.to(dtype) for a in albedo])


def face_smooth(scene: Scene) -> torch.Tensor:
    """``(F,)`` bool: which faces of :func:`scene_mesh` are shaded smooth (per their shape)."""
    return torch.cat([torch.full((s.faces.shape[0],), bool(s.smooth), device=s.faces.device) for s in scene.shapes])


def render_frame(scene: Scene, state: Any, antialiased: bool = True, backend: str = "warp",
                 topology=None) -> torch.Tensor:
    """Render ``state`` from every camera of the rig: ``(V, H, W, 3)`` linear RGB.

    Args:
        scene: shapes, cameras, lights, background.
        state: simulator state (or ``{body: state}``) handed to the bindings.
        antialiased: apply :func:`diffvc.render.antialias` (needed for silhouette gradients).
        backend: the rasterizer's backend, ``"warp"`` (kernels) or ``"torch"`` (plain-torch twin).
        topology: :func:`diffvc.render.antialias.mesh_topology` of the merged mesh (computed when
            ``None``).
    """
    verts, faces, face_albedo = scene_mesh(scene, state)
    return _render(scene, verts[None], faces, face_albedo, antialiased, backend, topology)[0]


def _render(scene: Scene, verts: torch.Tensor, faces: torch.Tensor, face_albedo: torch.Tensor, antialiased: bool,
            backend: str, topology) -> torch.Tensor:
    """Frames ``verts (T, N, 3)`` of one mesh, all views in ONE rasterizer batch: ``(T, V, H, W, 3)``."""
    from ..render.interpolate import interpolate
    from ..render.rasterize import rasterize
    from ..render.shading import Material, shade

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
    n_face = torch.stack([face_normals(v, faces) for v in verts]).repeat_interleave(nv, dim=0)  # (B, F, 3)
    bidx = torch.arange(idx.shape[0], device=idx.device)[:, None, None]
    normals = n_face[bidx, idx]                             # (B, H, W, 3) flat shading
    smooth = face_smooth(scene)
    if bool(smooth.any()):
        n_vert = torch.stack([vertex_normals(v, faces) for v in verts]).repeat_interleave(nv, dim=0)
        ns = interpolate(n_vert, frags, backend=backend)
        ns = ns / ns.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normals = torch.where(smooth[idx].unsqueeze(-1), ns, normals)
    albedo = face_albedo[idx]
    pos = interpolate(verts_b, frags, backend=backend)
    eye = cams_b.centers[:, None, None, :]
    view = eye - pos
    view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # two-sided: flip normals facing away from the camera (thin or open shapes stay lit)
    facing = (normals * view).sum(-1, keepdim=True)
    normals = torch.where(facing < 0, -normals, normals)
    mat = Material(albedo, torch.ones_like(albedo[..., :1]), torch.zeros_like(albedo))
    color = shade(pos, normals, view, mat, list(scene.lights), specular=False)
    bg = scene.background.to(verts.dtype)
    img = torch.where(hit, color, bg.expand_as(color))
    if antialiased:
        from ..render.antialias import antialias

        img = antialias(img, frags, topology=topology, backend=backend)
    return img.reshape((T, nv) + img.shape[1:])


def render_trajectory(scene: Scene, states: Sequence[Any], every: int = 1, antialiased: bool = True,
                      backend: str = "warp") -> torch.Tensor:
    """Render a trajectory to a video tensor ``(T, V, H, W, 3)``.

    Args:
        scene: the scene (its bindings read each state).
        states: a sequence of simulator states (e.g. ``rollout(..., record=True)[1]``), or of
            dicts ``{body: state}`` for scenes with several simulations.
        every: render every ``every``-th state (states ``0, k, 2k, ...``), so physics can run at
            a finer rate than the video.
        antialiased, backend: see :func:`render_frame`.

    Returns:
        ``(T, V, H, W, 3)`` with ``T = ceil(len(states) / every)``; differentiable w.r.t. every
        tensor the states and the scene depend on (physical parameters, initial conditions,
        colours, lights, cameras). All frames and views go through the rasterizer as one batch.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    states = list(states)
    if not states:
        raise ValueError("states is empty")
    meshes = [scene_mesh(scene, s) for s in states[::every]]
    faces, face_albedo = meshes[0][1], meshes[0][2]
    verts = torch.stack([m[0] for m in meshes])
    topology = None
    if antialiased:
        from ..render.antialias import mesh_topology

        # shape topology is fixed over a trajectory: one adjacency for every frame
        topology = mesh_topology(faces.to(torch.int32), verts.shape[1])
    return _render(scene, verts, faces, face_albedo, antialiased, backend, topology)
