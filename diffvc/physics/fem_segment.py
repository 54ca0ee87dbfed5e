"""The fused multi-step segment of :func:`~diffvc.physics.fem_step` (``FEMModel.segment``).

``n`` semi-implicit steps run as replayed Warp launches (tet forces, then integration, per step)
inside one autograd node whose backward replays the adjoint kernels in reverse
(:func:`diffvc._kernels.bridge.segment_op`). Values and gradients equal those of ``n`` calls to
:func:`~diffvc.physics.fem_step`; :func:`~diffvc.physics.rollout` uses the segment by itself
when given the model (``rollout(model, state, steps, dt=dt)``).
"""

from __future__ import annotations

import torch

from .._kernels.fem_segment import fem_segment as _fem_segment
from .._validate import check_dt, check_like
from .fem import _MATERIALS, FEMModel, FEMState, _check_state, _planes_arg, _trusted_state
from .particles import plane_contact_stability

__all__ = ["fem_segment"]


def fem_segment(model: FEMModel, state: FEMState, dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False):
    """``n`` fused :func:`~diffvc.physics.fem_step` steps of ``dt`` seconds.

    Args:
        model, state: the FEM model and its state.
        dt: time step in seconds; n: number of steps (>= 1).
        control: external nodal forces ``(N, 3)`` in N, held over the segment (receives gradients).
        recompute: keep only the segment's input and re-run its steps in backward (checkpointing).
        return_all: also return the state after every step.

    Returns:
        ``(final_state, states)``: ``states`` lists the ``n`` states after each step if
        ``return_all``, else it is empty. The stability warning checks the segment's first state.
    """
    _check_state(state, model)
    dt = check_dt(dt)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (steps), got {n!r}")
    nv = model.rest.shape[0]
    ext = None
    if control is not None:
        ext = check_like(control, "control", (nv, 3), model.rest).reshape(1, nv, 3)
    inv_mass, free = model.inv_mass(), model.free()
    plane_contact_stability("FEMModel.segment", dt, state.x, state.v, inv_mass * free, torch.zeros_like(model.mass),
                            model.planes, model.contact)
    out = _fem_segment(n, dt, state.x, state.v, model.tets, model.Dm_inv, model.volume, model.lame, model.damping,
                       _MATERIALS[model.material], inv_mass, free, _planes_arg(model), model.contact,
                       model.gravity.reshape(1, 3), model.planes.shape[0], ext,
                       recompute=recompute and torch.is_grad_enabled(), return_all=return_all)
    final = FEMState(out[0], out[1])
    if return_all:
        xs, vs = out[2].unbind(0), out[3].unbind(0)
        return final, [_trusted_state(xs[k], vs[k]) for k in range(n)]
    return final, []
