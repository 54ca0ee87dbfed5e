import math

import pytest
import torch

from diffvc.geometry import box, icosphere
from diffvc.physics import rollout
from diffvc.physics.rigid import (RigidBodyModel, RigidBodyState, apply_impulse, contact_forces,
                                  contact_forces_torch, quat_rotate, quat_to_matrix, rigid_step,
                                  rigid_step_torch)
from diffvc.testing import assert_grad_close

D = torch.float64
G = 9.81


def _mixed_scene(dtype=D):
    """A box (8 vertex points), two balls; box and balls touch the ground, balls touch each other
    and the box's corner; everything spinning."""
    v, f = box(0.2, dtype=dtype)
    bx, _ = RigidBodyModel.from_mesh(v, f, density=125.0, planes=[[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -0.6]],
                                     ke=1e4, kd=20.0, mu=0.4, friction_smoothing=0.05, pair_ke=2e4, pair_kd=5.0,
                                     pair_mu=0.2, pair_contact_smoothing=2e-3, damping=(0.1, 0.2), dtype=dtype)
    balls = RigidBodyModel.spheres([0.1, 0.08], [1.0, 2.0], dtype=dtype)
    model = RigidBodyModel.combine([bx, balls])
    assert model.point_body.tolist() == [0] * 8 + [1, 2] and model.planes.shape == (2, 4)
    q = torch.nn.functional.normalize(torch.tensor([[0.1, 0.2, 0.05, 1.0], [0.3, -0.1, 0.2, 1.0],
                                                    [0.0, 0.5, 0.1, 1.0]], dtype=dtype), dim=1)
    state = RigidBodyState(torch.tensor([[0.0, 0.09, 0.0], [0.17, 0.095, 0.05], [0.33, 0.075, 0.02]], dtype=dtype), q,
                           torch.tensor([[1.0, -0.5, 0.0], [-1.0, -0.1, 0.2], [0.5, -0.2, 0.1]], dtype=dtype),
                           torch.tensor([[0.3, 1.0, 2.0], [0.0, 1.0, -3.0], [1.0, 0.0, 0.5]], dtype=dtype))
    assert model.pairs.shape[0] == 8 * 2 + 1  # box corners vs both balls, ball vs ball
    return model, state


def test_kernel_matches_torch_twin_values_and_gradients():
    model, s = _mixed_scene()
    f, t = contact_forces(model, s)
    f2, t2 = contact_forces_torch(model, s)
    assert f.abs().sum() > 1.0  # contacts are active
    torch.testing.assert_close(f, f2)
    torch.testing.assert_close(t, t2)
    ext = torch.randn(3, 3, dtype=D)
    a, b = s, s
    for _ in range(5):
        a = rigid_step(model, a, 1e-3, force=ext, torque=0.1 * ext)
        b = rigid_step_torch(model, b, 1e-3, force=ext, torque=0.1 * ext)
    for k in "xqvw":
        torch.testing.assert_close(getattr(a, k), getattr(b, k))
    # gradients of the kernel op equal those of the twin
    leaves = [s.x.clone().requires_grad_(), s.v.clone().requires_grad_(), s.w.clone().requires_grad_(),
              model.mass.clone().requires_grad_(), model.inertia.clone().requires_grad_(),
              model.contact.clone().requires_grad_(), model.pair_contact.clone().requires_grad_()]
    w = [torch.randn(3, k, dtype=D) for k in (3, 4, 3, 3)]

    def loss(step):
        x, v, om, m, I, c, pc = leaves
        mdl = RigidBodyModel(m, I, model.points, model.point_body, model.point_radius, model.pairs, model.planes,
                             c, pc, model.gravity, model.damping)
        st = RigidBodyState(x, s.q, v, om)
        for _ in range(3):
            st = step(mdl, st, 1e-3)
        return sum((getattr(st, k) * wk).sum() for k, wk in zip("xqvw", w))

    ga = torch.autograd.grad(loss(rigid_step), leaves)
    gb = torch.autograd.grad(loss(rigid_step_torch), leaves)
    for a_, b_ in zip(ga, gb):
        torch.testing.assert_close(a_, b_)


