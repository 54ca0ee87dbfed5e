"""MLS-MPM: Warp kernels vs the plain-torch twin, gradients vs float64 finite differences,
split-P2G correctness, conservation, checkpointed rollouts, input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffvc.physics import MPMModel, MPMState, rollout
from diffvc.physics.mpm import MATERIALS, _stress_torch
from diffvc.testing import assert_grad_close

F64 = torch.float64
MATS = ["fixed_corotated", "neo_hookean", "snow", "sand"]
RES = {2: (16, 16), 3: (11, 11, 11)}


def _system(d, n=32, seed=0, near_ground=False, materials=MATS, gravity=None, walls="separate", friction=0.5,
            dtype=F64):
    """Particles of every material with random velocity, affine field and deformation."""
    g = torch.Generator().manual_seed(seed)
    res = RES[d]
    dx = 1.0 / res[0]
    x = 0.35 + 0.3 * torch.rand(n, d, generator=g, dtype=dtype)
    if near_ground:  # within the wall band of the y-low wall, moving down: walls engage
        x[: n // 2, 1] = 0.12 + 0.1 * torch.rand(n // 2, generator=g, dtype=dtype)
    material = [materials[i % len(materials)] for i in range(n)]
    model = MPMModel.create(x, res, dx, E=300.0, nu=0.3, material=material, density=1.0, walls=walls,
                            friction=friction, gravity=gravity)
    s = model.initial_state(x, 0.5 * torch.randn(n, d, generator=g, dtype=dtype) - 0.3 * torch.eye(d, dtype=dtype)[1])
    C = 0.3 * torch.randn(n, d, d, generator=g, dtype=dtype)
    F = s.F + 0.06 * torch.randn(n, d, d, generator=g, dtype=dtype)
    act = torch.randn(n, generator=g, dtype=dtype)
    return model, MPMState(s.x, s.v, C, F, s.Jp), act


def _roll(model, s, steps, act, twin=False):
    for _ in range(steps):
        s = (model.step_torch if twin else model.step)(s, 1e-3, act)
    return s


@pytest.mark.parametrize("d", [2, 3])
def test_kernel_matches_twin_every_material_and_wall(d):
    model, s, act = _system(d, near_ground=True)
    a = _roll(model, s, 4, act)
    b = _roll(model, s, 4, act, twin=True)
    for f in ("x", "v", "C", "F", "Jp"):
        ta, tb = getattr(a, f), getattr(b, f)
        assert torch.allclose(ta, tb, rtol=1e-10, atol=1e-11), (f, float((ta - tb).abs().max()))
    assert not torch.allclose(a.x, s.x)  # it moved


@pytest.mark.parametrize("d", [2, 3])
def test_gradients_match_finite_differences(d):
    """Kernel gradients to the initial state, E, nu, mass, volume and the actuation vs float64 FD
    (every material; snow clamps and sand return mapping are active in this state)."""
    model, s, act = _system(d, n=24)

    def f(x, v, C, F, E, nu, mass, volume, a):
        m = dataclasses.replace(model, E=E, nu=nu, mass=mass, volume=volume)
        out = _roll(m, MPMState(x, v, C, F, s.Jp), 3, a)
        return out.x, out.v, out.F

    ins = [t.clone().requires_grad_() for t in (s.x, s.v, s.C, s.F, model.E, model.nu, model.mass,
                                                model.volume, act)]
    assert_grad_close(f, ins, rtol=1e-4, atol=1e-9, max_elements=8)


@pytest.mark.parametrize("walls", ["separate", "slip", "sticky"])
def test_gradients_through_wall_contact_match_finite_differences(walls):
    """Half the particles start inside the ground's wall band moving down: kernel gradients to the
    initial state, E and the actuation through the engaged walls vs float64 FD."""
    model, s, act = _system(2, n=16, near_ground=True, walls=walls, friction=0.5)
    wall_nodes = (s.x[:, 1] * RES[2][1] - 0.5).floor() < model.bound  # stencil reaches the band
    assert wall_nodes.sum() >= 4

    def f(x, v, E, a):
        out = _roll(dataclasses.replace(model, E=E), MPMState(x, v, s.C, s.F, s.Jp), 3, a)
        return out.x, out.v

    ins = [t.clone().requires_grad_() for t in (s.x, s.v, model.E, act)]
    assert_grad_close(f, ins, rtol=1e-4, atol=1e-9, max_elements=8)


def test_plastic_branches_are_active_in_the_gradient_test_state():
    """The FD test above goes through the plastic projections, not only the elastic branch."""
    model, s, _ = _system(2, n=24)
    eye = torch.eye(2, dtype=F64)
    Fn = (eye + 1e-3 * s.C) @ s.F
    mu, lam = model.lame()
    Fe, jn, _ = _stress_torch(model, Fn, s.Jp, mu, lam)
    snow = model.material == MATERIALS["snow"]
    sand = model.material == MATERIALS["sand"]
    assert (Fe[snow] - Fn[snow]).abs().amax(dim=(1, 2)).gt(1e-4).sum() >= 3  # clamped
    assert (Fe[sand] - Fn[sand]).abs().amax(dim=(1, 2)).gt(1e-4).sum() >= 3  # projected
    assert (jn[snow] != 1).any()


@pytest.mark.parametrize("d", [2, 3])
def test_kernel_gradients_equal_twin_gradients_through_walls(d):
    model, s, act = _system(d, near_ground=True, friction=0.5)
    E = model.E.clone().requires_grad_()
    ins = [t.clone().requires_grad_() for t in (s.x, s.v, s.F)]
    a = act.clone().requires_grad_()
    w = torch.randn(len(s.x), d, generator=torch.Generator().manual_seed(3), dtype=F64)
    grads = []
    for twin in (False, True):
        m = dataclasses.replace(model, E=E)
        out = _roll(m, MPMState(ins[0], ins[1], s.C, ins[2], s.Jp), 5, a, twin=twin)
        loss = (out.x * w).sum() + (out.v * w).sum()
        grads.append(torch.autograd.grad(loss, [*ins, E, a]))
    for ga, gb in zip(*grads):
        assert torch.allclose(ga, gb, rtol=1e-8, atol=1e-10), float((ga - gb).abs().max())


def test_wall_kinds():
    """A particle blob moving into the ground: sticky stops it, slip keeps the tangential
    velocity, separate lets it leave; the twin agrees for each."""
    res = (16, 16)
    x = torch.tensor([[0.5, 0.07], [0.52, 0.08], [0.48, 0.075]], dtype=F64)  # stencil inside the wall band
    v0 = torch.tensor([[1.0, -1.0]] * 3, dtype=F64)
    out = {}
    for kind in ("sticky", "slip", "separate"):
        m = MPMModel.create(x, res, 1 / 16, E=10.0, nu=0.2, density=1.0, walls=kind, gravity=(0.0, 0.0))
        s = m.initial_state(x, v0)
        a, b = _roll(m, s, 3, None), _roll(m, s, 3, None, twin=True)
        assert torch.allclose(a.v, b.v, atol=1e-12)
        out[kind] = a.v.mean(0)
    assert out["sticky"].abs().max() < 1e-6
    assert out["slip"][0] > 0.5 and abs(out["slip"][1]) < 1e-6
    # separate: a particle moving away from the ground is not held
    m = MPMModel.create(x, res, 1 / 16, E=10.0, nu=0.2, density=1.0, walls="separate", gravity=(0.0, 0.0))
    up = _roll(m, m.initial_state(x, -v0), 3, None)
    assert torch.allclose(up.v.mean(0), -v0[0], atol=1e-6)


def test_split_p2g_loses_no_adds():
    """Forward P2G split over 2 CPU threads (per-thread grids): every node's mass and momentum
    equals the twin's index_add scatter, for 20,000 particles piled into a few cells (a shared
    grid under Warp's CPU atomics loses adds here)."""
    from diffvc._kernels.mpm import _Segment
    from diffvc.physics.mpm import _stencil

    g = torch.Generator().manual_seed(0)
    n = 20_000
    x = 0.5 + 0.02 * torch.rand(n, 2, generator=g, dtype=F64)
    m = MPMModel.create(x, (16, 16), 1 / 16, E=10.0, nu=0.2, density=1.0)
    s = m.initial_state(x, torch.randn(n, 2, generator=g, dtype=F64))
    mu, lam = m.lame()
    kinds, fr = m._walls
    inputs = (s.x, s.v, s.C, s.F, s.Jp, m.mass, m.volume, mu, lam, m.material, torch.zeros(1, n, dtype=F64),
              m.act_dir, m.gravity, kinds, fr)
    seg = _Segment((1, 1e-3, m.res, 16.0, m.bound, 2, (0.025, 0.0075, 10.0, 0.1)), inputs)
    assert len(seg.p2g.launches) == 2 and seg.slots == 2
    seg.p2g_grid(0)
    grid_m = seg.gm.sum(0)
    grid_mv = seg.gmv.sum(0)
    _, wgt, _, node = _stencil(s.x, m)
    ref_m = torch.zeros(256, dtype=F64).index_add(0, node.reshape(-1), (wgt * m.mass[:, None]).reshape(-1))
    ref_mv = torch.zeros(256, 2, dtype=F64).index_add(
        0, node.reshape(-1), (wgt[..., None] * (m.mass[:, None] * s.v)[:, None]).reshape(-1, 2))
    assert torch.allclose(grid_m, ref_m, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grid_mv, ref_mv, rtol=1e-10, atol=1e-10)
    assert abs(float(grid_m.sum() - m.mass.sum())) < 1e-9 * float(m.mass.sum())
    # one slot and two slots give the same step
    a = m.segment(s, 1e-3, 2, slots=1)[0]
    b = m.segment(s, 1e-3, 2, slots=2)[0]
    assert torch.allclose(a.x, b.x, atol=1e-13) and torch.allclose(a.C, b.C, atol=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_mass_exact_and_momentum_conserved_without_gravity_or_walls(d):
    """Grid mass equals particle mass each step; with no gravity and no wall contact, internal
    elastic and actuation stresses leave the total momentum sum m v unchanged."""
    model, s, act = _system(d, n=48, gravity=[0.0] * d, materials=["fixed_corotated", "neo_hookean"])
    p0 = (model.mass[:, None] * s.v).sum(0)
    final, states = model.segment(s, 1e-3, 40, control=act, return_all=True)
    for st in states[9::10]:
        p = (model.mass[:, None] * st.v).sum(0)
        assert torch.allclose(p, p0, rtol=0, atol=1e-12 * float(model.mass.sum())), (p, p0)
    assert final.x[:, 1].min() > 3.5 / RES[d][1]  # never entered a wall band
    assert (final.v - s.v).abs().max() > 1e-3  # forces did act


def test_checkpointed_1000_step_rollout_gradients_equal_full_tape():
    model, s, act = _system(2, n=24, materials=["fixed_corotated", "snow"], gravity=(0.0, -1.0))
    v0 = s.v.clone().requires_grad_()
    E = model.E.clone().requires_grad_()
    grads = []
    for ck in (None, 100):
        m = dataclasses.replace(model, E=E)
        final = rollout(m, MPMState(s.x, v0, s.C, s.F, s.Jp), 1000, dt=2e-4, control=0.1 * act,
                        checkpoint_every=ck)
        loss = final.x.sum() + (final.v ** 2).sum()
        grads.append(torch.autograd.grad(loss, [v0, E]))
    for ga, gb in zip(*grads):
        assert torch.isfinite(ga).all() and ga.abs().max() > 0
        assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-14)


