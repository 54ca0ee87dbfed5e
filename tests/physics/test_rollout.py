import pytest
import torch

from diffvc.physics import (ParticleModel, ParticleState, particle_step, particle_step_torch, rollout,
                            rollout_jvp)
from diffvc.testing import assert_grad_close

DT = 2e-3


def _scene(dtype=torch.float64):
    model = ParticleModel.create(mass=[1.0, 2.0, 0.5], radius=0.1,
                                 planes=[[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -1.0]], dtype=dtype)
    x = torch.tensor([[0.0, 0.15, 0.0], [0.0, 0.4, 0.0], [0.7, 0.5, 0.0]], dtype=dtype)
    v = torch.tensor([[1.0, -2.0, 0.3], [0.5, -1.0, 0.0], [3.0, 0.1, 0.0]], dtype=dtype)
    return model, ParticleState(x, v)


class Pusher(torch.nn.Module):
    """A tiny closed-loop controller: force = tanh(W [x, v, sin t]) (one hidden layer)."""

    def __init__(self, n=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6 * n + 1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3 * n))
        self.double()

    def forward(self, state, frame):
        t = torch.full((1,), frame * DT, dtype=state.x.dtype)
        inp = torch.cat([state.x.reshape(-1), state.v.reshape(-1), torch.sin(20 * t)])
        return self.net(inp).reshape(-1, 3)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def test_rollout_equals_the_python_loop_and_returns_trajectories():
    model, s0 = _scene()
    st = s0
    for _ in range(30):
        st = particle_step(model, st, DT)
    step = lambda s: particle_step(model, s, DT)  # noqa: E731
    final, states = rollout(step, s0, 15, substeps=2, record=True)
    torch.testing.assert_close(final.x, st.x, rtol=0, atol=0)
    assert len(states) == 16 and states[0] is s0
    final2, heights = rollout(step, s0, 15, substeps=2, observe=lambda s, k: s.x[:, 1])
    assert heights.shape == (15, 3)
    torch.testing.assert_close(heights[-1], final.x[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(heights[4], states[5].x[:, 1], rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 7, 40])
def test_checkpointed_gradients_equal_full_tape(k):
    """Kernel-op steps, model tensors captured by the closure, a controller module, observations."""
    model0, s0 = _scene()
    ctrl = Pusher()
    v0 = s0.v.clone().requires_grad_()
    mass = model0.mass.clone().requires_grad_()
    contact = model0.contact.clone().requires_grad_()

    def loss(checkpoint_every):
        model = ParticleModel(mass, model0.radius, model0.planes, contact, model0.gravity)

        def step(s, u):
            return particle_step(model, s, DT, external=u)

        final, ys = rollout(step, ParticleState(s0.x, v0), 40, checkpoint_every=checkpoint_every,
                            controller=ctrl, observe=lambda s, f: s.x[:, 1].sum())
        return (final.x ** 2).sum() + ys.sum() + final.v.sum()

    params = [v0, mass, contact, *ctrl.parameters()]
    ref = _grads(loss(None), params)
    got = _grads(loss(k), params)
    for g, r in zip(got, ref):
        assert torch.isfinite(r).all() and r.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-12)


def test_checkpointed_rollout_gradient_matches_finite_differences():
    model0, s0 = _scene()

    def f(v0, mass):
        model = ParticleModel(mass, model0.radius, model0.planes, model0.contact, model0.gravity)
        return rollout(lambda s: particle_step(model, s, DT), ParticleState(s0.x, v0), 25,
                       checkpoint_every=6).x

    assert_grad_close(f, (s0.v.clone().requires_grad_(), model0.mass.clone().requires_grad_()), rtol=1e-5, eps=1e-7)


