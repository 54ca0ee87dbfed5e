"""Warp kernels for face and vertex normals of a triangle mesh, and their autograd bridge. The
plain-torch twin is ``diffvc.geometry.normals._mesh_normals_torch`` (same values, same
degenerate cases; tests compare both, and second derivatives go through it).

Per face ``f = (i0, i1, i2)``: ``e1 = v1 - v0``, ``e2 = v2 - v0``, ``c = e1 x e2`` (length = 2 area).

* unit face normal ``c / |c|``, or 0 where ``|c| <= 4 eps max_k |e_k|^2`` (zero up to rounding
  relative to the face's own longest edge);
* vertex normal ``a / |a|`` with ``a = sum of c over the incident faces``, or 0 where
  ``|a| <= 4 eps sum |c|`` (isolated vertices included).

Norms are ``m |v / m|`` with ``m = max |v_i|``, so no square over- or underflows at any scale.

Forward: one pass over the faces (blocks of ``FACE_BLOCK`` faces per CPU thread) writes the face
normals and scatters ``(c, |c|)`` into per-range ``(V, 4)`` buffers (Warp's CPU atomics are not
atomic across threads: each range of a split launch gets its own, summed afterwards), then one
pass over the vertices normalises. Backward (hand-written, ``enable_backward=False``): per vertex
``g_a = (g_n - n (n . g_n)) / |a|``; per face ``g_c = (g_u - u (u . g_u)) / |c| + g_a[i0] +
g_a[i1] + g_a[i2]`` and ``g_v1 += e2 x g_c``, ``g_v2 += g_c x e1``, ``g_v0 -= both`` (scattered as
above). Degenerate faces and vertices pass no gradient (their normal is the constant 0).

100k-face torus, forward + backward of both normals, 2 threads: see ``bench/geometry.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from .bridge import parallel_launch, split_chunks, twin_backward, wp
from .raster import chunk_sum, cpu_zeros, face_launch

wp.set_module_options({"enable_backward": False})

REL_TOL = wp.constant(4.0)  # multiples of the dtype's eps: "zero up to rounding" (as diffvc.geometry.normals)


@wp.func
def _len3(x: Any, y: Any, z: Any):
    """``|(x, y, z)|`` as ``m |v / m|``, ``m = max |v_i|`` (no over/underflow); 0 for the zero vector."""
    m = wp.max(wp.abs(x), wp.max(wp.abs(y), wp.abs(z)))
    r = m
    if m > m - m:
        s = type(m)(1.0) / m
        a = x * s
        b = y * s
        c = z * s
        r = m * wp.sqrt(a * a + b * b + c * c)
    return r


@wp.func
def _max_edge(ax: Any, ay: Any, az: Any, bx: Any, by: Any, bz: Any, cx: Any, cy: Any, cz: Any):
    """The largest of the lengths of ``a``, ``b`` and ``c`` (one scale ``m`` = the largest
    component magnitude, one square root)."""
    m = wp.max(wp.max(wp.max(wp.abs(ax), wp.abs(ay)), wp.max(wp.abs(az), wp.abs(bx))),
               wp.max(wp.max(wp.abs(by), wp.abs(bz)), wp.max(wp.max(wp.abs(cx), wp.abs(cy)), wp.abs(cz))))
    r = m
    if m > m - m:
        s = type(m)(1.0) / m
        la = (ax * s) * (ax * s) + (ay * s) * (ay * s) + (az * s) * (az * s)
        lb = (bx * s) * (bx * s) + (by * s) * (by * s) + (bz * s) * (bz * s)
        lc = (cx * s) * (cx * s) + (cy * s) * (cy * s) + (cz * s) * (cz * s)
        r = m * wp.sqrt(wp.max(la, wp.max(lb, lc)))
    return r


@wp.func
def _face_edges(verts: wp.array2d(dtype=Any), faces: wp.array2d(dtype=wp.int32), f: int):
    """Face ``f``'s vertex ids and the components of its edges ``a = v1 - v0``, ``b = v2 - v0``."""
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    return (i0, i1, i2, verts[i1, 0] - verts[i0, 0], verts[i1, 1] - verts[i0, 1], verts[i1, 2] - verts[i0, 2],
            verts[i2, 0] - verts[i0, 0], verts[i2, 1] - verts[i0, 1], verts[i2, 2] - verts[i0, 2])


