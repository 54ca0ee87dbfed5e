"""Shading: BRDF properties (normalisation, reciprocity), SH irradiance vs quadrature, gradients
of materials and lights vs float64 finite differences."""

import math

import torch

from diffvc.render.lights import AmbientLight, DirectionalLight, PointLight, SHEnvironment, sh_basis
from diffvc.render.shading import Material, ggx_brdf, ggx_distribution, ggx_specular, shade
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _sphere_grid(n=200):
    th = (torch.arange(n, dtype=D64) + 0.5) * math.pi / n
    ph = (torch.arange(2 * n, dtype=D64) + 0.5) * math.pi / n
    T, P = torch.meshgrid(th, ph, indexing="ij")
    d = torch.stack([torch.sin(T) * torch.cos(P), torch.cos(T), torch.sin(T) * torch.sin(P)], -1)
    dw = torch.sin(T) * (math.pi / n) ** 2
    return d, dw


def test_ggx_distribution_normalised():
    d, dw = _sphere_grid()
    n = torch.tensor([0.0, 1.0, 0.0], dtype=D64)
    for r in (0.3, 0.6, 0.9):
        cos = (d * n).sum(-1, keepdim=True)
        val = (ggx_distribution(cos, torch.tensor(r, dtype=D64)) * cos.clamp_min(0))[..., 0]
        assert abs((val * dw).sum().item() - 1.0) < 2e-2


def test_ggx_reciprocal_and_energy_bounded():
    g = torch.Generator().manual_seed(1)
    n = torch.tensor([0.0, 0.0, 1.0], dtype=D64)
    wi = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=D64).abs(), dim=-1)
    wo = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=D64).abs(), dim=-1)
    r = torch.tensor(0.5, dtype=D64)
    f0 = torch.tensor([0.04, 0.5, 1.0], dtype=D64)
    a = ggx_specular(n, wi, wo, r, f0)
    b = ggx_specular(n, wo, wi, r, f0)
    assert torch.allclose(a, b)
    # directional albedo of the specular lobe <= 1 (f0 = 1, no absorption)
    d, dw = _sphere_grid(120)
    wo1 = torch.nn.functional.normalize(torch.tensor([0.3, 0.0, 1.0], dtype=D64), dim=0)
    f = ggx_specular(n, d, wo1, r, torch.ones(1, dtype=D64))[..., 0]
    alb = (f * (d[..., 2]).clamp_min(0) * dw).sum().item()
    assert 0.8 < alb <= 1.0
    # below the horizon: zero, finite gradient
    wi_below = torch.tensor([0.0, 0.3, -1.0], dtype=D64, requires_grad=True)
    v = ggx_brdf(n, torch.nn.functional.normalize(wi_below, dim=0), wo1, torch.ones(3, dtype=D64), r, f0)
    v.sum().backward()
    assert (v == 0).all() and torch.isfinite(wi_below.grad).all()


def test_sh_irradiance_matches_quadrature():
    g = torch.Generator().manual_seed(2)
    coeffs = torch.randn(9, 3, generator=g, dtype=D64) * 0.3
    coeffs[0] += 2.0
    env = SHEnvironment.create(coeffs)
    d, dw = _sphere_grid(150)
    L = env.radiance(d)
    for n in (torch.tensor([0.0, 1.0, 0.0], dtype=D64), torch.nn.functional.normalize(torch.tensor([1.0, -0.5, 0.3], dtype=D64), dim=0)):
        cos = (d * n).sum(-1).clamp_min(0)
        E = (L * (cos * dw)[..., None]).sum((0, 1))
        assert torch.allclose(env.irradiance(n), E, rtol=2e-3, atol=2e-3)
    assert sh_basis(d).shape == d.shape[:-1] + (9,)


def test_shading_gradients_materials_and_lights():
    g = torch.Generator().manual_seed(3)
    P = torch.randn(6, 3, generator=g, dtype=D64) * 0.3
    N = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=D64) + torch.tensor([0.0, 2.0, 0.0], dtype=D64), dim=-1)
    V = torch.nn.functional.normalize(torch.tensor([0.2, 1.0, 0.5], dtype=D64) - P * 0.1, dim=-1)
    albedo = torch.rand(6, 3, generator=g, dtype=D64).requires_grad_()
    rough = (torch.rand(6, 1, generator=g, dtype=D64) * 0.6 + 0.3).requires_grad_()
    f0 = torch.full((6, 3), 0.04, dtype=D64).requires_grad_()
    lpos = torch.tensor([0.5, 2.0, 1.0], dtype=D64, requires_grad=True)
    lint = torch.tensor([3.0, 2.0, 1.0], dtype=D64, requires_grad=True)
    ldir = torch.tensor([0.3, -1.0, -0.2], dtype=D64, requires_grad=True)
    lirr = torch.tensor([1.0, 0.9, 0.8], dtype=D64, requires_grad=True)
    amb = torch.tensor([0.1, 0.2, 0.3], dtype=D64, requires_grad=True)
    sh = (torch.randn(9, 3, generator=g, dtype=D64) * 0.1).requires_grad_()
    normals = N.clone().requires_grad_()

    def f(albedo, rough, f0, lpos, lint, ldir, lirr, amb, sh, normals):
        lights = [PointLight(lpos, lint), DirectionalLight(ldir, lirr), AmbientLight(amb), SHEnvironment(sh)]
        return shade(P, normals, V, Material(albedo, rough, f0), lights)

    assert_grad_close(f, (albedo, rough, f0, lpos, lint, ldir, lirr, amb, sh, normals), rtol=1e-6)
