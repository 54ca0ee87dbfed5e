"""Edge sampling (Li et al. 2018) for the boundary term of primary visibility.

The pixel value is ``I = integral over the pixel of L(x) dx`` (pixel area 1). When a parameter
``theta`` moves an edge across which ``L`` jumps, ``dI/dtheta`` gains
``integral over the edge of (L_minus - L_plus) (n . dx/dtheta) dl``, with ``n`` the edge's unit
normal in the image, ``L_plus`` the radiance just on the side ``n`` points to and ``L_minus``
the other. We sample points on candidate edges proportionally to their projected length (stratified
along the concatenated edges), trace
``edge_spp`` paths on each side (the same random numbers on both sides, so occluded edges and
continuous shading cancel up to a tiny offset) and, in the backward pass, differentiate
``n . x(theta)`` in torch (``x`` = projected edge point, a function of the vertices and the
camera's R, t, intrinsics).

Candidate edges: edges of ``scene.dynamic_faces`` (all faces by default) that are boundaries,
silhouettes seen from the camera, creases (the adjacent normals differ) or material boundaries.
Edges with an endpoint behind the camera are skipped.

:func:`path_terms` adds the geometry derivative at every later path vertex (interior terms of
the next-event connections and of the links' cosines, and a visibility boundary term per
vertex), with every vertex sliding along the direction it was sampled in (solid angle, Li et
al. 2018) and light samples as material points of the emitters (area measure, Zhang et al.
2020), and the visibility boundary of direct light sampled from the lights' side: shadow lines
of point, directional and area-light points (:func:`shadow_pool`).

Layering: :mod:`diffvc.render.pathtrace` imports this module (never the other way round); both
reach the kernels only through the torch-only functions of :mod:`diffvc._kernels.pathtrace`.
"""

from __future__ import annotations

import torch

from .._kernels import pathtrace as K
from ..geometry.topology import edge_owners
from .cameras import Cameras
from .raytrace import hit_from_face

_OFFSET = 1e-3  # pixels on each side of the edge


def candidate_edges(scene, camera: Cameras) -> torch.Tensor:
    """(E, 2) vertex indices of the edges that may carry a radiance discontinuity in the image."""
    faces = scene.faces.long()
    F = faces.shape[0]
    if F == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=faces.device)
    uniq, f1, f2, counts = edge_owners(faces)   # first and last owner face of each unique edge
    v = scene.vertices.detach().to(torch.float64)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    c = camera.centers[0].detach().to(torch.float64)
    facing = ((c - tri[:, 0]) * n).sum(-1) > 0
    boundary = counts == 1
    silhouette = facing[f1] != facing[f2]
    crease = (n[f1] * n[f2]).sum(-1) < 1 - 1e-6
    material = scene.face_material[f1] != scene.face_material[f2]
    keep = boundary | silhouette | crease | material
    if scene.dynamic_faces is not None:
        dyn = scene.dynamic_faces.bool()
        keep &= dyn[f1] | dyn[f2]
    return uniq[keep]


class _EdgeFn(torch.autograd.Function):
    """Value: zeros (H, W, 3). Backward: the sampled boundary term w.r.t. vertices and camera."""

    @staticmethod
    def forward(ctx, samples, camera_meta, vertices, R, t, intrinsics):
        ctx.samples, ctx.meta = samples, camera_meta
        ctx.save_for_backward(vertices, R, t, intrinsics)
        H, W = camera_meta[0], camera_meta[1]
        return torch.zeros(H, W, 3, dtype=vertices.dtype, device=vertices.device)

    @staticmethod
    def backward(ctx, grad_image):
        vertices, R, t, intrinsics = ctx.saved_tensors
        s = ctx.samples
        H, W, ortho, near = ctx.meta
        if s is None:
            return None, None, None, None, None, None
        coef = (grad_image.reshape(-1, 3)[s["pixel"]].to(s["dL"].dtype) * s["dL"]).sum(-1) * s["weight"]
        with torch.enable_grad():
            xs = [x.detach().requires_grad_(True) for x in (vertices, R, t, intrinsics)]
            cam = Cameras(xs[1], xs[2], xs[3], W, H, ortho, near)
            pa = cam.project(xs[0][s["ia"]].to(xs[1].dtype))[0, :, :2]
            pb = cam.project(xs[0][s["ib"]].to(xs[1].dtype))[0, :, :2]
            tt = s["t"].to(pa.dtype)[:, None]
            x = pa * (1 - tt) + pb * tt
            S = (coef.to(pa.dtype) * (x * s["n"].to(pa.dtype)).sum(-1)).sum()
            need = [ctx.needs_input_grad[2 + k] for k in range(4)]
            wrt = [x_ for x_, nd in zip(xs, need) if nd]
            grads = list(torch.autograd.grad(S, wrt, allow_unused=True)) if wrt else []
        out = []
        for nd in need:
            out.append(grads.pop(0) if nd else None)
        return (None, None, *out)


