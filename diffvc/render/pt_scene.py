"""The path tracer's scene: triangle meshes with per-face materials, lights and an environment.

A :class:`PathTracingScene` is an immutable dataclass of tensors; every floating tensor may
require grad and receives gradients from :func:`diffvc.render.path_trace` (vertices: boundary
term of primary visibility by edge sampling; all others: path replay backpropagation).
:func:`cornell_box` builds the classic Cornell box out of explicit triangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .._validate import as_tensor, check_float, check_index, check_positive, describe

DIFFUSE, CONDUCTOR, PLASTIC = 0, 1, 2
_KINDS = {"diffuse": DIFFUSE, "conductor": CONDUCTOR, "plastic": PLASTIC}


@dataclass(frozen=True)
class PTMaterial:
    """One material. kind: ``"diffuse"`` (albedo / pi), ``"conductor"`` (GGX, Schlick F0 = albedo)
    or ``"plastic"`` (GGX coating, F0 = 0.04, over a diffuse albedo); roughness: perceptual
    (GGX alpha = roughness^2); emission: radiance (W/(m^2 sr)) leaving the front side of faces;
    texture: optional (h, w, 3) albedo texture replacing ``albedo`` (row 0 is v = 0)."""

    kind: str = "diffuse"
    albedo: tuple | torch.Tensor = (0.8, 0.8, 0.8)
    roughness: float | torch.Tensor = 0.5
    emission: tuple | torch.Tensor = (0.0, 0.0, 0.0)
    texture: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.kind, str) or self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        for name in ("albedo", "emission"):
            v = getattr(self, name)
            t = check_float(v if isinstance(v, torch.Tensor) else as_tensor(v, name, dtype=torch.float64), name,
                            shape=(3,))
            check_positive(t, name, strict=False)
        r = self.roughness
        check_positive(check_float(r if isinstance(r, torch.Tensor) else as_tensor(r, "roughness",
                                                                                 dtype=torch.float64),
                                   "roughness", shape=()), "roughness", strict=False)
        if self.texture is not None:
            check_float(self.texture, "texture", shape=("h", "w", 3), coerce=False)


@dataclass(frozen=True)
class PathTracingScene:
    """Triangles, materials and lights of a path-traced scene (float32 or float64 tensors).

    vertices: (V, 3) world positions (m); faces: (F, 3) long, counter-clockwise seen from the
    front; face_material: (F,) long; face_uvs: (F, 3, 2) texture coordinates per face corner;
    material_kind: (M,) long (0 diffuse, 1 conductor, 2 plastic); albedo: (M, 3); roughness: (M,);
    emission: (M, 3) radiance; material_texture: (M,) long index into ``textures`` or -1;
    textures: tuple of (h, w, 3) albedo textures; point_position / point_intensity: (P, 3) (m,
    W/sr); directional_direction: (D, 3) unit vectors pointing towards the light;
    directional_irradiance: (D, 3) (W/m^2); environment: (He, We, 3) lat-long radiance or None
    (u = atan2(x, -z) / 2pi + 0.5 along the width, v = acos(y) / pi along the height, row 0 up);
    dynamic_faces: (F,) bool, faces whose edges are sampled for geometry/camera gradients
    (None: all faces).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    face_material: torch.Tensor
    material_kind: torch.Tensor
    albedo: torch.Tensor
    roughness: torch.Tensor
    emission: torch.Tensor
    face_uvs: torch.Tensor | None = None
    material_texture: torch.Tensor | None = None
    textures: tuple = field(default_factory=tuple)
    point_position: torch.Tensor | None = None
    point_intensity: torch.Tensor | None = None
    directional_direction: torch.Tensor | None = None
    directional_irradiance: torch.Tensor | None = None
    environment: torch.Tensor | None = None
    dynamic_faces: torch.Tensor | None = None

    def __post_init__(self):
        check_float(self.vertices, "vertices", shape=("V", 3), coerce=False)
        object.__setattr__(self, "faces", check_index(self.faces, "faces", self.vertices.shape[0], shape=("F", 3),
                                                      dtype=self.faces.dtype if isinstance(self.faces, torch.Tensor)
                                                      and self.faces.dtype == torch.int32 else torch.int64))
        for name in ("face_material", "material_kind"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got {describe(t)}")
        for name in ("albedo", "roughness", "emission"):
            check_float(getattr(self, name), name, coerce=False)
        F, M = self.faces.shape[0], self.albedo.shape[0]  # vertices and faces checked above
        for name, shape in (("albedo", (M, 3)), ("roughness", (M,)), ("emission", (M, 3)), ("material_kind", (M,))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.face_material.shape != (F,):
            raise ValueError(f"face_material must have shape ({F},), got {tuple(self.face_material.shape)}")
        if F > 0 and (int(self.face_material.min()) < 0 or int(self.face_material.max()) >= M):
            raise ValueError(f"face_material must index materials in [0, {M})")
        if self.face_uvs is not None and tuple(self.face_uvs.shape) != (F, 3, 2):
            raise ValueError(f"face_uvs must have shape ({F}, 3, 2), got {tuple(self.face_uvs.shape)}")
        if self.material_texture is not None:
            if tuple(self.material_texture.shape) != (M,):
                raise ValueError(f"material_texture must have shape ({M},)")
            if int(self.material_texture.max()) >= len(self.textures):
                raise ValueError("material_texture indexes a texture that is not in textures")
        for i, t in enumerate(self.textures):
            if t.dim() != 3 or t.shape[2] != 3:
                raise ValueError(f"textures[{i}] must have shape (h, w, 3), got {tuple(t.shape)}")
        for a, b in (("point_position", "point_intensity"), ("directional_direction", "directional_irradiance")):
            x, y = getattr(self, a), getattr(self, b)
            if (x is None) != (y is None):
                raise ValueError(f"{a} and {b} must be given together")
            if x is not None and (x.dim() != 2 or x.shape[1] != 3 or x.shape != y.shape):
                raise ValueError(f"{a} and {b} must both have shape (n, 3), got {tuple(x.shape)}, {tuple(y.shape)}")
        if self.environment is not None and (self.environment.dim() != 3 or self.environment.shape[2] != 3):
            raise ValueError(f"environment must have shape (He, We, 3), got {tuple(self.environment.shape)}")
        if self.dynamic_faces is not None and tuple(self.dynamic_faces.shape) != (F,):
            raise ValueError(f"dynamic_faces must have shape ({F},)")
        if not torch.isfinite(self.vertices).all():
            raise ValueError("vertices must be finite")

    def replace(self, **changes) -> "PathTracingScene":
        """A copy with some fields replaced (e.g. ``scene.replace(albedo=params['albedo'])``)."""
        return replace(self, **changes)

    @property
    def dtype(self) -> torch.dtype:
        return self.vertices.dtype

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @staticmethod
    def from_meshes(meshes, materials, point_lights=None, directional_lights=None, environment=None,
                    dtype=torch.float32, device="cpu") -> "PathTracingScene":
        """Build a scene from ``meshes``: list of ``(verts (n, 3), faces (f, 3), material index)``
        or ``(verts, faces, material index, face_uvs (f, 3, 2))``; ``materials``: list of
        :class:`PTMaterial`; ``point_lights``: list of (position, intensity); ``directional_lights``:
        list of (direction towards the light, irradiance); ``environment``: (He, We, 3) or None.
        Tensors given in ``materials`` keep their autograd history."""
        verts, faces, fmat, fuv, off = [], [], [], [], 0
        for k, mesh in enumerate(meshes):
            v, f, mi = mesh[0], mesh[1], int(mesh[2])
            v = torch.as_tensor(v).to(dtype=dtype, device=device)
            f = torch.as_tensor(f).to(dtype=torch.long, device=device)
            if not 0 <= mi < len(materials):
                raise ValueError(f"meshes[{k}] names material {mi}, but there are {len(materials)} materials")
            verts.append(v)
            faces.append(f + off)
            fmat.append(torch.full((f.shape[0],), mi, dtype=torch.long, device=device))
            uv = mesh[3] if len(mesh) > 3 else torch.zeros(f.shape[0], 3, 2)
            fuv.append(torch.as_tensor(uv).to(dtype=dtype, device=device))
            off += v.shape[0]

        def t3(x):
            return torch.as_tensor(x).to(dtype=dtype, device=device).reshape(3) if not isinstance(x, torch.Tensor) \
                else x.to(dtype=dtype, device=device).reshape(3)

        textures, tex_index = [], []
        for mat in materials:
            if mat.kind not in _KINDS:
                raise ValueError(f"material kind must be one of {sorted(_KINDS)}, got {mat.kind!r}")
            if mat.texture is not None:
                tex_index.append(len(textures))
                textures.append(mat.texture.to(dtype=dtype, device=device))
            else:
                tex_index.append(-1)
        rough = [r if isinstance(r, torch.Tensor) else torch.tensor(float(r)) for r in (m.roughness for m in materials)]

        def lights(ls):
            if not ls:
                return None, None
            return (torch.stack([t3(a) for a, _ in ls]), torch.stack([t3(b) for _, b in ls]))

        pp, pi = lights(point_lights)
        dd, di = lights(directional_lights)
        if dd is not None:
            dd = dd / dd.norm(dim=-1, keepdim=True)
        return PathTracingScene(
            vertices=torch.cat(verts), faces=torch.cat(faces), face_material=torch.cat(fmat),
            face_uvs=torch.cat(fuv),
            material_kind=torch.tensor([_KINDS[m.kind] for m in materials], dtype=torch.long, device=device),
            albedo=torch.stack([t3(m.albedo) for m in materials]),
            roughness=torch.stack([r.to(dtype=dtype, device=device).reshape(()) for r in rough]),
            emission=torch.stack([t3(m.emission) for m in materials]),
            material_texture=torch.tensor(tex_index, dtype=torch.long, device=device),
            textures=tuple(textures), point_position=pp, point_intensity=pi, directional_direction=dd,
            directional_irradiance=di,
            environment=None if environment is None else torch.as_tensor(environment).to(dtype=dtype, device=device))


def quad(a, b, c, d, dtype=torch.float32, device="cpu"):
    """Two triangles ``(a, b, c), (a, c, d)`` of a planar quad; front side is ``cross(b - a, c - a)``."""
    v = torch.stack([torch.as_tensor(p, dtype=dtype, device=device) if not isinstance(p, torch.Tensor) else p
                     for p in (a, b, c, d)])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], device=device)
    return v, f


