"""Warp kernels for ray casting and path tracing (float32; Warp's BVH is float32).

One module, compiled once, without Warp's automatic adjoints (``enable_backward=False``): the
differentiable parts are either recomputed in torch (hit points, see ``render/raytrace.py``) or
written by hand as *path replay backpropagation* (Vicini et al. 2021) in :func:`trace_path`.

Path tracer conventions
-----------------------
* Surfaces are two-sided for scattering (the shading normal is the face normal flipped towards the
  incoming ray); emission leaves the front side only (the side of ``cross(v1 - v0, v2 - v0)``).
* Materials (``kind``): 0 diffuse (``albedo / pi``), 1 rough conductor (GGX, Smith G, Schlick
  Fresnel with ``F0 = albedo``), 2 rough plastic (GGX dielectric coating with ``F0 = 0.04`` over a
  diffuse base ``albedo * (1 - F(cos_i)) (1 - F(cos_o)) / pi``). ``roughness`` is perceptual (GGX alpha = roughness^2, as in ``render/shading.py``).
  Every BSDF is affine in ``albedo``: ``f = A * albedo + B`` with scalars ``A``, ``B``; the
  gradient code relies on that.
* Lights: emissive triangles (radiance ``emission`` of their material), point lights
  (intensity W/sr), directional lights (irradiance W/m^2 on a surface facing them) and a lat-long
  environment map (radiance, bilinear). Next-event estimation picks one light source uniformly
  (all emissive triangles count as one source, sampled by area) and combines with BSDF sampling
  by the power heuristic (area lights and the environment; point and directional lights are
  delta lights).
* Russian roulette from depth ``rr_depth`` on, survival ``min(max(beta), 0.95)``.
* Random numbers: ``rand_init(seed, pixel * spp + sample)``; the path of a sample is a pure
  function of the scene and that state, which is what lets the backward pass replay it.

Host side (end of this module): torch-in, torch-out functions, the only way the rest of diffvc
reaches these kernels. :func:`prepare_scene` turns a scene's tensors into an opaque
:class:`PreparedScene` (BVH + Warp struct); :func:`render`, :func:`replay`,
:func:`radiance_at_points`, :func:`path_derivative`,
:func:`closest_hits`, :func:`bsdf_values` and :func:`bsdf_directions` launch the kernels through
the bridge's one split launch (:func:`~diffvc._kernels.bridge.parallel_launch`) and stream policy.
A camera is the tuple ``(origin, d00, dx, dy, width, height)`` of
:func:`diffvc.render.pathtrace.ray_map` plus the image size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from .bridge import parallel_launch, split_chunks, torch_stream, wp
from .geometry import MeshBVH

wp.set_module_options({"enable_backward": False})

PI = wp.constant(math.pi)
INV_PI = wp.constant(1.0 / math.pi)
INV_4PI = wp.constant(1.0 / (4.0 * math.pi))
RAY_EPS = wp.constant(1.0e-4)


# ----------------------------------------------------------------------------------------------
# Ray casting (primary visibility, shadow rays)
# ----------------------------------------------------------------------------------------------


@wp.kernel
def cast_rays(offset: int, mesh: wp.uint64, origins: wp.array(dtype=wp.vec3), dirs: wp.array(dtype=wp.vec3),
              tmax: wp.array(dtype=wp.float32), face: wp.array(dtype=wp.int32), t: wp.array(dtype=wp.float32)):
    """Closest hit along each ray within ``(0, tmax]``: face index (-1 on a miss) and distance in
    units of ``|dir|``."""
    i = wp.tid() + offset
    q = wp.mesh_query_ray(mesh, origins[i], dirs[i], tmax[i])
    if q.result:
        face[i] = q.face
        t[i] = q.t
    else:
        face[i] = -1
        t[i] = tmax[i]


# ----------------------------------------------------------------------------------------------
# Scene and gradient containers
# ----------------------------------------------------------------------------------------------


@wp.struct
class Scene:
    mesh: wp.uint64
    verts: wp.array(dtype=wp.vec3)
    faces: wp.array(dtype=wp.int32, ndim=2)
    face_n: wp.array(dtype=wp.vec3)  # unit normals (:func:`unit_face_normal`; zero for a degenerate face)
    face_mat: wp.array(dtype=wp.int32)
    face_uv: wp.array(dtype=wp.vec2, ndim=2)
    mat_kind: wp.array(dtype=wp.int32)
    mat_albedo: wp.array(dtype=wp.vec3)
    mat_rough: wp.array(dtype=wp.float32)
    mat_emit: wp.array(dtype=wp.vec3)
    mat_tex: wp.array(dtype=wp.int32)
    tex_data: wp.array(dtype=wp.vec3)
    tex_info: wp.array(dtype=wp.int32, ndim=2)  # (offset, width, height)
    emit_faces: wp.array(dtype=wp.int32)
    emit_cdf: wp.array(dtype=wp.float32)  # cumulative area, last entry = total area
    n_emit: int
    pl_pos: wp.array(dtype=wp.vec3)
    pl_int: wp.array(dtype=wp.vec3)
    n_pl: int
    dl_dir: wp.array(dtype=wp.vec3)  # unit direction towards the light
    dl_irr: wp.array(dtype=wp.vec3)
    n_dl: int
    env: wp.array(dtype=wp.vec3)
    env_w: int
    env_h: int
    has_env: int
    # small-scene BVH (see :func:`small_bvh`): n_nodes 4-wide nodes, node k's child boxes as rows
    # 6 k .. 6 k + 5 of bvh_box (lo x, lo y, lo z, hi x, hi y, hi z of the 4 children) and its
    # children in bvh_child[k] (>= 0: a node, < 0: -(1 + leaf), BVH_EMPTY: no child);
    # n_nodes = 0 for larger scenes (then Warp's mesh BVH is queried)
    bvh_box: wp.array(dtype=wp.vec4)
    bvh_child: wp.array(dtype=wp.vec4i)
    n_nodes: int
    # leaf q: up to LEAF_LANES primitives (triangles or parallelograms) side by side: entries
    # 9 L q .. 9 L (q + 1) - 1 of leaf_tri (L = LEAF_LANES) are v0 x, v0 y, v0 z, e1 x, e1 y, e1 z,
    # e2 x, e2 y, e2 z of its lanes (L each), entries 2 L q .. 2 L (q + 1) - 1 of leaf_face the
    # face where u + v <= 1 and the face of the far half (-1: none) per lane; an unused lane has
    # e1 = e2 = 0 and faces -1
    leaf_tri: wp.array(dtype=wp.float32)
    leaf_face: wp.array(dtype=wp.int32)
    native_bvh: int  # 1: traverse with :func:`small_bvh_hit` (CPU), 0: the Warp-language loop


@wp.struct
class Camera:
    origin: wp.vec3
    d00: wp.vec3  # direction (unnormalised) through pixel coordinate (0, 0)
    dx: wp.vec3  # change of the direction per pixel in x
    dy: wp.vec3  # change of the direction per pixel in y
    width: int
    height: int


@wp.struct
class Grads:
    """Gradient accumulators, float64: a backward pass adds millions of small float32 terms into
    a few entries (the emitter's gradient is the sum of every path's emitted contribution), which
    float32 accumulation biases low (0.46% at depth 8, 64 spp, one buffer). Terms are computed in
    float32 and added in float64 (:func:`add3`, :func:`add1`)."""
    albedo: wp.array(dtype=wp.vec3d)
    emit: wp.array(dtype=wp.vec3d)
    rough: wp.array(dtype=wp.float64)
    tex: wp.array(dtype=wp.vec3d)
    pl_int: wp.array(dtype=wp.vec3d)
    dl_irr: wp.array(dtype=wp.vec3d)
    env: wp.array(dtype=wp.vec3d)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


@wp.func
def add3(buf: wp.array(dtype=wp.vec3d), i: int, g: wp.vec3):
    """``buf[i] += g`` in float64 (atomic)."""
    wp.atomic_add(buf, i, wp.vec3d(wp.float64(g[0]), wp.float64(g[1]), wp.float64(g[2])))


@wp.func
def add1(buf: wp.array(dtype=wp.float64), i: int, g: float):
    """``buf[i] += g`` in float64 (atomic)."""
    wp.atomic_add(buf, i, wp.float64(g))


@wp.func
def cmul(a: wp.vec3, b: wp.vec3):
    return wp.cw_mul(a, b)


@wp.func
def max3(a: wp.vec3):
    return wp.max(a[0], wp.max(a[1], a[2]))


@wp.func
def safe_div3(a: wp.vec3, b: wp.vec3):
    r = wp.vec3(0.0)
    for k in range(3):
        if wp.abs(b[k]) > 1.0e-30:
            r[k] = a[k] / b[k]
    return r


@wp.func
def onb_x(n: wp.vec3):
    s = 1.0
    if n[2] < 0.0:
        s = -1.0
    a = -1.0 / (s + n[2])
    b = n[0] * n[1] * a
    return wp.vec3(1.0 + s * n[0] * n[0] * a, s * b, -s * n[0])


@wp.func
def onb_y(n: wp.vec3):
    s = 1.0
    if n[2] < 0.0:
        s = -1.0
    a = -1.0 / (s + n[2])
    b = n[0] * n[1] * a
    return wp.vec3(b, s + n[1] * n[1] * a, -n[1])


@wp.func
def power_heuristic(a: float, b: float):
    a2 = a * a
    b2 = b * b
    if a2 + b2 <= 0.0:
        return 0.0
    return a2 / (a2 + b2)


@wp.func
def tex_lookup(data: wp.array(dtype=wp.vec3), offset: int, w: int, h: int, uv: wp.vec2):
    """Bilinear lookup, texel centres at ((i + 0.5) / w, (j + 0.5) / h); u wraps, v clamps.
    Row j = 0 is v = 0."""
    x = uv[0] * float(w) - 0.5
    y = uv[1] * float(h) - 0.5
    x0f = wp.floor(x)
    y0f = wp.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = int(x0f)
    y0 = int(y0f)
    x0w = ((x0 % w) + w) % w
    x1w = (((x0 + 1) % w) + w) % w
    y0c = wp.clamp(y0, 0, h - 1)
    y1c = wp.clamp(y0 + 1, 0, h - 1)
    c00 = data[offset + y0c * w + x0w]
    c10 = data[offset + y0c * w + x1w]
    c01 = data[offset + y1c * w + x0w]
    c11 = data[offset + y1c * w + x1w]
    return (c00 * (1.0 - fx) + c10 * fx) * (1.0 - fy) + (c01 * (1.0 - fx) + c11 * fx) * fy


@wp.func
def tex_scatter(grad: wp.array(dtype=wp.vec3d), offset: int, w: int, h: int, uv: wp.vec2, g: wp.vec3):
    """Adjoint of :func:`tex_lookup`: add ``g`` to the four texels with the bilinear weights."""
    x = uv[0] * float(w) - 0.5
    y = uv[1] * float(h) - 0.5
    x0f = wp.floor(x)
    y0f = wp.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = int(x0f)
    y0 = int(y0f)
    x0w = ((x0 % w) + w) % w
    x1w = (((x0 + 1) % w) + w) % w
    y0c = wp.clamp(y0, 0, h - 1)
    y1c = wp.clamp(y0 + 1, 0, h - 1)
    add3(grad, offset + y0c * w + x0w, g * ((1.0 - fx) * (1.0 - fy)))
    add3(grad, offset + y0c * w + x1w, g * (fx * (1.0 - fy)))
    add3(grad, offset + y1c * w + x0w, g * ((1.0 - fx) * fy))
    add3(grad, offset + y1c * w + x1w, g * (fx * fy))


@wp.func
def env_uv(d: wp.vec3):
    """Lat-long coordinates of a unit direction: u = atan2(d.x, -d.z) / 2pi + 0.5 (u = 0.5 looks
    down -z), v = acos(d.y) / pi (v = 0 is straight up, +y)."""
    u = wp.atan2(d[0], -d[2]) * (0.5 * INV_PI) + 0.5
    v = wp.acos(wp.clamp(d[1], -1.0, 1.0)) * INV_PI
    return wp.vec2(u, v)


@wp.func(inline=True)
def env_radiance(scene: Scene, d: wp.vec3):
    if scene.has_env == 0:
        return wp.vec3(0.0)
    return tex_lookup(scene.env, 0, scene.env_w, scene.env_h, env_uv(d))


# ----------------------------------------------------------------------------------------------
# BSDFs: f = A * albedo + B (scalars A, B), cosine NOT included
# ----------------------------------------------------------------------------------------------


@wp.func
def ggx_d(cos_h: float, alpha: float):
    a2 = alpha * alpha
    c2 = cos_h * cos_h
    den = c2 * (a2 - 1.0) + 1.0
    return a2 / (PI * den * den)


@wp.func
def smith_g1(cos_v: float, alpha: float):
    a2 = alpha * alpha
    c2 = cos_v * cos_v
    return 2.0 * cos_v / (cos_v + wp.sqrt(a2 + (1.0 - a2) * c2))


@wp.func
def schlick_weight(c: float):
    m = wp.clamp(1.0 - c, 0.0, 1.0)
    m2 = m * m
    return m2 * m2 * m


@wp.func
def bsdf_ab(kind: int, alpha: float, n: wp.vec3, wo: wp.vec3, wi: wp.vec3):
    """(A, B) with f = A * albedo + B, zero below the surface."""
    co = wp.dot(n, wo)
    ci = wp.dot(n, wi)
    if co <= 0.0 or ci <= 0.0:
        return wp.vec2(0.0, 0.0)
    if kind == 0:
        return wp.vec2(INV_PI, 0.0)
    h = wp.normalize(wo + wi)
    ch = wp.dot(n, h)
    oh = wp.max(wp.dot(wo, h), 0.0)
    spec = ggx_d(ch, alpha) * smith_g1(co, alpha) * smith_g1(ci, alpha) / (4.0 * co * ci)
    sw = schlick_weight(oh)
    if kind == 1:
        return wp.vec2(spec * (1.0 - sw), spec * sw)
    f = 0.04 + 0.96 * sw
    fi = 0.04 + 0.96 * schlick_weight(ci)
    fo = 0.04 + 0.96 * schlick_weight(co)
    return wp.vec2((1.0 - fi) * (1.0 - fo) * INV_PI, spec * f)


@wp.func
def bsdf_ab_drough(kind: int, rough: float, n: wp.vec3, wo: wp.vec3, wi: wp.vec3):
    """d(A, B)/d(perceptual roughness), by a central difference of the closed form (smooth in the
    roughness; step 1e-3)."""
    if kind == 0:
        return wp.vec2(0.0, 0.0)
    h = 1.0e-3
    ap = wp.max((rough + h) * (rough + h), 1.0e-3)
    am = wp.max((rough - h) * (rough - h), 1.0e-3)
    return (bsdf_ab(kind, ap, n, wo, wi) - bsdf_ab(kind, am, n, wo, wi)) / (2.0 * h)


@wp.func
def plastic_spec_prob(co: float):
    fo = 0.04 + 0.96 * schlick_weight(co)
    return wp.clamp(fo * 4.0, 0.1, 0.9)


@wp.func
def bsdf_pdf(kind: int, alpha: float, n: wp.vec3, wo: wp.vec3, wi: wp.vec3):
    """Solid-angle density of :func:`bsdf_sample` producing ``wi``."""
    co = wp.dot(n, wo)
    ci = wp.dot(n, wi)
    if co <= 0.0 or ci <= 0.0:
        return 0.0
    pdf_diff = ci * INV_PI
    if kind == 0:
        return pdf_diff
    h = wp.normalize(wo + wi)
    ch = wp.dot(n, h)
    oh = wp.dot(wo, h)
    pdf_spec = 0.0
    if oh > 0.0:
        pdf_spec = ggx_d(ch, alpha) * ch / (4.0 * oh)
    if kind == 1:
        return pdf_spec
    ps = plastic_spec_prob(co)
    return ps * pdf_spec + (1.0 - ps) * pdf_diff


@wp.func
def sample_cosine(n: wp.vec3, u1: float, u2: float):
    r = wp.sqrt(u1)
    phi = 2.0 * PI * u2
    z = wp.sqrt(wp.max(0.0, 1.0 - u1))
    return onb_x(n) * (r * wp.cos(phi)) + onb_y(n) * (r * wp.sin(phi)) + n * z


@wp.func
def sample_ggx_h(n: wp.vec3, alpha: float, u1: float, u2: float):
    t2 = alpha * alpha * u1 / wp.max(1.0 - u1, 1.0e-12)
    ct = 1.0 / wp.sqrt(1.0 + t2)
    st = wp.sqrt(wp.max(0.0, 1.0 - ct * ct))
    phi = 2.0 * PI * u2
    return onb_x(n) * (st * wp.cos(phi)) + onb_y(n) * (st * wp.sin(phi)) + n * ct


@wp.func
def bsdf_sample(kind: int, alpha: float, n: wp.vec3, wo: wp.vec3, u0: float, u1: float, u2: float):
    """A direction (maybe below the surface: then pdf/f are zero and the path ends)."""
    if kind == 0:
        return sample_cosine(n, u1, u2)
    use_spec = kind == 1
    if kind == 2:
        use_spec = u0 < plastic_spec_prob(wp.dot(n, wo))
    if use_spec:
        h = sample_ggx_h(n, alpha, u1, u2)
        return h * (2.0 * wp.dot(wo, h)) - wo
    return sample_cosine(n, u1, u2)


# ----------------------------------------------------------------------------------------------
# Path tracing with replay
# ----------------------------------------------------------------------------------------------


@wp.func
def face_normal(scene: Scene, f: int):
    a = scene.verts[scene.faces[f, 0]]
    b = scene.verts[scene.faces[f, 1]]
    c = scene.verts[scene.faces[f, 2]]
    return wp.cross(b - a, c - a)


@wp.func
def unit_face_normal(scene: Scene, f: int):
    """``face_normal / |face_normal|``, zero for a degenerate face (what ``scene.face_n`` holds)."""
    ng = face_normal(scene, f)
    lng = wp.length(ng)
    if lng <= 0.0:
        return wp.vec3(0.0)
    return ng / lng


@wp.kernel
def face_unit_normals(offset: int, scene: Scene, out: wp.array(dtype=wp.vec3)):
    f = wp.tid() + offset
    out[f] = unit_face_normal(scene, f)


@wp.func(inline=True)
def face_uv_at(scene: Scene, f: int, p: wp.vec3):
    """Texture coordinate at point ``p`` of face ``f`` (barycentric interpolation)."""
    a = scene.verts[scene.faces[f, 0]]
    b = scene.verts[scene.faces[f, 1]]
    c = scene.verts[scene.faces[f, 2]]
    ng = wp.cross(b - a, c - a)
    nn = wp.dot(ng, ng)
    w1 = 0.0
    w2 = 0.0
    if nn > 0.0:
        w1 = wp.dot(wp.cross(p - a, c - a), ng) / nn
        w2 = wp.dot(wp.cross(b - a, p - a), ng) / nn
    return scene.face_uv[f, 0] * (1.0 - w1 - w2) + scene.face_uv[f, 1] * w1 + scene.face_uv[f, 2] * w2


@wp.func(inline=True)
def material_albedo(scene: Scene, m: int, f: int, p: wp.vec3):
    ti = scene.mat_tex[m]
    if ti < 0:
        return scene.mat_albedo[m]
    return tex_lookup(scene.tex_data, scene.tex_info[ti, 0], scene.tex_info[ti, 1], scene.tex_info[ti, 2],
                      face_uv_at(scene, f, p))


@wp.func
def add_albedo_grad(scene: Scene, grads: Grads, m: int, f: int, p: wp.vec3, g: wp.vec3):
    ti = scene.mat_tex[m]
    if ti < 0:
        add3(grads.albedo, m, g)
    else:
        tex_scatter(grads.tex, scene.tex_info[ti, 0], scene.tex_info[ti, 1], scene.tex_info[ti, 2],
                    face_uv_at(scene, f, p), g)


@wp.func
def emitter_pdf(scene: Scene, p_sel: float, f: int, p_from: wp.vec3, p_on: wp.vec3, d: wp.vec3):
    """Solid-angle density of next-event estimation choosing point ``p_on`` of emissive face ``f``."""
    nu = scene.face_n[f]
    if wp.dot(nu, nu) <= 0.0 or scene.n_emit == 0:
        return 0.0
    cos_l = wp.abs(wp.dot(nu, d))
    if cos_l <= 0.0:
        return 0.0
    r = p_on - p_from
    total = scene.emit_cdf[scene.n_emit - 1]
    return p_sel * wp.dot(r, r) / (cos_l * total)


@wp.func
def pick_emitter(scene: Scene, u: float):
    total = scene.emit_cdf[scene.n_emit - 1]
    x = u * total
    lo = int(0)
    hi = scene.n_emit - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if scene.emit_cdf[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@wp.func
def offset_origin(p: wp.vec3, n: wp.vec3, d: wp.vec3):
    s = RAY_EPS * (1.0 + fmax_(wp.abs(p[0]), fmax_(wp.abs(p[1]), wp.abs(p[2]))))
    if wp.dot(n, d) < 0.0:
        s = -s
    return p + n * s


@wp.func
def fmin_(a: float, b: float):
    """``min`` as one select (``wp.min`` adds NaN handling, branches in the traversal's hot loop);
    the slab test's operands are never NaN."""
    return wp.where(a < b, a, b)


@wp.func
def fmax_(a: float, b: float):
    return wp.where(a > b, a, b)


@wp.func
def vmin4(a: wp.vec4, b: wp.vec4):
    """Componentwise ``min`` as selects (:func:`fmin_`)."""
    return wp.vec4(fmin_(a[0], b[0]), fmin_(a[1], b[1]), fmin_(a[2], b[2]), fmin_(a[3], b[3]))


@wp.func
def vmax4(a: wp.vec4, b: wp.vec4):
    return wp.vec4(fmax_(a[0], b[0]), fmax_(a[1], b[1]), fmax_(a[2], b[2]), fmax_(a[3], b[3]))


BVH_EMPTY = wp.constant(2147483647)  # an unused child slot of a 4-wide node
LEAF_LANES = wp.constant(8)  # primitives per leaf of the small BVH (tested side by side, one AVX register)
BVH_STACK = wp.constant(32)  # entries of intersect's traversal stack (small_bvh checks its tree fits)


@wp.func
def inv_dir(x: float):
    """``1 / x`` clamped to +-1e30 (+-0 gives +-1e30)."""
    return wp.clamp(1.0 / x, -1.0e30, 1.0e30)


@wp.func(inline=True)
def hit_leaf(scene: Scene, q: int, o: wp.vec3, d: wp.vec3, tbest: float, anyhit: int):
    """Moller-Trumbore against the ``LEAF_LANES`` primitives of leaf ``q``, lane by lane (the
    Warp-language traversal's leaf test; :func:`small_bvh_hit` tests the lanes side by side):
    ``(face, t)`` of the nearest hit nearer than ``tbest``, else ``(-1, tbest)``; with ``anyhit``
    the first hit lane. A parallelogram answers for both of its faces: the first where
    ``u + v <= 1``, the second where ``u, v <= 1`` beyond. Unused lanes have ``det = 0``."""
    f = int(-1)
    tout = tbest
    b = 9 * LEAF_LANES * q
    for c in range(LEAF_LANES):
        e1 = wp.vec3(scene.leaf_tri[b + 3 * LEAF_LANES + c], scene.leaf_tri[b + 4 * LEAF_LANES + c],
                     scene.leaf_tri[b + 5 * LEAF_LANES + c])
        e2 = wp.vec3(scene.leaf_tri[b + 6 * LEAF_LANES + c], scene.leaf_tri[b + 7 * LEAF_LANES + c],
                     scene.leaf_tri[b + 8 * LEAF_LANES + c])
        pv = wp.cross(d, e2)
        det = wp.dot(e1, pv)
        if det != 0.0:
            idet = 1.0 / det
            tv = o - wp.vec3(scene.leaf_tri[b + c], scene.leaf_tri[b + LEAF_LANES + c],
                             scene.leaf_tri[b + 2 * LEAF_LANES + c])
            u = wp.dot(tv, pv) * idet
            qv = wp.cross(tv, e1)
            v = wp.dot(d, qv) * idet
            t = wp.dot(e2, qv) * idet
            if u >= 0.0 and v >= 0.0 and t > 0.0 and t < tout:
                if u + v <= 1.0:
                    tout = t
                    f = scene.leaf_face[2 * LEAF_LANES * q + c]
                elif u <= 1.0 and v <= 1.0:
                    fq = scene.leaf_face[2 * LEAF_LANES * q + LEAF_LANES + c]  # -1: a triangle
                    if fq >= 0:
                        tout = t
                        f = fq
        if anyhit != 0 and f >= 0:
            break
    return f, tout


# The small BVH's traversal as native code (CPU): the four child boxes of a node and the
# LEAF_LANES primitives of a leaf tested in clang vector types (one SIMD register per coordinate
# where the host has them that wide), the choice of a leaf's nearest hit as vector compares and
# selects instead of a branch per lane. Written in Warp's language the same loop cost ~135 ns per
# closest-hit ray in the Cornell box (~58 ns native): its vec4 rows were loaded and computed as
# two halves and every lane's test was a branch.
# CUDA builds (nvcc/NVRTC have no ext_vector_type) answer "not handled" and :func:`intersect`
# runs the Warp-language traversal below instead.
_SMALL_BVH_NATIVE = r"""
#if defined(__CUDA_ARCH__) || !defined(__clang__)
return wp::vec2(-2.0f, tmax);
#else
typedef float f4 __attribute__((ext_vector_type(4), aligned(4)));  // loads need no 16-byte alignment
typedef int i4 __attribute__((ext_vector_type(4), aligned(4)));
typedef float fl __attribute__((ext_vector_type(LANES), aligned(4)));  // a leaf's lanes
typedef int il __attribute__((ext_vector_type(LANES), aligned(4)));
const f4* B = (const f4*)bvh_box.data;
const i4* C = (const i4*)bvh_child.data;
const fl* T = (const fl*)leaf_tri.data;
const il* FF = (const il*)leaf_face.data;
float inv[3];
for (int a = 0; a < 3; ++a) {
    float r = 1.0f / d[a];
    inv[a] = r < -1.0e30f ? -1.0e30f : (r > 1.0e30f ? 1.0e30f : r);
}
const f4 vx = inv[0], vy = inv[1], vz = inv[2];
const f4 ox = o[0], oy = o[1], oz = o[2];
const fl oxl = o[0], oyl = o[1], ozl = o[2];
const fl dxl = d[0], dyl = d[1], dzl = d[2];
const fl infl = 3.0e38f;
const il lane_index = {LANE_INDEX};
float tbest = tmax;
int fbest = -1;
int stack_node[STACK];
float stack_t[STACK];
stack_node[0] = 0;
stack_t[0] = 0.0f;
int sp = 1;
while (sp > 0) {
    --sp;
    const int k = stack_node[sp];
    if (stack_t[sp] >= tbest) continue;
    if (k < 0) {
        const int q = -k - 1;
        const fl* L = T + 9 * q;
        const fl e1x = L[3], e1y = L[4], e1z = L[5], e2x = L[6], e2y = L[7], e2z = L[8];
        const fl pvx = dyl * e2z - dzl * e2y, pvy = dzl * e2x - dxl * e2z, pvz = dxl * e2y - dyl * e2x;
        const fl det = e1x * pvx + e1y * pvy + e1z * pvz;
        const fl idet = 1.0f / det;
        const fl tvx = oxl - L[0], tvy = oyl - L[1], tvz = ozl - L[2];
        const fl qvx = tvy * e1z - tvz * e1y, qvy = tvz * e1x - tvx * e1z, qvz = tvx * e1y - tvy * e1x;
        const fl u = (tvx * pvx + tvy * pvy + tvz * pvz) * idet;
        const fl v = (dxl * qvx + dyl * qvy + dzl * qvz) * idet;
        const fl t = (e2x * qvx + e2y * qvy + e2z * qvz) * idet;
        const fl tb = tbest;
        const il near_half = u + v <= 1.0f;
        const il ok = (u >= 0.0f) & (v >= 0.0f) & (t > 0.0f) & (t < tb) & (det != 0.0f) &
                      (near_half | ((u <= 1.0f) & (v <= 1.0f) & (FF[2 * q + 1] >= 0)));
        const fl tc = ok ? t : infl;
        // nearest lane: a tree of vector selects (__builtin_reduce_min keeps NaN semantics and
        // compiles to a serial chain), its index the least lane holding that distance
        fl mv = tc;
LANE_MIN
        const float m = mv[0];
        if (m < tbest) {
            const il lane = (tc == m) ? lane_index : (il)LANES;
            const int c = __builtin_reduce_min(lane);
            tbest = m;
            const il faces = near_half ? FF[2 * q] : FF[2 * q + 1];
            fbest = faces[c];
            if (anyhit != 0) break;
        }
        continue;
    }
    const f4* N = B + 6 * k;
    const f4 ax = (N[0] - ox) * vx, ay = (N[1] - oy) * vy, az = (N[2] - oz) * vz;
    const f4 bx = (N[3] - ox) * vx, by = (N[4] - oy) * vy, bz = (N[5] - oz) * vz;
    const f4 lx = ax < bx ? ax : bx, ly = ay < by ? ay : by, lz = az < bz ? az : bz;
    const f4 hx = ax > bx ? ax : bx, hy = ay > by ? ay : by, hz = az > bz ? az : bz;
    const f4 lxy = lx > ly ? lx : ly, hxy = hx < hy ? hx : hy;
    const f4 tn = lxy > lz ? lxy : lz;
    const f4 tf = hxy < hz ? hxy : hz;
    const i4 ch = C[k];
    const f4 tb = tbest;
    const i4 enter = (tn <= tf) & (tf >= 0.0f) & (tn < tb) & (ch != EMPTY);
    const int base = sp;
    for (int c = 0; c < 4; ++c) {
        if (enter[c]) {
            // insertion among this node's entries: descending entry distance, nearest on top
            int j = sp;
            while (j > base && stack_t[j - 1] < tn[c]) {
                stack_node[j] = stack_node[j - 1];
                stack_t[j] = stack_t[j - 1];
                --j;
            }
            stack_node[j] = ch[c];
            stack_t[j] = tn[c];
            ++sp;
        }
    }
}
return wp::vec2((float)fbest, fbest >= 0 ? tbest : tmax);
#endif
"""


def _native_source(lanes: int) -> str:
    """:data:`_SMALL_BVH_NATIVE` for leaves of ``lanes`` (a power of 2) primitives: the lane-wise
    minimum as butterfly shuffles (lane ``i`` with lane ``i ^ w``), the constants filled in."""
    butterfly = "\n".join(
        f"        {{ const fl sh = __builtin_shufflevector(mv, mv, {', '.join(str(i ^ w) for i in range(lanes))}); "
        f"mv = sh < mv ? sh : mv; }}"
        for w in (lanes >> k for k in range(1, lanes.bit_length())))
    return (_SMALL_BVH_NATIVE.replace("LANE_MIN", butterfly)
            .replace("LANE_INDEX", ", ".join(str(i) for i in range(lanes)))
            .replace("STACK", str(int(BVH_STACK))).replace("EMPTY", str(int(BVH_EMPTY)))
            .replace("LANES", str(lanes)))


@wp.func_native(_native_source(int(LEAF_LANES)))
def small_bvh_hit(bvh_box: wp.array(dtype=wp.vec4), bvh_child: wp.array(dtype=wp.vec4i),
                  leaf_tri: wp.array(dtype=wp.float32), leaf_face: wp.array(dtype=wp.int32), o: wp.vec3, d: wp.vec3,
                  tmax: float, anyhit: int) -> wp.vec2:
    """:func:`intersect`'s small-BVH traversal, native: ``(face, t)`` as floats (face -1 on a miss;
    exact, the small BVH holds at most ``SMALL_BVH_MAX_FACES`` faces), ``(-2, tmax)`` where the
    native code is not compiled (CUDA)."""
    ...


@wp.func(inline=True)
def intersect(scene: Scene, o: wp.vec3, d: wp.vec3, tmax: float, anyhit: int):
    """First hit of the ray ``o + t d`` for ``t`` in ``(0, tmax)``: ``(face, t)``, face -1 on a
    miss. With ``anyhit`` the traversal stops at the first hit found (shadow rays). Small scenes
    traverse :func:`small_bvh`'s 4-wide nodes (the four child boxes of a node tested together,
    slab test with ``1 / d`` clamped to +-1e30 so a ray in a box's plane gives no ``0 * inf``;
    the children it enters pushed nearest on top and skipped at pop when no longer nearer than
    the best hit; :func:`hit_leaf` at the leaves): on CPU in native code
    (:func:`small_bvh_hit`), on CUDA in the Warp-language loop below (the same algorithm and
    arithmetic). Larger scenes query Warp's mesh BVH."""
    if scene.n_nodes == 0:
        q = wp.mesh_query_ray(scene.mesh, o, d, tmax)
        if q.result:
            return q.face, q.t
        return int(-1), tmax
    if scene.native_bvh != 0:
        r = small_bvh_hit(scene.bvh_box, scene.bvh_child, scene.leaf_tri, scene.leaf_face, o, d, tmax, anyhit)
        if r[0] > -1.5:
            if r[0] >= 0.0:
                return int(r[0]), r[1]
            return int(-1), tmax
    vx = wp.vec4(inv_dir(d[0]))
    vy = wp.vec4(inv_dir(d[1]))
    vz = wp.vec4(inv_dir(d[2]))
    ox = wp.vec4(o[0])
    oy = wp.vec4(o[1])
    oz = wp.vec4(o[2])
    tbest = tmax
    fbest = int(-1)
    stack_node = wp.vector(dtype=wp.int32, length=BVH_STACK)
    stack_t = wp.vector(dtype=wp.float32, length=BVH_STACK)
    stack_node[0] = 0
    stack_t[0] = 0.0
    sp = int(1)
    while sp > 0:
        sp = sp - 1
        k = stack_node[sp]
        if stack_t[sp] >= tbest:
            continue
        if k < 0:
            f, t = hit_leaf(scene, -k - 1, o, d, tbest, anyhit)
            if f >= 0:
                fbest = f
                tbest = t
                if anyhit != 0:
                    break
            continue
        ax = wp.cw_mul(scene.bvh_box[6 * k] - ox, vx)
        ay = wp.cw_mul(scene.bvh_box[6 * k + 1] - oy, vy)
        az = wp.cw_mul(scene.bvh_box[6 * k + 2] - oz, vz)
        bx = wp.cw_mul(scene.bvh_box[6 * k + 3] - ox, vx)
        by = wp.cw_mul(scene.bvh_box[6 * k + 4] - oy, vy)
        bz = wp.cw_mul(scene.bvh_box[6 * k + 5] - oz, vz)
        tn = vmax4(vmax4(vmin4(ax, bx), vmin4(ay, by)), vmin4(az, bz))
        tf = vmin4(vmin4(vmax4(ax, bx), vmax4(ay, by)), vmax4(az, bz))
        ch = scene.bvh_child[k]
        base = sp
        for c in range(4):
            if tn[c] <= tf[c] and tf[c] >= 0.0 and tn[c] < tbest and ch[c] != BVH_EMPTY:
                # insertion among this node's entries: descending entry distance, nearest on top
                j = sp
                while j > base and stack_t[j - 1] < tn[c]:
                    stack_node[j] = stack_node[j - 1]
                    stack_t[j] = stack_t[j - 1]
                    j = j - 1
                stack_node[j] = ch[c]
                stack_t[j] = tn[c]
                sp = sp + 1
    if fbest >= 0:
        return fbest, tbest
    return int(-1), tmax


@wp.kernel
def scene_rays(offset: int, scene: Scene, origins: wp.array(dtype=wp.vec3), dirs: wp.array(dtype=wp.vec3),
               tmax: wp.array(dtype=wp.float32), anyhit: int, face: wp.array(dtype=wp.int32),
               t: wp.array(dtype=wp.float32)):
    """:func:`intersect` on arrays of rays (what the path tracer's kernels see)."""
    i = wp.tid() + offset
    f, ti = intersect(scene, origins[i], dirs[i], tmax[i], anyhit)
    face[i] = f
    t[i] = ti


@wp.func
def shadow_ray(p: wp.vec3, n: wp.vec3, d: wp.vec3, dist: float):
    """The shadow ray of :func:`visible`: ``(origin, direction, tmax)``, ``tmax = 0`` when there is
    nothing to test (the target is the offset origin itself)."""
    o = offset_origin(p, n, d)
    if dist >= 1.0e29:
        return o, d, float(1.0e30)
    r = p + d * dist - o
    lr = wp.length(r)
    if lr <= 0.0:
        return o, d, float(0.0)
    return o, r / lr, lr * (1.0 - 1.0e-4)


@wp.func
def visible(scene: Scene, p: wp.vec3, n: wp.vec3, d: wp.vec3, dist: float):
    """Is the point ``p + d * dist`` (or, for ``dist >= 1e29``, the direction ``d``) unblocked
    from ``p`` (normal ``n``)? The shadow ray starts at the offset origin and aims at the target
    itself, stopping just short of it so the target's own surface is not a blocker."""
    so, sd, st = shadow_ray(p, n, d, dist)
    if st <= 0.0:
        return True
    hf, ht = intersect(scene, so, sd, st, 1)
    return hf < 0


@wp.func(inline=True)
def trace_path(scene: Scene, grads: Grads, ray_o: wp.vec3, ray_d: wp.vec3, rng: wp.uint32, max_depth: int,
               rr_depth: int, mode: int, L_total: wp.vec3, adj: wp.vec3, nee: int):
    """Radiance along one camera ray. ``mode`` 0: primal. ``mode`` 1: replay (same ``rng``) with
    path replay backpropagation: ``L_total`` is this path's primal radiance, ``adj`` the adjoint
    radiance; parameter gradients are accumulated into ``grads`` with atomics. ``nee = 0``: BSDF
    sampling only (no next-event estimation; point and directional lights are then unreachable)."""
    state = rng
    L = wp.vec3(0.0)
    L_rem = L_total
    beta = wp.vec3(1.0)
    o = ray_o
    d = wp.normalize(ray_d)
    prev_pdf = float(0.0)
    prev_p = o
    p_sel = float(0.0)
    n_src = scene.n_pl + scene.n_dl
    if scene.n_emit > 0:
        n_src = n_src + 1
    if scene.has_env != 0:
        n_src = n_src + 1
    if nee == 0:
        n_src = 0
    if n_src > 0:
        p_sel = 1.0 / float(n_src)
    depth = int(0)
    while depth <= max_depth:
        f, qt = intersect(scene, o, d, 1.0e30, 0)
        if f < 0:
            # escaped: environment
            if scene.has_env != 0:
                w_mis = float(1.0)
                if depth > 0:
                    w_mis = power_heuristic(prev_pdf, p_sel * INV_4PI)
                le = env_radiance(scene, d)
                c = cmul(beta, le) * w_mis
                L = L + c
                if mode == 1:
                    L_rem = L_rem - c
                    tex_scatter(grads.env, 0, scene.env_w, scene.env_h, env_uv(d), cmul(adj, beta) * w_mis)
            break
        p = o + d * qt
        ng = scene.face_n[f]
        if wp.dot(ng, ng) <= 0.0:
            break
        front = wp.dot(ng, d) < 0.0
        n = ng
        if not front:
            n = -ng
        m = scene.face_mat[f]
        le = scene.mat_emit[m]
        if front:
            # faces of non-emissive materials are not sampled by NEE (MIS weight 1) but their
            # emission still has a derivative
            w_mis = float(1.0)
            if depth > 0 and max3(le) > 0.0:
                w_mis = power_heuristic(prev_pdf, emitter_pdf(scene, p_sel, f, prev_p, p, d))
            c = cmul(beta, le) * w_mis
            L = L + c
            if mode == 1:
                L_rem = L_rem - c
                add3(grads.emit, m, cmul(adj, beta) * w_mis)
        if depth == max_depth:
            break
        kind = scene.mat_kind[m]
        alpha = wp.max(scene.mat_rough[m] * scene.mat_rough[m], 1.0e-3)
        albedo = material_albedo(scene, m, f, p)
        wo = -d

        # ---- next-event estimation: one light source chosen uniformly
        if n_src > 0:
            u_sel = wp.randf(state)
            u1 = wp.randf(state)
            u2 = wp.randf(state)
            u3 = wp.randf(state)
            src = wp.min(int(u_sel * float(n_src)), n_src - 1)
            wi = wp.vec3(0.0)
            li = wp.vec3(0.0)  # radiance / intensity / irradiance of the source
            geo = float(0.0)  # estimator factor multiplying f * cos_i * li
            dist = float(0.0)
            light_kind = int(-1)  # 0 area, 1 point, 2 directional, 3 env
            light_index = int(0)
            w_mis = float(1.0)
            if src < scene.n_pl:
                light_kind = 1
                light_index = src
                r = scene.pl_pos[src] - p
                dist = wp.length(r)
                if dist > 0.0:
                    wi = r / dist
                    li = scene.pl_int[src]
                    geo = 1.0 / (dist * dist * p_sel)
            elif src < scene.n_pl + scene.n_dl:
                light_kind = 2
                light_index = src - scene.n_pl
                wi = scene.dl_dir[light_index]
                li = scene.dl_irr[light_index]
                dist = 1.0e30
                geo = 1.0 / p_sel
            elif scene.n_emit > 0 and src == scene.n_pl + scene.n_dl:
                light_kind = 0
                k = pick_emitter(scene, u1)
                ef = scene.emit_faces[k]
                light_index = scene.face_mat[ef]
                a = scene.verts[scene.faces[ef, 0]]
                b = scene.verts[scene.faces[ef, 1]]
                c3 = scene.verts[scene.faces[ef, 2]]
                su = wp.sqrt(u2)
                pl = a * (1.0 - su) + b * (su * (1.0 - u3)) + c3 * (su * u3)
                r = pl - p
                dist = wp.length(r)
                nl = scene.face_n[ef]
                if dist > 0.0 and wp.dot(nl, nl) > 0.0:
                    wi = r / dist
                    cos_l = -wp.dot(nl, wi)
                    if cos_l > 0.0:
                        li = scene.mat_emit[light_index]
                        pdf_l = emitter_pdf(scene, p_sel, ef, p, pl, wi)
                        geo = 1.0 / pdf_l
                        w_mis = power_heuristic(pdf_l, bsdf_pdf(kind, alpha, n, wo, wi))
            else:
                light_kind = 3
                z = 1.0 - 2.0 * u1
                rr = wp.sqrt(wp.max(0.0, 1.0 - z * z))
                phi = 2.0 * PI * u2
                wi = wp.vec3(rr * wp.cos(phi), z, rr * wp.sin(phi))
                li = env_radiance(scene, wi)
                dist = 1.0e30
                pdf_l = p_sel * INV_4PI
                geo = 1.0 / pdf_l
                w_mis = power_heuristic(pdf_l, bsdf_pdf(kind, alpha, n, wo, wi))
            ci = wp.dot(n, wi)
            if geo > 0.0 and ci > 0.0:
                ab = bsdf_ab(kind, alpha, n, wo, wi)
                fcol = albedo * ab[0] + wp.vec3(ab[1])
                if max3(fcol) > 0.0:
                    # visible(scene, p, n, wi, dist) written out: a call of visible copies the
                    # Scene struct (~1.3 KB) per shadow ray, intersect inlined here does not
                    so, sd, st = shadow_ray(p, n, wi, dist)
                    unblocked = True
                    if st > 0.0:
                        hf, ht = intersect(scene, so, sd, st, 1)
                        unblocked = hf < 0
                    if unblocked:
                        s = ci * geo * w_mis
                        c = cmul(cmul(beta, fcol), li) * s
                        L = L + c
                        if mode == 1:
                            L_rem = L_rem - c
                            g_li = cmul(cmul(adj, beta), fcol) * s
                            if light_kind == 0:
                                add3(grads.emit, light_index, g_li)
                            elif light_kind == 1:
                                add3(grads.pl_int, light_index, g_li)
                            elif light_kind == 2:
                                add3(grads.dl_irr, light_index, g_li)
                            else:
                                tex_scatter(grads.env, 0, scene.env_w, scene.env_h, env_uv(wi), g_li)
                            add_albedo_grad(scene, grads, m, f, p, cmul(cmul(adj, beta), li) * (ab[0] * s))
                            if kind != 0:
                                dab = bsdf_ab_drough(kind, scene.mat_rough[m], n, wo, wi)
                                df = albedo * dab[0] + wp.vec3(dab[1])
                                add1(grads.rough, m, wp.dot(cmul(cmul(adj, beta), li), df) * s)

        # ---- BSDF sampling
        v0 = wp.randf(state)
        v1 = wp.randf(state)
        v2 = wp.randf(state)
        wi = bsdf_sample(kind, alpha, n, wo, v0, v1, v2)
        ci = wp.dot(n, wi)
        pdf = bsdf_pdf(kind, alpha, n, wo, wi)
        if ci <= 0.0 or pdf <= 0.0:
            break
        ab = bsdf_ab(kind, alpha, n, wo, wi)
        fcol = albedo * ab[0] + wp.vec3(ab[1])
        if mode == 1:
            # every later contribution carries the factor w = f cos / pdf of this bounce:
            # d(L_rem)/d(albedo) = L_rem * A / f (channel-wise)
            g_w = cmul(adj, safe_div3(L_rem, fcol))
            add_albedo_grad(scene, grads, m, f, p, g_w * ab[0])
            if kind != 0:
                dab = bsdf_ab_drough(kind, scene.mat_rough[m], n, wo, wi)
                add1(grads.rough, m, wp.dot(g_w, albedo * dab[0] + wp.vec3(dab[1])))
        beta = cmul(beta, fcol) * (ci / pdf)
        if max3(beta) <= 0.0:
            break
        # ---- Russian roulette
        if depth + 1 >= rr_depth:
            qs = wp.min(max3(beta), 0.95)
            if wp.randf(state) >= qs:
                break
            beta = beta / qs
        prev_pdf = pdf
        prev_p = p
        o = offset_origin(p, n, wi)
        d = wi
        depth = depth + 1
    return L


@wp.func(inline=False)
def trace_path_call(scene: Scene, grads: Grads, ray_o: wp.vec3, ray_d: wp.vec3, rng: wp.uint32, max_depth: int,
                    rr_depth: int, mode: int, L_total: wp.vec3, adj: wp.vec3, nee: int):
    """:func:`trace_path` as one out-of-line function (copies of the Scene struct per call) for
    the kernels whose paths are few (render_points, the edge terms); :func:`render_pixels`
    inlines trace_path itself (~10% faster there, no struct copy per sample), once."""
    return trace_path(scene, grads, ray_o, ray_d, rng, max_depth, rr_depth, mode, L_total, adj, nee)


@wp.func
def camera_ray_dir(cam: Camera, px: float, py: float):
    return cam.d00 + cam.dx * px + cam.dy * py


@wp.kernel
def render_pixels(offset: int, scene: Scene, grads: Grads, cam: Camera, spp: int, seed: int, max_depth: int,
                  rr_depth: int, mode: int, adj_image: wp.array(dtype=wp.vec3), image: wp.array(dtype=wp.vec3)):
    """One thread per pixel (row-major, ``pixel = y * width + x``), ``spp`` jittered samples, box
    filter. mode 0 writes the mean radiance; mode 1 replays the same samples and accumulates
    gradients for the adjoint image ``adj_image`` (gradient of the loss w.r.t. the pixel). Thread
    ``i`` renders row ``2 r`` for ``r = i // width < ceil(height / 2)``, else row ``2 (r - ceil(height
    / 2)) + 1``: the contiguous thread ranges of a split launch get interleaved rows, so their work
    is balanced (the rows near a light have longer paths)."""
    i = wp.tid() + offset
    x = i % cam.width
    r = i // cam.width
    half = (cam.height + 1) // 2
    y = 2 * r
    if r >= half:
        y = 2 * (r - half) + 1
    pix = y * cam.width + x
    acc = wp.vec3(0.0)
    adj = wp.vec3(0.0)
    if mode == 1:
        adj = adj_image[pix] / float(spp)
    for s in range(spp):
        L = wp.vec3(0.0)
        # the primal path, then in mode 1 its replay (same random numbers) with the primal's
        # radiance: one call site, so trace_path is inlined once
        for rep in range(mode + 1):
            state = wp.rand_init(seed, pix * spp + s)
            jx = wp.randf(state)
            jy = wp.randf(state)
            d = camera_ray_dir(cam, float(x) + jx, float(y) + jy)
            L = trace_path(scene, grads, cam.origin, d, state, max_depth, rr_depth, rep, L, adj, 1)
        acc = acc + L
    if mode == 0:
        image[pix] = acc / float(spp)


@wp.kernel
def render_points(offset: int, scene: Scene, grads: Grads, cam: Camera, points: wp.array(dtype=wp.vec2),
                  spp: int, seed: int, max_depth: int, rr_depth: int, pair: int, out: wp.array(dtype=wp.vec3)):
    """Mean radiance of ``spp`` paths through each continuous pixel coordinate ``points[i]``; point
    ``i`` uses the random numbers of point ``i % pair``."""
    i = wp.tid() + offset
    d = camera_ray_dir(cam, points[i][0], points[i][1])
    acc = wp.vec3(0.0)
    for s in range(spp):
        state = wp.rand_init(seed, (i % pair) * spp + s)
        acc = acc + trace_path_call(scene, grads, cam.origin, d, state, max_depth, rr_depth, 0, wp.vec3(0.0),
                               wp.vec3(0.0), 1)
    out[i] = acc / float(spp)


# ----------------------------------------------------------------------------------------------
# BSDF evaluation / sampling on arrays (for tests against the torch twins)
# ----------------------------------------------------------------------------------------------


@wp.kernel
def eval_bsdf(offset: int, kind: int, rough: float, albedo: wp.array(dtype=wp.vec3), n: wp.array(dtype=wp.vec3),
              wo: wp.array(dtype=wp.vec3), wi: wp.array(dtype=wp.vec3), f: wp.array(dtype=wp.vec3),
              pdf: wp.array(dtype=wp.float32)):
    i = wp.tid() + offset
    alpha = wp.max(rough * rough, 1.0e-3)
    ab = bsdf_ab(kind, alpha, n[i], wo[i], wi[i])
    f[i] = albedo[i] * ab[0] + wp.vec3(ab[1])
    pdf[i] = bsdf_pdf(kind, alpha, n[i], wo[i], wi[i])


@wp.kernel
def sample_bsdf_dirs(offset: int, kind: int, rough: float, n: wp.array(dtype=wp.vec3), wo: wp.array(dtype=wp.vec3), seed: int,
                     wi: wp.array(dtype=wp.vec3)):
    i = wp.tid() + offset
    state = wp.rand_init(seed, i)
    alpha = wp.max(rough * rough, 1.0e-3)
    u0 = wp.randf(state)
    u1 = wp.randf(state)
    u2 = wp.randf(state)
    wi[i] = bsdf_sample(kind, alpha, n[i], wo[i], u0, u1, u2)


# ----------------------------------------------------------------------------------------------
# Geometry derivatives at every path vertex (solid-angle parameterisation; Li et al. 2018)
# ----------------------------------------------------------------------------------------------



MAX_EDGES_SCANNED = wp.constant(512)
STATIC_EDGE_WEIGHT = wp.constant(0.1)


@wp.func
def edge_weight(scene: Scene, edges: wp.array(dtype=wp.int32, ndim=2), j: int, p: wp.vec3, n: wp.vec3,
                moving: int):
    """Selection weight of edge ``j`` seen from ``p``: the angle it subtends when it can be above
    the horizon, times ``STATIC_EDGE_WEIGHT`` for an edge of static faces seen from a static
    point (it only matters when what lies behind it moves)."""
    A = scene.verts[edges[j, 0]] - p
    B = scene.verts[edges[j, 1]] - p
    la = wp.length(A)
    lb = wp.length(B)
    if la <= 0.0 or lb <= 0.0 or wp.max(wp.dot(n, A), wp.dot(n, B)) <= 0.0:
        return 0.0
    w = wp.acos(wp.clamp(wp.dot(A, B) / (la * lb), -1.0, 1.0))
    if moving == 0 and edges[j, 2] == 0:
        w = w * STATIC_EDGE_WEIGHT
    return w


@wp.func
def pick_edge_point(scene: Scene, edges: wp.array(dtype=wp.int32, ndim=2), ne: int, p: wp.vec3, n: wp.vec3,
                    moving: int, u: float, v: float):
    """A point on one of the ``ne`` edges (rows ``(v0, v1, dynamic)``) for edge sampling at ``p``
    (normal ``n``; ``moving``: does ``p`` move): ``(edge, t, w_len, w_ang)`` with
    ``1 / pdf(t) = w_len + w_ang / |d omega / dt|``. Up to ``MAX_EDGES_SCANNED`` edges: an edge
    is chosen in proportion to :func:`edge_weight` and the point uniformly in the angle it
    subtends (this cancels the 1 / distance growth of an edge's image near ``p``); beyond that,
    uniformly in edge and ``t`` (``w_len = ne``)."""
    if ne > MAX_EDGES_SCANNED:
        return wp.min(int(u * float(ne)), ne - 1), v, float(ne), float(0.0)
    total = float(0.0)
    for j in range(ne):
        total = total + edge_weight(scene, edges, j, p, n, moving)
    if total <= 0.0:
        return 0, 0.5, 0.0, 0.0
    x = u * total
    pick = int(-1)
    w_pick = float(0.0)
    for j in range(ne):
        if pick < 0:
            w = edge_weight(scene, edges, j, p, n, moving)
            if w > 0.0 and (x <= w or j == ne - 1):
                pick = j
                w_pick = w
            else:
                x = x - w
    if pick < 0:
        return 0, 0.5, 0.0, 0.0
    A = scene.verts[edges[pick, 0]] - p
    B = scene.verts[edges[pick, 1]] - p
    la = wp.length(A)
    lb = wp.length(B)
    phi_e = wp.acos(wp.clamp(wp.dot(A, B) / (la * lb), -1.0, 1.0))
    phi = wp.clamp(v, 0.0, 1.0) * phi_e
    sa = la * wp.sin(phi)
    sb = lb * wp.sin(phi_e - phi)
    t = float(0.5)
    if sa + sb > 0.0:
        t = sa / (sa + sb)
    # pdf(t) = (w_pick / total) (1 / phi_e) |d omega / dt|
    return pick, t, float(0.0), total * phi_e / w_pick


@wp.kernel
def path_derivative_records(offset: int, scene: Scene, grads: Grads, cam: Camera,
                            edges: wp.array(dtype=wp.int32, ndim=2), n_edges: int, dynamic: wp.array(dtype=wp.int32),
                            spp: int, seed: int, max_depth: int, rr_depth: int, do_edges: int, do_interior: int,
                            adj_image: wp.array(dtype=wp.vec3),
                            rec_face: wp.array(dtype=wp.int32, ndim=2), rec_pos: wp.array(dtype=wp.vec3, ndim=2),
                            rec_lkind: wp.array(dtype=wp.int32, ndim=2), rec_lface: wp.array(dtype=wp.int32, ndim=2),
                            rec_lpos: wp.array(dtype=wp.vec3, ndim=2), rec_cn: wp.array(dtype=wp.float32, ndim=2),
                            rec_edge: wp.array(dtype=wp.int32, ndim=2), rec_t: wp.array(dtype=wp.float32, ndim=2),
                            rec_nv: wp.array(dtype=wp.vec3, ndim=2), rec_cm: wp.array(dtype=wp.float32, ndim=2),
                            rec_cp: wp.array(dtype=wp.float32, ndim=2), rec_fm: wp.array(dtype=wp.int32, ndim=2),
                            rec_fp: wp.array(dtype=wp.int32, ndim=2), rec_ym: wp.array(dtype=wp.vec3, ndim=2),
                            rec_yp: wp.array(dtype=wp.vec3, ndim=2), rec_em: wp.array(dtype=wp.float32, ndim=2),
                            rec_ep: wp.array(dtype=wp.float32, ndim=2), rec_beta: wp.array(dtype=wp.vec3, ndim=2)):
    """One camera path per (pixel, sample), continued by BSDF sampling for up to ``max_depth``
    vertices. Per vertex ``k`` it records the face hit and the hit point (``rec_face``,
    ``rec_pos``; torch turns them into material points), and

    * (``do_interior``) one next-event sample without MIS: ``rec_lkind`` 1 area light (face
      ``rec_lface``, barycentric weights ``rec_lpos``), 2 point light (position), 3 directional
      light (direction), 4 environment (direction); ``rec_cn = adj . contribution``;
    * (``do_edges``) one edge sample: a point at parameter ``rec_t`` of edge ``rec_edge`` (chosen
      by :func:`pick_edge_point`), the unit normal ``rec_nv`` of the edge's image on the sphere of
      directions, and on each side of it the first hit (``rec_fm``/``rec_ym`` on the ``-nv``
      side, ``rec_fp``/``rec_yp`` on the other; face -1 and the direction when the ray escapes)
      and ``rec_cm``/``rec_cp = adj . beta F / pdf`` with ``F = f cos L`` path traced just beside
      the edge (the same random numbers on both sides), and ``rec_em``/``rec_ep``: the part of
      ``rec_cm``/``rec_cp`` that is emission of the first hit beside the edge (its derivative is
      taken in area measure, as next-event estimation samples it);
    * ``rec_beta = adj * beta``: the adjoint times the path throughput up to vertex ``k``.

    Unused entries have ``rec_face = -1``, ``rec_lkind = 0``, ``rec_edge = -1``."""
    i = wp.tid() + offset
    pix = i // spp
    for k in range(max_depth):
        rec_face[i, k] = -1
        rec_lkind[i, k] = 0
        rec_cn[i, k] = 0.0
        rec_edge[i, k] = -1
        rec_cm[i, k] = 0.0
        rec_cp[i, k] = 0.0
        rec_em[i, k] = 0.0
        rec_ep[i, k] = 0.0
    x = pix % cam.width
    y = pix // cam.width
    state = wp.rand_init(seed, i)
    jx = wp.randf(state)
    jy = wp.randf(state)
    d = wp.normalize(camera_ray_dir(cam, float(x) + jx, float(y) + jy))
    o = cam.origin
    adj = adj_image[pix] / float(spp)
    beta = wp.vec3(1.0)
    n_src = scene.n_pl + scene.n_dl
    if scene.n_emit > 0:
        n_src = n_src + 1
    if scene.has_env != 0:
        n_src = n_src + 1
    p_sel = float(0.0)
    if n_src > 0:
        p_sel = 1.0 / float(n_src)
    moving = int(0)
    for k in range(max_depth):
        q = wp.mesh_query_ray(scene.mesh, o, d, 1.0e30)
        if not q.result:
            break
        f = q.face
        p = o + d * q.t
        ng = face_normal(scene, f)
        lng = wp.length(ng)
        if lng <= 0.0:
            break
        ng = ng / lng
        n = ng
        if wp.dot(ng, d) > 0.0:
            n = -ng
        rec_face[i, k] = f
        rec_pos[i, k] = p
        rec_beta[i, k] = cmul(adj, beta)
        m = scene.face_mat[f]
        kind = scene.mat_kind[m]
        alpha = wp.max(scene.mat_rough[m] * scene.mat_rough[m], 1.0e-3)
        albedo = material_albedo(scene, m, f, p)
        wo = -d
        if do_interior != 0 and n_src > 0:
            u_sel = wp.randf(state)
            u1 = wp.randf(state)
            u2 = wp.randf(state)
            u3 = wp.randf(state)
            src = wp.min(int(u_sel * float(n_src)), n_src - 1)
            wi = wp.vec3(0.0)
            li = wp.vec3(0.0)
            geo = float(0.0)
            dist = float(1.0e30)
            lkind = int(0)
            lface = int(-1)
            lpos = wp.vec3(0.0)
            if src < scene.n_pl:
                r = scene.pl_pos[src] - p
                dist = wp.length(r)
                if dist > 0.0:
                    wi = r / dist
                    li = scene.pl_int[src]
                    geo = 1.0 / (dist * dist * p_sel)
                    lkind = 2
                    lpos = scene.pl_pos[src]
            elif src < scene.n_pl + scene.n_dl:
                wi = scene.dl_dir[src - scene.n_pl]
                li = scene.dl_irr[src - scene.n_pl]
                geo = 1.0 / p_sel
                lkind = 3
                lpos = wi
            elif scene.n_emit > 0 and src == scene.n_pl + scene.n_dl:
                ei = pick_emitter(scene, u1)
                ef = scene.emit_faces[ei]
                a = scene.verts[scene.faces[ef, 0]]
                b = scene.verts[scene.faces[ef, 1]]
                c3 = scene.verts[scene.faces[ef, 2]]
                su = wp.sqrt(u2)
                w3 = wp.vec3(1.0 - su, su * (1.0 - u3), su * u3)
                pl = a * w3[0] + b * w3[1] + c3 * w3[2]
                r = pl - p
                dist = wp.length(r)
                en = wp.cross(b - a, c3 - a)
                le_n = wp.length(en)
                if dist > 0.0 and le_n > 0.0:
                    wi = r / dist
                    cos_l = -wp.dot(en / le_n, wi)
                    if cos_l > 0.0:
                        li = scene.mat_emit[scene.face_mat[ef]]
                        geo = cos_l * scene.emit_cdf[scene.n_emit - 1] / (dist * dist * p_sel)
                        lkind = 1
                        lface = ef
                        lpos = w3
            else:
                z = 1.0 - 2.0 * u1
                rr = wp.sqrt(wp.max(0.0, 1.0 - z * z))
                phi = 2.0 * PI * u2
                wi = wp.vec3(rr * wp.cos(phi), z, rr * wp.sin(phi))
                li = env_radiance(scene, wi)
                geo = 1.0 / (p_sel * INV_4PI)
                lkind = 4
                lpos = wi
            ci = wp.dot(n, wi)
            if lkind > 0 and geo > 0.0 and ci > 0.0:
                ab = bsdf_ab(kind, alpha, n, wo, wi)
                fcol = albedo * ab[0] + wp.vec3(ab[1])
                if max3(fcol) > 0.0 and visible(scene, p, n, wi, dist):
                    rec_lkind[i, k] = lkind
                    rec_lface[i, k] = lface
                    rec_lpos[i, k] = lpos
                    rec_cn[i, k] = wp.dot(adj, cmul(cmul(beta, fcol), li)) * (ci * geo)
        if do_edges != 0 and n_edges > 0:
            # a vertex moves when its face moves or an earlier vertex did (it slides along its ray)
            moving = wp.max(moving, dynamic[f])
            kk, t, w_len, w_ang = pick_edge_point(scene, edges, n_edges, p, n, moving, wp.randf(state),
                                                  wp.randf(state))
            a = scene.verts[edges[kk, 0]]
            b = scene.verts[edges[kk, 1]]
            pe = a + (b - a) * t
            r = pe - p
            dist = wp.length(r)
            if dist > 0.0 and w_len + w_ang > 0.0:
                om = r / dist
                if wp.dot(n, om) > 0.0 and visible(scene, p, n, om, dist):
                    e = b - a
                    dom = (e - om * wp.dot(om, e)) / dist  # d omega / dt
                    jac = wp.length(dom)
                    nv = wp.cross(om, dom)
                    lnv = wp.length(nv)
                    if jac > 0.0 and lnv > 0.0:
                        nv = nv / lnv
                        # aim from the offset origin at points just beside the edge
                        o2 = offset_origin(p, n, om)
                        side = nv * (1.0e-4 * dist)
                        om_p = wp.normalize(pe + side - o2)
                        om_m = wp.normalize(pe - side - o2)
                        rng = wp.rand_init(seed + 1, i * max_depth + k)  # the same random numbers on both sides
                        Lp = trace_path_call(scene, grads, o2, om_p, rng, max_depth - k - 1, rr_depth - k - 1, 0,
                                        wp.vec3(0.0), wp.vec3(0.0), 1)
                        Lm = trace_path_call(scene, grads, o2, om_m, rng, max_depth - k - 1, rr_depth - k - 1, 0,
                                        wp.vec3(0.0), wp.vec3(0.0), 1)
                        abp = bsdf_ab(kind, alpha, n, wo, om_p)
                        abm = bsdf_ab(kind, alpha, n, wo, om_m)
                        Fp = cmul(albedo * abp[0] + wp.vec3(abp[1]), Lp) * wp.max(wp.dot(n, om_p), 0.0)
                        Fm = cmul(albedo * abm[0] + wp.vec3(abm[1]), Lm) * wp.max(wp.dot(n, om_m), 0.0)
                        w = jac * w_len + w_ang
                        rec_edge[i, k] = kk
                        rec_t[i, k] = t
                        rec_nv[i, k] = nv
                        rec_cm[i, k] = wp.dot(adj, cmul(beta, Fm)) * w
                        rec_cp[i, k] = wp.dot(adj, cmul(beta, Fp)) * w
                        qm = wp.mesh_query_ray(scene.mesh, o2, om_m, 1.0e30)
                        rec_fm[i, k] = -1
                        rec_ym[i, k] = om_m
                        if qm.result:
                            rec_fm[i, k] = qm.face
                            rec_ym[i, k] = o2 + om_m * qm.t
                            if wp.dot(face_normal(scene, qm.face), om_m) < 0.0:
                                le_m = scene.mat_emit[scene.face_mat[qm.face]]
                                rec_em[i, k] = wp.dot(adj, cmul(beta, cmul(albedo * abm[0] + wp.vec3(abm[1]), le_m))) * (
                                    wp.max(wp.dot(n, om_m), 0.0) * w)
                        qp = wp.mesh_query_ray(scene.mesh, o2, om_p, 1.0e30)
                        rec_fp[i, k] = -1
                        rec_yp[i, k] = om_p
                        if qp.result:
                            rec_fp[i, k] = qp.face
                            rec_yp[i, k] = o2 + om_p * qp.t
                            if wp.dot(face_normal(scene, qp.face), om_p) < 0.0:
                                le_p = scene.mat_emit[scene.face_mat[qp.face]]
                                rec_ep[i, k] = wp.dot(adj, cmul(beta, cmul(albedo * abp[0] + wp.vec3(abp[1]), le_p))) * (
                                    wp.max(wp.dot(n, om_p), 0.0) * w)
        # continue the path by BSDF sampling
        v0 = wp.randf(state)
        v1 = wp.randf(state)
        v2 = wp.randf(state)
        wi = bsdf_sample(kind, alpha, n, wo, v0, v1, v2)
        ci = wp.dot(n, wi)
        pdf = bsdf_pdf(kind, alpha, n, wo, wi)
        if ci <= 0.0 or pdf <= 0.0:
            break
        ab = bsdf_ab(kind, alpha, n, wo, wi)
        beta = cmul(beta, albedo * ab[0] + wp.vec3(ab[1])) * (ci / pdf)
        if max3(beta) <= 0.0:
            break
        if k + 1 >= rr_depth:
            qs = wp.min(max3(beta), 0.95)
            if wp.randf(state) >= qs:
                break
            beta = beta / qs
        o = offset_origin(p, n, wi)
        d = wi


# ----------------------------------------------------------------------------------------------
# Host side: torch-only functions (everything outside diffvc/_kernels calls these)
# ----------------------------------------------------------------------------------------------

_MIN_PER_THREAD = 256  # a path is thousands of times a raster pixel's work: split small launches too


def build_bvh(vertices: torch.Tensor, faces: torch.Tensor) -> MeshBVH:
    """A BVH over ``vertices`` (V, 3) (a float32 copy) and ``faces`` (F, 3), built on torch's
    current stream. A mesh without faces gets one degenerate triangle at the origin (never hit)."""
    if faces.shape[0] == 0:
        vertices = torch.zeros(3, 3, device=vertices.device)
        faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=vertices.device)
    with torch_stream(vertices.device):
        return MeshBVH(vertices.detach().to(torch.float32), faces)