def test_truncation_cuts_the_gradient_horizon():
    model0, s0 = _scene()
    v0 = s0.v.clone().requires_grad_()
    mass = model0.mass.clone().requires_grad_()
    model = ParticleModel(mass, model0.radius, model0.planes, model0.contact, model0.gravity)
    step = lambda s: particle_step(model, s, DT)  # noqa: E731
    final = rollout(step, ParticleState(s0.x, v0), 30, truncate=10)
    gv, gm = _grads(final.x.sum(), [v0, mass])
    assert gv is None  # the initial state is beyond the horizon
    # reference: the same loop detaching by hand every 10 frames
    st = ParticleState(s0.x, v0)
    for k in range(30):
        if k and k % 10 == 0:
            st = ParticleState(st.x.detach(), st.v.detach())
        st = particle_step(model, st, DT)
    (gm_ref,) = _grads(st.x.sum(), [mass])
    torch.testing.assert_close(gm, gm_ref, rtol=1e-12, atol=1e-15)
    # combined with checkpointing: identical
    final = rollout(step, ParticleState(s0.x, v0), 30, truncate=10, checkpoint_every=4)
    (gm2,) = _grads(final.x.sum(), [mass])
    torch.testing.assert_close(gm2, gm_ref, rtol=1e-10, atol=1e-15)


def test_substeps_hold_the_control_over_a_frame():
    model, s0 = _scene()
    calls = []

    def ctrl(s, frame):
        calls.append(frame)
        return torch.ones_like(s.x)

    final = rollout(lambda s, u: particle_step_torch(model, s, DT, u), s0, 5, substeps=3, controller=ctrl)
    assert calls == [0, 1, 2, 3, 4]
    st = s0
    for _ in range(15):
        st = particle_step_torch(model, st, DT, torch.ones_like(st.x))
    torch.testing.assert_close(final.x, st.x)


def test_jvp_equals_vjp_directional_derivative():
    model0, s0 = _scene()
    torch.manual_seed(1)
    dv = torch.randn_like(s0.v)
    dm = torch.randn_like(model0.mass)
    w = torch.randn(3, 3, dtype=torch.float64)

    def f(v0, mass):
        model = ParticleModel(mass, model0.radius, model0.planes, model0.contact, model0.gravity)
        return rollout(lambda s: particle_step_torch(model, s, DT), ParticleState(s0.x, v0), 60, substeps=2).x

    out, tangent = rollout_jvp(f, (s0.v, model0.mass), (dv, dm))
    v0 = s0.v.clone().requires_grad_()
    mass = model0.mass.clone().requires_grad_()
    # reverse mode through the Warp kernels, contracted with the direction
    def g(v0, mass):
        model = ParticleModel(mass, model0.radius, model0.planes, model0.contact, model0.gravity)
        return rollout(lambda s: particle_step(model, s, DT), ParticleState(s0.x, v0), 60, substeps=2,
                       checkpoint_every=13).x
    y = g(v0, mass)
    torch.testing.assert_close(out, y.detach())
    gv, gm = torch.autograd.grad((y * w).sum(), [v0, mass])
    lhs = (tangent * w).sum()
    rhs = (gv * dv).sum() + (gm * dm).sum()
    assert abs(lhs) > 1e-3
    torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-12)


def test_jvp_through_a_warp_kernel_says_use_the_twin():
    model, s0 = _scene()
    with pytest.raises(RuntimeError, match="twin"):
        rollout_jvp(lambda v: rollout(lambda s: particle_step(model, s, DT), ParticleState(s0.x, v), 2).x,
                    (s0.v,), (torch.ones_like(s0.v),))


def test_bad_arguments_name_themselves():
    model, s0 = _scene()
    step = lambda s: particle_step_torch(model, s, DT)  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        rollout(step, s0, -1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        rollout(step, s0, 3, checkpoint_every=0)
    with pytest.raises(ValueError, match="truncate"):
        rollout(step, s0, 3, truncate=0)
    with pytest.raises(ValueError, match="substeps"):
        rollout(step, s0, 3, substeps=0)
    with pytest.raises(TypeError, match="state"):
        rollout(step, {"x": s0.x}, 3)
    with pytest.raises(ValueError, match="tangents"):
        rollout_jvp(lambda v: v, (s0.v,), (torch.ones(2, dtype=torch.float64),))
