"""Peak memory of a 10,000-step differentiable rollout, with and without checkpointing.

System: a 6x6x6 mass-spring lattice (216 particles, lattice edges and face diagonals) falling
onto the ground, float32 on CPU, 10,000 steps of 1 ms, loss = sum(final x), gradients w.r.t. the
initial velocities and the spring stiffnesses. Four variants, each in a fresh subprocess:

* ``per_step_full``: ``rollout(lambda s: spring_step(...))`` -- two kernel_op autograd nodes per
  step, the whole tape kept;
* ``per_step_checkpointed``: the same with ``checkpoint_every=100`` (torch.utils.checkpoint);
* ``fused_full``: ``rollout(model, ..., dt=dt)`` -- one fused Warp segment, every state kept;
* ``fused_checkpointed``: fused segments of 100 steps that keep only their input and re-run in
  backward.

Memory is measured from ``/proc/self/status``: the peak resident set size (``VmHWM``, reset with
``/proc/self/clear_refs`` after a warm-up) minus the resident size just before the rollout, i.e.
the extra memory the forward + backward pass needed at its peak. (tracemalloc does not see torch's
C++ allocations, so RSS is the honest measure on CPU.)

Default paths (the hardening issue's item 4): 1,000 particles (10x10x10 lattice), the settings
a user gets without choosing any (``rollout(model, state, n, dt=...)``, ``checkpoint_every="auto"``),
100 and 10,000 steps, on the fused path (``SpringModel`` has a fused segment) and the per-step path
(the same model behind a wrapper without ``segment``); each measurement in a fresh process. The
figure of merit is the 10,000-step peak over the 100-step peak, per path (target <= 1.2).

    python -m bench.rollout_memory [--quick]     or     diffvc bench rollout_memory
    python -m bench.rollout_memory --default-only      (only the default paths: the issue's item 4)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS, CKPT = 10_000, 100
VARIANTS = ("per_step_full", "per_step_checkpointed", "fused_full", "fused_checkpointed")
DEFAULT_PATHS = ("fused_default", "per_step_default")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(variant: str, steps: int) -> dict:
    from dataclasses import replace

    import torch

    from bench.mass_spring import make_system
    from diffvc.physics import ParticleState, rollout, spring_step

    torch.set_num_threads(1)
    model, s0 = make_system(n_side=6, n_springs=10_000)

    def go(n):
        ke = model.ke.clone().requires_grad_()
        v0 = s0.v.clone().requires_grad_()
        m = replace(model, ke=ke)
        state = ParticleState(s0.x, v0)
        ck = CKPT if variant.endswith("checkpointed") else None
        if variant.startswith("fused"):
            final = rollout(m, state, n, dt=1e-3, checkpoint_every=ck)
        else:
            final = rollout(lambda s: spring_step(m, s, 1e-3), state, n, checkpoint_every=ck)
        loss = final.x.sum()
        gv, gk = torch.autograd.grad(loss, [v0, ke])
        return gv, gk

    go(3 * CKPT)  # warm-up: kernel modules, allocator
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    except OSError:
        pass
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    gv, gk = go(steps)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"peak_extra_mb": (peak - before) / 1024.0, "seconds": seconds,
            "grad_v0_norm": float(gv.norm()), "grad_ke_norm": float(gk.norm()),
            "grad_v0_sum": float(gv.sum()), "grad_ke_sum": float(gk.sum())}


def _child_default(variant: str, steps: int) -> dict:
    """Peak extra RSS of a default-settings rollout (forward + backward), 1,000 particles."""
    import gc
    from dataclasses import dataclass, replace

    import torch

    from bench.mass_spring import make_system
    from diffvc.physics import ParticleState, SpringModel, rollout

    @dataclass(frozen=True)
    class PerStep:  # the same model without a fused segment: rollout steps it one call at a time
        m: SpringModel

        def step(self, state, dt, control=None):
            return self.m.step(state, dt, control)

    torch.set_num_threads(1)
    model, s0 = make_system(n_side=10, n_springs=10_000)

    def go(n):
        ke = model.ke.clone().requires_grad_()
        v0 = s0.v.clone().requires_grad_()
        m = replace(model, ke=ke)
        sim = m if variant == "fused_default" else PerStep(m)
        final = rollout(sim, ParticleState(s0.x, v0), n, dt=1e-3)  # every other setting: its default
        return torch.autograd.grad(final.x.sum(), [v0, ke])

    go(300)  # warm-up: kernel modules, allocator
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    gv, gk = go(steps)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {"peak_extra_mb": (peak - before) / 1024.0, "seconds": seconds, "grad_v0_sum": float(gv.sum()),
            "grad_ke_sum": float(gk.sum()), "particles": int(s0.x.shape[0])}


ALLOCATORS = {
    # glibc raises its mmap threshold after large frees, so freed buffers stay in the heap and in
    # RSS; a fixed threshold returns them, which separates live memory from allocator retention
    "glibc_default": {},
    "mmap_threshold_128KiB": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def run_default_paths(quick: bool = False) -> dict:
    """10,000 (quick: 2,000) vs 100 steps at default settings, fused and per-step paths, under
    glibc's default allocator settings and with a fixed mmap threshold."""
    long_steps = 2_000 if quick else STEPS
    root = Path(__file__).resolve().parents[1]
    out_all = {}
    for alloc, extra in ALLOCATORS.items():
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
        res = {}
        for v in DEFAULT_PATHS:
            for n in (100, long_steps):
                out = subprocess.run([sys.executable, "-m", "bench.rollout_memory", "--child-default", v, str(n)],
                                     cwd=root, env=env, capture_output=True, text=True, check=True)
                res[f"{v}_{n}"] = json.loads(out.stdout.strip().splitlines()[-1])
        ratios = {v: res[f"{v}_{long_steps}"]["peak_extra_mb"] / max(res[f"{v}_100"]["peak_extra_mb"], 1e-3)
                  for v in DEFAULT_PATHS}
        out_all[alloc] = {"results": res, f"peak_ratio_{long_steps}_over_100": ratios}
    ratio = {v: out_all["glibc_default"][f"peak_ratio_{long_steps}_over_100"][v] for v in DEFAULT_PATHS}
    return {"steps": [100, long_steps], "particles": 1000, "dtype": "float32",
            "settings": "rollout(model, state, n, dt=1e-3), checkpoint_every='auto' (the default)",
            "measure": "peak RSS (VmHWM after clear_refs) minus RSS before the rollout, fresh process each",
            f"peak_ratio_{long_steps}_over_100": ratio,
            "target": {"peak_ratio_max": 1.2, "holds": {v: r <= 1.2 for v, r in ratio.items()},
                       "note": "glibc's default allocator settings; lower is better"},
            "allocators": out_all}


