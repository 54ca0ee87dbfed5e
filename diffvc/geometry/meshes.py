"""Batched triangle meshes of different sizes (PyTorch3D-style list / padded / packed views).

* list: ``verts_list()[i]`` is ``(V_i, 3)``, ``faces_list()[i]`` is ``(F_i, 3)`` (local indices).
* padded: ``verts_padded()`` is ``(N, max V_i, 3)`` (zeros past V_i); ``faces_padded()`` is
  ``(N, max F_i, 3)`` (``-1`` past F_i).
* packed: ``verts_packed()`` is ``(sum V_i, 3)``; ``faces_packed()`` indexes the packed vertices.

Views are computed on first use and cached; the object is immutable (``offset_verts`` and
``update_verts`` return new objects), so autograd sees no in-place updates.
"""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

import torch

from ._checks import check_mesh


class Meshes:
    """A batch of ``N`` triangle meshes.

    Args:
        verts: list of ``(V_i, 3)`` float tensors, or a padded ``(N, V, 3)`` tensor.
        faces: list of ``(F_i, 3)`` integer tensors, or a padded ``(N, F, 3)`` tensor (rows with
            ``-1`` are padding). With padded verts, vertices past the largest index a mesh's faces
            use are treated as padding.
    """

    def __init__(self, verts, faces):
        if isinstance(verts, torch.Tensor) and isinstance(faces, torch.Tensor):
            if verts.dim() != 3 or faces.dim() != 3 or verts.shape[0] != faces.shape[0]:
                raise ValueError(f"padded verts (N, V, 3) and faces (N, F, 3) needed, got {tuple(verts.shape)} and {tuple(faces.shape)}")
            vl, fl = [], []
            for i in range(verts.shape[0]):
                f = faces[i]
                f = f[(f >= 0).all(dim=1)]
                nv = int(f.max()) + 1 if f.numel() else 0
                vl.append(verts[i, :nv])
                fl.append(f)
            verts, faces = vl, fl
        if not isinstance(verts, (list, tuple)) or not isinstance(faces, (list, tuple)):
            raise TypeError("verts and faces must both be lists of tensors or both padded tensors")
        if len(verts) != len(faces):
            raise ValueError(f"verts has {len(verts)} meshes but faces has {len(faces)}")
        checked_v, checked_f = [], []
        for i, (v, f) in enumerate(zip(verts, faces)):
            v, f = check_mesh(v, f, f"verts[{i}]", f"faces[{i}]")
            checked_v.append(v)
            checked_f.append(f)
        if checked_v:
            d0, t0 = checked_v[0].device, checked_v[0].dtype
            for i, v in enumerate(checked_v):
                if v.device != d0 or v.dtype != t0:
                    raise ValueError(f"verts[{i}] is {v.dtype} on {v.device}, expected {t0} on {d0} like verts[0]")
        self._verts = list(checked_v)
        self._faces = list(checked_f)

    # --- basic properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._verts)

    def __getitem__(self, i) -> "Meshes":
        if isinstance(i, int):
            return Meshes([self._verts[i]], [self._faces[i]])
        idx = range(len(self))[i] if isinstance(i, slice) else list(i)
        return Meshes([self._verts[k] for k in idx], [self._faces[k] for k in idx])

    @property
    def device(self) -> torch.device:
        return self._verts[0].device if self._verts else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._verts[0].dtype if self._verts else torch.get_default_dtype()

    def isempty(self) -> bool:
        return len(self) == 0 or all(v.shape[0] == 0 for v in self._verts)

    def to(self, device=None, dtype=None) -> "Meshes":
        return Meshes([v.to(device=device, dtype=dtype) for v in self._verts], [f.to(device=device) for f in self._faces])

    def detach(self) -> "Meshes":
        return Meshes([v.detach() for v in self._verts], list(self._faces))

    # --- list view ----------------------------------------------------------------------------
    def verts_list(self) -> list[torch.Tensor]:
        return list(self._verts)

    def faces_list(self) -> list[torch.Tensor]:
        return list(self._faces)

    @cached_property
    def _num_verts(self) -> torch.Tensor:
        return torch.tensor([v.shape[0] for v in self._verts], dtype=torch.long, device=self.device)

    @cached_property
    def _num_faces(self) -> torch.Tensor:
        return torch.tensor([f.shape[0] for f in self._faces], dtype=torch.long, device=self.device)

    def num_verts_per_mesh(self) -> torch.Tensor:
        """``(N,)`` long."""
        return self._num_verts

    def num_faces_per_mesh(self) -> torch.Tensor:
        """``(N,)`` long."""
        return self._num_faces

    # --- packed view --------------------------------------------------------------------------
    def mesh_to_verts_packed_first_idx(self) -> torch.Tensor:
        return torch.cumsum(self._num_verts, 0) - self._num_verts

    def mesh_to_faces_packed_first_idx(self) -> torch.Tensor:
        return torch.cumsum(self._num_faces, 0) - self._num_faces

    @cached_property
    def _verts_packed(self) -> torch.Tensor:
        if not self._verts:
            return torch.zeros(0, 3)
        return torch.cat(self._verts, 0)

    @cached_property
    def _faces_packed(self) -> torch.Tensor:
        if not self._faces:
            return torch.zeros(0, 3, dtype=torch.long)
        first = self.mesh_to_verts_packed_first_idx()
        return torch.cat([f + first[i] for i, f in enumerate(self._faces)], 0)

    def verts_packed(self) -> torch.Tensor:
        """``(sum V_i, 3)``."""
        return self._verts_packed

    def faces_packed(self) -> torch.Tensor:
        """``(sum F_i, 3)`` indices into :meth:`verts_packed`."""
        return self._faces_packed

    def verts_packed_to_mesh_idx(self) -> torch.Tensor:
        """``(sum V_i,)`` mesh index of each packed vertex."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), self._num_verts)

    def faces_packed_to_mesh_idx(self) -> torch.Tensor:
        """``(sum F_i,)`` mesh index of each packed face."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), self._num_faces)

    # --- padded view --------------------------------------------------------------------------
    def verts_padded(self) -> torch.Tensor:
        """``(N, max V_i, 3)``, zero padding."""
        n = max((v.shape[0] for v in self._verts), default=0)
        out = [torch.cat([v, v.new_zeros(n - v.shape[0], 3)]) for v in self._verts]
        return torch.stack(out) if out else torch.zeros(0, 0, 3)

    def faces_padded(self) -> torch.Tensor:
        """``(N, max F_i, 3)``, ``-1`` padding."""
        n = max((f.shape[0] for f in self._faces), default=0)
        out = [torch.cat([f, f.new_full((n - f.shape[0], 3), -1)]) for f in self._faces]
        return torch.stack(out) if out else torch.zeros(0, 0, 3, dtype=torch.long)

    # --- geometry -----------------------------------------------------------------------------
    def face_normals_packed(self) -> torch.Tensor:
        from .normals import face_normals

        return face_normals(self.verts_packed(), self.faces_packed())

    def vertex_normals_packed(self) -> torch.Tensor:
        from .normals import vertex_normals

        return vertex_normals(self.verts_packed(), self.faces_packed())

    def face_areas_packed(self) -> torch.Tensor:
        from .measures import face_areas

        return face_areas(self.verts_packed(), self.faces_packed())

    def volumes(self) -> torch.Tensor:
        """``(N,)`` enclosed volume of each mesh."""
        from .measures import volume

        return torch.stack([volume(v, f) for v, f in zip(self._verts, self._faces)]) if len(self) else torch.zeros(0)

    def surface_areas(self) -> torch.Tensor:
        """``(N,)`` surface area of each mesh."""
        a = self.face_areas_packed()
        return torch.zeros(len(self), dtype=a.dtype, device=a.device).index_add(0, self.faces_packed_to_mesh_idx(), a)

    def edges_packed(self) -> torch.Tensor:
        """``(E, 2)`` unique edges over the packed vertices."""
        from .topology import edges

        return edges(self.faces_packed())

    # --- new meshes ---------------------------------------------------------------------------
    def update_verts(self, verts_packed: torch.Tensor) -> "Meshes":
        """Same topology with new packed vertex positions ``(sum V_i, 3)``."""
        if verts_packed.shape != self.verts_packed().shape:
            raise ValueError(f"verts_packed must have shape {tuple(self.verts_packed().shape)}, got {tuple(verts_packed.shape)}")
        return Meshes(list(torch.split(verts_packed, self._num_verts.tolist())), list(self._faces))

    def offset_verts(self, offsets_packed: torch.Tensor) -> "Meshes":
        """New meshes with ``verts_packed() + offsets_packed``."""
        return self.update_verts(self.verts_packed() + offsets_packed)

    def extend(self, n: int) -> "Meshes":
        """Each mesh repeated ``n`` times (``[m0]*n + [m1]*n + ...``)."""
        return Meshes([v for v in self._verts for _ in range(n)], [f for f in self._faces for _ in range(n)])

    def __repr__(self) -> str:
        return f"Meshes(n={len(self)}, verts={self._num_verts.tolist()}, faces={self._num_faces.tolist()})"


def join_meshes(meshes: Sequence[Meshes]) -> Meshes:
    """Concatenate batches into one batch."""
    vl, fl = [], []
    for m in meshes:
        vl += m.verts_list()
        fl += m.faces_list()
    return Meshes(vl, fl)
