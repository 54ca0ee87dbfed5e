from dataclasses import replace

import pytest
import torch

from diffvc._kernels.springs import spring_segment
from diffvc.physics import (ParticleState, SpringModel, rollout, spring_step, spring_step_torch,
                            springs_from_mesh)
from diffvc.testing import assert_grad_close

F64 = torch.float64
DT = 1e-3


def _cube(dtype=F64, height=0.02, vx=1.0):
    """8 particles (a 0.3 m cube, fully connected), resting on/into the ground and sliding in x."""
    x = torch.tensor([[a, b + height, c] for a in (0.0, 0.3) for b in (0.0, 0.3) for c in (0.0, 0.3)], dtype=dtype)
    sp = torch.combinations(torch.arange(8), 2)
    model = SpringModel.create(x, sp, mass=0.1, radius=0.03, ke=300.0, kd=0.5, gain=0.2, contact_ke=2e3,
                               contact_kd=5.0, mu=0.6, dtype=dtype)
    v = torch.zeros_like(x)
    v[:, 0] = vx
    v[:, 1] = -0.3
    return model, ParticleState(x, v)


def _act(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.num_springs, generator=g, dtype=model.mass.dtype) * 0.5


def test_kernel_step_matches_torch_twin_values_and_gradients():
    model, s = _cube()
    act = _act(model).requires_grad_()
    ke = model.ke.clone().requires_grad_()
    v0 = s.v.clone().requires_grad_()
    outs = []
    for fn in (spring_step, spring_step_torch):
        st = ParticleState(s.x, v0)
        m = replace(model, ke=ke)
        for _ in range(40):
            st = fn(m, st, DT, act)
        loss = (st.x ** 2).sum() + st.v.sum()
        outs.append((st.x, st.v, *torch.autograd.grad(loss, [act, ke, v0])))
    assert (s.x[:, 1] < model.radius).any()  # starts in contact with the ground
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradients_through_contact_and_friction_match_finite_differences():
    model0, s0 = _cube()

    def f(x0, v0, ke, kd, rest, act, contact, mass):
        m = replace(model0, ke=ke, kd=kd, rest=rest, contact=contact, mass=mass)
        return rollout(m, ParticleState(x0, v0), 40, dt=DT, control=act).x

    args = [s0.x, s0.v, model0.ke, model0.kd, model0.rest, _act(model0), model0.contact, model0.mass]
    assert_grad_close(f, [a.clone().requires_grad_() for a in args], rtol=1e-5, eps=1e-7, max_elements=12)


def test_fused_segment_equals_per_step_path_and_returns_states():
    model, s = _cube()
    act = _act(model)
    fused, xs_f = rollout(model, s, 30, dt=DT, control=act, substeps=2, observe=lambda st, k: st.x.mean(0))
    ref, xs_r = rollout(lambda st: model.step(st, DT, act), s, 30, substeps=2, observe=lambda st, k: st.x.mean(0))
    torch.testing.assert_close(fused.x, ref.x, rtol=0, atol=0)
    torch.testing.assert_close(xs_f, xs_r, rtol=0, atol=0)


def test_fused_segment_with_per_step_actuation_and_external_force():
    model, s = _cube()
    K = 25
    g = torch.Generator().manual_seed(3)
    acts = (torch.randn(K, model.num_springs, generator=g, dtype=F64) * 0.3).requires_grad_()
    ext = torch.randn(8, 3, generator=g, dtype=F64).requires_grad_()
    m, sp = model, model.springs
    x, v = spring_segment(K, DT, s.x, s.v, m.inv_mass, m.radius, m.planes, m.contact, m.gravity,
                          sp[:, 0].contiguous(), sp[:, 1].contiguous(), m.rest, m.ke, m.kd, m.gain, acts, ext)
    st = s
    for k in range(K):
        st = spring_step_torch(model, st, DT, acts[k], ext)
    torch.testing.assert_close(x, st.x, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad((x ** 2).sum() + v.sum(), [acts, ext])
    gb = torch.autograd.grad((st.x ** 2).sum() + st.v.sum(), [acts, ext])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 16, 100])
