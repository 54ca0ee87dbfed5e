"""Differentiable path tracing with path replay backpropagation and primary-edge sampling.

:func:`path_trace` renders a :class:`~diffvc.render.pt_scene.PathTracingScene` seen by one
pinhole camera (:class:`~diffvc.render.cameras.Cameras`, B = 1) with a Warp megakernel (BVH
traversal, NEE + MIS, Russian roulette; see ``diffvc/_kernels/pathtrace.py``).

Gradients
---------
* **Materials (albedo, textures), emission, point/directional lights, environment map**: path
  replay backpropagation (Vicini et al. 2021). The backward pass re-traces every sample from the
  same seed, first to recover its radiance ``L``, then again carrying the adjoint radiance and the
  radiance still to come, and adds each vertex's parameter derivative with atomics. Memory is the
  gradient buffers only: it does not grow with path depth. Sampling decisions and MIS weights are
  detached (the estimator of the derivative stays unbiased because the BSDFs are differentiated,
  not the densities). The roughness derivative of the BSDF is a central difference (step 1e-3)
  of its closed form inside the kernel.
* **Geometry (vertices) and camera (R, t, intrinsics)**: boundary terms by **edge sampling**
  (Li et al. 2018), see ``render/pt_edges.py``:

  - *primary visibility* (``edge_samples``): edges of ``scene.dynamic_faces`` that are
    silhouettes from the camera, boundaries, or creases/material boundaries are sampled
    proportionally to their projected length (stratified); at each sample the radiance just
    inside and just outside the edge is path traced (the same random numbers on both sides) and
    the image gradient is ``(L_in - L_out) * (n . d x_edge / d theta) * length / pdf``, with
    ``x_edge`` the edge point's projection (differentiable torch). Vertices and camera.
  - *secondary visibility at the camera rays' first hits* (``secondary_spp``): at a first hit
    ``x`` on a static face, a candidate edge of the dynamic faces and a point on it are sampled
    uniformly; the incident integrand ``f cos L`` is path traced just beside the edge on both
    sides, and torch differentiates the direction ``omega = normalize(x_edge - x)``. This is what
    moves soft shadows and everything else a static surface sees of a moving object. Vertices.

  - *interior term at the camera rays' hits on moving faces* (``interior_spp``): the hit point
    moves along the fixed camera ray; the next path vertex is held fixed in area measure, so
    the first bounce's geometry factor ``G(x, x2)`` changes (BSDF sampling only: area lights
    and the environment, not point/directional lights; the BSDF value is held fixed, exact for
    diffuse surfaces). Its variance is high where the moving surface touches another one (the
    geometry factor's derivative grows like 1 / distance).

  Not included: visibility changes seen from moving points (e.g. a static object's shadow
  sliding over a moving box) and from later bounces, and interior terms beyond the first
  bounce. Where those vanish the gradient matches finite differences (tests); on the Cornell
  box (translating the short box) ``bench/pathtrace.py`` reports the aggregate error against
  finite differences for each combination of terms (``cornell_box_translation_grad_rel_err_*``).

The image is the box-filtered pixel integral ``(H, W, 3)`` of linear radiance.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .._kernels import pathtrace as K
from .._kernels.bridge import warp_device, wp
from .cameras import Cameras
from .pt_scene import _KINDS, PathTracingScene

_POOL: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, torch.get_num_threads())


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_workers())
    return _POOL


def _f32(x: torch.Tensor, rows: int | None = None, width: int = 3) -> torch.Tensor:
    """float32 contiguous detached copy; empty -> one zero row (Warp arrays need storage)."""
    x = x.detach().to(torch.float32).contiguous()
    if rows is not None and x.shape[0] == 0:
        x = torch.zeros((1,) + tuple(x.shape[1:]), dtype=torch.float32, device=x.device)
    return x


class _Prepared:
    """The Warp-side scene (BVH + struct) for one scene state; keeps every buffer alive."""

    def __init__(self, scene: PathTracingScene):
        dev = scene.device
        self.device = dev
        wdev = warp_device(dev)
        keep = []

        def arr(t, dtype):
            t = t.contiguous()
            keep.append(t)
            return wp.from_torch(t, dtype=dtype)

        verts = _f32(scene.vertices)
        faces = scene.faces.to(torch.int32).contiguous()
        face_material = scene.face_material
        if faces.shape[0] == 0:  # Warp needs a triangle: a degenerate one (never hit)
            verts = torch.zeros(3, 3, device=dev)
            faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
            face_material = torch.zeros(1, dtype=torch.long, device=dev)
        self.points = wp.from_torch(verts, dtype=wp.vec3)
        self.indices = wp.from_torch(faces.reshape(-1), dtype=wp.int32)
        keep += [verts, faces]
        self.mesh = wp.Mesh(points=self.points, indices=self.indices)
        s = K.Scene()
        s.mesh = self.mesh.id
        s.verts = self.points
        s.faces = arr(faces, wp.int32)
        s.face_mat = arr(face_material.to(torch.int32), wp.int32)
        F = faces.shape[0]
        uv = scene.face_uvs if (scene.face_uvs is not None and scene.face_uvs.shape[0] == F) \
            else torch.zeros(F, 3, 2, device=dev)
        s.face_uv = arr(_f32(uv), wp.vec2)
        s.mat_kind = arr(scene.material_kind.to(torch.int32), wp.int32)
        s.mat_albedo = arr(_f32(scene.albedo), wp.vec3)
        s.mat_rough = arr(_f32(scene.roughness), wp.float32)
        s.mat_emit = arr(_f32(scene.emission), wp.vec3)
        M = scene.albedo.shape[0]
        mt = scene.material_texture if scene.material_texture is not None else torch.full((M,), -1, device=dev)
        s.mat_tex = arr(mt.to(torch.int32), wp.int32)
        texs = [_f32(t).reshape(-1, 3) for t in scene.textures]
        info = []
        off = 0
        for t in scene.textures:
            info.append([off, t.shape[1], t.shape[0]])
            off += t.shape[0] * t.shape[1]
        self.tex_size = off
        s.tex_data = arr(torch.cat(texs) if texs else torch.zeros(1, 3, device=dev), wp.vec3)
        s.tex_info = arr(torch.tensor(info if info else [[0, 1, 1]], dtype=torch.int32, device=dev), wp.int32)
        # emissive faces and their cumulative area
        emissive = (scene.emission.detach().amax(dim=1) > 0)[face_material]
        ef = torch.nonzero(emissive).reshape(-1)
        v = verts.to(torch.float64)
        tri = v[faces.long()[ef]]
        area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
        keep_ef = area > 0
        ef, area = ef[keep_ef], area[keep_ef]
        s.n_emit = int(ef.shape[0])
        s.emit_faces = arr(ef.to(torch.int32) if s.n_emit else torch.zeros(1, dtype=torch.int32, device=dev), wp.int32)
        s.emit_cdf = arr(torch.cumsum(area, 0).to(torch.float32) if s.n_emit else torch.ones(1, device=dev),
                         wp.float32)
        zeros = torch.zeros(0, 3, device=dev)
        pp = scene.point_position if scene.point_position is not None else zeros
        pi = scene.point_intensity if scene.point_intensity is not None else zeros
        dd = scene.directional_direction if scene.directional_direction is not None else zeros
        di = scene.directional_irradiance if scene.directional_irradiance is not None else zeros
        s.n_pl, s.n_dl = int(pp.shape[0]), int(dd.shape[0])
        self.n_pl, self.n_dl = s.n_pl, s.n_dl
        s.pl_pos = arr(_f32(pp, rows=1), wp.vec3)
        s.pl_int = arr(_f32(pi, rows=1), wp.vec3)
        s.dl_dir = arr(_f32(dd, rows=1), wp.vec3)
        s.dl_irr = arr(_f32(di, rows=1), wp.vec3)
        if scene.environment is not None:
            env = scene.environment
            s.env = arr(_f32(env).reshape(-1, 3), wp.vec3)
            s.env_w, s.env_h, s.has_env = int(env.shape[1]), int(env.shape[0]), 1
        else:
            s.env = arr(torch.zeros(1, 3, device=dev), wp.vec3)
            s.env_w, s.env_h, s.has_env = 1, 1, 0
        self.struct = s
        self.keep = keep
        self.wdev = wdev
        self.M = M
        self.env_shape = None if scene.environment is None else tuple(scene.environment.shape)

    def new_grads(self):
        """Zeroed gradient buffers (torch tensors) and the Warp struct that views them."""
        dev = self.device
        M = self.M
        t = {
            "albedo": torch.zeros(M, 3, device=dev), "emit": torch.zeros(M, 3, device=dev),
            "rough": torch.zeros(M, device=dev), "tex": torch.zeros(max(self.tex_size, 1), 3, device=dev),
            "pl_int": torch.zeros(max(self.n_pl, 1), 3, device=dev),
            "dl_irr": torch.zeros(max(self.n_dl, 1), 3, device=dev),
            "env": torch.zeros((self.env_shape[0] * self.env_shape[1]) if self.env_shape else 1, 3, device=dev),
        }
        g = K.Grads()
        g.albedo = wp.from_torch(t["albedo"], dtype=wp.vec3)
        g.emit = wp.from_torch(t["emit"], dtype=wp.vec3)
        g.rough = wp.from_torch(t["rough"], dtype=wp.float32)
        g.tex = wp.from_torch(t["tex"], dtype=wp.vec3)
        g.pl_int = wp.from_torch(t["pl_int"], dtype=wp.vec3)
        g.dl_irr = wp.from_torch(t["dl_irr"], dtype=wp.vec3)
        g.env = wp.from_torch(t["env"], dtype=wp.vec3)
        return t, g


def ray_map(cameras: Cameras):
    """The pinhole camera as an affine map of pixel coordinates to ray directions.

    Returns ``(origin, d00, dx, dy)`` (each (3,)): the ray through continuous pixel coordinate
    ``(u, v)`` (u right, v down, pixel (i, j) covering [j, j+1) x [i, i+1)) starts at ``origin``
    with direction ``d00 + u dx + v dy`` (not normalised). Differentiable w.r.t. R, t, intrinsics.
    """
    if not isinstance(cameras, Cameras):
        raise TypeError(f"camera must be a diffvc.render.Cameras, got {type(cameras).__name__}")
    if cameras.batch_size != 1:
        raise ValueError(f"camera must hold exactly one view, got {cameras.batch_size}")
    if cameras.orthographic:
        raise ValueError("camera must be a perspective camera (orthographic is not supported by the path tracer)")
    fx, fy, cx, cy = cameras.intrinsics[0].unbind()
    Rt = cameras.R[0].T
    d00 = Rt @ torch.stack([-cx / fx, cy / fy, -torch.ones_like(fx)])
    dx = Rt[:, 0] / fx
    dy = -Rt[:, 1] / fy
    return cameras.centers[0], d00, dx, dy


def _camera_struct(cameras: Cameras):
    o, d00, dx, dy = (x.detach().to(torch.float64).cpu().tolist() for x in ray_map(cameras))
    c = K.Camera()
    c.origin, c.d00, c.dx, c.dy = wp.vec3(*o), wp.vec3(*d00), wp.vec3(*dx), wp.vec3(*dy)
    c.width, c.height = int(cameras.width), int(cameras.height)
    return c


def _launch_split(kernel, n: int, args_for, wdev: str, parallel: bool):
    """Launch ``kernel(offset, *args)`` over ``n`` threads; on CPU split into one chunk per core
    (``args_for(worker)`` gives each chunk its own arguments, e.g. its own gradient buffers)."""
    workers = _workers() if (parallel and wdev == "cpu" and n >= 2 * 256) else 1
    if wdev != "cpu":  # Warp launches on its own stream: let torch's pending work finish first
        torch.cuda.synchronize(torch.device(wdev))
    if workers == 1:
        wp.launch(kernel, dim=n, inputs=[0] + args_for(0), device=wdev, record_tape=False)
        return
    kernel.module.load(wdev)
    chunk = (n + workers - 1) // workers
    futures = [_pool().submit(wp.launch, kernel, dim=min(chunk, n - k * chunk), inputs=[k * chunk] + args_for(k),
                              device=wdev, record_tape=False) for k in range(workers)]
    for f in futures:
        f.result()


def _sync(dev: torch.device):
    if dev.type == "cuda":
        wp.synchronize_device(warp_device(dev))


class _PathTraceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prep, cam, opts, albedo, roughness, emission, textures_flat, point_intensity, dir_irradiance,
                environment):
        H, W = cam.height, cam.width
        spp, seed, max_depth, rr_depth = opts
        image = torch.zeros(H * W, 3, device=prep.device)
        _, g = prep.new_grads()
        adj = wp.from_torch(image, dtype=wp.vec3)
        out = wp.from_torch(image, dtype=wp.vec3)
        _launch_split(K.render_pixels, H * W,
                      lambda k: [prep.struct, g, cam, spp, seed, max_depth, rr_depth, 0, adj, out], prep.wdev, True)
        _sync(prep.device)
        ctx.prep, ctx.cam, ctx.opts = prep, cam, opts
        ctx.dtypes = [None if x is None else x.dtype for x in
                      (albedo, roughness, emission, textures_flat, point_intensity, dir_irradiance, environment)]
        return image.reshape(H, W, 3).to(albedo.dtype)

    @staticmethod
    def backward(ctx, grad_image):
        prep, cam = ctx.prep, ctx.cam
        spp, seed, max_depth, rr_depth = ctx.opts
        H, W = cam.height, cam.width
        adj_t = grad_image.detach().reshape(H * W, 3).to(torch.float32).contiguous()
        adj = wp.from_torch(adj_t, dtype=wp.vec3)
        dummy = wp.from_torch(torch.zeros(1, 3, device=prep.device), dtype=wp.vec3)
        parallel = prep.device.type == "cpu"
        n_buf = _workers() if parallel else 1
        bufs = [prep.new_grads() for _ in range(n_buf)]  # one set per CPU worker: CPU atomics are not atomic
        _launch_split(K.render_pixels, H * W,
                      lambda k: [prep.struct, bufs[k][1], cam, spp, seed, max_depth, rr_depth, 1, adj, dummy],
                      prep.wdev, parallel)
        _sync(prep.device)
        tot = {k: sum(b[0][k] for b in bufs) for k in bufs[0][0]}
        d = ctx.dtypes
        out = [tot["albedo"].to(d[0]), tot["rough"].to(d[1]), tot["emit"].to(d[2]),
               tot["tex"][: prep.tex_size].to(d[3]) if d[3] is not None else None,
               tot["pl_int"][: prep.n_pl].to(d[4]) if d[4] is not None else None,
               tot["dl_irr"][: prep.n_dl].to(d[5]) if d[5] is not None else None,
               tot["env"].reshape(prep.env_shape).to(d[6]) if d[6] is not None else None]
        return (None, None, None, *out)


def _check(scene, camera, spp, max_depth, rr_depth, edge_samples):
    if not isinstance(scene, PathTracingScene):
        raise TypeError(f"scene must be a PathTracingScene, got {type(scene).__name__}")
    if int(spp) < 1:
        raise ValueError(f"spp must be >= 1, got {spp}")
    if int(max_depth) < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    if int(rr_depth) < 1:
        raise ValueError(f"rr_depth must be >= 1, got {rr_depth}")
    if int(edge_samples) < 0:
        raise ValueError(f"edge_samples must be >= 0, got {edge_samples}")
    if not isinstance(camera, Cameras):
        raise TypeError(f"camera must be a diffvc.render.Cameras, got {type(camera).__name__}")
    if camera.device != scene.device:
        raise ValueError(f"camera is on {camera.device} but scene on {scene.device}")


def path_trace(scene: PathTracingScene, camera: Cameras, spp: int = 16, max_depth: int = 8, seed: int = 0,
               rr_depth: int = 5, edge_samples: int = 0, edge_spp: int = 4, secondary_spp: int = 0,
               interior_spp: int = 0) -> torch.Tensor:
    """Render ``scene`` through ``camera`` by path tracing.

    Args:
        scene: the scene.
        camera: one perspective view (B = 1).
        spp: samples per pixel (stratified only by pixel; jittered uniformly inside it).
        max_depth: maximum number of bounces (0: only emitters/environment seen directly;
            1: direct lighting; 8: eight bounces).
        seed: random seed; the image is a deterministic function of the scene, the camera and it.
        rr_depth: Russian roulette starts after this many bounces.
        edge_samples: number of edge samples for the geometry/camera gradient (0 disables the
            boundary term; it is only computed when vertices or camera tensors require grad).
        edge_spp: paths traced on each side of each edge sample.
        secondary_spp: edge samples per pixel for the secondary-visibility boundary term at the
            camera rays' first hits (shadows and everything else those points see move with the
            vertices); 0 disables it.
        interior_spp: samples per pixel for the interior term at camera-ray hits on moving faces
            (their first-bounce geometry factor, next vertex fixed in area measure; area lights and
            the environment, not point/directional lights); 0 disables it.

    Returns:
        (H, W, 3) linear radiance, dtype of ``scene.albedo``. Differentiable w.r.t. albedo,
        roughness, textures, emission, point/directional light intensities, the environment map (path replay)
        and, when ``edge_samples > 0``, vertices and camera (primary-visibility boundary term).
    """
    _check(scene, camera, spp, max_depth, rr_depth, edge_samples)
    prep = _Prepared(scene)
    cam = _camera_struct(camera)
    texflat = torch.cat([t.reshape(-1, 3) for t in scene.textures]) if scene.textures else None
    image = _PathTraceFn.apply(prep, cam, (int(spp), int(seed), int(max_depth), int(rr_depth)), scene.albedo,
                               scene.roughness, scene.emission, texflat, scene.point_intensity,
                               scene.directional_irradiance, scene.environment)
    needs_geo = scene.vertices.requires_grad or any(
        x.requires_grad for x in (camera.R, camera.t, camera.intrinsics))
    if edge_samples > 0 and needs_geo and torch.is_grad_enabled():
        from .pt_edges import edge_term

        image = image + edge_term(prep, scene, camera, int(edge_samples), int(edge_spp), int(seed) + 7919,
                                  int(max_depth), int(rr_depth)).to(image.dtype)
    if secondary_spp > 0 and scene.vertices.requires_grad and torch.is_grad_enabled():
        from .pt_edges import secondary_term

        image = image + secondary_term(prep, scene, cam, camera.height, camera.width, int(secondary_spp),
                                       int(seed) + 104729, int(max_depth), int(rr_depth)).to(image.dtype)
    if interior_spp > 0 and scene.vertices.requires_grad and torch.is_grad_enabled():
        from .pt_edges import interior_term

        image = image + interior_term(prep, scene, cam, camera, camera.height, camera.width, int(interior_spp),
                                      int(seed) + 15485863, int(max_depth), int(rr_depth)).to(image.dtype)
    return image


def radiance_at(scene: PathTracingScene, camera: Cameras, points: torch.Tensor, spp: int = 16, max_depth: int = 8,
                seed: int = 0, rr_depth: int = 5, pair: int | None = None, prep: _Prepared | None = None):
    """Mean radiance (N, 3) of ``spp`` paths through continuous pixel coordinates ``points``
    (N, 2) (no gradients). With ``pair = n``, point ``i`` uses the random numbers of point
    ``i % n`` (correlated sampling of paired points)."""
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
    prep = prep or _Prepared(scene)
    cam = _camera_struct(camera)
    N = points.shape[0]
    pts = points.detach().to(torch.float32).contiguous()
    out = torch.zeros(N, 3, device=scene.device)
    if N == 0:
        return out
    _, g = prep.new_grads()
    wpts = wp.from_torch(pts, dtype=wp.vec2)
    wout = wp.from_torch(out, dtype=wp.vec3)
    _launch_split(K.render_points, N, lambda k: [prep.struct, g, cam, wpts, int(spp), int(seed), int(max_depth),
                                                 int(rr_depth), int(pair or N), wout], prep.wdev, True)
    _sync(scene.device)
    return out


_KIND_NAMES = _KINDS


def bsdf_eval(kind: str, albedo: torch.Tensor, roughness: float, n: torch.Tensor, wo: torch.Tensor,
              wi: torch.Tensor):
    """The path tracer's BSDF (Warp kernel, float32, no gradients): ``(f (N, 3), pdf (N,))`` for
    unit normals/directions (N, 3); ``pdf`` is the solid-angle density of :func:`bsdf_sample`."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    N = n.shape[0]
    c = [x.detach().to(torch.float32).contiguous() for x in (albedo, n, wo, wi)]
    f = torch.zeros(N, 3, device=n.device)
    pdf = torch.zeros(N, device=n.device)
    if n.device.type == "cuda":
        torch.cuda.synchronize(n.device)
    wp.launch(K.eval_bsdf, dim=N, inputs=[_KIND_NAMES[kind], float(roughness)] + [wp.from_torch(x, dtype=wp.vec3)
                                                                                   for x in c],
              outputs=[wp.from_torch(f, dtype=wp.vec3), wp.from_torch(pdf)], device=warp_device(n.device))
    _sync(n.device)
    return f, pdf


