"""Residual dynamics: the contract, gradients to the network, and closing a model mismatch
(unknown joint damping) from observed trajectories, trained through rollouts."""

from pathlib import Path

import pytest
import torch

from diffvc.physics import ArticulatedState, load_mjcf, rollout
from diffvc.physics.learned import ResidualModel

ASSETS = Path(__import__("diffvc.physics", fromlist=["x"]).__file__).parent / "assets"



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls (the residual MLP) took 12-20 ms each with torch's 2 threads on the loaded
    shared machine and ~10 us with one; run these tests single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _mismatch():
    base = load_mjcf(ASSETS / "double_pendulum.xml", dtype=torch.float32)
    true = base.replace(dof_damping=torch.tensor([0.4, 0.15]))  # the unknown friction
    return base, true


def _trajectories(model, q0, steps, dt):
    _, states = rollout(model, ArticulatedState(q0, torch.zeros_like(q0)), steps, dt=dt, record=True)
    return torch.stack([torch.cat([s.q, s.qd], 1) for s in states])  # (steps + 1, B, 4)


def test_zero_network_reproduces_the_base_model_and_rollout_options_work():
    base, _ = _mismatch()
    net = torch.nn.Linear(4, 2)
    torch.nn.init.zeros_(net.weight)
    torch.nn.init.zeros_(net.bias)
    model = ResidualModel(base, net, fields=("qd",))
    st = base.initial_state(3, q=torch.tensor([0.5, 0.1]))
    a = rollout(model, st, 20, dt=0.01, checkpoint_every=5)
    b = rollout(base, st, 20, dt=0.01)
    torch.testing.assert_close(a.q, b.q)
    with pytest.raises(ValueError, match="fields"):
        ResidualModel(base, net, fields=("v",)).step(st, 0.01)
    with pytest.raises(ValueError, match="net output"):
        ResidualModel(base, torch.nn.Linear(4, 3), fields=("qd",)).step(st, 0.01)


def test_residual_network_gradient_matches_finite_differences():
    base, _ = _mismatch()
    base = base.replace(**{k: getattr(base, k).double() for k in ("body_pos", "body_quat", "body_mass", "body_com",
                                                                   "body_inertia", "joint_axis", "joint_pos", "joint_ref",
                                                                   "joint_springref", "joint_range", "dof_damping",
                                                                   "dof_armature", "dof_stiffness", "gear", "ctrl_range",
                                                                   "point", "point_radius", "planes", "contact", "limit",
                                                                   "gravity")})
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    w = net[0].weight
    st = base.initial_state(2, q=torch.tensor([0.7, -0.2], dtype=torch.float64))

    def run(w0):
        with torch.no_grad():
            net[0].weight.copy_(w0)
        return rollout(ResidualModel(base, net, fields=("qd",)), st, 10, dt=0.01).qd

    w0 = w.detach().clone()
    out = rollout(ResidualModel(base, net, fields=("qd",)), st, 10, dt=0.01).qd
    g = torch.randn_like(out)
    ad, = torch.autograd.grad((out * g).sum(), w)
    fd = torch.zeros_like(w0).reshape(-1)
    for i in range(0, fd.numel(), 5):
        e = torch.zeros_like(fd)
        e[i] = 1e-6
        fd[i] = ((run(w0 + e.reshape(w0.shape)) - run(w0 - e.reshape(w0.shape))) * g).sum() / 2e-6
    with torch.no_grad():
        net[0].weight.copy_(w0)
    sel = torch.arange(0, fd.numel(), 5)
    torch.testing.assert_close(ad.reshape(-1)[sel], fd[sel], rtol=1e-6, atol=1e-9)


def _train_and_evaluate(iterations):
    torch.manual_seed(0)
    base, true = _mismatch()
    dt, horizon = 0.01, 40
    q_train = torch.rand(16, 2) * 2.4 - 1.2
    q_test = torch.rand(8, 2) * 2.4 - 1.2
    obs = _trajectories(true, q_train, horizon, dt)
    held = _trajectories(true, q_test, horizon, dt)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    model = ResidualModel(base, net, fields=("qd",))

    def predict(m, traj0, steps):
        _, pred = rollout(m, ArticulatedState(traj0[:, :2], traj0[:, 2:]), steps, dt=dt,
                          observe=lambda s, k: torch.cat([s.q, s.qd], 1), truncate=10)
        return pred

    def error(m, traj):
        with torch.no_grad():
            return float(((predict(m, traj[0], horizon) - traj[1:]) ** 2).mean().sqrt())

    before = error(base, held)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for it in range(iterations):
        start = int(torch.randint(0, horizon - 10, ()))  # 10-step windows from observed states
        pred = predict(model, obs[start], 10)
        loss = ((pred - obs[start + 1:start + 11]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error(model, held)
    print(f"held-out RMS error over {horizon} steps after {iterations} iterations: base {before:.4f}, residual {after:.4f}")
    return before, after


def test_residual_training_through_truncated_rollouts_reduces_held_out_error():
    before, after = _train_and_evaluate(15)
    assert after < 0.85 * before


@pytest.mark.slow
def test_residual_closes_unknown_damping_on_held_out_trajectories():
    before, after = _train_and_evaluate(60)
    assert after < 0.4 * before  # measured: 0.3724 -> 0.1445
