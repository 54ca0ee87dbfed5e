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
the links' geometry factors and next-event connections, and a visibility boundary term per
vertex), with the path's vertices as material points of their faces (Zhang et al. 2020).

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
                  origin: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``vertices`` of the terms recorded by
    :func:`diffvc._kernels.pathtrace.path_derivative` (see :func:`path_terms`)."""
    use_i = (rec["lkind"] > 0) & (rec["cn"] != 0)
    use_e = (rec["edge"] >= 0) & ((rec["cm"] != 0) | (rec["cp"] != 0))
    rows = torch.nonzero((use_i | use_e).any(1)).reshape(-1)
    gv = torch.zeros_like(vertices)
    if rows.numel() == 0:
        return gv
    dt = vertices.dtype
    for c0 in range(0, rows.numel(), _CHUNK):
        r = rows[c0:c0 + _CHUNK]
        R = {k: x[r] for k, x in rec.items()}
        ui, ue = use_i[r], use_e[r]
        D = int(torch.nonzero((ui | ue).any(0)).max()) + 1  # vertices needed: x_0 .. x_{D-1}
        R = {k: x[:, :D] for k, x in R.items()}
        ui, ue = ui[:, :D], ue[:, :D]
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
            if pe_.numel():  # visibility boundaries, relative to the material points on each side
                ed = edges[R["edge"][pe_, ke].long()]
                t = R["t"][pe_, ke].to(dt)[:, None]
                xk = X[pe_, ke]
                om = _unit(v[ed[:, 0]] * (1 - t) + v[ed[:, 1]] * t - xk)
                nv = R["nv"][pe_, ke].to(dt)
                for side, sign in (("m", 1.0), ("p", -1.0)):
                    # radiance beside the edge moves with the edge's image (solid angle), except the
                    # emission of the first hit, which is differentiated in area measure (as next-event
                    # estimation samples it): that part counts relative to the emitter's material point
                    fs = R["f" + side][pe_, ke].long()
                    ys = R["y" + side][pe_, ke].to(dt)
                    hit = fs >= 0
                    ym, _, _ = _material(v, faces, fs.clamp_min(0), ys)
                    oms = torch.where(hit[:, None], _unit(ym - xk), ys)
                    c = R["c" + side][pe_, ke].to(dt)
                    ce = R["e" + side][pe_, ke].to(dt)
                    S = S + sign * (c * (nv * om).sum(-1) - ce * (nv * oms).sum(-1)).sum()
            if S.requires_grad:
                (g,) = torch.autograd.grad(S, [v])
                gv = gv + g
    return gv


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
        for spp, seed, do_edges, do_interior in info["passes"]:
            rec = K.path_derivative(info["prep"], info["cam"], info["edges"], info["dynamic"], spp, seed,
                                    info["max_depth"], info["rr_depth"], do_edges, do_interior,
                                    grad_image.reshape(H * W, 3))
            gv = gv + _records_grad(rec, vertices, info["faces"], info["edges"][:, :2].long(), info["origin"])
        return None, gv


def path_terms(prep, scene, cam, H: int, W: int, secondary_spp: int, interior_spp: int, seed: int, max_depth: int,
               rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the geometry derivative at every vertex of camera paths of
    up to ``max_depth`` bounces. Parameterisation: the first vertex slides along its camera ray
    (the image-space boundary is :func:`edge_term`'s), every later vertex and every light sample
    is a material point of its face (it moves with the face: path-space differentiable
    rendering, Zhang et al. 2020):

    * ``interior_spp`` paths per pixel: the derivative of the geometry factor (and area element)
      of every sampled link and of one next-event connection per vertex. BSDF values are held
      fixed (exact for diffuse surfaces).
    * ``secondary_spp`` paths per pixel: one edge sample per vertex for the visibility boundary
      (Li et al. 2018, secondary edges): the jump ``F_minus - F_plus`` of ``f cos L`` across an
      edge's image, each side weighted by the edge's motion relative to the material point seen
      on that side (so the occluding side cancels and only what is uncovered counts). Edges of
      static faces seen from static points are sampled with a tenth of their weight (they only
      matter when what lies behind them moves).

    Shadows of point and directional lights have no boundary term here."""
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
    info = {"prep": prep, "cam": cam, "edges": edges, "dynamic": dyn, "H": H, "W": W, "passes": passes,
            "max_depth": max_depth, "rr_depth": rr_depth, "faces": scene.faces.long(), "origin": cam[0]}
    return _PathTermsFn.apply(info, scene.vertices)
