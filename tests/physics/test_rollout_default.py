"""Long rollouts checkpoint by default; the default path's gradients equal the full tape's.

(The memory figures themselves are measured in bench/rollout_memory.py, fresh process per
measurement; here: the default's structure and exact gradients.)"""

import dataclasses

import pytest
import torch

from diffvc.physics import ParticleModel, ParticleState, RigidBodyModel, RigidBodyState, SpringModel, rollout
from diffvc.physics.rollout import AUTO_CHECKPOINT_MIN, auto_checkpoint

D = torch.float64


def test_auto_checkpoint_interval():
    assert auto_checkpoint(100) is None and auto_checkpoint(AUTO_CHECKPOINT_MIN) is None
    assert auto_checkpoint(10_000) == 100 and auto_checkpoint(300) == 18
    with pytest.raises(ValueError, match="checkpoint_every"):
        rollout(ParticleModel.create([1.0], 0.1), ParticleState(torch.zeros(1, 3), torch.zeros(1, 3)), 3, dt=1e-3,
                checkpoint_every="sometimes")


def _particles(ck):
    m0 = ParticleModel.create(torch.ones(5), 0.05, dtype=D)
    g = m0.gravity.clone().requires_grad_()
    ke = torch.tensor(1e4, dtype=D, requires_grad=True)
    m = dataclasses.replace(m0, gravity=g, contact=torch.cat([ke.reshape(1), m0.contact[1:]]))
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(5, 3, dtype=D, generator=gen).requires_grad_()
    x0 = torch.rand(5, 3, dtype=D, generator=gen) + 0.2
    st = rollout(m, ParticleState(x0, v0), 300, dt=1e-3, checkpoint_every=ck)
    return torch.autograd.grad((st.x ** 2).sum() + st.v.sum(), [v0, g, ke])


def _rigid(ck):
    m0 = RigidBodyModel.spheres([0.1, 0.1], [1.0, 2.0], dtype=D)
    mass = m0.mass.clone().requires_grad_()
    v = torch.tensor([[1.0, -1.0, 0.0], [-0.5, 0.0, 0.0]], dtype=D, requires_grad=True)
    st = RigidBodyState.create([[0.0, 0.15, 0.0], [0.4, 0.15, 0.0]], dtype=D)
    out = rollout(dataclasses.replace(m0, mass=mass), RigidBodyState(st.x, st.q, v, st.w), 200, dt=1e-3,
                  checkpoint_every=ck)
    return torch.autograd.grad(out.x.sum() + out.q.sum(), [v, mass])


def _springs(ck):
    x = torch.rand(8, 3, dtype=D, generator=torch.Generator().manual_seed(2)) * 0.3 + 0.05
    m0 = SpringModel.create(x, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7]], radius=0.05)
    ke = m0.ke.clone().requires_grad_()
    v0 = torch.zeros(8, 3, dtype=D, requires_grad=True)
    out = rollout(dataclasses.replace(m0, ke=ke), ParticleState(x, v0), 200, dt=1e-3, checkpoint_every=ck)
    return torch.autograd.grad(out.x.sum(), [v0, ke])


@pytest.mark.parametrize("case", [_particles, _rigid, _springs])
def test_default_checkpointing_gives_the_full_tape_gradients(case):
    """300/200 frames: the default checkpoints (per-step models through the bookkeeping-free
    segment node, springs through their fused segment); gradients w.r.t. the initial state and
    model tensors equal the full tape's to rounding."""
    for a, b in zip(case(None), case("auto")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_two_level_default_gives_the_full_tape_gradients(fused):
    """Beyond 2,048 frames the default checkpoints on two levels (a model without a fused segment:
    nested segment nodes; fused spring segments of T^(2/3) steps that re-run their backward in
    blocks of ~sqrt of that); gradients equal the full tape's either way."""
    x = torch.rand(4, 3, dtype=D, generator=torch.Generator().manual_seed(3)) * 0.2 + 0.05
    m0 = SpringModel.create(x, [[0, 1], [1, 2], [2, 3]], radius=0.05)

    @dataclasses.dataclass(frozen=True)
    class PerStep:  # the same model without its fused segment
        m: SpringModel

        def step(self, state, dt, control=None):
            return self.m.step(state, dt, control)

    def run(ck):
        ke = m0.ke.clone().requires_grad_()
        v0 = torch.zeros(4, 3, dtype=D, requires_grad=True)
        m = dataclasses.replace(m0, ke=ke)
        out = rollout(m if fused else PerStep(m), ParticleState(x, v0), 2100, dt=5e-4, checkpoint_every=ck)
        return torch.autograd.grad(out.x.sum() + out.v.sum(), [v0, ke])

    for a, b in zip(run(None), run("auto")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
