"""What bindings produce and renderers consume: the render primitives of one frame.

A binding turns a simulated state into one primitive; :func:`scene_geometry` places every shape
of a scene for one state and returns a :class:`FrameGeometry`; a renderer turns a list of them
(one per video frame) into images. Three kinds of primitive cover the survey's representations:

* **meshes** -- a mesh shape's binding returns its world vertices ``(V, 3)``; the shape holds the
  faces, colour and shading mode (:class:`MeshItem`). Rigid bodies, FEM surfaces, cloth.
* **points** -- :class:`Points`: positions, radii, colours, opacities of particles (MPM, fluids,
  spring networks); splat renderers draw them as isotropic Gaussians.
* **volumes** -- :class:`Volume`: a density grid (and colour) in an axis-aligned box (smoke,
  tomography, fields sampled on a grid); volume renderers ray-march them.

A renderer states which kinds it draws (``Renderer.consumes``); :func:`render_trajectory` raises
an error naming the shape when a scene holds a kind the chosen renderer cannot draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._validate import check_faces, check_float

__all__ = ["MeshItem", "Points", "Volume", "FrameGeometry"]


def _floating(t, name: str, shape_tail: tuple) -> torch.Tensor:
    """A finite floating tensor whose shape ends in ``shape_tail``."""
    return check_float(t, name, shape=(...,) + tuple(shape_tail), coerce=False)


@dataclass(frozen=True)
class MeshItem:
    """One placed mesh shape: ``verts (V, 3)`` world positions (m), ``faces (F, 3)`` long,
    ``color (3,)`` linear albedo, ``smooth`` (interpolated vertex normals) and the shape name."""

    name: str
    verts: torch.Tensor
    faces: torch.Tensor
    color: torch.Tensor
    smooth: bool = False

    def __post_init__(self):
        check_float(self.verts, "verts", shape=("V", 3), coerce=False)
        object.__setattr__(self, "faces", check_faces(self.faces, self.verts.shape[0], device=self.verts.device))
        check_float(self.color, "color", shape=(3,), coerce=False)

    @classmethod
    def _checked(cls, name: str, verts: torch.Tensor, faces: torch.Tensor, color: torch.Tensor,
                 smooth: bool) -> "MeshItem":
        """A MeshItem from tensors the caller has already validated (``faces`` as
        :func:`check_faces` returns them): no per-item checks (the pipeline checks a whole
        trajectory's vertices at once)."""
        item = object.__new__(cls)
        for k, v in (("name", name), ("verts", verts), ("faces", faces), ("color", color), ("smooth", smooth)):
            object.__setattr__(item, k, v)
        return item


@dataclass(frozen=True)
class Points:
    """Particles as render points.

    positions: ``(N, 3)`` world positions (m); radii: ``(N,)`` m (a splat renderer uses them as
    the Gaussian's standard deviation); colors: ``(N, 3)`` linear RGB; opacities: ``(N,)`` in
    [0, 1]. Every tensor may require grad.
    """

    positions: torch.Tensor
    radii: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor

    def __post_init__(self):
        check_float(self.positions, "positions", shape=("N", 3), coerce=False)
        n = self.positions.shape[0]
        for name, tail in (("radii", ()), ("colors", (3,)), ("opacities", ())):
            t = _floating(getattr(self, name), name, tail)
            if tuple(t.shape) != (n,) + tail:
                raise ValueError(f"{name} must have shape {(n,) + tail}, got {tuple(t.shape)}")

    @staticmethod
    def create(positions: torch.Tensor, radius=0.01, color=(0.8, 0.8, 0.8), opacity=1.0) -> "Points":
        """Points from positions ``(N, 3)``; ``radius``/``opacity`` scalars or ``(N,)``,
        ``color`` ``(3,)`` or ``(N, 3)`` (tensors keep their autograd history)."""
        _floating(positions, "positions", (3,))
        n, dt, dev = positions.shape[0], positions.dtype, positions.device

        def t(x, tail):
            x = x.to(dtype=dt, device=dev) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=dt, device=dev)
            return x.expand((n,) + tail) if x.dim() == len(tail) else x

        return Points(positions, t(radius, ()), t(color, (3,)), t(opacity, ()))


@dataclass(frozen=True)
class Volume:
    """A density grid in an axis-aligned box.

    density: ``(X, Y, Z)`` extinction coefficient sigma (1/m) at voxel centres, x along the first
    axis; color: ``(3,)`` or ``(X, Y, Z, 3)`` emitted/scattered colour (linear RGB); bbox_min,
    bbox_max: ``(3,)`` world corners of the box (m). Every floating tensor may require grad.
    """

    density: torch.Tensor
    color: torch.Tensor
    bbox_min: torch.Tensor
    bbox_max: torch.Tensor

    def __post_init__(self):
        _floating(self.density, "density", ())
        if self.density.dim() != 3:
            raise ValueError(f"density must have shape (X, Y, Z), got {tuple(self.density.shape)}")
        _floating(self.color, "color", (3,))
        if self.color.shape != (3,) and tuple(self.color.shape) != tuple(self.density.shape) + (3,):
            raise ValueError(f"color must have shape (3,) or {tuple(self.density.shape) + (3,)}, got {tuple(self.color.shape)}")
        for name in ("bbox_min", "bbox_max"):
            if tuple(_floating(getattr(self, name), name, (3,)).shape) != (3,):
                raise ValueError(f"{name} must have shape (3,)")
        if not bool((self.bbox_max.detach() > self.bbox_min.detach()).all()):
            raise ValueError("bbox_max must exceed bbox_min on every axis")


@dataclass(frozen=True)
class FrameGeometry:
    """Everything one state of a scene places: meshes, point sets and volumes, in shape order."""

    meshes: list = field(default_factory=list)
    points: list = field(default_factory=list)     # (name, Points)
    volumes: list = field(default_factory=list)    # (name, Volume)

    def __post_init__(self):
        # None means no items of that kind; items are checked by their own constructors
        for name, item_type in (("meshes", MeshItem), ("points", Points), ("volumes", Volume)):
            items = getattr(self, name)
            if items is None:
                object.__setattr__(self, name, [])
                continue
            if not isinstance(items, list):
                raise TypeError(f"{name} must be a list, got {type(items).__name__}")
            for i, it in enumerate(items):
                obj = it if name == "meshes" else (it[1] if isinstance(it, tuple) and len(it) == 2 else None)
                if not isinstance(obj, item_type):
                    want = "MeshItem" if name == "meshes" else f"(name, {item_type.__name__}) pair"
                    raise TypeError(f"{name}[{i}] must be a {want}, got {type(it).__name__}")

    def merged_mesh(self):
        """All meshes as one: ``verts (N, 3)``, ``faces (F, 3)`` long, ``face_albedo (F, 3)``,
        ``face_smooth (F,)`` bool. dtype: the promotion of the meshes' dtypes."""
        if not self.meshes:
            raise ValueError("the frame has no mesh shapes")
        dtype = self.meshes[0].verts.dtype
        for m in self.meshes[1:]:
            dtype = torch.promote_types(dtype, m.verts.dtype)
        verts, faces, albedo, smooth, n = [], [], [], [], 0
        for m in self.meshes:
            verts.append(m.verts.to(dtype))
            faces.append(m.faces + n)
            albedo.append(m.color.to(dtype).expand(m.faces.shape[0], 3))
            smooth.append(torch.full((m.faces.shape[0],), bool(m.smooth), device=m.faces.device))
            n += m.verts.shape[0]
        return torch.cat(verts), torch.cat(faces), torch.cat(albedo), torch.cat(smooth)
