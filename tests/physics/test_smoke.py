"""Eulerian smoke: projection to the solver tolerance, implicit differentiation of the pressure
solve, FD gradients (2-D and 3-D, semi-Lagrangian and MacCormack), advection conventions."""

import pytest
import torch

from diffvc.physics import SmokeModel, SmokeState, rollout
from diffvc.testing import assert_grad_close

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny grids: torch's intra-op threads only add overhead (and stall on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_velocity(m, scale=1.0, dtype=D):
    u = tuple(scale * torch.randn(m.face_shape(a), dtype=dtype) for a in range(m.dim))
    return tuple(m._wall_mask(x, a) for a, x in enumerate(u))


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("preconditioner", ["spectral", None])
@pytest.mark.parametrize("res", [(12, 10), (6, 5, 4)])
def test_projection_leaves_divergence_below_tolerance(boundary, preconditioner, res):
    tol = 1e-7
    m = SmokeModel(res, dx=0.1, boundary=boundary, preconditioner=preconditioner, tol=tol)
    u = _random_velocity(m)
    div0 = m.divergence(u).norm()
    p = m.project(u)
    assert float(m.divergence(p).norm()) <= tol * float(div0)
    iters = m._solver(D, "cpu").stats["iterations"]
    if preconditioner == "spectral":
        assert iters == 1  # exact preconditioner on the obstacle-free box
    else:
        assert iters > 5
    # projecting twice changes nothing (to the tolerance)
    q = m.project(p)
    for a, b in zip(p, q):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(max(x.abs().max() for x in u)))


def test_solve_backward_is_one_solve_and_matches_plain_cg():
    """The pressure solve's gradient is one more solve with the same operator (not a replay of
    CG): one forward and one backward solve, and the same gradient with or without the exact
    preconditioner (1 vs tens of CG iterations)."""
    grads = []
    for pre in ("spectral", None):
        m = SmokeModel((10, 9), dx=0.1, boundary="wall", preconditioner=pre, tol=1e-12)
        torch.manual_seed(1)
        u = [x.requires_grad_() for x in _random_velocity(m)]
        w = [torch.randn_like(x) for x in u]
        solver = m._solver(D, "cpu")
        calls = []
        orig = solver.solve
        solver.solve = lambda b, _o=orig: (calls.append(1), _o(b))[1]
        p = m.project(u)
        loss = sum((pi * wi).sum() for pi, wi in zip(p, w))
        g = torch.autograd.grad(loss, u)
        del solver.solve  # back to the class's method (solvers are shared per grid)
        assert len(calls) == 2
        grads.append(g)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_gradients_match_finite_differences_2d(boundary, advection):
    """Initial density and velocity, buoyancy and a per-face control force, 3 steps on 8x8."""
    res = (8, 7)
    m0 = SmokeModel(res, dx=0.1, boundary=boundary)

    def run(d0, vx, vy, b, cx, cy):
        m = SmokeModel(res, dx=0.1, boundary=boundary, buoyancy=b, advection=advection, tol=1e-12)
        st = SmokeState(d0, (vx, vy))
        for _ in range(3):
            st = m.step(st, 0.05, (cx, cy))
        return st.density, st.velocity[0], st.velocity[1]

    d0 = torch.rand(res, dtype=D).requires_grad_()
    vx, vy = (x.requires_grad_() for x in _random_velocity(m0, 0.4))
    b = torch.tensor(0.8, dtype=D, requires_grad=True)
    cx, cy = (x.requires_grad_() for x in _random_velocity(m0, 0.5))
    assert_grad_close(run, (d0, vx, vy, b, cx, cy), rtol=1e-5, atol=1e-9, max_elements=10)