def test_gradients_through_contact_match_finite_differences():
    model, s = _mixed_scene()

    def run(x, q, v, w, mass, inertia, contact4, pair_contact, points):
        # contact_smoothing (contact[4]) is 0 here, the edge of its valid range (>= 0), which the
        # model rejects a finite-difference step below; differentiate the other four entries
        contact = torch.cat([contact4, model.contact[4:]])
        mdl = RigidBodyModel(mass, inertia, points, model.point_body, model.point_radius, model.pairs,
                             model.planes, contact, pair_contact, model.gravity, model.damping)
        st = rollout(lambda st: rigid_step(mdl, st, 1e-3), RigidBodyState(x, q, v, w), 15)
        return st.x, st.q, st.v, st.w

    args = [s.x, s.q, s.v, s.w, model.mass, model.inertia, model.contact[:4], model.pair_contact, model.points]
    args = [a.clone().requires_grad_() for a in args]
    assert_grad_close(run, args, rtol=1e-5, atol=1e-7, eps=1e-7)


def _box_on_ground(density, mu, dtype=D, ke=1e4, delta=0.0):
    v, f = box(0.2, dtype=dtype)
    model, _ = RigidBodyModel.from_mesh(v, f, density=density, ke=ke, kd=50.0, mu=mu, friction_smoothing=0.01,
                                        contact_smoothing=delta, dtype=dtype)
    h = 0.1 - (0.2 ** 3 * 125.0) * G / (4 * ke)  # resting penetration of the nominal box
    return model, RigidBodyState.create([[0.0, h, 0.0]], dtype=dtype)


def _slide(density, mu, impulse, steps=600, dt=1e-3):
    """A box on the ground gets an impulse along +x, slides and stops; returns the final state."""
    model, state = _box_on_ground(density, mu)
    state = apply_impulse(model, state, impulse.reshape(1, 3))
    return rollout(lambda s: rigid_step(model, s, dt), state, steps)


def test_box_pushed_by_impulse_slides_and_stops_where_coulomb_friction_says():
    J = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    final = _slide(torch.tensor(125.0, dtype=D), torch.tensor(0.3, dtype=D), J)
    expected = 1.0 ** 2 / (2 * 0.3 * G)  # v0^2 / (2 mu g), v0 = J / m = 1 m/s
    assert abs(float(final.x[0, 0]) - expected) < 0.01 * expected
    assert float(final.v.norm()) < 1e-3 and float(final.w.norm()) < 1e-2
    assert abs(float(final.x[0, 1]) - 0.1) < 1e-3 and abs(float(final.x[0, 2])) < 1e-9


def test_box_slide_final_position_is_smooth_in_mass_and_friction():
    """The pipeline's "recover mass and friction" scenario: FD gradient of the final position
    w.r.t. density (mass and inertia scale with it), mu and the impulse."""
    def fn(density, mu, J):
        return _slide(density, mu, torch.stack([J, J * 0, J * 0]), steps=400).x[0, 0]

    args = [torch.tensor(125.0, dtype=D), torch.tensor(0.3, dtype=D), torch.tensor(1.0, dtype=D)]
    args = [a.requires_grad_() for a in args]
    assert_grad_close(fn, args, rtol=1e-4, atol=1e-9, eps=1e-6)
    g_rho, g_mu, g_J = torch.autograd.grad(fn(*args), args)
    # signs: heavier -> slower -> shorter; more friction -> shorter; harder push -> longer
    assert g_rho < 0 and g_mu < 0 and g_J > 0
    # and the slide law d = J^2 / (2 m^2 mu g): dd/dmu = -d/mu, dd/drho = -2 d/rho, dd/dJ = 2 d/J
    d = 1.0 / (2 * 0.3 * G)
    assert abs(float(g_mu) / (-d / 0.3) - 1) < 0.03
    assert abs(float(g_rho) / (-2 * d / 125.0) - 1) < 0.03
    assert abs(float(g_J) / (2 * d) - 1) < 0.03