def closest_hits(bvh: MeshBVH, origins: torch.Tensor, dirs: torch.Tensor, tmax: torch.Tensor):
    """Closest hit of each ray within ``(0, tmax]`` (float32 (N, 3), (N, 3), (N,)): ``(face (N,)
    int32, -1 on a miss; t (N,) float32 in units of |dir|, tmax on a miss)``."""
    N = origins.shape[0]
    face = torch.empty(N, dtype=torch.int32, device=origins.device)
    t = torch.empty(N, dtype=torch.float32, device=origins.device)
    if N:
        parallel_launch(cast_rays, N, [bvh.mesh.id, _v3(origins), _v3(dirs), _f(tmax)], [face, t],
                        device=origins.device)
    return face, t


def scene_hits(prep: "PreparedScene", origins: torch.Tensor, dirs: torch.Tensor, tmax: torch.Tensor,
               anyhit: bool = False):
    """The path tracer's own ray casting (:func:`intersect`: the small-scene BVH, or Warp's mesh
    BVH beyond ``SMALL_BVH_MAX_FACES`` faces) for rays ``origins``, ``dirs`` (N, 3) within ``(0,
    tmax)`` (N,): ``(face (N,) int32, -1 on a miss; t (N,) float32 in units of |dir|, tmax on a
    miss)``. With ``anyhit`` some hit within the range, not necessarily the closest."""
    N = origins.shape[0]
    face = torch.empty(N, dtype=torch.int32, device=origins.device)
    t = torch.empty(N, dtype=torch.float32, device=origins.device)
    if N:
        parallel_launch(scene_rays, N, [prep.struct, _v3(origins), _v3(dirs), _f(tmax), int(anyhit)], [face, t],
                        device=origins.device)
    return face, t


