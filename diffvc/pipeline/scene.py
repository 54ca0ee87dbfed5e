"""A scene: shapes (render meshes bound to simulated bodies or static), bodies' physical
parameters, a camera rig and lights, with every tensor reachable by name (Mitsuba's ``traverse``).

Names are dotted paths:

* ``shape.<name>.color`` - a shape's albedo ``(3,)``; ``shape.<name>.verts`` - its rest/body-space
  vertices ``(V, 3)`` (used by static shapes and rigid bindings);
* ``body.<name>.<param>`` - physical parameters a simulator reads (``body.box.mass``,
  ``body.box.mu``, ``body.jelly.young`` ...), registered with :meth:`Scene.add_body`;
* ``camera.R``, ``camera.t``, ``camera.intrinsics`` - the rig (:class:`~diffvc.render.Cameras`);
* ``light.<i>.<field>`` - tensor fields of each light (any dataclass);
* ``background`` - the background colour ``(3,)``.

A scene is immutable: :meth:`Scene.replace` returns a new scene with some tensors swapped for
others (e.g. the current values of a :class:`~diffvc.optim.ParameterSet`), so autograd sees no
in-place update and one scene object can serve target and estimate alike::

    scene = Scene(cameras, lights=[...])
    scene.add_shape("box", faces, RigidBinding(verts), color=(0.8, 0.3, 0.2))
    scene.add_body("box", mass=1.0, mu=0.4)
    est = scene.replace({"body.box.mass": params["mass"]})
    traverse(est)["body.box.mass"]  # the differentiable tensor
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .._validate import as_float, as_tensor, check_choice, check_faces, check_float, check_index, describe
from .binding import StaticBinding

__all__ = ["Shape", "Scene", "traverse"]


SHAPE_KINDS = ("mesh", "points", "volume")


@dataclass(frozen=True)
class Shape:
    """A shape of the scene, placed for each state by its binding.

    ``kind`` says what ``binding(state)`` returns (:mod:`diffvc.pipeline.primitives`): ``"mesh"``
    world vertices ``(V, 3)`` of the mesh ``faces``; ``"points"`` a :class:`Points` (or positions
    ``(N, 3)``, drawn with ``radius`` and ``color``); ``"volume"`` a :class:`Volume`. ``body``
    names the simulated body whose state drives it (``None``: the whole state is passed, or the
    shape is static). ``smooth`` (meshes): shade with interpolated vertex normals (continuous
    across interior edges, for curved or deforming surfaces) instead of flat face normals.
    ``radius`` (points): default point radius in m."""

    name: str
    faces: torch.Tensor
    binding: Callable[[Any], Any]
    color: torch.Tensor
    body: str | None = None
    smooth: bool = False
    kind: str = "mesh"
    radius: float = 0.01

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty string, got {describe(self.name)}")
        check_choice(self.kind, "kind", ("mesh", "points", "volume"))
        object.__setattr__(self, "faces", check_index(self.faces, "faces", 2 ** 62, shape=("F", 3),
                                                      size_name="any vertex index"))
        if not callable(self.binding):
            raise TypeError(f"binding must be callable (state -> geometry), got {describe(self.binding)}")
        check_float(self.color, "color", shape=(3,), coerce=False)
        object.__setattr__(self, "radius", as_float(self.radius, "radius", positive=True))


def _tensor(x, dtype, device, name) -> torch.Tensor:
    """A finite floating tensor (numbers/sequences coerced to ``dtype``; tensors kept as given)."""
    t = x if isinstance(x, torch.Tensor) else as_tensor(x, name, dtype=dtype, device=device)
    return check_float(t, name)


@dataclass(frozen=True)
class Scene:
    """Shapes, bodies, a camera rig and lights.

    Args:
        cameras: a :class:`~diffvc.render.Cameras` batch (the rig; all views share one image size).
        lights: list of light objects understood by the renderer (dataclasses of tensors).
        background: background colour ``(3,)`` (linear RGB).
        shapes: render meshes (use :meth:`add_shape`).
        bodies: ``{body: {param: tensor}}`` physical parameters (use :meth:`add_body`).
    """

    cameras: Any
    lights: tuple = ()
    background: torch.Tensor | None = None
    shapes: tuple = ()
    bodies: Mapping[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self):
        for a in ("R", "t", "intrinsics", "width", "height"):
            if not hasattr(self.cameras, a):
                raise TypeError(f"cameras must be a diffvc.render.Cameras, got {type(self.cameras).__name__}")
        object.__setattr__(self, "lights", tuple(self.lights))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        if self.background is None:
            object.__setattr__(self, "background", torch.zeros(3, dtype=self.dtype, device=self.device))
        elif self.background.shape != (3,):
            raise ValueError(f"background must have shape (3,), got {tuple(self.background.shape)}")

    @property
    def dtype(self) -> torch.dtype:
        return self.cameras.R.dtype

    @property
    def device(self) -> torch.device:
        return self.cameras.R.device

    # -- building (each returns nothing; scenes are built once, then replaced functionally) ----
    def add_shape(self, name: str, faces: torch.Tensor, binding, color=(0.7, 0.7, 0.7), body: str | None = None,
                  smooth: bool = False) -> None:
        """Add a render mesh. ``binding`` may be a binding object/callable or a ``(V, 3)`` tensor
        of static vertices. ``body`` names the simulated body whose state the binding reads when
        trajectories hold one state per body (a dict). ``smooth``: see :class:`Shape`."""
        self._check_new(name)
        if isinstance(binding, torch.Tensor):
            binding = StaticBinding(binding)
        if not callable(binding):
            raise TypeError(f"binding must be callable (state -> (V, 3)) or a (V, 3) tensor, got {type(binding).__name__}")
        # the vertex count is known now for static/rigid bindings (else the renderer checks it per frame)
        v = getattr(binding, "verts", None)
        faces = check_faces(faces, v.shape[0] if isinstance(v, torch.Tensor) else 2 ** 62)
        color = self._color(color)
        shape = Shape(name, faces.to(self.device), binding, color, body, bool(smooth))
        object.__setattr__(self, "shapes", self.shapes + (shape,))

    def add_points(self, name: str, binding, color=(0.7, 0.7, 0.7), radius: float = 0.01,
                   body: str | None = None) -> None:
        """Add a point set (particles). ``binding(state)`` returns a :class:`Points` or positions
        ``(N, 3)``, drawn with ``radius`` (m) and ``color``; e.g. ``lambda s: s.x`` for a particle
        state. Renderers that draw points (``"splat"``) consume it."""
        self._check_new(name)
        if not callable(binding):
            raise TypeError(f"binding must be callable (state -> Points or (N, 3)), got {type(binding).__name__}")
        if not (isinstance(radius, (int, float)) and radius > 0):
            raise ValueError(f"radius must be a number > 0 (m), got {radius!r}")
        color = self._color(color)
        empty = torch.zeros(0, 3, dtype=torch.long, device=self.device)
        object.__setattr__(self, "shapes", self.shapes + (Shape(name, empty, binding, color, body, False, "points",
                                                                float(radius)),))

    def add_volume(self, name: str, binding, color=(0.7, 0.7, 0.7), body: str | None = None) -> None:
        """Add a volume (a density grid). ``binding(state)`` returns a :class:`Volume` (whose own
        colour wins; ``color`` is kept for :meth:`traverse`). Renderers that draw volumes
        (``"volume"``) consume it."""
        self._check_new(name)
        if not callable(binding):
            raise TypeError(f"binding must be callable (state -> Volume), got {type(binding).__name__}")
        color = self._color(color)
        empty = torch.zeros(0, 3, dtype=torch.long, device=self.device)
        object.__setattr__(self, "shapes", self.shapes + (Shape(name, empty, binding, color, body, False, "volume"),))

    def _check_new(self, name) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name must be a non-empty string without dots, got {name!r}")
        if any(s.name == name for s in self.shapes):
            raise ValueError(f"name: a shape named {name!r} exists already")

    def _color(self, color) -> torch.Tensor:
        color = _tensor(color, self.dtype, self.device, "color")
        if color.shape != (3,):
            raise ValueError(f"color must have shape (3,), got {tuple(color.shape)}")
        return color

    def add_body(self, name: str, **params) -> None:
        """Register a simulated body's physical parameters (scalars or tensors) under ``body.<name>.*``."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name must be a non-empty string without dots, got {name!r}")
        if name in self.bodies:
            raise ValueError(f"name: a body named {name!r} exists already")
        checked = {k: _tensor(v, self.dtype, self.device, f"{name}.{k}") for k, v in params.items()}
        bodies = dict(self.bodies)
        bodies[name] = checked
        object.__setattr__(self, "bodies", bodies)

    def shape(self, name: str) -> Shape:
        for s in self.shapes:
            if s.name == name:
                return s
        raise KeyError(f"no shape named {name!r}; have {[s.name for s in self.shapes]}")

    def body(self, name: str) -> Mapping[str, torch.Tensor]:
        if name not in self.bodies:
            raise KeyError(f"no body named {name!r}; have {sorted(self.bodies)}")
        return self.bodies[name]

    # -- traversal -------------------------------------------------------------------------
    def traverse(self) -> dict[str, torch.Tensor]:
        """Every tensor of the scene by dotted name (see the module docstring)."""
        out: dict[str, torch.Tensor] = {}
        for s in self.shapes:
            out[f"shape.{s.name}.color"] = s.color
            v = getattr(s.binding, "verts", None)
            if isinstance(v, torch.Tensor):
                out[f"shape.{s.name}.verts"] = v
        for b, ps in self.bodies.items():
            for k, v in ps.items():
                out[f"body.{b}.{k}"] = v
        for f in ("R", "t", "intrinsics"):
            out[f"camera.{f}"] = getattr(self.cameras, f)
        for i, light in enumerate(self.lights):
            if dataclasses.is_dataclass(light):
                for f in dataclasses.fields(light):
                    v = getattr(light, f.name)
                    if isinstance(v, torch.Tensor):
                        out[f"light.{i}.{f.name}"] = v
        out["background"] = self.background
        return out

    def replace(self, updates: Mapping[str, torch.Tensor]) -> "Scene":
        """A new scene with the named tensors replaced (shapes must match; dtype follows the new
        tensor). Unknown names raise ``KeyError`` listing the known ones."""
        known = self.traverse()
        for k, v in updates.items():
            if k not in known:
                raise KeyError(f"updates: no scene parameter named {k!r}; have {sorted(known)}")
            if not isinstance(v, torch.Tensor):
                v = as_tensor(v, f"updates[{k!r}]", dtype=known[k].dtype, device=known[k].device)
            check_float(v, f"updates[{k!r}]")
            if v.shape != known[k].shape:
                raise ValueError(f"updates[{k!r}] must have shape {tuple(known[k].shape)}, got {tuple(v.shape)}")
        upd = {k: (v if isinstance(v, torch.Tensor) else as_tensor(v, k, dtype=known[k].dtype, device=known[k].device))
               for k, v in updates.items()}
        shapes = []
        for s in self.shapes:
            color = upd.get(f"shape.{s.name}.color", s.color)
            binding = s.binding
            kv = f"shape.{s.name}.verts"
            if kv in upd:
                binding = _rebind(binding, upd[kv])
            shapes.append(dataclasses.replace(s, color=color, binding=binding))
        bodies = {b: {k: upd.get(f"body.{b}.{k}", v) for k, v in ps.items()} for b, ps in self.bodies.items()}
        cams = self.cameras
        cam_upd = {f: upd[f"camera.{f}"] for f in ("R", "t", "intrinsics") if f"camera.{f}" in upd}
        if cam_upd:
            cams = dataclasses.replace(cams, **cam_upd)
        lights = []
        for i, light in enumerate(self.lights):
            lu = {k.split(".", 2)[2]: v for k, v in upd.items() if k.startswith(f"light.{i}.")}
            lights.append(dataclasses.replace(light, **lu) if lu else light)
        return Scene(cams, tuple(lights), upd.get("background", self.background), tuple(shapes), bodies)


def _rebind(binding, verts: torch.Tensor):
    """A copy of a vertex-holding binding with new body-space vertices."""
    new = object.__new__(type(binding))
    new.__dict__.update(binding.__dict__)
    new.verts = verts
    return new


def traverse(scene: Scene) -> dict[str, torch.Tensor]:
    """``scene.traverse()``: every tensor of the scene by dotted name."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a diffvc.pipeline.Scene, got {describe(scene)}")
    return scene.traverse()
