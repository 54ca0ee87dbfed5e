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
    with pytest.raises(ValueError, match="state.x"):
        particle_step(model, ParticleState(s.x[:2], s.v), 1e-3)
