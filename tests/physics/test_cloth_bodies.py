"""Cloth against obstacles attached to moving rigid bodies: the rigid solver's smoothed contact
law with the body's pose and velocity per step, Warp kernel vs torch twin, gradients to the rigid
body's pose and velocity (and to the shapes) vs float64 central differences, bad input."""

import math

import pytest
import torch

from diffvc.geometry.primitives import grid
from diffvc.physics import ClothModel, RigidBodyState, rollout
from diffvc.physics.cloth import ClothControl
from diffvc.testing import assert_grad_close

D = torch.float64
DT, STEPS = 2e-3, 20


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sheet():
    v, f = grid(0.4, 3, dtype=D)
    return v + torch.tensor([0.0, 0.16, 0.0], dtype=D), f


def _model(v, f, box, sphere):
    # body 0 carries a box (offset in its frame), body 1 a sphere
    return ClothModel.create(v, f, mu=30.0, lam=10.0, kb=1e-3, planes=[], ke=300.0, kd=0.5, friction=0.4,
                             contact_smoothing=0.01, thickness=0.01, drag=0.1,
                             body_boxes=torch.cat([torch.zeros(1, 1, dtype=D), box], 1),
                             body_spheres=torch.cat([torch.ones(1, 1, dtype=D), sphere], 1))


def _frames(x0, q0, v0, w0):
    """Kinematic rigid frames: constant velocities, x_k = x0 + k dt v0, q rotating about w0."""
    out = []
    for k in range(STEPS + 1):
        ang = k * DT * w0.norm(dim=1, keepdim=True)
        axis = w0 / w0.norm(dim=1, keepdim=True)
        dq = torch.cat([torch.cos(ang / 2), axis * torch.sin(ang / 2)], 1)
        w1, v1 = dq[:, :1], dq[:, 1:]
        w2, v2 = q0[:, :1], q0[:, 1:]
        q = torch.cat([w1 * w2 - (v1 * v2).sum(1, keepdim=True),
                       w1 * v2 + w2 * v1 + torch.cross(v1, v2, dim=1)], 1)
        out.append(RigidBodyState(x0 + k * DT * v0, q, v0, w0))
    return out


