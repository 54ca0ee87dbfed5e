"""Rendering trajectories: shapes, rates, errors, and end-to-end gradients vs finite differences."""

import pytest
import torch

from diffvc.geometry import box, mass_properties
from diffvc.physics import rollout
from diffvc.physics.rigid import RigidBodyModel, RigidBodyState, apply_impulse, rigid_step
from diffvc.pipeline import RigidBinding, Scene, SoftBinding
from diffvc.pipeline.video import render_frame, render_trajectory, scene_geometry
from diffvc.render import AmbientLight, Cameras, DirectionalLight
from diffvc.testing import grad_check

D = torch.float64


def _scene(size=24):
    cams = Cameras.look_at([[0.0, 0.8, 1.6], [1.2, 1.0, 1.0]], target=(0.0, 0.1, 0.0), width=size, height=size,
                           fov_y=40.0, dtype=D)
    sc = Scene(cams, [DirectionalLight.create([-0.4, -1.0, -0.6], [2.5, 2.5, 2.5], dtype=D),
                      AmbientLight.create([0.05, 0.05, 0.05], dtype=D)])
    v, f = box((0.4, 0.2, 0.4), dtype=D)
    sc.add_shape("box", f, RigidBinding(v), color=(0.8, 0.3, 0.1))
    gv, gf = box((2.0, 0.02, 1.2), dtype=D)
    sc.add_shape("ground", gf, gv - torch.tensor([0.0, 0.01, 0.0], dtype=D), color=(0.4, 0.4, 0.45))
    return sc, v, f


def _simulate(v, f, mass, mu, frames=3, every=10, dt=1.0 / 300):
    m1, com, I1 = mass_properties(v, f, 1.0)
    model = RigidBodyModel.create(mass.reshape(1), (I1 / m1 * mass).reshape(1, 3, 3), v - com, pairs=None,
                                  ke=2e4, kd=100.0, mu=mu, friction_smoothing=0.05, dtype=D)
    st = RigidBodyState.create([[-0.2, 0.1 - 2.0 * 9.81 / 8e4, 0.0]], dtype=D)
    st = apply_impulse(model, st, torch.tensor([[4.0, 0.0, 0.0]], dtype=D))
    _, states = rollout(lambda s: rigid_step(model, s, dt), st, frames, substeps=every, record=True)
    return states


def test_scene_geometry_merges_mesh_shapes():
    sc, v, f = _scene()
    st = RigidBodyState.create([[0.5, 0.1, 0.0]], dtype=D)
    verts, faces, alb, smooth = scene_geometry(sc, st).merged_mesh()
    assert not smooth.any()
    assert verts.shape == (2 * v.shape[0], 3) and faces.shape == (2 * f.shape[0], 3)
    assert torch.allclose(verts[: v.shape[0]], v + torch.tensor([0.5, 0.1, 0.0], dtype=D))
    assert int(faces[f.shape[0]:].min()) == v.shape[0]
    assert torch.allclose(alb[0], torch.tensor([0.8, 0.3, 0.1], dtype=D))


def test_render_trajectory_shapes_rate_and_moving_box():
    sc, v, f = _scene()
    states = [RigidBodyState.create([[x, 0.1, 0.0]], dtype=D) for x in (-0.3, -0.2, -0.1, 0.0, 0.1)]
    vid = render_trajectory(sc, states)
    assert vid.shape == (5, 2, 24, 24, 3) and torch.isfinite(vid).all()
    assert torch.equal(render_trajectory(sc, states, every=2), vid[::2])
    # the box moves: consecutive frames differ, and the box's red dominates where it is
    assert (vid[0] - vid[-1]).abs().max() > 0.1
    # warp and torch rasterizer backends agree
    vt = render_trajectory(sc, states[:2], backend="torch")
    assert torch.allclose(vt, vid[:2], atol=1e-9)


def test_render_errors():
    sc, v, f = _scene()
    st = RigidBodyState.create([[0.0, 0.1, 0.0]], dtype=D)
    with pytest.raises(ValueError, match="every"):
        render_trajectory(sc, [st], every=0)
    with pytest.raises(ValueError, match="states"):
        render_trajectory(sc, [])
    empty = Scene(sc.cameras)
    with pytest.raises(ValueError, match="no shapes"):
        render_frame(empty, st)
    bad = Scene(sc.cameras)
    bad.add_shape("b", f, SoftBinding(torch.arange(3)), body="jelly")
    with pytest.raises(KeyError, match="jelly"):
        render_frame(bad, {"other": torch.zeros(8, 3, dtype=D)})