def test_checkpointed_fused_rollout_gradients_equal_full_tape(k):
    model, s = _cube()
    ke = model.ke.clone().requires_grad_()
    mu = model.contact.clone().requires_grad_()
    v0 = s.v.clone().requires_grad_()

    def grads(ckpt):
        m = replace(model, ke=ke, contact=mu)
        final, hs = rollout(m, ParticleState(s.x, v0), 100, dt=DT, checkpoint_every=ckpt,
                            observe=lambda st, f: st.x[:, 0].mean())
        return torch.autograd.grad(final.x.sum() + hs.sum(), [ke, mu, v0])

    for a, b in zip(grads(k), grads(None)):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def _segment_grads(model, s, K, acts, ext, recompute, return_all=False, workspace=None, twin=False):
    """Final state and gradients (x0, v0, every model tensor, actuations, external force) of K
    spring steps: the fused segment, or the plain-torch twin when ``twin``."""
    leaves = {k: getattr(model, k).clone().requires_grad_() for k in
              ("mass", "radius", "rest", "ke", "kd", "gain", "planes", "contact", "gravity")}
    x0, v0 = s.x.clone().requires_grad_(), s.v.clone().requires_grad_()
    m = replace(model, **leaves)
    if twin:
        st, xs = ParticleState(x0, v0), []
        for k in range(K):
            st = spring_step_torch(m, st, DT, acts[k], ext)
            xs.append(st.x)
        out = (st.x, st.v, torch.stack(xs)) if return_all else (st.x, st.v)
    else:
        sp = m.springs
        out = spring_segment(K, DT, x0, v0, m.inv_mass, m.radius, m.planes, m.contact, m.gravity,
                             sp[:, 0].contiguous(), sp[:, 1].contiguous(), m.rest, m.ke, m.kd, m.gain, acts, ext,
                             recompute=recompute, return_all=return_all, workspace=workspace)
    loss = (out[0] ** 2).sum() + out[1].sum() + ((out[2][::7] ** 2).sum() if len(out) > 2 else 0)
    return [out[0].detach(), *torch.autograd.grad(loss, [x0, v0, *leaves.values(), acts, ext])]