def _inputs():
    x0 = torch.tensor([[0.02, 0.06, 0.01], [-0.1, 0.07, -0.05]], dtype=D, requires_grad=True)
    a = 0.3
    q0 = torch.tensor([[math.cos(a / 2), 0.0, math.sin(a / 2), 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=D,
                      requires_grad=True)
    v0 = torch.tensor([[0.1, 1.6, 0.0], [0.0, 1.8, 0.1]], dtype=D, requires_grad=True)
    w0 = torch.tensor([[0.0, 2.0, 0.5], [0.3, 0.0, 0.0]], dtype=D, requires_grad=True)
    box = torch.tensor([[0.0, 0.03, 0.0, 0.08, 0.04, 0.06]], dtype=D, requires_grad=True)
    sphere = torch.tensor([[0.0, 0.02, 0.0, 0.05]], dtype=D, requires_grad=True)
    return x0, q0, v0, w0, box, sphere


def _run(step_name):
    v, f = _sheet()

    def run(x0, q0, v0, w0, box, sphere):
        m = _model(v, f, box, sphere)
        frames = _frames(x0, q0, v0, w0)
        st = m.state(v)
        for k in range(STEPS):
            st = getattr(m, step_name)(st, DT, frames[k])
        return st.x, st.v

    return run


def test_moving_bodies_push_the_cloth_and_warp_matches_the_twin():
    """Both bodies rise into the falling sheet: it ends above where free fall would take it, the
    kernel and the twin agree (values 1e-12, gradients 1e-9)."""
    args = _inputs()
    res = []
    for name in ("step", "step_torch"):
        x, vel = _run(name)(*args)
        loss = (x[:, 1] ** 2).sum() + 0.1 * (vel ** 2).sum() + x[:, 0].sum()
        res.append((x.detach(), torch.autograd.grad(loss, args)))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    free_fall_y = 0.16 - 0.5 * 9.81 * (STEPS * DT) ** 2
    assert float(res[0][0][:, 1].max()) > free_fall_y + 0.02
    # every derivative is non-zero: contact happened with both bodies
    for g in res[0][1]:
        assert float(g.abs().max()) > 0


def test_gradients_to_rigid_pose_velocity_and_shapes_match_finite_differences():
    assert_grad_close(_run("step"), _inputs(), rtol=2e-4, atol=1e-9, eps=1e-6, max_elements=3)


def test_cloth_on_a_rigid_rollout_through_a_controller():
    """The bodies' frames come from a rollout of the rigid solver (two spheres thrown up into the
    sheet, spinning, under gravity, no contact of their own); the cloth rollout takes them
    through a controller; the gradient of the cloth's final height w.r.t. the spheres' launch
    velocities and spins matches central differences through both rollouts."""
    from diffvc.physics import RigidBodyModel

    v, f = _sheet()
    m = ClothModel.create(v, f, mu=30.0, lam=10.0, kb=1e-3, planes=[], ke=300.0, kd=0.5, friction=0.4,
                          contact_smoothing=0.01, thickness=0.01, drag=0.1,
                          body_spheres=torch.tensor([[0, 0.0, 0.0, 0.0, 0.06], [1, 0.0, 0.0, 0.0, 0.05]], dtype=D))
    rb = RigidBodyModel.spheres([0.06, 0.05], [1.0, 1.0], planes=[], pairs=None, dtype=D)

    def run(v0, w0):
        bodies = RigidBodyState(torch.tensor([[0.05, 0.07, 0.0], [-0.12, 0.08, -0.1]], dtype=D),
                                torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, dtype=D), v0, w0)
        _, frames = rollout(rb, bodies, STEPS, dt=DT, record=True)
        st = rollout(m, m.state(v), STEPS, dt=DT, controller=lambda s, k: frames[k])
        return st.x[:, 1]

    v0 = torch.tensor([[0.0, 1.7, 0.0], [0.1, 1.9, 0.0]], dtype=D, requires_grad=True)
    w0 = torch.tensor([[0.0, 0.0, 6.0], [4.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    y = run(v0, w0)
    assert float(y.detach().max()) > 0.16 - 0.5 * 9.81 * (STEPS * DT) ** 2 + 0.02  # pushed up
    assert_grad_close(run, (v0, w0), rtol=2e-4, atol=1e-9, eps=1e-6, max_elements=3)


def test_bad_input_names_the_argument():
    v, f = _sheet()
    box = torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.1, 0.1]], dtype=D)
    sph = torch.tensor([[0.0, 0.0, 0.0, 0.1]], dtype=D)
    m = _model(v, f, box, sph)
    frames = _frames(*_inputs()[:4])
    with pytest.raises(ValueError, match="control"):
        m.step(m.state(v), DT)                      # the bodies' state is missing
    one = RigidBodyState(*(t[:1] for t in (frames[0].x, frames[0].q, frames[0].v, frames[0].w)))
    with pytest.raises(ValueError, match="control"):
        m.step(m.state(v), DT, one)                 # the sphere belongs to body 1
    with pytest.raises(ValueError, match="body_boxes"):
        ClothModel.create(v, f, body_boxes=[[0.5, 0, 0, 0, 0.1, 0.1, 0.1]])
    with pytest.raises(ValueError, match="body_spheres"):
        ClothModel.create(v, f, body_spheres=[[0, 0, 0, 0.1]])
    with pytest.raises(ValueError, match="half sizes"):
        ClothModel.create(v, f, body_boxes=[[0, 0, 0, 0, 0.1, 0.0, 0.1]])
    plain = ClothModel.create(v, f)
    with pytest.raises(ValueError, match="control"):
        plain.step(plain.state(v), DT, frames[0])   # no attached obstacles
    # a ClothControl carries both pins and bodies
    st = m.step(m.state(v), DT, ClothControl(bodies=frames[0]))
    assert torch.isfinite(st.x).all()