def sample_edges(prep, scene, camera: Cameras, cam, n_samples: int, edge_spp: int, seed: int, max_depth: int,
                 rr_depth: int):
    """Draw the edge samples and their radiance jumps (no gradients). Returns a dict or None.
    ``prep``: the scene's :class:`~diffvc._kernels.pathtrace.PreparedScene`; ``cam``: the camera
    as :func:`diffvc.render.pathtrace.camera_rays` gives it."""
    H, W = camera.height, camera.width
    edges = candidate_edges(scene, camera)
    if edges.shape[0] == 0:
        return None
    with torch.no_grad():
        v = scene.vertices.detach()
        scr = camera.project(v.to(camera.dtype))[0].to(torch.float64)  # (V, 3): u, v, depth
        a, b = scr[edges[:, 0]], scr[edges[:, 1]]
        front = (a[:, 2] > camera.near) & (b[:, 2] > camera.near)
        edges, a, b = edges[front], a[front, :2], b[front, :2]
        length = (b - a).norm(dim=-1)
        ok = length > 1e-9
        edges, a, b, length = edges[ok], a[ok], b[ok], length[ok]
        if edges.shape[0] == 0:
            return None
        total = length.sum()
        gen = torch.Generator().manual_seed(seed)
        # stratified along the concatenation of all edges (arc length in pixels)
        cdf = torch.cumsum(length, 0)
        s = (torch.arange(n_samples, dtype=torch.float64) + torch.rand(n_samples, generator=gen,
                                                                       dtype=torch.float64)).to(v.device)
        s = s * (total / n_samples)
        pick = torch.searchsorted(cdf, s, right=True).clamp_max(length.shape[0] - 1)
        tt = ((s - (cdf[pick] - length[pick])) / length[pick]).clamp(0.0, 1.0)
        pa, pb = a[pick], b[pick]
        x = pa * (1 - tt[:, None]) + pb * tt[:, None]
        d = (pb - pa) / length[pick, None]
        n = torch.stack([-d[:, 1], d[:, 0]], -1)
        inside = (x[:, 0] >= 0) & (x[:, 0] < W) & (x[:, 1] >= 0) & (x[:, 1] < H)
        x, n, tt, pick = x[inside], n[inside], tt[inside], pick[inside]
        if x.shape[0] == 0:
            return None
        m = x.shape[0]
        pts = torch.cat([x + _OFFSET * n, x - _OFFSET * n])
        L = K.radiance_at_points(prep, cam, pts, edge_spp, seed, max_depth, rr_depth, m).to(torch.float64)
        dL = L[m:] - L[:m]  # L_minus - L_plus
        pixel = x[:, 1].floor().long().clamp(0, H - 1) * W + x[:, 0].floor().long().clamp(0, W - 1)
        return {"ia": edges[pick, 0], "ib": edges[pick, 1], "t": tt, "n": n, "dL": dL, "pixel": pixel,
                "weight": total / n_samples}


