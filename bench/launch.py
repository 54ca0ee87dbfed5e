"""Launch overhead of small problems: the former per-call Warp launch path against recorded
launches and fused segments, side by side in one process.

* ``rigid_slide``: a box (8 collision vertices) pushed across the ground, 250 steps of 1 ms,
  forward + backward (gradients w.r.t. density, mu and the impulse; the scene of
  ``bench/fem.py``). Variants:
  ``steps_legacy`` -- ``rollout(lambda s: rigid_step(...))`` with a ``wp.launch`` on fresh
  ``wp.array`` views per kernel call (the path before recorded launches: "today");
  ``steps`` -- the same per-step rollout on recorded launches;
  ``fused`` -- ``rollout(model, ...)``: the model's fused segment (default checkpointing:
  250 frames > 128, so segments of 16 steps recomputed in backward);
  ``fused_nockpt`` -- one fused segment of 250 steps (``checkpoint_every=None``).
* ``particle``: one particle, one ``particle_step`` forward, and forward + backward
  (legacy vs recorded launches); and the per-step cost inside a fused segment of 288 steps
  (the bounce example's flight), forward + backward.
* ``kernel_op``: a kernel with 2 and with 12 tensor arguments (1 thread), forward + backward,
  legacy vs recorded; ``*_per_arg_us`` is the slope (cost of each extra tensor argument).
* ``split_launch``: one split CPU launch (``parallel_launch``) of an empty kernel with the argument
  list of a raster per-pixel kernel over 512 rows: 1 thread (one direct launch), 2 threads with
  the native hand-off to the launch worker (``_kernels/handoff.py``), and 2 threads through the
  thread pool (the bridge's fallback path, futures: how a Python thread pool hands chunks over).
  The 2-thread figures are pure hand-off cost: the chunks do nothing.
* ``sysid_eval``: one loss evaluation of ``diffvc run sysid --quick`` (simulate, render 19 frames
  x 2 views at 64 px, pyramid loss, backward to the two parameters) for its rigid part (180 rigid
  steps) and its soft part (720 FEM steps): ``legacy`` rolls out a per-step closure on the
  former launch path (the example before fused segments), ``fused`` the example as it is.

Variants are interleaved over repeats so machine load hits them alike; medians (ms or us) with
the spread (min, max) of the repeats; ``*_speedup`` = legacy time / new time (higher is better).
Torch runs single-threaded here (these tensors are tiny).

    python -m bench.launch [--quick]     or     diffvc bench launch
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from diffvc._kernels.bridge import Out, kernel_op, recorded_launches, wp
from diffvc.examples.bounce import make_model
from diffvc.geometry import box
from diffvc.physics import (ParticleModel, ParticleState, RigidBodyModel, RigidBodyState, apply_impulse,
                            particle_step, rigid_step, rollout)

D = torch.float64


# ------------------------------------------------------------------------------- rigid slide

def _slide_setup():
    density = torch.tensor(125.0, dtype=D, requires_grad=True)
    mu = torch.tensor(0.3, dtype=D, requires_grad=True)
    J = torch.tensor([[1.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    v, f = box(0.2, dtype=D)
    model, _ = RigidBodyModel.from_mesh(v, f, density=density, ke=1e4, kd=50.0, mu=mu, dtype=D)
    st = apply_impulse(model, RigidBodyState.create([[0.0, 0.1 - 9.81 / 4e4, 0.0]], dtype=D), J)
    return model, st, (density, mu, J)


def rigid_slide(variant: str, steps: int = 250):
    """(total ms, final x, gradients) of one forward + backward."""
    t0 = time.perf_counter()
    model, st, leaves = _slide_setup()
    if variant == "steps_legacy":
        with recorded_launches(False):
            final = rollout(lambda s: rigid_step(model, s, 1e-3), st, steps)
            final.x[0, 0].backward()
    elif variant == "steps":
        final = rollout(lambda s: rigid_step(model, s, 1e-3), st, steps)
        final.x[0, 0].backward()
    elif variant == "fused":
        final = rollout(model, st, steps, dt=1e-3)
        final.x[0, 0].backward()
    elif variant == "fused_nockpt":
        final = rollout(model, st, steps, dt=1e-3, checkpoint_every=None)
        final.x[0, 0].backward()
    else:
        raise ValueError(variant)
    ms = (time.perf_counter() - t0) * 1e3
    return ms, float(final.x[0, 0].detach()), [float(t.grad.reshape(-1)[0]) for t in leaves]


# ------------------------------------------------------------------------------- one particle

def _particle():
    model = ParticleModel.create([1.0], 0.1, planes=[[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -0.5]], dtype=D)
    x = torch.tensor([[-0.5, 1.0, 0.0]], dtype=D)
    v = torch.tensor([[5.0, -5.0, 0.0]], dtype=D, requires_grad=True)
    return model, ParticleState(x, v)


def particle_step_us(legacy: bool, backward: bool, n: int = 200) -> float:
    model, st = _particle()
    with recorded_launches(not legacy):
        t0 = time.perf_counter()
        for _ in range(n):
            out = particle_step(model, st, 1e-3)
            if backward:
                out.x.sum().backward()
        return (time.perf_counter() - t0) / n * 1e6


def particle_segment_us(n_steps: int = 288) -> float:
    """Per step, forward + backward, of the bounce example's flight as one fused segment."""
    model = make_model(D)
    v0 = torch.tensor([[5.0, -5.0, 0.0]], dtype=D, requires_grad=True)
    st = ParticleState(torch.tensor([[-0.5, 1.0, 0.0]], dtype=D), v0)
    t0 = time.perf_counter()
    final, _ = model.segment(st, 1.0 / 480, n_steps)
    final.x.sum().backward()
    return (time.perf_counter() - t0) / n_steps * 1e6


