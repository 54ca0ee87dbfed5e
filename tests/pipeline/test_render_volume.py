"""The "volume" renderer of the pipeline: Volume primitives through the renderer contract."""

import math

import pytest
import torch

from diffvc.pipeline import Scene, Volume, available_renderers, get_renderer, render_trajectory
from diffvc.render import Cameras, render_volume
from diffvc.testing import assert_grad_close

D64 = torch.float64


def _scene(bg=(0.1, 0.2, 0.3), size=8):
    cams = Cameras.look_at([[0.3, 0.4, 3.0], [-2.5, 0.5, 1.0]], width=size, height=size, fov_y=40.0, dtype=D64)
    return Scene(cams, background=torch.tensor(bg, dtype=D64))


def _blob(scale, n=6):
    p = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=D64)] * 3, indexing="ij"), -1)
    return scale * torch.exp(-3 * (p ** 2).sum(-1))


def test_registered_and_matches_render_volume():
    assert "volume" in available_renderers()
    scene = _scene()
    color = torch.tensor([0.9, 0.5, 0.2], dtype=D64)
    lo, hi = torch.full((3,), -1.0, dtype=D64), torch.ones(3, dtype=D64)
    scene.add_volume("smoke", lambda s: Volume(_blob(s), color, lo, hi))
    video = render_trajectory(scene, [2.0, 4.0], renderer="volume", n_samples=16)
    assert video.shape == (2, 2, 8, 8, 3)
    # uniform colour: colour * (1 - T) + T * background, T from the absorption-only render
    T = render_volume(scene.cameras, _blob(4.0), n_samples=16)
    ref = color * (1 - T) + T * scene.background
    torch.testing.assert_close(video[1], ref)
    assert not torch.equal(video[0], video[1])  # denser smoke in the second frame
    # a colour grid gives the same image when the grid is constant
    scene2 = _scene()
    scene2.add_volume("smoke", lambda s: Volume(_blob(s), color.expand(6, 6, 6, 3), lo, hi))
    torch.testing.assert_close(render_trajectory(scene2, [4.0], renderer="volume", n_samples=16)[0], ref)


def test_gradients_through_the_renderer_fd():
    lo, hi = torch.full((3,), -1.0, dtype=D64), torch.ones(3, dtype=D64)

    def f(scale, color, bg):
        scene = _scene(size=4)
        scene = Scene(scene.cameras, background=bg)
        scene.add_volume("a", lambda s: Volume(_blob(s, 4), color, lo, hi))
        scene.add_volume("b", lambda s: Volume(_blob(s, 4) * 0.5, color.flip(0), lo + 1.5, hi + 1.5))
        return render_trajectory(scene, [scale], renderer="volume", n_samples=8)

    assert_grad_close(f, [torch.tensor(2.0, dtype=D64, requires_grad=True),
                          torch.tensor([0.9, 0.5, 0.2], dtype=D64, requires_grad=True),
                          torch.tensor([0.1, 0.2, 0.3], dtype=D64, requires_grad=True)], rtol=1e-5, atol=1e-8)


def test_two_volumes_front_to_back():
    lo, hi = torch.full((3,), -0.5, dtype=D64), torch.full((3,), 0.5, dtype=D64)
    cams = Cameras.look_at([[0.0, 0.0, 5.0]], width=4, height=4, orthographic=True, ortho_scale=0.5, dtype=D64)
    scene = Scene(cams, background=torch.zeros(3, dtype=D64))
    red, blue = torch.tensor([1.0, 0, 0], dtype=D64), torch.tensor([0, 0, 1.0], dtype=D64)
    dz = torch.tensor([0, 0, 1.5], dtype=D64)
    # the blue box is nearer the camera (+z); added first or second, it must be composited first
    scene.add_volume("red", lambda s: Volume(torch.full((3, 3, 3), 1.0, dtype=D64), red, lo, hi))
    scene.add_volume("blue", lambda s: Volume(torch.full((3, 3, 3), 2.0, dtype=D64), blue, lo + dz, hi + dz))
    img = render_trajectory(scene, [0], renderer="volume", n_samples=4)[0, 0]
    Tb, Tr = math.exp(-2.0), math.exp(-1.0)
    torch.testing.assert_close(img[..., 2], torch.full((4, 4), 1 - Tb, dtype=D64))
    torch.testing.assert_close(img[..., 0], torch.full((4, 4), Tb * (1 - Tr), dtype=D64))


def test_bad_options_and_kinds():
    with pytest.raises(ValueError, match="n_samples"):
        get_renderer("volume", n_samples=0)
    with pytest.raises(ValueError, match="backend"):
        get_renderer("volume", backend="gpu")
    from diffvc.geometry import box

    v, f = box()
    scene = _scene()
    scene.add_shape("cube", f, lambda s: v.to(D64))
    with pytest.raises(ValueError, match="cube"):
        render_trajectory(scene, [0], renderer="volume")
