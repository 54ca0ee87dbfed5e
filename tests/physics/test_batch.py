"""Batched simulation (diffvc.physics.batch): B environments of one model in one launch per step.

The batched rollout of every supported simulator equals the loop over environments, states and
gradients alike (float64, 1e-10), with per-environment parameters, states and controls; contacts
never couple environments; rollout's checkpointing, fused segments and controllers work on the
batch; unsupported models and bad input fail with clear errors."""

import dataclasses

import pytest
import torch

from diffvc.geometry import box, tet_box
from diffvc.geometry.primitives import grid
from diffvc.physics import (BatchedModel, ClothModel, FEMModel, MPMModel, ParticleModel, ParticleState,
                            RigidBodyModel, RigidBodyState, SpringModel, batch_model, batch_state, rollout, unbatch)
from diffvc.physics.batch import batchable

F64 = torch.float64
DT = 2e-3
B = 3


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scale(*vals):
    return torch.tensor(vals, dtype=F64)


# each case: (model, states per env, per-env params {name: (B, ...)}, controls (B, ...) or None, steps)
def _particles():
    m = ParticleModel.create(mass=[1.0, 2.0], radius=0.1, dtype=F64)
    states = [ParticleState(torch.tensor([[0.0, 0.3 - 0.05 * e, 0.0], [0.5, 0.12, 0.0]], dtype=F64),
                            torch.tensor([[1.0, -1.0 - e, 0.0], [0.0, -2.0, 0.5 * e]], dtype=F64)) for e in range(B)]
    per = {"mass": m.mass.detach()[None] * _scale(1.0, 1.5, 0.7)[:, None]}
    u = torch.randn(B, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    return m, states, per, u, 60


def _springs():
    x = torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.2, 0.0], [0.0, 0.5, 0.0]], dtype=F64)
    m = SpringModel.create(x, [[0, 1], [1, 2], [0, 2]], ke=200.0, kd=0.5, gain=0.3, dtype=F64)
    states = [ParticleState(x + 0.02 * e, torch.full_like(x, 0.1 * e)) for e in range(B)]
    per = {"ke": m.ke.detach()[None] * _scale(1.0, 1.3, 0.8)[:, None], "rest": _scale(0.25, 0.3, 0.35)[:, None]
           * torch.ones(1, 3, dtype=F64)}
    u = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.2, -0.4], [-0.5, 0.0, 0.3]], dtype=F64)
    return m, states, per, u, 80