def test_recomputed_segment_in_blocks_equals_full_tape_and_twin():
    """A recomputed segment of more than 128 steps re-runs its backward in blocks of ceil(sqrt K)
    steps from states kept at the block starts, with two rolling adjoint rows and scratch rows
    from a shared workspace: gradients w.r.t. the state, every model tensor (planes, gravity,
    radius, mass, contact included, through two contact planes), per-step actuations and the
    external force equal the full tape's exactly and the torch twin's to rounding."""
    from diffvc._kernels.springs import SegmentWorkspace, block_length

    assert block_length(128) == 128 and block_length(300) == 18
    model, s = _cube()
    model = replace(model, planes=torch.tensor([[0.0, 1.0, 0.0, 0.0], [-0.6, 0.8, 0.0, -0.17]], dtype=F64))
    K = 300
    g = torch.Generator().manual_seed(4)
    acts = (torch.randn(K, model.num_springs, generator=g, dtype=F64) * 0.3).requires_grad_()
    ext = torch.randn(8, 3, generator=g, dtype=F64).requires_grad_()
    full = _segment_grads(model, s, K, acts, ext, recompute=False)
    ws = SegmentWorkspace()
    for _ in range(2):  # the workspace is reused by the second segment
        for a, b in zip(_segment_grads(model, s, K, acts, ext, recompute=True, workspace=ws), full):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    twin = _segment_grads(model, s, K, acts, ext, recompute=False, twin=True)
    for a, b in zip(full, twin):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # the states of every step returned and differentiated, recomputed in blocks
    all_full = _segment_grads(model, s, K, acts, ext, recompute=False, return_all=True)
    all_rec = _segment_grads(model, s, K, acts, ext, recompute=True, return_all=True, workspace=ws)
    for a, b in zip(all_rec, all_full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    twin_all = _segment_grads(model, s, K, acts, ext, recompute=False, return_all=True, twin=True)
    assert (all_full[2] - full[2]).abs().max() > 0  # the per-step states' loss terms count
    for a, b in zip(all_full, twin_all):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_hand_written_integration_adjoint_equals_warps_generated_adjoint():
    """The fused segment's backward uses hand-written adjoints; the per-step path uses Warp's
    generated ones: on a tilted and a level plane, sliding with friction, with a kinematic
    particle, their gradients w.r.t. everything agree to float64 rounding."""
    model, s = _cube()
    mass = model.mass.clone()
    mass[5] = 0.0  # kinematic
    model = replace(model, mass=mass,
                    planes=torch.tensor([[0.0, 1.0, 0.0, 0.0], [-0.6, 0.8, 0.0, -0.17]], dtype=F64))
    K = 40
    acts = (torch.randn(K, model.num_springs, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.3)
    acts = acts.requires_grad_()
    ext = torch.zeros(8, 3, dtype=F64, requires_grad=True)
    fused = _segment_grads(model, s, K, acts, ext, recompute=False)

    leaves = {k: getattr(model, k).clone().requires_grad_() for k in
              ("mass", "radius", "rest", "ke", "kd", "gain", "planes", "contact", "gravity")}
    x0, v0 = s.x.clone().requires_grad_(), s.v.clone().requires_grad_()
    m = replace(model, **leaves)
    st = ParticleState(x0, v0)
    for k in range(K):
        st = spring_step(m, st, DT, acts[k], ext)
    ref = [st.x.detach(), *torch.autograd.grad((st.x ** 2).sum() + st.v.sum(), [x0, v0, *leaves.values(), acts, ext])]
    assert fused[9][1].abs().sum() > 0 and fused[10].abs().sum() > 0  # both planes and the contact act
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_actuation_scales_the_rest_length():
    x = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    model = SpringModel.create(x, [[0, 1]], mass=1.0, ke=50.0, kd=5.0, gain=0.5, planes=[], gravity=(0, 0, 0),
                               dtype=F64)
    act = torch.tensor([0.4], dtype=F64)
    final = rollout(model, ParticleState(x, torch.zeros_like(x)), 1000, dt=1e-2, control=act)
    length = (final.x[1] - final.x[0]).norm()
    torch.testing.assert_close(length, torch.tensor(1.2, dtype=F64), rtol=1e-6, atol=1e-6)


def test_coincident_particles_give_finite_values_and_gradients():
    x = torch.zeros(2, 3, dtype=F64)
    model = SpringModel.create(x, [[0, 1]], rest=0.1, ke=10.0, kd=1.0, planes=[], dtype=F64)
    v0 = torch.zeros_like(x).requires_grad_()
    for fn in (spring_step, spring_step_torch):
        st = fn(model, ParticleState(x, v0), DT)
        (g,) = torch.autograd.grad(st.x.sum() + st.v.pow(2).sum(), [v0])
        assert torch.isfinite(st.x).all() and torch.isfinite(g).all()


def test_springs_from_mesh_uses_unique_edges_and_optional_bending():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    sp = springs_from_mesh(verts, faces)
    assert sp.dtype == torch.int32 and sp.shape == (6, 2)  # a tetrahedron has 6 edges
    assert {tuple(e) for e in sp.tolist()} == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    quad = torch.tensor([[0, 1, 2], [1, 3, 2]])
    sq = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    bent = springs_from_mesh(sq, quad, bending=True)
    assert bent.shape == (6, 2) and [0, 3] in bent.tolist()  # 5 edges + 1 bending spring
    with pytest.raises(ValueError, match="faces"):
        springs_from_mesh(verts, torch.tensor([[0, 1, 7]]))


def test_bad_input_names_the_argument():
    x = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="springs"):
        SpringModel.create(x, [[0, 3]])
    with pytest.raises(ValueError, match="ke"):
        SpringModel.create(x, [[0, 1]], ke=[1.0, 2.0])
    model = SpringModel.create(x, [[0, 1], [1, 2]])
    s = ParticleState(x, x)
    with pytest.raises(ValueError, match="actuation"):
        spring_step(model, s, DT, torch.zeros(3))
    with pytest.raises(ValueError, match="state.x"):
        spring_step(model, ParticleState(x[:2], x[:2]), DT)
    with pytest.raises(ValueError, match="dt"):
        rollout(model, s, 1, dt=0.0)


def test_closed_loop_fused_frames_under_checkpointing_equal_full_tape():
    """Controller output -> fused substeps, inside torch.utils.checkpoint: the control tensor is
    dropped after forward and recomputed for backward (caught a dangling-pointer bug)."""
    model, s = _cube()
    torch.manual_seed(0)
    w = (torch.randn(model.num_springs, 3, dtype=F64) * 2).requires_grad_()

    def ctrl(st, frame):
        return torch.tanh(w @ (st.x.mean(0) + 0.1 * frame))

    def grads(ckpt):
        final = rollout(model, s, 12, dt=DT, substeps=4, controller=ctrl, checkpoint_every=ckpt)
        return torch.autograd.grad((final.x ** 2).sum(), [w])[0]

    ref = grads(None)
    assert ref.abs().sum() > 0
    for k in (1, 5):
        torch.testing.assert_close(grads(k), ref, rtol=1e-6, atol=1e-12)


def test_forward_mode_over_the_twin_equals_reverse_mode_through_warp():
    """JVP (torch.func over spring_step_torch) . direction == VJP of the fused Warp rollout."""
    model, s = _cube()
    dke = torch.randn(model.num_springs, dtype=F64)
    dmu = torch.tensor(0.7, dtype=F64)

    def f(ke, mu, backend):
        contact = torch.cat([model.contact[:2], mu.reshape(1), model.contact[3:]])
        m = replace(model, ke=ke, contact=contact)
        return rollout(m, s, 80, dt=DT, backend=backend).x[:, 0].mean()

    mu0 = model.contact[2].clone()
    from diffvc.physics import rollout_jvp

    val, tangent = rollout_jvp(lambda ke, mu: f(ke, mu, "torch"), (model.ke, mu0), (dke, dmu))
    ke = model.ke.clone().requires_grad_()
    mu = mu0.clone().requires_grad_()
    y = f(ke, mu, "warp")
    gk, gm = torch.autograd.grad(y, [ke, mu])
    torch.testing.assert_close(val, y.detach())
    assert tangent.abs() > 1e-6
    torch.testing.assert_close(tangent, (gk * dke).sum() + gm * dmu, rtol=1e-8, atol=1e-12)


D = torch.float64


def _robot(dtype=torch.float64):
    """DiffTaichi's robotA (6 masses, 11 springs) in the z = 0 plane, standing on y = 0.1."""
    from diffvc.physics.springs import SpringModel

    objects = [[0.2, 0.1], [0.3, 0.13], [0.4, 0.1], [0.2, 0.2], [0.3, 0.2], [0.4, 0.2]]
    x0 = torch.tensor([[a, b, 0.0] for a, b in objects], dtype=dtype) + torch.tensor([0.0, 0.005, 0.0], dtype=dtype)
    pairs = torch.tensor([(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (2, 5), (0, 4), (1, 4), (2, 4), (3, 1), (5, 1)])
    model = SpringModel.create(x0, pairs, mass=1.0, ke=1e3, kd=1.0, gain=0.1, planes=[[0, 1, 0, 0.1]], contact_ke=1e4,
                               contact_kd=30.0, mu=1.0, friction_smoothing=0.5, gravity=(0, -4.8, 0), dtype=dtype)
    return model, x0


def test_controlled_segment_matches_torch_twin_and_finite_differences():
    """The closed-loop MLP controller fused in Warp (DiffTaichi's robot controller): states,
    actuations and gradients w.r.t. the weights, goal and initial velocity equal the per-step
    torch twin's, and the weight gradients match central differences."""
    from diffvc.physics import ParticleState
    from diffvc.physics.springs import mlp_controller_torch

    model, x0 = _robot()
    gen = torch.Generator().manual_seed(0)
    K, S, H, W, dims = 25, 11, 8, 4, 2
    waves = torch.sin(0.04 * torch.arange(K, dtype=D)[:, None] + torch.arange(W, dtype=D))
    n_in = W + 2 * dims * 6 + dims
    params = [0.5 * torch.randn(H, n_in, generator=gen, dtype=D), 0.1 * torch.randn(H, generator=gen, dtype=D),
              0.5 * torch.randn(S, H, generator=gen, dtype=D), 0.1 * torch.randn(S, generator=gen, dtype=D)]
    goal = torch.tensor([0.9, 0.2, 0.0], dtype=D)
    v0 = 0.1 * torch.randn(x0.shape, generator=gen, dtype=D)
    leaves = [p.clone().requires_grad_() for p in params + [goal, v0]]

    def run(fused, w1, b1, w2, b2, goal, v0):
        st = ParticleState(x0, v0)
        if fused:
            s, act = model.controlled_segment(st, 0.004, K, waves, goal, w1, b1, w2, b2, dims=dims, scale=0.05)
        else:
            s, act = mlp_controller_torch(model, st, 0.004, K, waves, goal, w1, b1, w2, b2, dims=dims, scale=0.05)
        return s.x, s.v, act

    a, b = run(True, *leaves), run(False, *leaves)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)
    assert float(a[2].abs().max()) > 0.1  # the controller acts
    w = [torch.randn(t.shape, generator=gen, dtype=D) for t in a]
    ga = torch.autograd.grad(sum((t * u).sum() for t, u in zip(a, w)), leaves)
    gb = torch.autograd.grad(sum((t * u).sum() for t, u in zip(b, w)), leaves)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert_grad_close(lambda *t: run(True, *t), leaves, rtol=1e-5, atol=1e-8, eps=1e-6, max_elements=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, s", [(200, 1003), (3, 9)])
def test_native_spring_kernels_equal_the_warp_kernels_bit_for_bit(dtype, n, s):
    """The fused segment's CPU spring kernels (one native loop, SPRING_LANES springs per
    iteration) against the Warp kernels (one thread per spring): forces and every adjoint equal
    bit for bit, with random end indices (a particle in several springs of one lane group), a
    spring count that leaves a partial lane group, and coincident ends."""
    from diffvc._kernels import to_warp, wp
    from diffvc._kernels.springs import SPRING_LANES, spring_forces, spring_forces_adjoint, spring_kernels

    assert s % SPRING_LANES != 0
    g = torch.Generator().manual_seed(3)
    x, v, af = (torch.rand(n, 3, generator=g, dtype=dtype) for _ in range(3))
    si = torch.randint(0, n, (s,), generator=g, dtype=torch.int32)
    sj = torch.randint(0, n, (s,), generator=g, dtype=torch.int32)
    si[-1] = sj[-1]  # coincident ends
    params = [torch.rand(s, generator=g, dtype=dtype) for _ in range(5)]  # rest, ke, kd, gain, act
    native_f, native_a, dim = spring_kernels(dtype, "cpu", s)
    assert dim == 1 and native_f is not spring_forces
    assert spring_kernels(torch.float16, "cpu", s) == (spring_forces, spring_forces_adjoint, s)
    out = {}
    for name, kf, ka, d in (("warp", spring_forces, spring_forces_adjoint, s), ("native", native_f, native_a, 1)):
        f = torch.zeros(n, 3, dtype=dtype)
        args = [to_warp(x, "vec"), to_warp(v, "vec"), to_warp(si), to_warp(sj), *map(to_warp, params)]
        wp.launch(kf, dim=d, inputs=args, outputs=[to_warp(f, "vec")], device="cpu")
        adj = [torch.full((n, 3), 0.5, dtype=dtype), torch.full((n, 3), -0.25, dtype=dtype)]
        adj += [torch.ones(s, dtype=dtype) for _ in range(5)]
        wp.launch(ka, dim=d, inputs=args + [to_warp(af, "vec"), to_warp(adj[0], "vec"), to_warp(adj[1], "vec"),
                                            *map(to_warp, adj[2:])], device="cpu")
        out[name] = [f, *adj]
    assert float(out["warp"][0].abs().max()) > 0 and float((out["warp"][1] - 0.5).abs().max()) > 0
    for a, b in zip(out["warp"], out["native"]):
        assert torch.equal(a, b)
        assert torch.isfinite(b).all()
