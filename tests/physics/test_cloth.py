"""Cloth: closed-form forces vs energy gradients, FD gradients through contact, energy
conservation, pins, the simulator contract and bad input."""

import math

import pytest
import torch

from diffvc.geometry.primitives import grid
from diffvc.physics import ClothModel, ClothState, cloth_hinges, rollout
from diffvc.physics.cloth import _dihedral
from diffvc.testing import assert_grad_close

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # small meshes: torch's intra-op threads only add overhead (and stall on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sheet(n=3, size=0.4, height=0.0, dtype=D):
    v, f = grid(size, n, dtype=dtype)
    return v + torch.tensor([0.0, height, 0.0], dtype=dtype), f


def test_hinges_of_a_grid():
    v, f = _sheet(3)
    h = cloth_hinges(f)
    # a 3x3-cell grid has 3*4*2 axis edges + 9 diagonals = 33 edges, 12 of them on the boundary
    assert h.shape == (33 - 12, 4)
    # a and b are the shared edge of two faces; c and d lie on opposite sides
    fs = {tuple(sorted(t)) for t in f.tolist()}
    for a, b, c, d in h.tolist():
        assert tuple(sorted((a, b, c))) in fs and tuple(sorted((b, a, d))) in fs and c != d


def test_dihedral_gradient_matches_autograd():
    v, f = _sheet(3)
    h = cloth_hinges(f)
    x = (v + 0.05 * torch.randn_like(v)).requires_grad_()
    theta, g = _dihedral(x, h)
    for k in range(0, h.shape[0], 5):
        gk = torch.autograd.grad(theta[k], x, retain_graph=True)[0]
        mine = torch.zeros_like(x).index_add(0, h[k], g[k])
        torch.testing.assert_close(mine, gk, rtol=1e-6, atol=1e-7)


def test_forces_are_minus_energy_gradient():
    v, f = _sheet(4)
    m = ClothModel.create(v, f, mu=40.0, lam=15.0, kb=3e-3, planes=[])
    x = (v + 0.03 * torch.randn_like(v)).requires_grad_()
    st = ClothState(x, torch.zeros_like(x))
    e = m.energy(st)
    g = torch.autograd.grad(e["membrane"] + e["bending"], x)[0]
    torch.testing.assert_close(m.forces(st), -g, rtol=1e-6, atol=1e-6 * float(g.abs().max()))
    # a rigid motion of the rest mesh costs no energy and feels no force
    R = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]], dtype=D))
    rest = ClothState(v @ R.T + 1.0, torch.zeros_like(v))
    assert m.energy(rest)["total"].abs() < 1e-8 + abs(float(m.energy(rest)["gravity"]))
    assert m.forces(rest).abs().max() < 1e-7


def _drape_model(mu, lam, kb, sphere, dtype=D):
    v, f = _sheet(3, 0.4, 0.25, dtype)
    return ClothModel.create(v, f, mu=mu, lam=lam, kb=kb, stretch_damping=0.01, bend_damping=1e-4, drag=0.1,
                             spheres=sphere, ke=100.0, kd=0.2, friction=0.4, friction_smoothing=0.05,
                             contact_smoothing=0.002, thickness=0.01, dtype=dtype), v


def test_gradients_through_contact_match_finite_differences():
    """mu, lam, kb, the sphere obstacle, the initial positions and velocities: an 80-step drop
    (dt 2 ms) of a 16-vertex sheet onto a sphere, with smoothed contact and friction."""
    dt, steps = 2e-3, 80
    v, _ = _sheet(3, 0.4, 0.25)

    def run(mu, lam, kb, sphere, x0, v0):
        m, _ = _drape_model(mu, lam, kb, sphere)
        st = ClothState(x0, v0)
        for _ in range(steps):
            st = m.step(st, dt)
        return st.x

    mu = torch.tensor(30.0, dtype=D, requires_grad=True)
    lam = torch.tensor(10.0, dtype=D, requires_grad=True)
    kb = torch.tensor(2e-3, dtype=D, requires_grad=True)
    sphere = torch.tensor([[0.03, 0.1, -0.02, 0.12]], dtype=D, requires_grad=True)
    x0 = v.clone().requires_grad_()
    v0 = (0.1 * torch.randn_like(v)).requires_grad_()
    # the sheet does reach the sphere (so the check covers contact)
    with torch.no_grad():
        m, _ = _drape_model(mu, lam, kb, sphere)
        st = ClothState(x0, v0)
        low = []
        for _ in range(steps):
            st = m.step(st, dt)
            d = (st.x - sphere[0, :3]).norm(dim=1) - sphere[0, 3] - 0.01
            low.append(float(d.min()))
    assert min(low) < 0.0
    assert_grad_close(run, (mu, lam, kb, sphere, x0, v0), rtol=2e-4, atol=1e-9, eps=1e-6, max_elements=4)