# ------------------------------------------------------------------------------- kernel_op per argument

@wp.kernel
def _two(a0: wp.array(dtype=wp.float64), out: wp.array(dtype=wp.float64)):
    i = wp.tid()
    out[i] = a0[i] * a0[i]


@wp.kernel
def _twelve(a0: wp.array(dtype=wp.float64), a1: wp.array(dtype=wp.float64), a2: wp.array(dtype=wp.float64),
            a3: wp.array(dtype=wp.float64), a4: wp.array(dtype=wp.float64), a5: wp.array(dtype=wp.float64),
            a6: wp.array(dtype=wp.float64), a7: wp.array(dtype=wp.float64), a8: wp.array(dtype=wp.float64),
            a9: wp.array(dtype=wp.float64), a10: wp.array(dtype=wp.float64), out: wp.array(dtype=wp.float64)):
    i = wp.tid()
    out[i] = a0[i] * a1[i] + a2[i] * a3[i] + a4[i] * a5[i] + a6[i] * a7[i] + a8[i] * a9[i] + a10[i]


def kernel_op_us(n_args: int, legacy: bool, n: int = 200) -> float:
    """Forward + backward of one kernel_op with ``n_args`` tensor arguments (inputs + output)."""
    xs = [torch.rand(1, dtype=D, requires_grad=True) for _ in range(n_args - 1)]
    kernel = _two if n_args == 2 else _twelve
    with recorded_launches(not legacy):
        t0 = time.perf_counter()
        for _ in range(n):
            kernel_op(kernel, 1, xs, [Out((1,))]).backward()
        return (time.perf_counter() - t0) / n * 1e6


# ------------------------------------------------------------------------------- split launch hand-off

@wp.kernel
def _empty_rows(offset: int, rows: int, a: wp.array(dtype=wp.float32, ndim=3), f: wp.array2d(dtype=wp.int32),
                fid: wp.array(dtype=wp.int32, ndim=3), bary: wp.array(dtype=wp.float32, ndim=4), near: float,
                persp: int, out: wp.array(dtype=wp.float32, ndim=4)):
    p = wp.tid() + offset
    if p < 0:  # never: the launch's cost is its hand-off alone
        out[0, 0, 0, 0] = a[0, 0, 0]


_SPLIT_ARGS: list = []


def split_launch_us(threads: int, pooled: bool = False, n: int = 200) -> float:
    """Median microseconds of one ``parallel_launch`` of :func:`_empty_rows` over 512 rows."""
    from diffvc._kernels import bridge

    if not _SPLIT_ARGS:
        _SPLIT_ARGS.extend([torch.zeros(1, 50_000, 3), torch.zeros(100_000, 3, dtype=torch.int32),
                            torch.zeros(1, 512, 512, dtype=torch.int32), torch.zeros(1, 512, 512, 3),
                            torch.zeros(1, 512, 512, 3)])
    a, f, fid, bary, out = _SPLIT_ARGS
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    bridge._SPLIT_DIRECT[0] = not pooled
    try:
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            bridge.parallel_launch(_empty_rows, 512, [1, a, f, fid, bary, 1e-3, 1], [out], min_per_thread=8)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e6
    finally:
        bridge._SPLIT_DIRECT[0] = True
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------- sysid loss evaluation

def _sysid_setup():
    from diffvc.examples import sysid

    out = {}
    for part, exp in (("rigid", sysid.RigidExperiment(sysid.RigidProblem())),
                      ("soft", sysid.SoftExperiment(sysid.SoftProblem()))):
        with torch.no_grad():
            target = exp.video({k: torch.tensor(v, dtype=D) for k, v in exp.truth().items()})
        out[part] = (exp, target)
    return out


