"""Smoke control, DiffTaichi's task and setting: one optimisation iteration (forward + backward +
update) of the initial velocity field, diffvc side by side with DiffTaichi's ``smoke_taichi.py``.

The task (DiffTaichi, ``examples/smoke_taichi.py``): a periodic 128x128 grid, a checkerboard of
16-cell tiles as the initial density, 99 steps of advection (velocity by itself, then density)
with a pressure projection each step, loss = mean squared difference between the final density
and a target image; the gradient w.r.t. the initial velocity field updates it by gradient
descent. Time step 1 and cell size 1 (velocities in cells per step), float32, CPU.

The solvers do not compute the same numbers: DiffTaichi uses a collocated grid and exactly 10
Jacobi sweeps per projection (its velocity stays visibly divergent); diffvc a MAC grid, one-step
Euler back-trace as DiffTaichi, and one of two projections:

* ``projection="jacobi"``: 10 Jacobi sweeps from zero per projection -- the same work as
  DiffTaichi's (whose sweeps start from the previous step's pressure); its gradient is the same 10
  sweeps applied to the incoming gradient (the sweeps' map is symmetric), i.e. exactly
  backpropagation through the sweeps. This is the equal-work comparison.
* ``projection="pcg"``: PCG to a relative residual of 1e-5 (exact spectral preconditioner, one
  iteration on this periodic box; implicitly differentiated) -- divergence free to the tolerance.

In 2-D with the Euler back-trace a diffvc step runs as recorded Warp launches, the whole rollout as
one autograd node (``SmokeModel.segment``) whose backward runs hand-written adjoint passes in
reverse; on CPU each pass is split into row ranges on torch's threads (4 split passes per step
forward, 4 backward; see ``diffvc._kernels.smoke``).

Variants (each in its own subprocess, so peak RSS is the variant's own; importing torch, Warp and
diffvc alone takes ~365 MiB, reported as ``rss_after_import_mib``):

* ``diffvc_jacobi`` / ``diffvc_pcg``: ``rollout(SmokeModel(...), ...)`` with full tape, torch on 2
  threads (the segment's passes split in 2 row ranges); ``*_1thread``: the same on 1 thread;
* ``diffvc_jacobi_checkpointed`` / ``diffvc_pcg_checkpointed``: ``checkpoint_every=11`` (memory);
* ``difftaichi``: DiffTaichi's own ``smoke_taichi.py``, run as written except ``arch=ti.cpu,
  cpu_max_num_threads=2`` (not CUDA) and the OpenCV windows stubbed out; timed as its ``main`` loop
  runs an iteration (``with ti.ad.Tape(loss): forward()`` then ``apply_grad()``), after one warm-up
  iteration that compiles its kernels. It runs when the script is found (``$DIFFTAICHI_SMOKE``, else
  :func:`bench.difftaichi_example`; its ``taichi.png`` beside it) and a Python with ``taichi`` and
  ``opencv`` (:func:`bench.taichi_python`, else this interpreter; ``make bench-anchors`` sets both up); otherwise the DiffTaichi and PhiFlow anchors measured on
  this machine kind (shared/DESIGN.md) are quoted. ``difftaichi_1thread``: ``cpu_max_num_threads=1``;
* ``phiflow_torch``: PhiFlow on its torch backend (``phi.torch.flow``, 2 torch threads), the same
  task (periodic 128^2, semi-Lagrangian self-advection, ``make_incompressible`` to 1e-5, density
  advection, gradient of the final density's MSE w.r.t. the initial staggered velocity), run once
  (one warm-up and one timed iteration) when ``PHIFLOW_PYTHON`` names a Python with ``phiflow``.
  ``--phiflow-steps S`` runs it with S steps instead of 99 (its full run takes tens of minutes
  here); its times are then also given ``*_extrapolated_to_99_steps`` (times 99 / S: an
  extrapolation, labelled as such, not a measurement).

Variants run interleaved (each once per round) so the shared machine's load hits them alike; the
JSON gives each variant's median over rounds of per-round medians, and same-run ratios of wall
time and of process CPU time (``*_cpu_seconds``: on a machine shared by many jobs the wall time
mostly measures the wait for a core; CPU seconds measure the work, all threads summed).

Measured (2026-12-02 14:34-14:47 UTC, one run, ``--quick --rounds 2 --phiflow-steps 3``, i.e. 2
rounds x 3 iterations; machine shared with ~8 jobs, load average 15.3 -> 18.6 on 2 cores, so wall
seconds are inflated several times and swing between rounds; medians):

    variant                      wall s/it   CPU s/it   peak RSS MiB
    diffvc_jacobi (2 threads)      2.62        0.91        412
    diffvc_pcg (2 threads)         2.15        0.78        409
    diffvc_jacobi_1thread          4.03        0.74        406
    diffvc_pcg_1thread             4.10        0.81        408
    diffvc_jacobi_checkpointed     5.76        1.87        396
    diffvc_pcg_checkpointed        3.89        1.42        397
    difftaichi (2 threads)         1.94        1.06        348
    difftaichi_1thread             3.16        0.97        348
    phiflow_torch, 3 steps        69.8        14.2         447
      (extrapolated to 99 steps  2302         468: not measured)

i.e. DiffTaichi / diffvc at 2 threads each: 0.74x (Jacobi) / 0.90x (PCG) in wall time (per round:
0.55, 0.95 / 1.77, 0.69 -- the load decides), 1.17x / 1.36x in CPU time (diffvc does less work);
on one thread each 0.78x / 0.77x wall, 1.31x / 1.20x CPU. The split costs diffvc 1.24x the CPU
time of one thread (Jacobi; window overlap of the split Jacobi sweeps, thread hand-offs). PhiFlow
is two to three orders of magnitude slower per step. Re-measure on an idle machine:

    python -m bench.smoke [--quick] [--rounds N] [--phiflow-steps S]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

N_GRID, STEPS = 128, 99

ANCHORS = {
    "difftaichi_s_per_iteration": "0.67-0.82 (2 threads, 363-403 MiB)",
    "phiflow_torch_s_per_iteration": "13.4 (~2 GiB)",
    "source": "shared/DESIGN.md, 'Facts measured in review', same machine kind",
}


def _initial_density(torch):
    i = torch.arange(N_GRID)
    return (((i[:, None] // 16) + (i[None, :] // 16)) % 2).to(torch.float32)


def _target(torch):
    # a ring: the timing does not depend on the picture
    i = torch.arange(N_GRID, dtype=torch.float32) - N_GRID / 2
    r = torch.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    return ((r > 25) & (r < 45)).to(torch.float32)


def _worker_diffvc(threads: int, iters: int, checkpoint: int | None, projection: str = "pcg") -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from diffvc.physics import SmokeModel, SmokeState, rollout

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model = SmokeModel((N_GRID, N_GRID), dx=1.0, boundary="periodic", backtrace="euler", tol=1e-5,
                       projection=projection, jacobi_iters=10)
    d0, target = _initial_density(torch), _target(torch)
    v = [torch.zeros(N_GRID, N_GRID, requires_grad=True) for _ in range(2)]
    lr = 400.0  # DiffTaichi's learning rate (plain gradient descent)
    times, fwd, cpu, losses = [], [], [], []
    for it in range(iters + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        final = rollout(model, SmokeState(d0, tuple(v)), STEPS, dt=1.0, checkpoint_every=checkpoint)
        loss = ((final.density - target) ** 2).mean()
        t1 = time.perf_counter()
        grads = torch.autograd.grad(loss, v)
        with torch.no_grad():
            for vi, gi in zip(v, grads):
                vi -= lr * gi
        dt = time.perf_counter() - t0
        if it > 0:  # the first iteration builds the solver's spectral basis and caches
            times.append(dt)
            fwd.append(t1 - t0)
            cpu.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
    with torch.no_grad():
        div = model.divergence(final.velocity).abs().max()
        div_rel = float(div / model.divergence(tuple(v)).abs().max().clamp_min(1e-30))
    return {"s_per_iteration_median": statistics.median(times), "s_per_iteration_min": min(times),
            "forward_s_median": statistics.median(fwd), "cpu_s_per_iteration_median": statistics.median(cpu),
            "iterations": len(times), "loss_first": losses[0],
            "loss_last": losses[-1], "final_max_abs_divergence": float(div),
            "final_divergence_over_initial_velocity_divergence": div_rel,
            "rss_after_import_mib": rss_import,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


_TAICHI_HARNESS = r"""
import json, os, resource, sys, time, types
import cv2
cv2.imshow = lambda *a, **k: None
cv2.waitKey = lambda *a, **k: -1
path, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arch = "arch=ti.cpu" + (f", cpu_max_num_threads={threads}" if threads > 0 else "")
src = open(path).read().replace("arch=ti.cuda", arch)
os.chdir(os.path.dirname(os.path.abspath(path)))
mod = types.ModuleType("smoke_taichi")
exec(compile(src, path, "exec"), mod.__dict__)
ti = mod.ti
target_img = cv2.resize(cv2.imread("taichi.png"), (mod.n_grid, mod.n_grid))[:, :, 0] / 255.0
mod.init(target_img)
times, cpu, losses = [], [], []
for it in range(iters + 1):
    t0, c0 = time.perf_counter(), time.process_time()
    with ti.ad.Tape(mod.loss):
        mod.forward(None)
    mod.apply_grad()
    ti.sync()
    if it > 0:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    losses.append(float(mod.loss[None]))
