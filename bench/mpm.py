"""MLS-MPM on DiffTaichi's diffmpm setting: forward + backward + update per iteration, diffvc vs
its plain-torch twin vs DiffTaichi's own ``diffmpm.py``.

Setting (DiffTaichi's ``examples/diffmpm.py``, its ``robot`` scene): 2D, 2,976 particles, 128^2
grid, dt = 1e-3, 1,023 steps per iteration, loss = -mean x after the last step, gradients to the
4 x 4 sin-wave weights and 4 biases of the open-loop actuation, one gradient-descent update
(lr 0.1), float32 on CPU. The initial weights are ``np.random.seed(0); randn * 0.01`` in both, so
the losses of the first iterations must agree (a check that both simulate the same thing).

Variants, each in a fresh subprocess (memory is per process):

* ``diffvc_checkpointed``: fused Warp segments of 64 steps that keep only their input and
  recompute in backward (the example's path);
* ``diffvc_full_tape``: one fused segment of 1,023 steps keeping every particle state;
* ``torch_twin``: ``MPMModel.step_torch`` (plain torch, torch autograd) under
  ``rollout(..., checkpoint_every=64)``; slow, so fewer steps in ``--quick`` (its per-step time
  is reported);
* ``difftaichi``: DiffTaichi's ``diffmpm.py`` unchanged except that its import-time ``ti.GUI``
  window (for its visualisation, unused here) is not created, on taichi's CPU backend
  (``TI_ARCH=x64``: its ``arch=ti.gpu`` request crashes on a machine without a GPU); run with a Python that has
  ``taichi`` (:func:`bench.taichi_python`) and the script at ``$DIFFTAICHI_DIFFMPM`` (else
  :func:`bench.difftaichi_example`; ``make bench-anchors`` sets both up). Without them the issue's anchor (2.40 s per
  iteration, 722 MiB peak, measured on this 2-core machine kind) is quoted instead.

Time: wall-clock seconds per iteration (median over iterations after a warm-up) and process CPU
seconds (all threads; diffvc runs its kernels on one thread here, DiffTaichi on its thread pool),
with the load average at start and end: the machine is shared, so read ratios from one run.

Memory from ``/proc/self/status``: ``peak_rss_mib`` is the process's peak resident set
(``VmHWM``); ``import_rss_mib`` the resident set after importing the library (and ``ti.init``);
``sim_peak_mib`` their difference, the memory the simulation and its gradients needed.

    python -m bench.mpm [--quick]     or     diffvc bench mpm
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR = {"seconds_per_iteration": 2.40, "peak_rss_mib": 722.0,
          "source": "issue 15: DiffTaichi diffmpm.py (pip taichi) on this 2-core CPU"}
STEPS = 1023


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(variant: str, iters: int, steps: int) -> dict:
    import numpy as np
    import torch

    import diffvc.physics  # noqa: F401  (imports Warp and torch: the import baseline)

    torch.set_num_threads(1)  # as the example: torch's share is small, its 2-thread pool is costly under load

    rss_import = _status_mib("VmRSS")
    from diffvc.examples.diffmpm import DT, actuation, robot_model, robot_scene, simulate
    from diffvc.physics import rollout

    x0, ids = robot_scene(torch.float32)
    model = robot_model(x0)
    state0 = model.initial_state(x0)
    np.random.seed(0)
    weights = torch.tensor(np.random.randn(4, 4) * 0.01, dtype=torch.float32)
    bias = torch.zeros(4, dtype=torch.float32)
    times, cpu, losses = [], [], []
    for it in range(iters + 1):  # iteration 0 is a warm-up (kernel loads)
        t0, c0 = time.perf_counter(), time.process_time()
        w = weights.clone().requires_grad_()
        b = bias.clone().requires_grad_()
        if variant == "diffvc_checkpointed":
            final = simulate(model, state0, lambda k, m: actuation(w, b, ids, m, k), steps, segment=64)
        elif variant == "diffvc_full_tape":
            final = model.segment(state0, DT, steps, control=actuation(w, b, ids, steps))[0]
        else:
            u = actuation(w, b, ids, steps)
            final = rollout(model, state0, steps, dt=DT, controller=lambda s, k: u[k], checkpoint_every=64,
                            backend="torch")
        loss = -final.x[:, 0].mean()
        gw, gb = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            weights -= 0.1 * gw
            bias -= 0.1 * gb
        if it > 0:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
    return {"seconds_per_iteration": statistics.median(times), "seconds_min": min(times),
            "cpu_seconds_per_iteration": statistics.median(cpu), "iterations": iters,
            "steps": steps, "losses": losses, "grad_weights_norm_last": float(gw.norm()),
            "import_rss_mib": rss_import, "peak_rss_mib": _status_mib("VmHWM"),
            "sim_peak_mib": _status_mib("VmHWM") - rss_import, "torch_threads": torch.get_num_threads()}


_DIFFTAICHI_HARNESS = r'''
import importlib.util, json, sys, time, pathlib
import numpy as np

def mib(key):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0

src_path, tmp_dir, iters = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = pathlib.Path(src_path).read_text()
gui_line = 'gui = ti.GUI("Differentiable MPM", (640, 640), background_color=0xFFFFFF)'
assert gui_line in src, "unexpected diffmpm.py: no import-time GUI line"
src = src.replace(gui_line, "gui = None  # headless: the visualisation is not run")
mod_path = pathlib.Path(tmp_dir) / "diffmpm_headless.py"
mod_path.write_text(src)
spec = importlib.util.spec_from_file_location("diffmpm_headless", mod_path)
m = importlib.util.module_from_spec(spec)
sys.argv = [str(mod_path)]
spec.loader.exec_module(m)  # ti.init(...) runs here
import taichi as ti
rss_import = mib("VmRSS")
scene = m.Scene()
m.robot(scene)
scene.finalize()
m.allocate_fields()
np.random.seed(0)
for i in range(m.n_actuators):
    for j in range(m.n_sin_waves):
        m.weights[i, j] = np.random.randn() * 0.01
for i in range(scene.n_particles):
    m.x[0, i] = scene.x[i]
    m.F[0, i] = [[1, 0], [0, 1]]
    m.actuator_id[i] = scene.actuator_id[i]
    m.particle_type[i] = scene.particle_type[i]
times, cpu, losses = [], [], []
for it in range(iters + 1):
    t0, c0 = time.perf_counter(), time.process_time()
    with ti.ad.Tape(m.loss):
        m.forward()
    l = m.loss[None]
    for i in range(m.n_actuators):
        for j in range(m.n_sin_waves):
            m.weights[i, j] -= 0.1 * m.weights.grad[i, j]
        m.bias[i] -= 0.1 * m.bias.grad[i]
    if it > 0:
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    losses.append(float(l))
times.sort()
cpu.sort()
print("RESULT " + json.dumps({"seconds_per_iteration": times[len(times) // 2], "seconds_min": times[0],
      "cpu_seconds_per_iteration": cpu[len(cpu) // 2], "cpu_threads": ti.lang.impl.current_cfg().cpu_max_num_threads,
      "iterations": iters, "steps": m.steps - 1, "particles": scene.n_particles, "losses": losses,
      "import_rss_mib": rss_import, "peak_rss_mib": mib("VmHWM"), "sim_peak_mib": mib("VmHWM") - rss_import,
      "taichi_version": ".".join(map(str, ti.__version__))}))
'''


def _difftaichi_paths():
    from bench import difftaichi_example, taichi_python

    script = os.environ.get("DIFFTAICHI_DIFFMPM") or difftaichi_example("diffmpm.py")
    python = taichi_python() or sys.executable
    return script, python


def _run_difftaichi(iters: int) -> dict | None:
    script, python = _difftaichi_paths()
    if not script or not Path(script).exists():
        return None
    probe = subprocess.run([python, "-c", "import taichi"], capture_output=True)
    if probe.returncode != 0:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        harness = Path(tmp) / "harness.py"
        harness.write_text(_DIFFTAICHI_HARNESS)
        # the script asks for arch=ti.gpu; on a CPU-only machine taichi 1.7.4 crashes probing GPU
        # backends, so pick its CPU backend the way taichi documents (TI_ARCH overrides ti.init)
        env = dict(os.environ, TI_ARCH=os.environ.get("TI_ARCH", "x64"))
        out = subprocess.run([python, str(harness), script, tmp, str(iters)], capture_output=True, text=True,
                             cwd=tmp, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"DiffTaichi harness failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def _run_child(variant: str, iters: int, steps: int) -> dict:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-c", f"import json, bench.mpm as b; print('RESULT ' + json.dumps(b._child({variant!r}, "
                                 f"{iters}, {steps})))"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")


def run(quick: bool = False) -> dict:
    iters = 3 if quick else 5
    out = {"setting": {"particles": 2976, "grid": "128x128", "steps": STEPS, "dt": 1e-3, "dtype": "float32",
                       "device": "cpu"}, "load_average_start": os.getloadavg()[0]}
    results = {}
    for variant in ("diffvc_checkpointed", "diffvc_full_tape"):
        results[variant] = _run_child(variant, iters, STEPS)
    twin_steps = 128 if quick else STEPS
    results["torch_twin"] = _run_child("torch_twin", 1, twin_steps)
    results["torch_twin"]["ms_per_step"] = 1e3 * results["torch_twin"]["seconds_per_iteration"] / twin_steps
    dt_res = _run_difftaichi(iters)
    out["results"] = results
    ours = results["diffvc_checkpointed"]
    ref = dt_res if dt_res is not None else ANCHOR
    out["difftaichi"] = dt_res if dt_res is not None else {"anchor": ANCHOR}
    out["difftaichi_measured_side_by_side"] = dt_res is not None
    out["time_ratio_to_difftaichi"] = ours["seconds_per_iteration"] / ref["seconds_per_iteration"]
    if dt_res is not None:
        out["cpu_time_ratio_to_difftaichi"] = ours["cpu_seconds_per_iteration"] / dt_res["cpu_seconds_per_iteration"]
    out["peak_rss_ratio_to_difftaichi"] = ours["peak_rss_mib"] / ref["peak_rss_mib"]
    if dt_res is not None:
        out["sim_peak_ratio_to_difftaichi"] = ours["sim_peak_mib"] / dt_res["sim_peak_mib"]
        out["loss_iter0_diffvc_vs_difftaichi"] = [ours["losses"][0], dt_res["losses"][0]]
    out["speedup_vs_torch_twin_per_step"] = (results["torch_twin"]["ms_per_step"]
                                             / (1e3 * ours["seconds_per_iteration"] / STEPS))
    out["load_average_end"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
