"""Ray casting against triangle meshes: a BVH query in Warp, the hit recomputed in torch.

The BVH (Warp's mesh BVH, CPU and CUDA, float32) only decides *which* triangle a ray hits
first. The hit itself, distance ``t``, barycentrics and point, is then recomputed in torch from
that triangle's vertices (Moller-Trumbore), so it is differentiable w.r.t. the vertices and the
ray origins / directions in float32 or float64.

Gradient at discontinuities: the face a ray hits is piecewise constant in the inputs; the gradient
is that of the hit triangle (no boundary term). The path tracer adds the boundary term of primary
visibility by edge sampling (``render/pathtrace.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import pathtrace as K
from .._validate import as_int, check_faces, check_float, check_same_dtype
from .._validate import describe as _describe
from .cameras import Cameras, generate_rays


def _check_mesh(vertices, faces) -> torch.Tensor:
    """Validated ``(vertices, faces)``: finite floating ``(V, 3)``, faces ``(F, 3)`` indexing them
    (a list of index triples is accepted); returns the faces as int64."""
    check_float(vertices, "vertices", shape=("V", 3), coerce=False)
    return check_faces(faces, vertices.shape[0], device=vertices.device, dtype=torch.int64)


def _check_rays(origins, directions, vertices, names=("origins", "directions")):
    a, b = names
    check_float(origins, a, shape=("N", 3), coerce=False)
    check_float(directions, b, shape=("N", 3), coerce=False)
    if origins.shape != directions.shape:
        raise ValueError(f"{a} and {b} must both have shape (N, 3), got {tuple(origins.shape)} and "
                         f"{tuple(directions.shape)}")
    check_same_dtype(("vertices", vertices), (a, origins), (b, directions))
    if origins.device != vertices.device or directions.device != vertices.device:
        raise ValueError(f"{a} and {b} must be on the device of vertices")


class TriangleBVH:
    """A BVH over a triangle mesh (Warp's mesh BVH), built once per vertex state.

    vertices: (V, 3); faces: (F, 3) integer. The BVH stores a float32 copy of the vertices;
    rebuild it (a new ``TriangleBVH``) when they change.
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor):
        faces = _check_mesh(vertices, faces)
        self.device = vertices.device
        self._bvh = K.build_bvh(vertices, faces)

    def cast(self, origins: torch.Tensor, directions: torch.Tensor, tmax: torch.Tensor | float | None = None):
        """Closest hits, no gradients. Returns ``(face, t)``: (N,) long face index (-1 on a miss) and
        (N,) float32 distance in units of ``|direction|`` (``tmax`` on a miss). Hits are searched in
        ``(0, tmax]`` (default: unbounded)."""
        N = origins.shape[0]
        if tmax is None:
            tm = torch.full((N,), 1.0e30, device=self.device)
        else:
            tm = torch.as_tensor(tmax, dtype=torch.float32, device=self.device).expand(N)
        face, t = K.closest_hits(self._bvh, origins, directions, tm)
        return face.long(), t


@dataclass(frozen=True)
class RayHits:
    """Closest hits of N rays. face: (N,) long, -1 on a miss; hit: (N,) bool; t: (N,) distance in
    units of ``|direction|``; bary: (N, 3) barycentric weights of the face's vertices; point:
    (N, 3); normal: (N, 3) unit geometric normal ``cross(v1 - v0, v2 - v0)`` normalised. Misses have
    t = 0, point = origin, zero bary and normal. t, bary, point and normal are differentiable."""

    face: torch.Tensor
    hit: torch.Tensor
    t: torch.Tensor
    bary: torch.Tensor
    point: torch.Tensor
    normal: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.face, torch.Tensor) or self.face.is_floating_point() or self.face.dtype == torch.bool \
                or self.face.dim() != 1:
            raise TypeError(f"face must be an (N,) integer tensor (-1 on a miss), got {_describe(self.face)}")
        n = self.face.shape[0]
        if not isinstance(self.hit, torch.Tensor) or self.hit.dtype != torch.bool or tuple(self.hit.shape) != (n,):
            raise TypeError(f"hit must be an ({n},) bool tensor, got {_describe(self.hit)}")
        check_float(self.t, "t", shape=(n,), coerce=False)
        for name in ("bary", "point", "normal"):
            check_float(getattr(self, name), name, shape=(n, 3), coerce=False)