def sysid_eval_s(setup, part: str, legacy: bool) -> float:
    """Seconds of one loss evaluation + backward of the sysid example's ``part``."""
    from diffvc.examples import sysid
    from diffvc.optim import pyramid_mse

    exp, target = setup[part]
    params = exp.params()
    fused_rollout = sysid.rollout

    def per_step_rollout(model, state, frames, dt, substeps, record):  # the example before segments
        return fused_rollout(lambda s: model.step(s, dt), state, frames, substeps=substeps, record=record)

    t0 = time.perf_counter()
    try:
        if legacy:
            sysid.rollout = per_step_rollout
        with recorded_launches(not legacy):
            pyramid_mse(exp.video(params.values()), target, levels=3).backward()
    finally:
        sysid.rollout = fused_rollout
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- run

def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        repeats = 3 if quick else 7
        n_calls = 100 if quick else 300
        slides = ("steps_legacy", "steps", "fused", "fused_nockpt")
        micro = {
            "particle_step_forward_legacy_us": lambda: particle_step_us(True, False, n_calls),
            "particle_step_forward_us": lambda: particle_step_us(False, False, n_calls),
            "particle_step_fwd_bwd_legacy_us": lambda: particle_step_us(True, True, n_calls),
            "particle_step_fwd_bwd_us": lambda: particle_step_us(False, True, n_calls),
            "particle_fused_fwd_bwd_per_step_us": particle_segment_us,
            "kernel_op_2_args_legacy_us": lambda: kernel_op_us(2, True, n_calls),
            "kernel_op_2_args_us": lambda: kernel_op_us(2, False, n_calls),
            "kernel_op_12_args_legacy_us": lambda: kernel_op_us(12, True, n_calls),
            "kernel_op_12_args_us": lambda: kernel_op_us(12, False, n_calls),
            "split_launch_1thread_us": lambda: split_launch_us(1),
            "split_launch_2threads_us": lambda: split_launch_us(2),
            "split_launch_2threads_pooled_us": lambda: split_launch_us(2, pooled=True),
        }
        setup = _sysid_setup()
        for part in ("rigid", "soft"):
            for tag, legacy in (("legacy", True), ("fused", False)):
                micro[f"sysid_{part}_eval_{tag}_s"] = (lambda p=part, lg=legacy: sysid_eval_s(setup, p, lg))
        # warm-up: compile kernels, record launches
        results = {v: rigid_slide(v) for v in slides}
        for fn in micro.values():
            fn()
        times = {f"rigid_slide_{v}_ms": [] for v in slides}
        times.update({k: [] for k in micro})
        for _ in range(repeats):
            for v in slides:
                ms, x, g = rigid_slide(v)
                times[f"rigid_slide_{v}_ms"].append(ms)
                results[v] = (ms, x, g)
            for k, fn in micro.items():
                times[k].append(fn())
    finally:
        torch.set_num_threads(threads)
    out = {"quick": quick, "repeats": repeats, "torch_threads": 1, "rigid_steps": 250,
           "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for k, ts in times.items():
        s = _stats(ts)
        out[k] = s["median"]
        out[k + "_spread"] = [s["min"], s["max"]]
    legacy = out["rigid_slide_steps_legacy_ms"]
    for v in ("steps", "fused", "fused_nockpt"):
        out[f"rigid_slide_{v}_speedup"] = legacy / out[f"rigid_slide_{v}_ms"]
    # same numbers from every path (the gradient each variant computes)
    ref_x, ref_g = results["steps_legacy"][1], results["steps_legacy"][2]
    out["rigid_slide_max_rel_diff_vs_legacy"] = max(
        max(abs(results[v][1] - ref_x) / abs(ref_x), *(abs(a - b) / abs(b) for a, b in zip(results[v][2], ref_g)))
        for v in slides)
    out["particle_step_forward_speedup"] = out["particle_step_forward_legacy_us"] / out["particle_step_forward_us"]
    out["particle_step_fwd_bwd_speedup"] = out["particle_step_fwd_bwd_legacy_us"] / out["particle_step_fwd_bwd_us"]
    out["particle_fused_vs_legacy_step_speedup"] = (out["particle_step_fwd_bwd_legacy_us"]
                                                    / out["particle_fused_fwd_bwd_per_step_us"])
    for part in ("rigid", "soft"):
        out[f"sysid_{part}_eval_speedup"] = out[f"sysid_{part}_eval_legacy_s"] / out[f"sysid_{part}_eval_fused_s"]
    out["split_launch_handoff_vs_pooled_speedup"] = (out["split_launch_2threads_pooled_us"]
                                                     / out["split_launch_2threads_us"])
    for tag in ("_legacy", ""):
        out[f"kernel_op_per_arg{tag}_us"] = (out[f"kernel_op_12_args{tag}_us"] - out[f"kernel_op_2_args{tag}_us"]) / 10
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