def test_gradients_match_finite_differences_3d():
    res = (5, 4, 4)
    m0 = SmokeModel(res, dx=0.1)

    def run(d0, vx, vy, vz, b):
        m = SmokeModel(res, dx=0.1, buoyancy=b, backtrace="rk2", tol=1e-12)
        st = SmokeState(d0, (vx, vy, vz))
        for _ in range(2):
            st = m.step(st, 0.05)
        return st.density, *st.velocity

    d0 = torch.rand(res, dtype=D).requires_grad_()
    vel = [x.requires_grad_() for x in _random_velocity(m0, 0.4)]
    b = torch.tensor(0.8, dtype=D, requires_grad=True)
    assert_grad_close(run, (d0, *vel, b), rtol=1e-5, atol=1e-9, max_elements=8)


@pytest.mark.parametrize("backtrace", ["euler", "rk2"])
def test_uniform_flow_translates_density(backtrace):
    """Periodic box, uniform velocity of one cell per step along +x: the density moves one cell
    per step, exactly (interpolation at integer offsets; signs and staggering conventions)."""
    m = SmokeModel((8, 6), dx=0.5, boundary="periodic", backtrace=backtrace)
    d0 = torch.rand(8, 6, dtype=D)
    dt = 0.25
    u = (torch.full((8, 6), 0.5 / dt, dtype=D), torch.zeros(8, 6, dtype=D))
    st = rollout(m, SmokeState(d0, u), 3, dt=dt)
    torch.testing.assert_close(st.density, d0.roll(3, 0))
    torch.testing.assert_close(st.velocity[0], u[0])


def test_buoyant_smoke_rises_and_stays_in_the_box():
    m = SmokeModel((16, 24), dx=1.0 / 16, boundary="wall", buoyancy=torch.tensor(6.0), advection="maccormack")
    d0 = torch.zeros(16, 24)
    d0[6:10, 2:6] = 1.0
    st = m.state(d0)
    y = torch.arange(24, dtype=torch.float32)
    st = rollout(m, st, 30, dt=0.02)
    ymean = float((st.density.sum(0) * y).sum() / st.density.sum())
    assert ymean > 3.5 + 2.0  # rose by more than two cells from 3.5
    assert st.density.min() >= -1e-6 and st.density.max() <= 1.0 + 1e-6  # MacCormack's limiter
    assert float(m.divergence(st.velocity).abs().max()) < 1e-3


def test_rollout_checkpointing_equals_full_tape():
    m = SmokeModel((8, 8), dx=0.1, boundary="periodic", buoyancy=torch.tensor(1.0, dtype=D))
    d0 = torch.rand(8, 8, dtype=D).requires_grad_()
    u0 = _random_velocity(m, 0.3)

    def loss(**kw):
        st = rollout(m, SmokeState(d0, u0), 6, dt=0.05, **kw)
        return (st.density ** 2).sum()

    g_full = torch.autograd.grad(loss(), d0)[0]
    g_ck = torch.autograd.grad(loss(checkpoint_every=2), d0)[0]
    torch.testing.assert_close(g_ck, g_full, rtol=1e-10, atol=1e-12)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="resolution"):
        SmokeModel((8,))
    with pytest.raises(ValueError, match="boundary"):
        SmokeModel((8, 8), boundary="open")
    with pytest.raises(ValueError, match="dx"):
        SmokeModel((8, 8), dx=0.0)
    with pytest.raises(ValueError, match="advection"):
        SmokeModel((8, 8), advection="weno")
    m = SmokeModel((8, 8))
    with pytest.raises(ValueError, match=r"velocity\[0\] must have shape"):  # refused on construction
        SmokeState(torch.zeros(8, 7), m.state().velocity)
    with pytest.raises(ValueError, match="state.density"):
        m.step(SmokeState(torch.zeros(8, 7), (torch.zeros(9, 7), torch.zeros(8, 8))), 0.1)
    with pytest.raises(ValueError, match=r"state.velocity\[0\]"):
        m.step(SmokeState(torch.zeros(8, 8), (torch.zeros(8, 8), torch.zeros(8, 9))), 0.1)
    with pytest.raises(ValueError, match="control"):
        m.step(m.state(), 0.1, (torch.zeros(8, 8),))
    # a still, empty box stays finite (zero right-hand side of the solve)
    st = m.step(m.state(), 0.1)
    assert torch.isfinite(st.density).all() and all(torch.isfinite(u).all() for u in st.velocity)


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_warp_advection_matches_torch_twin(boundary, advection):
    """2-D, Euler back-trace: the Warp advection kernel (adjoint scattering with atomics) against
    the grid_sample twin over 3 steps, values and gradients (density and both velocity faces)."""
    m = SmokeModel((9, 7), dx=0.1, boundary=boundary, backtrace="euler", advection=advection,
                   buoyancy=torch.tensor(0.7, dtype=D))
    d0 = torch.rand(9, 7, dtype=D).requires_grad_()
    u = [x.requires_grad_() for x in _random_velocity(m, 0.5)]
    w = torch.randn(9, 7, dtype=D)
    res = []
    for fn in (m.step, m.step_torch):
        st = SmokeState(d0, tuple(u))
        for _ in range(3):
            st = fn(st, 0.07)
        loss = (st.density * w).sum() + sum((v ** 2).sum() for v in st.velocity)
        res.append((st.density.detach(), torch.autograd.grad(loss, [d0, *u])))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ fixed-sweep Jacobi projection