def hit_from_face(vertices, faces, face, origins, directions) -> RayHits:
    """Differentiable ray/triangle intersection with a *known* face per ray (Moller-Trumbore in
    torch). Degenerate triangles and rays parallel to their triangle give finite values."""
    hit = face >= 0
    fidx = torch.where(hit, face, torch.zeros_like(face))
    tri = vertices[faces[fidx]] if faces.shape[0] else vertices.new_zeros(face.shape[0], 3, 3)
    v0, v1, v2 = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = v1 - v0, v2 - v0
    p = torch.linalg.cross(directions, e2, dim=-1)
    det = (e1 * p).sum(-1)
    tiny = torch.finfo(vertices.dtype).tiny ** 0.5
    det_safe = torch.where(det.abs() > tiny, det, torch.full_like(det, tiny))
    s = origins - v0
    u = (s * p).sum(-1) / det_safe
    q = torch.linalg.cross(s, e1, dim=-1)
    v = (directions * q).sum(-1) / det_safe
    t = (e2 * q).sum(-1) / det_safe
    n = torch.linalg.cross(e1, e2, dim=-1)
    nn = n.norm(dim=-1, keepdim=True)
    n = n / torch.where(nn > tiny, nn, torch.full_like(nn, tiny))
    m = hit.to(vertices.dtype)
    t = t * m
    bary = torch.stack([1 - u - v, u, v], -1) * m[:, None]
    point = origins + directions * t[:, None]
    return RayHits(face=torch.where(hit, face, torch.full_like(face, -1)), hit=hit, t=t, bary=bary, point=point,
                   normal=n * m[:, None])


def intersect(vertices: torch.Tensor, faces: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor,
              tmax: float | None = None, bvh: TriangleBVH | None = None) -> RayHits:
    """Closest hit of each ray (``origins``, ``directions``: (N, 3)) with the mesh.

    The BVH finds the face; :func:`hit_from_face` recomputes the hit differentiably. Pass ``bvh``
    to reuse a BVH built for the same vertices.
    """
    faces = _check_mesh(vertices, faces)
    _check_rays(origins, directions, vertices)
    bvh = bvh or TriangleBVH(vertices, faces)
    face, _ = bvh.cast(origins, directions, tmax)
    return hit_from_face(vertices, faces, face, origins, directions)


