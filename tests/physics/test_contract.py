"""The simulator contract: every model steps through ``model.step(state, dt, control)`` and rolls
out through ``rollout(model, state, steps, dt=...)`` with the same result as its own step function,
its torch twin agrees, and gradients w.r.t. a control reach through the contract."""

import pytest
import torch

from diffvc.geometry import box, tet_box
from diffvc.physics import (FEMModel, ParticleModel, ParticleState, RigidBodyModel, RigidBodyState, SpringModel,
                            fem_step, particle_step, rigid_step, rollout, spring_step, step)
from diffvc.testing import assert_grad_close

F64 = torch.float64
DT = 2e-3


def _particles():
    m = ParticleModel.create(mass=[1.0, 2.0], radius=0.1, dtype=F64)
    s = ParticleState(torch.tensor([[0.0, 0.3, 0.0], [0.5, 0.12, 0.0]], dtype=F64),
                      torch.tensor([[1.0, -1.0, 0.0], [0.0, -2.0, 0.5]], dtype=F64))
    return m, s, torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64), (lambda st, u: particle_step(m, st, DT, u))


def _springs():
    x = torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.2, 0.0], [0.0, 0.5, 0.0]], dtype=F64)
    m = SpringModel.create(x, [[0, 1], [1, 2], [0, 2]], ke=200.0, kd=0.5, gain=0.3, dtype=F64)
    s = ParticleState(x, torch.zeros_like(x))
    return m, s, torch.tensor([0.5, -0.3, 0.2], dtype=F64), (lambda st, u: spring_step(m, st, DT, u))


def _rigid():
    v, f = box((0.2, 0.2, 0.2), dtype=F64)
    m, _ = RigidBodyModel.from_mesh(v, f, density=100.0, dtype=F64)
    s = RigidBodyState.create([[0.0, 0.12, 0.0]], v=[[0.5, 0.0, 0.0]], dtype=F64)
    u = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.1, 0.0]], dtype=F64)
    return m, s, u, (lambda st, w: rigid_step(m, st, DT, w[:, :3], w[:, 3:]))


def _fem():
    verts, tets = tet_box((0.2, 0.2, 0.2), (1, 1, 1), dtype=F64)
    m = FEMModel.create(verts + torch.tensor([0.0, 0.2, 0.0], dtype=F64), tets, youngs_modulus=1e4, dtype=F64)
    s = m.initial_state()
    u = torch.zeros_like(s.x)
    u[:, 0] = 1.0
    return m, s, u, (lambda st, w: fem_step(m, st, DT, w))


CASES = {"particles": _particles, "springs": _springs, "rigid": _rigid, "fem": _fem}


@pytest.mark.parametrize("name", list(CASES))
def test_rollout_of_a_model_equals_its_own_step_function(name):
    model, s0, u, own = CASES[name]()
    final = rollout(model, s0, 6, dt=DT, substeps=2, control=u)
    ref = s0
    for _ in range(12):
        ref = own(ref, u)
    torch.testing.assert_close(final.x, ref.x, rtol=1e-12, atol=1e-12)
    one = step(model, s0, DT, u)
    torch.testing.assert_close(one.x, own(s0, u).x, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_twin_backend_agrees_with_the_kernels(name):
    model, s0, u, _ = CASES[name]()
    a = rollout(model, s0, 20, dt=DT, control=u)
    b = rollout(model, s0, 20, dt=DT, control=u, backend="torch")
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["particles", "springs", "rigid"])
def test_gradient_wrt_the_control_through_the_contract_matches_finite_differences(name):
    model, s0, u, _ = CASES[name]()

    def f(control):
        return rollout(model, s0, 15, dt=DT, control=control, checkpoint_every=4).x

    assert_grad_close(f, [u.clone().requires_grad_()], rtol=1e-5)


def test_controller_drives_any_model_frame_by_frame():
    model, s0, u, _ = _rigid()
    gain = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def ctrl(st, k):
        return gain * torch.cat([-st.v, torch.zeros_like(st.w)], 1)  # damping controller

    final = rollout(model, s0, 10, dt=DT, substeps=2, controller=ctrl)
    final.x[0, 0].backward()
    assert gain.grad is not None and torch.isfinite(gain.grad) and gain.grad.abs() > 0


def test_contract_errors_name_the_argument():
    model, s0, u, _ = _particles()
    with pytest.raises(ValueError, match="dt"):
        rollout(model, s0, 3)               # a model needs dt
    with pytest.raises(ValueError, match="dt"):
        step(model, s0, -1.0)
    with pytest.raises(TypeError, match="simulator contract"):
        step(object(), s0, DT)
    with pytest.raises(TypeError, match="model"):
        rollout(42, s0, 3, dt=DT)
    with pytest.raises(ValueError, match="backend"):
        rollout(model, s0, 3, dt=DT, backend="jax")
    with pytest.raises(ValueError, match="control"):
        rollout(model, s0, 3, dt=DT, control=u, controller=lambda s, k: u)
    rmodel, rs, _, _ = _rigid()
    with pytest.raises(ValueError, match="control"):
        rmodel.step(rs, DT, torch.zeros(1, 3, dtype=F64))
