"""Smoke control, DiffTaichi's task and setting: one optimisation iteration (forward + backward +
update) of the initial velocity field, diffvc side by side with DiffTaichi's ``smoke_taichi.py``.

The task (DiffTaichi, ``examples/smoke_taichi.py``): a periodic 128x128 grid, a checkerboard of
16-cell tiles as the initial density, 99 steps of advection (velocity by itself, then density)
with a pressure projection each step, loss = mean squared difference between the final density
and a target image; the gradient w.r.t. the initial velocity field updates it by gradient
descent. Time step 1 and cell size 1 (velocities in cells per step), float32, CPU.

The two solvers do not compute the same numbers: DiffTaichi uses a collocated grid and 10 Jacobi
iterations per projection (its velocity stays visibly divergent), diffvc a MAC grid with a PCG
projection to a relative residual of 1e-5 (exact spectral preconditioner, implicitly
differentiated; one-step Euler back-trace, as DiffTaichi, whose semi-Lagrangian passes run as a
Warp kernel with torch autograd around it). Both are the task as each library writes it.

Variants (each in its own subprocess, so peak RSS is the variant's own; importing torch, Warp and
diffvc alone takes ~365 MiB, reported as ``rss_after_import_mib``):

* ``diffvc_1thread`` / ``diffvc_2threads``: ``rollout(SmokeModel(...), ...)`` with full tape, torch
  limited to 1 or 2 intra-op threads (2 threads only without ``--quick``);
* ``diffvc_checkpointed``: the same with ``checkpoint_every=11`` (memory);
* ``difftaichi``: DiffTaichi's own ``smoke_taichi.py``, run as written except ``arch=ti.cpu``
  (not CUDA) and the OpenCV windows stubbed out; timed as its ``main`` loop runs an iteration
  (``with ti.ad.Tape(loss): forward()`` then ``apply_grad()``), after one warm-up iteration that
  compiles its kernels. It runs when the environment variable ``DIFFTAICHI_SMOKE`` names the
  script (its ``taichi.png`` beside it) and ``TAICHI_PYTHON`` a Python with ``taichi`` and
  ``opencv`` (default: this interpreter); otherwise the DiffTaichi and PhiFlow anchors measured
  on this machine kind (shared/DESIGN.md) are quoted.

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


def _worker_diffvc(threads: int, iters: int, checkpoint: int | None) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from diffvc.physics import SmokeModel, SmokeState, rollout

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model = SmokeModel((N_GRID, N_GRID), dx=1.0, boundary="periodic", backtrace="euler", tol=1e-5)
    d0, target = _initial_density(torch), _target(torch)
    v = [torch.zeros(N_GRID, N_GRID, requires_grad=True) for _ in range(2)]
    lr = 400.0  # DiffTaichi's learning rate (plain gradient descent)
    times, losses = [], []
    for it in range(iters + 1):
        t0 = time.perf_counter()
        final = rollout(model, SmokeState(d0, tuple(v)), STEPS, dt=1.0, checkpoint_every=checkpoint)
        loss = ((final.density - target) ** 2).mean()
        grads = torch.autograd.grad(loss, v)
        with torch.no_grad():
            for vi, gi in zip(v, grads):
                vi -= lr * gi
        dt = time.perf_counter() - t0
        if it > 0:  # the first iteration builds the solver's spectral basis and caches
            times.append(dt)
        losses.append(float(loss.detach()))
    div = float(model.divergence(final.velocity).detach().abs().max())
    return {"s_per_iteration_median": statistics.median(times), "s_per_iteration_min": min(times),
            "iterations": len(times), "loss_first": losses[0], "loss_last": losses[-1],
            "final_max_abs_divergence": div, "rss_after_import_mib": rss_import,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


_TAICHI_HARNESS = r"""
import json, os, resource, sys, time, types
import cv2
cv2.imshow = lambda *a, **k: None
cv2.waitKey = lambda *a, **k: -1
path, iters = sys.argv[1], int(sys.argv[2])
src = open(path).read().replace("arch=ti.cuda", "arch=ti.cpu")
os.chdir(os.path.dirname(os.path.abspath(path)))
mod = types.ModuleType("smoke_taichi")
exec(compile(src, path, "exec"), mod.__dict__)
ti = mod.ti
target_img = cv2.resize(cv2.imread("taichi.png"), (mod.n_grid, mod.n_grid))[:, :, 0] / 255.0
mod.init(target_img)
times, losses = [], []
for it in range(iters + 1):
    t0 = time.perf_counter()
    with ti.ad.Tape(mod.loss):
        mod.forward(None)
    mod.apply_grad()
    ti.sync()
    if it > 0:
        times.append(time.perf_counter() - t0)
    losses.append(float(mod.loss[None]))
times.sort()
print(json.dumps({"s_per_iteration_median": times[len(times) // 2], "s_per_iteration_min": times[0],
                  "iterations": len(times), "loss_first": losses[0], "loss_last": losses[-1],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "taichi": ".".join(map(str, ti.__version__))}))
"""


def _run_difftaichi(iters: int) -> dict | None:
    script = os.environ.get("DIFFTAICHI_SMOKE")
    if not script or not os.path.exists(script):
        return None
    py = os.environ.get("TAICHI_PYTHON", sys.executable)
    out = subprocess.run([py, "-c", _TAICHI_HARNESS, script, str(iters)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_worker(threads: int, iters: int, checkpoint: int | None) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "bench.smoke", "--worker", str(threads), str(iters), str(checkpoint or 0)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=root, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    iters = 3 if quick else 6
    load0 = os.getloadavg()[0]
    # interleave: each variant once, then again, so a shared machine's load hits them alike
    results: dict = {}
    order = [("diffvc_1thread", 1, None), ("diffvc_checkpointed", 1, 11)]
    if not quick:  # on a loaded 2-core machine torch's 2 threads stall (measured 18 s vs 1.5 s)
        order.append(("diffvc_2threads", 2, None))
    rounds = 1 if quick else 2
    for _ in range(rounds):
        for name, threads, ck in order:
            r = _run_worker(threads, iters, ck)
            results.setdefault(name, []).append(r)
        t = _run_difftaichi(iters)
        if t is not None:
            results.setdefault("difftaichi", []).append(t)
    summary = {}
    for name, rs in results.items():
        if "error" in rs[0]:
            summary[name] = rs[0]
            continue
        summary[name] = dict(rs[-1])
        summary[name]["s_per_iteration_median"] = statistics.median(r["s_per_iteration_median"] for r in rs)
        summary[name]["s_per_iteration_min"] = min(r["s_per_iteration_min"] for r in rs)
    out = {"grid": [N_GRID, N_GRID], "steps": STEPS, "dtype": "float32", "device": "cpu",
           "iterations_per_variant": iters, "rounds": rounds, "loadavg_1min_start": load0,
           "loadavg_1min_end": os.getloadavg()[0], "results": summary}
    best = min(summary[k]["s_per_iteration_median"] for k in ("diffvc_1thread", "diffvc_2threads") if k in summary)
    out["diffvc_best_s_per_iteration"] = best
    if "difftaichi" in summary and "s_per_iteration_median" in summary["difftaichi"]:
        out["speedup_vs_difftaichi"] = summary["difftaichi"]["s_per_iteration_median"] / best
    else:
        out["anchors"] = ANCHORS
    return out


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        th, it, ck = (int(a) for a in sys.argv[i + 1:i + 4])
        print(json.dumps(_worker_diffvc(th, it, ck or None)))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
