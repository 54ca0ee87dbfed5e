"""diffmpm: an MPM soft robot learns its actuation to move right (DiffTaichi's ``diffmpm.py``).

The scene, material and task are DiffTaichi's: a 2D robot of 2,976 particles (a 0.3 x 0.1 body
on four 0.05 x 0.1 legs, each leg an actuator) on a 128^2 grid (dx = 1/128), dt = 1e-3 s,
fixed-corotated material with mu = lam = 10 (E = 25, nu = 0.25), particle mass 1 and volume 1,
gravity 3.8 down, walls 3 cells thick that stop any node moving into them. Actuator i's signal is
open-loop, ``a_i(t) = tanh(sum_j W_ij sin(20 t + 2 pi j / 4) + b_i)``, times the strength 4,
applied as the stress a F e_y e_y^T F^T in its leg's particles. The loss is minus the mean x of
the particles after 1,023 steps; plain gradient descent (lr 0.1) on W (4 x 4) and b (4), as in
DiffTaichi. The rollout runs in fused Warp segments of 64 steps that keep only their input and
recompute in backward (checkpointing). The animation renders the particles through the pipeline
(a points binding, ``render_trajectory(..., renderer="splat")``).

    diffvc run diffmpm [--quick]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..optim import Free, ParameterSet, optimize
from ..physics import MPMModel, MPMState
from ..viz import plot_curves, save_animation, tile, write_metrics
from . import single_threaded

DESCRIPTION = "DiffTaichi's diffmpm: an MPM soft robot learns open-loop actuation to move right"

N_GRID, DT, STEPS = 128, 1e-3, 1024  # DiffTaichi advances steps - 1 = 1,023 times
GRAVITY, ACT_STRENGTH, OMEGA, N_SIN = 3.8, 4.0, 20.0, 4
SEGMENT = 64  # steps per checkpointed segment
VIS_STEPS, VIS_EVERY = 1500, 31  # the animation's rollout (DiffTaichi shows 1,500 steps) and frame spacing


def robot_scene(dtype=torch.float32, device="cpu"):
    """DiffTaichi's ``robot(scene)``: particle positions (N, 2) and actuator ids (N,) (-1: body)."""
    dx = 1.0 / N_GRID
    xs, ids = [], []
    ox, oy = 0.1, 0.03

    def rect(x, y, w, h, act):
        wc, hc = int(w / dx) * 2, int(h / dx) * 2
        i, j = np.meshgrid(np.arange(wc), np.arange(hc), indexing="ij")
        xs.append(np.stack([x + (i.ravel() + 0.5) * (w / wc) + ox, y + (j.ravel() + 0.5) * (h / hc) + oy], 1))
        ids.append(np.full(wc * hc, act))

    rect(0.0, 0.1, 0.3, 0.1, -1)
    rect(0.0, 0.0, 0.05, 0.1, 0)
    rect(0.05, 0.0, 0.05, 0.1, 1)
    rect(0.2, 0.0, 0.05, 0.1, 2)
    rect(0.25, 0.0, 0.05, 0.1, 3)
    x = torch.as_tensor(np.concatenate(xs), dtype=dtype, device=device)
    return x, torch.as_tensor(np.concatenate(ids), device=device)


def robot_model(x: torch.Tensor) -> MPMModel:
    """DiffTaichi's material and walls for the particles ``x``: mu = lam = 10 Pa, m = 1, V = 1."""
    return MPMModel.create(x, (N_GRID, N_GRID), 1.0 / N_GRID, mass=1.0, volume=1.0, E=25.0, nu=0.25,
                           material="fixed_corotated", gravity=(0.0, -GRAVITY), walls="separate",
                           friction=math.inf, bound=3)


def actuation(weights: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor, steps: int, start: int = 0) -> torch.Tensor:
    """Per-step, per-particle control (steps, N) in Pa for steps start .. start + steps - 1:
    DiffTaichi's sin-wave actuators."""
    t = torch.arange(start, start + steps, dtype=weights.dtype, device=weights.device)[:, None] * DT
    phase = 2 * math.pi / N_SIN * torch.arange(N_SIN, dtype=weights.dtype, device=weights.device)
    waves = torch.sin(OMEGA * t + phase)  # (steps, N_SIN)
    act = torch.tanh(waves @ weights.T + bias)  # (steps, n_act)
    n_act = weights.shape[0]
    # actuator -> particle as a matmul with a (n_act, N) one-hot map (its backward is a matmul too)
    onehot = (ids[None, :] == torch.arange(n_act, device=ids.device)[:, None]).to(weights.dtype)
    return act @ (onehot * ACT_STRENGTH)


def simulate(model: MPMModel, state: MPMState, control, steps: int, segment: int = SEGMENT,
             record_every: int | None = None):
    """Roll out ``steps`` steps in checkpointed fused segments; ``control(start, n)`` gives the
    (n, N) control of steps start .. start + n - 1 (computed per segment, so its backward stays
    per segment too). Returns the final state and, if ``record_every``, particle positions every
    that many steps (list of (N, 2))."""
    frames = [state.x.detach()] if record_every else None
    k = 0
    while k < steps:
        m = min(segment, steps - k)
        if record_every:
            state, inter = model.segment(state, DT, m, control=control(k, m), return_all=True)
            frames += [s.x.detach() for j, s in enumerate(inter) if (k + j + 1) % record_every == 0]
        else:
            state, _ = model.segment(state, DT, m, control=control(k, m), recompute=True)
        k += m
    return (state, frames) if record_every else state


PALETTE = ((0.25, 0.25, 0.28), (0.85, 0.25, 0.2), (0.95, 0.6, 0.1), (0.2, 0.6, 0.3), (0.2, 0.4, 0.85))


