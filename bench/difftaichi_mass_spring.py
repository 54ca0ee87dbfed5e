"""DiffTaichi's mass-spring robot 0 (``examples/mass_spring.py`` of taichi-dev/difftaichi with
``robotA`` of ``mass_spring_robot_config.py``), forward + backward + update per iteration:
DiffTaichi itself (pip ``taichi`` in a separate interpreter, when one is found) against diffvc on
the same robot.

The robot: 6 masses, 11 springs (stiffness 14000, actuation 0.1), 681 steps of dt = 0.004 s,
a closed-loop controller (10 sine waves + each mass's offset from the centre and velocity + the
goal offset -> 32 tanh hidden units -> 11 tanh actuations), loss = minus the head's final x,
update = the gradient step normalised to 0.2 (as DiffTaichi's ``optimize``).

* ``difftaichi``: DiffTaichi's script as published (its public ``train`` configuration:
  ``use_toi=True``, CPU backend, float32), GUI calls removed, timed per iteration
  (clear + ``ti.ad.Tape`` forward + backward + the update loop), in the interpreter named by
  :func:`bench.taichi_python` (``$DIFFTAICHI_PYTHON``, else ``.venv-taichi`` made by
  ``make bench-anchors``).
* ``diffvc``: the same masses, springs, controller, steps, loss and update on diffvc's public
  API: a :class:`~diffvc.physics.SpringModel` in the z = 0 plane (spring stiffness as ke, unit
  masses, ground plane y = 0.1, gravity -4.8), the 681 steps with the closed-loop controller
  fused in Warp by ``SpringModel.controlled_segment`` (one autograd node).
  ``diffvc_torch_twin``: the same in plain torch (``mlp_controller_torch``), one iteration. Its physics is diffvc's (penalty
  ground contact with friction, spring damping) rather than DiffTaichi's impulse model with
  velocity projection, so the losses differ; the problem size and work per step are the same.

Medians over iterations in ms; ``ratio`` = diffvc / DiffTaichi (lower is better).

    python -m bench.difftaichi_mass_spring [--quick]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

STEPS = 2048 // 3 - 1  # DiffTaichi's forward runs t = 1 .. steps - 1: 681 steps
DT = 0.004
N_SIN, N_HIDDEN, OMEGA = 10, 32, 10.0
GROUND, GRAVITY, DAMPING = 0.1, -4.8, 15.0


def robot_a():
    """DiffTaichi's ``robotA``: (objects (6, 2), springs [(a, b, rest, stiffness, actuation)])."""
    objects = [[0.2, 0.1], [0.3, 0.13], [0.4, 0.1], [0.2, 0.2], [0.3, 0.2], [0.4, 0.2]]
    links = [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (2, 5), (0, 4), (1, 4), (2, 4), (3, 1), (5, 1)]
    springs = [(a, b, math.dist(objects[a], objects[b]), 14000.0, 0.1) for a, b in links]
    return objects, springs


