"""Articulated bodies: dynamics against an independent Lagrangian, conservation laws, joints,
limits, contact, batching, the simulator contract, and float64 finite-difference gradients."""

import math
from pathlib import Path

import pytest
import torch

from diffvc.physics import rollout
from diffvc.physics.articulated import ArticulatedModel, ArticulatedState, ArticulationBuilder
from diffvc.physics.mjcf import load_mjcf
from diffvc.testing import assert_grad_close, grad_check

ASSETS = Path(__import__("diffvc.physics", fromlist=["x"]).__file__).parent / "assets"
F64 = torch.float64


def double_pendulum(**kw):
    return load_mjcf(ASSETS / "double_pendulum.xml", dtype=F64, **kw)


def branched_tree(dtype=F64):
    """Cart (slide) carrying a pole (hinge, offset anchor) that carries two branches (a tilted
    hinge and a slide): exercises offsets, branching and every 1-dof joint kind."""
    b = ArticulationBuilder(gravity=(0.0, 0.0, -9.81))
    cart = b.add_body(-1, mass=1.3, inertia=(0.02, 0.03, 0.04))
    b.add_joint(cart, "prismatic", axis=(1, 0, 0), damping=0.1, armature=0.02)
    pole = b.add_body(cart, pos=(0.1, 0.0, 0.05), quat=(0.9, 0.1, 0.2, 0.0), mass=0.4, com=(0.0, 0.02, -0.3),
                      inertia=[[0.03, 0.001, 0.0], [0.001, 0.028, 0.002], [0.0, 0.002, 0.004]])
    b.add_joint(pole, "revolute", axis=(0, 1, 0), pos=(0.0, 0.0, 0.02))
    left = b.add_body(pole, pos=(0.0, 0.0, -0.6), mass=0.2, com=(0.1, 0.0, -0.05), inertia=(0.002, 0.003, 0.001))
    b.add_joint(left, "revolute", axis=(0.3, 1.0, 0.2), pos=(0.05, 0.0, 0.0), ref=0.2, stiffness=0.5, springref=0.1)
    right = b.add_body(pole, pos=(0.0, 0.1, -0.4), mass=0.3, com=(0.0, 0.0, -0.1), inertia=(0.001, 0.001, 0.002))
    b.add_joint(right, "prismatic", axis=(0, 0, 1), damping=0.3)
    return b.build(dtype=dtype)


def _vee(W):
    return torch.stack([W[..., 2, 1], W[..., 0, 2], W[..., 1, 0]], -1)


def lagrangian_accelerations(model: ArticulatedModel, q, qd):
    """Euler-Lagrange accelerations from T - V built on forward kinematics alone (velocities by
    forward-mode differentiation of the poses): independent of the CRBA/RNEA code."""

    def poses(qq):
        R, p, _ = model.forward_kinematics(qq[None])
        return R[0], (p + (R @ model.body_com[..., None])[..., 0])[0]

    def lag(qq, vv):
        (R, c), (Rdot, cdot) = torch.func.jvp(poses, (qq,), (vv,))
        w = _vee(Rdot @ R.transpose(-1, -2))
        Iw = R @ model.body_inertia @ R.transpose(-1, -2)
        T = 0.5 * (model.body_mass * (cdot * cdot).sum(-1)).sum() + 0.5 * (w * (Iw @ w[..., None])[..., 0]).sum()
        T = T + 0.5 * (model.dof_armature * vv * vv).sum()
        V = -(model.body_mass * (c @ model.gravity)).sum()
        V = V + 0.5 * (model.dof_stiffness * (qq - model.joint_springref) ** 2).sum()
        return T - V

    dLdq = torch.func.grad(lag, 0)(q, qd)
    Mq = torch.func.hessian(lag, 1)(q, qd)
    mixed = torch.func.jacfwd(torch.func.grad(lag, 1), 0)(q, qd)  # d/dq (dL/dqd)
    rhs = dLdq - mixed @ qd - model.dof_damping * qd
    return torch.linalg.solve(Mq, rhs), Mq