def _f(t: torch.Tensor) -> torch.Tensor:
    """float32 contiguous detached (no copy when it already is)."""
    return t.detach().to(torch.float32).contiguous()


def _v3(t: torch.Tensor):
    return wp.from_torch(_f(t), dtype=wp.vec3)


def _rows(x: torch.Tensor | None, dev) -> torch.Tensor:
    """(n, 3) float32; None or empty -> one zero row (Warp arrays need storage)."""
    if x is None or x.shape[0] == 0:
        return torch.zeros(1, 3, device=dev)
    return _f(x)


SMALL_BVH_MAX_FACES = 512  # the Python SAH build below costs ~0.1 ms a node


_SMALL_BVH_CACHE: "OrderedDict" = OrderedDict()


def _small_bvh_cached(verts: torch.Tensor, faces: torch.Tensor):
    """:func:`small_bvh` of the triangles' float32 corners, remembered for the last 8 distinct
    triangle sets (renders of a scene whose geometry does not change, e.g. material or light
    optimisation, skip the Python build; ~4 ms for the Cornell box), including a ``None``."""
    key = verts.detach().float().cpu()[faces.long().cpu()].numpy().tobytes()
    if key in _SMALL_BVH_CACHE:  # a remembered None (tree too deep for the stack) counts too
        _SMALL_BVH_CACHE.move_to_end(key)
        return _SMALL_BVH_CACHE[key]
    hit = _SMALL_BVH_CACHE[key] = small_bvh(verts, faces)
    while len(_SMALL_BVH_CACHE) > 8:
        _SMALL_BVH_CACHE.popitem(last=False)
    return hit