def intersect_brute_force(vertices, faces, origins, directions, tmax: float | None = None) -> RayHits:
    """Plain-torch twin of :func:`intersect`: every ray against every triangle (O(N F) memory)."""
    faces = _check_mesh(vertices, faces)
    _check_rays(origins, directions, vertices)
    tri = vertices[faces]  # (F, 3, 3)
    v0, e1, e2 = tri[None, :, 0], (tri[:, 1] - tri[:, 0])[None], (tri[:, 2] - tri[:, 0])[None]
    d = directions[:, None]
    p = torch.linalg.cross(d.expand(-1, e2.shape[1], -1), e2.expand(d.shape[0], -1, -1), dim=-1)
    det = (e1 * p).sum(-1)
    ok = det.abs() > 1e-12
    inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
    s = origins[:, None] - v0
    u = (s * p).sum(-1) * inv
    q = torch.linalg.cross(s, e1.expand_as(s), dim=-1)
    v = (d * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    valid = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    if tmax is not None:
        valid &= t <= tmax
    t_masked = torch.where(valid, t, torch.full_like(t, float("inf")))
    if faces.shape[0]:
        tbest, face = t_masked.min(dim=1)
    else:
        tbest = torch.full((origins.shape[0],), float("inf"), dtype=origins.dtype, device=origins.device)
        face = torch.zeros(origins.shape[0], dtype=torch.long, device=origins.device)
    face = torch.where(torch.isfinite(tbest), face, torch.full_like(face, -1))
    return hit_from_face(vertices, faces, face, origins, directions)


def occluded(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, targets: torch.Tensor,
             eps: float = 1e-4, bvh: TriangleBVH | None = None) -> torch.Tensor:
    """Shadow rays: (N,) bool, True where the segment from ``points`` to ``targets`` (N, 3) is
    blocked (the ends are shrunk by ``eps`` of the segment length to skip the surfaces they lie
    on). Not differentiable (a visibility test)."""
    faces = _check_mesh(vertices, faces)
    _check_rays(points, targets, vertices, ("points", "targets"))
    bvh = bvh or TriangleBVH(vertices, faces)
    d = (targets - points).detach()
    o = points.detach() + d * eps
    face, _ = bvh.cast(o, d, 1.0 - 2 * eps)
    return face >= 0


def render_gbuffer(vertices: torch.Tensor, faces: torch.Tensor, camera: Cameras, face_colors: torch.Tensor | None = None,
                   vertex_colors: torch.Tensor | None = None, spp: int = 1, seed: int = 0) -> dict:
    """Primary visibility by ray casting: per-pixel albedo, normal, depth and coverage.

    Args:
        vertices: (V, 3); faces: (F, 3); camera: one perspective or orthographic view (B = 1).
        face_colors: (F, C) per-face albedo, or vertex_colors: (V, C) interpolated with the hit's
            barycentrics (one of them; default white).
        spp: rays per pixel; 1 shoots through pixel centres, more jitter uniformly in the pixel
            (seeded with ``seed``) and average (box filter).

    Returns:
        dict of (H, W, C) ``albedo``, (H, W, 3) ``normal`` (unit geometric normal facing the
        camera), (H, W, 1) ``depth`` (distance along the ray) and ``mask`` (coverage), all
        averaged over the pixel samples. Differentiable w.r.t. the colours and (interior term
        only) the vertices and camera.
    """
    faces = _check_mesh(vertices, faces)
    if not isinstance(camera, Cameras):
        raise TypeError(f"camera must be a diffvc.render.Cameras, got {type(camera).__name__}")
    if camera.batch_size != 1:
        raise ValueError(f"camera must hold exactly one view, got {camera.batch_size}")
    spp, seed = as_int(spp, "spp", minimum=1), as_int(seed, "seed")
    if face_colors is not None and vertex_colors is not None:
        raise ValueError("give face_colors or vertex_colors, not both")
    if face_colors is not None and (face_colors.dim() != 2 or face_colors.shape[0] != faces.shape[0]):
        raise ValueError(f"face_colors must have shape ({faces.shape[0]}, C), got {tuple(face_colors.shape)}")
    if vertex_colors is not None and (vertex_colors.dim() != 2 or vertex_colors.shape[0] != vertices.shape[0]):
        raise ValueError(f"vertex_colors must have shape ({vertices.shape[0]}, C), got {tuple(vertex_colors.shape)}")
    H, W = camera.height, camera.width
    bvh = TriangleBVH(vertices, faces)
    gen = torch.Generator().manual_seed(seed)
    acc = None
    for s in range(spp):
        if spp == 1:
            o, d = generate_rays(camera)
        else:
            jitter = (torch.rand(H, W, 2, generator=gen, dtype=torch.float64) - 0.5).to(camera.dtype)
            o, d = _rays_at(camera, camera.pixel_centers() + jitter.to(camera.device))
        o, d = o.reshape(-1, 3).to(vertices.dtype), d.reshape(-1, 3).to(vertices.dtype)
        h = intersect(vertices, faces, o, d, bvh=bvh)
        m = h.hit.to(vertices.dtype)[:, None]
        if face_colors is not None:
            fc = face_colors[h.face.clamp_min(0)] * m
        elif vertex_colors is not None:
            fc = (vertex_colors[faces[h.face.clamp_min(0)]] * h.bary[..., None]).sum(1)
        else:
            fc = m.expand(-1, 3)
        n = h.normal * torch.where((h.normal * d).sum(-1, keepdim=True) > 0, -1.0, 1.0).to(vertices.dtype)
        out = {"albedo": fc, "normal": n, "depth": h.t[:, None], "mask": m}
        acc = out if acc is None else {k: acc[k] + out[k] for k in acc}
    return {k: (v / spp).reshape(H, W, -1) for k, v in acc.items()}


def _rays_at(camera: Cameras, uv: torch.Tensor):
    """Rays (H, W, 3) through continuous image coordinates ``uv`` (H, W, 2) of a perspective or
    orthographic camera (the convention of :mod:`diffvc.render.cameras`)."""
    K_ = camera.intrinsics[0]
    x = (uv[..., 0] - K_[2]) / K_[0]
    y = -(uv[..., 1] - K_[3]) / K_[1]
    Rt = camera.R[0].T
    c = camera.centers[0]
    if camera.orthographic:
        o = torch.stack([x, y, torch.zeros_like(x)], -1) @ Rt.T + c
        d = (-camera.R[0, 2]).expand_as(o)
        return o, d
    d = torch.stack([x, y, -torch.ones_like(x)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    d = d @ Rt.T
    return c.expand_as(d), d