_TAICHI = r'''
import json, math, sys, time
import numpy as np
import taichi as ti
ti.init(arch=ti.cpu, default_fp=ti.f32)
objects, springs = json.loads(sys.argv[1])
iters = int(sys.argv[2])
np.random.seed(0)
real = ti.f32
max_steps = 4096
steps = 2048 // 3
scalar = lambda: ti.field(dtype=real)
vec = lambda: ti.Vector.field(2, dtype=real)
loss = scalar(); x = vec(); v = vec(); v_inc = vec(); goal = vec(); center = vec()
head_id = 0; ground_height = 0.1; gravity = -4.8; spring_omega = 10; damping = 15
n_objects = len(objects); n_springs = len(springs)
spring_anchor_a = ti.field(ti.i32); spring_anchor_b = ti.field(ti.i32)
spring_length = scalar(); spring_stiffness = scalar(); spring_actuation = scalar()
n_sin_waves = 10; n_hidden = 32
weights1 = scalar(); bias1 = scalar(); weights2 = scalar(); bias2 = scalar(); hidden = scalar(); act = scalar()
def n_input_states():
    return n_sin_waves + 4 * n_objects + 2
ti.root.dense(ti.i, max_steps).dense(ti.j, n_objects).place(x, v, v_inc)
ti.root.dense(ti.i, n_springs).place(spring_anchor_a, spring_anchor_b, spring_length, spring_stiffness, spring_actuation)
ti.root.dense(ti.ij, (n_hidden, n_input_states())).place(weights1)
ti.root.dense(ti.i, n_hidden).place(bias1)
ti.root.dense(ti.ij, (n_springs, n_hidden)).place(weights2)
ti.root.dense(ti.i, n_springs).place(bias2)
ti.root.dense(ti.ij, (max_steps, n_hidden)).place(hidden)
ti.root.dense(ti.ij, (max_steps, n_springs)).place(act)
ti.root.dense(ti.i, max_steps).place(center)
ti.root.place(loss, goal)
ti.root.lazy_grad()
dt = 0.004

@ti.kernel
def compute_center(t: ti.i32):
    for _ in range(1):
        c = ti.Vector([0.0, 0.0])
        for i in ti.static(range(n_objects)):
            c += x[t, i]
        center[t] = (1.0 / n_objects) * c

@ti.kernel
def nn1(t: ti.i32):
    for i in range(n_hidden):
        actuation = 0.0
        for j in ti.static(range(n_sin_waves)):
            actuation += weights1[i, j] * ti.sin(spring_omega * t * dt + 2 * math.pi / n_sin_waves * j)
        for j in ti.static(range(n_objects)):
            offset = x[t, j] - center[t]
            actuation += weights1[i, j * 4 + n_sin_waves] * offset[0] * 0.05
            actuation += weights1[i, j * 4 + n_sin_waves + 1] * offset[1] * 0.05
            actuation += weights1[i, j * 4 + n_sin_waves + 2] * v[t, j][0] * 0.05
            actuation += weights1[i, j * 4 + n_sin_waves + 3] * v[t, j][1] * 0.05
        actuation += weights1[i, n_objects * 4 + n_sin_waves] * (goal[None][0] - center[t][0])
        actuation += weights1[i, n_objects * 4 + n_sin_waves + 1] * (goal[None][1] - center[t][1])
        actuation += bias1[i]
        actuation = ti.tanh(actuation)
        hidden[t, i] = actuation

@ti.kernel
def nn2(t: ti.i32):
    for i in range(n_springs):
        actuation = 0.0
        for j in ti.static(range(n_hidden)):
            actuation += weights2[i, j] * hidden[t, j]
        actuation += bias2[i]
        actuation = ti.tanh(actuation)
        act[t, i] = actuation

@ti.kernel
def apply_spring_force(t: ti.i32):
    for i in range(n_springs):
        a = spring_anchor_a[i]
        b = spring_anchor_b[i]
        pos_a = x[t, a]
        pos_b = x[t, b]
        dist = pos_a - pos_b
        length = dist.norm() + 1e-4
        target_length = spring_length[i] * (1.0 + spring_actuation[i] * act[t, i])
        impulse = dt * (length - target_length) * spring_stiffness[i] / length * dist
        ti.atomic_add(v_inc[t + 1, a], -impulse)
        ti.atomic_add(v_inc[t + 1, b], impulse)

@ti.kernel
def advance_toi(t: ti.i32):
    for i in range(n_objects):
        s = math.exp(-dt * damping)
        old_v = s * v[t - 1, i] + dt * gravity * ti.Vector([0.0, 1.0]) + v_inc[t, i]
        old_x = x[t - 1, i]
        new_x = old_x + dt * old_v
        toi = 0.0
        new_v = old_v
        if new_x[1] < ground_height and old_v[1] < -1e-4:
            toi = -(old_x[1] - ground_height) / old_v[1]
            new_v = ti.Vector([0.0, 0.0])
        new_x = old_x + toi * old_v + (dt - toi) * new_v
        v[t, i] = new_v
        x[t, i] = new_x

@ti.kernel
def compute_loss(t: ti.i32):
    loss[None] = -x[t, head_id][0]

@ti.kernel
def clear_states():
    for t in range(0, max_steps):
        for i in range(0, n_objects):
            v_inc[t, i] = ti.Vector([0.0, 0.0])

def forward():
    goal[None] = [0.9, 0.2]
    for t in range(1, steps):
        compute_center(t - 1)
        nn1(t - 1)
        nn2(t - 1)
        apply_spring_force(t - 1)
        advance_toi(t)
    loss[None] = 0
    compute_loss(steps - 1)

for i in range(n_objects):
    x[0, i] = objects[i]
for i in range(n_springs):
    s = springs[i]
    spring_anchor_a[i] = s[0]; spring_anchor_b[i] = s[1]; spring_length[i] = s[2]
    spring_stiffness[i] = s[3]; spring_actuation[i] = s[4]
for i in range(n_hidden):
    for j in range(n_input_states()):
        weights1[i, j] = np.random.randn() * math.sqrt(2 / (n_hidden + n_input_states())) * 2
for i in range(n_springs):
    for j in range(n_hidden):
        weights2[i, j] = np.random.randn() * math.sqrt(2 / (n_hidden + n_springs)) * 3
times, losses = [], []
for it in range(iters + 1):
    t0 = time.perf_counter()
    clear_states()
    with ti.ad.Tape(loss):
        forward()
    total_norm_sqr = 0
    for i in range(n_hidden):
        for j in range(n_input_states()):
            total_norm_sqr += weights1.grad[i, j]**2
        total_norm_sqr += bias1.grad[i]**2
    for i in range(n_springs):
        for j in range(n_hidden):
            total_norm_sqr += weights2.grad[i, j]**2
        total_norm_sqr += bias2.grad[i]**2
    scale = 0.2 / (total_norm_sqr**0.5 + 1e-6)
    for i in range(n_hidden):
        for j in range(n_input_states()):
            weights1[i, j] -= scale * weights1.grad[i, j]
        bias1[i] -= scale * bias1.grad[i]
    for i in range(n_springs):
        for j in range(n_hidden):
            weights2[i, j] -= scale * weights2.grad[i, j]
        bias2[i] -= scale * bias2.grad[i]
    t1 = time.perf_counter()
    losses.append(float(loss[None]))
    if it > 0:  # the first iteration compiles the kernels
        times.append(t1 - t0)
print(json.dumps({"times": times, "losses": losses, "taichi": ".".join(map(str, ti.__version__))}))
'''


