"""Gradient-safe defaults and the warn-once stability check of explicit contact updates."""

import warnings

import pytest
import torch

from diffvc.physics import (ParticleModel, ParticleState, RigidBodyModel, RigidBodyState, SpringModel,
                            particle_step, rigid_step, rollout, spring_step)
from diffvc.physics.stability import StabilityWarning, reset_stability_warnings

D = torch.float64


def _head_on_jacobian(gap: float, **kw) -> torch.Tensor:
    """d(v_out_x) / d(v_in_x) of two equal spheres in an elastic head-on collision (kd = 0),
    the other parameters at their defaults."""
    model = RigidBodyModel.spheres(0.1, [1.0, 1.0], planes=[], gravity=(0, 0, 0), ke=1e5, kd=0.0, mu=0.0,
                                   dtype=D, **kw)

    def final_vx(u):
        v = torch.stack([u[0], u.new_zeros(()), u.new_zeros(()), u[1], u.new_zeros(()), u.new_zeros(())]).reshape(2, 3)
        st = RigidBodyState.create([[-0.1 - gap / 2, 0.0, 0.0], [0.1 + gap / 2, 0.0, 0.0]], v=v, dtype=D)
        return rollout(lambda s: rigid_step(model, s, 5e-4), st, 160).v[:, 0]

    return torch.autograd.functional.jacobian(final_vx, torch.tensor([1.0, -0.5], dtype=D))


def test_rigid_defaults_give_the_physical_collision_jacobian():
    """Head-on elastic collision of equal masses: velocities swap, d(v_out)/d(v_in) = [[0, 1], [1, 0]].
    With the default contact_smoothing (2 mm) this holds wherever the impact falls within a step;
    the former default (0: sharp onset) gave a saw-tooth in the impact timing (measured here:
    [[1.96, -0.96], [-0.96, 1.96]] at a 6 cm gap, [[-0.04, 1.04], ...] 0.11 mm further)."""
    exchange = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D)
    for gap in (0.06, 0.06011, 0.06022):
        torch.testing.assert_close(_head_on_jacobian(gap), exchange, atol=1e-2, rtol=0)
    assert float((_head_on_jacobian(0.06, contact_smoothing=0.0) - exchange).abs().max()) > 0.5


def test_bounce_defaults_are_within_the_friction_stability_bound():
    """The bounce example at its defaults (dt = 1/480 s, 1 kg, ke = 1e4): no stability warning."""
    from diffvc.examples.bounce import make_model, simulate

    reset_stability_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        simulate(torch.tensor([5.0, -5.0, 0.0], dtype=D), make_model(D))


def test_unstable_explicit_friction_warns_once_naming_the_parameter():
    reset_stability_warnings()
    model = ParticleModel.create([1.0], 0.1, mu=0.5, friction_smoothing=1e-3, dtype=D)
    st = ParticleState(torch.tensor([[0.0, 0.09, 0.0]], dtype=D), torch.tensor([[1.0, -1.0, 0.0]], dtype=D))
    with pytest.warns(StabilityWarning, match="Increase friction_smoothing above") as rec:
        for _ in range(20):
            st = particle_step(model, st, 2e-3)
    assert sum("friction_smoothing" in str(w.message) for w in rec) == 1  # once, not every step
    # a stiff contact names ke (and dt), once per solver
    stiff = ParticleModel.create([1.0], 0.1, ke=1e8, dtype=D)
    with pytest.warns(StabilityWarning, match="Reduce ke below"):
        particle_step(stiff, st, 2e-3)
    x = torch.tensor([[0.0, 0.09, 0.0], [0.3, 0.09, 0.0]], dtype=D)
    springs = SpringModel.create(x, [[0, 1]], radius=0.1, mu=0.5, friction_smoothing=1e-3)
    with pytest.warns(StabilityWarning, match="spring_step.*friction_smoothing"):
        spring_step(springs, ParticleState(x, torch.tensor([[1.0, -1.0, 0.0]] * 2, dtype=D)), 2e-3)
    balls = RigidBodyModel.spheres([0.1], [1.0], mu=0.5, friction_smoothing=1e-3, dtype=D)
    rs = RigidBodyState.create([[0.0, 0.09, 0.0]], v=[[1.0, -1.0, 0.0]], dtype=D)
    with pytest.warns(StabilityWarning, match="rigid_step.*friction_smoothing"):
        rigid_step(balls, rs, 2e-3)
    reset_stability_warnings()
