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

Candidate edges: edges of ``scene.dynamic_faces`` (all faces by default; all faces in the warped
mode, where a static edge's sides move when the warp carries their first hits) that are
boundaries, silhouettes seen from the camera, creases (the adjacent normals differ) or material
boundaries. Edges with an endpoint behind the camera are skipped.

:func:`path_terms` adds the geometry derivative at every later path vertex: with both
``secondary_spp`` and ``interior_spp`` in the **warped-area** parameterisation (Bangaru et al.
2020, Xu et al. 2023; :class:`_Warp`: vertices of moving faces move with them, static points
near them are carried along, tangentially, fading out at a distance ``R``), which keeps the
variance bounded where a moving object touches a static one; with one of them alone in the
sliding one (every vertex slides along the direction it was sampled in, Li et al. 2018). Light
samples are material points of the emitters (area measure, Zhang et al. 2020); the visibility
boundary of direct light is sampled from the lights' side: shadow lines of point, directional
and area-light points (:func:`shadow_pool`).

Layering: :mod:`diffvc.render.pathtrace` imports this module (never the other way round); both
reach the kernels only through the torch-only functions of :mod:`diffvc._kernels.pathtrace`.
"""

from __future__ import annotations

import torch

from .._kernels import pathtrace as K
from ..geometry.distance import _closest_barycentric
from ..geometry.topology import edge_owners
from .cameras import Cameras
from .raytrace import hit_from_face

_OFFSET = 1e-3  # pixels on each side of the edge


def candidate_edges(scene, camera: Cameras, dynamic_only: bool = True) -> torch.Tensor:
    """(E, 2) vertex indices of the edges that may carry a radiance discontinuity in the image
    (only edges of ``scene.dynamic_faces`` when ``dynamic_only``)."""
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
    if dynamic_only and scene.dynamic_faces is not None:
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
            if "warp" in s and ctx.needs_input_grad[2]:
                # each side's region moves with the image motion of its warped first hit
                adj = grad_image.reshape(-1, 3)[s["pixel"]].to(torch.float64)
                for side, sign in (("m", 1.0), ("p", -1.0)):
                    f, y = s["f" + side], s["y" + side]
                    hit = torch.nonzero(f >= 0).reshape(-1)
                    if hit.numel():
                        u = _project(s["cam"], s["warp"].points(xs[0], f[hit], y[hit])[0])
                        c = (adj[hit] * s["L" + side][hit]).sum(-1) * s["weight"]
                        S = S - sign * (c.to(u.dtype) * (u * s["n"][hit].to(u.dtype)).sum(-1)).sum()
            need = [ctx.needs_input_grad[2 + k] for k in range(4)]
            wrt = [x_ for x_, nd in zip(xs, need) if nd]
            grads = list(torch.autograd.grad(S, wrt, allow_unused=True)) if wrt else []
        out = []
        for nd in need:
            out.append(grads.pop(0) if nd else None)
        return (None, None, *out)


def sample_edges(prep, scene, camera: Cameras, cam, n_samples: int, edge_spp: int, seed: int, max_depth: int,
                 rr_depth: int, warped: bool = False):
    """Draw the edge samples and their radiance jumps (no gradients). Returns a dict or None.
    ``prep``: the scene's :class:`~diffvc._kernels.pathtrace.PreparedScene``; ``cam``: the camera
    as :func:`diffvc.render.pathtrace.camera_rays` gives it. ``warped``: also the first hit on
    each side (``fm``/``ym``, ``fp``/``yp``), each side's radiance (``Lm``, ``Lp``) and the
    :class:`_Warp` (the sides' regions move with their warped points, see :func:`path_terms`)."""
    H, W = camera.height, camera.width
    # warped: a static edge's sides move where the warp carries their first hits
    edges = candidate_edges(scene, camera, dynamic_only=not warped)
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
        out = {"ia": edges[pick, 0], "ib": edges[pick, 1], "t": tt, "n": n, "dL": dL, "pixel": pixel,
               "weight": total / n_samples}
        if warped:
            o, d00, dx, dy = (c.to(torch.float64) for c in cam[:4])
            dirs = _unit(d00 + pts[:, :1].to(torch.float64) * dx + pts[:, 1:2].to(torch.float64) * dy)
            f, tq = _closest(prep, o.expand_as(dirs), dirs, torch.full_like(dirs[:, 0], 1e30))
            y = o + dirs * tq[:, None]
            out.update({"fp": f[:m], "yp": y[:m], "fm": f[m:], "ym": y[m:], "Lp": L[:m], "Lm": L[m:],
                        "warp": _Warp(scene), "cam": cam})
        return out


def edge_term(prep, scene, camera: Cameras, cam, n_samples: int, edge_spp: int, seed: int, max_depth: int,
              rr_depth: int, warped: bool = False) -> torch.Tensor:
    """Zero image whose backward adds the primary-visibility boundary gradient (see module doc).
    ``warped``: the vertex gradient counts each side relative to its warped first hit (with
    :func:`path_terms` in its warped mode; camera gradients are unchanged)."""
    samples = sample_edges(prep, scene, camera, cam, n_samples, edge_spp, seed, max_depth, rr_depth, warped)
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


# ---------------------------------------------------------------------------------------------
# Warped-area parameterisation of path vertices (Bangaru et al. 2020; Xu et al. 2023)
# ---------------------------------------------------------------------------------------------


class _Warp:
    """The velocity field that static surface points get when the vertices of the moving faces
    move: ``V(y) = rho(d(y)) P_y (sum_i b_i(y) dv_i)``, with ``d``, ``b`` the distance to and the
    barycentric weights of the closest point of the moving faces, ``dv_i`` the velocities of that
    face's vertices, ``P_y`` the projection onto the tangent plane of the static face (points stay
    on their surface) and ``rho(s) = (1 - (s / R)^2)^3`` for ``s < R`` (0 beyond; smooth, 1 with
    zero slope on the moving faces). ``R``: 0.9 x the distance from the moving faces to the
    nearest crease or boundary of static faces (static points near a static crease do not move,
    so the two sides of the crease agree), at most half the moving faces' bounding-box diagonal.
    Points of moving faces are material points (they move with their face)."""

    def __init__(self, scene):
        faces = scene.faces.long()
        self.faces = faces
        F = faces.shape[0]
        dyn = scene.dynamic_faces if scene.dynamic_faces is not None else torch.ones(F, dtype=torch.bool)
        dyn = dyn.to(faces.device).bool()
        self.dynamic = dyn
        self.dyn_idx = torch.nonzero(dyn).reshape(-1)
        v = scene.vertices.detach().to(torch.float64)
        self.v0 = v
        tri = v[faces]
        cr = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        self.normal = _unit(cr)
        self.R = 0.0
        if self.dyn_idx.numel() == 0 or bool(dyn.all()):
            return
        dtri = tri[self.dyn_idx]
        self.lo, self.hi = dtri.reshape(-1, 3).amin(0), dtri.reshape(-1, 3).amax(0)
        diag = float((self.hi - self.lo).norm())
        uniq, f1, f2, counts = edge_owners(faces)
        static = ~dyn[f1] & ~dyn[f2]
        crease = (counts == 1) | ((self.normal[f1] * self.normal[f2]).sum(-1) < 1 - 1e-6)
        e = uniq[static & crease]
        dmin = 0.5 * diag / 0.9
        if e.shape[0]:
            t = torch.linspace(0, 1, 65, dtype=torch.float64, device=v.device)[None, :, None]
            pts = (v[e[:, 0]][:, None] * (1 - t) + v[e[:, 1]][:, None] * t).reshape(-1, 3)
            for c0 in range(0, pts.shape[0], 4096):
                _, d, _ = self.closest(pts[c0:c0 + 4096])
                dmin = min(dmin, float(d.min()))
        self.R = 0.9 * dmin

    def near(self, y: torch.Tensor) -> torch.Tensor:
        """(n,) bool: points within ``R`` of the moving faces' bounding box (a cheap prefilter)."""
        if self.R <= 0:
            return torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        return ((y > self.lo - self.R) & (y < self.hi + self.R)).all(-1)

    def closest(self, y: torch.Tensor):
        """(moving face index into ``faces``, distance, barycentric weights) of the closest point
        of the moving faces to each ``y`` (n, 3) float64 (no gradients)."""
        tri = self.v0[self.faces[self.dyn_idx]]  # (m, 3, 3)
        best_d = torch.full((y.shape[0],), float("inf"), dtype=torch.float64, device=y.device)
        best_f = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        best_b = torch.zeros(y.shape[0], 3, dtype=torch.float64, device=y.device)
        for j0 in range(0, tri.shape[0], 64):
            tj = tri[j0:j0 + 64]
            b = _closest_barycentric(y[:, None], tj[None, :, 0], tj[None, :, 1], tj[None, :, 2])  # (n, m, 3)
            q = (b[..., None] * tj[None]).sum(2)
            d = (q - y[:, None]).norm(dim=-1)
            dm, arg = d.min(1)
            better = dm < best_d
            best_d = torch.where(better, dm, best_d)
            best_f = torch.where(better, self.dyn_idx[j0 + arg], best_f)
            best_b = torch.where(better[:, None], b[torch.arange(y.shape[0], device=y.device), arg], best_b)
        return best_f, best_d, best_b

    def velocity(self, v: torch.Tensor, y: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``V(y)`` (n, 3): zero-valued, its derivative w.r.t. ``v`` is the field above (``y``
        float64 points of static faces with unit normals ``n``)."""
        out = torch.zeros_like(y, dtype=v.dtype)
        if self.R <= 0 or y.shape[0] == 0:
            return out
        f, d, b = self.closest(y.detach())
        near = d < self.R
        if not bool(near.any()):
            return out
        s = (d[near] / self.R) ** 2
        rho = (1 - s) ** 3
        dv = v - v.detach()
        vel = (b[near].to(v.dtype)[:, :, None] * dv[self.faces[f[near]]]).sum(1)
        nn = n[near].to(v.dtype)
        vel = vel - nn * (nn * vel).sum(-1, keepdim=True)
        return out.index_put((torch.nonzero(near).reshape(-1),), rho.to(v.dtype)[:, None] * vel)

    def points(self, v: torch.Tensor, face: torch.Tensor, y: torch.Tensor):
        """Warped points of ``face`` (n,) at ``y`` (n, 3) (value ``y``): ``(points, unit normals,
        area ratio J)`` differentiable w.r.t. ``v``; J's derivative is the surface divergence of
        the warp (material points of moving faces: the face's area change)."""
        dt = v.dtype
        y = y.to(torch.float64)
        face = face.long()
        dyn = self.dynamic[face]
        X = y.to(dt).clone()
        N = self.normal[face].to(dt)
        J = torch.ones(y.shape[0], dtype=dt, device=y.device)
        if bool(dyn.any()):
            i = torch.nonzero(dyn).reshape(-1)
            p, nrm, ar = _material(v, self.faces, face[i], y[i].to(dt))
            X = X.index_put((i,), p)
            N = N.index_put((i,), nrm)
            J = J.index_put((i,), ar)
        st = ~dyn
        if self.R > 0 and bool(st.any()):
            i = torch.nonzero(st & self.near(y)).reshape(-1)
            ys, ns = y[i], self.normal[face[i]]
            _, d, _ = self.closest(ys)
            moving = torch.nonzero(d < self.R).reshape(-1)
            if moving.numel():
                ym, nm = ys[moving], ns[moving]
                Vs = self.velocity(v, ym, nm)
                # surface divergence by central differences along two tangents (the field is linear in v)
                t1 = _unit(torch.linalg.cross(nm, torch.where(nm[:, :1].abs() < 0.9, torch.tensor([1.0, 0, 0],
                           dtype=torch.float64), torch.tensor([0, 1.0, 0], dtype=torch.float64)).expand_as(nm), dim=-1))
                t2 = torch.linalg.cross(nm, t1, dim=-1)
                h = 1e-5 * max(self.R, 1e-12) / 0.1
                div = torch.zeros(moving.numel(), dtype=dt, device=y.device)
                for t in (t1, t2):
                    vp = self.velocity(v, ym + h * t, nm)
                    vm = self.velocity(v, ym - h * t, nm)
                    div = div + ((vp - vm) * t.to(dt)).sum(-1) / (2 * h)
                X = X.index_put((i[moving],), X[i[moving]] + Vs)
                J = J.index_put((i[moving],), J[i[moving]] + div)
        return X, N, J


def _project(cam, x: torch.Tensor) -> torch.Tensor:
    """Continuous pixel coordinates (n, 2) of points ``x`` (n, 3) for the camera tuple ``cam``
    (differentiable w.r.t. ``x``; the camera is held fixed)."""
    o, d00, dx, dy = (c.to(x.dtype) for c in cam[:4])
    Minv = torch.linalg.inv(torch.stack([dx, dy, d00], 1))
    abc = (x - o) @ Minv.T
    return abc[:, :2] / abc[:, 2:3]


def _camera_density(cam, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Image area per unit surface area at points ``x`` with unit normals ``n`` (up to a constant):
    ``|n . (x - o)| / z^3`` with ``z`` the depth coordinate of the camera's ray map."""
    o, d00, dx, dy = (c.to(x.dtype) for c in cam[:4])
    Minv = torch.linalg.inv(torch.stack([dx, dy, d00], 1))
    z = ((x - o) @ Minv.T)[:, 2]
    return ((n * (x - o)).sum(-1)).abs() / z.abs().clamp_min(1e-30) ** 3


def _records_grad(rec: dict, vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor, cam,
                  warp: _Warp, shadow: dict | None = None) -> torch.Tensor:
    """Gradient w.r.t. ``vertices`` of the terms recorded by
    :func:`diffvc._kernels.pathtrace.path_derivative` (see :func:`path_terms`), every path vertex
    a warped point (:class:`_Warp`). ``shadow``: the :func:`shadow_pool` (key ``pool``) and what
    connecting path vertices to it needs (``prep``, ``gen``, ``max_depth``, ``face_albedo`` (F,
    3): albedo / pi of diffuse faces, 0 otherwise)."""
    use_i = (rec["lkind"] > 0) & (rec["cn"] != 0)
    use_e = (rec["edge"] >= 0) & ((rec["cm"] != 0) | (rec["cp"] != 0))
    has_pool = shadow is not None  # (the camera's shadow-line term is added by the caller)
    if shadow is not None:
        # later vertices connect to the lines of point and directional lights only (area lights'
        # soft shadows seen from them are the edge term's)
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
    o = cam[0].to(dt)
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
        n_r = r.numel()
        with torch.enable_grad():
            v = vertices.detach().requires_grad_(True)
            # every vertex is a warped point: material points of moving faces, static points
            # carried by the warp field near the moving faces (fixed elsewhere)
            vi = torch.nonzero(valid.reshape(-1)).reshape(-1)
            Xw, Nw, Jw = warp.points(v, fidx.reshape(-1)[vi], pos0.reshape(-1, 3)[vi])
            X = pos0.reshape(-1, 3).index_put((vi,), Xw).reshape(n_r, D, 3)
            Nrm = warp.normal[fidx.reshape(-1)].to(dt).index_put((vi,), Nw).reshape(n_r, D, 3)
            J = torch.ones(n_r * D, dtype=dt).index_put((vi,), Jw).reshape(n_r, D)
            S = torch.zeros((), dtype=dt)
            rem = cn.flip(1).cumsum(1).flip(1)  # rem[:, k]: next-event contributions at vertices >= k
            # the camera link (image area per surface area at x_0, and x_0's area element)
            ok0 = valid[:, 0] & (rem[:, 0] != 0)
            if bool(ok0.any()):
                gc = _camera_density(cam, X[ok0, 0], Nrm[ok0, 0]) * J[ok0, 0]
                S = S + (rem[ok0, 0] * gc / gc.detach().clamp_min(1e-300)).sum()
            if D > 1:
                # the geometry factor of each sampled link x_j -> x_{j+1} and x_{j+1}'s area element
                rv = X[:, 1:] - X[:, :-1]
                r2 = (rv * rv).sum(-1).clamp_min(1e-20)
                rh = rv / r2.sqrt()[..., None]
                G = (Nrm[:, :-1] * rh).sum(-1).abs() * (Nrm[:, 1:] * rh).sum(-1).abs() / r2 * J[:, 1:]
                G0 = G.detach()
                ok = valid[:, 1:] & valid[:, :-1] & (G0 > 0) & (rem[:, 1:] != 0)
                S = S + (rem[:, 1:][ok] * G[ok] / G0[ok]).sum()
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
                    # each side's region of directions moves with its warped points: the edge's
                    # angular motion relative to the first hit beside it. The emission of that
                    # hit is direct light: at camera hits its visibility boundary is the shadow
                    # lines' term (shadow_pool, sampled from the lights) instead
                    c = R["c" + side][pe_, ke].to(dt)
                    ce = R["e" + side][pe_, ke].to(dt)
                    fs = R["f" + side][pe_, ke].long()
                    ys = R["y" + side][pe_, ke].to(dt)
                    hit = fs >= 0
                    oms = ys.clone()
                    if bool(hit.any()):
                        hi = torch.nonzero(hit).reshape(-1)
                        yw, _, _ = warp.points(v, fs[hi], ys[hi])
                        oms = oms.index_put((hi,), _unit(yw - xk[hi]))
                    oms = torch.where(hit[:, None], oms, ys)
                    cc = torch.where(at_camera_hit, c - ce, c)
                    S = S + sign * (cc * (nv * (om - oms)).sum(-1)).sum()
            ps, ks = torch.nonzero(us, as_tuple=True)
            if ps.numel():  # shadow lines (point and directional lights) seen from x_k
                prev = torch.where((ks == 0)[:, None], o.expand(ps.numel(), 3), pos0[ps, (ks - 1).clamp_min(0)])
                win = _unit(prev - pos0[ps, ks])
                n0 = Nrm[ps, ks].detach()
                n0 = n0 * torch.where((n0 * win).sum(-1) < 0, -1.0, 1.0).to(dt)[:, None]
                coef = R["beta"][ps, ks].to(dt) * shadow["face_albedo"][face[ps, ks]].to(dt)
                S = S + _shadow_vertex_grad(shadow["pool"], v, faces, shadow["prep"], X[ps, ks], pos0[ps, ks], n0,
                                            coef, shadow["gen"], warp)
            if S.requires_grad:
                (g,) = torch.autograd.grad(S, [v])
                gv = gv + g
    return gv


def _records_grad_sliding(rec: dict, vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor,
                  origin: torch.Tensor, shadow: dict | None = None) -> torch.Tensor:
    """(Sliding parameterisation, used without interior terms.) Gradient w.r.t. ``vertices`` of the terms recorded by
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
                                            coef, shadow["gen"], None)
            if S.requires_grad:
                (g,) = torch.autograd.grad(S, [v])
                gv = gv + g
    return gv


def _pixel_border_grad(warp: _Warp, v: torch.Tensor, prep, cam, H: int, W: int, adj: torch.Tensor, per_side: int,
                       spp: int, seed: int, max_depth: int, rr_depth: int) -> torch.Tensor:
    """The pixel borders' term of warped camera hits (differentiable scalar in ``v``): the pixel
    ``p`` integrates ``L`` over its square, whose points move with the image velocity ``u'`` of
    their warped first hits: in those coordinates the pixel's border moves with ``-u'``, so ``dI_p``
    gains ``-integral over the border of p of L (u' . n_out)``.
    ``per_side`` stratified points per pixel side, ``spp`` paths each; adjoint ``adj`` (H * W, 3),
    zero outside the image."""
    if warp.R <= 0 and not bool(warp.dynamic.any()):
        return torch.zeros((), dtype=v.dtype)
    dev = v.device
    gen = torch.Generator().manual_seed(seed)
    pts, normal, left, right = [], [], [], []
    adj4 = adj.reshape(H, W, 3)
    for vertical in (True, False):
        A, B = (W, H) if vertical else (H, W)  # lines at integer A coordinates 0..A, segments along B
        j = torch.arange(A + 1).repeat_interleave(B * per_side)
        seg = torch.arange(B).repeat_interleave(per_side).repeat(A + 1)
        s = seg + (torch.arange(per_side).repeat(B * (A + 1)) + torch.rand(seg.shape[0], generator=gen,
                                                                          dtype=torch.float64)) / per_side
        q = torch.stack([j.double(), s], -1) if vertical else torch.stack([s, j.double()], -1)
        before = (j - 1).clamp(0, A - 1)
        after = j.clamp(0, A - 1)
        ab = adj4[seg, before] if vertical else adj4[before, seg]
        aa = adj4[seg, after] if vertical else adj4[after, seg]
        ab = torch.where((j >= 1)[:, None], ab, torch.zeros_like(ab))
        aa = torch.where((j <= A - 1)[:, None], aa, torch.zeros_like(aa))
        pts.append(q)
        normal.append(torch.full((q.shape[0],), 0 if vertical else 1))
        left.append(ab)
        right.append(aa)
    q, comp, a_before, a_after = torch.cat(pts).to(dev), torch.cat(normal).to(dev), torch.cat(left), torch.cat(right)
    keep = (a_before - a_after).abs().amax(-1) > 0
    q, comp, dadj = q[keep], comp[keep], (a_before - a_after)[keep]
    if q.shape[0] == 0:
        return torch.zeros((), dtype=v.dtype)
    o, d00, dx, dy = (c.to(torch.float64) for c in cam[:4])
    dirs = _unit(d00 + q[:, :1] * dx + q[:, 1:2] * dy)
    f, t = _closest(prep, o.expand_as(dirs), dirs, torch.full_like(q[:, 0], 1e30))
    hit = f >= 0
    x = o + dirs * t[:, None]
    moves = hit & warp.dynamic[f.clamp_min(0)]
    if warp.R > 0 and bool((hit & ~moves & warp.near(x)).any()):
        i = torch.nonzero(hit & ~moves & warp.near(x)).reshape(-1)
        _, d, _ = warp.closest(x[i])
        moves = moves.index_put((i[d < warp.R],), torch.ones((), dtype=torch.bool))
    if not bool(moves.any()):
        return torch.zeros((), dtype=v.dtype)
    i = torch.nonzero(moves).reshape(-1)
    L = K.radiance_at_points(prep, cam, q[i], spp, seed, max_depth, rr_depth, i.numel()).to(torch.float64)
    coef = (dadj[i].to(torch.float64) * L).sum(-1) / per_side
    xw, _, _ = warp.points(v, f[i], x[i])
    u = _project(cam, xw)
    # the pixel is fixed in the image: in the warped coordinates its border moves with -u'
    return -(coef.to(v.dtype) * u.gather(1, comp[i][:, None]).reshape(-1)).sum()


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
                        adj: torch.Tensor, warp: _Warp | None) -> torch.Tensor:
    """The shadow lines' boundary term seen directly by the camera (image space), summed with the
    adjoint image ``adj`` (H * W, 3); differentiable w.r.t. ``v`` (a scalar to backpropagate).
    The line's image motion counts relative to the image motion of the warped receiver point."""
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
    if warp is not None:
        u = u - proj(warp.points(v, P["face"], P["x"])[0])
    return -(coef * (m_img * u).sum(-1)).sum()


def _shadow_vertex_grad(pool: dict, v: torch.Tensor, faces: torch.Tensor, prep, X: torch.Tensor,
                        X0: torch.Tensor, Nrm0: torch.Tensor, coef_rgb: torch.Tensor,
                        gen: torch.Generator, warp: _Warp | None) -> torch.Tensor:
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
    if warp is not None:  # relative to the warped receiver point
        oms = oms - _unit(warp.points(v, P["face"], P["x"])[0] - X[use])
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
            if info["warp"] is None:
                gv = gv + _records_grad_sliding(rec, vertices, info["faces"], info["edges"][:, :2].long(),
                                                info["cam"][0], shadow)
            else:
                gv = gv + _records_grad(rec, vertices, info["faces"], info["edges"][:, :2].long(), info["cam"],
                                        info["warp"], shadow)
        with torch.enable_grad():
            v = vertices.detach().requires_grad_(True)
            S = torch.zeros((), dtype=v.dtype)
            if pool is not None:
                S = S + _shadow_camera_grad(pool, v, info["faces"], info["prep"], info["cam"], H, W, adj, info["warp"])
            if info["border"] is not None:
                per_side, spp, seed = info["border"]
                S = S + _pixel_border_grad(info["warp"], v, info["prep"], info["cam"], H, W, adj, per_side, spp, seed,
                                           info["max_depth"], info["rr_depth"])
            if S.requires_grad:
                gv = gv + torch.autograd.grad(S, [v])[0]
        return None, gv


def path_terms(prep, scene, cam, H: int, W: int, secondary_spp: int, interior_spp: int, seed: int, max_depth: int,
               rr_depth: int) -> torch.Tensor:
    """Zero image whose backward adds the geometry derivative at every vertex of camera paths of
    up to ``max_depth`` bounces.

    Parameterisation with both ``secondary_spp`` and ``interior_spp`` (the complete set of terms):
    **warped area** (Bangaru, Li and Durand 2020; Xu et al. 2023). Every path vertex is a point of
    its surface that moves with a velocity field defined on the surfaces (:class:`_Warp`): points
    of moving faces move with their face (material points), points of static faces near the moving
    faces are carried along them (tangentially, fading to zero at distance ``R``), all others stay.
    A vertex then moves like its neighbours on other surfaces: where the moving box touches the
    floor both move together, so neither the geometry factor of a link across the contact nor the
    motion of later vertices blows up (sliding vertices along their sampled directions, Li et al.
    2018, multiplies the motion by 1 / cos at every bounce; fixing static vertices, Zhang et al.
    2020, gives the geometry factor a 1 / distance derivative at the contact: both have infinite
    variance there). The terms:

    * ``interior_spp`` paths per pixel, one next-event sample per vertex (no MIS): the derivative
      of every factor of the path in area measure: the camera's image area per surface area at
      ``x_0`` with ``x_0``'s area element (the warp's divergence), the geometry factor of every
      sampled link with the next vertex's area element, the next-event geometry factor and the
      emitter's area element. BSDF values are held fixed (exact for diffuse surfaces).
    * pixel borders (with the interior paths): a pixel integrates over a fixed square of the
      image while the warped hits move, ``-integral over its border of L (u' . n)``
      (:func:`_pixel_border_grad`); and the primary edges' sides count relative to the image
      motion of their warped first hits (:func:`edge_term` with ``warped``).
    * ``secondary_spp`` paths per pixel: one edge sample per vertex (Li et al. 2018, secondary
      edges): the jump of ``f cos L`` across the edge's image times the edge's angular motion
      relative to that of the warped first hit on each side. At camera hits the direct emission's
      boundary is left to the shadow lines (next item), relative to the warped receiver point.
      Edges of static faces are sampled with a tenth of their weight until the path has touched a
      moving face.
    * with ``secondary_spp``: the visibility boundary of direct light, sampled from the lights
      (:func:`shadow_pool`, ``max(4096, H W secondary_spp)`` shadow-line points per point or
      directional light and for the area lights): seen by the camera; the point and
      directional lights' lines also from one vertex of each path (one pool point chosen
      uniformly).

    In the warped form only the vertices of ``scene.dynamic_faces`` move the path vertices (points
    of static faces are fixed or carried by the warp): gradients w.r.t. vertices of other faces
    are not complete there; mark every face whose vertices you differentiate as dynamic (all
    faces by default, where every point is a material point and ``R = 0``).

    With only one of ``secondary_spp`` / ``interior_spp`` the terms are those of the **sliding**
    parameterisation (:func:`_records_grad_sliding`: ``x_0`` slides along its camera ray, every
    later vertex along the direction sampled at the one before; the interior term differentiates
    the link cosines and next-event connections, the edge term the edge's angular motion with the
    emission beside it relative to the emitter's material point), whose partial sums are what a
    caller asking for one kind of term expects (e.g. secondary edges alone for a shadow)."""
    zero = torch.zeros(H, W, 3, dtype=scene.vertices.dtype, device=scene.vertices.device)
    F = scene.faces.shape[0]
    if F == 0 or max_depth < 1 or (secondary_spp <= 0 and interior_spp <= 0):
        return zero
    warped = secondary_spp > 0 and interior_spp > 0
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
            "max_depth": max_depth, "rr_depth": rr_depth, "faces": scene.faces.long(),
            "warp": _Warp(scene) if warped else None,
            "shadow_pool": pool, "face_albedo": face_albedo,
            "border": (max(4, interior_spp // 8), 16, seed + 31) if warped else None}
    return _PathTermsFn.apply(info, scene.vertices)