def _rigid():
    # two spheres per environment, touching; every environment at the same place, so any
    # cross-environment pair would push overlapping copies apart
    m = RigidBodyModel.create([1.0, 1.5], torch.eye(3, dtype=F64).expand(2, 3, 3) * 0.01,
                              [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], point_body=[0, 1], point_radius=0.1, dtype=F64)
    states = [RigidBodyState.create([[0.0, 0.1, 0.0], [0.19, 0.1 + 0.01 * e, 0.0]], v=[[1.0 + e, 0.0, 0.0],
                                    [0.0, 0.0, 0.0]], w=[[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=F64)
              for e in range(B)]
    per = {"mass": _scale(1.0, 2.0, 0.5)}  # (B,): one mass for both bodies of each environment
    u = torch.zeros(B, 2, 6, dtype=F64)
    u[:, 0, 0] = _scale(0.0, 1.0, -1.0)
    return m, states, per, u, 60


def _fem():
    verts, tets = tet_box((0.2, 0.2, 0.2), (1, 1, 1), dtype=F64)
    m = FEMModel.create(verts + torch.tensor([0.0, 0.12, 0.0], dtype=F64), tets, youngs_modulus=1e4,
                        friction_smoothing=0.1, dtype=F64)
    s0 = m.initial_state()
    states = [dataclasses.replace(s0, v=s0.v + torch.tensor([0.0, -0.5 * e, 0.1], dtype=F64)) for e in range(B)]
    per = {"lame": m.lame.detach()[None] * _scale(1.0, 1.5, 0.8)[:, None, None]}
    u = torch.zeros(B, *s0.x.shape, dtype=F64)
    u[1, :, 0] = 1.0
    return m, states, per, u, 40


def _cloth():
    v, f = grid(0.3, 2, dtype=F64)
    m = ClothModel.create(v + torch.tensor([0.0, 0.05, 0.0], dtype=F64), f, mu=20.0, lam=10.0, kb=1e-3,
                          pins=[0], dtype=F64)
    states = [m.state(v + torch.tensor([0.01 * e, 0.05, 0.0], dtype=F64)) for e in range(B)]
    per = {"mu": _scale(20.0, 30.0, 15.0), "kb": _scale(1e-3, 2e-3, 5e-4)}
    u = torch.stack([v[[0]] + torch.tensor([0.0, 0.05 + 0.01 * e, 0.0], dtype=F64) for e in range(B)])
    return m, states, per, u, 40


CASES = {"particles": _particles, "springs": _springs, "rigid": _rigid, "fem": _fem, "cloth": _cloth}


def _loss(x, e):
    w = torch.arange(x.numel(), dtype=F64).reshape(x.shape) * 0.01 + 1.0
    return (x * w).sum() * (e + 1)


@pytest.mark.parametrize("name", list(CASES))
def test_batched_rollout_and_gradients_equal_the_loop_over_environments(name):
    model, states, per, u, steps = CASES[name]()
    per = {k: v.clone().requires_grad_() for k, v in per.items()}
    x0 = torch.stack([s.x for s in states]).requires_grad_()
    u = u.clone().requires_grad_()
    bm = batch_model(model, B, **per)
    st = dataclasses.replace(batch_state(states), x=x0)
    out = rollout(bm, st, steps, dt=DT, control=u, checkpoint_every=16)
    total = sum(_loss(out.x[e], e) for e in range(B))
    grads = torch.autograd.grad(total, [x0, u, *per.values()])
    for e in range(B):
        pe = {k: v.detach()[e].clone().requires_grad_() for k, v in per.items()}
        me = dataclasses.replace(model, **{k: (v.expand(getattr(model, k).shape) if v.dim() < getattr(model, k).dim()
                                               else v) for k, v in pe.items()})
        xe = states[e].x.clone().requires_grad_()
        ue = u.detach()[e].clone().requires_grad_()
        oe = rollout(me, dataclasses.replace(states[e], x=xe), steps, dt=DT, control=ue)
        torch.testing.assert_close(out.x[e], oe.x, rtol=0, atol=1e-12)
        ge = torch.autograd.grad(_loss(oe.x, e), [xe, ue, *pe.values()])
        for g_b, g_e in zip(grads, ge):
            torch.testing.assert_close(g_b[e], g_e, rtol=1e-10, atol=1e-10)
        assert float(ge[0].abs().max()) > 0
    # the environments really differ
    assert float((out.x[0] - out.x[1]).detach().abs().max()) > 1e-4


def test_rigid_contact_only_pairs_bodies_of_one_environment():
    model, states, _, _, _ = _rigid()
    bm = batch_model(model, B)
    assert bm.model.pairs.shape[0] == B * model.pairs.shape[0]
    env_of_point = bm.model.point_body.long() // model.mass.shape[0]
    pairs = bm.model.pairs.long()
    assert bool((env_of_point[pairs[:, 0]] == env_of_point[pairs[:, 1]]).all())
    # identical environments at one place evolve exactly like one environment alone
    st = batch_state(states[0], B)
    out = rollout(bm, st, 50, dt=DT)
    one = rollout(model, states[0], 50, dt=DT)
    for e in range(B):
        torch.testing.assert_close(out.x[e], one.x, rtol=0, atol=1e-13)


@pytest.mark.filterwarnings("ignore::diffvc.physics.stability.StabilityWarning")  # short, large actuation
def test_walker_batch_with_a_controller_and_fused_segments():
    """The spring walker: its controller maps the batched state (B, N, 3) to a batched actuation
    (B, S), each frame's substeps run as one fused segment over all walkers, and states and
    controller gradients equal the loop over walkers."""
    from diffvc.examples.mass_spring import WalkerController, make_robot

    torch.manual_seed(0)
    model, x0, act, n_act = make_robot(F64)
    ctrl = WalkerController(x0.shape[0], n_act, act, F64, init_scale=1.0)
    starts = [x0 + torch.tensor([0.1 * e, 0.01 * e, 0.0], dtype=F64) for e in range(B)]
    st = batch_state([ParticleState(s, torch.zeros_like(s)) for s in starts])
    out = rollout(batch_model(model, B), st, 12, dt=DT, substeps=5, controller=ctrl)
    loss = out.x[..., 0].mean(1).sum()
    g = torch.autograd.grad(loss, list(ctrl.parameters()))
    ref = [torch.zeros_like(p) for p in ctrl.parameters()]
    for e in range(B):
        oe = rollout(model, ParticleState(starts[e], torch.zeros_like(x0)), 12, dt=DT, substeps=5, controller=ctrl)
        torch.testing.assert_close(out.x[e], oe.x, rtol=0, atol=1e-12)
        for r, ge in zip(ref, torch.autograd.grad(oe.x[:, 0].mean(), list(ctrl.parameters()))):
            r += ge
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_state_unbatch_and_env_model_round_trip():
    model, states, per, _, _ = _springs()
    bm = batch_model(model, B, **per)
    st = batch_state(states)
    assert st.x.shape == (B, 3, 3)
    for a, b in zip(unbatch(st), states):
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert bm.counts == {"N": 3, "S": 3}
    m1 = bm.env_model(1)
    torch.testing.assert_close(m1.ke, per["ke"][1])
    assert torch.equal(m1.springs, model.springs)
    copied = batch_state(states[0], 4)
    assert copied.x.shape == (4, 3, 3) and torch.equal(copied.x[3], states[0].x)


def test_bad_input_raises_clear_errors():
    model, states, per, u, _ = _springs()
    with pytest.raises(ValueError, match="n_envs"):
        batch_model(model, 0)
    with pytest.raises(ValueError, match="gravity.*per environment"):
        batch_model(model, B, gravity=torch.zeros(B, 3, dtype=F64))
    with pytest.raises(ValueError, match="springs: the topology"):
        batch_model(model, B, springs=model.springs[None].expand(B, 3, 2))
    with pytest.raises(ValueError, match="ke: per-environment values must have shape"):
        batch_model(model, B, ke=torch.ones(B + 1, 3, dtype=F64))
    with pytest.raises(ValueError, match="stiffness: not a field"):
        batch_model(model, B, stiffness=torch.ones(B, dtype=F64))
    bm = batch_model(model, B)
    with pytest.raises(ValueError, match="control: a batched tensor"):
        bm.step(batch_state(states), DT, u[0])
    with pytest.raises(ValueError, match="state.x: a batched tensor"):
        bm.step(batch_state(states[:2]), DT)
    mpm = MPMModel.create(torch.rand(8, 2) * 0.2 + 0.4, (16, 16), 1 / 15)
    with pytest.raises(TypeError, match="MPMModel.*share one MPM grid"):
        batch_model(mpm, 2)
    v, f = grid(0.3, 2, dtype=F64)
    cloth = ClothModel.create(v, f, body_spheres=[[0, 0.0, -0.1, 0.0, 0.05]], dtype=F64)
    with pytest.raises(ValueError, match="model: .*ClothModel with obstacles attached to rigid bodies"):
        batch_model(cloth, 2)
    with pytest.raises(ValueError, match="model: .*ClothModel with obstacles attached to rigid bodies"):
        BatchedModel(cloth, 1)
    assert not batchable(cloth)
    assert batchable(ClothModel.create(v, f, spheres=[[0.0, -0.1, 0.0, 0.05]], dtype=F64))
    assert isinstance(bm, BatchedModel)


@pytest.mark.parametrize("name", ["particles", "springs", "rigid", "fem", "cloth"])
def test_torch_twin_backend_and_recorded_states_on_the_batch(name):
    model, states, per, u, _ = CASES[name]()
    bm = batch_model(model, B, **per)
    st = batch_state(states)
    a, rec = rollout(bm, st, 10, dt=DT, control=u, record=True)
    b = rollout(bm, st, 10, dt=DT, control=u, backend="torch")
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-10)
    assert len(rec) == 11 and rec[5].x.shape == st.x.shape