def run(quick: bool = False) -> dict:
    steps = 2_000 if quick else STEPS
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, "-m", "bench.rollout_memory", "--child", v, str(steps)], cwd=root,
                             env=env, capture_output=True, text=True, check=True)
        results[v] = json.loads(out.stdout.strip().splitlines()[-1])
    default_paths = run_default_paths(quick)
    ref = results["per_step_full"]
    agree = {v: max(abs(r["grad_v0_sum"] - ref["grad_v0_sum"]) / max(abs(ref["grad_v0_sum"]), 1e-30),
                    abs(r["grad_ke_sum"] - ref["grad_ke_sum"]) / max(abs(ref["grad_ke_sum"]), 1e-30))
             for v, r in results.items()}
    return {
        "steps": steps, "checkpoint_every": CKPT, "particles": 216, "dtype": "float32", "device": "cpu",
        "measure": "peak RSS (VmHWM after clear_refs) minus RSS before the rollout, fresh process per variant",
        "results": results,
        "memory_ratio_per_step": results["per_step_full"]["peak_extra_mb"] / max(results["per_step_checkpointed"]["peak_extra_mb"], 1e-3),
        "memory_ratio_fused": results["fused_full"]["peak_extra_mb"] / max(results["fused_checkpointed"]["peak_extra_mb"], 1e-3),
        "gradient_relative_difference_to_per_step_full": agree,
        "default_paths": default_paths,
    }


if __name__ == "__main__":
    if "--child-default" in sys.argv:
        i = sys.argv.index("--child-default")
        print(json.dumps(_child_default(sys.argv[i + 1], int(sys.argv[i + 2]))))
    elif "--child" in sys.argv:
        i = sys.argv.index("--child")
        print(json.dumps(_child(sys.argv[i + 1], int(sys.argv[i + 2]))))
    elif "--default-only" in sys.argv:
        print(json.dumps(run_default_paths(quick="--quick" in sys.argv), indent=2))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