def test_gradients_to_pins_and_box_obstacle():
    """A sheet hanging from two pins dragged by the control over a box."""
    dt, steps = 2e-3, 30
    v, f = _sheet(3, 0.4, 0.2)
    pins = torch.tensor([0, 3])

    def run(targets, box, kb):
        m = ClothModel.create(v, f, mu=30.0, lam=10.0, kb=kb, pins=pins, boxes=box, planes=[], ke=100.0, kd=0.2,
                              contact_smoothing=0.01, thickness=0.01, drag=0.2)
        st = m.state(v)
        for k in range(steps):
            st = m.step(st, dt, v[pins] + targets * (k + 1) / steps)
        return st.x

    targets = torch.tensor([[0.02, 0.01, 0.0], [0.02, -0.01, 0.01]], dtype=D, requires_grad=True)
    box = torch.tensor([[0.0, 0.13, 0.1, 0.15, 0.05, 0.05]], dtype=D, requires_grad=True)
    kb = torch.tensor(1e-3, dtype=D, requires_grad=True)
    out = run(targets, box, kb)
    torch.testing.assert_close(out[pins], v[pins] + targets.detach())
    assert_grad_close(run, (targets, box, kb), rtol=2e-4, atol=1e-9, max_elements=4)


def test_energy_conserved_without_damping():
    """Two pinned corners, gravity, no damping, no contact: over 1 s the total energy stays within
    1% of the peak kinetic energy (0.12 J) at dt = 2 ms (measured 0.64%; 0.32% at 1 ms, 0.16% at
    0.5 ms), and the error is first order in dt (halving dt halves it): no drift, as expected of
    symplectic Euler."""
    v, f = _sheet(5, 0.5)
    m = ClothModel.create(v, f, mu=20.0, lam=10.0, kb=1e-3, planes=[], pins=[0, 5 * 6])
    devs = []
    for dt in (2e-3, 1e-3):
        st = m.state(v)
        e0 = float(m.energy(st)["total"])
        dev, peak = 0.0, 0.0
        for _ in range(int(round(1.0 / dt))):
            st = m.step(st, dt)
            e = m.energy(st)
            dev = max(dev, abs(float(e["total"]) - e0))
            peak = max(peak, float(e["kinetic"]))
        assert peak > 0.01  # it really swings
        devs.append(dev / peak)
    assert devs[0] < 0.01
    assert 0.35 < devs[1] / devs[0] < 0.65


def test_drape_rests_on_sphere_and_ground():
    """A sheet dropped on a sphere ends at rest draped over it (top on the sphere, no
    penetration deeper than the contact allows, corners below the top)."""
    v, f = _sheet(8, 1.0, 0.7, dtype=torch.float32)
    m = ClothModel.create(v, f, mu=50.0, lam=20.0, kb=1e-3, stretch_damping=0.02, drag=0.5,
                          spheres=[[0.0, 0.3, 0.0, 0.3]], ke=200.0, kd=0.5, contact_smoothing=0.002)
    st = rollout(m, m.state(v), 600, dt=2e-3)
    assert torch.isfinite(st.x).all()
    top = st.x[:, 1].max()
    assert 0.59 < float(top) < 0.62
    d = (st.x - torch.tensor([0.0, 0.3, 0.0])).norm(dim=1) - 0.3
    assert float(d.min()) > -0.01
    assert float(st.x[:, 1].min()) < 0.35  # the edges hang down


