"""Bounce: optimise a particle's launch velocity so that it ends at a target after two contacts.

The classic differentiable-physics check (as in Warp's and DiffTaichi's examples): a particle
launched at v0 = (5, -5, 0) from (-0.5, 1, 0) bounces off the ground and a wall (penalty contact,
ke = 1e4, kd = 10, mu = 0.2), 0.6 s at 60 fps with 8 substeps; gradient descent on v0 brings the
final position to (-2, 1.5, 0). The gradient flows back through every contact via the adjoint of
the Warp step kernel.

    diffvc run bounce [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..optim import Free, ParameterSet, optimize
from ..physics import ParticleModel, ParticleState, rollout
from ..viz import plot_curves, save_animation, write_metrics

DESCRIPTION = "particle bouncing off ground and wall: optimise v0 so it ends at a target"

START = (-0.5, 1.0, 0.0)
V0 = (5.0, -5.0, 0.0)
TARGET = (-2.0, 1.5, 0.0)
WALL_X = 0.5
FPS, SUBSTEPS, DURATION = 60, 8, 0.6


def make_model(dtype=torch.float32, device="cpu", ke=1e4, kd=10.0, mu=0.2) -> ParticleModel:
    planes = [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -WALL_X]]  # ground y=0, wall face x=0.5
    return ParticleModel.create(mass=[1.0], radius=0.1, planes=planes, ke=ke, kd=kd, mu=mu,
                                dtype=dtype, device=device)


def simulate(v0: torch.Tensor, model: ParticleModel, frames: int = int(round(DURATION * FPS)),
             substeps: int = SUBSTEPS, record: bool = False):
    """Roll out the particle from START with initial velocity ``v0`` (3,). Returns the final
    position (3,) and, if ``record``, the positions at every frame (frames+1, 3)."""
    x0 = torch.tensor([START], dtype=v0.dtype, device=v0.device)
    state = ParticleState(x0, v0.reshape(1, 3))
    dt = 1.0 / (FPS * substeps)
    # rollout of the model runs its fused segment: every step of the flight is one replayed Warp
    # launch and the whole flight one autograd node (a step per node cost ~30x more)
    if not record:
        return rollout(model, state, frames, dt=dt, substeps=substeps).x[0]
    final, states = rollout(model, state, frames, dt=dt, substeps=substeps, record=True)
    return final.x[0], torch.stack([s.x[0] for s in states])


def _frames(trajs: list[np.ndarray], labels: list[str], size=(360, 240)) -> list[np.ndarray]:
    """One RGB frame per recorded state: the trajectories so far, ground, wall and target.

    The axes, ground, wall, target and legend are drawn once; each frame restores that
    background and draws only the moving artists (matplotlib blitting), ~1 ms a frame instead
    of a full figure layout and draw (~0.1 s a frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size[0] / 80, size[1] / 80), dpi=80)
    ax.axhline(0, color="k", lw=2)
    ax.axvline(WALL_X, color="k", lw=2)
    ax.plot(*TARGET[:2], "r*", ms=12)
    cols = ["tab:gray", "tab:blue"]
    paths = [ax.plot([], [], color=c, lw=1, label=lab, animated=True)[0] for lab, c in zip(labels, cols)]
    dots = [ax.plot([], [], "o", color=c, ms=7, animated=True)[0] for c in cols]
    ax.set_xlim(-2.6, 1.0)
    ax.set_ylim(-0.1, 2.2)
    ax.set_aspect("equal")
    legend = ax.legend(handles=paths, loc="upper left", fontsize=7)
    legend.set_animated(True)
    fig.tight_layout(pad=1.08)
    canvas = fig.canvas
    canvas.draw()                               # background: everything not animated
    background = canvas.copy_from_bbox(fig.bbox)
    out = []
    n = max(len(t) for t in trajs)
    for k in range(n):
        canvas.restore_region(background)
        for t, path, dot in zip(trajs, paths, dots):
            j = min(k, len(t) - 1)
            path.set_data(t[: j + 1, 0], t[: j + 1, 1])
            dot.set_data(t[j: j + 1, 0], t[j: j + 1, 1])
            ax.draw_artist(path)
            ax.draw_artist(dot)
        ax.draw_artist(legend)                  # on top of the paths, as in a full draw
        out.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return out


def run(cfg) -> dict:
    dtype = torch.float32
    model = make_model(dtype, cfg.device)
    target = torch.tensor(TARGET, dtype=dtype, device=cfg.device)
    params = ParameterSet(v0=Free(V0, dtype=dtype, device=cfg.device))
    iters = cfg.iterations(full=300, quick=200)

    with torch.no_grad():
        _, traj0 = simulate(params["v0"], model, record=True)

    def loss_fn():
        return ((simulate(params["v0"], model) - target) ** 2).sum()

    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=0.2, lr_final=0.002, method="adam",
                    progress=cfg.progress, desc="bounce", tol=1e-6, patience=50)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final, traj1 = simulate(params["v0"], model, record=True)
    dist = float((final - target).norm())

    v0_hist = np.array([h["v0"] for h in hist.params])
    plot_curves(cfg.out / "curves.png", {"loss": hist.loss, "v0.x": v0_hist[:, 0], "v0.y": v0_hist[:, 1]},
                title="bounce: optimise initial velocity")
    frames = _frames([traj0.cpu().numpy(), traj1.cpu().numpy()], ["initial v0", "optimised v0"])
    save_animation(cfg.out / "trajectory.gif", frames, fps=30, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(cfg.out / "trajectory.png", frames[-1])
    v0 = params["v0"].detach().cpu().tolist()
    contacts = {"ground": bool((traj1[:, 1] < 0.11).any()), "wall": bool((traj1[:, 0] > WALL_X - 0.11).any())}
    metrics = {
        "final_distance": dist,
        "iterations": hist.iterations,
        "seconds": seconds,
        "final_loss": hist.loss[-1],
        "initial_loss": hist.loss[0],
        "v0_x": v0[0],
        "v0_y": v0[1],
        "v0_z": v0[2],
        "touches_ground": str(contacts["ground"]),
        "touches_wall": str(contacts["wall"]),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