# and the fused 2-D segment (recorded Warp launches)

@pytest.mark.parametrize("boundary", ["wall", "periodic"])
def test_jacobi_projection_is_the_stated_linear_map(boundary):
    """K Jacobi sweeps are P J_K P with J_K = sum_{k<K} (D^-1 N)^k D^-1 (A = D - N, built densely
    here from the operator), a symmetric map (its own adjoint, which is how its backward runs);
    the Warp sweeps compute the same map; 10 sweeps reduce but do not remove divergence."""
    res = (6, 5)
    K = 10
    mj = SmokeModel(res, dx=0.1, boundary=boundary, projection="jacobi", jacobi_iters=K)
    s = mj._solver(D, "cpu")
    n = res[0] * res[1]
    A = torch.stack([s.apply(e.reshape(res)).reshape(-1) for e in torch.eye(n, dtype=D)], 1)
    Dg = torch.diag(torch.diagonal(A))
    Nm = Dg - A
    Di = torch.linalg.inv(Dg)
    J = sum(torch.linalg.matrix_power(Di @ Nm, k) @ Di for k in range(K))
    P = torch.eye(n, dtype=D) - 1.0 / n
    M = P @ J @ P
    torch.testing.assert_close(M, M.T, rtol=0, atol=1e-12)
    torch.manual_seed(3)
    a = torch.randn(res, dtype=D)
    torch.testing.assert_close(s.solve(a).reshape(-1), M @ a.reshape(-1), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(s.jacobi_warp()(a), s.solve(a), rtol=1e-12, atol=1e-12)
    u = _random_velocity(mj)
    div0 = float(mj.divergence(u).norm())
    div10 = float(mj.divergence(mj.project(u)).norm())
    assert 0.01 * div0 < div10 < 0.9 * div0


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
def test_jacobi_gradients_match_finite_differences(boundary):
    """The fused Warp segment with the 10-sweep projection: initial density and velocity,
    buoyancy and control vs float64 central FD."""
    res = (8, 7)
    m0 = SmokeModel(res, dx=0.1, boundary=boundary)

    def run(d0, vx, vy, b, cx, cy):
        m = SmokeModel(res, dx=0.1, boundary=boundary, buoyancy=b, backtrace="euler", projection="jacobi")
        st, _ = m.segment(SmokeState(d0, (vx, vy)), 0.05, 3, (cx, cy))
        return st.density, st.velocity[0], st.velocity[1]

    torch.manual_seed(4)
    d0 = torch.rand(res, dtype=D).requires_grad_()
    vx, vy = (x.requires_grad_() for x in _random_velocity(m0, 0.4))
    b = torch.tensor(0.8, dtype=D, requires_grad=True)
    cx, cy = (x.requires_grad_() for x in _random_velocity(m0, 0.5))
    assert_grad_close(run, (d0, vx, vy, b, cx, cy), rtol=1e-5, atol=1e-9, max_elements=10)


@pytest.mark.parametrize("projection", ["pcg", "jacobi"])
def test_fused_segment_equals_torch_twin_steps_and_checkpoints(projection):
    """segment (one autograd node, recorded Warp launches; recompute=True re-runs it in backward)
    against step_torch step by step: states after every step, gradients of a loss on all of them,
    and rollout with checkpoint_every equal to the full tape."""
    m = SmokeModel((9, 8), dx=0.1, boundary="wall", backtrace="euler", projection=projection,
                   buoyancy=torch.tensor(1.3, dtype=D, requires_grad=True))
    torch.manual_seed(5)
    d0 = torch.rand(9, 8, dtype=D).requires_grad_()
    u = [x.requires_grad_() for x in _random_velocity(m, 0.5)]
    w = torch.randn(4, 9, 8, dtype=D)

    def loss_of(states):
        return sum((s.density * w[k]).sum() + (s.velocity[1] ** 2).sum() for k, s in enumerate(states))

    out = []
    for recompute in (False, True):
        final, states = m.segment(SmokeState(d0, tuple(u)), 0.06, 4, recompute=recompute, return_all=True)
        out.append(([s.density.detach() for s in states], torch.autograd.grad(loss_of(states), [d0, *u, m.buoyancy])))
    st, ref = SmokeState(d0, tuple(u)), []
    for _ in range(4):
        st = m.step_torch(st, 0.06)
        ref.append(st)
    ref_out = ([s.density.detach() for s in ref], torch.autograd.grad(loss_of(ref), [d0, *u, m.buoyancy]))
    for o in out:
        for a, b in zip(o[0], ref_out[0]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for a, b in zip(o[1], ref_out[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    def loss(**kw):
        s = rollout(m, SmokeState(d0, tuple(u)), 7, dt=0.06, **kw)
        return (s.density ** 2).sum() + (s.velocity[0] ** 2).sum()

    g_full = torch.autograd.grad(loss(checkpoint_every=None), [d0, *u, m.buoyancy])
    g_ck = torch.autograd.grad(loss(checkpoint_every=3), [d0, *u, m.buoyancy])
    for a, b in zip(g_ck, g_full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_projection_arguments_are_checked():
    with pytest.raises(ValueError, match="projection"):
        SmokeModel((8, 8), projection="multigrid")
    with pytest.raises(ValueError, match="jacobi_iters"):
        SmokeModel((8, 8), projection="jacobi", jacobi_iters=0)
    m = SmokeModel((8, 8), backtrace="euler")
    with pytest.raises(ValueError, match="n must"):
        m.segment(m.state(), 0.1, -1)


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_warp_advection_3d_matches_torch_twin(boundary, advection):
    """3-D, Euler back-trace: the trilinear Warp advection kernel (Warp's adjoint) against the
    grid_sample twin over 3 steps, values and gradients (density and the three velocity faces)."""
    m = SmokeModel((5, 4, 6), dx=0.1, boundary=boundary, backtrace="euler", advection=advection,
                   buoyancy=torch.tensor(0.7, dtype=D))
    torch.manual_seed(6)
    d0 = torch.rand(5, 4, 6, dtype=D).requires_grad_()
    u = [x.requires_grad_() for x in _random_velocity(m, 0.5)]
    w = torch.randn(5, 4, 6, dtype=D)
    res = []
    for fn in (m.step, m.step_torch):
        st = SmokeState(d0, tuple(u))
        for _ in range(3):
            st = fn(st, 0.07)
        loss = (st.density * w).sum() + sum((v ** 2).sum() for v in st.velocity)
        res.append((st.density.detach(), torch.autograd.grad(loss, [d0, *u])))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ the fused segment split across threads

@pytest.fixture
def _split(monkeypatch):
    """Two torch threads and no minimum range size: every pass of the fused segment runs as two
    row ranges on two threads (scatter adjoints into per-range buffers)."""
    import diffvc._kernels.smoke as sk

    monkeypatch.setattr(sk, "MIN_CELLS_PER_THREAD", 1)
    torch.set_num_threads(2)


def _segment_run(m, d0, u, c, steps, w):
    st, states = m.segment(SmokeState(d0, tuple(u)), 0.06, steps, c, return_all=True)
    loss = sum((s.density * w[k]).sum() + (s.velocity[0] ** 2).sum() for k, s in enumerate(states))
    loss = loss + (st.velocity[1] ** 3).sum()
    return [s.density.detach() for s in states], torch.autograd.grad(loss, [d0, *u, *c, m.buoyancy])


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("projection", ["jacobi", "pcg"])
def test_split_segment_equals_one_range(_split, boundary, projection):
    """The segment split into two row ranges on two threads (the block Jacobi on overlapping
    windows, private scatter buffers summed afterwards) gives the one-range states exactly and
    its gradients to rounding; a split that lost scattered adds would fail this."""
    import diffvc._kernels.smoke as sk

    res = (40, 22)
    m = SmokeModel(res, dx=0.1, boundary=boundary, backtrace="euler", projection=projection, jacobi_iters=4,
                   buoyancy=torch.tensor(0.9, dtype=D, requires_grad=True))
    torch.manual_seed(7)
    d0 = torch.rand(res, dtype=D).requires_grad_()
    u = [x.requires_grad_() for x in _random_velocity(m, 0.6)]
    c = [x.requires_grad_() for x in _random_velocity(m, 0.3)]
    w = torch.randn(6, *res, dtype=D)
    assert sk._threads(*res, d0.device) == 2
    split = _segment_run(m, d0, u, c, 5, w)
    torch.set_num_threads(1)
    one = _segment_run(m, d0, u, c, 5, w)
    for a, b in zip(split[0], one[0]):
        assert torch.equal(a, b)
    for a, b in zip(split[1], one[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
def test_split_segment_gradients_match_finite_differences(_split, boundary):
    """Two row ranges (block Jacobi with 3 sweeps: windows overlap by 2 rows): initial density and
    velocity, buoyancy and control vs float64 central FD."""
    import diffvc._kernels.smoke as sk

    res = (16, 9)
    m0 = SmokeModel(res, dx=0.1, boundary=boundary)

    def run(d0, vx, vy, b, cx, cy):
        m = SmokeModel(res, dx=0.1, boundary=boundary, buoyancy=b, backtrace="euler", projection="jacobi",
                       jacobi_iters=3)
        st, _ = m.segment(SmokeState(d0, (vx, vy)), 0.05, 3, (cx, cy))
        return st.density, st.velocity[0], st.velocity[1]

    torch.manual_seed(8)
    d0 = torch.rand(res, dtype=D).requires_grad_()
    vx, vy = (x.requires_grad_() for x in _random_velocity(m0, 0.4))
    b = torch.tensor(0.8, dtype=D, requires_grad=True)
    cx, cy = (x.requires_grad_() for x in _random_velocity(m0, 0.5))
    assert sk._threads(*res, d0.device) == 2
    assert_grad_close(run, (d0, vx, vy, b, cx, cy), rtol=1e-5, atol=1e-9, max_elements=10)


def test_split_scatter_into_one_cell_loses_no_adds(_split):
    """A flow whose every back-trace ends in the same wall row (velocity far above one cell per
    step): both row ranges scatter the density's gradient into the same few entries at once, the
    case that loses adds when two threads share a buffer (Warp's CPU atomics are not atomic across
    threads). Split and one-range gradients agree."""
    res = (512, 256)
    m = SmokeModel(res, dx=1.0, boundary="wall", backtrace="euler", projection="jacobi", jacobi_iters=2)
    torch.manual_seed(9)
    d0 = torch.rand(res, dtype=D).requires_grad_()
    u = (torch.full(m.face_shape(0), 1e4, dtype=D), torch.zeros(m.face_shape(1), dtype=D))
    w = torch.randn(res, dtype=D)
    grads = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        st, _ = m.segment(SmokeState(d0, u), 1.0, 1)
        grads.append(torch.autograd.grad((st.density * w).sum(), d0)[0])
    assert float(grads[1][0].abs().sum()) > 0.5 * float(grads[1].abs().sum())  # mostly into row 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