def robot_points(ids: torch.Tensor, dtype=torch.float32):
    """A binding for the pipeline: particle positions (N, 2) -> :class:`~diffvc.pipeline.Points`
    in the z = 0 plane (body grey, each actuated leg its own colour), plus a row of ground points
    along the top of the y-low wall band."""
    from ..pipeline import Points

    n = ids.shape[0]
    colors = torch.tensor(PALETTE, dtype=dtype)[(ids + 1).long()]
    gx = torch.linspace(0.0, 1.0, 200, dtype=dtype)
    ground = torch.stack([gx, torch.full_like(gx, 3.0 / N_GRID - 0.004), torch.zeros_like(gx)], 1)
    radii = torch.cat([torch.full((n,), 0.6 / N_GRID, dtype=dtype), torch.full((200,), 0.004, dtype=dtype)])
    cols = torch.cat([colors, torch.zeros(200, 3, dtype=dtype)])
    opac = torch.ones(n + 200, dtype=dtype)

    def bind(x2: torch.Tensor):
        x3 = torch.cat([x2.to(dtype), torch.zeros(x2.shape[0], 1, dtype=dtype)], 1)
        return Points(torch.cat([x3, ground]), radii, cols, opac)

    return bind


def render_video(trajs: list, ids: torch.Tensor, width: int = 384, height: int = 128) -> np.ndarray:
    """Render particle trajectories (lists of (N, 2) positions) through the pipeline
    (``Scene.add_points`` + ``render_trajectory(..., renderer="splat")``), one orthographic view of
    x in [0, 1], y in [0, 1/3]. Returns (T, len(trajs), H, W, 3) linear RGB."""
    from ..pipeline import Scene, render_trajectory
    from ..render import Cameras

    cams = Cameras.look_at([[0.5, height / width / 2, 2.0]], target=(0.5, height / width / 2, 0.0), width=width,
                           height=height, orthographic=True, ortho_scale=height / width)
    scene = Scene(cams, background=torch.ones(3))
    scene.add_points("robot", robot_points(ids))
    return np.stack([render_trajectory(scene, tr, renderer="splat")[:, 0].clamp(0, 1).numpy() for tr in trajs], 1)


# torch's share here is small (actuation signals); its 2-thread pool cost seconds per iteration
# on the loaded 2-core dev machine, so this example runs torch on one thread
@single_threaded
def run(cfg) -> dict:
    dtype = torch.float32
    steps = STEPS - 1
    x0, ids = robot_scene(dtype, cfg.device)
    model = robot_model(x0)
    state0 = model.initial_state(x0)
    gen = np.random.RandomState(cfg.seed)  # DiffTaichi: np.random.randn() * 0.01 per weight
    params = ParameterSet(weights=Free(gen.randn(4, N_SIN) * 0.01, dtype=dtype, device=cfg.device),
                          bias=Free(np.zeros(4), dtype=dtype, device=cfg.device))
    iters = cfg.iterations(full=100, quick=10)
    x_start = float(x0[:, 0].mean())

    def loss_fn():
        w, b = params["weights"], params["bias"]
        return -simulate(model, state0, lambda k, m: actuation(w, b, ids, m, k), steps).x[:, 0].mean()

    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=0.1, method="sgd", progress=cfg.progress, desc="diffmpm")
    seconds = time.perf_counter() - t0

    # visualise (like DiffTaichi, a longer 1,500-step rollout) with the initial and learned actuation;
    # frames every 31 steps, so frame 33 is the loss's step 1,023 (k_loss)
    vis_steps, every = VIS_STEPS, VIS_EVERY
    w_init = torch.as_tensor(hist.params[0]["weights"], dtype=dtype)
    b_init = torch.as_tensor(hist.params[0]["bias"], dtype=dtype)
    with torch.no_grad():
        u0 = actuation(w_init, b_init, ids, vis_steps)
        u1 = actuation(params["weights"], params["bias"], ids, vis_steps)
        _, tr0 = simulate(model, state0, lambda k, m: u0[k:k + m], vis_steps, record_every=every)
        _, tr1 = simulate(model, state0, lambda k, m: u1[k:k + m], vis_steps, record_every=every)
    k_loss = min(steps // every, len(tr0) - 1)
    video = render_video([tr0, tr1], ids.cpu())
    frames = [tile(list(v), cols=1, labels=[f"initial actuation  t = {k * every * DT:.2f} s  "
                                            f"mean x = {float(tr0[k][:, 0].mean()):.3f}",
                                            f"learned actuation  t = {k * every * DT:.2f} s  "
                                            f"mean x = {float(tr1[k][:, 0].mean()):.3f}"])
              for k, v in enumerate(video)]
    save_animation(cfg.out / "robot.gif", frames, fps=20, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(cfg.out / "robot.png", frames[k_loss])
    plot_curves(cfg.out / "curves.png", {"mean x after 1,023 steps (= -loss)": [-l for l in hist.loss]},
                title="diffmpm: learning to move right", logy=False)
    metrics = {
        "particles": int(x0.shape[0]),
        "grid": N_GRID,
        "steps": steps,
        "iterations": hist.iterations,
        "seconds": seconds,
        "seconds_per_iteration": seconds / max(hist.iterations, 1),
        "initial_loss": hist.loss[0],
        "final_loss": hist.loss[-1],
        "start_mean_x": x_start,
        "distance_initial_actuation": float(tr0[k_loss][:, 0].mean()) - x_start,
        "distance_learned_actuation": float(tr1[k_loss][:, 0].mean()) - x_start,
        "distance_1500_steps_initial": float(tr0[-1][:, 0].mean()) - x_start,
        "distance_1500_steps_learned": float(tr1[-1][:, 0].mean()) - x_start,
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
