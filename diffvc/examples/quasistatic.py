"""Quasi-static design: choose a soft cantilever's rest shape so that, loaded, it sits straight.

A 2D lattice of springs (``NX`` x ``NY`` nodes, 0.1 m apart, diagonals included) is clamped on
its left column and loaded by gravity and a tip weight; it sags. Its equilibrium is the minimiser
of the elastic + potential energy, computed by :func:`diffvc.optim.minimize` (Newton) and
differentiated by the implicit function theorem (conjugate gradients on Hessian-vector products:
no unrolling of the Newton iterations). The design variables are the springs' rest lengths
(log-parameterised, so they stay positive); Adam moves them so that the loaded equilibrium matches
the straight, unloaded lattice (the target). Reported: the tip sag and the RMS node error before
and after.

    diffvc run quasistatic [--quick]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..optim import minimize, optimize
from ..viz import figure_to_array, plot_curves, write_metrics

DESCRIPTION = "quasi-static design: rest lengths of a sagging spring cantilever so its loaded equilibrium is straight"

NX, NY, H = 8, 3, 0.1
K_SPRING, NODE_MASS, TIP_MASS, G = 3000.0, 0.05, 0.3, 9.81


def lattice(dtype=torch.float64):
    """Nodes (N, 2), springs (S, 2), free-node mask (N,), tip node indices."""
    ij = [(i, j) for i in range(NX) for j in range(NY)]
    idx = {p: n for n, p in enumerate(ij)}
    x = torch.tensor([[i * H, j * H] for i, j in ij], dtype=dtype)
    springs = []
    for (i, j), n in idx.items():
        for di, dj in ((1, 0), (0, 1), (1, 1), (1, -1)):
            if (i + di, j + dj) in idx:
                springs.append((n, idx[(i + di, j + dj)]))
    free = torch.tensor([i > 0 for i, _ in ij])
    tip = [idx[(NX - 1, j)] for j in range(NY)]
    return x, torch.tensor(springs), free, tip


def energy_fn(x_rest, springs, free, tip):
    """E(u, log_rest) for the free nodes' positions u (F, 2): springs + gravity + tip weight."""
    fixed = x_rest[~free]
    mass = torch.full((x_rest.shape[0],), NODE_MASS, dtype=x_rest.dtype)
    mass[tip] += TIP_MASS / len(tip)
    i, j = springs[:, 0], springs[:, 1]

    def energy(u, log_rest):
        x = torch.zeros_like(x_rest).index_put((free.nonzero()[:, 0],), u).index_put(((~free).nonzero()[:, 0],), fixed)
        d = x[j] - x[i]
        length = torch.sqrt((d * d).sum(-1) + 1e-12)
        return 0.5 * K_SPRING * ((length - torch.exp(log_rest)) ** 2).sum() + G * (mass * x[:, 1]).sum()

    return energy


def equilibrium(energy, u0, log_rest):
    return minimize(energy, u0, log_rest, tol=1e-9)


def _plot(path, x_rest, springs, shapes, labels, colors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=90)
    for xs, lab, col in zip(shapes, labels, colors):
        for a, b in springs.tolist():
            ax.plot([xs[a, 0], xs[b, 0]], [xs[a, 1], xs[b, 1]], color=col, lw=1)
        ax.plot(xs[:, 0], xs[:, 1], "o", color=col, ms=3, label=lab)
    ax.axvline(-0.01, color="k", lw=3)
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("loaded equilibria: initial design vs optimised rest lengths")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.tight_layout()
    img = figure_to_array(fig)
    import imageio.v3 as iio

    iio.imwrite(path, img)


def run(cfg) -> dict:
    x_rest, springs, free, tip = lattice()
    energy = energy_fn(x_rest, springs, free, tip)
    d = x_rest[springs[:, 1]] - x_rest[springs[:, 0]]
    log_rest = torch.log(d.norm(dim=-1)).clone().requires_grad_()
    target = x_rest[free]
    iters = cfg.iterations(full=150, quick=40)

    def full(u):
        out = x_rest.clone()
        out[free] = u
        return out

    with torch.no_grad():
        u_init = equilibrium(energy, target, log_rest)
    state = {"u": u_init}

    def loss_fn():
        u = equilibrium(energy, state["u"], log_rest)
        state["u"] = u.detach()  # warm start the next solve
        return ((u - target) ** 2).sum(-1).mean()

    t0 = time.perf_counter()
    hist = optimize([log_rest], loss_fn, iters=iters, lr=0.02, method="adam", progress=cfg.progress, desc="quasistatic")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        u_final = equilibrium(energy, state["u"], log_rest)
    sag0 = float(-(u_init[-1, 1] - target[-1, 1]))
    sag1 = float(-(u_final[-1, 1] - target[-1, 1]))
    rms0 = float(((u_init - target) ** 2).sum(-1).mean().sqrt())
    rms1 = float(((u_final - target) ** 2).sum(-1).mean().sqrt())
    plot_curves(cfg.out / "curves.png", {"loss (mean squared node error, m^2)": hist.loss}, title="quasi-static design")
    _plot(cfg.out / "equilibria.png", x_rest, springs,
          [x_rest.numpy(), full(u_init).numpy(), full(u_final).numpy()],
          ["target (unloaded lattice)", "loaded, initial rest lengths", "loaded, optimised rest lengths"],
          ["0.6", "tab:red", "tab:blue"])
    rest_change = torch.exp(log_rest.detach()) / d.norm(dim=-1) - 1
    metrics = {
        "tip_sag_initial_m": sag0,
        "tip_sag_final_m": sag1,
        "rms_node_error_initial_m": rms0,
        "rms_node_error_final_m": rms1,
        "max_rest_length_change_percent": 100 * float(rest_change.abs().max()),
        "iterations": hist.iterations,
        "seconds": seconds,
        "springs": int(springs.shape[0]),
        "free_dofs": int(2 * free.sum()),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
