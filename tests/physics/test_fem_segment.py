"""FEMModel.segment: the fused explicit FEM segment equals fem_step steps (values, gradients) and
finite differences; rollout(model, ...) uses it."""

import dataclasses

import pytest
import torch

from diffvc.geometry import tet_box
from diffvc.physics import FEMModel, FEMState, fem_step, rollout
from diffvc.testing import assert_grad_close

D = torch.float64


def _model(E, nu, damping):
    v, t = tet_box(0.2, 2, center=(0.0, 0.105, 0.0), dtype=D)
    return FEMModel.create(v, t, density=500.0, youngs_modulus=E, poisson_ratio=nu, damping=damping, ke=2e4,
                           kd=20.0, mu=0.5, friction_smoothing=0.05, contact_smoothing=2e-3, dtype=D), v


@pytest.mark.parametrize("with_force", [False, True])
def test_fused_segment_equals_fem_steps(with_force):
    """60 steps of a cube landing on the ground: states and gradients (initial state, Young's
    modulus, Poisson ratio, damping, held nodal force) of the fused segment vs fem_step."""
    E = torch.tensor(3e4, dtype=D, requires_grad=True)
    nu = torch.tensor(0.3, dtype=D, requires_grad=True)
    damping = torch.tensor([1.0, 0.005], dtype=D, requires_grad=True)
    model, v = _model(E, nu, damping)
    x0 = v.clone().requires_grad_()
    v0 = torch.tensor([0.3, -0.5, 0.0], dtype=D).expand_as(v).clone().requires_grad_()
    ext = (0.1 * torch.randn(v.shape, dtype=D, generator=torch.Generator().manual_seed(0))).requires_grad_() \
        if with_force else None
    n, dt = 60, 5e-4
    ref = [FEMState(x0, v0)]
    for _ in range(n):
        ref.append(fem_step(model, ref[-1], dt, ext))
    final, states = model.segment(FEMState(x0, v0), dt, n, control=ext, return_all=True)
    assert len(states) == n
    assert float(ref[-1].x[:, 1].min()) < 2e-3  # the bottom nodes are in contact (smoothed onset: 4 cm band)
    for a, b in ((ref[-1].x, final.x), (ref[-1].v, final.v), (ref[25].x, states[24].x)):
        assert float((a - b).abs().max()) <= 1e-12 * float(a.abs().max())
    w = torch.randn(v.shape, dtype=D, generator=torch.Generator().manual_seed(1))
    leaves = [x0, v0, E, nu, damping] + ([ext] if with_force else [])
    g_ref = torch.autograd.grad((ref[-1].x * w).sum() + ref[25].v.sum(), leaves, retain_graph=True)
    g_seg = torch.autograd.grad((final.x * w).sum() + states[24].v.sum(), leaves)
    for a, b in zip(g_ref, g_seg):
        assert float((a - b).abs().max()) <= 1e-10 * float(a.abs().max())


def test_fused_rollout_gradients_match_finite_differences():
    def fn(E, damping, x0):
        model, v = _model(E, torch.tensor(0.3, dtype=D), damping)
        st = rollout(model, FEMState(x0, torch.zeros_like(x0)), 40, dt=5e-4, checkpoint_every=15)
        return st.x[:, 1]

    _, v = _model(torch.tensor(3e4, dtype=D), torch.tensor(0.3, dtype=D), torch.tensor([1.0, 0.005], dtype=D))
    args = [torch.tensor(3e4, dtype=D), torch.tensor([1.0, 0.005], dtype=D), v.clone()]
    args = [a.requires_grad_() for a in args]
    # per-argument steps: E is O(1e4) (differentiated as a scale factor), the rest O(1)
    assert_grad_close(lambda E: fn(E * 3e4, args[1].detach(), args[2].detach()),
                      [torch.tensor(1.0, dtype=D, requires_grad=True)], rtol=1e-6, atol=1e-10, eps=1e-6)
    assert_grad_close(lambda d, x: fn(args[0].detach(), d, x), [args[1], args[2]], rtol=1e-6, atol=1e-10, eps=1e-7)


def test_segment_bad_input_names_the_argument():
    model, v = _model(3e4, 0.3, [1.0, 0.005])
    st = model.initial_state()
    with pytest.raises(ValueError, match="n must be"):
        model.segment(st, 1e-3, 0)
    with pytest.raises(ValueError, match="control"):
        model.segment(st, 1e-3, 2, control=torch.zeros(3, 3, dtype=D))
    with pytest.raises(ValueError, match="state.x"):
        model.segment(dataclasses.replace(st, x=st.x[:2], v=st.v[:2]), 1e-3, 2)