def oriented_box(center, size, angle: float = 0.0, dtype=torch.float32, device="cpu"):
    """Closed box (8 vertices, 12 outward-facing triangles) of side lengths ``size`` (3,), rotated
    by ``angle`` radians about +y and translated to ``center`` (3,). Differentiable w.r.t. a tensor
    ``center`` / ``size``."""
    center = torch.as_tensor(center, dtype=dtype, device=device) if not isinstance(center, torch.Tensor) else center
    size = torch.as_tensor(size, dtype=dtype, device=device) if not isinstance(size, torch.Tensor) else size
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)],
                           dtype=center.dtype, device=center.device)
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=center.dtype, device=center.device)
    v = (corners * size) @ rot.T + center
    # corner index = 4*ix + 2*iy + iz
    f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # -x, +x
                      [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # -y, +y
                      [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],  # -z, +z
                     device=center.device)
    return v, f


CORNELL_COLORS = {
    "white": (0.725, 0.71, 0.68),
    "red": (0.63, 0.065, 0.05),
    "green": (0.14, 0.45, 0.091),
}
CORNELL_LIGHT = (18.387, 13.9873, 6.75357)
CORNELL_SHORT_BOX = ((0.33, 0.3, 0.37), (0.6, 0.6, 0.6), -0.3)  # centre, size, angle
CORNELL_TALL_BOX = ((-0.34, 0.6, -0.28), (0.6, 1.2, 0.6), 0.3)


