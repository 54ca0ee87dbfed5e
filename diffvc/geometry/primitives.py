"""Mesh primitives. Closed ones are watertight and consistently outward-oriented (positive volume).

Every function returns ``(verts (V, 3), faces (F, 3) long)`` and takes ``dtype`` / ``device``.
Coordinates are y-up and centred at the origin.
"""

from __future__ import annotations

import math

import torch

from .._validate import as_float, as_int, as_tensor
from .topology import edges as _edges


def _out(v, f, dtype, device):
    return (torch.as_tensor(v, dtype=torch.float64).to(dtype=dtype, device=device),
            torch.as_tensor(f, dtype=torch.long).to(device=device))


def _weld(v: torch.Tensor, f: torch.Tensor, tol: float = 1e-9):
    """Merge coincident vertices (within ``tol``) and drop faces that became degenerate."""
    key = torch.round(v / tol).long()
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    nv = torch.zeros(uniq.shape[0], 3, dtype=v.dtype).index_copy(0, inv, v)
    f = inv[f]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    return nv, f[ok]


def _grid_faces(nu: int, nv: int, wrap_u: bool = False, wrap_v: bool = False) -> torch.Tensor:
    """Two triangles per cell of an ``(nu+1) x (nv+1)`` vertex grid (index ``i*(nv+1)+j``), CCW in (u, v)."""
    i, j = torch.meshgrid(torch.arange(nu), torch.arange(nv), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    cols = nv + 1
    a = i * cols + j
    b = (i + 1) * cols + j
    c = (i + 1) * cols + j + 1
    d = i * cols + j + 1
    return torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])


def icosphere(subdivisions: int = 2, radius: float = 1.0, dtype=torch.float32, device="cpu"):
    """Geodesic sphere: an icosahedron subdivided ``subdivisions`` times (20 * 4^s faces), projected to the sphere."""
    subdivisions = as_int(subdivisions, "subdivisions", minimum=0)
    radius = as_float(radius, "radius", positive=True)
    t = (1.0 + 5.0 ** 0.5) / 2.0
    v = torch.tensor([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                      [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
                     dtype=torch.float64)
    f = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                      [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                      [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    v = v / v.norm(dim=1, keepdim=True)
    for _ in range(subdivisions):
        e, inv = _edges(f, return_inverse=True)
        mid = v[e[:, 0]] + v[e[:, 1]]
        mid = mid / mid.norm(dim=1, keepdim=True)
        n = v.shape[0]
        m01, m12, m20 = n + inv[:, 0], n + inv[:, 1], n + inv[:, 2]
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = torch.cat([torch.stack([a, m01, m20], 1), torch.stack([m01, b, m12], 1),
                       torch.stack([m20, m12, c], 1), torch.stack([m01, m12, m20], 1)])
        v = torch.cat([v, mid])
    return _out(v * radius, f, dtype, device)


def uv_sphere(rings: int = 16, segments: int = 32, radius: float = 1.0, dtype=torch.float32, device="cpu"):
    """Latitude-longitude sphere with poles on the y axis: ``rings`` bands, ``segments`` around."""
    rings, segments = as_int(rings, "rings", minimum=2), as_int(segments, "segments", minimum=3)
    radius = as_float(radius, "radius", positive=True)
    theta = torch.arange(1, rings, dtype=torch.float64) * math.pi / rings
    phi = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    ring = torch.stack([torch.sin(th) * torch.cos(ph), torch.cos(th), -torch.sin(th) * torch.sin(ph)], -1).reshape(-1, 3)
    v = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                   torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)])
    s = segments
    j = torch.arange(s)
    jn = (j + 1) % s
    top = torch.stack([torch.zeros_like(j), 1 + j, 1 + jn], 1)
    faces = [top]
    for r in range(rings - 2):
        a = 1 + r * s + j
        b = 1 + (r + 1) * s + j
        c = 1 + (r + 1) * s + jn
        d = 1 + r * s + jn
        faces += [torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)]
    last = 1 + (rings - 2) * s
    bottom_id = v.shape[0] - 1
    faces.append(torch.stack([last + j, torch.full_like(j, bottom_id), last + jn], 1))
    return _out(v * radius, torch.cat(faces), dtype, device)


def _size3(size):
    s = as_tensor(size, "size", dtype=torch.float64).detach().cpu().reshape(-1)
    if s.numel() == 1:
        s = s.repeat(3)
    if s.numel() != 3 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"size must be a positive scalar or 3 positive numbers, got {size}")
    return s


def box(size=1.0, segments: int = 1, dtype=torch.float32, device="cpu"):
    """Axis-aligned box centred at the origin with side lengths ``size`` (scalar or 3), each face split into ``segments^2`` quads."""
    segments = as_int(segments, "segments", minimum=1)
    s = _size3(size)
    n = segments
    g = torch.linspace(-1.0, 1.0, n + 1, dtype=torch.float64)
    U, V = torch.meshgrid(g, g, indexing="ij")
    U, V = U.reshape(-1), V.reshape(-1)
    one = torch.ones_like(U)
    verts, faces = [], []
    # (u axis, v axis, normal) triples with u x v = normal (so CCW in (u, v) faces outward)
    for axis in range(3):
        for sign in (1.0, -1.0):
            p = torch.zeros(U.shape[0], 3, dtype=torch.float64)
            ua, va = (axis + 1) % 3, (axis + 2) % 3  # e_ua x e_va = e_axis
            p[:, axis] = sign * one
            if sign > 0:
                p[:, ua], p[:, va] = U, V
            else:
                p[:, ua], p[:, va] = V, U
            faces.append(_grid_faces(n, n) + sum(x.shape[0] for x in verts))
            verts.append(p)
    v, f = _weld(torch.cat(verts), torch.cat(faces))  # weld at unit size: the tolerance is relative to the box
    v = v * (s / 2)
    return _out(v, f, dtype, device)


