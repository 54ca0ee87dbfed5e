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
  - *every later path vertex* (``secondary_spp``, ``interior_spp``; ``pt_edges.path_terms``):
    camera paths are traced for up to ``max_depth`` vertices. With both counts > 0 every vertex
    is a warped-area point (Bangaru et al. 2020: points of moving faces move with them, static
    points near them are carried along tangentially; bounded variance where a moving object
    touches a static one), with pixel-border terms and the primary edges' sides relative to
    their warped hits; with one of them alone every vertex slides along the
    direction it was sampled in (the first along its camera ray; solid-angle parameterisation,
    Li et al. 2018). Light samples are material points of the emitters (area measure, as
    next-event estimation samples them). ``interior_spp`` paths per pixel differentiate one
    next-event connection per vertex (geometry factor, area element) and the cosine of every
    sampled link; the BSDF value is held fixed (exact for diffuse surfaces). ``secondary_spp``
    paths per pixel sample one edge per vertex, chosen in proportion to the angle it subtends
    (edges of static faces get a tenth of the weight until the path has touched a moving face):
    ``f cos L`` is path traced just beside it on both sides and torch differentiates the edge's
    direction from the (moving) vertex (at camera hits without the direct emission, whose
    boundary is the shadow term below). Sliding vertices
    instead of material ones (Zhang et al. 2020) leave no geometry factor between a moving and
    a static surface to differentiate, whose 1 / distance growth made the contact band
    heavy-tailed.
  - *shadows* (with ``secondary_spp``; ``pt_edges.shadow_pool``): the visibility boundary of
    direct light is sampled from the light's side, the way projective and path-space methods
    sample boundary segments from a light (Zhang et al. 2020, 2023): a light point (point
    light, directional light, or a point of an emissive face uniform in area), a silhouette
    edge seen from it, and the shadow line where the ray through the edge meets the receiver.
    Each line point is connected to the camera (image space), and path vertices connect to one
    point of the point and directional lights' lines each (solid angle); the lit side's
    radiance times the line's normal motion is added. Soft shadows seen from later vertices
    stay with the edge term (the emission beside the edge relative to the emitter's material
    point). Diffuse receivers and diffuse connecting vertices only (others get no shadow term);
    textures are read as the material albedo.

  Not included: BSDF changes of glossy surfaces under rotation. Tests compare against central
  finite differences and closed forms (``tests/render/test_pathtrace_accuracy.py``);
  ``bench/pathtrace.py`` reports the Cornell box's translation gradient against finite
  differences, image and 8x8 blocks, at max_depth 1 and 7.