def cornell_box(short_box_center=None, wall_colors=None, light_radiance=None, dtype=torch.float32,
                device="cpu", tall_box_center=None) -> tuple[PathTracingScene, dict]:
    """The Cornell box, in metres: walls x in [-1, 1], y in [0, 2], z in [-1, 1] (open towards +z),
    a 0.5 x 0.4 ceiling light at y = 1.98 facing down, a short and a tall box. All diffuse.

    Args:
        short_box_center: (3,) tensor or tuple; default ``CORNELL_SHORT_BOX[0]``.
        tall_box_center: (3,) tensor or tuple; default ``CORNELL_TALL_BOX[0]``.
        wall_colors: dict with "white", "red", "green" (3,) albedos (tensors keep autograd).
        light_radiance: (3,) emitted radiance of the light.

    Returns:
        ``(scene, info)`` with info["materials"] = names of the material indices,
        info["short_box_faces"] and info["tall_box_faces"] = (F,) bool masks of the boxes' faces.
    """
    for name, v in (("short_box_center", short_box_center), ("tall_box_center", tall_box_center)):
        if v is not None:
            check_float(v, name, shape=(3,), dtype=None if isinstance(v, torch.Tensor) else dtype, device=device)
    if light_radiance is not None:
        check_positive(check_float(light_radiance, "light_radiance", shape=(3,)), "light_radiance", strict=False)
    colors = dict(CORNELL_COLORS)
    colors.update(wall_colors or {})
    names = ["white", "red", "green", "light"]
    mats = [PTMaterial("diffuse", colors["white"]), PTMaterial("diffuse", colors["red"]),
            PTMaterial("diffuse", colors["green"]),
            PTMaterial("diffuse", colors["white"], emission=light_radiance if light_radiance is not None else CORNELL_LIGHT)]
    kw = dict(dtype=dtype, device=device)
    meshes = [
        (*quad((-1, 0, -1), (-1, 0, 1), (1, 0, 1), (1, 0, -1), **kw), 0),  # floor, normal +y
        (*quad((-1, 2, -1), (1, 2, -1), (1, 2, 1), (-1, 2, 1), **kw), 0),  # ceiling, normal -y
        (*quad((-1, 0, -1), (1, 0, -1), (1, 2, -1), (-1, 2, -1), **kw), 0),  # back wall, normal +z
        (*quad((-1, 0, -1), (-1, 2, -1), (-1, 2, 1), (-1, 0, 1), **kw), 1),  # left wall (red), normal +x
        (*quad((1, 0, -1), (1, 0, 1), (1, 2, 1), (1, 2, -1), **kw), 2),  # right wall (green), normal -x
        (*quad((-0.25, 1.98, -0.2), (0.25, 1.98, -0.2), (0.25, 1.98, 0.2), (-0.25, 1.98, 0.2), **kw), 3),  # light
    ]
    c, s, a = CORNELL_TALL_BOX
    meshes.append((*oriented_box(tall_box_center if tall_box_center is not None else c, s, a, **kw), 0))
    c, s, a = CORNELL_SHORT_BOX
    meshes.append((*oriented_box(short_box_center if short_box_center is not None else c, s, a, **kw), 0))
    scene = PathTracingScene.from_meshes(meshes, mats, dtype=dtype, device=device)
    short = torch.zeros(scene.faces.shape[0], dtype=torch.bool, device=device)
    short[-12:] = True
    tall = torch.zeros_like(short)
    tall[-24:-12] = True
    return scene, {"materials": names, "short_box_faces": short, "tall_box_faces": tall}


def cornell_camera(width: int = 64, height: int = 64, dtype=torch.float32, device="cpu"):
    """The Cornell box camera: at (0, 1, 3.9) looking at (0, 1, 0), 39.3 degrees vertical field of view."""
    from .cameras import Cameras

    return Cameras.look_at([[0.0, 1.0, 3.9]], (0.0, 1.0, 0.0), width=width, height=height, fov_y=39.3,
                           dtype=dtype, device=device)
