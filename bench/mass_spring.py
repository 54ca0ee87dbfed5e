"""Mass-spring rollout, forward + backward: diffvc vs plain torch vs a raw Warp loop with wp.Tape.

1,000 particles (a 10x10x10 lattice, 0.1 m apart, falling onto the ground), 5,000 springs
(the 2,700 lattice edges, then face diagonals), 1,000 steps of 1 ms, float32 on CPU. The loss
is sum(final x) + sum(final v); gradients w.r.t. the initial velocities and the spring
stiffnesses. All variants run in this one process, interleaved (repeat r of every variant, then
repeat r+1), so a shared machine's load hits them alike; medians over repeats (and minima).

* ``diffvc_fused``: ``rollout(model, state, 1000, dt=dt)``, every setting at its default: fused Warp
  segments of ceil(sqrt(1000)) = 32 steps that keep only their inputs and re-run in backward
  (the default checkpointing of rollouts beyond 128 frames), hand-written adjoints; on the CPU the
  segment's spring forces and their adjoint are native loops over all springs, 8 per SIMD
  iteration (``diffvc._kernels.springs.SPRING_NATIVE``, equal bit for bit to the Warp kernels the
  raw loop launches), the particle integration the same Warp kernels as the raw loop;
* ``diffvc_checkpointed``: the same with ``checkpoint_every=100`` (backward re-runs each segment);
* ``diffvc_full_tape``: the same with ``checkpoint_every=None``: one fused segment that keeps every
  state, as ``wp.Tape`` keeps every array of the raw loop (the same memory policy as the baseline;
  the default trades the backward's re-run of each segment for memory that stays flat with T);
* ``diffvc_per_step``: ``spring_step`` called 1,000 times (two kernel_op nodes per step);
* ``torch`` / ``torch_1thread``: ``spring_step_torch`` (the plain-torch twin, torch autograd)
  with torch's default thread count and with one thread; the speedup uses the faster;
* ``raw_warp``: a Python loop of two Warp launches per step under ``wp.Tape``, written like Warp's
  own examples (``example_spring_cage``, ``example_cloth_throw``, warp.sim's semi-implicit
  integrator): concrete-typed kernels (``wp.vec3`` / ``float32`` arrays, the model's scalars --
  gravity, the ground plane, contact ke/kd/mu -- passed by value), every array allocated once
  before timing, a fresh tape per iteration, a loss kernel, ``tape.backward(loss)``,
  ``tape.zero()``. Same physics bit for bit: its final state and gradients equal those of the
  same loop launching diffvc's own kernels;
* ``raw_warp_generic``: that same loop launching diffvc's generic kernels (``spring_forces``,
  ``integrate_particles``: ``Any``-typed arrays, whose every launch re-infers the overload from 9 or
  11 arguments, and whose Warp-generated adjoint carries the 8-plane unrolled contact loop). This
  was the ``raw_warp`` baseline until issue 18: 1.6-1.8x the time of the examples-style loop, which
  made diffvc's ratio look ~1.7x better than it is. (Before that, it also allocated its 3,000 state
  and force arrays inside the timed loop.)

``--warp-only`` runs only the four Warp variants (the ratio the issue-18 target is about).

    python -m bench.mass_spring [--quick] [--warp-only]     or     diffvc bench mass_spring
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from diffvc._kernels import wp
from diffvc._kernels.particles import integrate_particles, plane_contact_force
from diffvc._kernels.springs import LENGTH_EPS2, spring_forces
from diffvc.physics import ParticleState, SpringModel, rollout, spring_step, spring_step_torch

N_SIDE, N_SPRINGS, STEPS, DT = 10, 5000, 1000, 1e-3


def make_system(dtype=torch.float32, n_side=N_SIDE, n_springs=N_SPRINGS):
    g = torch.arange(n_side)
    ijk = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    x = ijk.to(dtype) * 0.1 + torch.tensor([0.0, 0.3, 0.0], dtype=dtype)
    idx = torch.arange(ijk.shape[0]).reshape(n_side, n_side, n_side)
    pairs = []
    for d in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, -1, 0), (0, 1, -1), (1, 0, -1)]:
        sl_a = tuple(slice(max(0, -o), n_side - max(0, o)) for o in d)
        sl_b = tuple(slice(max(0, o), n_side - max(0, -o)) for o in d)
        pairs.append(torch.stack([idx[sl_a].reshape(-1), idx[sl_b].reshape(-1)], 1))
    pairs = torch.cat(pairs)
    pairs = pairs[:n_springs]  # lattice edges, then face diagonals
    model = SpringModel.create(x, pairs, mass=0.01, radius=0.01, ke=100.0, kd=0.5, contact_ke=1e3,
                               contact_kd=1.0, mu=0.5, friction_smoothing=0.1, dtype=dtype)
    v0 = torch.zeros_like(x)
    v0[:, 0] = 1.0
    return model, ParticleState(x, v0)


def _summary(times, cpu=None):
    fwd = [a for a, _ in times]
    bwd = [b for _, b in times]
    out = {"forward_ms": 1e3 * statistics.median(fwd), "backward_ms": 1e3 * statistics.median(bwd),
           "total_ms": 1e3 * statistics.median([a + b for a, b in times]),
           "total_min_ms": 1e3 * min(a + b for a, b in times), "runs": len(times)}
    if cpu:
        out["total_cpu_ms"] = 1e3 * statistics.median(cpu)  # process CPU time (user + sys), all threads
    return out


def _diffvc(model, s0, steps, mode):
    from dataclasses import replace

    def run():
        ke = model.ke.clone().requires_grad_()
        v0 = s0.v.clone().requires_grad_()
        m = replace(model, ke=ke)
        state = ParticleState(s0.x, v0)
        t0 = time.perf_counter()
        if mode == "fused":
            final = rollout(m, state, steps, dt=DT)
        elif mode == "checkpointed":
            final = rollout(m, state, steps, dt=DT, checkpoint_every=100)
        elif mode == "full_tape":
            final = rollout(m, state, steps, dt=DT, checkpoint_every=None)
        elif mode == "per_step":
            final = rollout(lambda s: spring_step(m, s, DT), state, steps)
        else:
            final = rollout(lambda s: spring_step_torch(m, s, DT), state, steps)
        loss = final.x.sum() + final.v.sum()
        t1 = time.perf_counter()
        gv, gk = torch.autograd.grad(loss, [v0, ke])
        t2 = time.perf_counter()
        run.grads = (gv, gk, final.x.detach())
        return t1 - t0, t2 - t1

    return run


def _threads(fn, n):
    """Run ``fn`` with torch limited to ``n`` intra-op threads (on a loaded 2-core machine, torch's
    two threads can be ~10x slower than one: measured 23 ms vs 1.3 ms per twin step)."""
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            out = fn()
        finally:
            torch.set_num_threads(old)
        run.grads = fn.grads
        return out

    return run


@wp.kernel
def _loss_kernel(x: wp.array(dtype=wp.vec3), v: wp.array(dtype=wp.vec3), loss: wp.array(dtype=wp.float32)):
    i = wp.tid()
    wp.atomic_add(loss, 0, x[i][0] + x[i][1] + x[i][2] + v[i][0] + v[i][1] + v[i][2])


# The raw-Warp baseline's kernels, written as Warp's examples write them (warp.sim's eval_springs and
# integrate_particles, example_spring_cage, example_cloth_throw): concrete float32/vec3 argument
# types, spring end points as one flat index array, per-model scalars (gravity, the ground plane,
# contact ke/kd/mu) passed by value, one ground plane. Same arithmetic as diffvc's spring_forces +
# integrate_particles on this scene (no actuation; its one plane y = 0): the rollout and both
# gradients come out bit for bit equal to the launches of diffvc's own kernels (``raw_warp_generic``).
@wp.kernel
def _eval_springs(x: wp.array(dtype=wp.vec3), v: wp.array(dtype=wp.vec3), spring_indices: wp.array(dtype=wp.int32),
                  spring_rest: wp.array(dtype=wp.float32), spring_ke: wp.array(dtype=wp.float32),
                  spring_kd: wp.array(dtype=wp.float32), f: wp.array(dtype=wp.vec3)):
    tid = wp.tid()
    i = spring_indices[tid * 2 + 0]
    j = spring_indices[tid * 2 + 1]
    d = x[j] - x[i]
    ln = wp.sqrt(wp.dot(d, d) + wp.float32(LENGTH_EPS2))
    u = d / ln
    fs = spring_ke[tid] * (ln - spring_rest[tid]) + spring_kd[tid] * wp.dot(v[j] - v[i], u)
    fv = u * fs
    wp.atomic_add(f, i, fv)
    wp.atomic_sub(f, j, fv)


@wp.kernel
def _integrate(x: wp.array(dtype=wp.vec3), v: wp.array(dtype=wp.vec3), f: wp.array(dtype=wp.vec3),
               inv_mass: wp.array(dtype=wp.float32), radius: wp.array(dtype=wp.float32), gravity: wp.vec3,
               ground: wp.vec4, ke: wp.float32, kd: wp.float32, mu: wp.float32, vs: wp.float32, dt: wp.float32,
               x_new: wp.array(dtype=wp.vec3), v_new: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    xi = x[i]
    vi = v[i]
    w = inv_mass[i]
    n = wp.vec3(ground[0], ground[1], ground[2])
    c = wp.dot(n, xi) - ground[3] - radius[i]
    ft = f[i] + plane_contact_force(n, c, vi, ke, kd, mu, vs)
    g = gravity * wp.where(w > 0.0, 1.0, 0.0)
    v1 = vi + (ft * w + g) * dt
    x_new[i] = xi + v1 * dt
    v_new[i] = v1


def _raw_warp(model, s0, steps, kernels="examples"):
    """A raw Warp loop written the way Warp's own optimisation examples are (``example_spring_cage``,
    ``example_cloth_throw``, warp.sim's semi-implicit integrator): every state, force and parameter
    array allocated once up front, ``requires_grad`` on the states, forces and ``ke`` (the examples'
    ``__init__``); per iteration a fresh ``wp.Tape`` records two launches per step and a loss kernel,
    ``tape.backward(loss)``, then ``tape.zero()`` (and the force rows cleared for the next
    iteration, one memset). ``kernels="examples"``: the concrete-typed kernels above (the baseline);
    ``kernels="diffvc"``: the same loop launching diffvc's generic (``Any``-typed, 9/11-argument)
    ``spring_forces`` and ``integrate_particles``, whose launches resolve their overload from the
    argument types every time and whose generated adjoint carries the 8-plane unrolled contact
    loop: about 1.5-1.8x the examples' CPU time, the baseline this benchmark used before."""
    dev = "cpu"
    n, s = model.num_particles, model.num_springs
    if model.planes.shape[0] != 1:
        raise ValueError(f"the raw-Warp baseline is written for one ground plane, got {model.planes.shape[0]}")
    f32 = lambda t, dtype=wp.float32, **kw: wp.array(t.detach().numpy(), dtype=dtype, device=dev, **kw)  # noqa: E731
    rest, kd, inv_mass, radius = f32(model.rest), f32(model.kd), f32(model.inv_mass), f32(model.radius)
    ke = f32(model.ke, requires_grad=True)
    xs = [f32(s0.x, wp.vec3, requires_grad=True)]
    vs = [f32(s0.v, wp.vec3, requires_grad=True)]
    for _ in range(steps):
        xs.append(wp.zeros(n, dtype=wp.vec3, device=dev, requires_grad=True))
        vs.append(wp.zeros(n, dtype=wp.vec3, device=dev, requires_grad=True))
    f_all = wp.zeros((steps, n), dtype=wp.vec3, device=dev, requires_grad=True)
    fs = [f_all[k] for k in range(steps)]
    loss = wp.zeros(1, dtype=wp.float32, device=dev, requires_grad=True)
    if kernels == "examples":
        idx = wp.array(model.springs.reshape(-1).numpy().astype("int32"), dtype=wp.int32, device=dev)
        gravity = wp.vec3(*model.gravity.tolist())
        ground = wp.vec4(*model.planes[0].tolist())
        cke, ckd, cmu, cvs = (wp.float32(c) for c in model.contact.tolist())

        def step(k):
            wp.launch(_eval_springs, dim=s, inputs=[xs[k], vs[k], idx, rest, ke, kd], outputs=[fs[k]], device=dev)
            wp.launch(_integrate, dim=n, inputs=[xs[k], vs[k], fs[k], inv_mass, radius, gravity, ground,
                                                 cke, ckd, cmu, cvs, wp.float32(DT)],
                      outputs=[xs[k + 1], vs[k + 1]], device=dev)
    else:
        si = wp.array(model.springs[:, 0].numpy(), dtype=wp.int32, device=dev)
        sj = wp.array(model.springs[:, 1].numpy(), dtype=wp.int32, device=dev)
        gain = f32(model.gain)
        act = wp.zeros(s, dtype=wp.float32, device=dev)
        planes, contact = f32(model.planes, wp.vec4), f32(model.contact)
        gravity = f32(model.gravity.reshape(1, 3), wp.vec3)
        dt = wp.float32(DT)

        def step(k):
            wp.launch(spring_forces, dim=s, inputs=[xs[k], vs[k], si, sj, rest, ke, kd, gain, act],
                      outputs=[fs[k]], device=dev)
            wp.launch(integrate_particles, dim=n, inputs=[xs[k], vs[k], inv_mass, radius, planes, contact,
                                                           gravity, fs[k], dt],
                      outputs=[xs[k + 1], vs[k + 1]], device=dev)

    def run():
        t0 = time.perf_counter()
        tape = wp.Tape()
        with tape:
            for k in range(steps):
                step(k)
            wp.launch(_loss_kernel, dim=n, inputs=[xs[-1], vs[-1]], outputs=[loss], device=dev)
        t1 = time.perf_counter()
        tape.backward(loss)
        gv, gk = torch.from_numpy(vs[0].grad.numpy().copy()), torch.from_numpy(ke.grad.numpy().copy())
        final = torch.from_numpy(xs[-1].numpy().copy())
        tape.zero()
        f_all.zero_()
        loss.zero_()
        t2 = time.perf_counter()
        run.grads = (gv, gk, final)
        return t1 - t0, t2 - t1

    return run


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(quick: bool = False, warp_only: bool = False) -> dict:
    """``warp_only``: only the Warp variants (diffvc fused/checkpointed, both raw-Warp loops), with
    the full repeat count: the ratio the target is about, without the torch and per-step runs."""
    steps = STEPS
    repeats = 3 if quick else 5
    model, s0 = make_system()
    # the pair the target is about runs back to back (same load), before the torch runs (whose
    # idle OpenMP workers keep spinning for a while after their last op)
    variants = {
        "diffvc_fused": _diffvc(model, s0, steps, "fused"),
        "raw_warp": _raw_warp(model, s0, steps),
        "diffvc_checkpointed": _diffvc(model, s0, steps, "checkpointed"),
        "diffvc_full_tape": _diffvc(model, s0, steps, "full_tape"),
        "raw_warp_generic": _raw_warp(model, s0, steps, kernels="diffvc"),
        "diffvc_per_step": _diffvc(model, s0, steps, "per_step"),
        "torch": _threads(_diffvc(model, s0, steps, "torch"), torch.get_num_threads()),
        "torch_1thread": _threads(_diffvc(model, s0, steps, "torch"), 1),
    }
    if warp_only:
        for name in ("diffvc_per_step", "torch", "torch_1thread"):
            del variants[name]
    for fn in variants.values():  # warm-up (module loads, allocator)
        fn()
    # interleaved repeats: the machine is shared, so every variant sees the same load over time
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    slow = ("torch", "torch_1thread", "diffvc_per_step")
    for r in range(repeats):
        for name, fn in variants.items():
            if name in slow and r >= (1 if quick else 3):
                continue
            c0 = time.process_time()
            times[name].append(fn())
            cpu[name].append(time.process_time() - c0)
    results = {name: _summary(t, cpu[name]) for name, t in times.items()}
    # per repeat, diffvc's time over raw Warp's of the same repeat (interleaved: same load)
    pair = [(a[0] + a[1]) / (b[0] + b[1]) for a, b in zip(times["diffvc_fused"], times["raw_warp"])]
    pair_cpu = [a / b for a, b in zip(cpu["diffvc_fused"], cpu["raw_warp"])]
    ref = variants["raw_warp"].grads
    agree = {name: {"final_x": _rel(fn.grads[2], ref[2]), "grad_v0": _rel(fn.grads[0], ref[0]),
                    "grad_ke": _rel(fn.grads[1], ref[1])} for name, fn in variants.items() if name != "raw_warp"}
    ours = results["diffvc_fused"]["total_ms"]
    out = {
        "particles": model.num_particles, "springs": model.num_springs, "steps": steps, "dt": DT,
        "dtype": "float32", "device": "cpu", "torch_threads": torch.get_num_threads(), "repeats": repeats,
        "results": results,
        "ratio_to_raw_warp": ours / results["raw_warp"]["total_ms"],
        "ratio_to_raw_warp_per_repeat": pair, "ratio_to_raw_warp_per_repeat_median": statistics.median(pair),
        "ratio_to_raw_warp_cpu": results["diffvc_fused"]["total_cpu_ms"] / results["raw_warp"]["total_cpu_ms"],
        "ratio_to_raw_warp_cpu_per_repeat": pair_cpu,
        "load_average": os.getloadavg(),
        "checkpointed_ratio_to_raw_warp": results["diffvc_checkpointed"]["total_ms"] / results["raw_warp"]["total_ms"],
        "full_tape_ratio_to_raw_warp": results["diffvc_full_tape"]["total_ms"] / results["raw_warp"]["total_ms"],
        "raw_warp_generic_over_raw_warp": results["raw_warp_generic"]["total_ms"] / results["raw_warp"]["total_ms"],
        "raw_warp_generic_over_raw_warp_cpu": (results["raw_warp_generic"]["total_cpu_ms"]
                                               / results["raw_warp"]["total_cpu_ms"]),
        "relative_difference_to_raw_warp": agree,
        "targets": {"ratio_to_raw_warp": 0.7, "note": "ratios are diffvc time / other time: lower is better"},
        "min_final_height": float(ref[2][:, 1].min()),
    }
    if not warp_only:
        best_torch = min(results["torch"]["total_ms"], results["torch_1thread"]["total_ms"])
        out["speedup_vs_torch"] = best_torch / ours
        out["speedup_vs_torch_default_threads"] = results["torch"]["total_ms"] / ours
        out["per_step_ratio_to_raw_warp"] = results["diffvc_per_step"]["total_ms"] / results["raw_warp"]["total_ms"]
    out["note"] = ("gradients of this lattice grow ~1000x between steps 300 and 1000 (impact and friction); "
                   "in float64 the twin and Warp agree to 1e-10 over 1000 steps, in float32 rounding "
                   "differences are amplified, so the torch twin's float32 gradients differ from Warp's")
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, warp_only="--warp-only" in sys.argv), indent=2))
