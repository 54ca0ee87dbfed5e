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
from ..viz import save_animation, write_metrics
from . import _lineplot

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


def _frames(trajs: list[np.ndarray], labels: list[str], size=(360, 240), dpi: float = 80.0) -> list[np.ndarray]:
    """One RGB frame ``(H, W, 3)`` uint8 per recorded state: the trajectories so far (x, y of
    each ``(T, 3)`` array), ground, wall, target and a legend, in matplotlib's default style.

    Drawn with Pillow (:mod:`diffvc.examples._lineplot`): the axes, ground, wall and target once
    at 3x resolution, then per frame the paths and the dots, the legend on top (a translucent box
    composited from one prepared overlay), reduced to ``size`` (anti-aliasing)."""
    from PIL import Image, ImageDraw

    from . import _lineplot as lp

    ss, pt = lp.SS, dpi / 72.0 * lp.SS
    W, H = size[0] * ss, size[1] * ss
    xlim, ylim = (-2.6, 1.0), (-0.1, 2.2)
    med, small = 10 * pt, 7 * pt
    pad = 1.08 * 10 * pt                        # tight_layout's pad
    b0 = H - pad - lp.text_size("0", med)[1] - 7 * pt
    ax = lp.Axes((0, pad, 1, b0), xlim, ylim, dpi=dpi)
    l0 = pad + ax.ytick_label_width(med) + 7 * pt
    # the outer tick labels reach half their size past the axes
    aw = W - pad - l0 - lp.text_size("1.0", med)[0] / 2
    ah = b0 - pad - lp.text_size("2.0", med)[1] / 2
    scale = min(aw / (xlim[1] - xlim[0]), ah / (ylim[1] - ylim[0]))   # aspect equal, box centred
    bw, bh = scale * (xlim[1] - xlim[0]), scale * (ylim[1] - ylim[0])
    left, top = l0 + (aw - bw) / 2, pad + lp.text_size("2.0", med)[1] / 2 + (ah - bh) / 2
    ax.box = (left, top, left + bw, top + bh)
    l, t, r, b = ax.box
    bg = Image.new("RGB", (W, H), lp.TAB["white"])
    dr = ImageDraw.Draw(bg)
    ax.draw_frame(dr, med)
    u0, v0 = ax.px([xlim[0], xlim[1], WALL_X, WALL_X], [0.0, 0.0, ylim[0], ylim[1]])
    dr.line([(u0[0], v0[0]), (u0[1], v0[1])], fill=lp.TAB["k"], width=round(2 * pt))   # ground
    dr.line([(u0[2], v0[2]), (u0[3], v0[3])], fill=lp.TAB["k"], width=round(2 * pt))   # wall
    dr.rectangle([l, t, r, b], outline=(0, 0, 0), width=max(1, round(0.8 * pt)))
    tu, tv = ax.px(TARGET[0], TARGET[1])
    lp.star(dr, float(tu), float(tv), 12 * pt, lp.TAB["red"])

    # legend: matplotlib's upper-left box (0.5 em from the axes, white at alpha 0.8, grey edge)
    cols = [lp.TAB["tab:gray"], lp.TAB["tab:blue"]]
    em = small
    th = lp.text_size("Ag", small)[1]
    lw_ = max(lp.text_size(lab, small)[0] for lab in labels)
    box_w = 0.4 * em * 2 + 2.0 * em + 0.8 * em + lw_
    box_h = 0.4 * em * 2 + len(labels) * th + (len(labels) - 1) * 0.5 * em
    legend = Image.new("RGBA", (int(box_w) + 2, int(box_h) + 2), (0, 0, 0, 0))
    ld = ImageDraw.Draw(legend)
    ld.rounded_rectangle([0, 0, box_w, box_h], radius=0.2 * em, fill=(255, 255, 255, 204),
                         outline=(204, 204, 204, 204), width=max(1, round(0.8 * pt)))
    for j, (lab, c) in enumerate(zip(labels, cols)):
        yc = 0.4 * em + j * (th + 0.5 * em) + th / 2
        ld.line([(0.4 * em, yc), (2.4 * em, yc)], fill=c + (255,), width=max(1, round(pt)))
        ld.text((3.2 * em, yc), lab, font=lp.font(small), anchor="lm", fill=(0, 0, 0, 255))
    legend_at = (int(l + 0.5 * em), int(t + 0.5 * em))

    out = []
    n = max(len(tr) for tr in trajs)
    for k in range(n):
        img = bg.copy()
        d = ImageDraw.Draw(img)
        for tr, c in zip(trajs, cols):
            j = min(k, len(tr) - 1)
            u, v = ax.px(tr[: j + 1, 0], tr[: j + 1, 1])
            lp.polyline(d, u, v, c, pt)
            lp.dot(d, float(u[-1]), float(v[-1]), 7 * pt, c)
        img.paste(legend, legend_at, legend)
        out.append(np.asarray(img.reduce(ss)))
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
    _lineplot.plot_curves(cfg.out / "curves.png", {"loss": hist.loss, "v0.x": v0_hist[:, 0], "v0.y": v0_hist[:, 1]},
                          title="bounce: optimise initial velocity")
    frames = _frames([traj0.cpu().numpy(), traj1.cpu().numpy()], ["initial v0", "optimised v0"])
    save_animation(cfg.out / "trajectory.gif", frames, fps=30, srgb=False, palette="shared")
    from PIL import Image

    Image.fromarray(frames[-1]).save(cfg.out / "trajectory.png")
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