def grid(size=(1.0, 1.0), resolution=(1, 1), dtype=torch.float32, device="cpu"):
    """Open rectangular grid in the xz plane at y = 0, normal +y, ``resolution`` cells along x and z.

    Returns ``(verts ((nx+1)*(nz+1), 3), faces (2*nx*nz, 3))``; vertex ``i*(nz+1)+j`` is at column i (x), row j (z).
    """
    sz2 = as_tensor(size, "size", dtype=torch.float64).detach().cpu().reshape(-1)
    if sz2.numel() not in (1, 2):
        raise ValueError(f"size must be a number or a pair, got {size!r}")
    sx, sz = (float(sz2[0]), float(sz2[-1]))
    as_float(sx, "size", positive=True), as_float(sz, "size", positive=True)
    res = [resolution, resolution] if not isinstance(resolution, (tuple, list)) else list(resolution)
    if len(res) != 2:
        raise ValueError(f"resolution must be an int or a pair, got {resolution!r}")
    nx, nz = as_int(res[0], "resolution", minimum=1), as_int(res[1], "resolution", minimum=1)
    x = torch.linspace(-sx / 2, sx / 2, nx + 1, dtype=torch.float64)
    z = torch.linspace(-sz / 2, sz / 2, nz + 1, dtype=torch.float64)
    X, Z = torch.meshgrid(x, z, indexing="ij")
    v = torch.stack([X.reshape(-1), torch.zeros(X.numel(), dtype=torch.float64), Z.reshape(-1)], 1)
    f = _grid_faces(nx, nz)[:, [0, 2, 1]]  # (x, z) CCW has normal -y; flip for +y
    return _out(v, f, dtype, device)


def plane(size=1.0, resolution=1, dtype=torch.float32, device="cpu"):
    """Alias of :func:`grid` (square by default)."""
    return grid(size, resolution, dtype=dtype, device=device)


def cylinder(radius: float = 0.5, height: float = 1.0, segments: int = 32, rings: int = 1,
             dtype=torch.float32, device="cpu"):
    """Closed cylinder along y, centred at the origin, with capped ends (a fan around a centre vertex)."""
    segments, rings = as_int(segments, "segments", minimum=3), as_int(rings, "rings", minimum=1)
    radius, height = as_float(radius, "radius", positive=True), as_float(height, "height", positive=True)
    phi = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    ys = torch.linspace(-height / 2, height / 2, rings + 1, dtype=torch.float64)
    Y, P = torch.meshgrid(ys, phi, indexing="ij")
    side = torch.stack([radius * torch.cos(P), Y, -radius * torch.sin(P)], -1).reshape(-1, 3)
    s = segments
    j = torch.arange(s)
    jn = (j + 1) % s
    faces = []
    for r in range(rings):
        a, b = r * s + j, r * s + jn
        c, d = (r + 1) * s + jn, (r + 1) * s + j
        faces += [torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)]
    bottom_c, top_c = side.shape[0], side.shape[0] + 1
    v = torch.cat([side, torch.tensor([[0.0, -height / 2, 0.0], [0.0, height / 2, 0.0]], dtype=torch.float64)])
    faces.append(torch.stack([torch.full_like(j, bottom_c), jn, j], 1))
    faces.append(torch.stack([torch.full_like(j, top_c), rings * s + j, rings * s + jn], 1))
    return _out(v, torch.cat(faces), dtype, device)


def torus(major_radius: float = 1.0, minor_radius: float = 0.25, major_segments: int = 32,
          minor_segments: int = 16, dtype=torch.float32, device="cpu"):
    """Torus around the y axis: tube of radius ``minor_radius`` whose centre circle has radius ``major_radius``."""
    major_radius = as_float(major_radius, "major_radius", positive=True)
    minor_radius = as_float(minor_radius, "minor_radius", positive=True)
    if not (0 < minor_radius < major_radius):
        raise ValueError(f"need 0 < minor_radius < major_radius, got {minor_radius}, {major_radius}")
    major_segments = as_int(major_segments, "major_segments", minimum=3)
    minor_segments = as_int(minor_segments, "minor_segments", minimum=3)
    u = torch.arange(major_segments, dtype=torch.float64) * 2 * math.pi / major_segments
    w = torch.arange(minor_segments, dtype=torch.float64) * 2 * math.pi / minor_segments
    U, W = torch.meshgrid(u, w, indexing="ij")
    rr = major_radius + minor_radius * torch.cos(W)
    v = torch.stack([rr * torch.cos(U), minor_radius * torch.sin(W), -rr * torch.sin(U)], -1).reshape(-1, 3)
    m, n = major_segments, minor_segments
    i, j = torch.meshgrid(torch.arange(m), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    a = i * n + j
    b = ((i + 1) % m) * n + j
    c = ((i + 1) % m) * n + (j + 1) % n
    d = i * n + (j + 1) % n
    f = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    return _out(v, f, dtype, device)
