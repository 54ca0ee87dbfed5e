"""Materials: Lambertian diffuse and GGX microfacet specular BRDFs, and shading under lights.

Plain torch, differentiable w.r.t. every argument. Directions are unit vectors (..., 3) pointing
**away** from the surface: ``wi`` towards the light, ``wo`` towards the viewer, ``n`` the shading
normal. Shapes broadcast. BRDF values are per steradian (1/sr); reflected radiance is
``f(wi, wo) * L_i * max(n.wi, 0)``.

GGX (Walter et al. 2007) with roughness ``r`` (perceptual) and ``alpha = r^2``:

    D(h) = alpha^2 / (pi ((n.h)^2 (alpha^2 - 1) + 1)^2)
    G    = G1(wi) G1(wo),  G1(w) = 2 (n.w) / ((n.w) + sqrt(alpha^2 + (1 - alpha^2)(n.w)^2))  (Smith)
    F    = f0 + (1 - f0) (1 - wo.h)^5                                                 (Schlick)
    f_s  = D G F / (4 (n.wi)(n.wo))

Gradients at the horizon: BRDFs are zero for ``n.wi <= 0`` or ``n.wo <= 0``; the cosines are
clamped to ``eps`` inside the formulas, so values and gradients stay finite there (the gradient
of the clamped branch is zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import check_float, check_same_dtype, check_shape

_EPS = 1e-7


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _lambert(albedo: torch.Tensor) -> torch.Tensor:
    return albedo / math.pi


def _ggx_distribution(n_dot_h: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    a2 = (roughness * roughness) ** 2
    c = n_dot_h.clamp(0.0, 1.0)
    den = c * c * (a2 - 1) + 1
    return a2 / (math.pi * den * den).clamp_min(_EPS)


def _smith_g1(n_dot_w: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    a2 = (roughness * roughness) ** 2
    c = n_dot_w.clamp_min(_EPS)
    return 2 * c / (c + torch.sqrt(a2 + (1 - a2) * c * c))


def _smith_g(n_dot_wi: torch.Tensor, n_dot_wo: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    return _smith_g1(n_dot_wi, roughness) * _smith_g1(n_dot_wo, roughness)


def _fresnel_schlick(cos_theta: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    return f0 + (1 - f0) * (1 - cos_theta.clamp(0.0, 1.0)) ** 5


def _ggx_specular(n: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor, roughness: torch.Tensor,
                 f0: torch.Tensor) -> torch.Tensor:
    h = _normalize(wi + wo)
    ni, no = _dot(n, wi), _dot(n, wo)
    D = _ggx_distribution(_dot(n, h), roughness)
    G = _smith_g(ni, no, roughness)
    F = _fresnel_schlick(_dot(wo, h), f0)
    val = D * G * F / (4 * ni.clamp_min(_EPS) * no.clamp_min(_EPS))
    return torch.where((ni > 0) & (no > 0), val, torch.zeros_like(val))


def _ggx_brdf(n, wi, wo, albedo, roughness, f0) -> torch.Tensor:
    ni, no = _dot(n, wi), _dot(n, wo)
    diffuse = _lambert(albedo) * ((ni > 0) & (no > 0)).to(albedo.dtype)
    return diffuse + _ggx_specular(n, wi, wo, roughness, f0)


def _checked(**named) -> list:
    """Shading inputs: finite floating tensors (scalars allowed) of one dtype that broadcast."""
    out = [check_float(v, k, coerce=False) for k, v in named.items()]
    check_same_dtype(*zip(named, out))
    try:
        torch.broadcast_shapes(*(t.shape for t in out))
    except RuntimeError:
        raise ValueError("arguments must broadcast: " + ", ".join(f"{k} {tuple(t.shape)}" for k, t in zip(named, out))) \
            from None
    return out


def _unit(**named) -> None:
    for k, v in named.items():
        check_shape(v, k, (..., 3))


def lambert(albedo: torch.Tensor) -> torch.Tensor:
    """Lambertian BRDF value ``albedo / pi`` (..., C), independent of the directions."""
    _checked(albedo=albedo)
    return _lambert(albedo)


def ggx_distribution(n_dot_h: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """GGX normal distribution D(h) (1/sr) for ``n.h`` (..., 1) and perceptual roughness."""
    _checked(n_dot_h=n_dot_h, roughness=roughness)
    return _ggx_distribution(n_dot_h, roughness)


def smith_g1(n_dot_w: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Smith masking G1 for GGX (height-uncorrelated form), values in [0, 1]."""
    _checked(n_dot_w=n_dot_w, roughness=roughness)
    return _smith_g1(n_dot_w, roughness)