def test_head_on_elastic_collision_exchanges_velocities_and_its_jacobian():
    model = RigidBodyModel.spheres(0.1, [1.0, 1.0], planes=[], gravity=(0, 0, 0), ke=1e5, kd=0.0, mu=0.0,
                                   contact_smoothing=1e-3, dtype=D)

    def final_vx(u):  # u = (v_a, v_b) along x
        v = torch.stack([u[0], u.new_zeros(()), u.new_zeros(()), u[1], u.new_zeros(()), u.new_zeros(())]).reshape(2, 3)
        st = RigidBodyState.create([[-0.13, 0.0, 0.0], [0.13, 0.0, 0.0]], v=v, dtype=D)
        st = rollout(lambda s: rigid_step(model, s, 5e-4), st, 200)
        return st.v[:, 0]

    u = torch.tensor([1.0, -0.5], dtype=D)
    vf = final_vx(u)
    torch.testing.assert_close(vf, torch.tensor([-0.5, 1.0], dtype=D), atol=1e-2, rtol=0)
    jac = torch.autograd.functional.jacobian(final_vx, u)
    torch.testing.assert_close(jac, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D), atol=1e-2, rtol=0)


def test_gradients_stay_finite_with_correct_sign_over_1000_steps():
    """1,000 steps (1 s) of a box launched into a slide with a bounce: friction smoothing (no
    stick/slip switch) and kd > 0 with dt << sqrt(m/ke) keep the contact map dissipative, so the
    gradient neither explodes nor vanishes; its sign matches physics and FD."""
    def fn(mu, J):
        model, state = _box_on_ground(125.0, mu, delta=1e-3)
        state = RigidBodyState(state.x + torch.tensor([[0.0, 0.05, 0.0]], dtype=D), state.q, state.v, state.w)
        state = apply_impulse(model, state, J.reshape(1, 3))
        return rollout(lambda s: rigid_step(model, s, 1e-3), state, 1000, checkpoint_every=100).x[0, 0]

    mu = torch.tensor(0.3, dtype=D, requires_grad=True)
    J = torch.tensor([1.5, 0.0, 0.0], dtype=D, requires_grad=True)
    x = fn(mu, J)
    gmu, gJ = torch.autograd.grad(x, [mu, J])
    assert torch.isfinite(gmu) and torch.isfinite(gJ).all()
    assert gmu < 0 and gJ[0] > 0
    eps = 1e-5
    with torch.no_grad():
        fd_mu = (fn(mu + eps, J) - fn(mu - eps, J)) / (2 * eps)
    assert abs(float(gmu - fd_mu)) < 1e-2 * abs(float(fd_mu))


def test_free_spinning_body_conserves_angular_momentum():
    """Torque-free asymmetric body spinning near its unstable middle axis: the implicit
    gyroscopic term keeps |L| constant and the quaternion unit."""
    I = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=D))[None]
    model = RigidBodyModel.create([1.0], I, [[0.0, 0.0, 0.0]], planes=[], gravity=(0, 0, 0), dtype=D)
    st = RigidBodyState.create([[0.0, 0.0, 0.0]], w=[[0.01, 5.0, 0.01]], dtype=D)

    def L(s):
        R = quat_to_matrix(s.q)[0]
        return R @ I[0] @ R.T @ s.w[0]

    L0 = L(st)
    st = rollout(lambda s: rigid_step(model, s, 1e-3), st, 2000)
    assert torch.isfinite(st.w).all()
    assert abs(float(L(st).norm() / L0.norm()) - 1) < 1e-2
    assert abs(float(st.q.norm()) - 1) < 1e-12
    assert float((L(st) - L0).norm() / L0.norm()) < 0.2  # L is conserved as a vector as well