def test_dynamics_match_an_independent_lagrangian_on_a_branched_tree():
    model = branched_tree()
    q = torch.tensor([0.3, 0.7, -0.4, 0.05], dtype=F64)
    qd = torch.tensor([0.5, -1.2, 2.0, 0.3], dtype=F64)
    qdd, M = model.dynamics(ArticulatedState(q[None], qd[None]))
    ref, Mref = lagrangian_accelerations(model, q, qd)
    torch.testing.assert_close(M[0], Mref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(qdd[0], ref, rtol=1e-9, atol=1e-10)
    assert torch.linalg.eigvalsh(M[0]).min() > 0


def test_free_body_falls_ballistically_and_keeps_angular_momentum():
    b = ArticulationBuilder(gravity=(0.0, 0.0, -9.81))
    body = b.add_body(-1, pos=(0, 0, 5.0), mass=2.0, inertia=(0.1, 0.2, 0.3))
    b.add_joint(body, "free")
    model = b.build(dtype=F64)
    w0 = torch.tensor([3.0, 0.2, -1.0], dtype=F64)  # spin about a non-principal axis
    qd = torch.cat([torch.tensor([1.0, 0.0, 2.0], dtype=F64), w0])
    st = model.initial_state(1, qd=qd)
    dt, n = 1e-3, 500
    for _ in range(n):
        st = model.step(st, dt)
    t = dt * n
    # semi-implicit Euler: z(t) = z0 + v0 t - g t^2/2 - g dt t/2 exactly
    torch.testing.assert_close(st.q[0, :3], torch.tensor([t, 0.0, 5.0 + 2 * t - 9.81 * (t * t + dt * t) / 2],
                                                         dtype=F64), rtol=0, atol=1e-12)
    from diffvc.geometry.transforms import quaternion_to_matrix

    def world_L(s):
        R = quaternion_to_matrix(s.q[0, 3:])
        return R @ (torch.diag(torch.tensor([0.1, 0.2, 0.3], dtype=F64)) @ s.qd[0, 3:])

    L0 = world_L(model.initial_state(1, qd=qd))
    assert float((world_L(st) - L0).norm() / L0.norm()) < 2e-3  # explicit gyroscopic terms: O(dt)


def test_ball_joint_pendulum_period_matches_small_angle_theory():
    L, m = 0.8, 1.5
    b = ArticulationBuilder(gravity=(0.0, -9.81, 0.0))
    bob = b.add_body(-1, mass=m, com=(0, -L, 0), inertia=(1e-4, 1e-4, 1e-4))
    b.add_joint(bob, "ball")
    model = b.build(dtype=F64)
    a = 0.05
    q0 = torch.tensor([math.cos(a / 2), math.sin(a / 2), 0.0, 0.0], dtype=F64)  # tilt about x
    st = model.initial_state(1, q=q0)
    dt, z_prev, crossings = 2e-3, None, []
    tip = torch.tensor([0.0, -L, 0.0], dtype=F64)
    for k in range(800):
        st = model.step(st, dt)
        R, _ = model.body_poses(st)
        z = float((R[0, 0] @ tip)[2])
        if z_prev is not None and (z_prev < 0) != (z < 0):
            crossings.append((k + z_prev / (z_prev - z)) * dt)  # linear interpolation
        z_prev = z
    half_period = crossings[1] - crossings[0]
    I = m * L * L + 1e-4
    assert abs(2 * half_period - 2 * math.pi * math.sqrt(I / (m * 9.81 * L))) < 5e-3
    assert abs(float(st.q[0].norm()) - 1.0) < 1e-12  # stays a unit quaternion


def test_energy_drift_without_damping_is_first_order_in_dt():
    model = double_pendulum()
    drift = {}
    for dt in (2e-3, 5e-4):
        st = model.initial_state(1, q=torch.tensor([1.0, -0.5]))
        e0 = float(model.energy(st))
        worst = 0.0
        for k in range(int(round(0.6 / dt))):
            st = model.step(st, dt)
            if k % 10 == 0:
                worst = max(worst, abs(float(model.energy(st)) - e0))
        drift[dt] = worst
    swing = 2 * 2.7813566959781637 * 9.81 * 0.25 * 2 * (1 - math.cos(0.5)) + 10.0  # J, scale of motion energy
    assert drift[2e-3] < 0.05 * swing
    assert 2.5 < drift[2e-3] / drift[5e-4] < 6.0  # first order: 4x for a 4x smaller step


def test_rk4_drifts_far_less_than_euler():
    xml = (ASSETS / "double_pendulum.xml").read_text().replace('integrator="Euler"', 'integrator="RK4"')
    rk4 = load_mjcf(xml, dtype=F64)
    assert rk4.integrator == "rk4"
    drift = {}
    for model in (rk4, rk4.replace(integrator="euler")):
        st = model.initial_state(1, q=torch.tensor([1.0, -0.5]))
        e0 = float(model.energy(st))
        worst = 0.0
        for _ in range(100):
            st = model.step(st, 5e-3)
            worst = max(worst, abs(float(model.energy(st)) - e0))
        drift[model.integrator] = worst
    assert drift["rk4"] < 1e-2 * drift["euler"]


def test_joint_limit_stops_the_pendulum_and_damping_dissipates():
    b = ArticulationBuilder(gravity=(0.0, -9.81, 0.0), limit_ke=2e3, limit_kd=20.0, limit_smoothing=1e-3)
    link = b.add_body(-1, mass=1.0, com=(0.5, 0.0, 0.0), inertia=(1e-3, 1e-3, 1e-3))
    b.add_joint(link, "revolute", axis=(0, 0, 1), limited=True, range=(-0.6, 0.6), damping=0.05)
    model = b.build(dtype=F64)
    st = model.initial_state(1, q=torch.tensor([0.5]))
    qmin = 1.0
    for _ in range(750):
        st = model.step(st, 2e-3)
        qmin = min(qmin, float(st.q[0, 0]))
    assert -0.70 < qmin < -0.6  # fell onto the lower limit, penetrating it by ~sqrt(2 E / ke)
    assert abs(float(st.q[0, 0]) + 0.6) < 0.02 and abs(float(st.qd[0, 0])) < 0.3


def test_free_box_comes_to_rest_on_the_ground():
    b = ArticulationBuilder(gravity=(0.0, 0.0, -9.81), planes=[[0, 0, 1, 0]], ke=2e4, kd=50.0, mu=0.8,
                            contact_smoothing=1e-3)
    box = b.add_body(-1, pos=(0, 0, 0.3), quat=(0.96, 0.2, 0.1, 0.0), mass=1.0, inertia=(0.01, 0.01, 0.01))
    b.add_joint(box, "free")
    b.add_box(box, (0.1, 0.1, 0.1))
    model = b.build(dtype=F64)
    st = model.initial_state(1, qd=torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
    for _ in range(1300):
        st = model.step(st, 2e-3)
    assert abs(float(st.q[0, 2]) - 0.1) < 5e-3  # resting on a face (the centre 0.1 m up)
    assert float(st.qd[0].abs().max()) < 0.1
    assert float(model.point_positions(st)[0, :, 2].min()) > -2e-3


def test_spheres_on_different_links_collide():
    # two pendulums side by side swing into each other
    b = ArticulationBuilder(gravity=(0.0, -9.81, 0.0), ke=5e3, kd=5.0, mu=0.0)
    for x, q0 in ((-0.12, 0.0), (0.12, 0.0)):
        body = b.add_body(-1, pos=(x, 1.0, 0.0), mass=1.0, com=(0, -0.5, 0), inertia=(1e-3, 1e-3, 1e-3))
        b.add_joint(body, "revolute", axis=(0, 0, 1))
        b.add_sphere(body, 0.1, pos=(0, -0.5, 0))
    model = b.build(dtype=F64)
    assert model.pairs.tolist() == [[0, 1]]
    st = model.initial_state(1, qd=torch.tensor([2.0, 0.0]))  # left one swings right into the other
    for _ in range(300):
        st = model.step(st, 1e-3)
    assert float(st.qd[0, 1]) > 0.5 > float(st.qd[0, 0])  # momentum passed on


def test_batched_environments_equal_single_runs_and_controls_act():
    model = load_mjcf(ASSETS / "cartpole.xml", dtype=F64)
    q = torch.tensor([[0.0, 0.1], [0.2, 3.0], [-0.1, 1.0]], dtype=F64)
    u = torch.tensor([[0.5], [-0.3], [2.0]], dtype=F64)  # the last one is clamped to ctrlrange 1
    batch = model.step(ArticulatedState(q, torch.zeros_like(q)), 0.01, u)
    for i in range(3):
        one = model.step(ArticulatedState(q[i:i + 1], torch.zeros(1, 2, dtype=F64)), 0.01, u[i])
        torch.testing.assert_close(batch.q[i], one.q[0], rtol=1e-14, atol=1e-14)
    clamped = model.step(ArticulatedState(q[2:], torch.zeros(1, 2, dtype=F64)), 0.01, torch.tensor([1.0], dtype=F64))
    torch.testing.assert_close(batch.qd[2], clamped.qd[0])
    assert float(batch.qd[0, 0]) > 0 > float(batch.qd[1, 0])


def test_rollout_contract_and_checkpointing_give_the_same_gradient():
    model = double_pendulum()
    q0 = torch.tensor([[0.8, -0.3]], dtype=F64, requires_grad=True)
    st = ArticulatedState(q0, torch.zeros(1, 2, dtype=F64))
    g = []
    for ck in (None, 7):
        out = rollout(model, st, 40, dt=1e-3, checkpoint_every=ck)
        g.append(torch.autograd.grad(out.q.sum(), q0)[0])
    torch.testing.assert_close(g[0], g[1], rtol=1e-12, atol=0)


# ------------------------------------------------------------------ gradients vs FD (float64)

def test_gradient_to_initial_state_and_controls_through_joint_limits():
    b = ArticulationBuilder(gravity=(0.0, -9.81, 0.0), limit_ke=1e3, limit_kd=2.0, limit_smoothing=2e-2)
    l1 = b.add_body(-1, mass=1.0, com=(0.25, 0, 0), inertia=(1e-3, 1e-3, 5e-3))
    b.add_joint(l1, "revolute", axis=(0, 0, 1), limited=True, range=(-0.5, 0.4), damping=0.05)
    l2 = b.add_body(l1, pos=(0.5, 0, 0), mass=0.5, com=(0.2, 0, 0), inertia=(1e-3, 1e-3, 3e-3))
    b.add_joint(l2, "revolute", axis=(0, 0, 1), limited=True, range=(-0.3, 0.3), armature=0.01)
    model = b.build(dtype=F64)
    T, dt = 40, 8e-3
    q0 = torch.tensor([[0.2, 0.1]], dtype=F64, requires_grad=True)
    qd0 = torch.tensor([[0.5, -1.0]], dtype=F64, requires_grad=True)
    u = (0.3 * torch.randn(T, 1, 2, dtype=F64)).requires_grad_()

    def run(q0, qd0, u):
        st = ArticulatedState(q0, qd0)
        for k in range(T):
            st = model.step(st, dt, u[k])
        return torch.cat([st.q, st.qd], 1)

    with torch.no_grad():
        qs = [model.step(ArticulatedState(q0, qd0), dt).q]
        st = ArticulatedState(q0, qd0)
        lo = 1.0
        for k in range(T):
            st = model.step(st, dt, u[k])
            lo = min(lo, float(st.q[0, 0]))
    assert lo < -0.5 + 0.03  # the first joint reaches its lower limit's smoothing zone
    assert_grad_close(run, (q0, qd0, u), rtol=1e-5, eps=1e-6, max_elements=12)


def test_gradient_to_masses_inertias_lengths_and_joint_parameters():
    base = double_pendulum()
    mass = base.body_mass.clone().requires_grad_()
    pos = base.body_pos.clone().requires_grad_()  # link 2's offset = link 1's length
    com = base.body_com.clone().requires_grad_()
    damping = torch.tensor([0.1, 0.2], dtype=F64, requires_grad=True)
    armature = torch.tensor([0.01, 0.02], dtype=F64, requires_grad=True)
    axis = base.joint_axis.clone().requires_grad_()
    inertia = torch.diagonal(base.body_inertia, dim1=1, dim2=2).clone().requires_grad_()  # principal moments

    def run(mass, pos, com, damping, armature, axis, inertia):
        model = base.replace(body_mass=mass, body_pos=pos, body_com=com, dof_damping=damping,
                             dof_armature=armature, joint_axis=axis / axis.norm(dim=-1, keepdim=True),
                             body_inertia=torch.diag_embed(inertia))
        st = model.initial_state(1, q=torch.tensor([1.0, -0.5], dtype=F64))
        for _ in range(25):
            st = model.step(st, 4e-3)
        return torch.cat([st.q, st.qd], 1)

    assert_grad_close(run, (mass, pos, com, damping, armature, axis, inertia), rtol=1e-5, eps=1e-6, max_elements=4)


def test_gradient_through_ground_contact_of_a_free_body():
    def make(mass, ke):
        b = ArticulationBuilder(gravity=(0.0, 0.0, -9.81), planes=[[0, 0, 1, 0]], ke=ke, kd=20.0, mu=0.6,
                                friction_smoothing=0.05, contact_smoothing=5e-3)
        body = b.add_body(-1, pos=(0, 0, 0.25), quat=(0.98, 0.15, 0.1, 0.05), mass=mass, inertia=(0.02, 0.03, 0.02))
        b.add_joint(body, "free")
        b.add_capsule(body, 0.05, (-0.15, 0.0, 0.0), (0.15, 0.0, 0.0))
        b.add_sphere(body, 0.05, (0.0, 0.1, 0.0))
        return b.build(dtype=F64)

    mass = torch.tensor(1.0, dtype=F64, requires_grad=True)
    ke = torch.tensor(3e3, dtype=F64, requires_grad=True)
    qd0 = torch.tensor([[0.6, 0.1, -0.5, 0.5, -1.0, 2.0]], dtype=F64, requires_grad=True)

    def run(mass, ke, qd0):
        model = make(mass, ke)
        st = ArticulatedState(model.initial_state(1).q, qd0)
        for _ in range(60):
            st = model.step(st, 4e-3)
        return torch.cat([st.q, st.qd], 1)

    with torch.no_grad():
        m = make(mass, ke)
        st = ArticulatedState(m.initial_state(1).q, qd0)
        touched = False
        for _ in range(60):
            st = m.step(st, 4e-3)
            touched |= bool((m.point_positions(st)[..., 2] < 0.05).any())
    assert touched
    assert_grad_close(run, (mass, ke, qd0), rtol=2e-5, eps=1e-6)


def test_fd_check_catches_a_wrong_contact_gradient():
    model = load_mjcf(ASSETS / "double_pendulum.xml", dtype=F64, ke=5e3, kd=10.0, contact_smoothing=5e-3)
    model = model.replace(planes=torch.tensor([[0.0, 0.0, 1.0, -0.95]], dtype=F64))  # floor the tip reaches
    q0 = torch.tensor([[0.6, 0.0]], dtype=F64, requires_grad=True)

    def wrong(q0):  # contact forces cut out of the tape
        st = ArticulatedState(q0, torch.zeros(1, 2, dtype=F64))
        free = model.replace(planes=torch.zeros(0, 4, dtype=F64))
        for _ in range(120):
            qdd_c, _ = model.dynamics(st, None, 4e-3)
            qdd_f, _ = free.dynamics(st, None, 4e-3)
            qd = st.qd + 4e-3 * (qdd_f + (qdd_c - qdd_f).detach())
            st = ArticulatedState(st.q + 4e-3 * qd, qd)
        return st.q

    with torch.no_grad():
        st = ArticulatedState(q0, torch.zeros(1, 2, dtype=F64))
        low = 0.0
        for _ in range(120):
            st = model.step(st, 4e-3)
            low = min(low, float(model.point_positions(st)[..., 2].min()))
    assert low < -0.95 + 0.04  # the tip sphere reaches the floor
    assert grad_check(wrong, (q0,), eps=1e-6).max_rel_error > 1e-2


# ------------------------------------------------------------------ validation of inputs

def test_bad_inputs_raise_errors_naming_the_argument():
    model = double_pendulum()
    st = model.initial_state(2)
    with pytest.raises(ValueError, match="state.q"):
        model.step(ArticulatedState(st.q[:, :1], st.qd), 1e-3)
    with pytest.raises(ValueError, match="dt"):
        model.step(st, 0.0)
    with pytest.raises(ValueError, match="control"):
        model.step(st, 1e-3, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="body_mass"):
        model.replace(body_mass=-model.body_mass)
    with pytest.raises(ValueError, match="parent"):
        model.replace(parent=(1, 0))
    with pytest.raises(ValueError, match="joint_range"):
        b = ArticulationBuilder()
        l = b.add_body(-1, mass=1.0, inertia=(1, 1, 1))
        b.add_joint(l, "revolute", limited=True, range=(1.0, -1.0))
        b.build()
    with pytest.raises(ValueError, match="free joint"):
        b = ArticulationBuilder()
        a = b.add_body(-1, mass=1.0, inertia=(1, 1, 1))
        c = b.add_body(a, mass=1.0, inertia=(1, 1, 1))
        b.add_joint(c, "free")
        b.build()


def test_degenerate_zero_velocity_quaternion_step_has_finite_gradients():
    b = ArticulationBuilder()
    body = b.add_body(-1, mass=1.0, com=(0, -0.5, 0), inertia=(1e-2, 1e-2, 1e-2))
    b.add_joint(body, "ball")
    model = b.build(dtype=F64)
    qd = torch.zeros(1, 3, dtype=F64, requires_grad=True)  # at rest, hanging: |w| = 0 exactly
    st = model.step(ArticulatedState(model.initial_state(1).q, qd), 1e-2)
    g, = torch.autograd.grad(st.q.sum() + st.qd.sum(), qd)
    assert torch.isfinite(g).all() and torch.isfinite(st.q).all()


def test_mjcf_unsupported_elements_and_attributes_are_named():
    with pytest.raises(ValueError, match="<tendon>"):
        load_mjcf("<mujoco><worldbody/><tendon/></mujoco>")
    with pytest.raises(ValueError, match="'mesh'"):
        load_mjcf('<mujoco><worldbody><body><geom type="mesh"/></body></worldbody></mujoco>')
    with pytest.raises(ValueError, match="<position>"):
        load_mjcf('<mujoco><worldbody><body><joint name="a"/><geom size="0.1"/></body></worldbody>'
                  '<actuator><position joint="a"/></actuator></mujoco>')
    with pytest.raises(ValueError, match="'frobnicate'"):
        load_mjcf('<mujoco><worldbody><body><joint frobnicate="1"/><geom size="0.1"/></body></worldbody></mujoco>')
    with pytest.raises(ValueError, match="integrator"):
        load_mjcf('<mujoco><option integrator="implicitfast"/><worldbody/></mujoco>')


def test_mjcf_defaults_degrees_and_geom_inertia():
    xml = """<mujoco><default><joint damping="0.3"/><default class="stiff"><joint stiffness="2"/></default></default>
      <worldbody><body name="a" euler="0 90 0"><joint name="j0" range="-45 45"/>
      <geom type="box" size="0.1 0.2 0.3" density="500"/>
      <body name="b" pos="0 0 1"><joint class="stiff" type="slide"/><geom type="sphere" size="0.1" mass="2"/></body>
      </body></worldbody></mujoco>"""
    model = load_mjcf(xml, dtype=F64)
    assert model.joint_type == ("revolute", "prismatic")
    torch.testing.assert_close(model.joint_range[0], torch.tensor([-math.pi / 4, math.pi / 4], dtype=F64))
    assert model.joint_limited == (True, False)
    torch.testing.assert_close(model.dof_damping, torch.tensor([0.3, 0.3], dtype=F64))
    torch.testing.assert_close(model.dof_stiffness, torch.tensor([0.0, 2.0], dtype=F64))
    m = 500 * 0.2 * 0.4 * 0.6
    torch.testing.assert_close(model.body_mass, torch.tensor([m, 2.0], dtype=F64))
    torch.testing.assert_close(torch.diagonal(model.body_inertia[0]),
                               m / 3 * torch.tensor([0.04 + 0.09, 0.01 + 0.09, 0.01 + 0.04], dtype=F64))
    torch.testing.assert_close(model.body_quat[0], torch.tensor([math.sqrt(0.5), 0, math.sqrt(0.5), 0], dtype=F64))