@wp.kernel
def normals_face(offset: int, blk: int, verts: wp.array2d(dtype=Any), faces: wp.array2d(dtype=wp.int32), eps: Any,
                 want_face: int, want_vert: int, fn: wp.array2d(dtype=Any), acc: wp.array2d(dtype=Any)):
    """Faces ``[j blk, (j+1) blk)``: unit normal into ``fn`` (``want_face``), ``(c, |c|)`` added to
    its three vertices' rows of ``acc`` (V, 4) (``want_vert``)."""
    j = wp.tid() + offset
    for f in range(j * blk, wp.min(j * blk + blk, faces.shape[0])):
        i0, i1, i2, ax, ay, az, bx, by, bz = _face_edges(verts, faces, f)
        cx = ay * bz - az * by
        cy = az * bx - ax * bz
        cz = ax * by - ay * bx
        c = _len3(cx, cy, cz)
        if want_face != 0:
            lmax = _max_edge(ax, ay, az, bx, by, bz, bx - ax, by - ay, bz - az)
            if c > type(c)(REL_TOL) * eps * lmax * lmax:
                r = type(c)(1.0) / c
                fn[f, 0] = cx * r
                fn[f, 1] = cy * r
                fn[f, 2] = cz * r
            else:
                fn[f, 0] = c - c
                fn[f, 1] = c - c
                fn[f, 2] = c - c
        if want_vert != 0:
            for k in range(3):
                i = faces[f, k]
                wp.atomic_add(acc, i, 0, cx)
                wp.atomic_add(acc, i, 1, cy)
                wp.atomic_add(acc, i, 2, cz)
                wp.atomic_add(acc, i, 3, c)


@wp.kernel
def normals_vertex(offset: int, acc: wp.array2d(dtype=Any), eps: Any, vn: wp.array2d(dtype=Any),
                   nrm: wp.array(dtype=Any)):
    """Vertex ``v``: ``vn = a / |a|`` and ``nrm = |a|``, or both 0 where degenerate."""
    v = wp.tid() + offset
    ax = acc[v, 0]
    ay = acc[v, 1]
    az = acc[v, 2]
    n = _len3(ax, ay, az)
    if n > type(n)(REL_TOL) * eps * acc[v, 3] and n > n - n:
        vn[v, 0] = ax / n
        vn[v, 1] = ay / n
        vn[v, 2] = az / n
        nrm[v] = n
    else:
        vn[v, 0] = n - n
        vn[v, 1] = n - n
        vn[v, 2] = n - n
        nrm[v] = n - n


@wp.kernel
def normals_vertex_adj(offset: int, vn: wp.array2d(dtype=Any), nrm: wp.array(dtype=Any),
                       g_vn: wp.array2d(dtype=Any), g_acc: wp.array2d(dtype=Any)):
    """``g_a = (g_n - n (n . g_n)) / |a|`` (0 at a degenerate vertex, ``nrm = 0``)."""
    v = wp.tid() + offset
    n = nrm[v]
    if n > n - n:
        nx = vn[v, 0]
        ny = vn[v, 1]
        nz = vn[v, 2]
        gx = g_vn[v, 0]
        gy = g_vn[v, 1]
        gz = g_vn[v, 2]
        d = nx * gx + ny * gy + nz * gz
        g_acc[v, 0] = (gx - nx * d) / n
        g_acc[v, 1] = (gy - ny * d) / n
        g_acc[v, 2] = (gz - nz * d) / n
    else:
        g_acc[v, 0] = n - n
        g_acc[v, 1] = n - n
        g_acc[v, 2] = n - n


@wp.kernel
def normals_face_adj(offset: int, blk: int, verts: wp.array2d(dtype=Any), faces: wp.array2d(dtype=wp.int32),
                     eps: Any, want_face: int, g_fn: wp.array2d(dtype=Any), want_vert: int,
                     g_acc: wp.array2d(dtype=Any), g_verts: wp.array2d(dtype=Any)):
    """Faces ``[j blk, (j+1) blk)``: the gradient of ``c`` (from the face normal's and the vertex
    normals' gradients) taken to the face's vertices, added to ``g_verts``."""
    j = wp.tid() + offset
    for f in range(j * blk, wp.min(j * blk + blk, faces.shape[0])):
        i0, i1, i2, ax, ay, az, bx, by, bz = _face_edges(verts, faces, f)
        gx = ax - ax
        gy = gx
        gz = gx
        if want_face != 0:
            cx = ay * bz - az * by
            cy = az * bx - ax * bz
            cz = ax * by - ay * bx
            c = _len3(cx, cy, cz)
            lmax = _max_edge(ax, ay, az, bx, by, bz, bx - ax, by - ay, bz - az)
            if c > type(c)(REL_TOL) * eps * lmax * lmax:
                ux = cx / c
                uy = cy / c
                uz = cz / c
                hx = g_fn[f, 0]
                hy = g_fn[f, 1]
                hz = g_fn[f, 2]
                d = ux * hx + uy * hy + uz * hz
                gx = (hx - ux * d) / c
                gy = (hy - uy * d) / c
                gz = (hz - uz * d) / c
        if want_vert != 0:
            gx = gx + g_acc[i0, 0] + g_acc[i1, 0] + g_acc[i2, 0]
            gy = gy + g_acc[i0, 1] + g_acc[i1, 1] + g_acc[i2, 1]
            gz = gz + g_acc[i0, 2] + g_acc[i1, 2] + g_acc[i2, 2]
        # c = a x b: d/da = b x g, d/db = g x a
        p0 = by * gz - bz * gy
        p1 = bz * gx - bx * gz
        p2 = bx * gy - by * gx
        q0 = gy * az - gz * ay
        q1 = gz * ax - gx * az
        q2 = gx * ay - gy * ax
        wp.atomic_add(g_verts, i1, 0, p0)
        wp.atomic_add(g_verts, i1, 1, p1)
        wp.atomic_add(g_verts, i1, 2, p2)
        wp.atomic_add(g_verts, i2, 0, q0)
        wp.atomic_add(g_verts, i2, 1, q1)
        wp.atomic_add(g_verts, i2, 2, q2)
        wp.atomic_sub(g_verts, i0, 0, p0 + q0)
        wp.atomic_sub(g_verts, i0, 1, p1 + q1)
        wp.atomic_sub(g_verts, i0, 2, p2 + q2)


