"""Mesh and point-cloud file I/O (OBJ, PLY, STL, OFF, glTF/GLB) through trimesh, as tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._validate import describe
from ._checks import check_mesh, check_points


class MissingFileError(FileNotFoundError, ValueError):
    """A file to load does not exist (a ``FileNotFoundError`` and a ``ValueError``)."""


_WRITERS = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")


def _readable() -> tuple:
    import trimesh

    return tuple("." + f for f in sorted(trimesh.available_formats()))


def _path(path, name: str = "path", must_exist: bool = False, suffixes=None) -> Path:
    if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {describe(path)}")
    path = Path(path)
    if must_exist and not path.is_file():
        raise MissingFileError(f"{name} does not exist or is not a file: {path}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        which = suffixes if len(suffixes) <= 8 else "a suffix of a format trimesh reads (.obj, .ply, .stl, .glb, ...)"
        raise ValueError(f"{name} must end in {which} (the format follows the suffix), got {path.name!r}")
    return path


def load_mesh(path, dtype=torch.float32, device="cpu", process: bool = False):
    """Load a triangle mesh; scenes (glTF/GLB with several nodes) are flattened into one mesh.

    Args:
        process: let trimesh merge duplicate vertices / fix winding (off by default: the file's
            vertices and faces are returned as they are).

    Returns:
        ``(verts (V, 3), faces (F, 3) long)``.
    """
    import trimesh

    path = _path(path, must_exist=True, suffixes=_readable())
    m = trimesh.load(str(path), force="mesh", process=process)
    if not isinstance(m, trimesh.Trimesh):
        raise ValueError(f"path {path} holds no triangle mesh (got {type(m).__name__})")
    v = torch.as_tensor(np.asarray(m.vertices, dtype=np.float64)).to(dtype=dtype, device=device)
    f = torch.as_tensor(np.asarray(m.faces, dtype=np.int64)).to(device=device)
    return v, f.reshape(-1, 3)


def save_mesh(path, verts: torch.Tensor, faces: torch.Tensor, vertex_colors: torch.Tensor | None = None) -> Path:
    """Write a triangle mesh; the format follows the suffix (``.obj``, ``.ply``, ``.stl``, ``.glb``, ``.gltf``, ``.off``)."""
    import trimesh

    path = _path(path, suffixes=_WRITERS)
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

    path = _path(path, must_exist=True, suffixes=_readable())
    m = trimesh.load(str(path), process=False)
    v = np.asarray(m.vertices, dtype=np.float64)
    return torch.as_tensor(v).to(dtype=dtype, device=device)


def save_points(path, points: torch.Tensor) -> Path:
    """Write a point cloud ``(N, 3)`` (PLY)."""
    import trimesh

    path = _path(path, suffixes=(".ply", ".obj", ".off", ".glb", ".gltf"))
    check_points(points, "points")
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(points.detach().cpu().double().numpy()).export(str(path))
    return path