def small_bvh(verts: torch.Tensor, faces: torch.Tensor):
    """A SAH bounding-volume hierarchy over a small triangle mesh whose primitives are its
    triangles, two triangles sharing an edge whose corners form an exact parallelogram (in
    float32) being one primitive. Full sweep over sorted centroids on each axis with the cost of
    a side counted in leaves (``area * ceil(n / LEAF_LANES)``), a subtree of at most
    ``LEAF_LANES`` (L) primitives being one leaf; collapsed to 4-wide nodes for :func:`intersect`
    (a binary node's children, the largest inner one replaced by its two children while there are
    fewer than 4). Returns CPU tensors ``(box (6 N, 4), child (N, 4) int32, leaf_tri (9 L Q,),
    leaf_face (2 L Q,) int32)`` for N nodes and Q leaves: rows ``6 k .. 6 k + 5`` of ``box`` are
    the lo x, lo y, lo z, hi x, hi y, hi z of node ``k``'s four child boxes; ``child[k]`` its
    children (``>= 0``: a node, ``< 0``: ``-(1 + leaf)``, ``BVH_EMPTY``: unused; node 0 is the
    root). Leaf ``q``'s lanes are primitives side by side: entries ``9 L q + L r + c`` of
    ``leaf_tri`` hold coordinate ``r`` of (v0 x, v0 y, v0 z, e1 x, .., e2 z) of lane ``c`` (a
    triangle: its first vertex and edges; a parallelogram: the corner opposite the shared edge and
    the edges to that edge's ends; an unused lane zeros), entries ``2 L q + c`` and ``2 L q + L +
    c`` of ``leaf_face`` the face where u + v <= 1 and the face where u + v > 1 (-1: a triangle,
    or an unused lane). None when the tree is too deep for the traversal stack (``BVH_STACK``):
    then Warp's mesh BVH is used."""
    import numpy as np

    verts_np = verts.detach().float().double().cpu().numpy()
    T = verts.detach().float().double().cpu()[faces.long().cpu()].numpy()  # the float32 values, exactly
    F = T.shape[0]
    # primitives: two triangles sharing an edge whose four corners form an exact parallelogram
    # (the walls and boxes of a Cornell box) become one, (v0, e1, e2) with the second face where
    # u + v > 1; the rest stay triangles
    fl = faces.long().cpu().numpy()
    by_edge: dict = {}
    for i in range(F):
        for k in range(3):
            a, b = int(fl[i, k]), int(fl[i, (k + 1) % 3])
            by_edge.setdefault((min(a, b), max(a, b)), []).append((i, (k + 2) % 3))
    paired = np.zeros(F, dtype=bool)
    prims = []  # (v0, e1, e2, face, second face or -1)
    for (a, b), sides in by_edge.items():
        if len(sides) != 2:
            continue
        (i, ki), (j, kj) = sides
        if paired[i] or paired[j] or i == j:
            continue
        va, vb = verts_np[a], verts_np[b]
        ri, rj = T[i, ki], T[j, kj]
        if np.array_equal(va + vb - ri, rj) and np.array_equal(va - ri + (vb - ri), rj - ri):
            e1, e2 = va - ri, vb - ri
            if np.linalg.norm(np.cross(e1, e2)) > 0:
                paired[i] = paired[j] = True
                prims.append((ri, e1, e2, i, j))
    for i in np.nonzero(~paired)[0]:
        prims.append((T[i, 0], T[i, 1] - T[i, 0], T[i, 2] - T[i, 0], int(i), -1))
    P = len(prims)
    corners = np.stack([np.stack([p[0], p[0] + p[1], p[0] + p[2], p[0] + p[1] + p[2] if p[4] >= 0 else p[0]])
                        for p in prims])
    lo_t, hi_t = corners.min(1), corners.max(1)
    cen = 0.5 * (lo_t + hi_t)
    tree: list = []  # [lo, hi, left, right, axis] (inner) or [lo, hi, first, count, -1] (leaf)
    order: list = []

    def area(lo, hi):
        e = np.maximum(hi - lo, 0.0)
        return 2.0 * (e[..., 0] * e[..., 1] + e[..., 1] * e[..., 2] + e[..., 2] * e[..., 0])

    def build(idx):
        me = len(tree)
        lo, hi = lo_t[idx].min(0), hi_t[idx].max(0)
        tree.append([lo, hi, 0, 0, -1])
        n = len(idx)
        best = None
        if n > LEAF_LANES:
            k = np.arange(1, n)
            kq, rq = np.ceil(k / LEAF_LANES), np.ceil((n - k) / LEAF_LANES)  # leaves a side needs
            for ax in range(3):
                srt = idx[np.argsort(cen[idx, ax], kind="stable")]
                l_lo, l_hi = np.minimum.accumulate(lo_t[srt], 0), np.maximum.accumulate(hi_t[srt], 0)
                r_lo = np.minimum.accumulate(lo_t[srt][::-1], 0)[::-1]
                r_hi = np.maximum.accumulate(hi_t[srt][::-1], 0)[::-1]
                cost = area(l_lo[:-1], l_hi[:-1]) * kq + area(r_lo[1:], r_hi[1:]) * rq
                j = int(np.argmin(cost))
                if best is None or cost[j] < best[0]:
                    best = (cost[j], srt, j + 1, ax)
        if best is None:
            tree[me][2], tree[me][3] = len(order), n
            order.extend(idx.tolist())
        else:
            tree[me][2] = build(best[1][: best[2]])  # the lower centroids along the split axis
            tree[me][3] = build(best[1][best[2]:])
            tree[me][4] = best[3]
        return me

    build(np.arange(P))

    def inner(i):  # build splits exactly the subtrees of more than LEAF_LANES primitives
        return tree[i][4] >= 0

    def area_of(i):
        e = np.maximum(tree[i][1] - tree[i][0], 0.0)
        return e[0] * e[1] + e[1] * e[2] + e[2] * e[0]

    box_rows, child_rows, leaves = [], [], []
    deepest = [0]

    def emit(i, pending):
        # a 4-wide node from binary node i: its children, the largest inner one replaced by its
        # own two children while fewer than 4; a subtree of <= LEAF_LANES primitives is one leaf
        kids = [c for c in tree[i][2:4] if c >= 0] if inner(i) else [i]
        while len(kids) < 4:
            big = [c for c in kids if inner(c)]
            if not big:
                break
            c = max(big, key=area_of)
            at = kids.index(c)
            kids[at:at + 1] = tree[c][2:4]
        me = len(child_rows)
        deepest[0] = max(deepest[0], pending + len(kids))  # stack entries while this node's are pushed
        box = np.zeros((6, 4))
        child_rows.append([EMPTY] * 4)
        box_rows.append(box)
        for slot, c in enumerate(kids):
            box[0:3, slot], box[3:6, slot] = tree[c][0], tree[c][1]
        for slot, c in enumerate(kids):
            if inner(c):
                child_rows[me][slot] = emit(c, pending + len(kids) - 1)
            else:
                leaves.append(order[tree[c][2]: tree[c][2] + tree[c][3]])
                child_rows[me][slot] = -len(leaves)  # -(1 + leaf)
        return me

    EMPTY = int(BVH_EMPTY)
    emit(0, 0)
    if deepest[0] > BVH_STACK:
        return None
    box = torch.tensor(np.concatenate(box_rows), dtype=torch.float32)
    child = torch.tensor(child_rows, dtype=torch.int32)
    lanes = int(LEAF_LANES)
    leaf_tri = np.zeros((len(leaves), 9, lanes))  # unused lanes: e1 = e2 = 0 (det = 0, never hit)
    leaf_face = np.full((len(leaves), 2, lanes), -1)
    for q, members in enumerate(leaves):
        for lane, j in enumerate(members):
            leaf_tri[q, :, lane] = np.concatenate(prims[j][:3])
            leaf_face[q, :, lane] = prims[j][3:5]
    return (box, child, torch.tensor(leaf_tri.reshape(-1), dtype=torch.float32),
            torch.tensor(leaf_face.reshape(-1), dtype=torch.int32))