def test_rollout_checkpointing_equals_full_tape():
    m, v = _drape_model(30.0, 10.0, 2e-3, [[0.0, 0.1, 0.0, 0.12]])
    v0 = (0.1 * torch.randn_like(v)).requires_grad_()

    def loss(**kw):
        st = rollout(m, ClothState(v, v0), 40, dt=2e-3, **kw)
        return (st.x ** 2).sum()

    g_full = torch.autograd.grad(loss(), v0)[0]
    g_ck = torch.autograd.grad(loss(checkpoint_every=8), v0)[0]
    torch.testing.assert_close(g_ck, g_full, rtol=1e-9, atol=1e-12)
    # the torch twin is the same function
    st_a = rollout(m, ClothState(v, v0), 5, dt=2e-3)
    st_b = rollout(m, ClothState(v, v0), 5, dt=2e-3, backend="torch")
    torch.testing.assert_close(st_a.x, st_b.x)


def test_degenerate_triangles_stay_finite():
    v, f = _sheet(2)
    m = ClothModel.create(v, f, mu=10.0, lam=5.0, kb=1e-3)
    x = v.clone()
    x[f[0, 1]] = x[f[0, 0]]  # collapse an edge
    x[f[0, 2]] = x[f[0, 0]]
    x.requires_grad_()
    st = m.step(ClothState(x, torch.zeros_like(x)), 1e-3)
    (st.x.sum() + st.v.square().sum()).backward()
    assert torch.isfinite(st.x).all() and torch.isfinite(x.grad).all()


def test_bad_input_names_the_argument():
    v, f = _sheet(2)
    with pytest.raises(ValueError, match="verts"):
        ClothModel.create(v[:, :2], f)
    with pytest.raises(ValueError, match="faces"):
        ClothModel.create(v, f + 100)
    with pytest.raises(ValueError, match="mu"):
        ClothModel.create(v, f, mu=-1.0)
    with pytest.raises(ValueError, match="spheres"):
        ClothModel.create(v, f, spheres=[[0, 0, 0, -1.0]])
    with pytest.raises(ValueError, match="contact"):
        ClothModel.create(v, f, friction_smoothing=0.0)
    m = ClothModel.create(v, f, pins=[0])
    with pytest.raises(ValueError, match="state.x"):
        m.step(ClothState(v[:3], v[:3]), 1e-3)
    with pytest.raises(ValueError, match="control"):
        m.step(m.state(v), 1e-3, torch.zeros(2, 3, dtype=D))
    assert math.isfinite(float(m.step(m.state(v), 1e-3).x.sum()))


def test_warp_step_matches_torch_twin_values_and_gradients():
    """The Warp kernels (triangle and hinge forces accumulated with atomics, contact with planes,
    spheres and boxes, pins) against the plain-torch twin: 20 steps, values and gradients."""
    v, f = _sheet(4, 0.4, 0.2)
    params = dict(stretch_damping=0.01, bend_damping=1e-5, drag=0.1, ke=100.0, kd=0.2, friction=0.4,
                  contact_smoothing=0.002, thickness=0.01, pins=[0],
                  planes=[[0.0, 1.0, 0.0, 0.0], [0.6, 0.8, 0.0, -0.1]])
    mu = torch.tensor(30.0, dtype=D, requires_grad=True)
    kb = torch.tensor(2e-3, dtype=D, requires_grad=True)
    sphere = torch.tensor([[0.03, 0.08, -0.02, 0.12]], dtype=D, requires_grad=True)
    box = torch.tensor([[0.15, 0.05, 0.1, 0.1, 0.1, 0.08]], dtype=D, requires_grad=True)
    v0 = (0.3 * torch.randn_like(v)).requires_grad_()
    out = []
    for twin in (False, True):
        m = ClothModel.create(v, f, mu=mu, lam=0.5 * mu, kb=kb, spheres=sphere, boxes=box, **params)
        st = ClothState(v, v0)
        for k in range(20):
            ctl = v[[0]] + torch.tensor([[0.0, -0.002 * k, 0.0]], dtype=D)
            st = m.step_torch(st, 2e-3, ctl) if twin else m.step(st, 2e-3, ctl)
        loss = (st.x * torch.linspace(-1, 1, st.x.numel(), dtype=D).reshape(st.x.shape)).sum() + st.v.square().sum()
        out.append((st.x.detach(), torch.autograd.grad(loss, [mu, kb, sphere, box, v0])))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert all(float(g.abs().max()) > 0 for g in out[0][1])
