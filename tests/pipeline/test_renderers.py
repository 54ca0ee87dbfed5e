"""The renderer contract: one trajectory, two renderers (rasterizer and path tracer) through the
same scene, bindings and ``render_trajectory``; end-to-end gradients w.r.t. a physical parameter
(the box's mass, which sets its launch speed v0 = J / m) against central finite differences.

Tolerances: the rasterizer runs in float64 and matches to 1e-6 relative. The path tracer computes
radiance in float32 and its visibility gradient is a Monte Carlo estimate (edge sampling of the
silhouettes, secondary visibility for the soft sky shadow, the first-bounce interior term); with
256 spp at 24 px its gradient was measured at 0.96-0.99 of finite differences (steps 1% and 2%
of the mass; the FD values themselves differ by 2.5% between the two steps), so it is checked to
10%. The scene is sky-lit (the background is the path tracer's environment): shadows of point and
directional lights have no boundary term in the path tracer (see diffvc.render.path_trace).
"""

import pytest
import torch

from diffvc.geometry import box, mass_properties
from diffvc.physics import RigidBodyModel, RigidBodyState, apply_impulse, rollout
from diffvc.pipeline import (FrameGeometry, Points, RigidBinding, Scene, available_renderers, get_renderer,
                             register_renderer, render_trajectory, scene_geometry)
from diffvc.render import AmbientLight, Cameras

D = torch.float64


def _scene(size=24):
    cams = Cameras.look_at([[0.0, 0.9, 1.8], [1.2, 1.0, 1.0]], target=(0.0, 0.4, 0.0), width=size, height=size,
                           fov_y=40.0, dtype=D)
    sc = Scene(cams, [AmbientLight.create([0.3, 0.3, 0.3], dtype=D)], background=torch.tensor([0.9, 0.95, 1.0], dtype=D))
    v, f = box((0.3, 0.2, 0.3), dtype=D)
    sc.add_shape("box", f, RigidBinding(v), color=(0.8, 0.3, 0.1))
    gv, gf = box((2.0, 0.02, 1.6), dtype=D)
    sc.add_shape("ground", gf, gv - torch.tensor([0.0, 0.01, 0.0], dtype=D), color=(0.5, 0.5, 0.5))
    return sc, v, f


def _simulate(v, f, mass):
    """A box launched by a known impulse J = (2, 1, 0) N s: v0 = J / mass, then ballistic."""
    m1, com, I1 = mass_properties(v, f, 1.0)
    model = RigidBodyModel.create(mass.reshape(1), (I1 / m1 * mass).reshape(1, 3, 3), v - com, pairs=None, dtype=D)
    st = RigidBodyState.create([[-0.3, 0.5, 0.0]], dtype=D)
    st = apply_impulse(model, st, torch.tensor([[2.0, 1.0, 0.0]], dtype=D))
    return rollout(model, st, 2, dt=1 / 300, substeps=10, record=True)[1]


PT = dict(spp=256, max_depth=1, edge_samples=16384, secondary_spp=4, interior_spp=4, seed=0)


@pytest.mark.parametrize("renderer,options,h,rtol", [("raster", {}, 1e-5, 1e-6),
                                                      ("pathtrace", PT, 0.04, 0.10)])
def test_both_renderers_give_the_mass_gradient_of_one_trajectory(renderer, options, h, rtol):
    sc, v, f = _scene()
    with torch.no_grad():
        target = render_trajectory(sc, _simulate(v, f, torch.tensor(2.4, dtype=D)), renderer=renderer, **options)
    assert target.shape == (3, 2, 24, 24, 3)

    def loss(m):
        return ((render_trajectory(sc, _simulate(v, f, m), renderer=renderer, **options) - target) ** 2).sum()

    m = torch.tensor(2.0, dtype=D, requires_grad=True)
    loss(m).backward()
    with torch.no_grad():
        fd = (loss(torch.tensor(2.0 + h, dtype=D)) - loss(torch.tensor(2.0 - h, dtype=D))) / (2 * h)
    assert abs(float(fd)) > 0.5          # the mass visibly matters
    assert abs(float(m.grad) - float(fd)) <= rtol * abs(float(fd)), (float(m.grad), float(fd))


def test_the_two_renderers_see_the_same_scene():
    """Same box, same place: where the rasterizer sees the box the path tracer does too."""
    sc, v, f = _scene()
    states = _simulate(v, f, torch.tensor(2.0, dtype=D))
    with torch.no_grad():
        ras = render_trajectory(sc, states[:1], antialiased=False)
        pt = render_trajectory(sc, states[:1], renderer="pathtrace", spp=16, max_depth=1)
    box_r = (ras[..., 0] - ras[..., 2]) > 0.2          # the reddish box
    box_p = (pt[..., 0] - pt[..., 2]) > 0.05
    iou = (box_r & box_p).sum() / (box_r | box_p).sum()
    assert box_r.sum() > 10 and iou > 0.8


class _CountingRenderer:
    """A third-party renderer: one grey value per frame, the mean height of everything placed."""

    consumes = ("mesh", "points")

    def __init__(self, gain=1.0):
        self.gain = gain

    def render(self, scene, frames):
        out = []
        for fr in frames:
            ys = [m.verts[:, 1] for m in fr.meshes] + [p.positions[:, 1] for _, p in fr.points]
            val = self.gain * torch.cat(ys).mean()
            cams = scene.cameras
            out.append(val.expand(cams.batch_size, cams.height, cams.width, 3))
        return torch.stack(out)