class PreparedScene:
    """The Warp side of one scene state (BVH, scene struct, the tensors they view). Opaque:
    build it with :func:`prepare_scene`, pass it to the functions below."""

    def __init__(self, scene):
        dev = scene.vertices.device
        self.device = dev
        keep = []

        def arr(t, dtype):
            t = t.contiguous()
            keep.append(t)
            return wp.from_torch(t, dtype=dtype)

        faces = scene.faces.to(torch.int32).contiguous()
        face_material = scene.face_material
        verts = _f(scene.vertices)
        if faces.shape[0] == 0:  # Warp needs a triangle: a degenerate one (never hit)
            verts = torch.zeros(3, 3, device=dev)
            faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
            face_material = torch.zeros(1, dtype=torch.long, device=dev)
        self.bvh = build_bvh(verts, faces)
        s = Scene()
        s.mesh = self.bvh.mesh.id
        s.verts = self.bvh.mesh.points
        s.faces = arr(faces, wp.int32)
        s.face_mat = arr(face_material.to(torch.int32), wp.int32)
        face_n = torch.zeros(faces.shape[0], 3, device=dev)
        s.face_n = arr(face_n, wp.vec3)
        parallel_launch(face_unit_normals, int(faces.shape[0]), [s], [wp.from_torch(face_n, dtype=wp.vec3)],
                        device=dev)
        F = faces.shape[0]
        uv = scene.face_uvs if (scene.face_uvs is not None and scene.face_uvs.shape[0] == F) \
            else torch.zeros(F, 3, 2, device=dev)
        s.face_uv = arr(_f(uv), wp.vec2)
        s.mat_kind = arr(scene.material_kind.to(torch.int32), wp.int32)
        s.mat_albedo = arr(_f(scene.albedo), wp.vec3)
        s.mat_rough = arr(_f(scene.roughness), wp.float32)
        s.mat_emit = arr(_f(scene.emission), wp.vec3)
        M = scene.albedo.shape[0]
        mt = scene.material_texture if scene.material_texture is not None else torch.full((M,), -1, device=dev)
        s.mat_tex = arr(mt.to(torch.int32), wp.int32)
        texs = [_f(t).reshape(-1, 3) for t in scene.textures]
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
        pp, pi = scene.point_position, scene.point_intensity
        dd, di = scene.directional_direction, scene.directional_irradiance
        s.n_pl = 0 if pp is None else int(pp.shape[0])
        s.n_dl = 0 if dd is None else int(dd.shape[0])
        self.n_pl, self.n_dl = s.n_pl, s.n_dl
        s.pl_pos = arr(_rows(pp, dev), wp.vec3)
        s.pl_int = arr(_rows(pi, dev), wp.vec3)
        s.dl_dir = arr(_rows(dd, dev), wp.vec3)
        s.dl_irr = arr(_rows(di, dev), wp.vec3)
        if scene.environment is not None:
            env = scene.environment
            s.env = arr(_f(env).reshape(-1, 3), wp.vec3)
            s.env_w, s.env_h, s.has_env = int(env.shape[1]), int(env.shape[0]), 1
        else:
            s.env = arr(torch.zeros(1, 3, device=dev), wp.vec3)
            s.env_w, s.env_h, s.has_env = 1, 1, 0
        # the small-scene BVH of :func:`intersect` (none beyond SMALL_BVH_MAX_FACES faces)
        nodes = _small_bvh_cached(verts, faces) if faces.shape[0] <= SMALL_BVH_MAX_FACES else None
        if nodes is None:
            s.n_nodes = 0
            s.bvh_box = arr(torch.zeros(1, 4, device=dev), wp.vec4)
            s.bvh_child = arr(torch.zeros(1, 4, dtype=torch.int32, device=dev), wp.vec4i)
            s.leaf_tri = arr(torch.zeros(9 * LEAF_LANES, device=dev), wp.float32)
            s.leaf_face = arr(torch.full((2 * LEAF_LANES,), -1, dtype=torch.int32, device=dev), wp.int32)
        else:
            box, child, leaf_tri, leaf_face = (x.to(dev) for x in nodes)
            s.n_nodes = int(child.shape[0])
            s.bvh_box, s.bvh_child = arr(box, wp.vec4), arr(child, wp.vec4i)
            s.leaf_tri, s.leaf_face = arr(leaf_tri, wp.float32), arr(leaf_face, wp.int32)
        s.native_bvh = int(dev.type == "cpu")
        self.struct = s
        self.keep = keep
        self.M = M
        self.env_size = int(scene.environment.shape[0] * scene.environment.shape[1]) \
            if scene.environment is not None else 0

    def new_grads(self):
        """Zeroed gradient buffers (dict of float64 tensors) and the Warp struct that views them."""
        dev, M = self.device, self.M
        z = dict(device=dev, dtype=torch.float64)
        t = {
            "albedo": torch.zeros(M, 3, **z), "emit": torch.zeros(M, 3, **z),
            "rough": torch.zeros(M, **z), "tex": torch.zeros(max(self.tex_size, 1), 3, **z),
            "pl_int": torch.zeros(max(self.n_pl, 1), 3, **z),
            "dl_irr": torch.zeros(max(self.n_dl, 1), 3, **z),
            "env": torch.zeros(max(self.env_size, 1), 3, **z),
        }
        g = Grads()
        for k in ("albedo", "emit", "tex", "pl_int", "dl_irr", "env"):
            setattr(g, k, wp.from_torch(t[k], dtype=wp.vec3d))
        g.rough = wp.from_torch(t["rough"], dtype=wp.float64)
        return t, g