def test_controller_rollout_checkpointed_equals_full_and_twin():
    """Per-frame control from a closed-loop controller; checkpointed = full tape = torch twin."""
    model, s, _ = _system(2, n=16, materials=["neo_hookean"])
    wgt = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def controller(st, k):
        return wgt * torch.sin(10 * st.x[:, 0] + 0.1 * k)

    res = []
    for kw in (dict(checkpoint_every=10), dict(), dict(backend="torch")):
        final = rollout(model, s, 30, dt=1e-3, controller=controller, **kw)
        res.append(torch.autograd.grad((final.x ** 2).sum(), wgt)[0])
    assert torch.allclose(res[0], res[1], rtol=1e-12)
    assert torch.allclose(res[0], res[2], rtol=1e-9)
    assert res[0].abs() > 0


def test_per_step_control_segment_equals_steps():
    model, s, _ = _system(2, n=16)
    ctrl = torch.randn(5, 16, dtype=F64, requires_grad=True)
    a = model.segment(s, 1e-3, 5, control=ctrl)[0]
    b = s
    for k in range(5):
        b = model.step(b, 1e-3, ctrl[k])
    assert torch.allclose(a.x, b.x, atol=1e-14)
    ga = torch.autograd.grad(a.x.sum(), ctrl)[0]
    gb = torch.autograd.grad(b.x.sum(), ctrl)[0]
    assert torch.allclose(ga, gb, atol=1e-14) and ga.abs().max() > 0


