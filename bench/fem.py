"""FEM and rigid-body solvers, forward + backward: the Warp steps vs their plain-torch twins.

* ``fem_drop``: a soft 0.2 m cube (tet_box resolution 4: 125 vertices, 384 tets, stable
  Neo-Hookean) dropped on the ground, 200 semi-implicit steps of 1 ms, loss on the final
  positions, gradients w.r.t. (E, nu, damping): ``fem_step`` (Warp) vs ``fem_step_torch``.
* ``fem_implicit``: the same cube, 10 backward-Euler steps of 10 ms (Newton on a system assembled
  in Warp, sparse LU factors reused across iterations and steps as a preconditioner, energy line
  search; backward = one adjoint solve per step reusing the last factors). Target: <= 50 ms per
  step, forward + backward.
* ``cantilever``: a clamped 1 m x 0.1 m x 0.1 m beam under its own weight, tet_box (50, 6, 6):
  2,499 vertices, 10,800 tets, one static Newton solve (``fem_static_solve``) from the rest shape
  (a fresh model each repeat, the mesh's pattern cached), then its adjoint (gradient of the tip
  deflection w.r.t. Young's modulus). Target: solve <= 2 s.
* ``rigid_slide``: a box (8 collision vertices) pushed across the ground, 500 steps of 1 ms,
  gradients w.r.t. density, mu and the impulse: ``rigid_step`` (Warp) vs ``rigid_step_torch``.

Variants are interleaved over repeats so machine load hits them alike; medians in ms. Wall
times on a shared machine are inflated by other processes: the implicit variants also report
this process's CPU time (``*_cpu_ms``, all its threads), and ``load_average`` is recorded.

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
    c0, t0 = time.process_time(), time.perf_counter()
    final = rollout(lambda s: step(model, s, dt), state, steps)
    loss = final.x[:, 1].sum() + final.x[:, 0].pow(2).sum()
    c1, t1 = time.process_time(), time.perf_counter()
    loss.backward()
    c2, t2 = time.process_time(), time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (c1 - c0) * 1e3, (c2 - c1) * 1e3


def cantilever(res=(50, 6, 6)):
    from diffvc.physics import fem_static_solve

    L, h, b, rho, g = 1.0, 0.1, 0.1, 1000.0, 9.81
    I = b * h ** 3 / 12
    q = rho * g * b * h
    E = torch.tensor(q * L ** 4 / (8 * I * 0.005), dtype=D, requires_grad=True)  # tip deflection 0.5% of L
    v, t = tet_box((L, h, b), res, center=(L / 2, 0.0, 0.0), dtype=D)
    model = FEMModel.create(v, t, density=rho, youngs_modulus=E, poisson_ratio=0.0, pinned=v[:, 0] < 1e-9,
                            planes=[], dtype=D)
    tip = v[:, 0] > L - 1e-9
    c0, t0 = time.process_time(), time.perf_counter()
    x = fem_static_solve(model)
    c1, t1 = time.process_time(), time.perf_counter()
    w = -(x[tip, 1] - v[tip, 1]).mean()
    w.backward()
    c2, t2 = time.process_time(), time.perf_counter()
    cantilever.info = {"cantilever_tets": t.shape[0], "cantilever_vertices": v.shape[0],
                       "cantilever_deflection_over_euler_bernoulli": float(w.detach()) / (q * L ** 4 / (8 * float(E) * I))}
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (c1 - c0) * 1e3, (c2 - c1) * 1e3


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


def _newton_counts(fn):
    """Run fn, counting Newton iterations and factorisations of the implicit solves."""
    from diffvc.physics import fem as fem_module

    orig, stats = fem_module._newton, {"newton_iterations": 0, "factorisations": 0, "solves": 0}

    def counting(*a, **k):
        x, info = orig(*a, **k)
        stats["newton_iterations"] += info["iterations"]
        stats["factorisations"] += info.get("factorisations", 0)
        stats["solves"] += 1
        return x, info

    fem_module._newton = counting
    try:
        out = fn()
    finally:
        fem_module._newton = orig
    return out, stats


def run(quick: bool = False) -> dict:
    import os

    repeats = 2 if quick else 5
    variants = {
        "fem_drop_warp": lambda: fem_drop(fem_step, 100 if quick else 200),
        "fem_drop_torch": lambda: fem_drop(fem_step_torch, 100 if quick else 200),
        "fem_implicit": lambda: fem_drop(fem_implicit_step, 5 if quick else 10, implicit=True),
        "rigid_slide_warp": lambda: rigid_slide(rigid_step, 250 if quick else 500),
        "rigid_slide_torch": lambda: rigid_slide(rigid_step_torch, 250 if quick else 500),
        "cantilever": cantilever,
    }
    counts = {}
    for k, fn in variants.items():  # warm-up (kernel compilation, the cantilever mesh's pattern)
        if k in ("fem_implicit", "cantilever"):
            counts[k] = _newton_counts(fn)[1]
        else:
            fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(fn())
    out = {"quick": quick, "repeats": repeats, "threads": torch.get_num_threads(),
           "fem_tets": 384, "fem_vertices": 125,
           "fem_drop_steps": 100 if quick else 200, "fem_implicit_steps": 5 if quick else 10,
           "rigid_steps": 250 if quick else 500, "load_average": os.getloadavg()}
    for k, ts in times.items():
        out[f"{k}_forward_ms"] = statistics.median(t[0] for t in ts)
        out[f"{k}_backward_ms"] = statistics.median(t[1] for t in ts)
        out[f"{k}_total_ms"] = statistics.median(t[0] + t[1] for t in ts)
        out[f"{k}_total_min_ms"] = min(t[0] + t[1] for t in ts)
        if len(ts[0]) > 2:
            out[f"{k}_forward_cpu_ms"] = statistics.median(t[2] for t in ts)
            out[f"{k}_total_cpu_ms"] = statistics.median(t[2] + t[3] for t in ts)
    out["fem_drop_speedup_vs_torch"] = out["fem_drop_torch_total_ms"] / out["fem_drop_warp_total_ms"]
    out["rigid_slide_speedup_vs_torch"] = out["rigid_slide_torch_total_ms"] / out["rigid_slide_warp_total_ms"]
    out["fem_implicit_ms_per_step"] = out["fem_implicit_total_ms"] / out["fem_implicit_steps"]
    out["fem_implicit_cpu_ms_per_step"] = out["fem_implicit_total_cpu_ms"] / out["fem_implicit_steps"]
    out["fem_implicit_first_run"] = counts["fem_implicit"]
    out["cantilever_first_run"] = counts["cantilever"]
    out["cantilever_solve_ms"] = out["cantilever_forward_ms"]
    out["cantilever_solve_cpu_ms"] = out["cantilever_forward_cpu_ms"]
    out.update(cantilever.info)
    out["targets"] = {"fem_implicit_ms_per_step": 50.0, "cantilever_solve_ms": 2000.0,
                      "note": "lower is better; wall times inflated by the shared machine's load (load_average)"}
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