def prepare_scene(scene) -> PreparedScene:
    """The Warp side of ``scene`` (any object with the fields of
    :class:`diffvc.render.pt_scene.PathTracingScene`), float32, for one state of its tensors."""
    return PreparedScene(scene)


def _camera(cam) -> Camera:
    origin, d00, dx, dy, width, height = cam
    c = Camera()
    c.origin, c.d00, c.dx, c.dy = (wp.vec3(*[float(x) for x in v]) for v in (origin, d00, dx, dy))
    c.width, c.height = int(width), int(height)
    return c


def _launch(kernel, n: int, prep: PreparedScene, args_for) -> int:
    return parallel_launch(kernel, n, args_for, device=prep.device, min_per_thread=_MIN_PER_THREAD)


def render(prep: PreparedScene, cam, spp: int, seed: int, max_depth: int, rr_depth: int) -> torch.Tensor:
    """Mean radiance of ``spp`` jittered paths per pixel: (H * W, 3) float32, row-major pixels."""
    c = _camera(cam)
    image = torch.zeros(c.height * c.width, 3, device=prep.device)
    _, g = prep.new_grads()
    img = wp.from_torch(image, dtype=wp.vec3)
    _launch(render_pixels, c.height * c.width, prep, lambda k: [prep.struct, g, c, spp, seed, max_depth, rr_depth, 0,
                                                                img, img])
    return image


