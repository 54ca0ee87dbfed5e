"""Mesh and point-cloud file I/O (OBJ, PLY, STL, OFF, glTF/GLB) through trimesh, as tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._checks import check_mesh, check_points


def load_mesh(path, dtype=torch.float32, device="cpu", process: bool = False):
    """Load a triangle mesh; scenes (glTF/GLB with several nodes) are flattened into one mesh.

    Args:
        process: let trimesh merge duplicate vertices / fix winding (off by default: the file's
            vertices and faces are returned as they are).

    Returns:
        ``(verts (V, 3), faces (F, 3) long)``.
    """
    import trimesh

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path does not exist: {path}")
    m = trimesh.load(str(path), force="mesh", process=process)
    if not isinstance(m, trimesh.Trimesh):
        raise ValueError(f"path {path} holds no triangle mesh (got {type(m).__name__})")
    v = torch.as_tensor(np.asarray(m.vertices, dtype=np.float64)).to(dtype=dtype, device=device)
    f = torch.as_tensor(np.asarray(m.faces, dtype=np.int64)).to(device=device)
    return v, f.reshape(-1, 3)


def save_mesh(path, verts: torch.Tensor, faces: torch.Tensor, vertex_colors: torch.Tensor | None = None) -> Path:
    """Write a triangle mesh; the format follows the suffix (``.obj``, ``.ply``, ``.stl``, ``.glb``, ``.gltf``, ``.off``)."""
    import trimesh

    verts, faces = check_mesh(verts, faces)
    kw = {}
    if vertex_colors is not None:
        kw["vertex_colors"] = vertex_colors.detach().cpu().numpy()
    m = trimesh.Trimesh(verts.detach().cpu().double().numpy(), faces.cpu().numpy(), process=False, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m.export(str(path))
    return path


def load_points(path, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Load a point cloud (PLY vertices, or the vertices of any mesh file) as ``(N, 3)``."""
    import trimesh

    m = trimesh.load(str(path), process=False)
    v = np.asarray(m.vertices, dtype=np.float64)
    return torch.as_tensor(v).to(dtype=dtype, device=device)


def save_points(path, points: torch.Tensor) -> Path:
    """Write a point cloud ``(N, 3)`` (PLY)."""
    import trimesh

    check_points(points, "points")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(points.detach().cpu().double().numpy()).export(str(path))
    return path
