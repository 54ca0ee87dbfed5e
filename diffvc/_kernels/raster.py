"""Warp kernels for triangle rasterization (binning, coverage + depth test, barycentrics,
attribute interpolation, silhouette-edge detection for antialiasing).

Screen-space vertices are ``screen[b, v] = (u, v, d)``: pixel coordinates (pixel centres at
+0.5) and view depth. Coverage of a pixel centre uses edge functions with a consistent tie rule
(an edge shared by two triangles covers a centre lying exactly on it once). The nearest
triangle wins: perspective compares ``1/d`` interpolated linearly in screen space, orthographic
compares ``d``; exact ties go to the lower face id, so results do not depend on thread order.

Near-plane clipping (perspective): a triangle with a vertex at or before ``d = near`` is drawn
where the pixel ray meets it beyond ``near`` (``_key_clipped``: the perspective-correct
barycentrics of the ORIGINAL triangle, computed from the projected vertices, which stay
meaningful for vertices behind the camera, are all >= 0 and the hit depth exceeds ``near``);
its bins come from the clipped polygon's screen box (``_tri_box``).

Binning (``tri_setup``: each triangle's clipped pixel box once and the per-tile counts, then
``bin_fill``) writes, per view and tile, the list of triangles whose pixel bounding box touches
the tile, in face order. Both accumulate: split over CPU threads, each thread range counts into
its own row of counts and fills from its own cursors (which start where its faces go in each
list); on CUDA one launch with atomics (list order then varies, the results do not: ties in the
depth test go to the lower face id). ``raster_tiles`` (CPU: one thread per tile, threads write
disjoint pixels, safe to split over cores) and ``raster_pixels`` (CUDA: one thread per pixel)
give identical results.

Antialiasing (``silhouette_pairs``, see :mod:`diffvc.render.antialias`): per pixel pair the
silhouette edge between them, searched in the vertex fan of the face seen at a pixel, then among
the view's silhouette edges binned to tiles of the padded image (``edge_bin_count`` /
``edge_bin_fill``, atomics: unsplit launches). Edges are passed around as endpoint codes
(``_edge_ends``): vertex pairs (i, i) for a vertex, (i, j) for the near-plane crossing of edge
i-j, so clipped edges and clip lines are differentiable in the vertices.
"""

from __future__ import annotations

from typing import Any

from .bridge import wp


@wp.func
def _edge(ax: Any, ay: Any, bx: Any, by: Any, px: Any, py: Any):
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@wp.func
def _owns_tie(dx: Any, dy: Any):
    # consistent tie rule: antisymmetric under reversing the edge direction
    z = dx - dx
    return (dy > z) or (dy == z and dx < z)


@wp.func
def _tri_ok(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, near: Any,
            perspective: int):
    """Whether triangle f is drawn in view b: perspective views need one vertex beyond ``near``
    (the rest is clipped), orthographic views all three; edge-on triangles are skipped."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    a0 = screen[b, i0, 2] > near
    a1 = screen[b, i1, 2] > near
    a2 = screen[b, i2, 2] > near
    ok = a0 and a1 and a2
    if perspective != 0:
        ok = a0 or a1 or a2
    area = _edge(screen[b, i0, 0], screen[b, i0, 1], screen[b, i1, 0], screen[b, i1, 1], screen[b, i2, 0], screen[b, i2, 1])
    tiny = near - near + type(near)(1e-12)
    return ok and wp.abs(area) > tiny


@wp.func
def _clipped(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, near: Any,
             perspective: int):
    """1 when a perspective triangle has a vertex at or before the near plane (it is clipped)."""
    c = int(0)
    if perspective != 0:
        if screen[b, faces[f, 0], 2] <= near or screen[b, faces[f, 1], 2] <= near or screen[b, faces[f, 2], 2] <= near:
            c = 1
    return c


@wp.func
def _tri_box(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, near: Any,
             W: int, H: int):
    """Inclusive pixel-centre ranges (x_lo, x_hi, y_lo, y_hi), clamped to the image, of the
    screen bounding box of triangle f clipped to ``d > near``: its vertices beyond the plane and
    the points where its edges cross the plane (interpolated in homogeneous coordinates
    ``(u d, v d, d)``). For an unclipped triangle this is the box of its three vertices."""
    s00 = screen[b, 0, 0]
    big = type(s00)(1e30)
    lox = big
    hix = -big
    loy = big
    hiy = -big
    for j in range(3):
        ia = faces[f, j]
        ib = faces[f, (j + 1) % 3]
        ua = screen[b, ia, 0]
        va = screen[b, ia, 1]
        da = screen[b, ia, 2]
        db = screen[b, ib, 2]
        if da > near:
            lox = wp.min(lox, ua)
            hix = wp.max(hix, ua)
            loy = wp.min(loy, va)
            hiy = wp.max(hiy, va)
        if (da > near) != (db > near):
            t = (near - da) / (db - da)
            uc = (ua * da + t * (screen[b, ib, 0] * db - ua * da)) / near
            vc = (va * da + t * (screen[b, ib, 1] * db - va * da)) / near
            lox = wp.min(lox, uc)
            hix = wp.max(hix, uc)
            loy = wp.min(loy, vc)
            hiy = wp.max(hiy, vc)
    half = type(s00)(0.5)
    lim = type(s00)(W + H + 2)
    lox = wp.clamp(lox, -lim, lim)
    hix = wp.clamp(hix, -lim, lim)
    loy = wp.clamp(loy, -lim, lim)
    hiy = wp.clamp(hiy, -lim, lim)
    return wp.vec4i(wp.max(int(wp.ceil(lox - half)), 0), wp.min(int(wp.floor(hix - half)), W - 1),
                    wp.max(int(wp.ceil(loy - half)), 0), wp.min(int(wp.floor(hiy - half)), H - 1))


@wp.func
def _key_clipped(x0: Any, y0: Any, x1: Any, y1: Any, x2: Any, y2: Any, d0: Any, d1: Any, d2: Any, area: Any,
                 px: Any, py: Any, near: Any):
    """Depth key of a clipped (perspective) triangle at (px, py): the pixel ray meets the
    triangle's plane at depth 1 / S, S = sum_k l_k / d_k (l = screen-space barycentrics of the
    projected vertices, valid for vertices behind the camera too); covered when the
    perspective-correct barycentrics q_k / S are all >= 0 and 1 / S > near. Key -S, or +1e30."""
    l0 = _edge(x1, y1, x2, y2, px, py) / area
    l1 = _edge(x2, y2, x0, y0, px, py) / area
    l2 = _edge(x0, y0, x1, y1, px, py) / area
    q0 = l0 / d0
    q1 = l1 / d1
    q2 = l2 / d2
    S = q0 + q1 + q2
    z = area - area
    key = type(area)(1e30)
    if S > z and S * near < type(area)(1.0) and q0 >= z and q1 >= z and q2 >= z:
        key = -S
    return key


@wp.func
def _key_at(x0: Any, y0: Any, x1: Any, y1: Any, x2: Any, y2: Any, d0: Any, d1: Any, d2: Any, area: Any, s: Any,
            t0: bool, t1: bool, t2: bool, px: Any, py: Any, perspective: int):
    """Depth key (smaller = nearer) at (px, py) of a triangle set up by the caller (``s`` = sign
    of ``area``, ``t_k`` = tie ownership of edge k); +1e30 if the centre is not covered."""
    w0 = _edge(x1, y1, x2, y2, px, py) * s
    w1 = _edge(x2, y2, x0, y0, px, py) * s
    w2 = _edge(x0, y0, x1, y1, px, py) * s
    z = area - area
    key = type(area)(1e30)
    if (w0 > z or (w0 == z and t0)) and (w1 > z or (w1 == z and t1)) and (w2 > z or (w2 == z and t2)):
        aa = area * s
        l0 = w0 / aa
        l1 = w1 / aa
        l2 = w2 / aa
        if perspective != 0:
            key = -(l0 / d0 + l1 / d1 + l2 / d2)
        else:
            key = l0 * d0 + l1 * d1 + l2 * d2
    return key


@wp.func
def _cover_key(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int,
               px: Any, py: Any, perspective: int, near: Any):
    """Depth key (smaller = nearer) of triangle f at pixel centre (px, py); +1e30 if not covered."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    x0 = screen[b, i0, 0]
    y0 = screen[b, i0, 1]
    x1 = screen[b, i1, 0]
    y1 = screen[b, i1, 1]
    x2 = screen[b, i2, 0]
    y2 = screen[b, i2, 1]
    area = _edge(x0, y0, x1, y1, x2, y2)
    s = wp.where(area < area - area, type(area)(-1.0), type(area)(1.0))
    t0 = _owns_tie((x2 - x1) * s, (y2 - y1) * s)
    t1 = _owns_tie((x0 - x2) * s, (y0 - y2) * s)
    t2 = _owns_tie((x1 - x0) * s, (y1 - y0) * s)
    if _clipped(screen, faces, b, f, near, perspective) != 0:
        return _key_clipped(x0, y0, x1, y1, x2, y2, screen[b, i0, 2], screen[b, i1, 2], screen[b, i2, 2], area,
                            px, py, near)
    return _key_at(x0, y0, x1, y1, x2, y2, screen[b, i0, 2], screen[b, i1, 2], screen[b, i2, 2], area, s,
                   t0, t1, t2, px, py, perspective)


@wp.func
def _edge_line(ax: Any, ay: Any, bx: Any, by: Any, s: Any):
    """The crossing of edge a -> b with a pixel row, for ``_row_span``: ``(k, side)`` with the
    crossing at ``x(py) = ax + k (py - ay)`` (float64) and ``side`` = +1 when the inner side of
    the edge (``_edge(a, b, p) * s >= 0``) is ``px >= x``, -1 when it is ``px <= x``, 0 for a
    horizontal edge (no bound)."""
    ey = wp.float64(by) - wp.float64(ay)
    k = wp.float64(0.0)
    side = int(0)
    if ey != wp.float64(0.0):
        k = (wp.float64(bx) - wp.float64(ax)) / ey
        # w = s (ex (py - ay) - ey (px - ax)) grows with px when s ey < 0
        side = wp.where(wp.float64(s) * ey < wp.float64(0.0), 1, -1)
    return k, side


@wp.func
def _row_span(ax: Any, ay: Any, k: wp.float64, side: int, py: Any, r: wp.vec2i):
    """Narrows the pixel range ``r`` = [lo, hi] of row centre ``py`` to the pixels whose centre
    ``x + 0.5`` may lie on the inner side of an edge from a (``_edge_line``: k, side),
    conservatively: a pixel is dropped only when its centre lies more than a margin (1e-4 px
    plus 1e-4 of its distance to ``a``, far above the rounding error of the float32 edge
    function there, ~1e-6 of that distance) beyond the edge's exact crossing with the row
    (computed in float64). The coverage test on the kept pixels is unchanged, so the result is
    that of testing every pixel of the box (the torch twin's), at fewer tests."""
    if side != 0:
        dxs = k * (wp.float64(py) - wp.float64(ay))  # crossing - ax
        xs = wp.float64(ax) + dxs
        if wp.abs(xs) < wp.float64(1.0e8):
            slack = wp.float64(1.0e-4) * (wp.float64(1.0) + wp.abs(dxs))
            if side > 0:
                r[0] = wp.max(r[0], int(wp.ceil(xs - slack - wp.float64(0.5))))
            else:
                r[1] = wp.min(r[1], int(wp.floor(xs + slack - wp.float64(0.5))))
    return r


