"""Analytic antialiasing at silhouette edges: visibility gradients w.r.t. vertex positions.

After :func:`~diffvc.render.rasterize` + :func:`~diffvc.render.interpolate` (+ shading) an image
is piecewise smooth in the vertex positions but jumps where a pixel centre changes triangle; its
gradient misses how moving a silhouette moves coverage. Following nvdiffrast (Laine et al. 2020,
"Modular primitives", Sec. 3.4), this pass makes the image a *continuous* function of the edge
positions:

1. For every pair of horizontally or vertically adjacent pixels p, q with different face ids,
   look for a **silhouette edge** crossing the segment between the two pixel centres. A
   silhouette edge is a mesh boundary edge, an edge whose two faces face opposite ways in this
   view (also non-manifold edges), or, for a perspective triangle crossing the near plane, its
   clip line; edges crossing the near plane are used up to it (their visible part, clipped in
   homogeneous coordinates). The edge's face must lie on the side of the edge where the covered
   pixel c is, and the edge must be nearer than the other pixel's face at the crossing; of
   several, the one farthest from c (the outermost) is used. The search first looks at the
   face seen at p (then at q) and the faces sharing a vertex with it (near silhouette vertices
   the crossing edge often belongs to a neighbour); if that finds nothing (on dense meshes the
   silhouette faces can project narrower than a pixel, so the outline lies beyond that fan),
   every silhouette edge of the view binned to the pixel's 16 px tile is tried, restricted to
   edges of the same connected component as the face seen at c (so an edge is never credited
   to a pixel showing another object).
2. Let c be the pixel covered by that face, o the other one, and s in [0, 1] the distance from
   c's centre to the crossing (in pixels along the pair). Model each pixel as a unit box and the
   edge as straight over it: if s > 1/2 the face also covers a strip ``s - 1/2`` of pixel o, so
   ``o += w (s - 1/2)(C_c - C_o)``; if s < 1/2 it misses a strip ``1/2 - s`` of pixel c, so
   ``c += w (1/2 - s)(C_o - C_c)``. Every edge is treated both along rows (horizontal pairs)
   and along columns (vertical pairs); the weights ``w = dy^2 / l^2`` (rows) and
   ``w = dx^2 / l^2`` (columns) of an edge (dx, dy) of length l sum to one, so the two
   estimates are mixed without double counting and without a switch at 45 degrees
   (nvdiffrast picks one direction per edge instead).

**Why this gives the right visibility gradient.** Along a pixel row the blended coverage of
the two pixels adds up to exactly the length of the row's centre line that the face covers, so
summed over rows the row estimate is the midpoint-rule integral of the true coverage (exact for
straight edges away from triangle corners); the same holds for columns, hence for any mix with
weights summing to one. Moving the crossing by ds moves coverage ds from o's colour to c's
colour, which is the derivative of the box-filtered image w.r.t. the edge position times the
colour jump across the edge; ``s`` and ``w`` depend differentiably on the edge's two screen
vertices, hence on the 3D vertices and the camera. The blended image is continuous when the
edge passes a pixel centre (both sides give the same blend), so finite differences of a loss on
it match its gradient except at rare jumps (a silhouette vertex crossing a pixel-centre row or
column; silhouette cusps). Gradients also flow to the colours ``C`` (attributes, textures,
lights).

Image border: with ``background`` given, the image is padded with a ring of virtual pixels of
that colour, so an edge crossing the outer half of a border pixel covered by its face is
blended too. Not blended there: an edge whose face covers only the outer strip of a border
pixel (the colour of the face beyond the border is unknown).

Limitations: a pixel pair gets at most one edge (triangles thinner than about a pixel,
with both edges between the same two centres, are blended approximately); sub-pixel features
that cover no pixel centre get no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import launch, parallel_launch
from .._kernels import raster as K
from .._validate import as_int, check_choice, check_finite, check_float, check_same_dtype, describe
from .._validate import check_faces as _check_faces
from .rasterize import BACKENDS, Fragments


def face_neighbors(faces: torch.Tensor) -> torch.Tensor:
    """Per face and edge k (from vertex k to vertex k+1) the face across that edge, (F, 3) int32;
    -1 for boundary edges and for edges shared by more than two faces
    (:func:`diffvc.geometry.face_neighbors`, the one edge-face adjacency)."""
    from ..geometry.topology import face_neighbors as _neighbors

    return _neighbors(faces).to(torch.int32)


@dataclass(frozen=True)
class MeshTopology:
    """Connectivity the antialiasing pass needs, computed once per face list.

    neighbors: (F, 3) int32 face across each edge (:func:`face_neighbors`); vert_face_start:
    (V + 1,) int32 and vert_faces: (3F,) int32, the faces around each vertex in CSR form;
    fans: (V, max_valence) int64 the same padded with -1 (for the torch twin); component: (F,)
    int32 connected-component label of each face (faces sharing a vertex are connected); faces:
    (F, 3) int32, the faces it was built from (:func:`antialias` checks that they are the
    rendered ones).
    """

    neighbors: torch.Tensor
    vert_face_start: torch.Tensor
    vert_faces: torch.Tensor
    fans: torch.Tensor
    component: torch.Tensor
    faces: torch.Tensor

    def __post_init__(self):
        # built once per face list by mesh_topology; checked here so a hand-built or mismatched
        # topology is refused before a kernel reads it
        for name in ("neighbors", "vert_face_start", "vert_faces", "fans", "component"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got {describe(t)}")
        V = self.vert_face_start.shape[0] - 1 if self.vert_face_start.dim() == 1 else -1
        if V < 0:
            raise ValueError(f"vert_face_start must have shape (V + 1,), got {tuple(self.vert_face_start.shape)}")
        object.__setattr__(self, "faces", _check_faces(self.faces, V, dtype=torch.int32))
        F = self.faces.shape[0]
        for name, shape in (("neighbors", (F, 3)), ("vert_faces", (3 * F,)), ("component", (F,))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.fans.dim() != 2 or self.fans.shape[0] != V:
            raise ValueError(f"fans must have shape ({V}, max_valence), got {tuple(self.fans.shape)}")
        for name, lo, hi in (("neighbors", -1, F), ("vert_faces", 0, F), ("fans", -1, F), ("vert_face_start", 0, 3 * F + 1)):
            t = getattr(self, name)
            if t.numel() and (int(t.min()) < lo or int(t.max()) >= hi):
                raise ValueError(f"{name} entries must lie in [{lo}, {hi})")


def _components(fl: torch.Tensor, V: int) -> torch.Tensor:
    """(F,) label per face, equal for faces connected through shared vertices (min-label
    propagation with pointer jumping)."""
    if fl.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int32, device=fl.device)
    lab = torch.arange(V, device=fl.device)
    flat = fl.reshape(-1)
    while True:
        m = lab[fl].amin(1).repeat_interleave(3)
        new = lab.scatter_reduce(0, flat, m, reduce="amin")
        for _ in range(4):
            new = new[new]
        if torch.equal(new, lab):
            break
        lab = new
    return lab[fl[:, 0]].to(torch.int32)


def mesh_topology(faces: torch.Tensor, num_verts: int | None = None) -> MeshTopology:
    """Build the :class:`MeshTopology` of ``faces`` (F, 3); pass it to :func:`antialias` when the
    same faces are rendered repeatedly."""
    if num_verts is None:
        num_verts = int(faces.max()) + 1 if isinstance(faces, torch.Tensor) and faces.numel() and \
            not faces.is_floating_point() else 0
    V = as_int(num_verts, "num_verts", minimum=0)
    faces = _check_faces(faces, V, dtype=torch.int32, size_name="num_verts")
    fl = faces.long()
    F = fl.shape[0]
    vid = fl.reshape(-1)
    order = torch.argsort(vid, stable=True)
    counts = torch.bincount(vid, minlength=V)
    start = torch.zeros(V + 1, dtype=torch.long, device=faces.device)
    start[1:] = torch.cumsum(counts, 0)
    vfaces = (order // 3)
    maxdeg = int(counts.max()) if V > 0 and F > 0 else 1
    fans = torch.full((V, maxdeg), -1, dtype=torch.long, device=faces.device)
    slot = torch.arange(vid.shape[0], device=faces.device) - start[vid[order]]
    fans[vid[order], slot] = vfaces
    return MeshTopology(face_neighbors(faces), start.to(torch.int32), vfaces.to(torch.int32).contiguous(), fans,
                        _components(fl, V), faces)


TILE = 8  # tile size (padded pixels) of the binned silhouette-edge search


def _background(background, color):
    """(C,) colour of the ring of virtual pixels beyond the image border, or None."""
    if background is None:
        return None
    C = color.shape[-1]
    bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
    if not bool(torch.isfinite(bg).all()):
        raise ValueError("background contains non-finite values (NaN or inf)")
    if bg.dim() == 0:
        bg = bg.expand(C)
    if bg.shape != (C,):
        raise ValueError(f"background must be a scalar or have shape ({C},), got {tuple(bg.shape)}")
    return bg


def antialias(color: torch.Tensor, frags: Fragments, topology: MeshTopology | None = None,
              backend: str = "warp", background=None) -> torch.Tensor:
    """Blend colours across silhouette edges (see module docstring for the argument).

    Args:
        color: (B, H, W, C) image rendered from ``frags`` (e.g. interpolated attributes, shaded
            colour, a coverage mask with the background value on empty pixels).
        frags: the :class:`~diffvc.render.Fragments` the image was rendered from; ``frags.screen``
            carries the gradient to the vertex positions.
        topology: optional :func:`mesh_topology` of ``frags.faces`` (cache it when rendering the
            same faces repeatedly).
        backend: ``"warp"`` (edge detection kernels) or ``"torch"`` (twin).
        background: the colour seen beyond the image border (a scalar or (C,)): with it, edges
            crossing the outer half of a border pixel covered by their face are blended towards
            it (e.g. 0 for a coverage mask, the composited background colour of a shaded image);
            ``None`` (default): edges at the image border are not blended.

    Returns:
        (B, H, W, C) antialiased image, differentiable w.r.t. ``color``, ``frags.screen`` and
        ``background``.
    """
    if not isinstance(frags, Fragments):
        raise TypeError(f"frags must be the Fragments of rasterize, got {type(frags).__name__}")
    B, H, W = frags.shape
    # finiteness: the Warp blend checks each value as it reads it; the twin and the empty mesh here
    check_float(color, "color", coerce=False, finite=False)
    if not isinstance(color, torch.Tensor) or color.dim() != 4 or color.shape[:3] != (B, H, W):
        raise ValueError(f"color must have shape ({B}, {H}, {W}, C), got "
                         f"{tuple(color.shape) if isinstance(color, torch.Tensor) else type(color).__name__}")
    check_choice(backend, "backend", BACKENDS)
    check_same_dtype(("frags", frags.screen), ("color", color))
    bg = _background(background, color)
    if backend != "warp" or frags.faces.shape[0] == 0:
        check_finite(color, "color")
    if frags.faces.shape[0] == 0:
        return color
    if topology is None:
        topology = mesh_topology(frags.faces, frags.screen.shape[1])
    elif not isinstance(topology, MeshTopology) or not _same_faces(topology, frags.faces):
        # a topology of other faces would send the kernels through wrong (or out-of-range) indices
        raise ValueError("topology must be the mesh_topology(faces) of the rendered faces")
    screen = frags.screen.detach().contiguous()
    near = float(frags.near)
    persp = int(frags.perspective)
    border = int(bg is not None)
    if backend == "warp":
        F = frags.faces.shape[0]
        dev = color.device
        has_sil = torch.empty((B, F), dtype=torch.int32, device=dev)
        entry = torch.empty((B, F, 4), dtype=torch.int32, device=dev)
        near_sil = torch.empty((B, F), dtype=torch.int32, device=dev)
        blk, n_f, mpt = K.face_launch(B * F, dev)
        facing = getattr(frags, "_facing", None)  # from rasterize's coverage pass (rasterize._fragments)
        if facing is None:
            facing = torch.empty((B, F), dtype=torch.int32, device=dev)
            parallel_launch(K.face_facing, n_f, [blk, screen, frags.faces, persp], [facing], min_per_thread=mpt)
        parallel_launch(K.face_has_silhouette, n_f, [blk, screen, frags.faces, topology.neighbors, facing, near, persp],
                        [has_sil, entry], min_per_thread=mpt)
        vert_sil = K.cpu_zeros((B, frags.screen.shape[1]), facing)
        parallel_launch(K.vertex_silhouette, n_f, [blk, frags.faces, has_sil], [vert_sil],  # same-value stores
                        min_per_thread=mpt)
        parallel_launch(K.face_near_silhouette, n_f, [blk, frags.faces, vert_sil], [near_sil], min_per_thread=mpt)
        # silhouette edges (each once) binned to tiles of the padded image
        entries = _nonzero(entry)  # (E, 3) int32: view, face, edge
        E = entries.shape[0]
        if E == 0:
            entries = torch.zeros((1, 3), dtype=torch.int32, device=dev)
        # buffers zeroed and summed off torch's OpenMP pool on the CPU (K.cpu_zeros): with 8 views
        # at 512^2 they pass torch's parallel threshold and its workers would spin beside the kernels
        seg = K.cpu_zeros((max(E, 1), 4), screen)
        tx, ty = (W + 2 + TILE - 1) // TILE, (H + 2 + TILE - 1) // TILE
        nt = B * tx * ty
        starts = K.cpu_zeros((nt + 1,), entry)
        if E:
            parallel_launch(K.entry_geometry, E, [screen, frags.faces, entries, near, persp], [seg])
            counts = K.cpu_zeros((nt,), entry)
            # binning accumulates with atomics: unsplit launches
            launch(K.edge_bin_count, E, [entries, seg, H, W, TILE, tx, ty], [counts])
            if dev.type == "cpu":
                import numpy as np

                np.cumsum(counts.numpy(), out=starts.numpy()[1:])
            else:
                starts[1:] = torch.cumsum(counts, 0)
        items = torch.empty(max(int(starts[-1]), 1), dtype=torch.int32, device=dev)
        if E:
            cursor = K.cpu_zeros((nt,), entry)
            launch(K.edge_bin_fill, E, [entries, seg, H, W, TILE, tx, ty, starts, cursor], [items])
        pairs = torch.empty((B, H + 1, W + 1, 2), dtype=torch.int32, device=dev)  # every entry written
        rows, n, mpt = K.pixel_launch(B, H + 1, W + 1, dev)
        parallel_launch(K.silhouette_pairs, n,
                        [rows, screen, frags.faces, topology.neighbors, facing, has_sil, near_sil,
                         topology.vert_face_start, topology.vert_faces, entries, seg, topology.component, starts, items,
                         TILE, tx, ty, frags.face_id, near, persp, border], [pairs], min_per_thread=mpt)
        ring = bg if bg is not None else torch.zeros(color.shape[-1], dtype=color.dtype, device=dev)
        return K.blend_op(color, frags.screen, ring.to(color.dtype), frags.faces, pairs, near, persp)
    b, py, px, d, codes, sd = silhouette_pairs_torch(screen, frags.faces, topology, frags.face_id,
                                                     frags.perspective, near, bool(border))
    return blend(color, frags.screen, b, py, px, d, codes, sd, near, bg)


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """``t.nonzero()`` as contiguous int32 (NumPy on the CPU: single-threaded, see
    :func:`diffvc._kernels.raster.cpu_zeros` for why; the flat indices of a boolean mask split
    into coordinates, ~7x faster than ``np.argwhere`` on the (B, F, 4) silhouette flags)."""
    if t.device.type == "cpu":
        import numpy as np

        a = t.numpy()
        lin = np.flatnonzero(a.reshape(-1) != 0)
        out = np.empty((lin.shape[0], a.ndim), dtype=np.int32)
        for j in range(a.ndim - 1, -1, -1):
            out[:, j] = lin % a.shape[j]
            lin = lin // a.shape[j]
        return torch.from_numpy(out)
    return t.nonzero().to(torch.int32).contiguous()


def _same_faces(topology: "MeshTopology", faces: torch.Tensor) -> bool:
    """Whether ``topology`` was built from the face list ``faces``: compared once per faces tensor
    and version (remembered on the topology), on the CPU with NumPy (single-threaded, see
    :func:`diffvc._kernels.raster.cpu_zeros`)."""
    import weakref

    tf = topology.faces
    if tf is faces:
        return True
    if tf.shape != faces.shape:
        return False
    try:
        version = faces._version
    except (RuntimeError, AttributeError):  # inference tensors have no version counter
        version = None
    memo = getattr(topology, "_verified", None)
    if version is not None and memo is not None and memo[0]() is faces and memo[1] == version:
        return True
    other = faces.to(tf.device)
    if tf.device.type == "cpu" and tf.dtype == other.dtype:
        import numpy as np

        same = bool(np.array_equal(tf.numpy(), other.numpy()))
    else:
        same = bool(torch.equal(tf, other))
    if same and version is not None:
        object.__setattr__(topology, "_verified", (weakref.ref(faces), version))
    return same


def _end_xy(screen, b, i, j, near):
    """(K, 2) screen points of endpoint codes (i, j): vertex i where i == j, else the crossing of
    edge i-j with ``d = near`` (homogeneous interpolation; differentiable)."""
    Pi = screen[b, i]
    clip = i != j
    if not bool(clip.any()):
        return Pi[:, :2]
    Pj = screen[b, j]
    di, dj = Pi[:, 2:3], Pj[:, 2:3]
    den = torch.where(clip[:, None], dj - di, torch.ones_like(di))
    t = (near - di) / den
    c = (Pi[:, :2] * di + t * (Pj[:, :2] * dj - Pi[:, :2] * di)) / near
    return torch.where(clip[:, None], c, Pi[:, :2])


def blend(color, screen, b, py, px, d, codes, sd, near=1.0, background=None) -> torch.Tensor:
    """The differentiable part of :func:`antialias`: crossings of the detected silhouette edges
    (endpoint ``codes`` (K, 4), see the kernels' ``_edge_ends``) with the pixel pairs (b, py, px,
    d) of the padded image (padded pixel (py, px) is image pixel (py - 1, px - 1); q is its right
    (d = 0) or lower (d = 1) neighbour; ``sd`` = 1 when q is the covered pixel) and the coverage
    blend (torch, K pairs). ``background`` (C,): colour of the virtual ring of padded pixels."""
    B, H, W, C = color.shape
    if b.numel() == 0:
        return color
    dt = screen.dtype
    Hp, Wp = H + 2, W + 2
    ring = background if background is not None else torch.zeros(C, dtype=color.dtype, device=color.device)
    padded = ring.to(color.dtype).expand(B, Hp, Wp, C).clone()
    padded[:, 1:H + 1, 1:W + 1] = color
    A = _end_xy(screen, b, codes[:, 0], codes[:, 1], near)
    Bv = _end_xy(screen, b, codes[:, 2], codes[:, 3], near)
    cx = px.to(dt) - 0.5
    cy = py.to(dt) - 0.5
    horiz = d == 0
    # horizontal pair: crossing of the edge with the row y = cy; vertical: with the column x = cx
    den_h = torch.where(horiz, Bv[:, 1] - A[:, 1], Bv[:, 0] - A[:, 0])
    den_h = torch.where(den_h == 0, torch.ones_like(den_h), den_h)
    t_h = torch.where(horiz, (cy - A[:, 1]), (cx - A[:, 0])) / den_h
    s_p = torch.where(horiz, A[:, 0] + t_h * (Bv[:, 0] - A[:, 0]) - cx, A[:, 1] + t_h * (Bv[:, 1] - A[:, 1]) - cy)
    s = torch.where(sd == 0, s_p, 1 - s_p)
    qx = px + (1 - d)
    qy = py + d
    p_lin = (b * Hp + py) * Wp + px
    q_lin = (b * Hp + qy) * Wp + qx
    c_lin = torch.where(sd == 0, p_lin, q_lin)
    o_lin = torch.where(sd == 0, q_lin, p_lin)
    flat = padded.reshape(B * Hp * Wp, C)
    Cc = flat[c_lin]
    Co = flat[o_lin]
    # each edge is antialiased along rows and along columns; the two estimates are mixed with
    # weights summing to one (dy^2 / l^2 for rows, dx^2 / l^2 for columns)
    e = Bv - A
    wdir = torch.where(horiz, e[:, 1] ** 2, e[:, 0] ** 2) / (e * e).sum(-1).clamp_min(1e-30)
    w_o = ((s - 0.5).clamp_min(0) * wdir).unsqueeze(-1).to(color.dtype)
    w_c = ((0.5 - s).clamp_min(0) * wdir).unsqueeze(-1).to(color.dtype)
    out = flat.index_add(0, o_lin, w_o * (Cc - Co)).index_add(0, c_lin, w_c * (Co - Cc))
    return out.reshape(B, Hp, Wp, C)[:, 1:H + 1, 1:W + 1]


# ---------------------------------------------------------------------------------------------
# plain-torch twin of the edge search kernels (same decisions, vectorised over pixel pairs)
# ---------------------------------------------------------------------------------------------

def _edge2(ax, ay, bx, by, px, py):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _tri(screen, faces, b, f):
    t = screen[b[:, None], faces.long()[f]]  # (K, 3, 3)
    return t


def _plane_key_torch(screen, faces, b, f, px, py, perspective):
    t = _tri(screen, faces, b, f)
    x0, y0, x1, y1, x2, y2 = t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1]
    area = _edge2(x0, y0, x1, y1, x2, y2)
    l0 = _edge2(x1, y1, x2, y2, px, py) / area
    l1 = _edge2(x2, y2, x0, y0, px, py) / area
    l2 = 1 - l0 - l1
    if perspective:
        return -(l0 / t[:, 0, 2] + l1 / t[:, 1, 2] + l2 / t[:, 2, 2])
    return l0 * t[:, 0, 2] + l1 * t[:, 1, 2] + l2 * t[:, 2, 2]


def silhouette_flags_torch(screen, faces, topo, perspective=False, near=0.0):
    """Per view and face: ``facing`` (+1/-1, orientation towards the camera: the sign of the
    screen-space area, flipped per vertex behind a perspective camera), ``clipped`` (a vertex at
    or before ``near``), ``has_sil`` (an edge or the clip edge is a silhouette), ``near_sil`` (a
    face sharing a vertex has one), (B, F) each, and ``entry`` (B, F, 4) the edges listed for the
    binned search; the torch twin of the ``face_*`` kernels."""
    fl = faces.long()
    t = screen[:, fl]  # (B, F, 3, 3)
    a = _edge2(t[..., 0, 0], t[..., 0, 1], t[..., 1, 0], t[..., 1, 1], t[..., 2, 0], t[..., 2, 1])
    facing = torch.where(a > 0, 1, -1)
    dep = t[..., 2]
    if perspective:
        facing = facing * torch.where((dep < 0).sum(-1) % 2 == 1, -1, 1)
        clipped = (dep <= near).any(-1)
        drawn = (dep > near).any(-1) & (a.abs() > 1e-12)
    else:
        clipped = torch.zeros_like(a, dtype=torch.bool)
        drawn = (dep > near).all(-1) & (a.abs() > 1e-12)
    nb = topo.neighbors.long()
    sil_k = (nb < 0)[None] | (facing[:, nb.clamp_min(0)] != facing[:, :, None])  # (B, F, 3)
    has_sil = sil_k.any(-1) | clipped
    fan = topo.fans[fl]  # (F, 3, maxdeg)
    near_sil = (has_sil[:, fan.clamp_min(0)] & (fan >= 0)[None]).flatten(2).any(-1)
    F = fl.shape[0]
    ar = torch.arange(F, device=fl.device)
    B = screen.shape[0]
    bb = torch.arange(B, device=fl.device)[:, None].expand(B, F).reshape(-1)
    ff = ar[None].expand(B, F).reshape(-1)
    entry = torch.zeros((B, F, 4), dtype=torch.bool, device=fl.device)
    for k in range(4):
        vis = _edge_ends_torch(screen, faces, bb, ff, k, near, perspective)[:, 0].reshape(B, F) >= 0
        if k < 3:
            once = (nb[:, k] < 0) | (nb[:, k] > ar)
            entry[..., k] = sil_k[..., k] & once[None] & vis & drawn
        else:
            entry[..., k] = clipped & vis & drawn
    return facing, clipped, has_sil, near_sil, entry


def _edge_ends_torch(screen, faces, b, f, k, near, perspective):
    """Twin of the kernels' ``_edge_ends`` for K (view, face) and a Python int k: (K, 4) long."""
    fl = faces.long()
    neg = torch.full((f.shape[0], 4), -1, dtype=torch.long, device=f.device)
    if k < 3:
        ia, ib = fl[f, k], fl[f, (k + 1) % 3]
        if not perspective:
            return torch.stack([ia, ia, ib, ib], 1)
        ina = screen[b, ia, 2] > near
        inb = screen[b, ib, 2] > near
        out = torch.where((ina & inb)[:, None], torch.stack([ia, ia, ib, ib], 1), neg)
        out = torch.where((ina & ~inb)[:, None], torch.stack([ia, ia, ia, ib], 1), out)
        return torch.where((~ina & inb)[:, None], torch.stack([ia, ib, ib, ib], 1), out)
    if not perspective:
        return neg
    out = neg.clone()
    n = torch.zeros_like(f)
    for j in range(3):
        i, i2 = fl[f, j], fl[f, (j + 1) % 3]
        cr = (screen[b, i, 2] > near) != (screen[b, i2, 2] > near)
        first = cr & (n == 0)
        second = cr & (n > 0)
        out[first, 0], out[first, 1] = i[first], i2[first]
        out[second, 2], out[second, 3] = i[second], i2[second]
        n = n + cr.long()
    out[n != 2, 0] = -1
    return out


