"""Warp kernels for geometry queries (forward only: they pick discrete things or compute values
whose torch twins carry the gradients).

* :func:`winding_numbers` - brute-force generalized winding number, one thread per query point,
  float64, split over CPU cores (disjoint outputs). Torch twin: ``diffvc.geometry.winding``.
* :func:`nearest_faces` - closest face of a triangle mesh per query point through Warp's BVH
  (``wp.Mesh``, float32). Torch twin: the chunked brute force in ``diffvc.geometry.distance``.
* :func:`inside_fast` - inside test by the BVH's fast (dipole) winding number, for large meshes.
  Reference: the exact winding number above (tests compare away from the surface).
"""

from __future__ import annotations

import torch

from .bridge import launch, parallel_launch, to_warp, warp_device, wp

_INV_4PI = 0.07957747154594767


@wp.kernel
def _winding_kernel(
    offset: int,
    points: wp.array(dtype=wp.vec3d),
    a: wp.array(dtype=wp.vec3d),
    b: wp.array(dtype=wp.vec3d),
    c: wp.array(dtype=wp.vec3d),
    out: wp.array(dtype=wp.float64),
):
    i = wp.tid() + offset
    q = points[i]
    acc = wp.float64(0.0)
    for f in range(a.shape[0]):  # forward only: no adjoint of this loop is ever taken
        x = a[f] - q
        y = b[f] - q
        z = c[f] - q
        lx = wp.length(x)
        ly = wp.length(y)
        lz = wp.length(z)
        num = wp.dot(x, wp.cross(y, z))
        den = lx * ly * lz + wp.dot(x, y) * lz + wp.dot(x, z) * ly + wp.dot(y, z) * lx
        acc += wp.float64(2.0) * wp.atan2(num, den)
    out[i] = acc * wp.float64(_INV_4PI)


def winding_numbers(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Generalized winding numbers ``(Q,)`` (float64 internally, returned in ``points``' dtype). No autograd."""
    v = verts.detach().double().contiguous()
    f = faces.long()
    a, b, c = v[f[:, 0]].contiguous(), v[f[:, 1]].contiguous(), v[f[:, 2]].contiguous()
    q = points.detach().double().contiguous()
    out = torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
    if q.shape[0] == 0 or f.shape[0] == 0:
        return out.to(points.dtype)
    parallel_launch(_winding_kernel, q.shape[0], [to_warp(q, "vec"), to_warp(a, "vec"), to_warp(b, "vec"),
                                                   to_warp(c, "vec")], [out], device=q.device, min_per_thread=64)
    return out.to(points.dtype)


@wp.kernel
def _nearest_face_kernel(
    offset: int,
    mesh: wp.uint64,
    points: wp.array(dtype=wp.vec3),
    max_dist: float,
    face: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    qr = wp.mesh_query_point_no_sign(mesh, points[i], max_dist)
    face[i] = wp.where(qr.result, qr.face, -1)


@wp.kernel
def _inside_fast_kernel(
    offset: int,
    mesh: wp.uint64,
    points: wp.array(dtype=wp.vec3),
    accuracy: float,
    inside: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    qr = wp.mesh_query_point_sign_winding_number(mesh, points[i], 1.0e30, accuracy, 0.5)
    inside[i] = wp.where(qr.sign < 0.0, 1, 0)


class MeshBVH:
    """A Warp BVH over a triangle mesh (float32 positions), reused for many nearest-face queries
    and (with ``winding=True``) fast-winding-number inside tests."""

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, winding: bool = False):
        self.device = verts.device
        self._points = verts.detach().float().contiguous()
        self._indices = faces.detach().to(torch.int32).reshape(-1).contiguous()
        wdev = warp_device(self.device)
        pts = wp.array(ptr=self._points.data_ptr(), dtype=wp.vec3, shape=(self._points.shape[0],), device=wdev,
                       copy=False)
        idx = wp.array(ptr=self._indices.data_ptr(), dtype=wp.int32, shape=(self._indices.shape[0],), device=wdev,
                       copy=False)
        self._wp_arrays = (pts, idx)  # the mesh keeps pointers into these (and they into the tensors)
        self.mesh = wp.Mesh(points=pts, indices=idx, support_winding_number=winding)
        self.winding = winding

    def nearest_faces(self, points: torch.Tensor, max_dist: float = 1e30) -> torch.Tensor:
        """Index ``(Q,)`` long of the closest face to each point (``-1`` if none within ``max_dist``)."""
        q = points.detach().float().contiguous()
        out = torch.zeros(q.shape[0], dtype=torch.int32, device=q.device)
        if q.shape[0]:
            qa = wp.array(ptr=q.data_ptr(), dtype=wp.vec3, shape=(q.shape[0],), device=warp_device(q.device), copy=False)
            qa._diffvc_owner = q
            parallel_launch(_nearest_face_kernel, q.shape[0], [self.mesh.id, qa, float(max_dist)],
                            [out], device=q.device, min_per_thread=256)
        return out.long()


    def inside(self, points: torch.Tensor, accuracy: float = 2.0) -> torch.Tensor:
        """Boolean ``(Q,)``: fast (Barill et al. 2018 dipole) winding number > 1/2. Needs ``winding=True``."""
        if not self.winding:
            raise ValueError("winding: build the MeshBVH with winding=True for inside tests")
        q = points.detach().float().contiguous()
        out = torch.zeros(q.shape[0], dtype=torch.int32, device=q.device)
        if q.shape[0]:
            qa = wp.array(ptr=q.data_ptr(), dtype=wp.vec3, shape=(q.shape[0],), device=warp_device(q.device), copy=False)
            qa._diffvc_owner = q
            parallel_launch(_inside_fast_kernel, q.shape[0], [self.mesh.id, qa, float(accuracy)], [out],
                            device=q.device, min_per_thread=256)
        return out.bool()


def inside_fast(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, accuracy: float = 2.0) -> torch.Tensor:
    """Inside test by Warp's BVH fast winding number (approximate near the surface). No autograd."""
    return MeshBVH(verts, faces, winding=True).inside(points, accuracy)


def nearest_faces(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Closest face index ``(Q,)`` per query point via a BVH built for this call."""
    return MeshBVH(verts, faces).nearest_faces(points)


__all__ = ["winding_numbers", "nearest_faces", "inside_fast", "MeshBVH", "launch"]