@wp.func
def _facing(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, perspective: int):
    """+1 / -1: orientation of face f towards the camera of view b. The sign of the projected area,
    flipped once per vertex behind the camera in perspective views (the projected area is the
    camera-space orientation divided by d0 d1 d2)."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    a = _edge(screen[b, i0, 0], screen[b, i0, 1], screen[b, i1, 0], screen[b, i1, 1], screen[b, i2, 0], screen[b, i2, 1])
    z = a - a
    s = wp.where(a > z, 1, -1)
    if perspective != 0:
        if screen[b, i0, 2] < z:
            s = -s
        if screen[b, i1, 2] < z:
            s = -s
        if screen[b, i2, 2] < z:
            s = -s
    return s


@wp.kernel
def tri_setup(offset: int, blk: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), near: Any,
              perspective: int, H: int, W: int, tile: int, tiles_x: int, tiles_y: int,
              box: wp.array(dtype=wp.int32, ndim=3), facing: wp.array2d(dtype=wp.int32),
              counts: wp.array(dtype=wp.int32)):
    """Per (view, face): the inclusive pixel-centre ranges (x_lo, x_hi, y_lo, y_hi) of the drawn
    triangle's clipped box (``_tri_box``), or an empty range (0, -1, 0, -1) when it is not drawn
    (``_tri_ok``), read by ``bin_fill`` and the coverage kernels; the first binning pass: counts
    the faces whose box touches each tile (accumulates: give each CPU thread range its own
    ``counts``). Also the face's orientation ``facing[b, f]`` (``_facing``, as
    :func:`face_facing`; kept for antialias: the face's vertices are loaded here anyway)."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for t in range(j * blk, wp.min(j * blk + blk, box.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        r = wp.vec4i(0, -1, 0, -1)
        if _tri_ok(screen, faces, b, f, near, perspective):
            r = _tri_box(screen, faces, b, f, near, W, H)
        if r[0] <= r[1] and r[2] <= r[3]:  # (a drawn face may cover no pixel centre)
            base = b * tiles_x * tiles_y
            for ty in range(r[2] // tile, r[3] // tile + 1):
                for tx in range(r[0] // tile, r[1] // tile + 1):
                    wp.atomic_add(counts, base + ty * tiles_x + tx, 1)
        box[b, f, 0] = r[0]
        box[b, f, 1] = r[1]
        box[b, f, 2] = r[2]
        box[b, f, 3] = r[3]
        facing[b, f] = _facing(screen, faces, b, f, perspective)


@wp.kernel
def bin_fill(offset: int, blk: int, box: wp.array(dtype=wp.int32, ndim=3), tile: int, tiles_x: int, tiles_y: int,
             items: wp.array(dtype=wp.int32), cursor: wp.array(dtype=wp.int32)):
    """Writes each triangle into its tiles' lists at ``items[cursor[tile]++]`` (give each CPU thread
    range its own ``cursor``, starting where its triangles go: the lists stay in face order)."""
    j = wp.tid() + offset
    F = box.shape[1]
    for t in range(j * blk, wp.min(j * blk + blk, box.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        x0 = box[b, f, 0]
        x1 = box[b, f, 1]
        y0 = box[b, f, 2]
        y1 = box[b, f, 3]
        if x0 <= x1 and y0 <= y1:
            base = b * tiles_x * tiles_y
            for ty in range(y0 // tile, y1 // tile + 1):
                for tx in range(x0 // tile, x1 // tile + 1):
                    slot = wp.atomic_add(cursor, base + ty * tiles_x + tx, 1)
                    items[slot] = f


@wp.kernel
def raster_tiles(offset: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                 starts: wp.array(dtype=wp.int32), items: wp.array(dtype=wp.int32), box: wp.array(dtype=wp.int32, ndim=3),
                 H: int, W: int, tile: int, tiles_x: int, tiles_y: int, perspective: int, near: Any, stride: int,
                 zbuf: wp.array(dtype=Any, ndim=3), face_id: wp.array(dtype=wp.int32, ndim=3)):
    """One thread per (view, tile); loops over the tile's triangles and their pixel boxes
    (``tri_setup``). Thread i takes tile ``(i * stride) mod (views * tiles)`` (``stride`` coprime
    with that count), so each CPU thread range gets tiles scattered over the images, not one band
    of them (balanced load)."""
    nt = tiles_x * tiles_y
    t = int((wp.int64(wp.tid() + offset) * wp.int64(stride)) % wp.int64(face_id.shape[0] * nt))
    b = t // nt
    k = t - b * nt
    ty = k // tiles_x
    tx = k - ty * tiles_x
    x0t = tx * tile
    y0t = ty * tile
    x1t = wp.min(x0t + tile, W) - 1
    y1t = wp.min(y0t + tile, H) - 1
    s00 = screen[b, 0, 0]
    half = type(s00)(0.5)
    for y in range(y0t, y1t + 1):  # this thread owns the tile's pixels: initialise them
        for x in range(x0t, x1t + 1):
            zbuf[b, y, x] = type(s00)(1e30)
            face_id[b, y, x] = -1
    for e in range(starts[t], starts[t + 1]):
        f = items[e]
        ya = wp.max(box[b, f, 2], y0t)
        yb = wp.min(box[b, f, 3], y1t)
        xa = wp.max(box[b, f, 0], x0t)
        xb = wp.min(box[b, f, 1], x1t)
        if ya <= yb and xa <= xb:
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            x0 = screen[b, i0, 0]
            y0 = screen[b, i0, 1]
            x1 = screen[b, i1, 0]
            y1 = screen[b, i1, 1]
            x2 = screen[b, i2, 0]
            y2 = screen[b, i2, 1]
            d0 = screen[b, i0, 2]
            d1 = screen[b, i1, 2]
            d2 = screen[b, i2, 2]
            area = _edge(x0, y0, x1, y1, x2, y2)
            s = wp.where(area < area - area, type(area)(-1.0), type(area)(1.0))
            t0 = _owns_tie((x2 - x1) * s, (y2 - y1) * s)
            t1 = _owns_tie((x0 - x2) * s, (y0 - y2) * s)
            t2 = _owns_tie((x1 - x0) * s, (y1 - y0) * s)
            clip = int(0)
            if perspective != 0 and (d0 <= near or d1 <= near or d2 <= near):
                clip = 1
            # a lower bound of the triangle's depth key over its pixels: the key is a combination
            # of -1/d_k (or of d_k) with the weights l_k = w_k / area >= 0, whose computed sum is 1 up
            # to the rounding of the edge functions, relative error <= ~9 u ext^2 / |area| (u =
            # 6e-8, float32; ext = the triangle's screen extent): with a margin above that (1e-5 +
            # 1e-6 ext^2 / |area|; a sliver gets a wide one), a pixel whose stored key is already below
            # the bound is skipped without the coverage test (same result: this triangle can neither
            # beat nor tie it there)
            kmin = -type(half)(1e30)
            one = type(half)(1.0)
            if clip == 0:
                ext = wp.max(wp.max(wp.max(x0, x1), x2) - wp.min(wp.min(x0, x1), x2),
                             wp.max(wp.max(y0, y1), y2) - wp.min(wp.min(y0, y1), y2))
                margin = type(half)(1e-5) + type(half)(1e-6) * ext * ext / wp.abs(area)
                if perspective != 0:
                    kmin = -wp.max(wp.max(one / d0, one / d1), one / d2) * (one + margin)
                else:
                    kmin = wp.min(wp.min(d0, d1), d2) - margin * wp.max(wp.max(wp.abs(d0), wp.abs(d1)), wp.abs(d2))
            # per row only the pixels the three edges' crossings leave open (unclipped triangles)
            k0, sd0 = _edge_line(x1, y1, x2, y2, s)
            k1, sd1 = _edge_line(x2, y2, x0, y0, s)
            k2, sd2 = _edge_line(x0, y0, x1, y1, s)
            if clip != 0:
                sd0 = 0
                sd1 = 0
                sd2 = 0
            for y in range(ya, yb + 1):
                py = type(half)(y) + half
                r = wp.vec2i(xa, xb)
                r = _row_span(x1, y1, k0, sd0, py, r)
                r = _row_span(x2, y2, k1, sd1, py, r)
                r = _row_span(x0, y0, k2, sd2, py, r)
                xl = r[0]
                xr = r[1]
                for x in range(xl, xr + 1):
                    cur = zbuf[b, y, x]
                    if not (kmin > cur):  # (a NaN bound tests the pixel)
                        key = type(half)(1e30)
                        if clip != 0:
                            key = _key_clipped(x0, y0, x1, y1, x2, y2, d0, d1, d2, area, type(half)(x) + half, py,
                                               near)
                        else:
                            key = _key_at(x0, y0, x1, y1, x2, y2, d0, d1, d2, area, s, t0, t1, t2,
                                          type(half)(x) + half, py, perspective)
                        if key < cur or (key == cur and key < type(half)(1e30) and f < face_id[b, y, x]):
                            zbuf[b, y, x] = key
                            face_id[b, y, x] = f


@wp.kernel
def raster_pixels(offset: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                  starts: wp.array(dtype=wp.int32), items: wp.array(dtype=wp.int32),
                  box: wp.array(dtype=wp.int32, ndim=3), H: int, W: int, tile: int,
                  tiles_x: int, tiles_y: int, perspective: int, near: Any, stride: int,
                  zbuf: wp.array(dtype=Any, ndim=3), face_id: wp.array(dtype=wp.int32, ndim=3)):
    """One thread per pixel (the CUDA layout); loops over the pixel's tile list (``box``, ``stride``:
    unused, the arguments are those of ``raster_tiles``)."""
    p = wp.tid() + offset
    b = p // (H * W)
    r = p - b * H * W
    y = r // W
    x = r - y * W
    t = b * tiles_x * tiles_y + (y // tile) * tiles_x + x // tile
    s00 = screen[b, 0, 0]
    half = type(s00)(0.5)
    px = type(half)(x) + half
    py = type(half)(y) + half
    best = type(half)(1e30)
    best_f = int(-1)
    for e in range(starts[t], starts[t + 1]):
        f = items[e]
        key = _cover_key(screen, faces, b, f, px, py, perspective, near)
        if key < best or (key == best and key < type(half)(1e30) and f < best_f):
            best = key
            best_f = f
    zbuf[b, y, x] = best
    face_id[b, y, x] = best_f


@wp.func
def _row_of(p: int, rows: int, n: int):
    """The image row (view-major, ``n`` rows in all) of CPU row-thread ``p`` of a per-pixel kernel:
    ``p * rows mod n``, ``rows`` a stride coprime with ``n`` (:func:`pixel_launch`), so each CPU
    thread range of a split launch gets rows scattered over the images (balanced load), not one
    band of them."""
    return int((wp.int64(p) * wp.int64(rows)) % wp.int64(n))


@wp.kernel
def barycentrics(offset: int, rows: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                 face_id: wp.array(dtype=wp.int32, ndim=3), perspective: int,
                 bary: wp.array(dtype=Any, ndim=4), depth: wp.array(dtype=Any, ndim=3)):
    """Perspective-correct barycentrics and view depth at pixel centres (gradient w.r.t. ``screen``:
    :func:`barycentrics_adj`). Background pixels get zeros."""
    p = wp.tid() + offset
    H = face_id.shape[1]
    W = face_id.shape[2]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    y = int(0)
    x_lo = int(0)
    x_hi = W
    if rows != 0:
        q = _row_of(p, rows, face_id.shape[0] * H)
        b = q // H
        y = q - b * H
    else:
        b = p // (H * W)
        r = p - b * H * W
        y = r // W
        x_lo = r - y * W
        x_hi = x_lo + 1
    for x in range(x_lo, x_hi):
        f = face_id[b, y, x]
        if f >= 0:
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            x0 = screen[b, i0, 0]
            half = type(x0)(0.5)
            px = type(x0)(x) + half
            py = type(x0)(y) + half
            y0 = screen[b, i0, 1]
            x1 = screen[b, i1, 0]
            y1 = screen[b, i1, 1]
            x2 = screen[b, i2, 0]
            y2 = screen[b, i2, 1]
            area = _edge(x0, y0, x1, y1, x2, y2)
            l0 = _edge(x1, y1, x2, y2, px, py) / area
            l1 = _edge(x2, y2, x0, y0, px, py) / area
            l2 = type(x0)(1.0) - l0 - l1
            if perspective != 0:
                q0 = l0 / screen[b, i0, 2]
                q1 = l1 / screen[b, i1, 2]
                q2 = l2 / screen[b, i2, 2]
                s = q0 + q1 + q2
                bary[b, y, x, 0] = q0 / s
                bary[b, y, x, 1] = q1 / s
                bary[b, y, x, 2] = q2 / s
                depth[b, y, x] = type(x0)(1.0) / s
            else:
                bary[b, y, x, 0] = l0
                bary[b, y, x, 1] = l1
                bary[b, y, x, 2] = l2
                depth[b, y, x] = l0 * screen[b, i0, 2] + l1 * screen[b, i1, 2] + l2 * screen[b, i2, 2]
        else:
            zero = type(screen[0, 0, 0])(0.0)
            bary[b, y, x, 0] = zero
            bary[b, y, x, 1] = zero
            bary[b, y, x, 2] = zero
            depth[b, y, x] = zero


@wp.kernel
def interpolate_attr(offset: int, rows: int, attr: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                     face_id: wp.array(dtype=wp.int32, ndim=3), bary: wp.array(dtype=Any, ndim=4),
                     out: wp.array(dtype=Any, ndim=4)):
    """out[b, y, x, c] = sum_k bary[b, y, x, k] * attr[b, faces[f, k], c]; zeros on background."""
    p = wp.tid() + offset
    H = face_id.shape[1]
    W = face_id.shape[2]
    C = attr.shape[2]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    y = int(0)
    x_lo = int(0)
    x_hi = W
    if rows != 0:
        q = _row_of(p, rows, face_id.shape[0] * H)
        b = q // H
        y = q - b * H
    else:
        b = p // (H * W)
        r = p - b * H * W
        y = r // W
        x_lo = r - y * W
        x_hi = x_lo + 1
    for x in range(x_lo, x_hi):
        f = face_id[b, y, x]
        if f >= 0:
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            w0 = bary[b, y, x, 0]
            w1 = bary[b, y, x, 1]
            w2 = bary[b, y, x, 2]
            for c in range(C):
                out[b, y, x, c] = w0 * attr[b, i0, c] + w1 * attr[b, i1, c] + w2 * attr[b, i2, c]
        else:
            zero = type(attr[0, 0, 0])(0.0)
            for c in range(C):
                out[b, y, x, c] = zero


@wp.func
def _plane_key(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int,
               px: Any, py: Any, perspective: int):
    """Depth key (smaller = nearer) of face f's plane extended to (px, py)."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    x0 = screen[b, i0, 0]
    y0 = screen[b, i0, 1]
    x1 = screen[b, i1, 0]
    y1 = screen[b, i1, 1]
    x2 = screen[b, i2, 0]
    y2 = screen[b, i2, 1]
    area = _edge(x0, y0, x1, y1, x2, y2)
    l0 = _edge(x1, y1, x2, y2, px, py) / area
    l1 = _edge(x2, y2, x0, y0, px, py) / area
    l2 = type(x0)(1.0) - l0 - l1
    key = l0 * screen[b, i0, 2] + l1 * screen[b, i1, 2] + l2 * screen[b, i2, 2]
    if perspective != 0:
        key = -(l0 / screen[b, i0, 2] + l1 / screen[b, i1, 2] + l2 / screen[b, i2, 2])
    return key


@wp.func
def _edge_ends(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, k: int,
               near: Any, perspective: int):
    """The visible part of edge k of face f (k = 0, 1, 2: from vertex k to k + 1; k = 3: the
    near-plane clip edge of a clipped face) as two endpoints, each a vertex pair (i, j): i == j is
    vertex i, i != j the point where edge i-j crosses ``d = near``. (-1, -1, -1, -1) if nothing of
    it lies beyond ``near``."""
    r0 = int(-1)
    r1 = int(-1)
    r2 = int(-1)
    r3 = int(-1)
    if k < 3:
        ia = faces[f, k]
        ib = faces[f, (k + 1) % 3]
        ina = True
        inb = True
        if perspective != 0:
            ina = screen[b, ia, 2] > near
            inb = screen[b, ib, 2] > near
        if ina and inb:
            r0 = ia
            r1 = ia
            r2 = ib
            r3 = ib
        elif ina:
            r0 = ia
            r1 = ia
            r2 = ia
            r3 = ib
        elif inb:
            r0 = ia
            r1 = ib
            r2 = ib
            r3 = ib
    elif perspective != 0:
        n = int(0)
        for j in range(3):
            i = faces[f, j]
            i2 = faces[f, (j + 1) % 3]
            if (screen[b, i, 2] > near) != (screen[b, i2, 2] > near):
                if n == 0:
                    r0 = i
                    r1 = i2
                else:
                    r2 = i
                    r3 = i2
                n = n + 1
        if n != 2:
            r0 = -1
    return wp.vec4i(r0, r1, r2, r3)


@wp.func
def _end_coord(screen: wp.array(dtype=Any, ndim=3), b: int, i: int, j: int, c: int, near: Any):
    """Screen coordinate c (0: u, 1: v) of endpoint (i, j) (see ``_edge_ends``): vertex i, or the
    crossing of edge i-j with ``d = near`` (homogeneous interpolation of (u d, v d, d))."""
    r = screen[b, i, c]
    if i != j:
        di = screen[b, i, 2]
        dj = screen[b, j, 2]
        t = (near - di) / (dj - di)
        r = (screen[b, i, c] * di + t * (screen[b, j, c] * dj - screen[b, i, c] * di)) / near
    return r


@wp.func
def _cross(ax: Any, ay: Any, bx: Any, by: Any, horizontal: int, cx: Any, cy: Any, sign: Any):
    """Distance s in [0, 1] from the centre (cx, cy) along the pair direction (+x or +y, times
    ``sign``) to the crossing with the segment (ax, ay)-(bx, by); -1 when the segment does not
    cross the unit segment (or is parallel to it)."""
    z = cx - cx
    one = z + type(cx)(1.0)
    dx = bx - ax
    dy = by - ay
    s = z - one
    if horizontal != 0:
        if wp.abs(dy) > z:
            tt = (cy - ay) / dy
            if tt >= z and tt <= one:
                s = (ax + tt * dx - cx) * sign
    else:
        if wp.abs(dx) > z:
            tt = (cx - ax) / dx
            if tt >= z and tt <= one:
                s = (ay + tt * dy - cy) * sign
    if s < z or s > one:
        s = z - one
    return s


@wp.func
def _code_cross(screen: wp.array(dtype=Any, ndim=3), b: int, e: wp.vec4i, horizontal: int, cx: Any, cy: Any,
                sign: Any, near: Any):
    return _cross(_end_coord(screen, b, e[0], e[1], 0, near), _end_coord(screen, b, e[0], e[1], 1, near),
                  _end_coord(screen, b, e[2], e[3], 0, near), _end_coord(screen, b, e[2], e[3], 1, near),
                  horizontal, cx, cy, sign)


@wp.func
def _covered_side(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, k: int,
                  px: Any, py: Any, near: Any, perspective: int):
    """Whether (px, py) lies on the side of edge k of face f where the face is (k = 3: the near
    side of the clip edge, 0 < S < 1 / near): the perspective-correct barycentric of the
    opposite vertex, l / d, is positive there (l alone for orthographic views)."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    x0 = screen[b, i0, 0]
    y0 = screen[b, i0, 1]
    x1 = screen[b, i1, 0]
    y1 = screen[b, i1, 1]
    x2 = screen[b, i2, 0]
    y2 = screen[b, i2, 1]
    area = _edge(x0, y0, x1, y1, x2, y2)
    z = area - area
    ok = False
    if k < 3:
        ia = faces[f, k]
        ib = faces[f, (k + 1) % 3]
        l = _edge(screen[b, ia, 0], screen[b, ia, 1], screen[b, ib, 0], screen[b, ib, 1], px, py) / area
        if perspective != 0:
            l = l / screen[b, faces[f, (k + 2) % 3], 2]
        ok = l > z
    else:
        S = (_edge(x1, y1, x2, y2, px, py) / screen[b, i0, 2] + _edge(x2, y2, x0, y0, px, py) / screen[b, i1, 2]
             + _edge(x0, y0, x1, y1, px, py) / screen[b, i2, 2]) / area
        ok = S > z and S * near < type(area)(1.0)
    return ok


@wp.func
def _sil_edge(neighbors: wp.array2d(dtype=wp.int32), facing: wp.array2d(dtype=wp.int32), clipped: int, b: int,
              f: int, k: int):
    """Edge k of face f is a silhouette in view b: a boundary (or non-manifold) edge, an edge
    whose two faces face opposite ways, or (k = 3) the clip edge of a clipped face."""
    sil = False
    if k < 3:
        nb = neighbors[f, k]
        sil = nb < 0
        if not sil:
            sil = facing[b, nb] != facing[b, f]
    else:
        sil = clipped != 0
    return sil


@wp.func
def _accept(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, f: int, k: int,
            other: int, s: Any, horizontal: int, cx: Any, cy: Any, sign: Any, near: Any, perspective: int):
    """Whether the edge (f, k) crossing at distance s from the centre (cx, cy) bounds the pixel at
    (cx, cy): that pixel is on the face's side of it and, where the other pixel shows a face
    (``other`` >= 0), the edge is not behind that face's plane at the crossing."""
    ok = _covered_side(screen, faces, b, f, k, cx, cy, near, perspective)
    if ok and other >= 0:
        qx = cx
        qy = cy
        if horizontal != 0:
            qx = cx + s * sign
        else:
            qy = cy + s * sign
        ok = _plane_key(screen, faces, b, f, qx, qy, perspective) <= _plane_key(screen, faces, b, other, qx, qy, perspective)
    return ok


@wp.func
def _find_edge(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
               neighbors: wp.array2d(dtype=wp.int32), facing: wp.array2d(dtype=wp.int32), b: int, f: int,
               other: int, horizontal: int, cx: Any, cy: Any, sign: Any, near: Any, perspective: int, best: Any):
    """The silhouette edge of face f crossing the unit segment from (cx, cy) towards +x
    (horizontal) or +y, times ``sign``, farther than ``best`` and farthest from (cx, cy), that
    ``_accept`` takes, as ``4 f + k`` (``_edge_ends`` gives its endpoints); -1 if none."""
    res = int(-1)
    bs = best
    clipped = _clipped(screen, faces, b, f, near, perspective)
    for k in range(4):
        if _sil_edge(neighbors, facing, clipped, b, f, k):
            e = _edge_ends(screen, faces, b, f, k, near, perspective)
            if e[0] >= 0:
                s = _code_cross(screen, b, e, horizontal, cx, cy, sign, near)
                if s > bs:
                    if _accept(screen, faces, b, f, k, other, s, horizontal, cx, cy, sign, near, perspective):
                        res = 4 * f + k
                        bs = s
    return res


@wp.func
def _fk_cross(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, fk: int,
              horizontal: int, cx: Any, cy: Any, sign: Any, near: Any, perspective: int):
    """``_code_cross`` of edge ``fk = 4 f + k``."""
    return _code_cross(screen, b, _edge_ends(screen, faces, b, fk // 4, fk - (fk // 4) * 4, near, perspective),
                       horizontal, cx, cy, sign, near)


@wp.func
def _find_silhouette(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                     neighbors: wp.array2d(dtype=wp.int32), facing: wp.array2d(dtype=wp.int32),
                     has_sil: wp.array2d(dtype=wp.int32), vstart: wp.array(dtype=wp.int32),
                     vfaces: wp.array(dtype=wp.int32), b: int, f: int, other: int, horizontal: int,
                     cx: Any, cy: Any, sign: Any, near: Any, perspective: int):
    """The outermost (largest s) accepted silhouette edge among face f and the faces sharing a
    vertex with f (near silhouette vertices and cusps the crossing edge belongs to a neighbour),
    as ``4 face + k``; -1 if none."""
    res = int(-1)
    best = cx - cx - type(cx)(1.0)
    if has_sil[b, f] != 0:
        res = _find_edge(screen, faces, neighbors, facing, b, f, other, horizontal, cx, cy, sign, near, perspective, best)
        if res >= 0:
            best = _fk_cross(screen, faces, b, res, horizontal, cx, cy, sign, near, perspective)
    for j in range(3):
        vi = faces[f, j]
        for e in range(vstart[vi], vstart[vi + 1]):
            g = vfaces[e]
            if g != f and has_sil[b, g] != 0:
                r2 = _find_edge(screen, faces, neighbors, facing, b, g, other, horizontal, cx, cy, sign, near,
                                perspective, best)
                if r2 >= 0:
                    best = _fk_cross(screen, faces, b, r2, horizontal, cx, cy, sign, near, perspective)
                    res = r2
    return res


@wp.func
def _find_binned(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                 entries: wp.array2d(dtype=wp.int32), seg: wp.array2d(dtype=Any), component: wp.array(dtype=wp.int32), starts: wp.array(dtype=wp.int32),
                 items: wp.array(dtype=wp.int32), t: int, b: int, fc: int, other: int, horizontal: int, cx: Any,
                 cy: Any, sign: Any, near: Any, perspective: int):
    """The outermost accepted silhouette edge among the entries binned to tile t (ties: the lower
    entry index) whose face lies in the same connected component as ``fc`` (the face seen at
    (cx, cy)), as ``4 face + k``; -1 if none. ``seg``: the entries' screen segments
    (``entry_geometry``)."""
    res = int(-1)
    best = cx - cx - type(cx)(1.0)
    best_i = int(-1)
    cc = component[fc]
    for i in range(starts[t], starts[t + 1]):
        en = items[i]
        f = entries[en, 1]
        if component[f] == cc:
            s = _cross(seg[en, 0], seg[en, 1], seg[en, 2], seg[en, 3], horizontal, cx, cy, sign)
            if s > best or (s == best and s >= cx - cx and en < best_i):
                if _accept(screen, faces, b, f, entries[en, 2], other, s, horizontal, cx, cy, sign, near, perspective):
                    res = 4 * f + entries[en, 2]
                    best = s
                    best_i = en
    return res


@wp.kernel
def entry_geometry(offset: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                   entries: wp.array2d(dtype=wp.int32), near: Any, perspective: int, seg: wp.array2d(dtype=Any)):
    """Screen segment (ax, ay, bx, by) of each listed edge (its visible part, ``_edge_ends``)."""
    en = wp.tid() + offset
    b = entries[en, 0]
    e = _edge_ends(screen, faces, b, entries[en, 1], entries[en, 2], near, perspective)
    seg[en, 0] = _end_coord(screen, b, e[0], e[1], 0, near)
    seg[en, 1] = _end_coord(screen, b, e[0], e[1], 1, near)
    seg[en, 2] = _end_coord(screen, b, e[2], e[3], 0, near)
    seg[en, 3] = _end_coord(screen, b, e[2], e[3], 1, near)


@wp.kernel
def face_facing(offset: int, blk: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                perspective: int, facing: wp.array2d(dtype=wp.int32)):
    """facing[b, f] = +1 / -1: orientation of the face towards view b's camera (``_facing``)."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for t in range(j * blk, wp.min(j * blk + blk, facing.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        facing[b, f] = _facing(screen, faces, b, f, perspective)


@wp.kernel
def face_has_silhouette(offset: int, blk: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                        neighbors: wp.array2d(dtype=wp.int32), facing: wp.array2d(dtype=wp.int32), near: Any,
                        perspective: int, has_sil: wp.array2d(dtype=wp.int32), entry: wp.array(dtype=wp.int32, ndim=3)):
    """has_sil[b, f] = 1 when one of f's edges (or its clip edge) is a silhouette in view b;
    entry[b, f, k] = 1 for the silhouette edges listed for the binned search: each visible
    silhouette edge once (a fold by its lower face index) and the clip edges."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for t in range(j * blk, wp.min(j * blk + blk, has_sil.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        h = int(0)
        clipped = _clipped(screen, faces, b, f, near, perspective)
        drawn = int(-1)  # _tri_ok at the first silhouette edge only (1.3% of the benchmark torus's faces have one)
        for k in range(4):
            v = int(0)
            if _sil_edge(neighbors, facing, clipped, b, f, k):
                h = 1
                if drawn < 0:
                    drawn = int(_tri_ok(screen, faces, b, f, near, perspective))
                if drawn > 0 and _edge_ends(screen, faces, b, f, k, near, perspective)[0] >= 0:
                    v = 1
                    if k < 3:
                        nb = neighbors[f, k]
                        if nb >= 0 and nb < f:
                            v = 0
            entry[b, f, k] = v
        has_sil[b, f] = h


@wp.kernel
def vertex_silhouette(offset: int, blk: int, faces: wp.array2d(dtype=wp.int32), has_sil: wp.array2d(dtype=wp.int32),
                      vert_sil: wp.array2d(dtype=wp.int32)):
    """vert_sil[b, v] = 1 for the vertices of faces with a silhouette edge (zero-initialised).
    Several threads may store into one entry, always the same value 1 and nothing else, so the
    launch may be split over CPU threads (the result does not depend on the order)."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for t in range(j * blk, wp.min(j * blk + blk, has_sil.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        if has_sil[b, f] != 0:
            vert_sil[b, faces[f, 0]] = 1
            vert_sil[b, faces[f, 1]] = 1
            vert_sil[b, faces[f, 2]] = 1


@wp.kernel
def face_near_silhouette(offset: int, blk: int, faces: wp.array2d(dtype=wp.int32), vert_sil: wp.array2d(dtype=wp.int32),
                         near_sil: wp.array2d(dtype=wp.int32)):
    """near_sil[b, f] = 1 when a face sharing a vertex with f (or f) has a silhouette edge: only
    then can the vertex-fan search of ``silhouette_pairs`` starting at f find anything."""
    j = wp.tid() + offset
    F = faces.shape[0]
    for t in range(j * blk, wp.min(j * blk + blk, near_sil.shape[0] * F)):  # a block of faces per thread (face_launch)
        b = t // F
        f = t - b * F
        near_sil[b, f] = wp.max(wp.max(vert_sil[b, faces[f, 0]], vert_sil[b, faces[f, 1]]), vert_sil[b, faces[f, 2]])


@wp.func
def _entry_range(seg: wp.array2d(dtype=Any), en: int, H: int, W: int):
    """Padded-pixel index ranges (x_lo, x_hi, y_lo, y_hi) whose centres lie within one pixel of
    the box of entry en's segment (padded pixel i has its centre at i - 0.5), clamped to the
    padded image [0, W + 1] x [0, H + 1]."""
    ax = seg[en, 0]
    half = type(ax)(1.5)
    lim = type(ax)(W + H + 8)
    x0 = wp.clamp(wp.min(ax, seg[en, 2]), -lim, lim)
    x1 = wp.clamp(wp.max(ax, seg[en, 2]), -lim, lim)
    y0 = wp.clamp(wp.min(seg[en, 1], seg[en, 3]), -lim, lim)
    y1 = wp.clamp(wp.max(seg[en, 1], seg[en, 3]), -lim, lim)
    return wp.vec4i(wp.max(int(wp.ceil(x0 - half)) + 1, 0), wp.min(int(wp.floor(x1 + half)), W + 1),
                    wp.max(int(wp.ceil(y0 - half)) + 1, 0), wp.min(int(wp.floor(y1 + half)), H + 1))


@wp.kernel
def edge_bin_count(entries: wp.array2d(dtype=wp.int32), seg: wp.array2d(dtype=Any), H: int, W: int, tile: int,
                   tiles_x: int, tiles_y: int, counts: wp.array(dtype=wp.int32)):
    """Counts the silhouette entries per tile of the padded image (atomics: one unsplit launch)."""
    en = wp.tid()
    r = _entry_range(seg, en, H, W)
    if r[0] <= r[1] and r[2] <= r[3]:
        base = entries[en, 0] * tiles_x * tiles_y
        for ty in range(r[2] // tile, r[3] // tile + 1):
            for tx in range(r[0] // tile, r[1] // tile + 1):
                wp.atomic_add(counts, base + ty * tiles_x + tx, 1)


@wp.kernel
def edge_bin_fill(entries: wp.array2d(dtype=wp.int32), seg: wp.array2d(dtype=Any), H: int, W: int, tile: int,
                  tiles_x: int, tiles_y: int, starts: wp.array(dtype=wp.int32), cursor: wp.array(dtype=wp.int32),
                  items: wp.array(dtype=wp.int32)):
    en = wp.tid()
    r = _entry_range(seg, en, H, W)
    if r[0] <= r[1] and r[2] <= r[3]:
        base = entries[en, 0] * tiles_x * tiles_y
        for ty in range(r[2] // tile, r[3] // tile + 1):
            for tx in range(r[0] // tile, r[1] // tile + 1):
                k = base + ty * tiles_x + tx
                slot = wp.atomic_add(cursor, k, 1)
                items[starts[k] + slot] = en


@wp.func
def _padded_face(face_id: wp.array(dtype=wp.int32, ndim=3), b: int, py: int, px: int):
    H = face_id.shape[1]
    W = face_id.shape[2]
    f = int(-1)
    if py >= 1 and py <= H and px >= 1 and px <= W:
        f = face_id[b, py - 1, px - 1]
    return f


@wp.kernel
def silhouette_pairs(offset: int, rows: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                     neighbors: wp.array2d(dtype=wp.int32), facing: wp.array2d(dtype=wp.int32),
                     has_sil: wp.array2d(dtype=wp.int32), near_sil: wp.array2d(dtype=wp.int32),
                     vstart: wp.array(dtype=wp.int32), vfaces: wp.array(dtype=wp.int32),
                     entries: wp.array2d(dtype=wp.int32), seg: wp.array2d(dtype=Any),
                     component: wp.array(dtype=wp.int32), starts: wp.array(dtype=wp.int32),
                     items: wp.array(dtype=wp.int32), tile: int, tiles_x: int, tiles_y: int,
                     face_id: wp.array(dtype=wp.int32, ndim=3), near: Any, perspective: int, border: int,
                     pairs: wp.array(dtype=wp.int32, ndim=4)):
    """One thread per padded pixel p = (py, px) of the (H + 2, W + 2) image with a ring of virtual
    background pixels (padded pixel (py, px) is image pixel (py - 1, px - 1)). For p and its right
    (d = 0) / lower (d = 1) neighbour q, both in the image (or one of them in the ring when
    ``border``), with different face ids: the silhouette edge separating them, written as
    ``pairs[b, py, px, d] = 2 (4 f + k) + side`` (edge k of face f, ``_edge_ends``; side = 0 when
    p is on the edge's face side, 1 when q is), -1 if none. Search order: the vertex fan of p's
    face, of q's face, then the binned entries from p's side, from q's side."""
    p = wp.tid() + offset
    H = face_id.shape[1]
    W = face_id.shape[2]
    Hp = H + 1
    Wp = W + 1
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    py = int(0)
    x_lo = int(0)
    x_hi = Wp
    if rows != 0:
        q = _row_of(p, rows, face_id.shape[0] * Hp)
        b = q // Hp
        py = q - b * Hp
    else:
        b = p // (Hp * Wp)
        r = p - b * Hp * Wp
        py = r // Wp
        x_lo = r - py * Wp
        x_hi = x_lo + 1
    for px in range(x_lo, x_hi):
        fa = _padded_face(face_id, b, py, px)
        s00 = screen[b, 0, 0]
        half = type(s00)(0.5)
        cx = type(s00)(px) - half
        cy = type(s00)(py) - half
        one = type(s00)(1.0)
        t = b * tiles_x * tiles_y + (py // tile) * tiles_x + px // tile
        for d in range(2):
            out = int(-1)
            qx = px + 1 - d
            qy = py + d
            ok = False
            if d == 0:
                ok = py >= 1 and py <= H and (border != 0 or (px >= 1 and qx <= W))
            else:
                ok = px >= 1 and px <= W and (border != 0 or (py >= 1 and qy <= H))
            if ok:
                fb = _padded_face(face_id, b, qy, qx)
                if fa != fb:
                    horizontal = 1 - d
                    qcx = type(s00)(qx) - half
                    qcy = type(s00)(qy) - half
                    res = int(-1)
                    sd = 0
                    if fa >= 0:
                        if near_sil[b, fa] != 0:
                            res = _find_silhouette(screen, faces, neighbors, facing, has_sil, vstart, vfaces, b, fa, fb,
                                                   horizontal, cx, cy, one, near, perspective)
                    if res < 0 and fb >= 0:
                        if near_sil[b, fb] != 0:
                            res = _find_silhouette(screen, faces, neighbors, facing, has_sil, vstart, vfaces, b, fb, fa,
                                                   horizontal, qcx, qcy, -one, near, perspective)
                            sd = 1
                    # the binned search, where the tile has entries; two adjacent faces of one orientation
                    # share a non-silhouette edge between p and q: no outline can separate them, so it is
                    # skipped (tested only when the search would run)
                    binned = res < 0 and starts[t + 1] > starts[t]
                    if binned and fa >= 0 and fb >= 0:
                        if facing[b, fa] == facing[b, fb]:
                            if neighbors[fa, 0] == fb or neighbors[fa, 1] == fb or neighbors[fa, 2] == fb:
                                binned = False
                    if binned:
                        sd = 0
                        if fa >= 0:
                            res = _find_binned(screen, faces, entries, seg, component, starts, items, t, b, fa, fb,
                                               horizontal, cx, cy, one, near, perspective)
                        if res < 0 and fb >= 0:
                            res = _find_binned(screen, faces, entries, seg, component, starts, items, t, b, fb, fa,
                                               horizontal, qcx, qcy, -one, near, perspective)
                            sd = 1
                    if res >= 0:
                        out = 2 * res + sd
            pairs[b, py, px, d] = out


# ---------------------------------------------------------------------------------------------
# the coverage blend of antialias (forward and hand-written adjoint), per pixel from the pair codes
# ---------------------------------------------------------------------------------------------

@wp.func
def _pad_color(color: wp.array(dtype=Any, ndim=4), ring: wp.array(dtype=Any), b: int, py: int, px: int, c: int):
    """Channel c of padded pixel (py, px): the image pixel (py - 1, px - 1), or the ring colour."""
    H = color.shape[1]
    W = color.shape[2]
    v = ring[c]
    if py >= 1 and py <= H and px >= 1 and px <= W:
        v = color[b, py - 1, px - 1, c]
    return v


@wp.func
def _pair_geom(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32), b: int, code: int, py: int,
               px: int, d: int, near: Any, perspective: int):
    """Blend geometry of pair (py, px, d) with code ``2 (4 f + k) + side``: (s, wdir, w_o, w_c) of
    :func:`diffvc.render.antialias.blend` (s: distance from the covered pixel's centre to the
    crossing, in pixels; wdir: the row / column weight of the edge; w_o, w_c: the coverage moved
    to the other / from the covered pixel)."""
    fk = code // 2
    sd = code - 2 * fk
    f = fk // 4
    e = _edge_ends(screen, faces, b, f, fk - 4 * f, near, perspective)
    ax = _end_coord(screen, b, e[0], e[1], 0, near)
    ay = _end_coord(screen, b, e[0], e[1], 1, near)
    bx = _end_coord(screen, b, e[2], e[3], 0, near)
    by = _end_coord(screen, b, e[2], e[3], 1, near)
    half = type(ax)(0.5)
    one = type(ax)(1.0)
    z = ax - ax
    cx = type(ax)(px) - half
    cy = type(ax)(py) - half
    ex = bx - ax
    ey = by - ay
    sp = z
    w = z
    if d == 0:
        den = ey
        if den == z:
            den = one
        sp = ax + (cy - ay) / den * ex - cx
        w = ey * ey
    else:
        den = ex
        if den == z:
            den = one
        sp = ay + (cx - ax) / den * ey - cy
        w = ex * ex
    s = sp
    if sd != 0:
        s = one - sp
    wdir = w / wp.max(ex * ex + ey * ey, type(ax)(1e-30))
    return s, wdir, wp.max(s - half, z) * wdir, wp.max(half - s, z) * wdir


@wp.func
def _blend_term(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                pairs: wp.array(dtype=wp.int32, ndim=4), color: wp.array(dtype=Any, ndim=4),
                ring: wp.array(dtype=Any), b: int, py: int, px: int, d: int, me: int, c: int, near: Any,
                perspective: int):
    """Change of channel c of pair (py, px, d)'s pixel ``me`` (0: p = (py, px), 1: its neighbour q)."""
    code = pairs[b, py, px, d]
    z = ring[c] - ring[c]
    r = z
    if code >= 0:
        s, wdir, w_o, w_c = _pair_geom(screen, faces, b, code, py, px, d, near, perspective)
        sd = code - 2 * (code // 2)
        qy = py + d
        qx = px + 1 - d
        cp = _pad_color(color, ring, b, py, px, c)
        cq = _pad_color(color, ring, b, qy, qx, c)
        cc = cp
        co = cq
        if sd != 0:
            cc = cq
            co = cp
        if me == sd:  # this pixel is the covered one
            r = w_c * (co - cc)
        else:
            r = w_o * (cc - co)
    return r


@wp.kernel
def blend_pairs(offset: int, rows: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                pairs: wp.array(dtype=wp.int32, ndim=4), color: wp.array(dtype=Any, ndim=4),
                ring: wp.array(dtype=Any), near: Any, perspective: int, out: wp.array(dtype=Any, ndim=4),
                bad: wp.array(dtype=wp.int32)):
    """out = color plus the coverage moved across each silhouette pair touching the pixel (the
    forward of ``blend``, gathered per image pixel: its pairs to the right, below, from the left
    and from above). ``bad[0]`` is set to 1 when a colour value is not finite."""
    p = wp.tid() + offset
    H = color.shape[1]
    W = color.shape[2]
    C = color.shape[3]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    y = int(0)
    x_lo = int(0)
    x_hi = W
    if rows != 0:
        q = _row_of(p, rows, color.shape[0] * H)
        b = q // H
        y = q - b * H
    else:
        b = p // (H * W)
        r = p - b * H * W
        y = r // W
        x_lo = r - y * W
        x_hi = x_lo + 1
    for x in range(x_lo, x_hi):
        py = y + 1
        px = x + 1
        c0 = pairs[b, py, px, 0]
        c1 = pairs[b, py, px, 1]
        c2 = pairs[b, py, px - 1, 0]
        c3 = pairs[b, py - 1, px, 1]
        for c in range(C):
            v = color[b, y, x, c]
            if not wp.isfinite(v):
                bad[0] = 1
            if c0 >= 0:
                v = v + _blend_term(screen, faces, pairs, color, ring, b, py, px, 0, 0, c, near, perspective)
            if c1 >= 0:
                v = v + _blend_term(screen, faces, pairs, color, ring, b, py, px, 1, 0, c, near, perspective)
            if c2 >= 0:
                v = v + _blend_term(screen, faces, pairs, color, ring, b, py, px - 1, 0, 1, c, near, perspective)
            if c3 >= 0:
                v = v + _blend_term(screen, faces, pairs, color, ring, b, py - 1, px, 1, 1, c, near, perspective)
            out[b, y, x, c] = v


@wp.func
def _pad_grad(g_out: wp.array(dtype=Any, ndim=4), b: int, py: int, px: int, c: int):
    H = g_out.shape[1]
    W = g_out.shape[2]
    v = g_out[0, 0, 0, 0] - g_out[0, 0, 0, 0]
    if py >= 1 and py <= H and px >= 1 and px <= W:
        v = g_out[b, py - 1, px - 1, c]
    return v


@wp.func
def _color_adj(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
               pairs: wp.array(dtype=wp.int32, ndim=4), g_out: wp.array(dtype=Any, ndim=4), b: int, py: int,
               px: int, d: int, me: int, c: int, near: Any, perspective: int):
    """d(loss)/d(colour c of pixel ``me`` of pair (py, px, d)) through that pair's blend terms."""
    code = pairs[b, py, px, d]
    r = g_out[0, 0, 0, 0] - g_out[0, 0, 0, 0]
    if code >= 0:
        s, wdir, w_o, w_c = _pair_geom(screen, faces, b, code, py, px, d, near, perspective)
        sd = code - 2 * (code // 2)
        gp = _pad_grad(g_out, b, py, px, c)
        gq = _pad_grad(g_out, b, py + d, px + 1 - d, c)
        gc = gp
        go = gq
        if sd != 0:
            gc = gq
            go = gp
        # out_o += w_o (C_c - C_o), out_c += w_c (C_o - C_c)
        r = w_o * go - w_c * gc
        if me != sd:  # this pixel is the other one
            r = -r
    return r


@wp.func
def _end_adj(screen: wp.array(dtype=Any, ndim=3), b: int, i: int, j: int, gx: Any, gy: Any, near: Any,
             g_screen: wp.array(dtype=Any, ndim=3)):
    """Adds the gradient (gx, gy) of endpoint (i, j) (``_end_coord``) to the screen vertices."""
    if i == j:
        wp.atomic_add(g_screen, b, i, 0, gx)
        wp.atomic_add(g_screen, b, i, 1, gy)
    else:
        di = screen[b, i, 2]
        dj = screen[b, j, 2]
        xi = screen[b, i, 0]
        yi = screen[b, i, 1]
        xj = screen[b, j, 0]
        yj = screen[b, j, 1]
        den = dj - di
        t = (near - di) / den
        one = type(di)(1.0)
        # c = ((1 - t) P_i d_i + t P_j d_j) / near
        wp.atomic_add(g_screen, b, i, 0, gx * (one - t) * di / near)
        wp.atomic_add(g_screen, b, i, 1, gy * (one - t) * di / near)
        wp.atomic_add(g_screen, b, j, 0, gx * t * dj / near)
        wp.atomic_add(g_screen, b, j, 1, gy * t * dj / near)
        gt = (gx * (xj * dj - xi * di) + gy * (yj * dj - yi * di)) / near
        gdi = (gx * xi + gy * yi) * (one - t) / near + gt * (near - dj) / (den * den)
        gdj = (gx * xj + gy * yj) * t / near - gt * (near - di) / (den * den)
        wp.atomic_add(g_screen, b, i, 2, gdi)
        wp.atomic_add(g_screen, b, j, 2, gdj)


@wp.func
def _pair_geom_adj(screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                   pairs: wp.array(dtype=wp.int32, ndim=4), color: wp.array(dtype=Any, ndim=4),
                   ring: wp.array(dtype=Any), g_out: wp.array(dtype=Any, ndim=4), b: int, code: int, py: int,
                   px: int, d: int, near: Any, perspective: int, g_screen: wp.array(dtype=Any, ndim=3)):
    """Adds d(loss)/d(screen) through the blend weights of pair (py, px, d) (``_pair_geom``)."""
    C = color.shape[3]
    fk = code // 2
    sd = code - 2 * fk
    f = fk // 4
    e = _edge_ends(screen, faces, b, f, fk - 4 * f, near, perspective)
    ax = _end_coord(screen, b, e[0], e[1], 0, near)
    ay = _end_coord(screen, b, e[0], e[1], 1, near)
    bx = _end_coord(screen, b, e[2], e[3], 0, near)
    by = _end_coord(screen, b, e[2], e[3], 1, near)
    half = type(ax)(0.5)
    one = type(ax)(1.0)
    z = ax - ax
    cx = type(ax)(px) - half
    cy = type(ax)(py) - half
    ex = bx - ax
    ey = by - ay
    qy = py + d
    qx = px + 1 - d
    # d(loss)/d(w_o), d(loss)/d(w_c)
    gwo = z
    gwc = z
    for c in range(C):
        cp = _pad_color(color, ring, b, py, px, c)
        cq = _pad_color(color, ring, b, qy, qx, c)
        gp = _pad_grad(g_out, b, py, px, c)
        gq = _pad_grad(g_out, b, qy, qx, c)
        if sd == 0:
            gwo = gwo + gq * (cp - cq)
            gwc = gwc + gp * (cq - cp)
        else:
            gwo = gwo + gp * (cq - cp)
            gwc = gwc + gq * (cp - cq)
    l2raw = ex * ex + ey * ey
    l2 = wp.max(l2raw, type(ax)(1e-30))
    wnum = ey * ey
    if d != 0:
        wnum = ex * ex
    wdir = wnum / l2
    # s = s_p (sd = 0) or 1 - s_p; w_o = max(s - 1/2, 0) wdir, w_c = max(1/2 - s, 0) wdir
    # (clamp_min passes the gradient where its input is >= 0, as torch does)
    sp = z
    den = z
    dflag = True
    if d == 0:
        den = ey
    else:
        den = ex
    if den == z:
        den = one
        dflag = False
    tt = z
    if d == 0:
        tt = (cy - ay) / den
        sp = ax + tt * ex - cx
    else:
        tt = (cx - ax) / den
        sp = ay + tt * ey - cy
    s = sp
    if sd != 0:
        s = one - sp
    gs = z
    gw = z
    if s - half >= z:
        gs = gs + gwo * wdir
        gw = gw + gwo * (s - half)
    if half - s >= z:
        gs = gs - gwc * wdir
        gw = gw + gwc * (half - s)
    gsp = gs
    if sd != 0:
        gsp = -gs
    # wdir = wnum / l2
    gex = z
    gey = z
    if d == 0:
        gey = gw * type(ax)(2.0) * ey / l2
    else:
        gex = gw * type(ax)(2.0) * ex / l2
    if l2raw >= type(ax)(1e-30):
        gex = gex - gw * wnum * type(ax)(2.0) * ex / (l2 * l2)
        gey = gey - gw * wnum * type(ax)(2.0) * ey / (l2 * l2)
    gax = z
    gay = z
    gbx = z
    gby = z
    if d == 0:
        # sp = ax + tt ex - cx, tt = (cy - ay) / den, den = ey
        gax = gsp
        gex = gex + gsp * tt
        gtt = gsp * ex
        gay = -gtt / den
        if dflag:
            gey = gey - gtt * tt / den
    else:
        gay = gsp
        gey = gey + gsp * tt
        gtt = gsp * ey
        gax = -gtt / den
        if dflag:
            gex = gex - gtt * tt / den
    gax = gax - gex
    gbx = gbx + gex
    gay = gay - gey
    gby = gby + gey
    _end_adj(screen, b, e[0], e[1], gax, gay, near, g_screen)
    _end_adj(screen, b, e[2], e[3], gbx, gby, near, g_screen)


@wp.kernel
def blend_pairs_adj(offset: int, rows: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                    pairs: wp.array(dtype=wp.int32, ndim=4), color: wp.array(dtype=Any, ndim=4),
                    ring: wp.array(dtype=Any), g_out: wp.array(dtype=Any, ndim=4), near: Any, perspective: int,
                    g_color: wp.array(dtype=Any, ndim=4), g_ring: wp.array(dtype=Any),
                    g_screen: wp.array(dtype=Any, ndim=3)):
    """Adjoint of :func:`blend_pairs`, one thread per padded pixel P of the (H + 2, W + 2) image:
    the colour gradient of P gathered from the (up to four) pairs touching it (image pixels:
    ``g_color``, written; ring pixels: added to ``g_ring``), and the screen-vertex gradient of
    P's own two pairs added to ``g_screen`` (give each CPU thread range its own ``g_ring`` and
    ``g_screen``)."""
    p = wp.tid() + offset
    H = color.shape[1]
    W = color.shape[2]
    C = color.shape[3]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    py = int(0)
    x_lo = int(0)
    x_hi = (W + 2)
    if rows != 0:
        q = _row_of(p, rows, color.shape[0] * (H + 2))
        b = q // (H + 2)
        py = q - b * (H + 2)
    else:
        b = p // ((H + 2) * (W + 2))
        r = p - b * (H + 2) * (W + 2)
        py = r // (W + 2)
        x_lo = r - py * (W + 2)
        x_hi = x_lo + 1
    for px in range(x_lo, x_hi):
        inside = py >= 1 and py <= H and px >= 1 and px <= W
        for c in range(C):
            v = _pad_grad(g_out, b, py, px, c)
            if py <= H and px <= W:
                v = v + _color_adj(screen, faces, pairs, g_out, b, py, px, 0, 0, c, near, perspective)
                v = v + _color_adj(screen, faces, pairs, g_out, b, py, px, 1, 0, c, near, perspective)
            if px >= 1 and py <= H:
                v = v + _color_adj(screen, faces, pairs, g_out, b, py, px - 1, 0, 1, c, near, perspective)
            if py >= 1 and px <= W:
                v = v + _color_adj(screen, faces, pairs, g_out, b, py - 1, px, 1, 1, c, near, perspective)
            if inside:
                g_color[b, py - 1, px - 1, c] = v
            else:
                g_ring[c] = g_ring[c] + v
        if py <= H and px <= W:
            for d in range(2):
                code = pairs[b, py, px, d]
                if code >= 0:
                    _pair_geom_adj(screen, faces, pairs, color, ring, g_out, b, code, py, px, d, near, perspective,
                                   g_screen)


@wp.func
def _pair_at(pairs: wp.array(dtype=wp.int32, ndim=4), lin: int):
    """(b, py, px, d) of the flat index ``lin`` into ``pairs`` (B, H + 1, W + 1, 2)."""
    H1 = pairs.shape[1]
    W1 = pairs.shape[2]
    r = lin // 2
    d = lin - 2 * r
    r2 = r // W1
    px = r - r2 * W1
    b = r2 // H1
    py = r2 - b * H1
    return wp.vec4i(b, py, px, d)


@wp.func
def _add_pixel(out: wp.array(dtype=Any, ndim=4), b: int, py: int, px: int, c: int, v: Any):
    """out[b, py - 1, px - 1, c] += v for an image pixel of the padded grid (ring pixels: no-op)."""
    if py >= 1 and py <= out.shape[1] and px >= 1 and px <= out.shape[2]:
        wp.atomic_add(out, b, py - 1, px - 1, c, v)


@wp.kernel
def blend_sparse(offset: int, found: wp.array(dtype=wp.int32), screen: wp.array(dtype=Any, ndim=3),
                 faces: wp.array2d(dtype=wp.int32), pairs: wp.array(dtype=wp.int32, ndim=4),
                 color: wp.array(dtype=Any, ndim=4), ring: wp.array(dtype=Any), near: Any, perspective: int,
                 out: wp.array(dtype=Any, ndim=4)):
    """The forward of ``blend`` scattered per detected pair: ``out`` holds ``color`` on entry and
    gets the coverage moved across each pair ``found[i]`` (flat indices into ``pairs``) added to
    its two pixels. Pairs sharing a pixel add into it: split it only into ranges of pairs whose
    pixels are disjoint (:func:`pair_ranges`)."""
    lin = found[wp.tid() + offset]
    q4 = _pair_at(pairs, lin)
    b = q4[0]
    py = q4[1]
    px = q4[2]
    d = q4[3]
    code = pairs[b, py, px, d]
    s, wdir, w_o, w_c = _pair_geom(screen, faces, b, code, py, px, d, near, perspective)
    sd = code - 2 * (code // 2)
    qy = py + d
    qx = px + 1 - d
    for c in range(color.shape[3]):
        cp = _pad_color(color, ring, b, py, px, c)
        cq = _pad_color(color, ring, b, qy, qx, c)
        if sd == 0:  # p covered: p += w_c (C_q - C_p), q += w_o (C_p - C_q)
            _add_pixel(out, b, py, px, c, w_c * (cq - cp))
            _add_pixel(out, b, qy, qx, c, w_o * (cp - cq))
        else:
            _add_pixel(out, b, qy, qx, c, w_c * (cp - cq))
            _add_pixel(out, b, py, px, c, w_o * (cq - cp))


@wp.func
def _add_grad(g_color: wp.array(dtype=Any, ndim=4), g_ring: wp.array(dtype=Any), b: int, py: int, px: int, c: int,
              v: Any):
    """Adds v to the colour gradient of padded pixel (py, px): ``g_color`` inside, ``g_ring`` on the ring."""
    if py >= 1 and py <= g_color.shape[1] and px >= 1 and px <= g_color.shape[2]:
        wp.atomic_add(g_color, b, py - 1, px - 1, c, v)
    else:
        wp.atomic_add(g_ring, c, v)


@wp.kernel
def blend_sparse_adj(offset: int, found: wp.array(dtype=wp.int32), screen: wp.array(dtype=Any, ndim=3),
                     faces: wp.array2d(dtype=wp.int32), pairs: wp.array(dtype=wp.int32, ndim=4),
                     color: wp.array(dtype=Any, ndim=4), ring: wp.array(dtype=Any), g_out: wp.array(dtype=Any, ndim=4),
                     near: Any, perspective: int, g_color: wp.array(dtype=Any, ndim=4), g_ring: wp.array(dtype=Any),
                     g_screen: wp.array(dtype=Any, ndim=3)):
    """Adjoint of :func:`blend_sparse` per pair: ``g_color`` holds ``g_out`` on entry (the identity
    part) and gets each pair's colour terms; ring pixels add to ``g_ring``; the blend weights'
    gradient goes to ``g_screen`` (``_pair_geom_adj``). Split as :func:`blend_sparse`, each range
    with its own ``g_ring`` and ``g_screen``."""
    lin = found[wp.tid() + offset]
    q4 = _pair_at(pairs, lin)
    b = q4[0]
    py = q4[1]
    px = q4[2]
    d = q4[3]
    code = pairs[b, py, px, d]
    s, wdir, w_o, w_c = _pair_geom(screen, faces, b, code, py, px, d, near, perspective)
    sd = code - 2 * (code // 2)
    qy = py + d
    qx = px + 1 - d
    for c in range(color.shape[3]):
        gp = _pad_grad(g_out, b, py, px, c)
        gq = _pad_grad(g_out, b, qy, qx, c)
        if sd == 0:  # covered p, other q: out_p += w_c (C_q - C_p), out_q += w_o (C_p - C_q)
            _add_grad(g_color, g_ring, b, py, px, c, w_o * gq - w_c * gp)
            _add_grad(g_color, g_ring, b, qy, qx, c, w_c * gp - w_o * gq)
        else:
            _add_grad(g_color, g_ring, b, qy, qx, c, w_o * gp - w_c * gq)
            _add_grad(g_color, g_ring, b, py, px, c, w_c * gq - w_o * gp)
    _pair_geom_adj(screen, faces, pairs, color, ring, g_out, b, code, py, px, d, near, perspective, g_screen)


def _instantiate(kernel) -> None:
    """Explicit float32 / float64 overloads, so the module is built before a split launch's
    worker threads run (a generic kernel would otherwise be specialised lazily at launch)."""
    for scalar in (wp.float32, wp.float64):
        types = {}
        for name, ann in kernel.adj.arg_types.items():
            if ann is Any:
                types[name] = scalar
            elif isinstance(ann, wp.array) and ann.dtype is Any:
                types[name] = wp.array(dtype=scalar, ndim=ann.ndim)
        wp.overload(kernel, types)


for _k in (tri_setup, raster_tiles, raster_pixels, barycentrics, interpolate_attr, silhouette_pairs,
           face_facing, face_has_silhouette, edge_bin_count, edge_bin_fill, entry_geometry, blend_pairs,
           blend_pairs_adj, blend_sparse, blend_sparse_adj):
    _instantiate(_k)


# ---------------------------------------------------------------------------------------------
# per-pixel kernels as autograd functions whose forward AND adjoint run split over CPU threads.
# The adjoints write per-pixel gradients at the thread's own entries (disjoint) and scatter
# vertex gradients with atomics, which are not atomic across Warp CPU threads: every thread range
# gets its own vertex-gradient buffer and the buffers are summed afterwards.
# ---------------------------------------------------------------------------------------------

import torch  # noqa: E402

from .bridge import launch, parallel_launch, run_split, split_chunks  # noqa: E402,F401
from .._validate import all_finite  # noqa: E402


# ---------------------------------------------------------------------------------------------
# hand-written adjoints of the two per-pixel kernels (cheaper than Warp's generated replay)
# ---------------------------------------------------------------------------------------------

@wp.kernel
def barycentrics_adj(offset: int, rows: int, screen: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                     face_id: wp.array(dtype=wp.int32, ndim=3), perspective: int,
                     bary: wp.array(dtype=Any, ndim=4), g_bary: wp.array(dtype=Any, ndim=4),
                     g_depth: wp.array(dtype=Any, ndim=3), grads: int, g_screen: wp.array(dtype=Any, ndim=3)):
    """Adds d(loss)/d(screen) of :func:`barycentrics` for the pixel (atomics into ``g_screen``:
    give each CPU thread range its own buffer). ``grads``: bit 0 set when ``g_bary`` is given, bit 1
    when ``g_depth`` is (an absent one is read as zeros; pass any array of the dtype)."""
    p = wp.tid() + offset
    H = face_id.shape[1]
    W = face_id.shape[2]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    y = int(0)
    x_lo = int(0)
    x_hi = W
    if rows != 0:
        q = _row_of(p, rows, face_id.shape[0] * H)
        b = q // H
        y = q - b * H
    else:
        b = p // (H * W)
        r = p - b * H * W
        y = r // W
        x_lo = r - y * W
        x_hi = x_lo + 1
    for x in range(x_lo, x_hi):
        f = face_id[b, y, x]
        if f >= 0:
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            x0 = screen[b, i0, 0]
            y0 = screen[b, i0, 1]
            x1 = screen[b, i1, 0]
            y1 = screen[b, i1, 1]
            x2 = screen[b, i2, 0]
            y2 = screen[b, i2, 1]
            d0 = screen[b, i0, 2]
            d1 = screen[b, i1, 2]
            d2 = screen[b, i2, 2]
            one = type(x0)(1.0)
            px = type(x0)(x) + type(x0)(0.5)
            py = type(x0)(y) + type(x0)(0.5)
            area = _edge(x0, y0, x1, y1, x2, y2)
            e0 = _edge(x1, y1, x2, y2, px, py)
            e1 = _edge(x2, y2, x0, y0, px, py)
            # reciprocals once (5 divisions per pixel instead of 20: the divider bounds this kernel)
            ia = one / area
            l0 = e0 * ia
            l1 = e1 * ia
            l2 = one - l0 - l1
            gb0 = one - one
            gb1 = gb0
            gb2 = gb0
            gd = gb0
            if grads & 1 != 0:
                gb0 = g_bary[b, y, x, 0]
                gb1 = g_bary[b, y, x, 1]
                gb2 = g_bary[b, y, x, 2]
            if grads & 2 != 0:
                gd = g_depth[b, y, x]
            gl0 = gb0
            gl1 = gb1
            gl2 = gb2
            gd0 = gd - gd
            gd1 = gd0
            gd2 = gd0
            if perspective != 0:
                r0 = one / d0
                r1 = one / d1
                r2 = one / d2
                s = l0 * r0 + l1 * r1 + l2 * r2
                dot = gb0 * bary[b, y, x, 0] + gb1 * bary[b, y, x, 1] + gb2 * bary[b, y, x, 2]
                si = one / s
                gds = gd * si * si
                gq0 = (gb0 - dot) * si - gds
                gq1 = (gb1 - dot) * si - gds
                gq2 = (gb2 - dot) * si - gds
                gl0 = gq0 * r0
                gl1 = gq1 * r1
                gl2 = gq2 * r2
                gd0 = -gl0 * l0 * r0
                gd1 = -gl1 * l1 * r1
                gd2 = -gl2 * l2 * r2
            else:
                gl0 = gb0 + gd * d0
                gl1 = gb1 + gd * d1
                gl2 = gb2 + gd * d2
                gd0 = gd * l0
                gd1 = gd * l1
                gd2 = gd * l2
            # l2 = 1 - l0 - l1
            ga0 = gl0 - gl2
            ga1 = gl1 - gl2
            ge0 = ga0 * ia
            ge1 = ga1 * ia
            gar = -(ga0 * e0 + ga1 * e1) * ia * ia
            # e0 = E(v1, v2, p), e1 = E(v2, v0, p), area = E(v0, v1, v2)
            gx0 = ge1 * (py - y2) + gar * (y1 - y2)
            gy0 = -ge1 * (px - x2) + gar * (x2 - x1)
            gx1 = ge0 * (y2 - py) + gar * (y2 - y0)
            gy1 = ge0 * (px - x2) + gar * (x0 - x2)
            gx2 = ge0 * (py - y1) + ge1 * (y0 - py) + gar * (y0 - y1)
            gy2 = -ge0 * (px - x1) + ge1 * (px - x0) + gar * (x1 - x0)
            wp.atomic_add(g_screen, b, i0, 0, gx0)
            wp.atomic_add(g_screen, b, i0, 1, gy0)
            wp.atomic_add(g_screen, b, i0, 2, gd0)
            wp.atomic_add(g_screen, b, i1, 0, gx1)
            wp.atomic_add(g_screen, b, i1, 1, gy1)
            wp.atomic_add(g_screen, b, i1, 2, gd1)
            wp.atomic_add(g_screen, b, i2, 0, gx2)
            wp.atomic_add(g_screen, b, i2, 1, gy2)
            wp.atomic_add(g_screen, b, i2, 2, gd2)


@wp.kernel
def interpolate_adj(offset: int, rows: int, attr: wp.array(dtype=Any, ndim=3), faces: wp.array2d(dtype=wp.int32),
                    face_id: wp.array(dtype=wp.int32, ndim=3), bary: wp.array(dtype=Any, ndim=4),
                    g_out: wp.array(dtype=Any, ndim=4), need_attr: int,
                    g_attr: wp.array(dtype=Any, ndim=3), g_bary: wp.array(dtype=Any, ndim=4)):
    """Adjoint of :func:`interpolate_attr`: g_bary at the pixel (own entries), g_attr scattered
    with atomics (give each CPU thread range its own buffer)."""
    p = wp.tid() + offset
    H = face_id.shape[1]
    W = face_id.shape[2]
    C = attr.shape[2]
    # CPU (rows >= 1, a row stride: _row_of): one thread per image row, looping over its pixels (a thread per pixel
    # costs ~10 ns of launch overhead each); CUDA: one thread per pixel
    b = int(0)
    y = int(0)
    x_lo = int(0)
    x_hi = W
    if rows != 0:
        q = _row_of(p, rows, face_id.shape[0] * H)
        b = q // H
        y = q - b * H
    else:
        b = p // (H * W)
        r = p - b * H * W
        y = r // W
        x_lo = r - y * W
        x_hi = x_lo + 1
    zero = type(attr[0, 0, 0])(0.0)
    for x in range(x_lo, x_hi):
        f = face_id[b, y, x]
        gb0 = zero
        gb1 = zero
        gb2 = zero
        if f >= 0:
            i0 = faces[f, 0]
            i1 = faces[f, 1]
            i2 = faces[f, 2]
            w0 = bary[b, y, x, 0]
            w1 = bary[b, y, x, 1]
            w2 = bary[b, y, x, 2]
            for c in range(C):
                g = g_out[b, y, x, c]
                gb0 = gb0 + g * attr[b, i0, c]
                gb1 = gb1 + g * attr[b, i1, c]
                gb2 = gb2 + g * attr[b, i2, c]
                if need_attr != 0:
                    wp.atomic_add(g_attr, b, i0, c, g * w0)
                    wp.atomic_add(g_attr, b, i1, c, g * w1)
                    wp.atomic_add(g_attr, b, i2, c, g * w2)
        g_bary[b, y, x, 0] = gb0
        g_bary[b, y, x, 1] = gb1
        g_bary[b, y, x, 2] = gb2


_instantiate(barycentrics_adj)
_instantiate(interpolate_adj)


FACE_BLOCK = 64  # (view, face) items per CPU thread of the per-face kernels


def face_launch(n: int, device) -> tuple[int, int, int]:
    """How a per-item kernel (``tri_setup``, ``bin_fill``, the silhouette flags; the normals, soft
    silhouette and texture-lookup kernels) is launched over ``n`` items (here (view, face) pairs):
    ``(blk, threads, min_per_thread)`` for
    ``parallel_launch(kernel, threads, [blk, ...], min_per_thread=...)``. On the CPU a thread takes
    a block of ``FACE_BLOCK`` consecutive items (a Warp CPU thread costs ~10 ns of launch overhead:
    ~1 ms per 100k-face kernel otherwise); on CUDA one item per thread."""
    if torch.device(device).type == "cpu":
        return FACE_BLOCK, (n + FACE_BLOCK - 1) // FACE_BLOCK, max(1, 4096 // FACE_BLOCK)
    return 1, n, 4096


def pixel_launch(B: int, H: int, W: int, device) -> tuple[int, int, int]:
    """How the per-pixel kernels are launched over a (B, H, W) image: ``(rows, n, min_per_thread)``
    for ``parallel_launch(kernel, n, [rows, ...], min_per_thread=...)``: on the CPU one thread per
    row (``rows`` >= 1: thread p takes row ``p * rows mod B H``, ``_row_of``; chunks of at least
    ~4096 pixels), on CUDA one thread per pixel (``rows = 0``). The CPU uses ``rows = 1``
    (contiguous bands of rows per thread range): a stride coprime with B H balances the ranges
    better but loses the reuse of neighbouring rows (measured on the 100k-triangle torus at 512^2,
    2 threads: the slowest range 10-25% slower in four of the five kernels)."""
    if torch.device(device).type == "cpu":
        return 1, B * H, max(1, 4096 // max(W, 1))
    return 0, B * H * W, 4096


ROW_BACKGROUND_COST = 0.1  # a background pixel's cost in the per-pixel kernels, relative to a covered one
_ROW_RANGES: dict = {}  # (face_id pointer, version, shape, chunks) -> balanced row ranges (row_ranges)


def row_ranges(face_id: torch.Tensor, n: int, min_per_thread: int) -> list | None:
    """Thread ranges ``(start, count)`` of image rows (view-major, ``n = B * H``) for a split CPU
    launch of a per-pixel kernel (:func:`pixel_launch`, one thread per row), as many as
    :func:`split_chunks` gives, each with about the same work: covered pixels (``face_id >= 0``)
    plus ``ROW_BACKGROUND_COST`` per background pixel. Equal row counts leave the range with the
    nearer (larger) part of a mesh much more to do (100k-triangle torus at 512^2, 2 threads: the
    worker's half of the barycentrics adjoint took ~1.5x the caller's). ``None`` when the launch
    is not split (one range, or CUDA). Kept for the last few ``face_id`` tensors (the forward and
    adjoint kernels of one frame use the same ranges; a stale entry could only cost balance, any
    partition of the rows is correct)."""
    chunks = split_chunks(n, face_id.device, min_per_thread)
    if len(chunks) == 1:
        return None
    key = (face_id.data_ptr(), face_id._version, tuple(face_id.shape), len(chunks))
    hit = _ROW_RANGES.get(key)
    if hit is not None:
        return hit
    import numpy as np

    W = face_id.shape[-1]
    work = np.cumsum(np.count_nonzero(face_id.numpy().reshape(n, W) >= 0, axis=1) + ROW_BACKGROUND_COST * W)
    cuts = [0] + [int(np.searchsorted(work, work[-1] * k / len(chunks))) for k in range(1, len(chunks))] + [n]
    ranges = [(a, b - a) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    if len(_ROW_RANGES) >= 8:
        _ROW_RANGES.clear()
    _ROW_RANGES[key] = ranges
    return ranges


class _Barycentrics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, screen, faces, face_id, perspective):
        B, H, W = face_id.shape
        bary = torch.empty((B, H, W, 3), dtype=screen.dtype, device=screen.device)  # every entry written
        depth = torch.empty((B, H, W), dtype=screen.dtype, device=screen.device)
        rows, n, mpt = pixel_launch(B, H, W, screen.device)
        parallel_launch(barycentrics, n, [rows, screen, faces, face_id, perspective], [bary, depth], min_per_thread=mpt,
                        ranges=row_ranges(face_id, n, mpt) if rows else None)
        ctx.perspective = perspective
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None: a lazily zeroed buffer here
        ctx.save_for_backward(screen, faces, face_id, bary)
        return bary, depth

    @staticmethod
    def backward(ctx, g_bary, g_depth):
        screen, faces, face_id, bary = ctx.saved_tensors
        B, H, W = face_id.shape
        # a gradient that did not come (an unused output) is not read: a 1-entry placeholder
        grads = int(g_bary is not None) | 2 * int(g_depth is not None)
        g_bary = bary.new_zeros((1, 1, 1, 3)) if g_bary is None else contiguous(g_bary)
        g_depth = screen.new_zeros((1, 1, 1)) if g_depth is None else contiguous(g_depth)
        rows, n, mpt = pixel_launch(B, H, W, screen.device)
        ranges = row_ranges(face_id, n, mpt) if rows else None
        bufs = [cpu_zeros(screen.shape, screen) for _ in range(len(ranges) if ranges else 1)]
        # one gradient buffer per chunk of the split launch (CPU atomics are not atomic across threads)
        parallel_launch(barycentrics_adj, n,
                        [rows, screen, faces, face_id, ctx.perspective, bary, g_bary, g_depth, grads],
                        lambda c: [bufs[c]], device=screen.device, min_per_thread=mpt, ranges=ranges)
        return chunk_sum(bufs), None, None, None


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr, faces, face_id, bary):
        B, H, W = face_id.shape
        out = torch.empty((B, H, W, attr.shape[2]), dtype=attr.dtype, device=attr.device)  # every entry written
        rows, n, mpt = pixel_launch(B, H, W, attr.device)
        parallel_launch(interpolate_attr, n, [rows, attr, faces, face_id, bary], [out], min_per_thread=mpt,
                        ranges=row_ranges(face_id, n, mpt) if rows else None)
        ctx.save_for_backward(attr, faces, face_id, bary)
        return out

    @staticmethod
    def backward(ctx, g_out):
        attr, faces, face_id, bary = ctx.saved_tensors
        B, H, W = face_id.shape
        need_attr = bool(ctx.needs_input_grad[0])
        rows, n, mpt = pixel_launch(B, H, W, attr.device)
        ranges = row_ranges(face_id, n, mpt) if rows else None
        g_bary = torch.empty_like(bary)  # every entry written
        bufs = [cpu_zeros(attr.shape if need_attr else (1, 1, 1), attr) for _ in range(len(ranges) if ranges else 1)]
        parallel_launch(interpolate_adj, n, [rows, attr, faces, face_id, bary, contiguous(g_out), int(need_attr)],
                        lambda c: [bufs[c], g_bary], device=attr.device, min_per_thread=mpt, ranges=ranges)
        return (chunk_sum(bufs) if need_attr else None), None, None, g_bary


def barycentrics_op(screen, faces, face_id, perspective: int):
    """Differentiable perspective-correct barycentrics and depth (B, H, W, 3), (B, H, W)."""
    return _Barycentrics.apply(screen.contiguous(), faces, face_id, int(perspective))


def interpolate_op(attr, faces, face_id, bary):
    """Differentiable interpolation of ``attr`` (B, V, C) with ``bary`` -> (B, H, W, C)."""
    return _Interpolate.apply(attr.contiguous(), faces, face_id, bary.contiguous())


# ---------------------------------------------------------------------------------------------
# the antialias coverage blend as an autograd function (forward and adjoint split over threads)
# ---------------------------------------------------------------------------------------------

_instantiate(blend_pairs)
_instantiate(blend_pairs_adj)


def cpu_zeros(shape, like: torch.Tensor) -> torch.Tensor:
    """Zeroed buffer of ``like``'s dtype and device; on the CPU from calloc'd NumPy memory (pages
    zeroed lazily by the thread that first touches them) instead of torch's multi-threaded fill.

    Why NumPy for the glue between split launches: every torch op on more than ~32k elements runs
    on torch's OpenMP threads, whose idle workers then spin for milliseconds and take a core from
    the split Warp launches that follow (measured on the 100k-triangle raster benchmark with 2
    threads: 551 ms of process CPU per iteration against 170 ms with ``OMP_WAIT_POLICY=PASSIVE``).
    """
    if like.device.type != "cpu":
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    import numpy as np

    dt = _NUMPY_DTYPE.get(like.dtype)
    if dt is None:
        dt = _NUMPY_DTYPE[like.dtype] = torch.empty(0, dtype=like.dtype).numpy().dtype
    return torch.from_numpy(np.zeros(shape, dtype=dt))


_NUMPY_DTYPE: dict = {}  # torch dtype -> NumPy dtype (cpu_zeros: ~3 us per lookup otherwise)


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t.contiguous()``; on the CPU a needed copy is made by NumPy (single-threaded, see
    :func:`cpu_zeros`), e.g. of the expanded gradient of a mean."""
    if t.is_contiguous() or t.device.type != "cpu" or t.requires_grad:
        return t.contiguous()
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(t.numpy()))


def chunk_sum(bufs):
    """Sum of the per-thread-range gradient buffers of a split adjoint (in place into the first;
    NumPy on the CPU, see :func:`cpu_zeros`)."""
    g = bufs[0]
    if len(bufs) == 1:
        return g
    if g.device.type == "cpu" and all(b.is_contiguous() for b in bufs):
        import numpy as np

        a = g.numpy()
        for extra in bufs[1:]:
            np.add(a, extra.numpy(), out=a)
        return g
    for extra in bufs[1:]:
        g = g + extra
    return g


class _Blend(torch.autograd.Function):
    """CPU: ``out = color`` (a copy) plus a scatter over the detected pairs only (they are sparse:
    the silhouette outline, ~1% of the pixel pairs at 512^2), forward and adjoint, split over
    threads into ranges of pairs with disjoint pixels (:func:`pair_ranges`; 100k-triangle torus at
    512^2, 2 threads, alternating with the serial scatter: 2.4% and 3.1% less per iteration).
    CUDA: the dense per-pixel gather kernels (one thread per pixel, no atomics)."""

    @staticmethod
    def forward(ctx, color, screen, ring, faces, pairs, near, perspective):
        B, H, W, C = color.shape
        sparse = color.device.type == "cpu"
        found = None
        if sparse:
            import numpy as np

            res: dict = {}

            def find():
                res["found"] = torch.from_numpy(np.flatnonzero(pairs.numpy().reshape(-1) >= 0).astype(np.int32))

            def copy_and_check():
                res["out"], res["finite"] = color.detach().numpy().copy(), all_finite(color)

            # NumPy releases the GIL: with more than one torch thread the copy and finiteness check
            # of the image run on a launch worker beside the search for the detected pairs
            run_split([find, copy_and_check])
            if not res["finite"]:
                raise ValueError("color contains non-finite values (NaN or inf)")
            found, out = res["found"], torch.from_numpy(res["out"])
            ctx.ranges = pair_ranges(found, W, torch.get_num_threads())
            ranges, tails = ctx.ranges
            args = [found, screen, faces, pairs, color, ring, near, perspective]
            if ranges:
                parallel_launch(blend_sparse, found.shape[0], args, [out], ranges=ranges)  # offset: range start
            for start, count in tails:  # pairs whose pixels neighbour two ranges: after them
                launch(blend_sparse, count, [start] + args, [out])
        else:
            out = torch.empty_like(color)  # every entry written
            bad = torch.zeros(1, dtype=torch.int32, device=color.device)
            rows, n, mpt = pixel_launch(B, H, W, color.device)
            parallel_launch(blend_pairs, n, [rows, screen, faces, pairs, color, ring, near, perspective], [out, bad],
                            min_per_thread=mpt)
            if int(bad[0]):
                raise ValueError("color contains non-finite values (NaN or inf)")
        ctx.near, ctx.perspective = near, perspective
        ctx.save_for_backward(color, screen, ring, faces, pairs, found)
        return out

    @staticmethod
    def backward(ctx, g_out):
        color, screen, ring, faces, pairs, found = ctx.saved_tensors
        B, H, W, C = color.shape
        if found is not None:
            g = contiguous(g_out)
            g_color = torch.from_numpy(g.numpy().copy())
            ranges, tails = ctx.ranges
            # one ring and screen gradient buffer per range (CPU atomics are not atomic across threads)
            g_ring = [cpu_zeros(ring.shape, ring) for _ in range(max(len(ranges), 1))]
            g_screen = [cpu_zeros(screen.shape, screen) for _ in range(max(len(ranges), 1))]
            args = [found, screen, faces, pairs, color, ring, g, ctx.near, ctx.perspective]
            if ranges:
                parallel_launch(blend_sparse_adj, found.shape[0], args, lambda k: [g_color, g_ring[k], g_screen[k]],
                                ranges=ranges)
            for start, count in tails:
                launch(blend_sparse_adj, count, [start] + args, [g_color, g_ring[0], g_screen[0]])
            return g_color, chunk_sum(g_screen), chunk_sum(g_ring), None, None, None, None
        rows, n, mpt = pixel_launch(B, H + 2, W + 2, color.device)
        n_chunks = len(split_chunks(n, color.device, mpt))
        g_color = torch.empty_like(color)  # every entry written
        g_ring = [cpu_zeros(ring.shape, ring) for _ in range(n_chunks)]
        g_screen = [cpu_zeros(screen.shape, screen) for _ in range(n_chunks)]
        parallel_launch(blend_pairs_adj, n, [rows, screen, faces, pairs, color, ring, contiguous(g_out), ctx.near,
                                             ctx.perspective], lambda c: [g_color, g_ring[c], g_screen[c]],
                        device=color.device, min_per_thread=mpt)
        return g_color, chunk_sum(g_screen), chunk_sum(g_ring), None, None, None, None


PAIRS_PER_THREAD = 1024  # fewest detected pairs per thread range of a split CPU blend


def pair_ranges(found: torch.Tensor, W: int, threads: int) -> tuple[list, list]:
    """Thread ranges ``(start, count)`` of the sorted detected pairs ``found`` (flat indices into the
    (B, H + 1, W + 1, 2) pair grid) whose pixels are disjoint, and the ``tails`` to run after them.

    A pair in padded row ``g`` (view-major) touches rows ``g`` and ``g + 1``; ranges end at a row
    boundary ``R`` chosen to even out the pair counts, so consecutive ranges meet only through the
    pairs of row ``R - 1``, which go to the tails. One range (all pairs) below ``PAIRS_PER_THREAD``
    pairs per thread or with one thread."""
    import numpy as np

    n = int(found.shape[0])
    if n == 0:
        return [], []
    if threads <= 1 or n < 2 * PAIRS_PER_THREAD:
        return [(0, n)], []
    threads = min(threads, n // PAIRS_PER_THREAD)
    g = found.numpy() // (2 * (W + 1))
    ranges, tails, start = [], [], 0
    for k in range(1, threads):
        r = int(g[k * n // threads])
        last = max(int(np.searchsorted(g, r - 1, side="left")), start)  # first pair of row r - 1
        nxt = max(int(np.searchsorted(g, r, side="left")), start)  # first pair of row r
        if last > start:
            ranges.append((start, last - start))
        if nxt > last:
            tails.append((last, nxt - last))
        start = nxt
    if n > start:
        ranges.append((start, n - start))
    return ranges, tails


def blend_op(color, screen, ring, faces, pairs, near: float, perspective: int):
    """Antialias coverage blend of ``color`` (B, H, W, C) across the silhouette ``pairs``
    (B, H + 1, W + 1, 2) found by :func:`silhouette_pairs`, differentiable w.r.t. ``color``,
    ``screen`` (B, V, 3) and the ring colour ``ring`` (C,) (zeros when the border is not blended).
    Raises ``ValueError`` when ``color`` has a non-finite value (checked as it is read)."""
    return _Blend.apply(color.contiguous(), screen.contiguous(), ring.contiguous(), faces, pairs, float(near),
                        int(perspective))


# ---------------------------------------------------------------------------------------------
# camera projection of the vertices (Cameras.project plus the rasterizer's depth guard) as one
# kernel, forward and hand-written adjoint split over threads
# ---------------------------------------------------------------------------------------------

PROJECT_BLOCK = 64  # vertices per kernel thread


@wp.kernel
def project_verts(offset: int, verts: wp.array(dtype=Any, ndim=3), R: wp.array(dtype=Any, ndim=3),
                  tr: wp.array(dtype=Any, ndim=2), K: wp.array(dtype=Any, ndim=2), perspective: int,
                  screen: wp.array(dtype=Any, ndim=3)):
    """screen[b, v] = (u, v, d) of vertex v in view b (``verts`` (1 or B, V, 3)): camera point
    pc = R p + t, d = -pc_z; perspective: s = d where |d| > 1e-12 else 1e-12, u = cx + fx pc_x / s,
    v = cy - fy pc_y / s and the depth stored is s; orthographic: u = cx + fx pc_x, v = cy - fy pc_y,
    d. One thread per block of ``PROJECT_BLOCK`` vertices (all views)."""
    j = wp.tid() + offset
    V = verts.shape[1]
    nb = verts.shape[0]
    for v in range(j * PROJECT_BLOCK, wp.min(j * PROJECT_BLOCK + PROJECT_BLOCK, V)):
        for b in range(screen.shape[0]):
            bv = wp.min(b, nb - 1)
            p0 = verts[bv, v, 0]
            p1 = verts[bv, v, 1]
            p2 = verts[bv, v, 2]
            X = p0 * R[b, 0, 0] + p1 * R[b, 0, 1] + p2 * R[b, 0, 2] + tr[b, 0]
            Y = p0 * R[b, 1, 0] + p1 * R[b, 1, 1] + p2 * R[b, 1, 2] + tr[b, 1]
            d = -(p0 * R[b, 2, 0] + p1 * R[b, 2, 1] + p2 * R[b, 2, 2] + tr[b, 2])
            if perspective != 0:
                s = d
                if not (wp.abs(d) > type(d)(1e-12)):
                    s = type(d)(1e-12)
                screen[b, v, 0] = K[b, 2] + K[b, 0] * (X / s)
                screen[b, v, 1] = K[b, 3] - K[b, 1] * (Y / s)
                screen[b, v, 2] = s
            else:
                screen[b, v, 0] = K[b, 2] + K[b, 0] * X
                screen[b, v, 1] = K[b, 3] - K[b, 1] * Y
                screen[b, v, 2] = d


@wp.kernel
def project_verts_adj(offset: int, verts: wp.array(dtype=Any, ndim=3), R: wp.array(dtype=Any, ndim=3),
                      tr: wp.array(dtype=Any, ndim=2), K: wp.array(dtype=Any, ndim=2), perspective: int,
                      g_screen: wp.array(dtype=Any, ndim=3), g_verts: wp.array(dtype=Any, ndim=3),
                      g_cam: wp.array(dtype=Any, ndim=2)):
    """Adjoint of :func:`project_verts`: ``g_verts`` (1 or B, V, 3) written per vertex (this
    thread's vertices: disjoint), the camera gradient added to ``g_cam`` (B, 16) = (R row-major 9,
    t 3, intrinsics 4) (give each CPU thread range its own ``g_cam``). The depth guard passes no
    gradient to d where |d| <= 1e-12 (as ``torch.where`` in the twin)."""
    j = wp.tid() + offset
    V = verts.shape[1]
    nb = verts.shape[0]
    for v in range(j * PROJECT_BLOCK, wp.min(j * PROJECT_BLOCK + PROJECT_BLOCK, V)):
        z = verts[0, v, 0] - verts[0, v, 0]
        a0 = z
        a1 = z
        a2 = z
        for b in range(g_screen.shape[0]):
            bv = wp.min(b, nb - 1)
            p0 = verts[bv, v, 0]
            p1 = verts[bv, v, 1]
            p2 = verts[bv, v, 2]
            X = p0 * R[b, 0, 0] + p1 * R[b, 0, 1] + p2 * R[b, 0, 2] + tr[b, 0]
            Y = p0 * R[b, 1, 0] + p1 * R[b, 1, 1] + p2 * R[b, 1, 2] + tr[b, 1]
            d = -(p0 * R[b, 2, 0] + p1 * R[b, 2, 1] + p2 * R[b, 2, 2] + tr[b, 2])
            gu = g_screen[b, v, 0]
            gv = g_screen[b, v, 1]
            gd = g_screen[b, v, 2]
            gX = z
            gY = z
            gZ = z
            if perspective != 0:
                s = d
                live = wp.abs(d) > type(d)(1e-12)
                if not live:
                    s = type(d)(1e-12)
                xs = X / s
                ys = Y / s
                gX = gu * K[b, 0] / s
                gY = -gv * K[b, 1] / s
                if live:
                    gZ = -(gd - (gu * K[b, 0] * xs - gv * K[b, 1] * ys) / s)
                wp.atomic_add(g_cam, b, 12, gu * xs)
                wp.atomic_add(g_cam, b, 13, -gv * ys)
            else:
                gX = gu * K[b, 0]
                gY = -gv * K[b, 1]
                gZ = -gd
                wp.atomic_add(g_cam, b, 12, gu * X)
                wp.atomic_add(g_cam, b, 13, -gv * Y)
            wp.atomic_add(g_cam, b, 14, gu)
            wp.atomic_add(g_cam, b, 15, gv)
            wp.atomic_add(g_cam, b, 0, gX * p0)
            wp.atomic_add(g_cam, b, 1, gX * p1)
            wp.atomic_add(g_cam, b, 2, gX * p2)
            wp.atomic_add(g_cam, b, 3, gY * p0)
            wp.atomic_add(g_cam, b, 4, gY * p1)
            wp.atomic_add(g_cam, b, 5, gY * p2)
            wp.atomic_add(g_cam, b, 6, gZ * p0)
            wp.atomic_add(g_cam, b, 7, gZ * p1)
            wp.atomic_add(g_cam, b, 8, gZ * p2)
            wp.atomic_add(g_cam, b, 9, gX)
            wp.atomic_add(g_cam, b, 10, gY)
            wp.atomic_add(g_cam, b, 11, gZ)
            q0 = gX * R[b, 0, 0] + gY * R[b, 1, 0] + gZ * R[b, 2, 0]
            q1 = gX * R[b, 0, 1] + gY * R[b, 1, 1] + gZ * R[b, 2, 1]
            q2 = gX * R[b, 0, 2] + gY * R[b, 1, 2] + gZ * R[b, 2, 2]
            if nb == 1:
                a0 = a0 + q0
                a1 = a1 + q1
                a2 = a2 + q2
            else:
                g_verts[b, v, 0] = q0
                g_verts[b, v, 1] = q1
                g_verts[b, v, 2] = q2
        if nb == 1:
            g_verts[0, v, 0] = a0
            g_verts[0, v, 1] = a1
            g_verts[0, v, 2] = a2


_instantiate(project_verts)
_instantiate(project_verts_adj)


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, R, tr, K, perspective):
        B, V = R.shape[0], verts.shape[1]
        screen = torch.empty((B, V, 3), dtype=verts.dtype, device=verts.device)  # every entry written
        n = (V + PROJECT_BLOCK - 1) // PROJECT_BLOCK
        parallel_launch(project_verts, n, [verts, R, tr, K, perspective], [screen], min_per_thread=16)
        ctx.perspective = perspective
        ctx.save_for_backward(verts, R, tr, K)
        return screen

    @staticmethod
    def backward(ctx, g_screen):
        verts, R, tr, K = ctx.saved_tensors
        B, V = R.shape[0], verts.shape[1]
        n = (V + PROJECT_BLOCK - 1) // PROJECT_BLOCK
        n_chunks = len(split_chunks(n, verts.device, 16))
        g_verts = torch.empty_like(verts)  # every entry written
        g_cam = [cpu_zeros((B, 16), R) for _ in range(n_chunks)]
        parallel_launch(project_verts_adj, n, [verts, R, tr, K, ctx.perspective, contiguous(g_screen)],
                        lambda c: [g_verts, g_cam[c]], device=verts.device, min_per_thread=16)
        gc = chunk_sum(g_cam)
        need = ctx.needs_input_grad
        return (g_verts if need[0] else None, gc[:, :9].reshape(B, 3, 3) if need[1] else None,
                gc[:, 9:12].contiguous() if need[2] else None, gc[:, 12:].contiguous() if need[3] else None, None)


def project_op(verts, R, tr, K, perspective: int):
    """Differentiable screen points (B, V, 3) of ``verts`` (1 or B, V, 3) seen by cameras with
    rotations ``R`` (B, 3, 3), translations ``tr`` (B, 3) and intrinsics ``K`` (B, 4) (see
    :func:`project_verts`); gradients to all four."""
    return _Project.apply(verts.contiguous(), R.contiguous(), tr.contiguous(), K.contiguous(), int(perspective))
