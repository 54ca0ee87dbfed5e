"""Rendering simulated trajectories to video tensors, differentiably, with any renderer.

One frame: every shape of the scene is placed by its binding (:func:`scene_geometry`: rigid
pose, FEM nodes, particles, grids, static) into a :class:`~diffvc.pipeline.primitives.FrameGeometry`;
a renderer (the renderer contract, :mod:`diffvc.pipeline.renderers`) turns the list of frames
into a video ``(T, V, H, W, 3)``: T frames, V camera views, linear RGB. With ``every=k`` only
every k-th state is rendered (physics and rendering at different rates). Gradients follow the
chosen renderer's contract (the rasterizer's: :class:`~diffvc.pipeline.renderers.RasterRenderer`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .._validate import check_faces, check_float
from .binding import RigidBinding, SoftBinding, StaticBinding
from .primitives import FrameGeometry, MeshItem, Points, Volume
from .renderers import check_consumes, get_renderer
from .scene import Scene

__all__ = ["scene_geometry", "render_frame", "render_trajectory"]


def _state_for(state: Any, body: str | None):
    if body is not None and isinstance(state, dict):
        if body not in state:
            raise KeyError(f"state: no entry for body {body!r}; have {sorted(state)}")
        return state[body]
    return state


def _mesh(s, v) -> MeshItem:
    if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.shape[1] != 3:
        raise ValueError(f"binding of shape {s.name!r} must return (V, 3) vertices, got "
                         f"{tuple(getattr(v, 'shape', ()))}")
    if s.faces.numel() and int(s.faces.max()) >= v.shape[0]:
        raise ValueError(f"faces of shape {s.name!r} index past its {v.shape[0]} vertices")
    return MeshItem(s.name, v, s.faces.to(v.device), s.color, s.smooth)


def _points(s, p) -> Points:
    if isinstance(p, torch.Tensor):
        return Points.create(p, radius=s.radius, color=s.color.to(p.dtype))
    if not isinstance(p, Points):
        raise TypeError(f"binding of points shape {s.name!r} must return Points or (N, 3) positions, got "
                        f"{type(p).__name__}")
    return p


def _check_scene(scene) -> None:
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a diffvc.pipeline.Scene, got {type(scene).__name__}")


def scene_geometry(scene: Scene, state: Any) -> FrameGeometry:
    """Place every shape of ``scene`` for ``state``.

    Args:
        scene: the :class:`~diffvc.pipeline.Scene`.
        state: a simulator state (passed to every binding) or a dict ``{body: state}`` (each shape
            gets the state of its ``body``).

    Returns:
        A :class:`~diffvc.pipeline.primitives.FrameGeometry`: the mesh shapes as
        :class:`MeshItem` (world vertices, faces, colour, shading mode), point sets and volumes by
        name, in the scene's shape order. Differentiable: the bindings' outputs are kept as is.
    """
    _check_scene(scene)
    if not scene.shapes:
        raise ValueError("scene has no shapes")
    frame = FrameGeometry()
    for s in scene.shapes:
        out = s.binding(_state_for(state, s.body))
        if s.kind == "mesh":
            frame.meshes.append(_mesh(s, out))
        elif s.kind == "points":
            frame.points.append((s.name, _points(s, out)))
        else:
            if not isinstance(out, Volume):
                raise TypeError(f"binding of volume shape {s.name!r} must return a Volume, got {type(out).__name__}")
            frame.volumes.append((s.name, out))
    return frame


# bindings whose ``batch(states)`` places every frame at once (their exact types: a subclass may
# override ``__call__``)
_BATCHED = (RigidBinding, SoftBinding, StaticBinding)


def _mesh_frames(s, states) -> list[MeshItem]:
    """The :class:`MeshItem` of mesh shape ``s`` in each of ``states``, placed by the built-in
    binding's ``batch`` in one call, checked once for the whole trajectory (shape, finite
    vertices, faces in range; the checks :class:`MeshItem` makes per frame)."""
    v = s.binding.batch([_state_for(st, s.body) for st in states])
    if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.shape[2] != 3:
        raise ValueError(f"binding of shape {s.name!r} must return (V, 3) vertices, got "
                         f"{tuple(getattr(v, 'shape', ()))[1:]}")
    check_float(v, "verts", coerce=False)
    if s.faces.numel() and int(s.faces.max()) >= v.shape[1]:
        raise ValueError(f"faces of shape {s.name!r} index past its {v.shape[1]} vertices")
    faces = check_faces(s.faces.to(v.device), v.shape[1], device=v.device)
    check_float(s.color, "color", shape=(3,), coerce=False)
    return [MeshItem._checked(s.name, x, faces, s.color, s.smooth) for x in v.unbind(0)]


def _trajectory_geometry(scene: Scene, states: Sequence[Any]) -> list[FrameGeometry]:
    """:func:`scene_geometry` of each of ``states`` (same frames, same errors): mesh shapes bound
    by the built-in :class:`RigidBinding`, :class:`SoftBinding` or :class:`StaticBinding` are
    placed for all states in one call and validated once; other bindings run per state."""
    _check_scene(scene)
    if not scene.shapes:
        raise ValueError("scene has no shapes")
    states = list(states)
    frames = [FrameGeometry() for _ in states]
    for s in scene.shapes:
        if s.kind == "mesh" and type(s.binding) in _BATCHED and states:
            for f, m in zip(frames, _mesh_frames(s, states)):
                f.meshes.append(m)
            continue
        for f, st in zip(frames, states):
            out = s.binding(_state_for(st, s.body))
            if s.kind == "mesh":
                f.meshes.append(_mesh(s, out))
            elif s.kind == "points":
                f.points.append((s.name, _points(s, out)))
            else:
                if not isinstance(out, Volume):
                    raise TypeError(f"binding of volume shape {s.name!r} must return a Volume, got "
                                    f"{type(out).__name__}")
                f.volumes.append((s.name, out))
    return frames


def render_frame(scene: Scene, state: Any, renderer="raster", **options) -> torch.Tensor:
    """Render one ``state`` from every camera of the rig: ``(V, H, W, 3)`` linear RGB.

    ``renderer``: a registered name (``"raster"``, ``"pathtrace"``, ...; built with ``options``,
    e.g. ``antialiased=False`` or ``backend="torch"`` for the rasterizer) or a renderer object.
    """
    return render_trajectory(scene, [state], renderer=renderer, **options)[0]


def render_trajectory(scene: Scene, states: Sequence[Any], every: int = 1, renderer="raster",
                      **options) -> torch.Tensor:
    """Render a trajectory to a video tensor ``(T, V, H, W, 3)`` with any renderer.

    Args:
        scene: the scene (its bindings read each state; its cameras, lights and background).
        states: a sequence of simulator states (e.g. ``rollout(..., record=True)[1]``), or of
            dicts ``{body: state}`` for scenes with several simulations.
        every: render every ``every``-th state (states ``0, k, 2k, ...``), so physics can run at
            a finer rate than the video.
        renderer: a registered renderer name (``"raster"`` default, ``"pathtrace"``, and those in
            :func:`~diffvc.pipeline.available_renderers`) or an object following the renderer
            contract (:mod:`diffvc.pipeline.renderers`).
        options: passed to the renderer's factory when ``renderer`` is a name.

    Returns:
        ``(T, V, H, W, 3)`` with ``T = ceil(len(states) / every)``; differentiable w.r.t. every
        tensor the states and the scene depend on (physical parameters, initial conditions,
        colours, lights, cameras), with the renderer's gradient contract at visibility changes.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    states = list(states)
    if not states:
        raise ValueError("states is empty")
    rend = get_renderer(renderer, **options)
    _check_scene(scene)
    if not scene.shapes:
        raise ValueError("scene has no shapes")
    check_consumes(rend, scene, renderer if isinstance(renderer, str) else type(renderer).__name__)
    frames = _trajectory_geometry(scene, states[::every])
    return rend.render(scene, frames)
