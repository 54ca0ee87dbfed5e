"""MLS-MPM on DiffTaichi's diffmpm setting: forward + backward + update per iteration, diffvc vs
its plain-torch twin vs DiffTaichi's own ``diffmpm.py``.

Setting (DiffTaichi's ``examples/diffmpm.py``, its ``robot`` scene): 2D, 2,976 particles, 128^2
grid, dt = 1e-3, 1,023 steps per iteration, loss = -mean x after the last step, gradients to the
4 x 4 sin-wave weights and 4 biases of the open-loop actuation, one gradient-descent update
(lr 0.1), float32 on CPU. The initial weights are ``np.random.seed(0); randn * 0.01`` in both, so
the losses of the first iterations must agree (a check that both simulate the same thing).

Variants, each in a fresh subprocess (memory is per process). ``diffvc_checkpointed`` (the
table's figure) and ``difftaichi`` run side by side: both interpreters warm up, then their
iterations alternate (diffvc, DiffTaichi; next round DiffTaichi, diffvc; ...) so both see the
same machine load, and the JSON gives the ratio per round. (Before, the variants ran one after
another, minutes apart: a shared machine's load swings moved the ratio between 0.72x and 1.12x
on MPM code unchanged since 947a672; interleaved HEAD vs 947a672 runs of the checkpointed
variant gave the same CPU seconds within noise.) The other variants run after them, one at a
time:

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


def _gate(stepped: bool, it: int) -> bool:
    """In stepped mode (``iters < 0``), after the warm-up iteration wait for the parent's ``go`` on
    stdin before each timed iteration (False at ``end``), and report each timed iteration on
    stdout, so the parent can interleave two interpreters iteration by iteration."""
    if not stepped or it == 0:
        return True
    print("READY" if it == 1 else "", flush=True)
    return sys.stdin.readline().strip() == "go"


def _child(variant: str, iters: int, steps: int) -> dict:
    """``iters`` timed iterations after a warm-up; ``iters < 0``: stepped (see :func:`_gate`)."""
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
    stepped = iters < 0
    it = 0
    while (stepped or it <= iters) and _gate(stepped, it):  # iteration 0 is a warm-up (kernel loads)
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
            if stepped:
                print("ITER " + json.dumps([times[-1], cpu[-1]]), flush=True)
        losses.append(float(loss.detach()))
        it += 1
    return {"seconds_per_iteration": statistics.median(times), "seconds_min": min(times),
            "seconds_per_iteration_all": times, "cpu_seconds_all": cpu,
            "cpu_seconds_per_iteration": statistics.median(cpu), "iterations": len(times),
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
stepped = iters < 0  # stepped: after the warm-up, one timed iteration per "go" line on stdin
it = 0
while stepped or it <= iters:
    if stepped and it > 0:
        print("READY" if it == 1 else "", flush=True)
        if sys.stdin.readline().strip() != "go":
            break
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
        if stepped:
            print("ITER " + json.dumps([times[-1], cpu[-1]]), flush=True)
    losses.append(float(l))
    it += 1
all_times, all_cpu = list(times), list(cpu)
times.sort()
cpu.sort()
print("RESULT " + json.dumps({"seconds_per_iteration": times[len(times) // 2], "seconds_min": times[0],
      "seconds_per_iteration_all": all_times, "cpu_seconds_all": all_cpu,
      "cpu_seconds_per_iteration": cpu[len(cpu) // 2], "cpu_threads": ti.lang.impl.current_cfg().cpu_max_num_threads,
      "iterations": len(all_times), "steps": m.steps - 1, "particles": scene.n_particles, "losses": losses,
      "import_rss_mib": rss_import, "peak_rss_mib": mib("VmHWM"), "sim_peak_mib": mib("VmHWM") - rss_import,
      "taichi_version": ".".join(map(str, ti.__version__))}))
'''


def _difftaichi_paths():
    from bench import difftaichi_example, taichi_python

    script = os.environ.get("DIFFTAICHI_DIFFMPM") or difftaichi_example("diffmpm.py")
    python = taichi_python() or sys.executable
    return script, python


def _difftaichi_available() -> tuple[str, str] | None:
    script, python = _difftaichi_paths()
    if not script or not Path(script).exists():
        return None
    probe = subprocess.run([python, "-c", "import taichi"], capture_output=True)
    return (script, python) if probe.returncode == 0 else None


class _Stepped:
    """A benchmark interpreter run in stepped mode: it warms up, prints ``READY`` and then runs
    one timed iteration per :meth:`step` (``go`` on its stdin, ``ITER [wall, cpu]`` back), so two
    of them can be interleaved iteration by iteration and see the same machine load; while one
    runs, the other waits blocked on its stdin (idle)."""

    def __init__(self, name: str, cmd: list, cwd, env=None):
        self.name = name
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self._until("READY")

    def _until(self, prefix: str) -> str:
        for line in self.p.stdout:
            if line.startswith(prefix):
                return line
        err = self.p.stderr.read()
        raise RuntimeError(f"{self.name} failed (waiting for {prefix}):\n{err[-3000:]}")

    def step(self) -> tuple[float, float]:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return tuple(json.loads(self._until("ITER ")[5:]))

    def finish(self) -> dict:
        self.p.stdin.write("end\n")
        self.p.stdin.flush()
        out = json.loads(self._until("RESULT ")[7:])
        self.p.wait()
        return out


def _child_cmd(variant: str, iters: int, steps: int) -> list:
    return [sys.executable, "-c", f"import json, bench.mpm as b; print('RESULT ' + json.dumps(b._child({variant!r}, "
                                  f"{iters}, {steps})))"]


def _run_child(variant: str, iters: int, steps: int) -> dict:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(_child_cmd(variant, iters, steps), capture_output=True, text=True, cwd=root)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")


def _side_by_side(iters: int, anchor: tuple[str, str] | None) -> tuple[dict, dict | None, list]:
    """diffvc's checkpointed variant and DiffTaichi's diffmpm.py, each in its own interpreter,
    warmed up, then timed alternately iteration by iteration (the order flips every round), so
    both see the same load: per round, (diffvc wall, DiffTaichi wall, diffvc CPU, DiffTaichi CPU)."""
    root = Path(__file__).resolve().parent.parent
    ours = _Stepped("diffvc_checkpointed", _child_cmd("diffvc_checkpointed", -1, STEPS), root)
    if anchor is None:
        for _ in range(iters):
            ours.step()
        return ours.finish(), None, []
    script, python = anchor
    with tempfile.TemporaryDirectory() as tmp:
        harness = Path(tmp) / "harness.py"
        harness.write_text(_DIFFTAICHI_HARNESS)
        # the script asks for arch=ti.gpu; on a CPU-only machine taichi 1.7.4 crashes probing GPU
        # backends, so pick its CPU backend the way taichi documents (TI_ARCH overrides ti.init)
        env = dict(os.environ, TI_ARCH=os.environ.get("TI_ARCH", "x64"))
        theirs = _Stepped("DiffTaichi harness", [python, str(harness), script, tmp, "-1"], tmp, env)
        rounds = []
        for r in range(iters):
            if r % 2 == 0:
                a, b = ours.step(), theirs.step()
            else:
                b, a = theirs.step(), ours.step()
            rounds.append((a[0], b[0], a[1], b[1]))
        return ours.finish(), theirs.finish(), rounds


def run(quick: bool = False) -> dict:
    iters = 3 if quick else 5
    out = {"setting": {"particles": 2976, "grid": "128x128", "steps": STEPS, "dt": 1e-3, "dtype": "float32",
                       "device": "cpu"}, "load_average_start": os.getloadavg()[0]}
    results = {}
    anchor = _difftaichi_available()
    results["diffvc_checkpointed"], dt_res, rounds = _side_by_side(iters, anchor)
    out["load_average_side_by_side_end"] = os.getloadavg()[0]
    results["diffvc_full_tape"] = _run_child("diffvc_full_tape", iters, STEPS)
    twin_steps = 128 if quick else STEPS
    results["torch_twin"] = _run_child("torch_twin", 1, twin_steps)
    results["torch_twin"]["ms_per_step"] = 1e3 * results["torch_twin"]["seconds_per_iteration"] / twin_steps
    out["results"] = results
    ours = results["diffvc_checkpointed"]
    ref = dt_res if dt_res is not None else ANCHOR
    out["difftaichi"] = dt_res if dt_res is not None else {"anchor": ANCHOR}
    out["difftaichi_measured_side_by_side"] = dt_res is not None
    out["time_ratio_to_difftaichi"] = ours["seconds_per_iteration"] / ref["seconds_per_iteration"]
    if dt_res is not None:
        # the iterations alternate (diffvc, DiffTaichi, DiffTaichi, diffvc, ...): ratios per round
        out["time_ratio_to_difftaichi_per_round"] = [a / b for a, b, _, _ in rounds]
        out["time_ratio_to_difftaichi_per_round_median"] = statistics.median(a / b for a, b, _, _ in rounds)
        out["cpu_time_ratio_to_difftaichi"] = ours["cpu_seconds_per_iteration"] / dt_res["cpu_seconds_per_iteration"]
        out["cpu_time_ratio_to_difftaichi_per_round"] = [c / d for _, _, c, d in rounds]
        out["full_tape_time_ratio_to_difftaichi"] = (results["diffvc_full_tape"]["seconds_per_iteration"]
                                                     / dt_res["seconds_per_iteration"])
    out["peak_rss_ratio_to_difftaichi"] = ours["peak_rss_mib"] / ref["peak_rss_mib"]
    if dt_res is not None:
        out["sim_peak_ratio_to_difftaichi"] = ours["sim_peak_mib"] / dt_res["sim_peak_mib"]
        out["loss_iter0_diffvc_vs_difftaichi"] = [ours["losses"][0], dt_res["losses"][0]]
    out["speedup_vs_torch_twin_per_step"] = (results["torch_twin"]["ms_per_step"]
                                             / (1e3 * ours["seconds_per_iteration"] / STEPS))
    out["load_average_end"] = os.getloadavg()[0]
    out["note"] = ("diffvc_checkpointed and DiffTaichi run side by side (two warmed-up interpreters timed "
                   "alternately, one iteration each per round); diffvc_full_tape and the torch twin run "
                   "after them, one at a time. Ratios: diffvc / DiffTaichi time, lower is better.")
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
