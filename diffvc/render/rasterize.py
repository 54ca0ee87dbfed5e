"""Rasterization: per pixel the front triangle, its barycentrics and depth, for a batch of views.

nvdiffrast-style split of work: the coverage / depth-test pass (which triangle is seen at each
pixel centre) is discrete and not differentiated; the barycentrics and depth of the chosen
triangle are then recomputed *differentiably* from the screen-space vertices, so gradients reach
the vertex positions (and, through :meth:`Cameras.project`, the cameras) via
:func:`~diffvc.render.interpolate` and :func:`~diffvc.render.antialias`.

Gradient contract: inside triangles, exact derivatives of the perspective-correct barycentrics
and depth at the fixed pixel centres. The visibility discontinuities themselves (which triangle
covers a pixel) get no gradient here; :func:`~diffvc.render.antialias` turns silhouette edges into
vertex gradients.

Backends: ``"warp"`` (binned Warp kernels: per-tile threads split over CPU cores, per-pixel
threads on CUDA) and ``"torch"`` (the plain-torch twin: enumerate (triangle, pixel) pairs in the
triangles' pixel boxes, keep the nearest per pixel). Both give identical results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._kernels import parallel_launch
from .._kernels.bridge import split_chunks
from .._validate import as_float, as_int, check_choice, check_finite, check_float, check_same_dtype, describe
from .._validate import check_faces as _check_faces
from .._kernels import raster as K
from .cameras import Cameras

BACKENDS = ("warp", "torch")


@dataclass(frozen=True)
class Fragments:
    """Output of :func:`rasterize`.

    face_id: (B, H, W) int32, the visible face per pixel, -1 on background;
    bary: (B, H, W, 3) perspective-correct barycentrics (zeros on background), differentiable
    w.r.t. ``screen``; depth: (B, H, W) view depth (world units; zero on background),
    differentiable; screen: (B, V, 3) the projected vertices ``(u, v, d)`` the fragments came
    from (kept for :func:`antialias`); faces: (F, 3) int32; perspective: projection kind; near:
    the near-plane depth the triangles were clipped at (:func:`antialias` clips edges there too).
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    screen: torch.Tensor
    faces: torch.Tensor
    perspective: bool
    near: float = 1e-3

    def __post_init__(self):
        # fragments built by hand (e.g. from another rasterizer) are checked in full; rasterize's
        # own output is correct by construction and skips this (see _fragments)
        if not isinstance(self.face_id, torch.Tensor) or self.face_id.is_floating_point() or \
                self.face_id.dtype == torch.bool or self.face_id.dim() != 3:
            raise TypeError(f"face_id must be a (B, H, W) integer tensor (-1 on background), got {describe(self.face_id)}")
        bhw = tuple(self.face_id.shape)
        check_float(self.screen, "screen", shape=(bhw[0], "V", 3), coerce=False)
        object.__setattr__(self, "faces", _check_faces(self.faces, self.screen.shape[1], dtype=torch.int32))
        check_float(self.bary, "bary", shape=bhw + (3,), coerce=False)
        check_float(self.depth, "depth", shape=bhw, coerce=False)
        if self.face_id.numel() and (int(self.face_id.min()) < -1 or int(self.face_id.max()) >= self.faces.shape[0]):
            raise ValueError(f"face_id must lie in [-1, {self.faces.shape[0]}) (a face index or -1)")
        object.__setattr__(self, "near", as_float(self.near, "near", positive=True))

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W, 1) float coverage: 1 where a face is visible, 0 on background."""
        return (self.face_id >= 0).unsqueeze(-1).to(self.bary.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.face_id.shape)


def check_faces(faces, num_verts: int, name: str = "faces") -> torch.Tensor:
    """Validate a face index tensor (F, 3) into ``num_verts`` vertices; returns int32
    (:func:`diffvc._validate.check_faces`). The result for a tensor is remembered until the
    tensor changes (its version counter) or is freed: a training loop passing the same faces
    every iteration pays the validation (a min/max over all indices) and the int32 copy once, and
    gets the same int32 tensor back each time."""
    import weakref

    key = None
    if isinstance(faces, torch.Tensor) and not faces.requires_grad:
        try:
            key = (id(faces), faces._version, int(num_verts), name)
        except (RuntimeError, AttributeError, TypeError, ValueError):  # inference tensors: no version
            key = None
    if key is not None:
        hit = _FACES_MEMO.get(key)
        # the same input tensor, unchanged, and the int32 result not modified in place since
        if hit is not None and hit[0]() is faces and hit[1]._version == hit[2]:
            return hit[1]
    out = _check_faces(faces, num_verts, name=name, dtype=torch.int32)
    if key is not None:
        if len(_FACES_MEMO) >= 16:
            _FACES_MEMO.clear()
        _FACES_MEMO[key] = (weakref.ref(faces), out, out._version)
    return out


_FACES_MEMO: dict = {}


def check_size(height, width) -> tuple[int, int]:
    return as_int(height, "height", minimum=1), as_int(width, "width", minimum=1)


def _check_screen(screen: torch.Tensor, name: str = "screen") -> torch.Tensor:
    if not isinstance(screen, torch.Tensor) or not screen.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor")
    if screen.dim() != 3 or screen.shape[2] != 3:
        raise ValueError(f"{name} must have shape (B, V, 3), got {tuple(screen.shape)}")
    if screen.shape[1] == 0:
        raise ValueError(f"{name} has no vertices")
    return check_finite(screen, name)


def rasterize(cameras: Cameras, verts: torch.Tensor, faces: torch.Tensor, height: int | None = None,
              width: int | None = None, backend: str = "warp", tile: int | None = None) -> Fragments:
    """Rasterize a triangle mesh seen by a batch of cameras.

    Args:
        cameras: B cameras (:class:`~diffvc.render.Cameras`); their intrinsics refer to the image
            size ``(cameras.height, cameras.width)``, which ``height``/``width`` must equal if given.
        verts: (V, 3) or (B, V, 3) world positions, finite.
        faces: (F, 3) integer vertex indices in [0, V). Either winding; no back-face culling.
        backend: ``"warp"`` or ``"torch"`` (the twin).
        tile: bin size in pixels for the Warp backend (default 16).

    Returns:
        :class:`Fragments`. Perspective views clip triangles against the near plane
        ``d = cameras.near``: a triangle crossing it (vertices nearer than ``near``, on the camera
        plane or behind the camera) draws exactly the pixels whose ray meets it beyond ``near``,
        with the perspective-correct barycentrics and depth of the ORIGINAL triangle (so
        :func:`interpolate` and the vertex/camera gradients are those of the whole triangle; the
        clip boundary itself, like any visibility edge, gets no gradient here;
        :func:`antialias` blends along it and along the clipped edges). Orthographic views drop
        triangles with a vertex nearer than ``near``.
    """
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be a diffvc.render.Cameras, got {type(cameras).__name__}")
    if not isinstance(verts, torch.Tensor) or not verts.is_floating_point():
        raise TypeError("verts must be a floating torch.Tensor")
    check_same_dtype(("cameras", cameras.R), ("verts", verts))
    if verts.shape[-1:] != (3,) or verts.dim() not in (2, 3):
        raise ValueError(f"verts must have shape (V, 3) or (B, V, 3), got {tuple(verts.shape)}")
    if verts.dim() == 3 and verts.shape[0] not in (1, cameras.batch_size):
        raise ValueError(f"verts batch {verts.shape[0]} does not match the {cameras.batch_size} cameras")
    check_finite(verts, "verts")
    H = cameras.height if height is None else height
    W = cameras.width if width is None else width
    H, W = check_size(H, W)
    if (H, W) != (cameras.height, cameras.width):
        raise ValueError(f"height, width ({H}, {W}) differ from the cameras' image size "
                         f"({cameras.height}, {cameras.width})")
    faces = check_faces(faces, verts.shape[-2])
    check_choice(backend, "backend", BACKENDS)
    if backend == "warp":
        # Cameras.project and the depth guard below as one kernel (forward and adjoint split over
        # threads; gradients to the vertices and the cameras): ~15 torch ops per call otherwise
        if verts.device != cameras.device:
            raise ValueError(f"verts is on {verts.device} but cameras are on {cameras.device}")
        screen = K.project_op(verts if verts.dim() == 3 else verts.unsqueeze(0), cameras.R, cameras.t,
                              cameras.intrinsics, int(not cameras.orthographic))
    else:
        screen = _project_torch(cameras, verts)
    if tile is not None:
        as_int(tile, "tile", minimum=1)
    # faces are checked above; the screen points of finite vertices are finite unless the
    # projection overflowed
    return _rasterize(_check_screen(screen), faces, H, W, bool(not cameras.orthographic), cameras.near, backend, tile)


def _project_torch(cameras: Cameras, verts: torch.Tensor) -> torch.Tensor:
    """Screen points (B, V, 3) of ``verts`` for :func:`rasterize`: :meth:`Cameras.project` with the
    depth of a perspective vertex on the camera plane set to the divisor 1e-12 (the twin of the
    ``project_verts`` kernel)."""
    screen = cameras.project(verts)
    if not cameras.orthographic:
        # a vertex on the camera plane (d = 0) projects with the divisor 1e-12 (Cameras.project):
        # give it that depth, so the homogeneous point (u d, v d, d) stays consistent and finite
        d = screen[..., 2]
        screen = torch.cat([screen[..., :2], torch.where(d.abs() > 1e-12, d, torch.full_like(d, 1e-12))[..., None]], -1)
    return screen


def rasterize_screen(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int, perspective: bool = True,
                     near: float = 1e-3, backend: str = "warp", tile: int | None = None) -> Fragments:
    """Rasterize screen-space vertices ``screen`` (B, V, 3) = ``(u, v, d)`` (see :func:`rasterize`;
    perspective triangles crossing ``d = near`` are clipped; vertices need ``d != 0``)."""
    H, W = check_size(height, width)
    screen = _check_screen(screen)
    faces = check_faces(faces, screen.shape[1])
    check_choice(backend, "backend", BACKENDS)
    as_float(near, "near", positive=bool(perspective))
    if tile is not None:
        as_int(tile, "tile", minimum=1)
    return _rasterize(screen, faces, H, W, perspective, near, backend, tile)


def _rasterize(screen, faces, H, W, perspective, near, backend, tile) -> Fragments:
    """:func:`rasterize_screen` on checked arguments."""
    if faces.device != screen.device:
        raise ValueError(f"faces is on {faces.device} but screen is on {screen.device}")
    B = screen.shape[0]
    facing = None
    if faces.shape[0] == 0:
        face_id = torch.full((B, H, W), -1, dtype=torch.int32, device=screen.device)
    elif backend == "warp":
        facing = torch.empty((B, faces.shape[0]), dtype=torch.int32, device=screen.device)  # every entry written
        face_id = _face_ids_warp(screen.detach(), faces, H, W, perspective, near, tile, facing=facing)
    else:
        face_id = face_ids_torch(screen.detach(), faces, H, W, perspective, near)
    if backend == "warp" and faces.shape[0] > 0:
        bary, depth = K.barycentrics_op(screen, faces, face_id, int(perspective))
    else:
        bary, depth = barycentrics_torch(screen, faces, face_id, perspective)
    return _fragments(face_id, bary, depth, screen, faces, bool(perspective), float(near), facing=facing)


def _fragments(*values, facing=None) -> Fragments:
    """A :class:`Fragments` of the rasterizer's own output, without re-validating it (every field
    was checked or produced by the kernels: a hot path at 512^2 and up). ``facing``: the (B, F)
    face orientations the Warp coverage pass computed (``tri_setup``), kept on this object only
    (``_facing``) for :func:`antialias`; a Fragments built any other way (the constructor,
    ``dataclasses.replace``) has none and antialias computes them from its ``screen``."""
    obj = object.__new__(Fragments)
    for f, v in zip(("face_id", "bary", "depth", "screen", "faces", "perspective", "near"), values):
        object.__setattr__(obj, f, v)
    if facing is not None:
        object.__setattr__(obj, "_facing", facing)
    return obj


def _face_ids_warp(screen, faces, H, W, perspective, near, tile, layout=None, facing=None):
    """Warp coverage pass. ``layout``: ``"tiles"`` (one thread per tile; CPU default) or
    ``"pixels"`` (one thread per pixel; CUDA default). ``facing``: an optional (B, F) int32 tensor
    that receives each face's orientation towards the camera (+1 / -1, ``K.face_facing``'s)."""
    B, F = screen.shape[0], faces.shape[0]
    dev = screen.device
    tile = int(tile or 16)
    tx, ty = (W + tile - 1) // tile, (H + tile - 1) // tile
    nt = B * tx * ty
    screen = screen.contiguous()
    near = float(near)
    # binning, split over CPU threads: each thread range counts into its own row of ``counts`` and
    # fills from its own cursors, which start where its faces go in each tile's list (face order)
    box = torch.empty((B, F, 4), dtype=torch.int32, device=dev)  # every entry written
    blk, n_f, mpt = K.face_launch(B * F, dev)
    if facing is None:
        facing = torch.empty((B, F), dtype=torch.int32, device=dev)
    n_chunks = len(split_chunks(n_f, dev, mpt))
    counts = K.cpu_zeros((n_chunks, nt), faces)
    parallel_launch(K.tri_setup, n_f, [blk, screen, faces, near, int(perspective), H, W, tile, tx, ty],
                    lambda c: [box, facing, counts[c]], min_per_thread=mpt)
    bin_args = [blk, box, tile, tx, ty]
    ends = torch.cumsum(counts.t().reshape(-1), 0, dtype=torch.int32)  # tile-major, then chunk
    starts = torch.zeros(nt + 1, dtype=torch.int32, device=dev)
    starts[1:] = ends.reshape(nt, n_chunks)[:, -1]
    cursor = (ends - counts.t().reshape(-1)).reshape(nt, n_chunks).t().contiguous()
    total = int(starts[-1])
    items = torch.empty(max(total, 1), dtype=torch.int32, device=dev)
    parallel_launch(K.bin_fill, n_f, bin_args, lambda c: [items, cursor[c]], min_per_thread=mpt)
    # both layouts write every pixel (the tile kernel initialises its own tile first)
    zbuf = torch.empty((B, H, W), dtype=screen.dtype, device=dev)
    face_id = torch.empty((B, H, W), dtype=torch.int32, device=dev)
    args = [screen, faces, starts, items, box, H, W, tile, tx, ty, int(perspective), near, _coprime_stride(nt)]
    layout = layout or ("pixels" if dev.type == "cuda" else "tiles")
    if layout == "pixels":
        parallel_launch(K.raster_pixels, B * H * W, args, [zbuf, face_id])
    else:  # threads own disjoint tiles: safe to split over cores
        parallel_launch(K.raster_tiles, nt, args, [zbuf, face_id], min_per_thread=8)
    return face_id


def _coprime_stride(n: int) -> int:
    """A stride near 0.618 n coprime with n: ``i -> i * stride mod n`` visits every tile once and
    spreads any run of consecutive i over the whole range (``raster_tiles``' tile order)."""
    s = max(1, int(n * 0.6180339887))
    while math.gcd(s, n) != 1:
        s += 1
    return s


def _edge(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def clipped_boxes(tri: torch.Tensor, near: float):
    """Screen bounding boxes ``lo, hi`` (B, F, 2) of triangles ``tri`` (B, F, 3, 3) clipped to
    ``d > near`` (twin of the kernels' ``_tri_box``): vertices beyond the plane and the edges'
    crossings, interpolated in homogeneous coordinates ``(u d, v d, d)``."""
    big = torch.full_like(tri[..., 0, :2], 1e30)
    lo, hi = big, -big
    for j in range(3):
        a, b = tri[..., j, :], tri[..., (j + 1) % 3, :]
        da, db = a[..., 2:3], b[..., 2:3]
        ina, inb = da > near, db > near
        lo = torch.where(ina, torch.minimum(lo, a[..., :2]), lo)
        hi = torch.where(ina, torch.maximum(hi, a[..., :2]), hi)
        den = torch.where(ina != inb, db - da, torch.ones_like(da))
        t = (near - da) / den
        c = (a[..., :2] * da + t * (b[..., :2] * db - a[..., :2] * da)) / near
        lo = torch.where(ina != inb, torch.minimum(lo, c), lo)
        hi = torch.where(ina != inb, torch.maximum(hi, c), hi)
    return lo, hi


def pixel_box_pairs(screen: torch.Tensor, faces: torch.Tensor, H: int, W: int, valid: torch.Tensor, pad: float = 0.0,
                    near: float | None = None):
    """All (view, face, pixel) triples with the pixel centre inside the face's screen bounding
    box grown by ``pad`` pixels, for faces with ``valid`` (B, F). Returns ``(b, f, x, y)`` long
    tensors. (The plain-torch way to visit triangles' pixels.) With ``near``, the boxes are those
    of the triangles clipped to ``d > near`` (:func:`clipped_boxes`)."""
    B, F = valid.shape
    tri = screen.detach()[:, faces.long()]  # (B, F, 3, 3)
    if near is None:
        lo = tri[..., :2].amin(2) - pad
        hi = tri[..., :2].amax(2) + pad
    else:
        lo, hi = clipped_boxes(tri, near)
        lim = float(W + H + 2)
        lo, hi = lo.clamp(-lim, lim) - pad, hi.clamp(-lim, lim) + pad
    x0 = torch.ceil(lo[..., 0] - 0.5).clamp(0, W).long()
    x1 = torch.floor(hi[..., 0] - 0.5).clamp(-1, W - 1).long()
    y0 = torch.ceil(lo[..., 1] - 0.5).clamp(0, H).long()
    y1 = torch.floor(hi[..., 1] - 0.5).clamp(-1, H - 1).long()
    nx = (x1 - x0 + 1).clamp_min(0)
    ny = (y1 - y0 + 1).clamp_min(0)
    n = (nx * ny * valid).reshape(-1)
    idx = torch.repeat_interleave(torch.arange(B * F, device=screen.device), n)
    first = torch.cumsum(n, 0) - n
    local = torch.arange(idx.shape[0], device=screen.device) - first[idx]
    nxi = nx.reshape(-1)[idx]
    x = x0.reshape(-1)[idx] + local % nxi.clamp_min(1)
    y = y0.reshape(-1)[idx] + local // nxi.clamp_min(1)
    return idx // F, idx % F, x, y


def _owns_tie(dx, dy):
    return (dy > 0) | ((dy == 0) & (dx < 0))


def face_ids_torch(screen, faces, H, W, perspective, near):
    """Plain-torch twin of the Warp coverage + depth-test pass: (B, H, W) int32 face ids."""
    B, F = screen.shape[0], faces.shape[0]
    fl = faces.long()
    tri = screen[:, fl]  # (B, F, 3, 3)
    area = _edge(tri[..., 0, 0], tri[..., 0, 1], tri[..., 1, 0], tri[..., 1, 1], tri[..., 2, 0], tri[..., 2, 1])
    front = tri[..., 2] > near
    valid = (front.any(-1) if perspective else front.all(-1)) & (area.abs() > 1e-12)
    b, f, x, y = pixel_box_pairs(screen, faces, H, W, valid, near=float(near))
    face_id = torch.full((B * H * W,), -1, dtype=torch.int32, device=screen.device)
    if b.numel() == 0:
        return face_id.reshape(B, H, W)
    t = tri[b, f]  # (P, 3, 3)
    px = x.to(screen.dtype) + 0.5
    py = y.to(screen.dtype) + 0.5
    x0, y0, x1, y1, x2, y2 = t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1]
    a = area[b, f]
    s = torch.where(a < 0, -1.0, 1.0).to(screen.dtype)
    w0 = _edge(x1, y1, x2, y2, px, py) * s
    w1 = _edge(x2, y2, x0, y0, px, py) * s
    w2 = _edge(x0, y0, x1, y1, px, py) * s
    inside = ((w0 > 0) | ((w0 == 0) & _owns_tie((x2 - x1) * s, (y2 - y1) * s))) \
        & ((w1 > 0) | ((w1 == 0) & _owns_tie((x0 - x2) * s, (y0 - y2) * s))) \
        & ((w2 > 0) | ((w2 == 0) & _owns_tie((x1 - x0) * s, (y1 - y0) * s)))
    aa = a * s
    l0, l1, l2 = w0 / aa, w1 / aa, w2 / aa
    if perspective:
        key = -(l0 / t[:, 0, 2] + l1 / t[:, 1, 2] + l2 / t[:, 2, 2])
        # clipped triangles (a vertex at or before the near plane): the pixel ray meets the plane
        # at depth 1 / S; covered when all perspective-correct barycentrics are >= 0 and 1 / S > near
        clip = (t[:, :, 2] <= near).any(-1)
        if bool(clip.any()):
            a0 = a  # signed area: the clipped test uses unsigned-orientation barycentrics
            q0 = _edge(x1, y1, x2, y2, px, py) / a0 / t[:, 0, 2]
            q1 = _edge(x2, y2, x0, y0, px, py) / a0 / t[:, 1, 2]
            q2 = _edge(x0, y0, x1, y1, px, py) / a0 / t[:, 2, 2]
            S = q0 + q1 + q2
            cin = (S > 0) & (S * near < 1) & (q0 >= 0) & (q1 >= 0) & (q2 >= 0)
            inside = torch.where(clip, cin, inside)
            key = torch.where(clip, -S, key)
    else:
        key = l0 * t[:, 0, 2] + l1 * t[:, 1, 2] + l2 * t[:, 2, 2]
    pix = (b * H + y) * W + x
    pix, key, f = pix[inside], key[inside], f[inside]
    best = torch.full((B * H * W,), float("inf"), dtype=screen.dtype, device=screen.device)
    best = best.scatter_reduce(0, pix, key, reduce="amin")
    win = key == best[pix]
    big = torch.full((B * H * W,), F, dtype=torch.long, device=screen.device)
    big = big.scatter_reduce(0, pix[win], f[win], reduce="amin")
    face_id = torch.where(big < F, big, -1).to(torch.int32)
    return face_id.reshape(B, H, W)


def barycentrics_torch(screen, faces, face_id, perspective):
    """Plain-torch twin of the differentiable barycentrics/depth pass."""
    B, H, W = face_id.shape
    dt = screen.dtype
    if faces.shape[0] == 0:
        return screen.new_zeros((B, H, W, 3)), screen.new_zeros((B, H, W))
    valid = face_id >= 0
    fid = face_id.clamp_min(0).long()
    vi = faces.long()[fid]  # (B, H, W, 3)
    bidx = torch.arange(B, device=screen.device)[:, None, None, None]
    t = screen[bidx, vi]  # (B, H, W, 3, 3)
    v, u = torch.meshgrid(torch.arange(H, dtype=dt, device=screen.device) + 0.5,
                          torch.arange(W, dtype=dt, device=screen.device) + 0.5, indexing="ij")
    x0, y0, x1, y1, x2, y2 = t[..., 0, 0], t[..., 0, 1], t[..., 1, 0], t[..., 1, 1], t[..., 2, 0], t[..., 2, 1]
    area = _edge(x0, y0, x1, y1, x2, y2)
    area = torch.where(valid, area, torch.ones_like(area))
    l0 = _edge(x1, y1, x2, y2, u, v) / area
    l1 = _edge(x2, y2, x0, y0, u, v) / area
    l2 = 1 - l0 - l1
    if perspective:
        d = torch.where(valid.unsqueeze(-1), t[..., 2], torch.ones_like(t[..., 2]))
        q = torch.stack([l0 / d[..., 0], l1 / d[..., 1], l2 / d[..., 2]], -1)
        s = q.sum(-1, keepdim=True)
        bary = q / s
        depth = 1 / s[..., 0]
    else:
        bary = torch.stack([l0, l1, l2], -1)
        depth = (bary * t[..., 2]).sum(-1)
    zero = torch.zeros((), dtype=dt, device=screen.device)
    return torch.where(valid.unsqueeze(-1), bary, zero), torch.where(valid, depth, zero)