def _cross_torch(A, Bv, horizontal, cx, cy, sign):
    """Twin of the kernels' ``_cross``: s in [0, 1] or -1."""
    ax, ay = A[:, 0], A[:, 1]
    dx, dy = Bv[:, 0] - ax, Bv[:, 1] - ay
    if horizontal:
        okdir = dy.abs() > 0
        tt = (cy - ay) / torch.where(okdir, dy, torch.ones_like(dy))
        s = (ax + tt * dx - cx) * sign
    else:
        okdir = dx.abs() > 0
        tt = (cx - ax) / torch.where(okdir, dx, torch.ones_like(dx))
        s = (ay + tt * dy - cy) * sign
    ok = okdir & (tt >= 0) & (tt <= 1) & (s >= 0) & (s <= 1)
    return torch.where(ok, s, torch.full_like(s, -1.0))


def _code_cross_torch(screen, b, e, horizontal, cx, cy, sign, near):
    valid = e[:, 0] >= 0
    ec = e.clamp_min(0)
    s = _cross_torch(_end_xy(screen, b, ec[:, 0], ec[:, 1], near), _end_xy(screen, b, ec[:, 2], ec[:, 3], near),
                     horizontal, cx, cy, sign)
    return torch.where(valid, s, torch.full_like(s, -1.0))


