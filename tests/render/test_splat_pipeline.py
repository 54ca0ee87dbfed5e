"""Particles rendered through the pipeline's renderer contract as splats: ``Scene.add_points`` +
``render_trajectory(..., renderer="splat")``, with gradients from pixels back to the simulation's
initial velocities (float64 finite differences)."""

import pytest
import torch

from diffvc.physics import ParticleModel, ParticleState, rollout
from diffvc.pipeline import Points, Scene, available_renderers, get_renderer, render_trajectory
from diffvc.render import Cameras
from diffvc.render.splat import Gaussians, points_to_gaussians, render_gaussians
from diffvc.testing import assert_grad_close

DT = torch.float64


def _scene(dtype=DT, W=32, H=24):
    cams = Cameras.look_at([[0.0, 0.6, 3.0], [2.5, 0.8, 1.5]], target=(0.0, 0.4, 0.0), width=W, height=H,
                           fov_y=45.0, dtype=dtype)
    return Scene(cams, background=torch.tensor([0.05, 0.05, 0.1], dtype=dtype))


def _simulate(v0, steps=6):
    n = v0.shape[0]
    model = ParticleModel.create(mass=[1.0] * n, radius=0.05, planes=[[0.0, 1.0, 0.0, 0.0]], ke=1e3, kd=5.0,
                                 dtype=v0.dtype)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(n, 3, generator=g, dtype=v0.dtype) - 0.5) * 0.8 + torch.tensor([0.0, 0.6, 0.0], dtype=v0.dtype)
    _, states = rollout(model, ParticleState(x0, v0), steps, dt=1.0 / 60, substeps=2, record=True)
    return states


def test_splat_renderer_is_registered_and_draws_points():
    assert "splat" in available_renderers()
    r = get_renderer("splat", backend="warp")
    assert r.consumes == ("points",)
    with pytest.raises(ValueError, match="backend"):
        get_renderer("splat", backend="gl")


def test_particles_render_through_render_trajectory_with_gradients():
    n = 12
    g = torch.Generator().manual_seed(1)
    v0 = (torch.randn(n, 3, generator=g, dtype=DT) * 0.5).requires_grad_()
    colors = torch.rand(n, 3, generator=g, dtype=DT)
    scene = _scene()

    def bind(state):
        return Points(state.x, torch.full((n,), 0.06, dtype=DT), colors, torch.full((n,), 0.8, dtype=DT))

    scene.add_points("particles", bind)
    states = _simulate(v0)
    video = render_trajectory(scene, states, every=2, renderer="splat").detach()
    assert video.shape == (4, 2, 24, 32, 3)
    # frames move: consecutive frames differ, and the particles are visible over the background
    assert float((video[-1] - video[0]).abs().max()) > 0.05
    assert float((video - scene.background).abs().amax(dim=(0, 1, 2, 3)).min()) > 0.05
    # the same frame through the plain-torch twin
    twin = render_trajectory(scene, states, every=2, renderer="splat", backend="torch")
    torch.testing.assert_close(video, twin, rtol=1e-10, atol=1e-11)

    def f(v):
        return render_trajectory(scene, _simulate(v), every=3, renderer="splat")

    rep = assert_grad_close(f, [v0], rtol=1e-5, atol=1e-8, max_elements=12)
    assert float(rep.numeric[0].norm()) > 1e-3


def test_points_with_default_radius_and_colour():
    scene = _scene(W=20, H=16)
    scene.add_points("dots", lambda s: s.x, color=(0.9, 0.2, 0.1), radius=0.05)
    x = torch.tensor([[0.0, 0.4, 0.0], [0.3, 0.5, 0.1]], dtype=DT)
    img = render_trajectory(scene, [ParticleState(x, torch.zeros_like(x))], renderer="splat")[0]
    p = Points.create(x, radius=0.05, color=(0.9, 0.2, 0.1), opacity=1.0)
    ref = render_gaussians(points_to_gaussians(p.positions, p.radii, p.colors, p.opacities), scene.cameras,
                           background=scene.background).color
    torch.testing.assert_close(img, ref)
    assert float(img[..., 0].max()) > 0.5   # red splats drawn


def test_points_to_gaussians_validates():
    x = torch.zeros(3, 3, dtype=DT)
    with pytest.raises(ValueError, match="radii"):
        points_to_gaussians(x, torch.ones(2, dtype=DT), torch.ones(3, 3, dtype=DT), torch.ones(3, dtype=DT))
    g = points_to_gaussians(x, torch.ones(3, dtype=DT), torch.ones(3, 3, dtype=DT), torch.ones(3, dtype=DT))
    assert isinstance(g, Gaussians) and g.degree == 0