The image is the box-filtered pixel integral ``(H, W, 3)`` of linear radiance.
"""

from __future__ import annotations

import torch

from .._kernels import pathtrace as K
from .._validate import as_int
from .cameras import Cameras
from .pt_edges import edge_term, path_terms
from .pt_scene import _KINDS, PathTracingScene


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


def camera_rays(cameras: Cameras) -> tuple:
    """``(origin, d00, dx, dy, width, height)``: :func:`ray_map` detached, with the image size (the
    camera as the path-tracing kernels take it)."""
    return (*(x.detach() for x in ray_map(cameras)), int(cameras.width), int(cameras.height))


class _PathTraceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prep, cam, opts, albedo, roughness, emission, textures_flat, point_intensity, dir_irradiance,
                environment):
        W, H = cam[4], cam[5]
        image = K.render(prep, cam, *opts)
        ctx.prep, ctx.cam, ctx.opts = prep, cam, opts
        ctx.dtypes = [None if x is None else x.dtype for x in
                      (albedo, roughness, emission, textures_flat, point_intensity, dir_irradiance, environment)]
        ctx.env_shape = None if environment is None else tuple(environment.shape)
        return image.reshape(H, W, 3).to(albedo.dtype)

    @staticmethod
    def backward(ctx, grad_image):
        W, H = ctx.cam[4], ctx.cam[5]
        tot = K.replay(ctx.prep, ctx.cam, grad_image.reshape(H * W, 3), *ctx.opts)
        d = ctx.dtypes
        out = [tot["albedo"].to(d[0]), tot["rough"].to(d[1]), tot["emit"].to(d[2]),
               tot["tex"].to(d[3]) if d[3] is not None else None,
               tot["pl_int"].to(d[4]) if d[4] is not None else None,
               tot["dl_irr"].to(d[5]) if d[5] is not None else None,
               tot["env"].reshape(ctx.env_shape).to(d[6]) if d[6] is not None else None]
        return (None, None, None, *out)


def _check(scene, camera, spp, max_depth, rr_depth, edge_samples):
    if not isinstance(scene, PathTracingScene):
        raise TypeError(f"scene must be a PathTracingScene, got {type(scene).__name__}")
    as_int(spp, "spp", minimum=1)
    as_int(max_depth, "max_depth", minimum=0)
    as_int(rr_depth, "rr_depth", minimum=1)
    as_int(edge_samples, "edge_samples", minimum=0)
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
        secondary_spp: camera paths per pixel for the visibility (boundary) term at every path
            vertex (reflections, inter-reflections), and ``max(4096, H W secondary_spp)``
            samples of the shadow lines of each point and directional light and of the area
            lights (soft shadows); 0 disables both.
        interior_spp: camera paths per pixel for the interior term at every path vertex (geometry
            factors of the links and next-event connections); 0 disables it. Equal
            ``secondary_spp`` and ``interior_spp`` share one set of paths.

    Returns:
        (H, W, 3) linear radiance, dtype of ``scene.albedo``. Differentiable w.r.t. albedo,
        roughness, textures, emission, point/directional light intensities, the environment map (path replay)
        and, when ``edge_samples > 0``, vertices and camera (primary-visibility boundary term).
    """
    _check(scene, camera, spp, max_depth, rr_depth, edge_samples)
    prep = K.prepare_scene(scene)
    cam = camera_rays(camera)
    texflat = torch.cat([t.reshape(-1, 3) for t in scene.textures]) if scene.textures else None
    image = _PathTraceFn.apply(prep, cam, (int(spp), int(seed), int(max_depth), int(rr_depth)), scene.albedo,
                               scene.roughness, scene.emission, texflat, scene.point_intensity,
                               scene.directional_irradiance, scene.environment)
    needs_geo = scene.vertices.requires_grad or any(
        x.requires_grad for x in (camera.R, camera.t, camera.intrinsics))
    if edge_samples > 0 and needs_geo and torch.is_grad_enabled():
        warped = secondary_spp > 0 and interior_spp > 0 and max_depth >= 1 and scene.vertices.requires_grad
        image = image + edge_term(prep, scene, camera, cam, int(edge_samples), int(edge_spp), int(seed) + 7919,
                                  int(max_depth), int(rr_depth), warped).to(image.dtype)
    if (secondary_spp > 0 or interior_spp > 0) and scene.vertices.requires_grad and torch.is_grad_enabled():
        image = image + path_terms(prep, scene, cam, camera.height, camera.width, int(secondary_spp), int(interior_spp),
                                   int(seed) + 104729, int(max_depth), int(rr_depth)).to(image.dtype)
    return image


def radiance_at(scene: PathTracingScene, camera: Cameras, points: torch.Tensor, spp: int = 16, max_depth: int = 8,
                seed: int = 0, rr_depth: int = 5, pair: int | None = None, prep: K.PreparedScene | None = None):
    """Mean radiance (N, 3) float32 of ``spp`` paths through continuous pixel coordinates
    ``points`` (N, 2) (no gradients). With ``pair = n``, point ``i`` uses the random numbers of
    point ``i % n`` (correlated sampling of paired points)."""
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {tuple(points.shape)}")
    prep = prep or K.prepare_scene(scene)
    return K.radiance_at_points(prep, camera_rays(camera), points, int(spp), int(seed), int(max_depth), int(rr_depth),
                                int(pair or points.shape[0]))


_KIND_NAMES = _KINDS


def bsdf_eval(kind: str, albedo: torch.Tensor, roughness: float, n: torch.Tensor, wo: torch.Tensor,
              wi: torch.Tensor):
    """The path tracer's BSDF (Warp kernel, float32, no gradients): ``(f (N, 3), pdf (N,))`` for
    unit normals/directions (N, 3); ``pdf`` is the solid-angle density of :func:`bsdf_sample`."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    return K.bsdf_values(_KIND_NAMES[kind], float(roughness), albedo, n, wo, wi)


def bsdf_sample(kind: str, roughness: float, n: torch.Tensor, wo: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Directions (N, 3) drawn by the path tracer's BSDF sampling routine (may point below the surface)."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {sorted(_KIND_NAMES)}, got {kind!r}")
    return K.bsdf_directions(_KIND_NAMES[kind], float(roughness), n, wo, int(seed))


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
