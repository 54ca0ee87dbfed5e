"""FEM and rigid-body solvers, forward + backward: the Warp steps vs their plain-torch twins.

* ``fem_drop``: a soft 0.2 m cube (tet_box resolution 4: 125 vertices, 384 tets, stable
  Neo-Hookean) dropped on the ground, 200 semi-implicit steps of 1 ms, loss on the final
  positions, gradients w.r.t. (E, nu, damping): ``fem_step`` (Warp) vs ``fem_step_torch``.
* ``fem_implicit``: the same cube, 10 backward-Euler steps of 10 ms (Newton + sparse LU, backward
  = one adjoint solve per step).
* ``rigid_slide``: a box (8 collision vertices) pushed across the ground, 500 steps of 1 ms,
  gradients w.r.t. density, mu and the impulse: ``rigid_step`` (Warp) vs ``rigid_step_torch``.

Variants are interleaved over repeats so machine load hits them alike; medians in ms.

    python -m bench.fem [--quick]     or     diffvc bench fem
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from diffvc.geometry import box, tet_box
from diffvc.physics import (FEMModel, FEMState, RigidBodyModel, RigidBodyState, apply_impulse, fem_implicit_step,
                            fem_step, fem_step_torch, rigid_step, rigid_step_torch, rollout)

D = torch.float64


def _fem_model(E, nu, damping):
    v, t = tet_box(0.2, 4, center=(0.0, 0.15, 0.0), dtype=D)
    return FEMModel.create(v, t, density=500.0, youngs_modulus=E, poisson_ratio=nu, damping=damping, ke=2e4,
                           kd=20.0, mu=0.5, contact_smoothing=2e-3, dtype=D), v


def fem_drop(step, steps=200, implicit=False):
    E = torch.tensor(3e4, dtype=D, requires_grad=True)
    nu = torch.tensor(0.3, dtype=D, requires_grad=True)
    damping = torch.tensor([1.0, 0.005], dtype=D, requires_grad=True)
    model, v = _fem_model(E, nu, damping)
    state = FEMState(v, torch.tensor([0.3, -0.5, 0.0], dtype=D).expand_as(v).clone())
    dt = 1e-2 if implicit else 1e-3
    t0 = time.perf_counter()
    final = rollout(lambda s: step(model, s, dt), state, steps)
    loss = final.x[:, 1].sum() + final.x[:, 0].pow(2).sum()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def rigid_slide(step, steps=500):
    density = torch.tensor(125.0, dtype=D, requires_grad=True)
    mu = torch.tensor(0.3, dtype=D, requires_grad=True)
    J = torch.tensor([[1.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    v, f = box(0.2, dtype=D)
    model, _ = RigidBodyModel.from_mesh(v, f, density=density, ke=1e4, kd=50.0, mu=mu, dtype=D)
    st = apply_impulse(model, RigidBodyState.create([[0.0, 0.1 - 9.81 / 4e4, 0.0]], dtype=D), J)
    t0 = time.perf_counter()
    final = rollout(lambda s: step(model, s, 1e-3), st, steps)
    t1 = time.perf_counter()
    final.x[0, 0].backward()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def run(quick: bool = False) -> dict:
    repeats = 2 if quick else 5
    variants = {
        "fem_drop_warp": lambda: fem_drop(fem_step, 100 if quick else 200),
        "fem_drop_torch": lambda: fem_drop(fem_step_torch, 100 if quick else 200),
        "fem_implicit": lambda: fem_drop(fem_implicit_step, 5 if quick else 10, implicit=True),
        "rigid_slide_warp": lambda: rigid_slide(rigid_step, 250 if quick else 500),
        "rigid_slide_torch": lambda: rigid_slide(rigid_step_torch, 250 if quick else 500),
    }
    for fn in variants.values():  # warm-up (kernel compilation)
        fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(fn())
    out = {"quick": quick, "repeats": repeats, "threads": torch.get_num_threads(),
           "fem_tets": 384, "fem_vertices": 125,
           "fem_drop_steps": 100 if quick else 200, "fem_implicit_steps": 5 if quick else 10,
           "rigid_steps": 250 if quick else 500}
    for k, ts in times.items():
        out[f"{k}_forward_ms"] = statistics.median(t[0] for t in ts)
        out[f"{k}_backward_ms"] = statistics.median(t[1] for t in ts)
        out[f"{k}_total_ms"] = statistics.median(t[0] + t[1] for t in ts)
    out["fem_drop_speedup_vs_torch"] = out["fem_drop_torch_total_ms"] / out["fem_drop_warp_total_ms"]
    out["rigid_slide_speedup_vs_torch"] = out["rigid_slide_torch_total_ms"] / out["rigid_slide_warp_total_ms"]
    out["fem_implicit_ms_per_step"] = out["fem_implicit_total_ms"] / out["fem_implicit_steps"]
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
