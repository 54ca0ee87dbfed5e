"""Cloth rollout, forward + backward: diffvc's cloth (Warp kernels), its plain-torch twin, and the
same model with its forces taken by autograd from the energy (the direct way to write it in
PyTorch).

A square cloth (32 x 32 cells: 1,089 vertices, 2,048 triangles, 3,008 hinges; 24 x 24 with
``--quick``) dropped from 0.6 m onto a ball (smoothed contact with friction, ground plane), StVK
membrane + dihedral bending + strain-rate damping, semi-implicit Euler, dt = 1 ms, 1,000 steps
(300 with ``--quick``), float32 on CPU. Loss: sum of final positions and velocities; gradients
w.r.t. ``mu``, ``kb`` and the initial velocities. Variants run interleaved in this process (repeat
r of every variant, then repeat r + 1) so a shared machine's load hits them alike; medians.

* ``diffvc_1thread`` / ``diffvc_2threads``: ``rollout(ClothModel, ...)``, full tape, torch limited
  to 1 or 2 intra-op threads (2 threads only without ``--quick``);
* ``diffvc_checkpointed``: the same, 1 thread, ``checkpoint_every=50`` (backward recomputes);
* ``autograd_energy``: membrane and bending forces as ``-torch.autograd.grad(E, x,
  create_graph=True)`` of :meth:`ClothModel.energy` (contact, damping and integration as in
  diffvc), 1 thread; its gradients must agree with diffvc's (reported).

    python -m bench.cloth [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from diffvc.geometry.primitives import grid
from diffvc.physics import ClothModel, ClothState, rollout


def make(n: int, dtype=torch.float32):
    v, f = grid(1.0, n, dtype=dtype)
    v = v + torch.tensor([0.05, 0.6, 0.02], dtype=dtype)
    return v, f


def model_for(v, f, mu, kb):
    return ClothModel.create(v, f, density=0.3, mu=mu, lam=0.5 * mu, kb=kb, stretch_damping=0.005, drag=0.5,
                             spheres=[[0.0, 0.25, 0.0, 0.25]], ke=200.0, kd=0.3, friction=0.5,
                             friction_smoothing=0.05, contact_smoothing=0.003, thickness=0.01)


def _energy_step(m: ClothModel, st: ClothState, dt: float) -> ClothState:
    """The step with membrane/bending forces from autograd of the energy (double backward later)."""
    x = st.x if st.x.requires_grad else st.x.detach().requires_grad_()
    e = m.energy(ClothState(x, st.v))
    f = -torch.autograd.grad(e["membrane"] + e["bending"], x, create_graph=True)[0]
    zero = torch.zeros_like(st.v)
    f = f + m._membrane(st.x, st.v) - m._membrane(st.x, zero)   # strain-rate damping only
    f = f + m._contact(st.x, st.v)
    a = f / m.mass[:, None] + m.gravity
    v1 = (st.v + dt * a) / (1.0 + m.damping[2] * dt)
    return ClothState(st.x + dt * v1, v1)


def _variant(v, f, steps, dt, mode, threads):
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            mu = torch.tensor(20.0, requires_grad=True)
            kb = torch.tensor(3e-3, requires_grad=True)
            v0 = torch.zeros_like(v).requires_grad_()
            m = model_for(v, f, mu, kb)
            st = ClothState(v, v0)
            t0 = time.perf_counter()
            if mode == "energy":
                for _ in range(steps):
                    st = _energy_step(m, st, dt)
            else:
                st = rollout(m, st, steps, dt=dt, checkpoint_every=50 if mode == "checkpointed" else None,
                             backend="torch" if mode == "twin" else "warp")
            loss = st.x.sum() + st.v.sum()
            t1 = time.perf_counter()
            g = torch.autograd.grad(loss, [mu, kb, v0])
            t2 = time.perf_counter()
        finally:
            torch.set_num_threads(old)
        run.grads = g
        run.final = st.x.detach()
        return t1 - t0, t2 - t1

    return run


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(quick: bool = False) -> dict:
    n, steps, dt = (24, 300, 1e-3) if quick else (32, 1000, 1e-3)
    repeats = 2 if quick else 3
    v, f = make(n)
    variants = {"diffvc_1thread": _variant(v, f, steps, dt, "tape", 1),
                "diffvc_checkpointed": _variant(v, f, steps, dt, "checkpointed", 1),
                "torch_twin": _variant(v, f, steps, dt, "twin", 1),
                "autograd_energy": _variant(v, f, steps, dt, "energy", 1)}
    if not quick:
        variants["diffvc_2threads"] = _variant(v, f, steps, dt, "tape", 2)
    load0 = os.getloadavg()[0]
    variants["diffvc_1thread"]()  # warm-up
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(fn())
    res = {}
    for k, ts in times.items():
        res[k] = {"forward_s": statistics.median(a for a, _ in ts), "backward_s": statistics.median(b for _, b in ts),
                  "total_s": statistics.median(a + b for a, b in ts), "runs": len(ts)}
        res[k]["ms_per_step_fwd_bwd"] = 1e3 * res[k]["total_s"] / steps
    ref = variants["diffvc_1thread"]
    agree = {k: {"final_x": _rel(fn.final, ref.final), "grad_mu": _rel(fn.grads[0], ref.grads[0]),
                 "grad_kb": _rel(fn.grads[1], ref.grads[1]), "grad_v0": _rel(fn.grads[2], ref.grads[2])}
             for k, fn in variants.items() if k != "diffvc_1thread"}
    m = model_for(v, f, 20.0, 3e-3)
    return {"vertices": int(v.shape[0]), "triangles": int(f.shape[0]), "hinges": int(m.hinges.shape[0]),
            "steps": steps, "dt": dt, "dtype": "float32", "device": "cpu", "repeats": repeats,
            "loadavg_1min_start": load0, "loadavg_1min_end": os.getloadavg()[0], "results": res,
            "speedup_vs_autograd_energy": res["autograd_energy"]["total_s"] / res["diffvc_1thread"]["total_s"],
            "speedup_vs_torch_twin": res["torch_twin"]["total_s"] / res["diffvc_1thread"]["total_s"],
            "relative_difference_to_diffvc_1thread": agree,
            "final_min_height": float(ref.final[:, 1].min()), "final_max_height": float(ref.final[:, 1].max())}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