def test_render_and_differentiate_short_trajectory():
    """Default-suite end-to-end check: d(video)/d(mass, mu, colour, light) through physics + raster."""
    sc, v, f = _scene(size=20)
    mass = torch.tensor(2.0, dtype=D, requires_grad=True)
    mu = torch.tensor(0.4, dtype=D, requires_grad=True)
    col = torch.tensor([0.8, 0.3, 0.1], dtype=D, requires_grad=True)
    est = sc.replace({"shape.box.color": col})
    vid = render_trajectory(est, _simulate(v, f, mass, mu, frames=2, every=10))
    target = render_trajectory(sc, _simulate(v, f, torch.tensor(2.5, dtype=D), torch.tensor(0.3, dtype=D),
                                             frames=2, every=10))
    loss = ((vid - target) ** 2).mean()
    loss.backward()
    for name, t in (("mass", mass), ("mu", mu), ("color", col)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


@pytest.mark.parametrize("param", ["mass", "mu"])
def test_end_to_end_gradient_matches_finite_differences(param):
    """Loss of the whole pipeline (impulse -> rigid contact rollout -> binding -> rasterize ->
    shade -> antialias) w.r.t. each physical parameter vs central differences, float64."""
    sc, v, f = _scene(size=20)
    true = {"mass": 2.0, "mu": 0.4}
    with torch.no_grad():
        target = render_trajectory(sc, _simulate(v, f, torch.tensor(2.6, dtype=D), torch.tensor(0.3, dtype=D)))

    def loss(p):
        vals = {k: torch.tensor(x, dtype=D) for k, x in true.items()}
        vals[param] = p
        vid = render_trajectory(sc, _simulate(v, f, vals["mass"], vals["mu"]))
        return ((vid - target) ** 2).sum()

    p = torch.tensor(true[param], dtype=D, requires_grad=True)
    rep = grad_check(loss, (p,), eps=1e-5)
    assert rep.numeric[0].abs().max() > 1e-3  # the parameter visibly matters
    assert rep.max_rel_error < 1e-6, str(rep)


@pytest.mark.parametrize("param", ["young", "damping"])
def test_soft_body_gradient_matches_finite_differences(param):
    """FEM body (tetrahedralized cube, boundary faces rendered with smooth shading) landing on the
    ground: loss w.r.t. Young's modulus and damping vs central differences, float64."""
    from diffvc.examples.sysid import SoftExperiment, SoftProblem

    exp = SoftExperiment(SoftProblem(size=20, resolution=2, drop=0.002, duration=0.1, dt=1 / 1200, every=20))
    truth = exp.truth()
    with torch.no_grad():
        target = exp.video({"young": torch.tensor(1.5e4, dtype=D), "damping": torch.tensor(0.005, dtype=D)})

    def loss(p):
        vals = {k: torch.tensor(x, dtype=D) for k, x in truth.items()}
        vals[param] = p
        return ((exp.video(vals) - target) ** 2).sum()

    p = torch.tensor(truth[param], dtype=D, requires_grad=True)
    rep = grad_check(loss, (p,), eps=1e-4 * truth[param])
    assert rep.numeric[0].abs().max() * truth[param] > 1e-4  # the parameter visibly matters
    assert rep.max_rel_error < 1e-5, str(rep)


def _sphere_scene(smooth: bool):
    from diffvc.geometry import icosphere

    v, f = icosphere(2, radius=0.5, dtype=D)
    cams = Cameras.look_at([[0.0, 0.0, 2.0]], width=24, height=24, fov_y=40.0, dtype=D)
    sc = Scene(cams, [DirectionalLight.create([0.3, -0.5, -1.0], [3.0, 3.0, 3.0], dtype=D)])
    sc.add_shape("ball", f, SoftBinding(None), color=(0.6, 0.6, 0.6), smooth=smooth)
    return sc, v


def test_smooth_shading_is_used_for_smooth_shapes():
    flat_sc, v = _sphere_scene(False)
    smooth_sc, _ = _sphere_scene(True)
    flat, smooth = render_frame(flat_sc, v, antialiased=False)[0], render_frame(smooth_sc, v, antialiased=False)[0]
    inside = (flat[..., 0] > 0) | (smooth[..., 0] > 0)
    # flat shading: one colour per face; smooth shading varies inside faces too
    assert smooth[inside].unique(dim=0).shape[0] > 2 * flat[inside].unique(dim=0).shape[0]


def test_degenerate_geometry_gives_finite_values_and_gradients():
    """A soft body collapsed to a line and a point (zero-area faces): finite image and gradients."""
    sc, v = _sphere_scene(True)
    x = v.clone()
    x[: v.shape[0] // 2] = 0.0          # half the nodes coincide
    x[v.shape[0] // 2:, 1:] = 0.0       # the rest on a line
    x = x.requires_grad_()
    col = torch.tensor([0.6, 0.6, 0.6], dtype=D, requires_grad=True)
    img = render_trajectory(sc.replace({"shape.ball.color": col}), [x, v.clone()])
    assert torch.isfinite(img).all()
    img.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(col.grad).all()