def test_from_mesh_uses_mass_properties_and_impulse_off_centre_spins():
    v, f = icosphere(2, radius=0.5, dtype=D)
    model, com = RigidBodyModel.from_mesh(v, f, density=1000.0, dtype=D)
    vol = 4 / 3 * math.pi * 0.5 ** 3
    assert abs(float(model.mass) / (1000 * vol) - 1) < 0.05  # icosphere(2) is 3.4% smaller than the sphere
    assert abs(float(model.inertia[0, 0, 0]) / (0.4 * float(model.mass) * 0.25) - 1) < 0.08
    assert float(com.norm()) < 1e-9
    st = RigidBodyState.create(com.reshape(1, 3), dtype=D)
    st2 = apply_impulse(model, st, torch.tensor([[1.0, 0.0, 0.0]], dtype=D),
                        point=torch.tensor([[0.0, 0.5, 0.0]], dtype=D))
    torch.testing.assert_close(st2.v[0], torch.tensor([1.0, 0.0, 0.0], dtype=D) / model.mass)
    assert st2.w[0, 2] < 0 and abs(float(st2.w[0, 0])) < 1e-12  # r x J = (0, .5, 0) x (1, 0, 0) = -z
    # quaternion helpers agree
    q = torch.nn.functional.normalize(torch.randn(4, 4, dtype=D), dim=1)
    p = torch.randn(4, 3, dtype=D)
    torch.testing.assert_close(quat_rotate(q, p), (quat_to_matrix(q) @ p[..., None])[..., 0])
    torch.testing.assert_close(quat_rotate(q, quat_rotate(q, p), inverse=True), p)


def test_coincident_sphere_centres_give_finite_values_and_gradients():
    model = RigidBodyModel.spheres(0.1, [1.0, 1.0], dtype=D)
    x = torch.tensor([[0.0, 0.2, 0.0], [0.0, 0.2, 0.0]], dtype=D, requires_grad=True)
    st = RigidBodyState.create(x, dtype=D)
    st = RigidBodyState(x, st.q, st.v, st.w)
    out = rigid_step(model, st, 1e-3)
    (g,) = torch.autograd.grad(out.x.sum() + out.v.sum(), [x])
    assert torch.isfinite(out.x).all() and torch.isfinite(g).all()


