"""Sphere tracing: closed forms, implicit-differentiation and relaxed-silhouette gradients
against finite differences (float64), double backward for eikonal losses."""

import math

import pytest
import torch

from diffvc.geometry import DenseGrid, NeuralField, sdf_sphere, sdf_torus
from diffvc.render import Cameras
from diffvc.render.sphere_trace import render_sdf, shade_sdf, sphere_trace
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _rays(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.1, 0.2, 3.0], dtype=D64).expand(n, 3).clone()
    target = torch.rand(n, 3, generator=g, dtype=D64) * 1.2 - 0.6
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


def test_sphere_depth_and_normal_closed_form():
    c, r = torch.tensor([0.1, -0.05, 0.0], dtype=D64), 0.55
    o, d = _rays(400)
    hits = sphere_trace(lambda p: sdf_sphere(p, c, r), o, d, eps=1e-9, max_steps=200)
    oc = o - c
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    analytic_hit = disc > 0
    assert analytic_hit.sum() > 100 and (~analytic_hit).sum() > 20
    # rays within 1e-6 of grazing may go either way
    clear = disc.abs() > 1e-6
    assert (hits.hit[clear] == analytic_hit[clear]).all()
    m = analytic_hit & hits.hit
    t_true = -b - disc.clamp_min(0).sqrt()
    torch.testing.assert_close(hits.t[m], t_true[m], atol=1e-7, rtol=0)
    n_true = (o + t_true[:, None] * d - c) / r
    torch.testing.assert_close(hits.normals[m], n_true[m], atol=1e-6, rtol=0)
    # interior pixels are fully covered, far misses are empty
    assert (hits.coverage[m & (disc > 0.12)] > 0.999).all() and (hits.coverage[disc < -0.3] < 1e-3).all()


def test_image_gradients_fd_interior_and_silhouette():
    cams = Cameras.look_at([[0.3, 0.4, 2.5]], width=8, height=8, fov_y=40, dtype=D64)

    def f(center, radius, t):
        cam = Cameras(cams.R, t, cams.intrinsics, 8, 8)
        img, _ = render_sdf(cam, lambda p: sdf_sphere(p, center, radius), background=(0.1, 0.2, 0.3),
                            smoothing=0.05, eps=1e-10, max_steps=300)
        return img

    center = torch.tensor([0.05, 0.0, -0.1], dtype=D64, requires_grad=True)
    radius = torch.tensor(0.45, dtype=D64, requires_grad=True)
    _, hits = render_sdf(cams, lambda p: sdf_sphere(p, center, radius))
    assert 10 < int(hits.hit.sum()) < 54  # both interior and silhouette / background pixels
    assert_grad_close(f, [center, radius, cams.t.clone().requires_grad_()], rtol=1e-4, atol=1e-7, eps=1e-6)


def test_silhouette_gradient_matches_area_derivative():
    """Orthographic view of a sphere: f_min along a ray at distance rho from the centre is
    rho - r, so the summed coverage approximates the disk area pi r^2 (in pixels) and its
    derivative 2 pi r (the rate at which the outline sweeps pixels)."""
    px = 64
    scale = 2.0  # world units across the image
    cams = Cameras.look_at([[0.0, 0.0, 3.0]], width=px, height=px, orthographic=True, ortho_scale=scale, dtype=D64)
    radius = torch.tensor(0.6, dtype=D64, requires_grad=True)
    _, hits = render_sdf(cams, lambda p: sdf_sphere(p, (0.0, 0.0, 0.0), radius), smoothing=0.01)
    area = hits.coverage.sum()
    value = float(area.detach())
    area.backward()
    ppu = px / scale  # pixels per world unit
    assert abs(value - math.pi * 0.36 * ppu ** 2) < 0.01 * math.pi * 0.36 * ppu ** 2
    expected = 2 * math.pi * 0.6 * ppu ** 2
    assert abs(float(radius.grad) - expected) < 0.03 * expected