@pytest.mark.parametrize("material", MATS)
def test_degenerate_input_gives_finite_values_and_gradients(material):
    """Coincident particles with a singular (zero) and an inverted deformation gradient."""
    x = torch.full((4, 2), 0.5, dtype=F64)
    m = MPMModel.create(x, (16, 16), 1 / 16, E=100.0, nu=0.3, material=material, density=1.0)
    s = m.initial_state(x)
    F = torch.stack([torch.zeros(2, 2), torch.diag(torch.tensor([1.0, -1.0])), torch.eye(2), torch.eye(2)]).to(F64)
    F = F.requires_grad_()
    E = m.E.clone().requires_grad_()
    out = _roll(dataclasses.replace(m, E=E), MPMState(s.x, s.v, s.C, F, s.Jp), 3, None)
    assert all(torch.isfinite(getattr(out, f)).all() for f in ("x", "v", "C", "F", "Jp"))
    gF, gE = torch.autograd.grad(out.x.sum() + out.v.sum(), [F, E])
    assert torch.isfinite(gF).all() and torch.isfinite(gE).all()


def test_bad_input_names_the_argument():
    x = torch.rand(8, 2, dtype=F64)
    ok = dict(res=(16, 16), dx=1 / 16)
    with pytest.raises(ValueError, match="res"):
        MPMModel.create(x, (16,), 1 / 16)
    with pytest.raises(ValueError, match="dx"):
        MPMModel.create(x, ok["res"], -1.0)
    with pytest.raises(ValueError, match="E"):
        MPMModel.create(x, **ok, E=-1.0)
    with pytest.raises(ValueError, match="nu"):
        MPMModel.create(x, **ok, nu=0.5)
    with pytest.raises(ValueError, match="material"):
        MPMModel.create(x, **ok, material="jelly")
    with pytest.raises(ValueError, match="walls"):
        MPMModel.create(x, **ok, walls="bouncy")
    with pytest.raises(ValueError, match="friction"):
        MPMModel.create(x, **ok, friction=-1.0)
    with pytest.raises(ValueError, match="x"):
        MPMModel.create(torch.rand(8, 4), **ok)
    m = MPMModel.create(x, **ok)
    s = m.initial_state(x)
    with pytest.raises(ValueError, match="control"):
        m.step(s, 1e-3, torch.zeros(7, dtype=F64))
    with pytest.raises(ValueError, match="v must have shape"):  # refused on construction
        m.step(MPMState(s.x, s.v[:3], s.C, s.F, s.Jp), 1e-3)
    with pytest.raises(ValueError, match="dt"):
        m.step(s, 0.0)
    with pytest.raises(TypeError, match="state"):
        m.step((s.x, s.v), 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_infinite_friction_walls_gradients_finite_and_equal_to_twin(dtype):
    """DiffTaichi's walls (friction=inf: a node moving into a wall stops): the twin's unused
    sliding branch must not send 0 * inf = NaN back (it did, in float32, over the diffmpm robot)."""
    model, s, act = _system(2, n=24, near_ground=True, friction=float("inf"), dtype=dtype)
    # falling straight down (no tangential velocity at the wall nodes: the worst case)
    v0 = torch.zeros_like(s.v)
    v0[:, 1] = -1.0
    v0.requires_grad_()
    s = model.initial_state(s.x)
    grads = []
    for twin in (False, True):
        out = _roll(model, MPMState(s.x, v0, s.C, s.F, s.Jp), 4, act, twin=twin)
        grads.append(torch.autograd.grad(out.x.sum() + out.v.sum(), v0)[0])
    assert torch.isfinite(grads[1]).all()
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    assert torch.allclose(grads[0], grads[1], rtol=tol, atol=tol)


def test_split_launches_forward_and_adjoint_equal_one_thread():
    """Every split path (P2G into 2 grid copies, grid update and G2P forward, P2G and grid
    adjoints; the grid is large enough to split too) gives the one-thread values and gradients."""
    g = torch.Generator().manual_seed(5)
    n, res = 4000, (384, 384)
    x = 0.3 + 0.4 * torch.rand(n, 2, generator=g, dtype=F64)
    m = MPMModel.create(x, res, 1 / 384, E=50.0, nu=0.3, density=1.0, material=["fixed_corotated", "snow"] * (n // 2))
    s = m.initial_state(x, 0.3 * torch.randn(n, 2, generator=g, dtype=F64))
    act = torch.randn(n, generator=g, dtype=F64)
    out = []
    for slots in (1, 2):
        v0 = s.v.clone().requires_grad_()
        E = m.E.clone().requires_grad_()
        a = act.clone().requires_grad_()
        mm = dataclasses.replace(m, E=E)
        fin = mm.segment(MPMState(s.x, v0, s.C, s.F, s.Jp), 1e-3, 3, control=a, slots=slots)[0]
        loss = (fin.x ** 2).sum() + (fin.v ** 2).sum()
        out.append((fin.x.detach(), *torch.autograd.grad(loss, [v0, E, a])))
    from diffvc._kernels.mpm import _Segment

    seg = _Segment((1, 1e-3, res, 384.0, 3, 2, (0.025, 0.0075, 10.0, 0.1)),
                   (s.x, s.v, s.C, s.F, s.Jp, m.mass, m.volume, *m.lame(), m.material, act[None], m.act_dir,
                    m.gravity, *m._walls))
    assert len(seg.p2g.launches) == 2 and len(seg.grid.launches) == 2 and len(seg.g2p.launches) == 2
    for a, b in zip(*out):
        assert b.abs().max() > 0
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13), float((a - b).abs().max())