def smith_g(n_dot_wi: torch.Tensor, n_dot_wo: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Separable Smith shadowing-masking ``G1(wi) G1(wo)``."""
    _checked(n_dot_wi=n_dot_wi, n_dot_wo=n_dot_wo, roughness=roughness)
    return _smith_g(n_dot_wi, n_dot_wo, roughness)


def fresnel_schlick(cos_theta: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """Schlick's Fresnel approximation ``f0 + (1 - f0)(1 - cos)^5``."""
    _checked(cos_theta=cos_theta, f0=f0)
    return _fresnel_schlick(cos_theta, f0)


def ggx_specular(n: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor, roughness: torch.Tensor,
                 f0: torch.Tensor) -> torch.Tensor:
    """GGX microfacet specular BRDF value (..., C) (see module docstring); 0 below the horizon.

    n, wi, wo: (..., 3) unit vectors; roughness: (..., 1) or scalar tensor in (0, 1]; f0: (..., C)
    reflectance at normal incidence (0.04 for dielectrics, the base colour for metals).
    """
    _checked(n=n, wi=wi, wo=wo)
    _unit(n=n, wi=wi, wo=wo)
    _checked(roughness=roughness, f0=f0)
    return _ggx_specular(n, wi, wo, roughness, f0)


def ggx_brdf(n, wi, wo, albedo, roughness, f0) -> torch.Tensor:
    """Lambert diffuse + GGX specular: ``albedo / pi + f_s``; zero below the horizon."""
    _checked(n=n, wi=wi, wo=wo)
    _unit(n=n, wi=wi, wo=wo)
    _checked(albedo=albedo, roughness=roughness, f0=f0)
    return _ggx_brdf(n, wi, wo, albedo, roughness, f0)


@dataclass(frozen=True)
class Material:
    """A Lambert + GGX material. albedo: (..., 3) diffuse reflectance in [0, 1]; roughness:
    (..., 1) perceptual roughness; f0: (..., 3) specular reflectance at normal incidence.
    Each may be a per-pixel tensor (e.g. from :func:`interpolate` or :func:`texture`)."""

    albedo: torch.Tensor
    roughness: torch.Tensor
    f0: torch.Tensor

    def __post_init__(self):
        check_float(self.albedo, "albedo", shape=(..., 3), coerce=False)
        check_float(self.roughness, "roughness", shape=(..., 1), coerce=False)
        check_float(self.f0, "f0", shape=(..., 3), coerce=False)
        check_same_dtype(("albedo", self.albedo), ("roughness", self.roughness), ("f0", self.f0))

    @staticmethod
    def create(albedo=(0.8, 0.8, 0.8), roughness=0.5, f0=0.04, dtype=None, device=None) -> "Material":
        def t(x, c):
            x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=dtype or torch.get_default_dtype(), device=device)
            return x.expand(c) if x.dim() == 0 else x

        return Material(t(albedo, 3), t(roughness, 1), t(f0, 3))


def shade(positions: torch.Tensor, normals: torch.Tensor, view_dirs: torch.Tensor, material: Material,
          lights, specular: bool = True) -> torch.Tensor:
    """Outgoing radiance (..., 3) of surface points under a list of lights.

    positions: (..., 3) world positions; normals: (..., 3) unit normals; view_dirs: (..., 3) unit
    vectors from the surface towards the camera; material: :class:`Material`; lights: a list of
    lights from :mod:`diffvc.render.lights` (each provides ``incident(positions) -> (wi, L)`` or,
    for ambient/environment lights, ``irradiance(normals)``). With ``specular=False`` only the
    Lambertian term is evaluated. Differentiable w.r.t. everything.
    """
    _checked(positions=positions, normals=normals, view_dirs=view_dirs)
    _unit(positions=positions, normals=normals, view_dirs=view_dirs)
    if not isinstance(material, Material):
        raise TypeError(f"material must be a Material, got {type(material).__name__}")
    if isinstance(lights, (str, bytes)) or not hasattr(lights, "__iter__"):
        raise TypeError(f"lights must be a list of lights, got {type(lights).__name__}")
    return _shade(positions, normals, view_dirs, material.albedo, material.roughness, material.f0, lights, specular)


def _shade(positions, normals, view_dirs, albedo, roughness, f0, lights, specular: bool = True) -> torch.Tensor:
    """:func:`shade` without its input checks (for callers whose per-pixel inputs are correct by
    construction, e.g. the rasterizing renderer; finiteness checks on every pixel cost more than
    the shading). ``roughness`` and ``f0`` are read only with ``specular``."""
    out = torch.zeros(torch.broadcast_shapes(positions.shape, normals.shape), dtype=normals.dtype,
                      device=normals.device)
    for light in lights:
        if hasattr(light, "incident"):
            wi, L = light.incident(positions)
            cos = _dot(normals, wi).clamp_min(0.0)
            if specular:
                f = _ggx_brdf(normals, wi, view_dirs, albedo, roughness, f0)
            else:
                f = _lambert(albedo) * (cos > 0)
            out = out + f * L * cos
        else:
            out = out + _lambert(albedo) * light.irradiance(normals)
    return out
