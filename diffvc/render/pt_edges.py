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

Layering: :mod:`diffvc.render.pathtrace` imports this module (never the other way round); both
reach the kernels only through the torch-only functions of :mod:`diffvc._kernels.pathtrace`.
"""

from __future__ import annotations

import torch

from .._kernels import pathtrace as K
from .cameras import Cameras
from .raytrace import hit_from_face

_OFFSET = 1e-3  # pixels on each side of the edge


def candidate_edges(scene, camera: Cameras) -> torch.Tensor:
    """(E, 2) vertex indices of the edges that may carry a radiance discontinuity in the image."""
    faces = scene.faces.long()
    F = faces.shape[0]
    if F == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=faces.device)
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    owner = torch.arange(F, device=faces.device).repeat(3)
    e_sorted, _ = e.sort(dim=1)
    uniq, inv, counts = torch.unique(e_sorted, dim=0, return_inverse=True, return_counts=True)
    # first and last owner face of each unique edge
    order = torch.argsort(inv, stable=True)
    start = torch.cumsum(counts, 0) - counts
    f1 = owner[order[start]]
    f2 = owner[order[start + counts - 1]]
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


def secondary_candidate_edges(scene) -> torch.Tensor:
    """(E, 2) edges of ``scene.dynamic_faces`` that can bound what a surface point sees:
    boundaries, creases and material boundaries (silhouettes from any point are creases)."""
    faces = scene.faces.long()
    if faces.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=faces.device)
    F = faces.shape[0]
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    owner = torch.arange(F, device=faces.device).repeat(3)
    uniq, inv, counts = torch.unique(e.sort(dim=1)[0], dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    start = torch.cumsum(counts, 0) - counts
    f1 = owner[order[start]]
    f2 = owner[order[start + counts - 1]]
    v = scene.vertices.detach().to(torch.float64)
    tri = v[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    keep = (counts == 1) | ((n[f1] * n[f2]).sum(-1) < 1 - 1e-6) | (scene.face_material[f1] != scene.face_material[f2])
    if scene.dynamic_faces is not None:
        dyn = scene.dynamic_faces.bool()
        keep &= dyn[f1] | dyn[f2]
    return uniq[keep]


class _SecondaryFn(torch.autograd.Function):
    """Value: zeros (H, W, 3). Backward: the secondary-visibility boundary term at primary hits
    (edge sampling on the sphere of directions) w.r.t. the vertices."""

    @staticmethod
    def forward(ctx, info, vertices):
        ctx.info = info
        ctx.save_for_backward(vertices)
        H, W = info["H"], info["W"]
        return torch.zeros(H, W, 3, dtype=vertices.dtype, device=vertices.device)

    @staticmethod
    def backward(ctx, grad_image):
        (vertices,) = ctx.saved_tensors
        info = ctx.info
        H, W = info["H"], info["W"]
        rec = K.secondary_records(info["prep"], info["cam"], info["edges"], info["dynamic"], info["spp"], info["seed"],
                                  info["max_depth"], info["rr_depth"], grad_image.reshape(H * W, 3))
        edges = info["edges"]
        use = rec["coef"] != 0
        if not use.any():
            return None, torch.zeros_like(vertices)
        ed = edges[rec["edge"][use].long()]
        t = rec["t"][use].to(vertices.dtype)[:, None]
        x = rec["x"][use].to(vertices.dtype)
        nv = rec["n"][use].to(vertices.dtype)
        coef = rec["coef"][use].to(vertices.dtype)
        with torch.enable_grad():
            v = vertices.detach().requires_grad_(True)
            pe = v[ed[:, 0]] * (1 - t) + v[ed[:, 1]] * t
            r = pe - x
            om = r / r.norm(dim=-1, keepdim=True)
            S = (coef * (om * nv).sum(-1)).sum()
            (gv,) = torch.autograd.grad(S, [v])
        return None, gv


def secondary_term(prep, scene, cam, H: int, W: int, spp: int, seed: int, max_depth: int,
                   rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the secondary-visibility boundary gradient at primary hits."""
    edges = secondary_candidate_edges(scene)
    if edges.shape[0] == 0 or spp <= 0:
        return torch.zeros(H, W, 3, dtype=scene.vertices.dtype, device=scene.vertices.device)
    F = scene.faces.shape[0]
    dyn = (scene.dynamic_faces if scene.dynamic_faces is not None else torch.ones(F, dtype=torch.bool))
    dyn = dyn.to(device=scene.vertices.device, dtype=torch.int32).contiguous()
    info = {"prep": prep, "cam": cam, "edges": edges, "dynamic": dyn, "H": H, "W": W, "spp": spp, "seed": seed,
            "max_depth": max_depth, "rr_depth": rr_depth}
    return _SecondaryFn.apply(info, scene.vertices)


class _InteriorFn(torch.autograd.Function):
    """Value: zeros (H, W, 3). Backward: the interior term at camera-ray hits on moving faces
    (the hit point moves along the ray, the next path vertex stays put in area measure)."""

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
        rec = K.interior_records(info["prep"], info["cam"], info["dynamic"], info["spp"], info["seed"],
                                 info["max_depth"], info["rr_depth"], grad_image.reshape(H * W, 3))
        use = (rec["kind"] > 0) & (rec["coef"] != 0)
        if not use.any():
            return None, torch.zeros_like(vertices)
        dt = vertices.dtype
        face = rec["face"][use].long()
        d = rec["d"][use].to(dt)
        o = info["origin"].to(dt).expand_as(d)
        x2 = rec["x2"][use].to(dt)
        n2 = rec["n2"][use].to(dt)
        finite = rec["kind"][use] == 1
        coef = rec["coef"][use].to(dt)
        faces = info["faces"]

        def link_g(v):
            h = hit_from_face(v, faces, face, o, d)
            n = h.normal * torch.where((h.normal * d).sum(-1, keepdim=True) > 0, -1.0, 1.0).to(dt)
            r = x2 - h.point
            r2 = (r * r).sum(-1).clamp_min(1e-12)
            rhat = r / r2.sqrt()[:, None]
            g_fin = (n * rhat).sum(-1).abs() * (n2 * rhat).sum(-1).abs() / r2
            g_inf = (n * x2).sum(-1).abs()
            return torch.where(finite, g_fin, g_inf)

        with torch.no_grad():
            g0 = link_g(vertices.detach())
        ok = g0 > 0
        with torch.enable_grad():
            v = vertices.detach().requires_grad_(True)
            S = (coef[ok] * link_g(v)[ok] / g0[ok]).sum()
            (gv,) = torch.autograd.grad(S, [v])
        return None, gv


def interior_term(prep, scene, cam, camera, H: int, W: int, spp: int, seed: int, max_depth: int,
                  rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the interior term at camera-ray hits on moving faces."""
    F = scene.faces.shape[0]
    dyn = (scene.dynamic_faces if scene.dynamic_faces is not None else torch.ones(F, dtype=torch.bool))
    dyn = dyn.to(device=scene.vertices.device, dtype=torch.int32).contiguous()
    if F == 0 or spp <= 0:
        return torch.zeros(H, W, 3, dtype=scene.vertices.dtype, device=scene.vertices.device)
    info = {"prep": prep, "cam": cam, "dynamic": dyn, "H": H, "W": W, "spp": spp, "seed": seed,
            "max_depth": max_depth, "rr_depth": rr_depth, "faces": scene.faces.long(),
            "origin": camera.centers[0].detach()}
    return _InteriorFn.apply(info, scene.vertices)