def test_float32_runs_and_bad_input_names_the_argument():
    model, s = _box_on_ground(125.0, 0.3, dtype=torch.float32)
    out = rigid_step(model, s, 1e-3)
    assert out.x.dtype == torch.float32 and torch.isfinite(out.x).all()
    with pytest.raises(ValueError, match="mass"):
        RigidBodyModel.spheres(0.1, [-1.0])
    with pytest.raises(ValueError, match="inertia"):
        RigidBodyModel.create([1.0], -torch.eye(3)[None], [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="point_body"):
        RigidBodyModel.create([1.0, 1.0], torch.eye(3).expand(2, 3, 3), [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="state.q"):
        rigid_step(model, RigidBodyState(s.x, s.q[:, :3], s.v, s.w), 1e-3)
    with pytest.raises(ValueError, match="impulse"):
        apply_impulse(model, s, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="contact"):
        RigidBodyModel.spheres(0.1, [1.0], mu=-1.0)


def _rigid_leaves(model, s):
    names = ("mass", "inertia", "points", "point_radius", "planes", "contact", "pair_contact", "gravity", "damping")
    return [t.clone().requires_grad_() for t in (s.x, s.q, s.v, s.w)], \
        {k: getattr(model, k).clone().requires_grad_() for k in names}


@pytest.mark.parametrize("recompute", [False, True])
def test_fused_segment_equals_separate_steps(recompute):
    """model.segment (contact and integration kernels replayed as recorded launches, one autograd
    node) gives the states and the gradients (state, every floating model tensor, the held
    wrench) of n rigid_step calls, through box-ground, ball-ground and ball-ball contacts."""
    import dataclasses

    model, s = _mixed_scene()
    st_leaves, m_leaves = _rigid_leaves(model, s)
    m = dataclasses.replace(model, **m_leaves)
    wrench = torch.randn(3, 6, dtype=D, requires_grad=True)
    n, dt = 60, 5e-4
    st0 = RigidBodyState(*st_leaves)
    ref = [st0]
    for _ in range(n):
        ref.append(m.step(ref[-1], dt, wrench))
    final, states = m.segment(st0, dt, n, control=wrench, recompute=recompute, return_all=True)
    assert len(states) == n
    for k in "xqvw":
        a, b = getattr(ref[-1], k).detach(), getattr(final, k).detach()
        assert float((a - b).abs().max()) <= 1e-12 * max(1.0, float(a.abs().max())), k
        torch.testing.assert_close(getattr(states[29], k), getattr(ref[30], k), rtol=1e-12, atol=1e-12)
    w = [torch.randn(3, c, dtype=D) for c in (3, 4, 3, 3, 3, 4, 3, 3)]

    def loss(fin, mid):
        return sum((getattr(st, k) * wk).sum() for st, ks in ((fin, "xqvw"), (mid, "xqvw")) for k, wk in
                   zip(ks, w[:4] if st is fin else w[4:]))

    leaves = st_leaves + list(m_leaves.values()) + [wrench]
    names = list("xqvw") + list(m_leaves) + ["control"]
    g_ref = torch.autograd.grad(loss(ref[-1], ref[30]), leaves, allow_unused=True)
    g_seg = torch.autograd.grad(loss(final, states[29]), leaves, allow_unused=True)
    for name, a, b in zip(names, g_ref, g_seg):
        if a is None:
            a = torch.zeros_like(b) if b is not None else None
        if b is None:
            b = torch.zeros_like(a)
        assert float((a - b).abs().max()) <= 1e-10 * max(1.0, float(a.abs().max())), name
    assert float(g_seg[names.index("mass")].abs().max()) > 0  # contacts carry mass gradients


def test_fused_slide_rollout_matches_steps_and_finite_differences():
    """The box slide through rollout(model, ...): fused segments with checkpointing (recompute)
    equal the per-step rollout, and d(final x)/d(density, mu, impulse) matches central FD."""
    def fn(density, mu, J, fused=True):
        model, state = _box_on_ground(density, mu)
        state = apply_impulse(model, state, torch.stack([J, J * 0, J * 0]).reshape(1, 3))
        if fused:
            return rollout(model, state, 300, dt=1e-3, checkpoint_every=40).x[0, 0]
        return rollout(lambda s: rigid_step(model, s, 1e-3), state, 300, checkpoint_every=None).x[0, 0]

    args = [torch.tensor(125.0, dtype=D), torch.tensor(0.3, dtype=D), torch.tensor(1.0, dtype=D)]
    args = [a.requires_grad_() for a in args]
    a, b = fn(*args), fn(*args, fused=False)
    assert abs(float(a - b)) < 1e-12
    ga = torch.autograd.grad(a, args)
    gb = torch.autograd.grad(b, args)
    for x, y in zip(ga, gb):
        assert abs(float(x - y)) <= 1e-10 * abs(float(y))
    assert_grad_close(fn, args, rtol=1e-4, atol=1e-9, eps=1e-6)


def test_segment_bad_input_names_the_argument():
    model, s = _box_on_ground(125.0, 0.3)
    with pytest.raises(ValueError, match="n must be"):
        model.segment(s, 1e-3, 0)
    with pytest.raises(ValueError, match="control"):
        model.segment(s, 1e-3, 2, control=torch.zeros(2, 6, dtype=D))
    with pytest.raises(ValueError, match="state.q"):
        model.segment(RigidBodyState(s.x, s.q[:, :3], s.v, s.w), 1e-3, 2)