def replay(prep: PreparedScene, cam, adj_image: torch.Tensor, spp: int, seed: int, max_depth: int,
           rr_depth: int) -> dict:
    """Path replay backpropagation of the samples of :func:`render` (same arguments) for the
    adjoint image ``adj_image`` (H * W, 3). Returns float64 gradients: ``albedo`` (M, 3),
    ``rough`` (M,), ``emit`` (M, 3), ``tex`` (texels, 3), ``pl_int`` (P, 3), ``dl_irr`` (D, 3),
    ``env`` (He * We, 3). Each term is computed in float32 and accumulated in float64 (CPU and
    CUDA), so the sums do not drift with the number of paths. Each CPU chunk accumulates into its
    own buffers (CPU atomics are not atomic across threads); they are summed in chunk order."""
    c = _camera(cam)
    n = c.height * c.width
    adj = wp.from_torch(_f(adj_image), dtype=wp.vec3)
    dummy = wp.from_torch(torch.zeros(1, 3, device=prep.device), dtype=wp.vec3)
    bufs = [prep.new_grads() for _ in split_chunks(n, prep.device, _MIN_PER_THREAD)]
    _launch(render_pixels, n, prep, lambda k: [prep.struct, bufs[k][1], c, spp, seed, max_depth, rr_depth, 1, adj,
                                               dummy])
    tot = {k: sum(b[0][k] for b in bufs) for k in bufs[0][0]}
    return {"albedo": tot["albedo"], "rough": tot["rough"], "emit": tot["emit"], "tex": tot["tex"][: prep.tex_size],
            "pl_int": tot["pl_int"][: prep.n_pl], "dl_irr": tot["dl_irr"][: prep.n_dl],
            "env": tot["env"][: prep.env_size]}