def run_difftaichi(iters: int):
    from bench import taichi_python

    py = taichi_python()
    if py is None or not os.path.exists(py):
        return {"skipped": f"no DiffTaichi interpreter (make bench-anchors, or DIFFTAICHI_PYTHON=... naming a "
                           f"Python with taichi); tried {py}"}
    objects, springs = robot_a()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_TAICHI)
    try:
        out = subprocess.run([py, f.name, json.dumps([objects, springs]), str(iters)], capture_output=True, text=True,
                             timeout=3600)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        return {"skipped": f"DiffTaichi failed: {out.stderr.strip()[-400:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _diffvc_setup(dtype=torch.float32):
    from diffvc.physics import ParticleState, SpringModel

    objects, springs = robot_a()
    x0 = torch.tensor([[px, py, 0.0] for px, py in objects], dtype=dtype)
    pairs = torch.tensor([[a, b] for a, b, *_ in springs])
    model = SpringModel.create(x0, pairs, mass=1.0, ke=torch.tensor([s[3] for s in springs], dtype=dtype), kd=1.0,
                               gain=torch.tensor([s[4] for s in springs], dtype=dtype),
                               planes=[[0.0, 1.0, 0.0, GROUND]], contact_ke=1e4, contact_kd=30.0, mu=1.0,
                               friction_smoothing=0.1, gravity=(0.0, GRAVITY, 0.0), dtype=dtype)
    n, s = x0.shape[0], len(springs)
    n_in = N_SIN + 4 * n + 2
    gen = np.random.RandomState(0)
    w1 = torch.tensor(gen.randn(N_HIDDEN, n_in) * math.sqrt(2 / (N_HIDDEN + n_in)) * 2, dtype=dtype)
    w2 = torch.tensor(gen.randn(s, N_HIDDEN) * math.sqrt(2 / (N_HIDDEN + s)) * 3, dtype=dtype)
    params = [w1, torch.zeros(N_HIDDEN, dtype=dtype), w2, torch.zeros(s, dtype=dtype)]
    phases = 2 * math.pi / N_SIN * torch.arange(N_SIN, dtype=dtype)
    goal = torch.tensor([0.9, 0.2], dtype=dtype)
    return model, ParticleState(x0, torch.zeros_like(x0)), params, phases, goal


def run_diffvc(iters: int, fused: bool = True):
    from diffvc.physics.springs import mlp_controller_torch

    model, s0, params, phases, goal = _diffvc_setup()
    params = [p.requires_grad_() for p in params]
    waves = torch.sin(OMEGA * DT * torch.arange(STEPS, dtype=phases.dtype)[:, None] + phases)
    goal3 = torch.cat([goal, goal.new_zeros(1)])
    times, cpu, losses = [], [], []
    for it in range(iters + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()
        if fused:
            final, _ = model.controlled_segment(s0, DT, STEPS, waves, goal3, *params, dims=2, scale=0.05)
        else:
            final, _ = mlp_controller_torch(model, s0, DT, STEPS, waves, goal3, *params, dims=2, scale=0.05)
        loss = -final.x[0, 0]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            scale = 0.2 / (sum(float((g * g).sum()) for g in grads) ** 0.5 + 1e-6)
            for p, g in zip(params, grads):
                p -= scale * g
        t1 = time.perf_counter()
        c1 = time.process_time()
        losses.append(float(loss.detach()))
        if it > 0:
            times.append(t1 - t0)
            cpu.append(c1 - c0)
    return {"times": times, "cpu": cpu, "losses": losses}


def run(quick: bool = False) -> dict:
    iters = 3 if quick else 10
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few dozen elements: intra-op threads only add overhead
    try:
        ours = run_diffvc(iters)
        twin = run_diffvc(1, fused=False)
    finally:
        torch.set_num_threads(old)
    ti = run_difftaichi(iters)
    out = {"robot": "difftaichi robotA (robot 0)", "masses": 6, "springs": 11, "steps": STEPS, "dt": DT,
           "iterations_timed": iters, "load_average": os.getloadavg(),
           "diffvc_ms_per_iteration": 1e3 * statistics.median(ours["times"]),
           "diffvc_min_ms": 1e3 * min(ours["times"]), "diffvc_losses": ours["losses"],
           "diffvc_cpu_ms_per_iteration": 1e3 * statistics.median(ours["cpu"]),
           "diffvc_torch_threads": 1, "diffvc_torch_twin_ms_per_iteration": 1e3 * statistics.median(twin["times"])}
    if "times" in ti:
        out["difftaichi_ms_per_iteration"] = 1e3 * statistics.median(ti["times"])
        out["difftaichi_min_ms"] = 1e3 * min(ti["times"])
        out["difftaichi_losses"] = ti["losses"]
        out["difftaichi_version"] = ti.get("taichi")
        out["ratio_diffvc_to_difftaichi"] = out["diffvc_ms_per_iteration"] / out["difftaichi_ms_per_iteration"]
    else:
        out["difftaichi"] = ti
    out["targets"] = {"diffvc_ms_per_iteration": 300.0, "note": "lower is better; ratio = diffvc / DiffTaichi"}
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