def edge_term(prep, scene, camera: Cameras, cam, n_samples: int, edge_spp: int, seed: int, max_depth: int,
              rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the primary-visibility boundary gradient (see module doc)."""
    samples = sample_edges(prep, scene, camera, cam, n_samples, edge_spp, seed, max_depth, rr_depth)
    meta = (camera.height, camera.width, camera.orthographic, camera.near)
    return _EdgeFn.apply(samples, meta, scene.vertices, camera.R, camera.t, camera.intrinsics)


def secondary_candidate_edges(scene, dynamic_only: bool = True) -> torch.Tensor:
    """(E, 2) edges that can bound what a surface point sees: boundaries, creases and material
    boundaries (silhouettes from any point are creases); only edges of ``scene.dynamic_faces``
    when ``dynamic_only``."""
    faces = scene.faces.long()
    if faces.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=faces.device)
    uniq, f1, f2, counts = edge_owners(faces)
    v = scene.vertices.detach().to(torch.float64)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    keep = (counts == 1) | ((n[f1] * n[f2]).sum(-1) < 1 - 1e-6) | (scene.face_material[f1] != scene.face_material[f2])
    if dynamic_only and scene.dynamic_faces is not None:
        dyn = scene.dynamic_faces.bool()
        keep &= dyn[f1] | dyn[f2]
    return uniq[keep]


_CHUNK = 1 << 15  # paths differentiated per torch pass (bounds the autograd graph's memory)


def _material(v: torch.Tensor, faces: torch.Tensor, face: torch.Tensor, point0: torch.Tensor):
    """Points of ``face`` (M,) with the barycentric coordinates that ``point0`` (M, 3) has at the
    current vertex values: they move with the face. Returns ``(points, unit normals, area ratio
    to the current area)``, differentiable w.r.t. ``v``."""
    tri = v[faces[face]]
    t0 = tri.detach()
    e1, e2, w = t0[:, 1] - t0[:, 0], t0[:, 2] - t0[:, 0], point0 - t0[:, 0]
    d00, d01, d11 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    d20, d21 = (w * e1).sum(-1), (w * e2).sum(-1)
    den = d00 * d11 - d01 * d01
    den = torch.where(den.abs() > 1e-30, den, torch.ones_like(den))
    b1 = (d11 * d20 - d01 * d21) / den
    b2 = (d00 * d21 - d01 * d20) / den
    pts = tri[:, 0] * (1 - b1 - b2)[:, None] + tri[:, 1] * b1[:, None] + tri[:, 2] * b2[:, None]
    cr = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = cr.norm(dim=-1).clamp_min(1e-30)
    return pts, cr / area[:, None], area / area.detach()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _records_grad(rec: dict, vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor,
                  origin: torch.Tensor, shadow: dict | None = None) -> torch.Tensor:
    """Gradient w.r.t. ``vertices`` of the terms recorded by
    :func:`diffvc._kernels.pathtrace.path_derivative` (see :func:`path_terms`). ``shadow``: the
    :func:`shadow_pool` (key ``pool``) and what connecting path vertices to it needs (``prep``,
    ``gen``, ``max_depth``, ``face_albedo`` (F, 3): albedo / pi of diffuse faces, 0 otherwise)."""
    use_i = (rec["lkind"] > 0) & (rec["cn"] != 0)
    use_e = (rec["edge"] >= 0) & ((rec["cm"] != 0) | (rec["cp"] != 0))
    has_pool = shadow is not None  # (the camera's shadow-line term is added by the caller)
    if shadow is not None:
        # later vertices connect to the lines of point and directional lights only (area lights'
        # soft shadows seen from them are the edge term's, relative to the emitter's points)
        keep = shadow["pool"]["lface"] < 0
        shadow = None if not bool(keep.any()) else {**shadow, "pool": {k: x[keep] for k, x in shadow["pool"].items()}}
    if shadow is not None:
        Dm = rec["face"].shape[1]
        first = torch.arange(Dm, device=rec["face"].device)[None] <= shadow["max_depth"] - 2
        fa = shadow["face_albedo"][rec["face"].long().clamp_min(0)]
        use_s = (rec["face"] >= 0) & first & (fa.amax(-1) > 0) & (rec["beta"].abs().amax(-1) > 0)
    else:
        use_s = torch.zeros_like(use_i)
    rows = torch.nonzero((use_i | use_e | use_s).any(1)).reshape(-1)
    gv = torch.zeros_like(vertices)
    if rows.numel() == 0:
        return gv
    dt = vertices.dtype
    for c0 in range(0, rows.numel(), _CHUNK):
        r = rows[c0:c0 + _CHUNK]
        R = {k: x[r] for k, x in rec.items()}
        ui, ue, us = use_i[r], use_e[r], use_s[r]
        D = int(torch.nonzero((ui | ue | us).any(0)).max()) + 1  # vertices needed: x_0 .. x_{D-1}
        R = {k: x[:, :D] for k, x in R.items()}
        ui, ue, us = ui[:, :D], ue[:, :D], us[:, :D]
        face = R["face"].long()
        valid = face >= 0
        fidx = face.clamp_min(0)
        pos0 = R["pos"].to(dt)
        cn = torch.where(ui, R["cn"].to(dt), torch.zeros((), dtype=dt))
        o = origin.to(dt)
        with torch.enable_grad():
            v = vertices.detach().requires_grad_(True)
            # every vertex slides along its sampled direction (solid-angle parameterisation): x_0
            # along its camera ray, x_{k+1} along the direction sampled at x_k
            Xs, Ns, dirs = [], [], []
            prev = o.expand(r.numel(), 3)
            for k in range(D):
                dk = _unit(pos0[:, k] - (o if k == 0 else pos0[:, k - 1]))
                h = hit_from_face(v, faces, fidx[:, k], prev, dk)
                Xs.append(torch.where(valid[:, k, None], h.point, pos0[:, k]))
                Ns.append(h.normal)
                dirs.append(dk)
                prev = Xs[-1]
            X, Nrm, Dir = torch.stack(Xs, 1), torch.stack(Ns, 1), torch.stack(dirs, 1)
            S = torch.zeros((), dtype=dt)
            if D > 1:
                # the cosine of each sampled link x_j -> x_{j+1} (at x_j; it is in the throughput of
                # every later connection; the BSDF and the sampling density are held fixed)
                rem = cn.flip(1).cumsum(1).flip(1)[:, 1:]
                cj = (Nrm[:, :-1] * Dir[:, 1:]).sum(-1).abs()
                cj0 = cj.detach()
                ok = valid[:, 1:] & (cj0 > 0) & (rem != 0)
                S = S + (rem[ok] * cj[ok] / cj0[ok]).sum()
            pi, ki = torch.nonzero(ui, as_tuple=True)
            if pi.numel():  # next-event connections: area lights in area measure (material points)
                xk, nk = X[pi, ki], Nrm[pi, ki]
                kind = R["lkind"][pi, ki]
                lpos = R["lpos"][pi, ki].to(dt)
                lf = R["lface"][pi, ki].long().clamp_min(0)
                tri = v[faces[lf]]
                y = (lpos[:, :, None] * tri).sum(1)
                cr = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
                area = cr.norm(dim=-1).clamp_min(1e-30)
                ny = cr / area[:, None]
                rv = torch.where((kind == 1)[:, None], y, lpos) - xk
                r2 = (rv * rv).sum(-1).clamp_min(1e-20)
                rh = rv / r2.sqrt()[:, None]
                g_area = (nk * rh).sum(-1).abs() * (ny * rh).sum(-1).abs() / r2 * (area / area.detach())
                g_point = (nk * rh).sum(-1).abs() / r2
                g_dir = (nk * lpos).sum(-1).abs()
                G = torch.where(kind == 1, g_area, torch.where(kind == 2, g_point, g_dir))
                G0 = G.detach()
                ok = G0 > 0
                S = S + (cn[pi, ki][ok] * G[ok] / G0[ok]).sum()
            pe_, ke = torch.nonzero(ue, as_tuple=True)
            if pe_.numel():  # visibility boundaries seen from the (moving) vertex
                ed = edges[R["edge"][pe_, ke].long()]
                t = R["t"][pe_, ke].to(dt)[:, None]
                xk = X[pe_, ke]
                om = _unit(v[ed[:, 0]] * (1 - t) + v[ed[:, 1]] * t - xk)
                nv = R["nv"][pe_, ke].to(dt)
                at_camera_hit = (ke == 0) & has_pool
                for side, sign in (("m", 1.0), ("p", -1.0)):
                    # radiance beside the edge moves with the edge's image (solid angle); the emission
                    # of the first hit beside it is direct light, which next-event estimation
                    # differentiates in area measure: at camera hits its visibility boundary is the
                    # shadow lines' term (shadow_pool, sampled from the lights); at later vertices it
                    # counts here, relative to the emitter's material point
                    c = R["c" + side][pe_, ke].to(dt)
                    ce = R["e" + side][pe_, ke].to(dt)
                    fs = R["f" + side][pe_, ke].long()
                    ys = R["y" + side][pe_, ke].to(dt)
                    ym, _, _ = _material(v, faces, fs.clamp_min(0), ys)
                    oms = torch.where((fs >= 0)[:, None], _unit(ym - xk), ys)
                    rel = torch.where(at_camera_hit, torch.zeros_like(ce), ce)
                    S = S + sign * ((c - ce) * (nv * om).sum(-1) + rel * (nv * (om - oms)).sum(-1)).sum()
            ps, ks = torch.nonzero(us, as_tuple=True)
            if ps.numel():  # shadow lines (all lights) seen from x_k
                prev = torch.where((ks == 0)[:, None], o.expand(ps.numel(), 3), pos0[ps, (ks - 1).clamp_min(0)])
                win = _unit(prev - pos0[ps, ks])
                n0 = Nrm[ps, ks].detach()
                n0 = n0 * torch.where((n0 * win).sum(-1) < 0, -1.0, 1.0).to(dt)[:, None]
                coef = R["beta"][ps, ks].to(dt) * shadow["face_albedo"][face[ps, ks]].to(dt)
                S = S + _shadow_vertex_grad(shadow["pool"], v, faces, shadow["prep"], X[ps, ks], pos0[ps, ks], n0,
                                            coef, shadow["gen"])
            if S.requires_grad:
                (g,) = torch.autograd.grad(S, [v])
                gv = gv + g
    return gv


def _closest(prep, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor):
    """Closest hits (face (N,) long, t (N,) float64) of rays with unit directions (float64 in)."""
    f, t = K.closest_hits(prep.bvh, o.float(), d.float(), tmax.float().clamp_max(1e30))
    return f.long(), t.double()


def _plane_hit(a, n, o, d):
    """Points where rays ``o + s d`` meet the planes through ``a`` with normals ``n`` (all (N, 3))."""
    den = (n * d).sum(-1)
    den = torch.where(den.abs() > 1e-30, den, torch.full_like(den, 1e-30))
    return o + d * (((a - o) * n).sum(-1) / den)[:, None]


def shadow_pool(prep, scene, n_samples: int, seed: int):
    """Points on the boundaries of the shadows that lights cast (no gradients): the shadow lines
    of point lights, directional lights and points of area lights (emissive faces). For each
    point or directional light, and once for all area lights, ``n_samples`` points stratified by
    length along candidate edges (area lights: a point ``y`` of an emissive face per sample,
    uniform in area); an edge counts where it is a silhouette seen from the light (or a mesh
    boundary); the ray from the light through the edge point, continued past it, meets the
    receiver at ``x_s`` (face ``face``). Kept where the edge point itself is lit and exactly one
    side of the shadow line on the receiver is lit. The soft shadow of an area light is the
    integral over its points of their shadow lines (the light-side parameterisation of the
    visibility boundary of next-event estimation).

    Returns None or a dict of float64/long tensors: ``edge`` (N, 2) vertex indices, ``t``,
    ``face``, ``x`` (receiver points), ``m`` (unit vector in the receiver's plane across the
    shadow line, towards the lit side), ``light`` (N, 3) light position or unit direction
    towards a directional light, ``kind`` (1 point or area-light point, 2 directional),
    ``lface``/``lbary`` (the emissive face and barycentric weights of an area-light point, -1
    otherwise), ``dL`` (N, 3) the lit side's radiance jump (diffuse receivers:
    ``albedo / pi * E``, ``E`` the irradiance, divided by the density of the light point),
    ``w`` the inverse density per unit edge parameter ``t`` (over ``n_samples``), ``nl`` the
    receiver's unit normal on the light's side, ``x2`` the shadow line's point at ``t +- h`` and
    ``t2sign`` = +-1 / h (``(x2 - x) * t2sign`` is the line's tangent per unit ``t``)."""
    faces = scene.faces.long()
    if faces.shape[0] == 0 or n_samples <= 0:
        return None
    v = scene.vertices.detach().double()
    dev = v.device
    N = n_samples
    uniq, f1, f2, counts = edge_owners(faces)
    tri = v[faces]
    cr = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    nf = _unit(cr)
    gen = torch.Generator().manual_seed(seed)
    none_f = torch.full((N,), -1, dtype=torch.long, device=dev)
    zero3 = torch.zeros(N, 3, dtype=torch.float64, device=dev)
    lights = []  # (kind, per-sample light (N, 3), per-sample intensity (N, 3), lface, lbary, ny, inverse density)
    if scene.point_position is not None:
        for i in range(scene.point_position.shape[0]):
            lights.append((1, scene.point_position[i].detach().double().expand(N, 3),
                           scene.point_intensity[i].detach().double().expand(N, 3), none_f, zero3, None, 1.0))
    if scene.directional_direction is not None:
        for i in range(scene.directional_direction.shape[0]):
            lights.append((2, scene.directional_direction[i].detach().double().expand(N, 3),
                           scene.directional_irradiance[i].detach().double().expand(N, 3), none_f, zero3, None, 1.0))
    emis = scene.emission.detach().double()
    ef = torch.nonzero(emis[scene.face_material].amax(-1) > 0).reshape(-1)
    if ef.numel():
        area = 0.5 * cr[ef].norm(dim=-1)
        if float(area.sum()) > 0:
            k = ef[torch.multinomial(area.cpu(), N, replacement=True, generator=gen).to(dev)]
            u1, u2 = torch.rand(N, generator=gen, dtype=torch.float64), torch.rand(N, generator=gen, dtype=torch.float64)
            su = u1.sqrt()
            bary = torch.stack([1 - su, su * (1 - u2), su * u2], -1).to(dev)
            y = (bary[:, :, None] * tri[k]).sum(1)
            lights.append((3, y, emis[scene.face_material[k]], k, bary, nf[k], float(area.sum())))
    if not lights:
        return None
    crease = (nf[f1] * nf[f2]).sum(-1) < 1 - 1e-6
    out = []
    for kind, lp, li, lface, lbary, ny, inv_area in lights:
        if kind == 3:
            cand = (counts == 1) | crease
        else:
            to_l = (lp[0] - tri[:, 0]) if kind == 1 else lp[0].expand_as(tri[:, 0])
            facing = (nf * to_l).sum(-1) > 0
            cand = (counts == 1) | (facing[f1] != facing[f2])
        eidx = torch.nonzero(cand).reshape(-1)
        if eidx.numel() == 0:
            continue
        a, b = v[uniq[eidx, 0]], v[uniq[eidx, 1]]
        length = (b - a).norm(dim=-1)
        total = length.sum()
        cdf = torch.cumsum(length, 0)
        u = ((torch.arange(N, dtype=torch.float64) + torch.rand(N, generator=gen, dtype=torch.float64))
             * (total / N)).to(dev)
        pick = torch.searchsorted(cdf, u, right=True).clamp_max(eidx.shape[0] - 1)
        t = ((u - (cdf[pick] - length[pick])) / length[pick].clamp_min(1e-30)).clamp(0.0, 1.0)
        ei = eidx[pick]
        a, b = a[pick], b[pick]
        pe = a + (b - a) * t[:, None]
        scale = 1.0 + pe.abs().amax(-1)
        pointlike = kind != 2
        if pointlike:
            r = pe - lp
            dist = r.norm(dim=-1).clamp_min(1e-30)
            d = r / dist[:, None]
            fb, _ = _closest(prep, lp + d * 1e-4 * scale[:, None], d, dist * (1 - 1e-4) - 1e-4 * scale)
            lit = fb < 0
            to_l = lp - pe
        else:
            d = -lp
            fb, _ = _closest(prep, pe - d * 1e-4 * scale[:, None], -d, torch.full_like(scale, 1e30))
            lit = fb < 0
            to_l = lp
        fa, fb2 = f1[ei], f2[ei]
        sil = (counts[ei] == 1) | (((nf[fa] * to_l).sum(-1) > 0) != ((nf[fb2] * to_l).sum(-1) > 0))
        if kind == 3:
            sil &= (ny * d).sum(-1) > 0  # the light point emits towards the edge (front side)
        fr, tr = _closest(prep, pe + d * 1e-4 * scale[:, None], d, torch.full_like(scale, 1e30))
        ok = lit & sil & (fr >= 0)
        if not bool(ok.any()):
            continue
        sel = torch.nonzero(ok).reshape(-1)
        t, pe, d, fr, a, b, lp_, li_, sc = t[sel], pe[sel], d[sel], fr[sel], a[sel], b[sel], lp[sel], li[sel], scale[sel]
        xs = pe + d * (tr[sel] + 1e-4 * sc)[:, None]
        nr = nf[fr]
        # the shadow line on the receiver: tangent from the neighbouring edge point
        h = 1e-3
        t2 = torch.where(t + h <= 1, t + h, t - h)
        pe2 = a + (b - a) * t2[:, None]
        d2 = _unit(pe2 - lp_) if pointlike else d
        xs2 = _plane_hit(tri[fr, 0], nr, pe2, d2)
        tang = (xs2 - xs) * torch.sign(t2 - t)[:, None]
        m = _unit(torch.linalg.cross(nr, tang, dim=-1))
        delta = (1e-3 * (xs - pe).norm(dim=-1) + 1e-6)[:, None]
        toward = lp_ - xs if pointlike else lp_
        nl = nr * torch.sign((nr * toward).sum(-1))[:, None]  # receiver normal on the light's side
        vis = []
        for sgn in (1.0, -1.0):
            q = xs + sgn * delta * m + nl * 1e-4 * sc[:, None]
            if pointlike:
                rq = lp_ - q
                dq = rq.norm(dim=-1).clamp_min(1e-30)
                fq, _ = _closest(prep, q, rq / dq[:, None], dq * (1 - 1e-4) - 1e-4 * sc)
            else:
                fq, _ = _closest(prep, q, lp_, torch.full_like(q[:, 0], 1e30))
            vis.append(fq < 0)
        jump = vis[0] != vis[1]
        diffuse = scene.material_kind[scene.face_material[fr]] == 0
        keep = jump & diffuse
        if not bool(keep.any()):
            continue
        sign = torch.where(vis[0], 1.0, -1.0).to(torch.float64)
        alb = scene.albedo.detach().double()[scene.face_material[fr]]
        if pointlike:
            rl = lp_ - xs
            r2 = (rl * rl).sum(-1)
            g = (nr * rl).sum(-1).abs() / r2.sqrt() / r2
            if kind == 3:
                g = g * (ny[sel] * -rl).sum(-1).clamp_min(0) / r2.sqrt() * inv_area
            E = li_ * g[:, None]
        else:
            E = li_ * (nr * lp_).sum(-1).abs()[:, None]
        kk = keep
        n_k = int(kk.sum())
        out.append({"edge": uniq[ei[sel][kk]], "t": t[kk], "face": fr[kk], "x": xs[kk], "m": m[kk] * sign[kk, None],
                    "light": lp_[kk], "kind": torch.full((n_k,), 2 if kind == 2 else 1, device=dev),
                    "lface": lface[sel][kk], "lbary": lbary[sel][kk],
                    "dL": alb[kk] / torch.pi * E[kk], "w": (total / length[pick][sel][kk]) / N,
                    "nl": nl[kk], "x2": xs2[kk], "t2sign": torch.sign(t2 - t)[kk] / h})
    if not out:
        return None
    return {key: torch.cat([o[key] for o in out]) for key in out[0]}


def _shadow_points(v: torch.Tensor, faces: torch.Tensor, pool: dict) -> torch.Tensor:
    """Receiver points of the shadow-line samples as functions of ``v`` (differentiable): the ray
    from the light (an area light's point moves with its face) through the moving edge point
    meets the (moving) receiver's plane."""
    ed = pool["edge"]
    t = pool["t"].to(v.dtype)[:, None]
    pe = v[ed[:, 0]] * (1 - t) + v[ed[:, 1]] * t
    lp = pool["light"].to(v.dtype)
    area = pool["lface"] >= 0
    if bool(area.any()):
        y = (pool["lbary"].to(v.dtype)[:, :, None] * v[faces[pool["lface"].clamp_min(0)]]).sum(1)
        lp = torch.where(area[:, None], y, lp)
    point = (pool["kind"] == 1)[:, None]
    o = torch.where(point, lp, pe)
    d = torch.where(point, pe - lp, -lp)
    h = hit_from_face(v, faces, pool["face"], o, d)
    return h.point


def _shadow_camera_grad(pool: dict, v: torch.Tensor, faces: torch.Tensor, prep, cam, H: int, W: int,
                        adj: torch.Tensor) -> torch.Tensor:
    """The shadow lines' boundary term seen directly by the camera (image space), summed with the
    adjoint image ``adj`` (H * W, 3); differentiable w.r.t. ``v`` (a scalar to backpropagate)."""
    o, d00, dx, dy = (x.to(v.dtype) for x in cam[:4])
    Minv = torch.linalg.inv(torch.stack([dx, dy, d00], 1))

    def proj(x):
        abc = (x.to(v.dtype) - o) @ Minv.T
        return abc[:, :2] / abc[:, 2:3]

    xs0 = pool["x"]
    u0 = proj(xs0)
    inside = (u0[:, 0] >= 0) & (u0[:, 0] < W) & (u0[:, 1] >= 0) & (u0[:, 1] < H)
    rc = xs0 - o
    dist = rc.norm(dim=-1).clamp_min(1e-30)
    fc, tc = _closest(prep, o.expand_as(xs0), rc / dist[:, None], dist * (1 + 1e-4))
    seen = (fc == pool["face"]) | (tc >= dist * (1 - 1e-4))
    same_side = ((pool["nl"] * (o - xs0)).sum(-1) > 0)
    use = inside & seen & same_side
    if not bool(use.any()):
        return torch.zeros((), dtype=v.dtype)
    P = {k: x[use] for k, x in pool.items()}
    u0 = u0[use]
    tang = (proj(P["x2"]) - u0) * P["t2sign"][:, None]
    ltan = tang.norm(dim=-1).clamp_min(1e-30)
    m_img = torch.stack([-tang[:, 1], tang[:, 0]], -1) / ltan[:, None]
    across = proj(P["x"] + 1e-4 * (P["x"] - o).norm(dim=-1)[:, None] * P["m"]) - u0
    m_img = m_img * torch.sign((m_img * across).sum(-1))[:, None]
    pix = u0[:, 1].floor().long().clamp(0, H - 1) * W + u0[:, 0].floor().long().clamp(0, W - 1)
    coef = (adj[pix].to(v.dtype) * P["dL"].to(v.dtype)).sum(-1) * P["w"].to(v.dtype) * ltan
    u = proj(_shadow_points(v, faces, P))
    return -(coef * (m_img * u).sum(-1)).sum()


def _shadow_vertex_grad(pool: dict, v: torch.Tensor, faces: torch.Tensor, prep, X: torch.Tensor,
                        X0: torch.Tensor, Nrm0: torch.Tensor, coef_rgb: torch.Tensor,
                        gen: torch.Generator) -> torch.Tensor:
    """The shadow lines' boundary term seen from path vertices ``X`` (n, 3) (differentiable; ``X0``
    their values, ``Nrm0`` unit normals on the side the path came from, ``coef_rgb`` (n, 3) = adjoint x throughput x diffuse BSDF at the vertex): each
    vertex connects to one pool sample chosen uniformly (solid angle at the vertex)."""
    n = X.shape[0]
    N = pool["x"].shape[0]
    j = torch.randint(N, (n,), generator=gen).to(X.device)
    P = {k: x[j] for k, x in pool.items()}
    r = P["x"] - X0
    dist = r.norm(dim=-1).clamp_min(1e-30)
    om = r / dist[:, None]
    cos = (Nrm0 * om).sum(-1)
    same = ((P["nl"] * -om).sum(-1) > 0) & (cos > 0)
    o = X0 + Nrm0 * 1e-4 * (1 + X0.abs().amax(-1))[:, None]
    ro = P["x"] - o
    do = ro.norm(dim=-1).clamp_min(1e-30)
    fc, tc = _closest(prep, o, ro / do[:, None], do * (1 + 1e-4))
    seen = (fc == P["face"]) | (tc >= do * (1 - 1e-4))
    use = same & seen
    if not bool(use.any()):
        return torch.zeros((), dtype=v.dtype)
    P = {k: x[use] for k, x in P.items()}
    om, X0u = om[use], X0[use]
    om2 = _unit(P["x2"] - X0u)
    tang = (om2 - om) * P["t2sign"][:, None]
    ltan = tang.norm(dim=-1).clamp_min(1e-30)
    m_ang = _unit(torch.linalg.cross(om, tang, dim=-1))
    across = _unit(P["x"] + 1e-4 * dist[use][:, None] * P["m"] - X0u) - om
    m_ang = m_ang * torch.sign((m_ang * across).sum(-1))[:, None]
    # one of the N pool samples, chosen uniformly: N times its term estimates the pool's sum
    coef = (coef_rgb[use].to(v.dtype) * P["dL"].to(v.dtype)).sum(-1) * cos[use].to(v.dtype) * P["w"].to(v.dtype) \
        * ltan * N
    oms = _unit(_shadow_points(v, faces, P) - X[use])
    return -(coef * (m_ang.to(v.dtype) * oms).sum(-1)).sum()


class _PathTermsFn(torch.autograd.Function):
    """Value: zeros (H, W, 3). Backward: the geometry derivative at every vertex of camera paths
    (interior and boundary terms, see :func:`path_terms`) w.r.t. the vertices."""

    @staticmethod
    def forward(ctx, info, vertices):
        ctx.info = info
        ctx.save_for_backward(vertices)
        return torch.zeros(info["H"], info["W"], 3, dtype=vertices.dtype, device=vertices.device)

    @staticmethod
    def backward(ctx, grad_image):
        (vertices,) = ctx.saved_tensors
        info = ctx.info
        H, W = info["H"], info["W"]
        gv = torch.zeros_like(vertices)
        adj = grad_image.reshape(H * W, 3)
        pool = info["shadow_pool"]
        for spp, seed, do_edges, do_interior in info["passes"]:
            rec = K.path_derivative(info["prep"], info["cam"], info["edges"], info["dynamic"], spp, seed,
                                    info["max_depth"], info["rr_depth"], do_edges, do_interior, adj)
            shadow = None
            if do_edges and pool is not None:
                shadow = {"pool": pool, "prep": info["prep"], "max_depth": info["max_depth"],
                          "gen": torch.Generator().manual_seed(seed + 3), "face_albedo": info["face_albedo"]}
            gv = gv + _records_grad(rec, vertices, info["faces"], info["edges"][:, :2].long(), info["origin"], shadow)
        if pool is not None:
            with torch.enable_grad():
                v = vertices.detach().requires_grad_(True)
                S = _shadow_camera_grad(pool, v, info["faces"], info["prep"], info["cam"], H, W, adj)
                if S.requires_grad:
                    gv = gv + torch.autograd.grad(S, [v])[0]
        return None, gv


def path_terms(prep, scene, cam, H: int, W: int, secondary_spp: int, interior_spp: int, seed: int, max_depth: int,
               rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the geometry derivative at every vertex of camera paths of
    up to ``max_depth`` bounces. Parameterisation: the first vertex slides along its camera ray
    (the image-space boundary is :func:`edge_term`'s), every later vertex slides along the
    direction sampled at the one before (solid angle, Li et al. 2018); light samples are
    material points of the emitters (area measure, as next-event estimation samples them).
    Sliding vertices leave no geometry factor between a moving and a static surface to
    differentiate (in the material form of Zhang et al. 2020 it grows like 1 / distance where a
    moving surface touches a static one: a heavy tail in the contact band).

    * ``interior_spp`` paths per pixel: the derivative of one next-event connection per vertex
      (geometry factor and the emitter's area element) and of the cosine of every sampled link
      (it changes when faces turn). BSDF values are held fixed (exact for diffuse surfaces).
    * ``secondary_spp`` paths per pixel: one edge sample per vertex for the visibility boundary
      (Li et al. 2018, secondary edges): the jump ``F_minus - F_plus`` of ``f cos L`` across an
      edge's image times the edge's angular motion seen from the moving vertex; the emission of
      the first hit beside the edge (direct light) counts relative to the emitter's material
      point, except at camera hits, where the next item samples it. Edges of static
      faces are sampled with a tenth of their weight until the path has touched a moving face.
    * with ``secondary_spp``: the visibility boundary of direct light, sampled from the lights
      (:func:`shadow_pool`, ``max(4096, H W secondary_spp)`` shadow-line points per point or
      directional light and for the area lights): seen by the camera; the point and
      directional lights' lines also from one vertex of each path (one pool point chosen
      uniformly)."""
    zero = torch.zeros(H, W, 3, dtype=scene.vertices.dtype, device=scene.vertices.device)
    F = scene.faces.shape[0]
    if F == 0 or max_depth < 1 or (secondary_spp <= 0 and interior_spp <= 0):
        return zero
    dyn = scene.dynamic_faces if scene.dynamic_faces is not None else torch.ones(F, dtype=torch.bool)
    dyn = dyn.to(scene.vertices.device)
    all_e = secondary_candidate_edges(scene, dynamic_only=False)
    dyn_v = torch.zeros(scene.vertices.shape[0], dtype=torch.bool, device=dyn.device)
    dyn_v[scene.faces[dyn].reshape(-1).long()] = True
    edges = torch.cat([all_e, (dyn_v[all_e[:, 0]] | dyn_v[all_e[:, 1]]).long()[:, None]], 1)
    passes = []
    if secondary_spp > 0 and secondary_spp == interior_spp:
        passes.append((secondary_spp, seed, True, True))
    else:
        if secondary_spp > 0:
            passes.append((secondary_spp, seed, True, False))
        if interior_spp > 0:
            passes.append((interior_spp, seed + 15485863, False, True))
    pool = shadow_pool(prep, scene, max(4096, H * W * secondary_spp), seed + 7) if secondary_spp > 0 else None
    diffuse = scene.material_kind[scene.face_material] == 0
    face_albedo = scene.albedo.detach()[scene.face_material] / torch.pi * diffuse[:, None]
    info = {"prep": prep, "cam": cam, "edges": edges, "dynamic": dyn, "H": H, "W": W, "passes": passes,
            "max_depth": max_depth, "rr_depth": rr_depth, "faces": scene.faces.long(), "origin": cam[0],
            "shadow_pool": pool, "face_albedo": face_albedo}
    return _PathTermsFn.apply(info, scene.vertices)
