import pytest
import torch

from diffvc.physics import ParticleModel, ParticleState, particle_step, particle_step_torch
from diffvc.testing import assert_grad_close


def _scene(dtype=torch.float64, **kw):
    model = ParticleModel.create(mass=[1.0, 2.0, 0.5], radius=0.1,
                                 planes=[[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -1.0]], dtype=dtype, **kw)
    # particle 0 penetrating the ground and sliding, 1 in free flight, 2 touching the wall
    x = torch.tensor([[0.0, 0.05, 0.0], [0.0, 1.0, 0.0], [0.95, 0.5, 0.0]], dtype=dtype)
    v = torch.tensor([[1.0, -2.0, 0.3], [0.5, 0.0, 0.0], [2.0, 0.1, 0.0]], dtype=dtype)
    return model, ParticleState(x, v)


def test_kernel_matches_torch_twin():
    model, s = _scene()
    ext = torch.randn(3, 3, dtype=torch.float64)
    for _ in range(5):
        a = particle_step(model, s, 1e-3, ext)
        b = particle_step_torch(model, s, 1e-3, ext)
        torch.testing.assert_close(a.x, b.x)
        torch.testing.assert_close(a.v, b.v)
        s = a


def test_contact_pushes_out_and_friction_opposes_sliding():
    model, s = _scene()
    s1 = particle_step(model, s, 1e-3)
    assert s1.v[0, 1] > s.v[0, 1]  # ground pushes up
    assert s1.v[0, 0] < s.v[0, 0]  # friction slows the sliding
    assert s1.v[2, 0] < s.v[2, 0]  # wall pushes back
    torch.testing.assert_close(s1.v[1], s.v[1] + torch.tensor([0, -9.81, 0], dtype=torch.float64) * 1e-3)


def test_gradients_through_contact_match_finite_differences():
    def rollout(x, v, mass, contact):
        m0, _ = _scene()
        model = ParticleModel(mass, m0.radius, m0.planes, contact, m0.gravity)
        st = ParticleState(x, v)
        for _ in range(20):
            st = particle_step(model, st, 2e-3)
        return st.x, st.v

    model, s = _scene()
    x = s.x.clone().requires_grad_()
    v = s.v.clone().requires_grad_()
    mass = model.mass.clone().requires_grad_()
    contact = model.contact.clone().requires_grad_()
    assert_grad_close(rollout, (x, v, mass, contact), rtol=1e-5, eps=1e-7)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="mass"):
        ParticleModel.create(mass=[-1.0], radius=0.1)
    with pytest.raises(ValueError, match="planes"):
        ParticleModel.create(mass=[1.0], radius=0.1, planes=[[0.0, 2.0, 0.0, 0.0]])
    model, s = _scene()
    with pytest.raises(ValueError, match="v must have shape"):  # a state's x and v must agree
        ParticleState(s.x[:2], s.v)
    with pytest.raises(ValueError, match="state.x"):  # and match the model
        particle_step(model, ParticleState(s.x[:2], s.v[:2]), 1e-3)
    with pytest.raises(ValueError, match="x contains non-finite"):
        ParticleState(torch.full_like(s.x, float("nan")), s.v)


def _leaves(model, s):
    return [t.clone().requires_grad_() for t in (s.x, s.v, model.mass, model.radius, model.planes, model.contact,
                                                 model.gravity)]


def _rebuild(leaves):
    x, v, mass, radius, planes, contact, gravity = leaves
    return ParticleModel(mass, radius, planes, contact, gravity), ParticleState(x, v)


@pytest.mark.parametrize("recompute", [False, True])
def test_fused_segment_equals_separate_steps(recompute):
    """model.segment (one recorded launch replayed per step, one autograd node) gives the states
    and the gradients (state, every model tensor, the held force) of n particle_step calls."""
    model, s = _scene()
    leaves = _leaves(model, s)
    ext = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    n = 40
    m, st = _rebuild(leaves)
    ref = [st]
    for _ in range(n):
        ref.append(particle_step(m, ref[-1], 1e-3, ext))
    final, states = m.segment(st, 1e-3, n, control=ext, recompute=recompute, return_all=True)
    assert len(states) == n
    for k in (0, 17, n - 1):
        torch.testing.assert_close(states[k].x, ref[k + 1].x, rtol=0, atol=1e-15)
    torch.testing.assert_close(final.v, ref[-1].v, rtol=0, atol=1e-15)
    w = torch.randn(4, 3, 3, dtype=torch.float64)

    def loss(fin, mid):
        return (fin.x * w[0]).sum() + (fin.v * w[1]).sum() + (mid.x * w[2]).sum() + (mid.v * w[3]).sum()

    g_ref = torch.autograd.grad(loss(ref[-1], ref[17]), leaves + [ext])
    g_seg = torch.autograd.grad(loss(final, states[16]), leaves + [ext])
    for name, a, b in zip(("x", "v", "mass", "radius", "planes", "contact", "gravity", "control"), g_ref, g_seg):
        assert float((a - b).abs().max()) <= 1e-10 * max(1.0, float(a.abs().max())), name


def test_fused_rollout_gradients_through_contact_match_finite_differences():
    """rollout(model, ...) runs the fused segment; its gradient vs central differences."""
    from diffvc.physics import rollout

    def run(x, v, mass, contact, ext):
        m0, _ = _scene()
        model = ParticleModel(mass, m0.radius, m0.planes, contact, m0.gravity)
        st = rollout(model, ParticleState(x, v), 20, dt=1e-3, control=ext)
        return st.x, st.v

    model, s = _scene()
    args = [t.clone().requires_grad_() for t in (s.x, s.v, model.mass, model.contact)]
    ext = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert_grad_close(run, (*args, ext), rtol=1e-5, eps=1e-7)


def test_segment_bad_input_names_the_argument():
    model, s = _scene()
    with pytest.raises(ValueError, match="n must be"):
        model.segment(s, 1e-3, 0)
    with pytest.raises(ValueError, match="control"):
        model.segment(s, 1e-3, 3, control=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="dt"):
        model.segment(s, -1.0, 3)


def test_fused_segments_of_other_sizes_reuse_their_recorded_launches_correctly():
    """Consecutive segments of 1, 5 and 2 particles (the recorded launch is reused with a new
    launch size and new pointers each time) each equal their own per-step rollout."""
    g = torch.Generator().manual_seed(3)
    for n in (1, 5, 2, 5):
        model = ParticleModel.create(mass=torch.rand(n, dtype=torch.float64, generator=g) + 0.5, radius=0.1,
                                     dtype=torch.float64)
        st = ParticleState(torch.rand(n, 3, dtype=torch.float64, generator=g) * 0.3,
                           torch.randn(n, 3, dtype=torch.float64, generator=g))
        ref = st
        for _ in range(30):
            ref = particle_step(model, ref, 1e-3)
        final, _ = model.segment(st, 1e-3, 30)
        torch.testing.assert_close(final.x, ref.x, rtol=0, atol=1e-15)
        torch.testing.assert_close(final.v, ref.v, rtol=0, atol=1e-15)