def test_eikonal_double_backward_neural_field_fd():
    torch.manual_seed(0)
    net = NeuralField(out_dim=1, encoding="frequency", hidden=16, layers=2, num_freqs=2, sphere_init=0.5).double()
    names = [n for n, _ in net.named_parameters()]
    o, d = _rays(16, seed=2)

    def f(*ps):
        sd = dict(zip(names, ps))
        hits = sphere_trace(lambda p: torch.func.functional_call(net, sd, (p,)), o, d, eps=1e-10, max_steps=100)
        # eikonal at the hits, and a loss on the normals: both need second derivatives
        m = hits.hit
        return ((hits.grad_norm[m] - 1) ** 2).mean() + (hits.normals[m][:, 2]).sum() * 0.1

    # first and last layers checked (the middle ones are the same code path)
    ps = [p.detach().clone().requires_grad_(k in (0, 1, 4, 5)) for k, (_, p) in enumerate(net.named_parameters())]
    hits = sphere_trace(net, o, d)
    assert int(hits.hit.sum()) > 6
    assert_grad_close(f, ps, rtol=1e-4, atol=1e-8, eps=1e-6, max_elements=3)


def test_eikonal_double_backward_dense_grid_fd():
    grid = DenseGrid(9, bounds=(-1.0, 1.0), dtype=D64)
    pts = grid.points()
    g = torch.Generator().manual_seed(0)
    vals = sdf_torus(pts.reshape(-1, 3), 0.5, 0.22).reshape(9, 9, 9) + 0.01 * torch.randn(9, 9, 9, generator=g,
                                                                                       dtype=D64)
    o, d = _rays(30, seed=3)

    def f(values):
        grid.values.data = values.detach()
        fn = lambda p: torch.nn.functional.grid_sample(  # noqa: E731  (DenseGrid's lookup, values as input)
            values[None, None], (p[:, [2, 1, 0]]).reshape(1, -1, 1, 1, 3), mode="bilinear",
            padding_mode="border", align_corners=True).reshape(-1)
        hits = sphere_trace(fn, o, d, eps=1e-10, max_steps=300, smoothing=0.05)
        m = hits.hit
        return ((hits.grad_norm[m] - 1) ** 2).sum(), hits.coverage, hits.t

    v = vals.clone().requires_grad_()
    hits = sphere_trace(grid, o, d)
    assert int(hits.hit.sum()) > 5
    assert_grad_close(f, [v], rtol=1e-4, atol=1e-8, eps=1e-7, max_elements=30)
    # the DenseGrid module itself trains through the tracer (double backward into its values)
    hits = sphere_trace(grid, o, d)
    ((hits.grad_norm[hits.hit] - 1) ** 2).sum().backward()
    assert grid.values.grad is not None and grid.values.grad.abs().sum() > 0


def test_bad_input():
    o, d = _rays(4)
    with pytest.raises(ValueError, match="unit"):
        sphere_trace(lambda p: sdf_sphere(p), o, 2 * d)
    with pytest.raises(ValueError, match="sdf"):
        sphere_trace(lambda p: p, o, d)
    with pytest.raises(ValueError, match="smoothing"):
        sphere_trace(lambda p: sdf_sphere(p), o, d, smoothing=0.0)
    # rays that miss the box: defined, finite
    far = torch.tensor([[5.0, 5.0, 5.0]], dtype=D64).expand(4, 3)
    h = sphere_trace(lambda p: sdf_sphere(p, (0, 0, 0), 0.5), far, d)
    assert not h.hit.any() and torch.isfinite(h.coverage).all() and torch.isfinite(h.normals).all()


def test_non_finite_sdf_and_bad_options():
    o, d = _rays(4)
    with pytest.raises(ValueError, match="non-finite"):
        sphere_trace(lambda p: sdf_sphere(p, (0, 0, 0), 0.5) / (p[:, 0] * 0), o, d)
    with pytest.raises(ValueError, match="max_steps"):
        sphere_trace(lambda p: sdf_sphere(p), o, d, max_steps=0)
    with pytest.raises(ValueError, match="origins"):
        sphere_trace(lambda p: sdf_sphere(p), o[:, :2], d)