def _covered_side_torch(screen, faces, b, f, k, px, py, near, perspective):
    """Twin of the kernels' ``_covered_side`` (k a Python int)."""
    t = _tri(screen, faces, b, f)
    x0, y0, x1, y1, x2, y2 = t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], t[:, 2, 0], t[:, 2, 1]
    area = _edge2(x0, y0, x1, y1, x2, y2)
    if k < 3:
        a, c = t[:, k], t[:, (k + 1) % 3]
        lam = _edge2(a[:, 0], a[:, 1], c[:, 0], c[:, 1], px, py) / area
        if perspective:
            lam = lam / t[:, (k + 2) % 3, 2]
        return lam > 0
    S = (_edge2(x1, y1, x2, y2, px, py) / t[:, 0, 2] + _edge2(x2, y2, x0, y0, px, py) / t[:, 1, 2]
         + _edge2(x0, y0, x1, y1, px, py) / t[:, 2, 2]) / area
    return (S > 0) & (S * near < 1)


def _accept_torch(screen, faces, b, f, k, other, s, horizontal, cx, cy, sign, near, perspective):
    ok = _covered_side_torch(screen, faces, b, f, k, cx, cy, near, perspective)
    qx = cx + s * sign if horizontal else cx
    qy = cy if horizontal else cy + s * sign
    kf = _plane_key_torch(screen, faces, b, f, qx, qy, perspective)
    ko = _plane_key_torch(screen, faces, b, other.clamp_min(0), qx, qy, perspective)
    return ok & ((other < 0) | (kf <= ko))


