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
one autograd node (``SmokeModel.segment``) whose backward replays the adjoint kernels in reverse.

Variants (each in its own subprocess, so peak RSS is the variant's own; importing torch, Warp and
diffvc alone takes ~365 MiB, reported as ``rss_after_import_mib``), torch on 1 intra-op thread:

* ``diffvc_jacobi`` / ``diffvc_pcg``: ``rollout(SmokeModel(...), ...)`` with full tape;
* ``diffvc_jacobi_checkpointed`` / ``diffvc_pcg_checkpointed``: ``checkpoint_every=11`` (memory);
* ``difftaichi``: DiffTaichi's own ``smoke_taichi.py``, run as written except ``arch=ti.cpu``
  (not CUDA) and the OpenCV windows stubbed out; timed as its ``main`` loop runs an iteration
  (``with ti.ad.Tape(loss): forward()`` then ``apply_grad()``), after one warm-up iteration that
  compiles its kernels. It runs when the environment variable ``DIFFTAICHI_SMOKE`` names the
  script (its ``taichi.png`` beside it) and ``TAICHI_PYTHON`` a Python with ``taichi`` and
  ``opencv`` (default: this interpreter); otherwise the DiffTaichi and PhiFlow anchors measured
  on this machine kind (shared/DESIGN.md) are quoted. ``difftaichi_1thread``: the same with
  ``cpu_max_num_threads=1`` (one thread, like the diffvc variants);
* ``phiflow``: PhiFlow on its torch backend (``phi.torch.flow``), the same task (periodic 128^2,
  99 steps of semi-Lagrangian self-advection, ``make_incompressible`` to 1e-5, density advection,
  gradient of the final density's MSE w.r.t. the initial staggered velocity), run when
  ``PHIFLOW_PYTHON`` names a Python with ``phiflow``.

Variants run interleaved (each once per round) so the shared machine's load hits them alike; the
JSON gives each variant's median over rounds of per-round medians, and same-run ratios of wall
time and of process CPU time (``*_cpu_seconds``: on a machine shared by many jobs the wall time
of a one-thread run mostly measures the wait for a core; CPU seconds measure the work, all
threads summed).

Measured (2026-12-02, one run, 3 rounds x 5 iterations, machine shared with ~8 jobs, load average
19.6 -> 23.7 on 2 cores, so wall seconds are inflated several times; medians):

    variant                      wall s/it   CPU s/it   peak RSS MiB
    diffvc_jacobi                  4.66        0.80        448
    diffvc_pcg                     3.92        0.77        451
    diffvc_jacobi_checkpointed     8.69        1.39        405
    diffvc_pcg_checkpointed        5.93        1.10        406
    difftaichi (2 threads)         2.87        1.06        350
    difftaichi_1thread             5.19        1.12        350

i.e. diffvc does 1.32x (Jacobi, equal work) / 1.37x (PCG) less CPU work per iteration than
DiffTaichi, is 1.11x / 1.32x faster in wall time than DiffTaichi on one thread, and 0.62x / 0.73x
of DiffTaichi's two-thread wall time (its second thread; diffvc's kernels run on one). Importing
torch + Warp + diffvc is 371 MiB of the peak. PhiFlow 3.4.0 installs; its harness here took 41 s
per iteration for 3 steps (not 99) under the same load, so it was not run at full length.

    python -m bench.smoke [--quick]
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
    script = os.environ.get("DIFFTAICHI_SMOKE")
    if not script or not os.path.exists(script):
        return None
    py = os.environ.get("TAICHI_PYTHON", sys.executable)
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
iters, n, steps = int(sys.argv[1]), 128, 99
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
times, losses = [], []
for it in range(iters + 1):
    t0 = time.perf_counter()
    loss, g = grad_fn(v0)
    v0 = v0 - 400.0 * g
    if it > 0:
        times.append(time.perf_counter() - t0)
    losses.append(float(loss))
import phi
print(json.dumps({"s_per_iteration_median": statistics.median(times), "s_per_iteration_min": min(times),
                  "iterations": len(times), "loss_first": losses[0], "loss_last": losses[-1],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "phiflow": phi.__version__}))
"""


def _run_phiflow(iters: int) -> dict | None:
    py = os.environ.get("PHIFLOW_PYTHON")
    if not py:
        return None
    out = subprocess.run([py, "-c", _PHIFLOW_HARNESS, str(iters), "1"], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_worker(threads: int, iters: int, checkpoint: int | None, projection: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "bench.smoke", "--worker", str(threads), str(iters), str(checkpoint or 0),
            projection]
    out = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    iters = 3 if quick else 5
    rounds = 1 if quick else 3
    load0 = os.getloadavg()
    results: dict = {}
    order = [("diffvc_jacobi", 1, None, "jacobi"), ("diffvc_pcg", 1, None, "pcg"),
             ("diffvc_jacobi_checkpointed", 1, 11, "jacobi"), ("diffvc_pcg_checkpointed", 1, 11, "pcg")]
    for _ in range(rounds):
        for name, threads, ck, proj in order:
            results.setdefault(name, []).append(_run_worker(threads, iters, ck, proj))
        for name, threads in (("difftaichi", 0), ("difftaichi_1thread", 1)):
            t = _run_difftaichi(iters, threads)
            if t is not None:
                results.setdefault(name, []).append(t)
        p = _run_phiflow(max(1, iters // 2))
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
    for ref in ("difftaichi", "difftaichi_1thread", "phiflow_torch"):
        if ref in summary and "s_per_iteration_median" in summary[ref]:
            for name in ("diffvc_jacobi", "diffvc_pcg", "diffvc_jacobi_checkpointed", "diffvc_pcg_checkpointed"):
                ratios[f"{ref}_over_{name}"] = (summary[ref]["s_per_iteration_median"]
                                                / summary[name]["s_per_iteration_median"])
                if "cpu_s_per_iteration_median" in summary[ref]:
                    ratios[f"{ref}_over_{name}_cpu_seconds"] = (summary[ref]["cpu_s_per_iteration_median"]
                                                                / summary[name]["cpu_s_per_iteration_median"])
            if "s_per_iteration_median" in summary[ref] and len(summary[ref].get("per_round_medians", [])) > 1:
                # per-round ratios (each round's variants ran back to back)
                ratios[f"{ref}_over_diffvc_jacobi_per_round"] = [
                    a / b for a, b in zip(summary[ref]["per_round_medians"],
                                          summary["diffvc_jacobi"]["per_round_medians"])]
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
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