def test_shade_sdf_closed_form_and_bad_input():
    """A fully covered hit shades ``albedo * (ambient + n . l)``; per-ray lights and albedos work."""
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.2, 3.0]], dtype=D64)
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]], dtype=D64)
    hits = sphere_trace(lambda p: sdf_sphere(p, (0, 0, 0), 0.6), o, d, eps=1e-10, smoothing=1e-3)
    n = torch.stack([torch.tensor([0.0, 0.0, 1.0], dtype=D64),
                     torch.tensor([0.3, 0.2, (0.36 - 0.13) ** 0.5], dtype=D64) / 0.6])
    light = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]], dtype=D64)
    albedo = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 1.0]], dtype=D64)
    c = shade_sdf(hits, albedo, light, ambient=0.1, background=(1.0, 0.0, 0.0))
    expect = albedo * (0.1 + (n * light / light.norm(dim=-1, keepdim=True)).sum(-1).clamp_min(0))[:, None]
    torch.testing.assert_close(c, expect, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="light_dir"):
        shade_sdf(hits, light_dir=torch.zeros(3, 3, dtype=D64))
    with pytest.raises(ValueError, match="light_dir must be non-zero"):
        shade_sdf(hits, light_dir=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="albedo"):
        shade_sdf(hits, albedo=(1.0, float("nan"), 0.0))
    with pytest.raises(TypeError, match="hits"):
        shade_sdf(c)


def test_render_sdf_per_camera_lights_match_single_renders_and_fd():
    cams = Cameras.look_at([[0.3, 0.4, 2.5], [-2.0, 0.5, 1.2]], width=6, height=6, fov_y=40, dtype=D64)
    sdf = lambda p: sdf_torus(p, 0.5, 0.2)  # noqa: E731
    lights = torch.tensor([[0.2, 1.0, 0.3], [-1.0, 0.2, 0.5]], dtype=D64)
    both, _ = render_sdf(cams, sdf, light_dir=lights)
    for i in range(2):
        one, _ = render_sdf(cams[[i]], sdf, light_dir=lights[i])
        torch.testing.assert_close(both[i], one[0])
    with pytest.raises(ValueError, match="light_dir"):
        render_sdf(cams, sdf, light_dir=torch.ones(3, 3, dtype=D64))

    def f(light):
        return render_sdf(cams, sdf, light_dir=light, eps=1e-10, max_steps=200)[0]

    assert_grad_close(f, [lights.clone().requires_grad_()], rtol=1e-5, atol=1e-8, eps=1e-6)


def test_eikonal_double_backward_hash_neural_field_fd():
    """The hash-grid NeuralField trains an eikonal loss through the tracer (second derivatives of
    the trilinear hash interpolation and the MLP), checked against central FD."""
    torch.manual_seed(1)
    net = NeuralField(out_dim=1, encoding="hash", hidden=8, layers=2, sphere_init=0.5, levels=2, features=2,
                      log2_table=8, base_resolution=3, max_resolution=5, init_scale=0.05).double()
    names = [n for n, _ in net.named_parameters()]
    o, d = _rays(12, seed=4)

    def f(*ps):
        sd = dict(zip(names, ps))
        hits = sphere_trace(lambda p: torch.func.functional_call(net, sd, (p,)), o, d, eps=1e-10, max_steps=200)
        m = hits.hit
        return ((hits.grad_norm[m] - 1) ** 2).sum(), hits.t

    ps = [p.detach().clone().requires_grad_(k in (0, 1)) for k, (_, p) in enumerate(net.named_parameters())]
    assert names[0].endswith("table")
    assert int(sphere_trace(net, o, d).hit.sum()) > 4
    assert_grad_close(f, ps, rtol=1e-4, atol=1e-8, eps=1e-6, max_elements=6)