def _find_edge_torch(screen, faces, topo, flags, b, f, other, horizontal, cx, cy, sign, near, perspective, best):
    """Vectorised twin of the kernel's ``_find_edge`` over K pairs; f >= 0 everywhere. Returns
    (codes (K, 4), s (K,)), s = ``best`` where nothing farther is accepted."""
    facing, clipped = flags[0], flags[1]
    res = torch.full((f.shape[0], 4), -1, dtype=torch.long, device=f.device)
    bs = best.clone()
    nbrs = topo.neighbors.long()
    for k in range(4):
        if k < 3:
            nb = nbrs[f, k]
            sil = (nb < 0) | (facing[b, nb.clamp_min(0)] != facing[b, f])
        else:
            sil = clipped[b, f]
        e = _edge_ends_torch(screen, faces, b, f, k, near, perspective)
        s = _code_cross_torch(screen, b, e, horizontal, cx, cy, sign, near)
        hit = sil & (e[:, 0] >= 0) & (s > bs)
        hit = hit & _accept_torch(screen, faces, b, f, k, other, s, horizontal, cx, cy, sign, near, perspective)
        res = torch.where(hit[:, None], e, res)
        bs = torch.where(hit, s, bs)
    return res, bs


def _find_silhouette_torch(screen, faces, topo, flags, b, f, other, horizontal, cx, cy, sign, near, perspective):
    """Twin of the kernel's ``_find_silhouette``: the outermost edge over f and its vertex fans
    (faces without a silhouette edge are skipped, as in the kernel)."""
    has_sil = flags[2]
    best = torch.full(f.shape, -1.0, dtype=screen.dtype, device=f.device)
    res = torch.full((f.shape[0], 4), -1, dtype=torch.long, device=f.device)
    m0 = has_sil[b, f]
    if bool(m0.any()):
        r, s = _find_edge_torch(screen, faces, topo, flags, b[m0], f[m0], other[m0], horizontal, cx[m0], cy[m0], sign,
                                near, perspective, best[m0])
        res[m0], best[m0] = r, s
    fl = faces.long()
    for j in range(3):
        fan = topo.fans[fl[f, j]]  # (K, maxdeg)
        for k in range(fan.shape[1]):
            g = fan[:, k]
            m = (g >= 0) & (g != f)
            m = m & has_sil[b, g.clamp_min(0)]
            if bool(m.any()):
                r, s = _find_edge_torch(screen, faces, topo, flags, b[m], g[m], other[m], horizontal, cx[m], cy[m],
                                        sign, near, perspective, best[m])
                better = r[:, 0] >= 0
                idx = m.nonzero().squeeze(1)[better]
                res[idx], best[idx] = r[better], s[better]
    return res


