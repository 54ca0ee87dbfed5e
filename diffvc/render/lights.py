"""Lights: point, directional, ambient and spherical-harmonics environment.

Each light is an immutable dataclass of tensors (every field may require grad). Lights that
come from a direction provide ``incident(positions) -> (wi, L)``: unit directions (..., 3) from
the surface towards the light and the incident radiance-times-solid-angle (..., 3), i.e. the
irradiance the light delivers on a surface facing it. Ambient and environment lights provide
``irradiance(normals) -> (..., 3)`` (cosine-weighted over the hemisphere) and ``radiance(dirs)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float, check_same_dtype


def _fields(obj, *names, last: int = 3) -> None:
    """A light's fields: finite floating tensors of shape ``(..., last)`` and one dtype."""
    for n in names:
        check_float(getattr(obj, n), n, shape=(..., last), coerce=False)
    check_same_dtype(*((n, getattr(obj, n)) for n in names))


def _t(x, dtype=None, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(x, dtype=dtype or torch.get_default_dtype(), device=device)


@dataclass(frozen=True)
class PointLight:
    """Isotropic point light. position: (3,) world units; intensity: (3,) radiant intensity
    (W/sr per channel). Irradiance at distance r facing the light: ``intensity / r^2``."""

    position: torch.Tensor
    intensity: torch.Tensor

    def __post_init__(self):
        _fields(self, "position", "intensity")

    @staticmethod
    def create(position, intensity=(1.0, 1.0, 1.0), dtype=None, device=None) -> "PointLight":
        return PointLight(_t(position, dtype, device), _t(intensity, dtype, device))

    def incident(self, positions: torch.Tensor):
        d = self.position - positions
        r2 = (d * d).sum(-1, keepdim=True).clamp_min(1e-12)
        return d / r2.sqrt(), self.intensity / r2


@dataclass(frozen=True)
class DirectionalLight:
    """Distant light. direction: (3,) the direction light travels (need not be unit);
    irradiance: (3,) W/m^2 on a surface facing it."""

    direction: torch.Tensor
    irradiance_value: torch.Tensor

    def __post_init__(self):
        _fields(self, "direction", "irradiance_value")
        if not bool((self.direction.detach() != 0).any()):
            raise ValueError("direction must be a non-zero vector (the direction light travels)")

    @staticmethod
    def create(direction, irradiance=(1.0, 1.0, 1.0), dtype=None, device=None) -> "DirectionalLight":
        return DirectionalLight(_t(direction, dtype, device), _t(irradiance, dtype, device))

    def incident(self, positions: torch.Tensor):
        wi = -self.direction / self.direction.norm().clamp_min(1e-12)
        return wi.expand_as(positions), self.irradiance_value.expand(positions.shape[:-1] + (3,))


@dataclass(frozen=True)
class AmbientLight:
    """Constant radiance (3,) from every direction; irradiance ``pi * radiance``."""

    radiance_value: torch.Tensor

    def __post_init__(self):
        _fields(self, "radiance_value")

    @staticmethod
    def create(radiance=(0.1, 0.1, 0.1), dtype=None, device=None) -> "AmbientLight":
        return AmbientLight(_t(radiance, dtype, device))

    def radiance(self, dirs: torch.Tensor) -> torch.Tensor:
        return self.radiance_value.expand(dirs.shape[:-1] + (3,))

    def irradiance(self, normals: torch.Tensor) -> torch.Tensor:
        return (math.pi * self.radiance_value).expand(normals.shape[:-1] + (3,))


def sh_basis(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to band 2 (9 functions) at unit directions (..., 3) -> (..., 9).
    Order: Y00, Y1-1, Y10, Y11, Y2-2, Y2-1, Y20, Y21, Y22 (x, y, z world axes)."""
    check_float(dirs, "dirs", shape=(..., 3), coerce=False)
    return _sh_basis(dirs)


def _sh_basis(dirs: torch.Tensor) -> torch.Tensor:
    x, y, z = dirs.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.282095),
        0.488603 * y, 0.488603 * z, 0.488603 * x,
        1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z,
        0.546274 * (x * x - y * y),
    ], dim=-1)


# cosine-lobe convolution per band (Ramamoorthi & Hanrahan 2001): A0 = pi, A1 = 2pi/3, A2 = pi/4
_SH_COSINE = (math.pi, 2 * math.pi / 3, 2 * math.pi / 3, 2 * math.pi / 3) + (math.pi / 4,) * 5


@dataclass(frozen=True)
class SHEnvironment:
    """Distant environment with radiance ``L(w) = sum_k coeffs[k] Y_k(w)``, coeffs (9, 3).

    ``irradiance(n)`` is the exact cosine-weighted integral of this band-limited radiance
    (Ramamoorthi & Hanrahan), used for the diffuse term. ``radiance(dirs)`` serves ray tracers.
    """

    coeffs: torch.Tensor

    def __post_init__(self):
        check_float(self.coeffs, "coeffs", shape=(9, 3), coerce=False)

    @staticmethod
    def create(coeffs, dtype=None, device=None) -> "SHEnvironment":
        return SHEnvironment(_t(coeffs, dtype, device))

    def radiance(self, dirs: torch.Tensor) -> torch.Tensor:
        return _sh_basis(dirs) @ self.coeffs

    def irradiance(self, normals: torch.Tensor) -> torch.Tensor:
        A = torch.tensor(_SH_COSINE, dtype=self.coeffs.dtype, device=self.coeffs.device)
        return _sh_basis(normals) @ (self.coeffs * A[:, None])