class _MeshNormals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, faces, want_face, want_vert, twin):
        V, F = verts.shape[0], faces.shape[0]
        dev = verts.device
        eps = torch.finfo(verts.dtype).eps
        blk, n, mpt = face_launch(F, dev)
        fn = torch.empty((F, 3) if want_face else (1, 3), dtype=verts.dtype, device=dev)
        ranges = len(split_chunks(n, dev, mpt))
        accs = [cpu_zeros((V, 4) if want_vert else (1, 4), verts) for _ in range(ranges)]
        parallel_launch(normals_face, n, [blk, verts, faces, eps, int(want_face), int(want_vert)],
                        lambda k: [fn, accs[k]], device=dev, min_per_thread=mpt)
        vn = nrm = None
        if want_vert:
            acc = chunk_sum(accs)
            vn = torch.empty((V, 3), dtype=verts.dtype, device=dev)
            nrm = torch.empty(V, dtype=verts.dtype, device=dev)
            parallel_launch(normals_vertex, V, [acc, eps], [vn, nrm], device=dev)
        ctx.want = (want_face, want_vert)
        ctx.twin = twin
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(verts, faces, vn, nrm)
        return (fn if want_face else None), vn

    @staticmethod
    def backward(ctx, g_fn, g_vn):
        verts, faces, vn, nrm = ctx.saved_tensors
        want_face, want_vert = ctx.want
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: second derivatives through the torch twin
            (gv,) = twin_backward(lambda v: ctx.twin(v, faces.long(), want_face, want_vert), (verts,), (True,),
                                  (g_fn, g_vn))
            return gv, None, None, None, None
        V, F = verts.shape[0], faces.shape[0]
        dev = verts.device
        eps = torch.finfo(verts.dtype).eps
        use_face = want_face and g_fn is not None
        use_vert = want_vert and g_vn is not None
        if not (use_face or use_vert):
            return torch.zeros_like(verts), None, None, None, None
        g_acc = verts.new_zeros((1, 3))
        if use_vert:
            g_acc = torch.empty((V, 3), dtype=verts.dtype, device=dev)
            parallel_launch(normals_vertex_adj, V, [vn, nrm, g_vn.contiguous()], [g_acc], device=dev)
        blk, n, mpt = face_launch(F, dev)
        ranges = len(split_chunks(n, dev, mpt))
        bufs = [cpu_zeros((V, 3), verts) for _ in range(ranges)]
        g_fn = g_fn.contiguous() if use_face else verts.new_zeros((1, 3))
        parallel_launch(normals_face_adj, n, [blk, verts, faces, eps, int(use_face), g_fn, int(use_vert), g_acc],
                        lambda k: [bufs[k]], device=dev, min_per_thread=mpt)
        return chunk_sum(bufs), None, None, None, None


def mesh_normals(verts: torch.Tensor, faces: torch.Tensor, want_face: bool, want_vert: bool, twin):
    """Unit face normals ``(F, 3)`` (or None) and vertex normals ``(V, 3)`` (or None) of ``verts``
    (V, 3) float32/float64 and ``faces`` (F, 3) (F >= 1; validated by the caller), differentiable
    w.r.t. ``verts``. ``twin(verts, faces, want_face, want_vert)``: the torch twin (second
    derivatives)."""
    return _MeshNormals.apply(verts.contiguous(), faces.to(torch.int32).contiguous(), bool(want_face),
                              bool(want_vert), twin)


__all__ = ["mesh_normals", "normals_face", "normals_vertex", "normals_face_adj", "normals_vertex_adj"]