def bsdf_sample(kind: str, roughness: float, n: torch.Tensor, wo: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Directions (N, 3) drawn by the path tracer's BSDF sampling routine (may point below the surface)."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    N = n.shape[0]
    wi = torch.zeros(N, 3, device=n.device)
    c = [x.detach().to(torch.float32).contiguous() for x in (n, wo)]
    if n.device.type == "cuda":
        torch.cuda.synchronize(n.device)
    wp.launch(K.sample_bsdf_dirs, dim=N, inputs=[_KIND_NAMES[kind], float(roughness)] +
              [wp.from_torch(x, dtype=wp.vec3) for x in c] + [int(seed)], outputs=[wp.from_torch(wi, dtype=wp.vec3)],
              device=warp_device(n.device))
    _sync(n.device)
    return wi


def bsdf_torch(kind: str, albedo: torch.Tensor, roughness, n, wo, wi) -> torch.Tensor:
    """Plain-torch twin of :func:`bsdf_eval`'s ``f`` (differentiable), built on
    :mod:`diffvc.render.shading`: diffuse ``lambert(albedo)``; conductor
    ``ggx_specular(f0=albedo)``; plastic ``ggx_specular(f0=0.04) + lambert(albedo)(1-F_i)(1-F_o)``."""
    from .shading import fresnel_schlick, ggx_specular, lambert

    ci = (n * wi).sum(-1, keepdim=True)
    co = (n * wo).sum(-1, keepdim=True)
    above = ((ci > 0) & (co > 0)).to(albedo.dtype)
    r = torch.as_tensor(roughness, dtype=albedo.dtype, device=albedo.device)
    if kind == "diffuse":
        return lambert(albedo) * above
    if kind == "conductor":
        return ggx_specular(n, wi, wo, r, albedo)
    if kind == "plastic":
        f0 = torch.full_like(albedo, 0.04)
        base = lambert(albedo) * (1 - fresnel_schlick(ci, f0)) * (1 - fresnel_schlick(co, f0)) * above
        return ggx_specular(n, wi, wo, r, f0) + base
    raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