def _entry_bins(screen, faces, entries, near, perspective, H, W):
    """Endpoint codes (E, 4), screen segments (E, 4) of the listed silhouette edges and their
    binning to TILE-px tiles of the padded image (twin of ``entry_geometry`` + ``edge_bin_*``):
    (codes, seg, tile_starts, tile_items, tiles_x, tiles_y); items ordered by entry index."""
    E = entries.shape[0]
    dev = entries.device
    codes = torch.full((E, 4), -1, dtype=torch.long, device=dev)
    for k in range(4):
        m = entries[:, 2] == k
        if bool(m.any()):
            codes[m] = _edge_ends_torch(screen, faces, entries[m, 0], entries[m, 1], k, near, perspective)
    c = codes.clamp_min(0)
    A = _end_xy(screen, entries[:, 0], c[:, 0], c[:, 1], near)
    Bv = _end_xy(screen, entries[:, 0], c[:, 2], c[:, 3], near)
    seg = torch.cat([A, Bv], 1)
    tx, ty = (W + 2 + TILE - 1) // TILE, (H + 2 + TILE - 1) // TILE
    lim = float(W + H + 8)
    lo = torch.minimum(A, Bv).clamp(-lim, lim)
    hi = torch.maximum(A, Bv).clamp(-lim, lim)
    x0 = (torch.ceil(lo[:, 0] - 1.5).long() + 1).clamp_min(0)
    x1 = torch.floor(hi[:, 0] + 1.5).long().clamp_max(W + 1)
    y0 = (torch.ceil(lo[:, 1] - 1.5).long() + 1).clamp_min(0)
    y1 = torch.floor(hi[:, 1] + 1.5).long().clamp_max(H + 1)
    ok = (x0 <= x1) & (y0 <= y1)
    t0x, t1x, t0y, t1y = x0 // TILE, x1 // TILE, y0 // TILE, y1 // TILE
    nx = torch.where(ok, t1x - t0x + 1, 0)
    ny = torch.where(ok, t1y - t0y + 1, 0)
    n = nx * ny
    ei = torch.repeat_interleave(torch.arange(E, device=dev), n)
    first = torch.cumsum(n, 0) - n
    local = torch.arange(ei.shape[0], device=dev) - first[ei]
    tile = entries[ei, 0].long() * tx * ty + (t0y[ei] + local // nx[ei].clamp_min(1)) * tx + t0x[ei] + local % nx[ei].clamp_min(1)
    order = torch.argsort(tile * max(E, 1) + ei)
    items = ei[order]
    counts = torch.bincount(tile, minlength=screen.shape[0] * tx * ty)
    starts = torch.zeros(counts.shape[0] + 1, dtype=torch.long, device=dev)
    starts[1:] = torch.cumsum(counts, 0)
    return codes, seg, starts, items, tx, ty


def _find_binned_torch(screen, faces, topo, entries, bins, b, tile, fc, other, horizontal, cx, cy, sign, near,
                       perspective):
    """Twin of the kernel's ``_find_binned`` over K pairs (``tile``: the tile index of each)."""
    K = b.shape[0]
    res = torch.full((K, 4), -1, dtype=torch.long, device=b.device)
    E = entries.shape[0]
    if K == 0 or E == 0:
        return res
    codes_e, seg, starts, items = bins[:4]
    comp = topo.component.long()
    n = starts[tile + 1] - starts[tile]
    pi = torch.repeat_interleave(torch.arange(K, device=b.device), n)
    local = torch.arange(pi.shape[0], device=b.device) - (torch.cumsum(n, 0) - n)[pi]
    ei = items[starts[tile][pi] + local]
    keep = comp[entries[ei, 1]] == comp[fc[pi]]
    pi, ei = pi[keep], ei[keep]
    s = _cross_torch(seg[ei, :2], seg[ei, 2:], horizontal, cx[pi], cy[pi], sign)
    keep = s >= 0
    pi, ei, s = pi[keep], ei[keep], s[keep]
    acc = torch.zeros(pi.shape[0], dtype=torch.bool, device=b.device)
    ek = entries[ei, 2]
    for k in range(4):
        m = ek == k
        if bool(m.any()):
            acc[m] = _accept_torch(screen, faces, entries[ei[m], 0], entries[ei[m], 1], k, other[pi[m]], s[m],
                                   horizontal, cx[pi[m]], cy[pi[m]], sign, near, perspective)
    pi, ei, s = pi[acc], ei[acc], s[acc]
    if pi.numel() == 0:
        return res
    # per pair: the largest s, ties to the lower entry index
    smax = torch.full((K,), -1.0, dtype=screen.dtype, device=b.device).scatter_reduce(0, pi, s, reduce="amax")
    top = s == smax[pi]
    imin = torch.full((K,), E, dtype=torch.long, device=b.device).scatter_reduce(0, pi[top], ei[top], reduce="amin")
    win = top & (ei == imin[pi])
    res[pi[win]] = codes_e[ei[win]]
    return res


def silhouette_pairs_torch(screen, faces, topo, face_id, perspective, near=1e-3, border=False):
    """Plain-torch twin of the ``silhouette_pairs`` kernel; returns the detected pairs as
    ``(b, py, px, d, codes, side)`` tensors (K,) / (K, 4) in padded-image coordinates, ordered like
    ``nonzero`` over (b, py, px, d)."""
    B, H, W = face_id.shape
    flags = silhouette_flags_torch(screen, faces, topo, perspective, near)
    near_sil, entry = flags[3], flags[4]
    entries = entry.nonzero()  # (E, 3), ordered like the kernel path's nonzero
    bins = _entry_bins(screen, faces, entries, near, perspective, H, W)
    tiles_x, tiles_y = bins[4], bins[5]
    fid = torch.full((B, H + 2, W + 2), -1, dtype=torch.long, device=face_id.device)
    fid[:, 1:H + 1, 1:W + 1] = face_id.long()
    bidx = torch.arange(B, device=face_id.device)[:, None, None]
    near_img = near_sil[bidx, fid.clamp_min(0)] & (fid >= 0)
    outs = []
    for d in (0, 1):
        fa_img = fid[:, : H + 1, : W + 1]
        fb_img = fid[:, d: H + 1 + d, 1 - d: W + 2 - d]
        pyg, pxg = torch.meshgrid(torch.arange(H + 1, device=fid.device), torch.arange(W + 1, device=fid.device),
                                  indexing="ij")
        if d == 0:
            ok = (pyg >= 1) & (pyg <= H) & (torch.tensor(border) | ((pxg >= 1) & (pxg + 1 <= W)))
        else:
            ok = (pxg >= 1) & (pxg <= W) & (torch.tensor(border) | ((pyg >= 1) & (pyg + 1 <= H)))
        b, py, px = ((fa_img != fb_img) & ok[None]).nonzero().unbind(1)
        fa = fa_img[b, py, px]
        fb = fb_img[b, py, px]
        cx = px.to(screen.dtype) - 0.5
        cy = py.to(screen.dtype) - 0.5
        qcx, qcy = cx + (1 - d), cy + d
        tile = (b * tiles_y + py // TILE) * tiles_x + px // TILE
        codes = torch.full((b.shape[0], 4), -1, dtype=torch.long, device=b.device)
        sd = torch.zeros_like(fa)
        na = near_img[b, py, px]
        nq = near_img[b, py + d, px + 1 - d]
        m = (fa >= 0) & na
        if bool(m.any()):
            codes[m] = _find_silhouette_torch(screen, faces, topo, flags, b[m], fa[m], fb[m], d == 0, cx[m], cy[m],
                                              1.0, near, perspective)
        m2 = (codes[:, 0] < 0) & (fb >= 0) & nq
        if bool(m2.any()):
            r = _find_silhouette_torch(screen, faces, topo, flags, b[m2], fb[m2], fa[m2], d == 0, qcx[m2], qcy[m2],
                                       -1.0, near, perspective)
            codes[m2] = r
            sd[m2] = 1
        # as the kernel: adjacent faces of one orientation skip the binned search
        fac = flags[0]
        fa0, fb0 = fa.clamp_min(0), fb.clamp_min(0)
        adjacent = ((fa >= 0) & (fb >= 0) & (fac[b, fa0] == fac[b, fb0])
                    & (topo.neighbors[fa0].long() == fb0[:, None]).any(1))
        m3 = (codes[:, 0] < 0) & (fa >= 0) & ~adjacent
        sd[codes[:, 0] < 0] = 0
        if bool(m3.any()):
            codes[m3] = _find_binned_torch(screen, faces, topo, entries, bins, b[m3], tile[m3], fa[m3], fb[m3], d == 0,
                                           cx[m3], cy[m3], 1.0, near, perspective)
        m4 = (codes[:, 0] < 0) & (fb >= 0) & ~adjacent
        if bool(m4.any()):
            r = _find_binned_torch(screen, faces, topo, entries, bins, b[m4], tile[m4], fb[m4], fa[m4], d == 0,
                                   qcx[m4], qcy[m4], -1.0, near, perspective)
            codes[m4] = r
            sd[m4] = torch.where(r[:, 0] >= 0, 1, 0)
        keep = codes[:, 0] >= 0
        outs.append((b[keep], py[keep], px[keep], torch.full_like(b[keep], d), codes[keep], sd[keep]))
    cat = [torch.cat([o[i] for o in outs]) for i in range(6)]
    b, py, px, d = cat[:4]
    order = torch.argsort(((b * (H + 1) + py) * (W + 1) + px) * 2 + d)
    return tuple(c[order] for c in cat)
