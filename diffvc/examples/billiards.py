"""Billiards: choose the cue ball's initial velocity so that the last ball of a row stops at a target.

Four balls (r = 5 cm, 0.2 kg) sit in a row on the table (the ground plane). The cue ball is
launched with velocity (vx, 0, vz); it slides, starts rolling (ground friction at the contact
point), hits the next ball, which hits the next, and so on (sphere-sphere penalty contact,
nearly elastic); rolling resistance is modelled by linear and angular damping so every ball
comes to rest within the 2 s simulated. The gradient of the last ball's resting position w.r.t.
the cue velocity flows back through every collision and every frictional contact
(:func:`diffvc.physics.rigid.rigid_step`, Warp kernels, with contact smoothing so that the
timing of the impacts is differentiated correctly) and L-BFGS moves the ball onto the target.

    diffvc run billiards [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..optim import Free, ParameterSet, optimize
from ..physics import rollout
from ..physics.rigid import RigidBodyModel, RigidBodyState, rigid_step
from ..viz import figure_to_array, plot_curves, save_animation, write_metrics

DESCRIPTION = "billiards: choose the cue ball's velocity so the last ball of a row stops at a target"

RADIUS, MASS = 0.05, 0.2
BALLS_X = (0.0, 0.3, 0.41, 0.52)  # cue ball, then three object balls in a row along +x
TARGET = (0.85, 0.0)  # (x, z) where the last ball should come to rest
V0 = (1.0, 0.03)  # initial guess of the cue velocity (vx, vz), m/s
DT, SUBSTEPS, FRAMES = 2.5e-3, 8, 125  # 2.5 s


def make_model(dtype=torch.float32, device="cpu") -> RigidBodyModel:
    """Balls on a table: ground contact with sliding friction, nearly elastic ball-ball contact."""
    n = len(BALLS_X)
    return RigidBodyModel.spheres(
        RADIUS, [MASS] * n, ke=2e3, kd=5.0, mu=0.2, friction_smoothing=0.05, contact_smoothing=2e-3,
        pair_ke=2e3, pair_kd=0.2, pair_mu=0.05, pair_friction_smoothing=0.05, pair_contact_smoothing=5e-3,
        damping=(1.0, 2.0), dtype=dtype, device=device)


def initial_state(v0: torch.Tensor, model: RigidBodyModel) -> RigidBodyState:
    """Balls resting on the table (at their contact equilibrium height), cue velocity (vx, vz)."""
    dtype, device = model.mass.dtype, model.mass.device
    n = len(BALLS_X)
    y = RADIUS - MASS * 9.81 / 2e3  # resting penetration mg / ke (ignoring the smoothing offset)
    x = torch.tensor([[bx, y, 0.0] for bx in BALLS_X], dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    cue = torch.stack([v0[0], zero, v0[1]])
    v = torch.cat([cue[None], torch.zeros(n - 1, 3, dtype=dtype, device=device)])
    st = RigidBodyState.create(x, dtype=dtype, device=device)
    return RigidBodyState(st.x, st.q, v, st.w)


def simulate(v0: torch.Tensor, model: RigidBodyModel, frames: int | None = None, record: bool = False):
    """Final (x, z) of every ball (B, 2) after ``frames`` frames (default :data:`FRAMES`); with
    ``record`` also the (x, z) per frame (frames+1, B, 2) and the final state."""
    frames = FRAMES if frames is None else frames
    state = initial_state(v0, model)

    def step(s):
        return rigid_step(model, s, DT)

    if record:
        final, traj = rollout(step, state, frames, substeps=SUBSTEPS, observe=lambda s, k: s.x[:, [0, 2]])
        traj = torch.cat([state.x[None, :, [0, 2]], traj])
        return final.x[:, [0, 2]], traj, final
    final = rollout(step, state, frames, substeps=SUBSTEPS)
    return final.x[:, [0, 2]]


def _frames(trajs: list[np.ndarray], labels: list[str], size=(560, 150)) -> list[np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    out = []
    colors = ["white", "gold", "tab:red", "tab:blue", "tab:green", "tab:purple"]
    n = max(len(t) for t in trajs)
    for k in range(0, n, 2):
        fig, axes = plt.subplots(len(trajs), 1, figsize=(size[0] / 80, size[1] * len(trajs) / 80), dpi=80)
        for ax, t, lab in zip(np.atleast_1d(axes), trajs, labels):
            ax.set_facecolor("#1f6f3f")
            j = min(k, len(t) - 1)
            for b in range(t.shape[1]):
                ax.plot(t[: j + 1, b, 0], t[: j + 1, b, 1], color=colors[b % len(colors)], lw=0.8, alpha=0.6)
                ax.add_patch(Circle((t[j, b, 0], t[j, b, 1]), RADIUS, color=colors[b % len(colors)], ec="k"))
            ax.add_patch(Circle(TARGET, 0.02, color="k"))
            ax.plot(*TARGET, "x", color="w", ms=8)
            ax.set_xlim(-0.15, 1.25)
            ax.set_ylim(-0.25, 0.25)
            ax.set_aspect("equal")
            ax.set_title(lab, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        out.append(figure_to_array(fig))
    return out


def run(cfg) -> dict:
    dtype = torch.float32
    model = make_model(dtype, cfg.device)
    target = torch.tensor(TARGET, dtype=dtype, device=cfg.device)
    params = ParameterSet(v0=Free(V0, dtype=dtype, device=cfg.device))
    iters = cfg.iterations(full=20, quick=8)

    with torch.no_grad():
        _, traj0, _ = simulate(params["v0"], model, record=True)

    def loss_fn():
        return ((simulate(params["v0"], model)[-1] - target) ** 2).sum()

    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=1.0, method="lbfgs", progress=cfg.progress, desc="billiards",
                    tol=1e-6, patience=3)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final, traj1, state1 = simulate(params["v0"], model, record=True)
    dist = float((final[-1] - target).norm())

    v0_hist = np.array([h["v0"] for h in hist.params])
    plot_curves(cfg.out / "curves.png", {"loss": hist.loss, "v0.x": v0_hist[:, 0], "|v0.z|": np.abs(v0_hist[:, 1])},
                title="billiards: optimise the cue velocity")
    frames = _frames([traj0.cpu().numpy(), traj1.cpu().numpy()],
                     ["initial cue velocity", "optimised cue velocity"])
    save_animation(cfg.out / "table.gif", frames, fps=25, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(cfg.out / "table_before.png", frames[0])
    iio.imwrite(cfg.out / "table_after.png", frames[-1])
    v0 = params["v0"].detach().cpu().tolist()
    metrics = {
        "final_distance": dist,
        "target_x": TARGET[0],
        "target_z": TARGET[1],
        "last_ball_x": float(final[-1, 0]),
        "last_ball_z": float(final[-1, 1]),
        "last_ball_final_speed": float(state1.v[-1].norm()),
        "initial_distance": float((traj0[-1, -1] - target).norm()),
        "iterations": hist.iterations,
        "seconds": seconds,
        "initial_loss": hist.loss[0],
        "final_loss": hist.loss[-1],
        "v0_x": v0[0],
        "v0_z": v0[1],
        "balls": len(BALLS_X),
        "simulated_seconds": DT * SUBSTEPS * FRAMES,
        "steps": SUBSTEPS * FRAMES,
        "target_reached": str(dist < 0.01),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