times.sort()
cpu.sort()
print(json.dumps({"s_per_iteration_median": times[len(times) // 2], "s_per_iteration_min": times[0],
                  "cpu_s_per_iteration_median": cpu[len(cpu) // 2], "threads": threads or "default",
                  "iterations": len(times), "loss_first": losses[0], "loss_last": losses[-1],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "taichi": ".".join(map(str, ti.__version__))}))
"""


def _run_difftaichi(iters: int, threads: int = 0) -> dict | None:
    from bench import difftaichi_example, taichi_python

    script = os.environ.get("DIFFTAICHI_SMOKE") or difftaichi_example("smoke_taichi.py")
    if not script or not os.path.exists(script):
        return None
    py = taichi_python() or sys.executable
    out = subprocess.run([py, "-c", _TAICHI_HARNESS, script, str(iters), str(threads)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


_PHIFLOW_HARNESS = r"""
import json, resource, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from phi.torch.flow import *
iters, n, steps = int(sys.argv[1]), 128, int(sys.argv[3])
i = torch.arange(n)
board = (((i[:, None] // 16) + (i[None, :] // 16)) % 2).to(torch.float32)
r = torch.sqrt((i[:, None] - n / 2.0) ** 2 + (i[None, :] - n / 2.0) ** 2)
ring = ((r > 25) & (r < 45)).to(torch.float32)
box = dict(x=n, y=n, bounds=Box(x=n, y=n))
smoke0 = CenteredGrid(math.tensor(board, spatial('x,y')), extrapolation.PERIODIC, **box)
target = CenteredGrid(math.tensor(ring, spatial('x,y')), extrapolation.PERIODIC, **box)
solve = Solve('auto', 1e-5, 1e-5, max_iterations=1000)

def loss_fn(v0):
    v, s = v0, smoke0
    for _ in range(steps):
        v = advect.semi_lagrangian(v, v, dt=1.0)
        v, _ = fluid.make_incompressible(v, (), solve)
        s = advect.semi_lagrangian(s, v, dt=1.0)
    return field.l2_loss(s - target) * (2.0 / n ** 2)

grad_fn = field.gradient(loss_fn, 'v0', get_output=True)
torch.manual_seed(0)  # a small random start: a zero velocity gives CG a zero right-hand side
v0 = StaggeredGrid(math.tensor(0.01 * torch.randn(n, n, 2), spatial('x,y'), channel(vector='x,y')),
                   extrapolation.PERIODIC, **box)
times, cpu, losses = [], [], []
for it in range(iters + 1):
    t0, c0 = time.perf_counter(), time.process_time()
    loss, g = grad_fn(v0)
    v0 = v0 - 400.0 * g
    if it > 0:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    losses.append(float(loss))
import phi
print(json.dumps({"steps": steps, "threads": int(sys.argv[2]), "s_per_iteration_median": statistics.median(times),
                  "s_per_iteration_min": min(times), "cpu_s_per_iteration_median": statistics.median(cpu),
                  "iterations": len(times), "loss_first": losses[0], "loss_last": losses[-1],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "phiflow": phi.__version__}))
"""


def _run_phiflow(iters: int, steps: int, threads: int = 2) -> dict | None:
    """PhiFlow's iteration with ``steps`` steps (fewer than 99 when its full run is too slow for the
    benchmark: then ``*_extrapolated_to_99_steps`` scale the measured times by 99 / steps, which
    assumes the time is proportional to the number of steps -- labelled, not measured)."""
    py = os.environ.get("PHIFLOW_PYTHON")
    if not py:
        return None
    out = subprocess.run([py, "-c", _PHIFLOW_HARNESS, str(iters), str(threads), str(steps)], capture_output=True,
                         text=True, timeout=7200)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if steps != STEPS:
        for k in ("s_per_iteration_median", "s_per_iteration_min", "cpu_s_per_iteration_median"):
            r[f"{k}_extrapolated_to_99_steps"] = r[k] * STEPS / steps
    return r


def _run_worker(threads: int, iters: int, checkpoint: int | None, projection: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "bench.smoke", "--worker", str(threads), str(iters), str(checkpoint or 0),
            projection]
    out = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, rounds: int | None = None, phiflow_steps: int = STEPS) -> dict:
    iters = 3 if quick else 5
    rounds = rounds if rounds is not None else (1 if quick else 3)
    load0 = os.getloadavg()
    results: dict = {}
    order = [("diffvc_jacobi", 2, None, "jacobi"), ("diffvc_pcg", 2, None, "pcg"),
             ("diffvc_jacobi_1thread", 1, None, "jacobi"), ("diffvc_pcg_1thread", 1, None, "pcg"),
             ("diffvc_jacobi_checkpointed", 2, 11, "jacobi"), ("diffvc_pcg_checkpointed", 2, 11, "pcg")]
    for r in range(rounds):
        for name, threads, ck, proj in order:
            results.setdefault(name, []).append(_run_worker(threads, iters, ck, proj))
        for name, threads in (("difftaichi", 2), ("difftaichi_1thread", 1)):
            t = _run_difftaichi(iters, threads)
            if t is not None:
                results.setdefault(name, []).append(t)
        if r == 0:  # PhiFlow once (minutes per iteration)
            p = _run_phiflow(1, phiflow_steps)
            if p is not None:
                results.setdefault("phiflow_torch", []).append(p)
    summary = {}
    for name, rs in results.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summary[name] = rs[0]
            continue
        summary[name] = dict(ok[-1])
        summary[name]["s_per_iteration_median"] = statistics.median(r["s_per_iteration_median"] for r in ok)
        summary[name]["s_per_iteration_min"] = min(r["s_per_iteration_min"] for r in ok)
        summary[name]["per_round_medians"] = [r["s_per_iteration_median"] for r in ok]
        if all("cpu_s_per_iteration_median" in r for r in ok):
            summary[name]["cpu_s_per_iteration_median"] = statistics.median(
                r["cpu_s_per_iteration_median"] for r in ok)
        summary[name]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
    out = {"grid": [N_GRID, N_GRID], "steps": STEPS, "dtype": "float32", "device": "cpu",
           "iterations_per_variant": iters, "rounds": rounds, "loadavg_start": load0,
           "loadavg_end": os.getloadavg(), "results": summary}
    ratios = {}
    names = [n for n, *_ in order]
    for ref in ("difftaichi", "difftaichi_1thread", "phiflow_torch"):
        if ref not in summary or "s_per_iteration_median" not in summary[ref]:
            continue
        # PhiFlow at fewer steps: its times extrapolated to 99 steps (labelled in the key)
        sfx = "_extrapolated_to_99_steps" if f"s_per_iteration_median_extrapolated_to_99_steps" in summary[ref] else ""
        for name in names:
            ratios[f"{ref}{sfx}_over_{name}"] = (summary[ref][f"s_per_iteration_median{sfx}"]
                                                  / summary[name]["s_per_iteration_median"])
            if f"cpu_s_per_iteration_median{sfx}" in summary[ref]:
                ratios[f"{ref}{sfx}_over_{name}_cpu_seconds"] = (summary[ref][f"cpu_s_per_iteration_median{sfx}"]
                                                                  / summary[name]["cpu_s_per_iteration_median"])
        if len(summary[ref].get("per_round_medians", [])) > 1:
            # per-round ratios (each round's variants ran back to back)
            for name in ("diffvc_jacobi", "diffvc_pcg"):
                ratios[f"{ref}_over_{name}_per_round"] = [
                    a / b for a, b in zip(summary[ref]["per_round_medians"], summary[name]["per_round_medians"])]
    out["speedups"] = ratios
    if "difftaichi" not in summary or "phiflow_torch" not in summary:
        out["anchors"] = ANCHORS
    return out


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        th, it, ck = (int(a) for a in sys.argv[i + 1:i + 4])
        proj = sys.argv[i + 4] if len(sys.argv) > i + 4 else "pcg"
        print(json.dumps(_worker_diffvc(th, it, ck or None, proj)))
    else:
        def _opt(name, default):
            return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default

        print(json.dumps(run(quick="--quick" in sys.argv, rounds=_opt("--rounds", None),
                             phiflow_steps=_opt("--phiflow-steps", STEPS)), indent=2))