def radiance_at_points(prep: PreparedScene, cam, points: torch.Tensor, spp: int, seed: int, max_depth: int,
                       rr_depth: int, pair: int) -> torch.Tensor:
    """Mean radiance (N, 3) float32 of ``spp`` paths through continuous pixel coordinates
    ``points`` (N, 2); point ``i`` uses the random numbers of point ``i % pair``."""
    c = _camera(cam)
    N = points.shape[0]
    out = torch.zeros(N, 3, device=prep.device)
    if N == 0:
        return out
    _, g = prep.new_grads()
    pts = wp.from_torch(_f(points), dtype=wp.vec2)
    wout = wp.from_torch(out, dtype=wp.vec3)
    _launch(render_points, N, prep, lambda k: [prep.struct, g, c, pts, spp, seed, max_depth, rr_depth, pair, wout])
    return out


def path_derivative(prep: PreparedScene, cam, edges: torch.Tensor, dynamic: torch.Tensor, spp: int, seed: int,
                    max_depth: int, rr_depth: int, do_edges: bool, do_interior: bool, adj_image: torch.Tensor) -> dict:
    """The records of :func:`path_derivative_records` for ``H * W * spp`` camera paths of up to
    ``max_depth`` vertices, as tensors of shape (N, max_depth[, 3]) named after the kernel's
    ``rec_*`` arguments. ``edges`` (E, 3): the candidate edges (two vertex indices and 1 when the
    edge belongs to a moving face); ``dynamic`` (F,): the moving faces; ``adj_image`` (H * W, 3):
    the adjoint image."""
    c = _camera(cam)
    N = c.height * c.width * spp
    D = max(int(max_depth), 1)
    dev = prep.device
    names_i = ("face", "lkind", "lface", "edge", "fm", "fp")
    names_f = ("cn", "t", "cm", "cp", "em", "ep")
    names_v = ("pos", "lpos", "nv", "ym", "yp", "beta")
    rec = {k: torch.zeros(N, D, dtype=torch.int32, device=dev) for k in names_i}
    rec.update({k: torch.zeros(N, D, device=dev) for k in names_f})
    rec.update({k: torch.zeros(N, D, 3, device=dev) for k in names_v})
    n_edges = int(edges.shape[0])
    if n_edges == 0:  # Warp arrays need storage
        edges = torch.zeros(1, 3, dtype=torch.int32, device=dev)
    e32 = edges.to(device=dev, dtype=torch.int32).contiguous()
    dyn = dynamic.to(device=dev, dtype=torch.int32).contiguous()
    _, g = prep.new_grads()
    w = {k: wp.from_torch(x, dtype=wp.vec3) if k in names_v else wp.from_torch(x) for k, x in rec.items()}
    args = [prep.struct, g, c, wp.from_torch(e32, dtype=wp.int32), n_edges, wp.from_torch(dyn, dtype=wp.int32), spp,
            seed, int(max_depth), rr_depth, int(do_edges), int(do_interior), wp.from_torch(_f(adj_image), dtype=wp.vec3)]
    args += [w[k] for k in ("face", "pos", "lkind", "lface", "lpos", "cn", "edge", "t", "nv", "cm", "cp", "fm", "fp",
                            "ym", "yp", "em", "ep", "beta")]
    _launch(path_derivative_records, N, prep, lambda k: args)
    return rec


def bsdf_values(kind: int, rough: float, albedo, n, wo, wi):
    """The kernels' BSDF: ``(f (N, 3), pdf (N,))`` float32 for (N, 3) unit vectors (no gradients)."""
    N = n.shape[0]
    f = torch.zeros(N, 3, device=n.device)
    pdf = torch.zeros(N, device=n.device)
    parallel_launch(eval_bsdf, N, [int(kind), wp.float32(rough)] + [_v3(x) for x in (albedo, n, wo, wi)],
                    [wp.from_torch(f, dtype=wp.vec3), wp.from_torch(pdf)], device=n.device)
    return f, pdf


def bsdf_directions(kind: int, rough: float, n, wo, seed: int) -> torch.Tensor:
    """Directions (N, 3) float32 drawn by the kernels' BSDF sampling routine."""
    wi = torch.zeros(n.shape[0], 3, device=n.device)
    parallel_launch(sample_bsdf_dirs, n.shape[0], [int(kind), wp.float32(rough), _v3(n), _v3(wo), int(seed)],
                    [wp.from_torch(wi, dtype=wp.vec3)], device=n.device)
    return wi