def test_a_registered_third_party_renderer_plugs_in_with_points():
    register_renderer("mean_height", _CountingRenderer)
    assert "mean_height" in available_renderers() and "raster" in available_renderers()
    sc, v, f = _scene(size=8)
    x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]], dtype=D, requires_grad=True)
    sc.add_points("dust", lambda s: x + s.x[0] * 0, radius=0.05, color=(1.0, 1.0, 1.0))
    states = _simulate(v, f, torch.tensor(2.0, dtype=D))
    vid = render_trajectory(sc, states, renderer="mean_height", gain=2.0)
    assert vid.shape == (3, 2, 8, 8, 3)
    vid.sum().backward()
    assert x.grad is not None and torch.all(x.grad[:, 1] > 0)
    frame = scene_geometry(sc, states[0])
    assert isinstance(frame, FrameGeometry) and isinstance(frame.points[0][1], Points)
    # the rasterizer draws meshes only: a clear error names the point shape
    with pytest.raises(ValueError, match="dust"):
        render_trajectory(sc, states, renderer="raster")


def test_renderer_errors_name_the_argument():
    sc, v, f = _scene(size=8)
    states = _simulate(v, f, torch.tensor(2.0, dtype=D))
    with pytest.raises(ValueError, match="renderer: unknown renderer 'nope'"):
        render_trajectory(sc, states, renderer="nope")
    with pytest.raises(TypeError, match="renderer must be"):
        get_renderer(object())
    with pytest.raises(ValueError, match="spp"):
        render_trajectory(sc, states, renderer="pathtrace", spp=0)
    with pytest.raises(ValueError, match="backend"):
        render_trajectory(sc, states, renderer="raster", backend="cuda-ish")


def test_primitives_and_shape_registration_name_the_bad_argument():
    from diffvc.pipeline import Volume

    x = torch.zeros(4, 3, dtype=D)
    with pytest.raises(ValueError, match="radii"):
        Points(x, torch.ones(3, dtype=D), torch.ones(4, 3, dtype=D), torch.ones(4, dtype=D))
    with pytest.raises(TypeError, match="positions"):
        Points.create(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="density"):
        Volume(torch.ones(4, 4, dtype=D), torch.ones(3, dtype=D), torch.zeros(3, dtype=D), torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="bbox_max"):
        Volume(torch.ones(2, 2, 2, dtype=D), torch.ones(3, dtype=D), torch.ones(3, dtype=D), torch.zeros(3, dtype=D))
    sc, v, f = _scene(size=8)
    with pytest.raises(ValueError, match="radius"):
        sc.add_points("p", lambda s: x, radius=-1.0)
    with pytest.raises(TypeError, match="binding"):
        sc.add_volume("vol", 3)
    with pytest.raises(ValueError, match="name"):
        sc.add_points("box", lambda s: x)        # taken by a mesh shape
    with pytest.raises(ValueError, match="name"):
        register_renderer("", _CountingRenderer)


def test_raster_renderer_blends_edges_at_the_image_border():
    """A slab wider than the view moves up: its top edge crosses every image column, including the
    two border columns. The renderer blends border edges towards the background, so
    d(image sum)/dy is the exact derivative of the covered area, W columns x (pixels per world
    unit) x (slab colour - background) x 3 channels, to 1%; without border blending the two border
    columns of 24 get no gradient (8% low). A small-step FD checks the backward of that image."""
    size = 24
    cams = Cameras.look_at([[0.0, 0.0, 2.0]], target=(0.0, 0.0, 0.0), width=size, height=size, fov_y=40.0, dtype=D)
    bg = torch.tensor([0.2, 0.2, 0.2], dtype=D)
    sc = Scene(cams, [AmbientLight.create([1.0, 1.0, 1.0], dtype=D)], background=bg)
    v, f = box((4.0, 2.0, 0.2), dtype=D)
    v = v - torch.tensor([0.0, 1.0, 0.0], dtype=D)        # top edge at y = 0, the rest below the view
    sc.add_shape("slab", f, lambda y: v + torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)]),
                 color=(0.9, 0.9, 0.9))

    def image_sum(y):
        return render_trajectory(sc, [y]).sum()

    y0 = 0.013
    y = torch.tensor(y0, dtype=D, requires_grad=True)
    image_sum(y).backward()
    px_per_unit = size / (2 * 1.9 * torch.tan(torch.deg2rad(torch.tensor(20.0, dtype=D))))  # at the slab's front face
    exact = float(size * px_per_unit * (0.9 - 0.2) * 3)
    assert abs(float(y.grad) - exact) <= 0.01 * exact, (float(y.grad), exact)
    h = 1e-6
    with torch.no_grad():
        fd = (image_sum(torch.tensor(y0 + h, dtype=D)) - image_sum(torch.tensor(y0 - h, dtype=D))) / (2 * h)
    assert abs(float(y.grad) - float(fd)) <= 1e-6 * abs(float(fd)), (float(y.grad), float(fd))
