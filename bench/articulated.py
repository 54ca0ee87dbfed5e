"""Articulated bodies: many cart-poles in one batch, forward + backward, against MuJoCo's rollout.

The cart-pole of ``diffvc/physics/assets/cartpole.xml`` (slider + hinge, joint damping, armature,
a clamped motor; timestep 10 ms), ``B`` environments x ``T`` steps (full: 1,024 x 1,000; quick:
1,024 x 100), float32 on the CPU, random initial states and random open-loop controls.

* ``diffvc_fwd_bwd``: ``rollout(model, state, T, dt, controller=u[k], checkpoint_every=50)``,
  then gradients of ``sum(q_T) + sum(qd_T)`` w.r.t. every control and the initial velocities;
* ``diffvc_fwd``: the same rollout under ``torch.no_grad()``;
* ``mujoco_fwd``: ``mujoco.rollout.rollout`` (MuJoCo's own C rollout, a thread pool over the
  batch), same model file, same initial states and controls, forward only (MuJoCo has no
  gradients) — with 1 and 2 threads.

diffvc runs with torch limited to 1 thread (on this shared 2-core machine torch's second thread
made the same rollout 8-13x slower under load: 95 s vs 8.4 s forward + backward, 1,024 x 100
steps, load average 16). Ratios compare with MuJoCo's faster thread count. Figures are env-steps per second
(``B * T / seconds``), medians over interleaved repeats (every variant's repeat r, then r+1), so
the shared machine's load hits them alike; the load average is recorded. Also reported: agreement
with MuJoCo (float64, max |q - q_mujoco| over 3 s) and the energy drift of the undamped double
pendulum (3 s; semi-implicit Euler at dt = 1 ms and 0.1 ms, RK4 at 1 ms), which are what the
validation tests assert.

    python -m bench.articulated [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffvc.physics import ArticulatedState, load_mjcf, rollout

ASSETS = Path(__file__).resolve().parent.parent / "diffvc" / "physics" / "assets"
CARTPOLE = ASSETS / "cartpole.xml"
PENDULUM = ASSETS / "double_pendulum.xml"


def _problem(B, T, seed=0):
    g = np.random.default_rng(seed)
    q0 = np.stack([g.uniform(-0.5, 0.5, B), g.uniform(-np.pi, np.pi, B)], 1)
    qd0 = g.normal(0.0, 0.5, (B, 2))
    u = g.uniform(-1.0, 1.0, (B, T, 1))
    return q0, qd0, u


def _diffvc(model, dt, q0, qd0, u, threads, grad):
    q0t = torch.tensor(q0, dtype=torch.float32)
    ut_np = torch.tensor(u, dtype=torch.float32).transpose(0, 1).contiguous()  # (T, B, 1)
    T = ut_np.shape[0]

    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ut = ut_np.clone().requires_grad_(grad)
            qd0t = torch.tensor(qd0, dtype=torch.float32).requires_grad_(grad)
            st = ArticulatedState(q0t, qd0t)
            t0 = time.perf_counter()
            with torch.set_grad_enabled(grad):
                final = rollout(model, st, T, dt=dt, controller=lambda s, k: ut[k], checkpoint_every=50 if grad else None)
                if grad:
                    loss = final.q.sum() + final.qd.sum()
                    torch.autograd.grad(loss, [ut, qd0t])
            run.final = final.q.detach().numpy()
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(old)

    return run


def _mujoco(q0, qd0, u, threads):
    import mujoco
    from mujoco import rollout as mjr

    m = mujoco.MjModel.from_xml_path(str(CARTPOLE))
    datas = [mujoco.MjData(m) for _ in range(threads)]
    nstate = mujoco.mj_stateSize(m, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    d = mujoco.MjData(m)
    states = np.zeros((q0.shape[0], nstate))
    for i in range(q0.shape[0]):
        d.qpos[:] = q0[i]
        d.qvel[:] = qd0[i]
        mujoco.mj_getState(m, d, states[i], mujoco.mjtState.mjSTATE_FULLPHYSICS)
    ctrl = np.ascontiguousarray(u)

    def run():
        t0 = time.perf_counter()
        out, _ = mjr.rollout(m, datas, states, ctrl, persistent_pool=False)
        run.final = out[:, -1, 1:3]  # FULLPHYSICS state: time, qpos, qvel, ...
        return time.perf_counter() - t0

    return run


def _agreement():
    import mujoco

    out = {}
    for name, path, q0, seconds in (("double_pendulum", PENDULUM, [1.0, -0.5], 3.0), ("cartpole", CARTPOLE, [0.1, 2.5], 3.0)):
        model, info = load_mjcf(path, dtype=torch.float64, return_info=True)
        m = mujoco.MjModel.from_xml_path(str(path))
        d = mujoco.MjData(m)
        d.qpos[:] = q0
        d.qvel[:] = [0.3, -0.2]
        st = model.initial_state(1, q=torch.tensor(q0, dtype=torch.float64), qd=torch.tensor([0.3, -0.2], dtype=torch.float64))
        dt, worst = info["timestep"], 0.0
        for k in range(int(round(seconds / dt))):
            d.ctrl[:] = 0.5 * np.sin(2 * k * dt)
            mujoco.mj_step(m, d)
            st = model.step(st, dt, torch.tensor(np.array(d.ctrl))[None])
            worst = max(worst, float(np.abs(st.q[0].numpy() - d.qpos).max()))
        out[f"{name}_max_abs_q_error_vs_mujoco_3s"] = worst
    return out


def _energy_drift(dts):
    model = load_mjcf(PENDULUM, dtype=torch.float64)
    out = {}
    for dt in dts:
        st = model.initial_state(1, q=torch.tensor([1.0, -0.5], dtype=torch.float64))
        e0, worst = float(model.energy(st)), 0.0
        with torch.no_grad():
            for k in range(int(round(3.0 / dt))):
                st = model.step(st, dt)
                if k % 10 == 0:
                    worst = max(worst, abs(float(model.energy(st)) - e0))
        out[f"double_pendulum_energy_drift_J_dt{dt:g}"] = worst
    rk4 = model.replace(integrator="rk4")
    st = rk4.initial_state(1, q=torch.tensor([1.0, -0.5], dtype=torch.float64))
    worst = 0.0
    with torch.no_grad():
        for k in range(int(round(3.0 / dts[0]))):
            st = rk4.step(st, dts[0])
            if k % 10 == 0:
                worst = max(worst, abs(float(rk4.energy(st)) - e0))
    out[f"double_pendulum_energy_drift_J_rk4_dt{dts[0]:g}"] = worst
    out["double_pendulum_initial_energy_J"] = e0
    # motion energy scale: E0 minus the energy hanging at rest
    rest = float(model.energy(model.initial_state(1)))
    out["double_pendulum_motion_energy_J"] = e0 - rest
    return out


def run(quick: bool = False) -> dict:
    B, T = 1024, (100 if quick else 1000)
    repeats = 1 if quick else 3
    model, info = load_mjcf(CARTPOLE, dtype=torch.float32, return_info=True)
    dt = info["timestep"]
    q0, qd0, u = _problem(B, T)
    variants = {
        "diffvc_fwd_bwd_1thread": _diffvc(model, dt, q0, qd0, u, 1, True),
        "diffvc_fwd_1thread": _diffvc(model, dt, q0, qd0, u, 1, False),
    }
    try:
        import mujoco  # noqa: F401

        variants["mujoco_fwd_1thread"] = _mujoco(q0, qd0, u, 1)
        variants["mujoco_fwd_2threads"] = _mujoco(q0, qd0, u, 2)
        have_mujoco = True
    except ImportError:
        have_mujoco = False
    times = {k: [] for k in variants}
    load = [os.getloadavg()[0]]
    for r in range(repeats):
        for k, fn in variants.items():
            times[k].append(fn())
        load.append(os.getloadavg()[0])
    res = {"environments": B, "steps": T, "dt": dt, "dtype": "float32", "device": "cpu", "repeats": repeats,
           "load_average_1min": [round(x, 2) for x in load], "mujoco_available": have_mujoco}
    for k, ts in times.items():
        med = statistics.median(ts)
        res[f"{k}_seconds"] = med
        res[f"{k}_env_steps_per_s"] = B * T / med
    if have_mujoco:
        best_mj = max(res["mujoco_fwd_1thread_env_steps_per_s"], res["mujoco_fwd_2threads_env_steps_per_s"])
        res["ratio_diffvc_fwd_bwd_to_mujoco_fwd"] = res["diffvc_fwd_bwd_1thread_env_steps_per_s"] / best_mj
        res["ratio_diffvc_fwd_to_mujoco_fwd"] = res["diffvc_fwd_1thread_env_steps_per_s"] / best_mj
        res["ratio_diffvc_fwd_to_mujoco_fwd_1thread"] = (res["diffvc_fwd_1thread_env_steps_per_s"] /
                                                         res["mujoco_fwd_1thread_env_steps_per_s"])
        # same trajectories (float32 vs MuJoCo's float64): final states of the open-loop rollout
        res["final_q_max_abs_diff_float32_vs_mujoco"] = float(np.abs(variants["diffvc_fwd_1thread"].final -
                                                                    variants["mujoco_fwd_1thread"].final).max())
        res.update(_agreement())
    res.update(_energy_drift([1e-3] if quick else [1e-3, 1e-4]))
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
