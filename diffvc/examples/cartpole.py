"""Cart-pole swing-up by gradient-based trajectory optimisation through the articulated simulator.

The cart-pole of ``diffvc/physics/assets/cartpole.xml`` (MJCF: a 1 kg cart on a damped slider
with armature, a 0.1 kg, 1 m pole on a damped hinge; hinge angle 0 = hanging, pi = upright), its
motor's gear doubled to 20 N at |u| <= 1. The open-loop control sequence (``K`` knots, linearly
interpolated over ``T`` = 100 steps of 25 ms, squashed by tanh into the motor's range) is
optimised with Adam on the gradient of the rollout through
:class:`~diffvc.physics.ArticulatedModel` (reduced coordinates, implicit joint damping). The cost
asks the pole to be up and still at the end: a running ``(t/T)^2 (1 + cos theta)`` term,
velocity penalties over the last 0.5 s, and a terminal cost on ``1 + cos theta``, the angular and
cart velocities and the cart position. Several candidates with random initial phases of an
energy-pumping guess are optimised at once (one batch); the best one is reported.

    diffvc run cartpole [--quick]
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..optim import optimize
from ..physics import ArticulatedState, load_mjcf
from ..viz import figure_to_array, plot_curves, save_animation, write_metrics

DESCRIPTION = "cart-pole swing-up: optimise the motor's control sequence through the articulated simulator"

ASSET = Path(__file__).resolve().parent.parent / "physics" / "assets" / "cartpole.xml"
DT, T, K, TAIL = 0.025, 100, 20, 20  # 2.5 s, 20 control knots, last 0.5 s must be still


def make_model(dtype=torch.float32, device="cpu"):
    model = load_mjcf(ASSET, dtype=dtype, device=device)
    return model.replace(gear=2.0 * model.gear)


def controls(a: torch.Tensor) -> torch.Tensor:
    """Knot values a (B, K) -> motor inputs (B, T) in (-1, 1) (tanh, linear interpolation)."""
    u = torch.tanh(a)
    s = torch.linspace(0, a.shape[1] - 1, T, dtype=a.dtype, device=a.device)
    i0 = s.floor().long().clamp(max=a.shape[1] - 2)
    w = s - i0
    return u[:, i0] * (1 - w) + u[:, i0 + 1] * w


def simulate(model, a: torch.Tensor):
    """Roll out B candidates from rest (pole hanging); returns the T + 1 states."""
    u = controls(a)
    st = model.initial_state(a.shape[0])
    states = [st]
    for k in range(T):
        st = model.step(st, DT, u[:, k:k + 1])
        states.append(st)
    return states


def cost(states) -> torch.Tensor:
    """(B,) swing-up cost (module doc)."""
    run = sum(((k / T) ** 2) * 10.0 * (1 + torch.cos(s.q[:, 1])) for k, s in enumerate(states[1:], 1)) / T
    tail = states[-TAIL:]
    still = sum(0.2 * s.qd[:, 1] ** 2 + 0.2 * s.qd[:, 0] ** 2 for s in tail) / TAIL
    f = states[-1]
    term = 20.0 * (1 + torch.cos(f.q[:, 1])) + f.qd[:, 1] ** 2 + f.qd[:, 0] ** 2 + 0.1 * f.q[:, 0] ** 2
    return run + still + term


def _angle_error(theta: torch.Tensor) -> torch.Tensor:
    """|theta - pi| wrapped to [0, pi] (0 = upright)."""
    return torch.abs(torch.remainder(theta, 2 * math.pi) - math.pi)


def _frames(q: np.ndarray, u: np.ndarray, every: int = 2) -> list[np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    xmin, xmax = min(-1.5, q[:, 0].min() - 1.2), max(1.5, q[:, 0].max() + 1.2)
    for k in range(0, len(q), every):
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.2, 3.0), dpi=80, gridspec_kw={"width_ratios": [2, 1]})
        x, th = q[k]
        tip = (x + math.sin(th), -math.cos(th))  # hinge about y: pole direction (sin, -cos) in (x, z)
        ax.axhline(0, color="0.6", lw=1)
        ax.add_patch(plt.Rectangle((x - 0.2, -0.05), 0.4, 0.1, color="tab:blue"))
        ax.plot([x, tip[0]], [0, tip[1]], color="tab:orange", lw=4)
        ax.plot(*tip, "o", color="tab:red", ms=6)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(-1.2, 1.2)
        ax.set_aspect("equal")
        ax.set_title(f"t = {k * DT:.2f} s   angle from upright {math.degrees(abs((th % (2 * math.pi)) - math.pi)):.0f} deg",
                     fontsize=9)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        ax2.plot(np.arange(len(u)) * DT, u, color="k", lw=1)
        ax2.axvline(k * DT, color="tab:red", lw=1)
        ax2.set_ylim(-1.1, 1.1)
        ax2.set_title("motor input u (x 20 N)", fontsize=9)
        ax2.set_xlabel("t (s)")
        fig.tight_layout()
        out.append(figure_to_array(fig))
    return out


def run(cfg) -> dict:
    dtype = torch.float32
    model = make_model(dtype, cfg.device)
    B = 8 if cfg.quick else 32
    iters = cfg.iterations(full=200, quick=60)
    g = torch.Generator().manual_seed(cfg.seed)
    t_knots = torch.arange(K, dtype=dtype) / K * T * DT
    omega = math.sqrt(0.1 * 9.81 * 0.5 / 0.0334)  # the pole's natural frequency (rad/s)
    phase = 2 * math.pi * torch.rand(B, 1, generator=g, dtype=dtype)
    a = (0.8 * torch.sin(omega * t_knots[None] + phase) + 0.3 * torch.randn(B, K, generator=g, dtype=dtype))
    a = a.to(cfg.device).requires_grad_()

    def loss_fn():
        return cost(simulate(model, a)).sum()

    with torch.no_grad():
        c0 = cost(simulate(model, a))
    t0 = time.perf_counter()
    hist = optimize([a], loss_fn, iters=iters, lr=0.2, lr_final=0.02, method="adam", progress=cfg.progress,
                    desc="cartpole")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        states = simulate(model, a)
        c1 = cost(states)
        best = int(c1.argmin())
        q = torch.stack([s.q[best] for s in states]).cpu().numpy()
        qd = torch.stack([s.qd[best] for s in states]).cpu().numpy()
        u = controls(a)[best].cpu().numpy()
        f = states[-1]
        err = _angle_error(f.q[:, 1])
        upright = int((err < math.radians(10)).sum())

    plot_curves(cfg.out / "curves.png", {"loss (sum over candidates)": hist.loss}, title="cartpole swing-up")
    _trajectory_plot(cfg.out / "trajectory.png", q, qd, u)
    frames = _frames(q, u, every=4 if cfg.quick else 2)
    save_animation(cfg.out / "swingup.gif", frames, fps=10 if cfg.quick else 20, srgb=False)
    import imageio.v3 as iio

    strip = [frames[min(i, len(frames) - 1)] for i in (0, len(frames) // 4, len(frames) // 2, 3 * len(frames) // 4, len(frames) - 1)]
    iio.imwrite(cfg.out / "frames.png", np.concatenate(strip, 0))
    metrics = {
        "final_angle_from_upright_deg": math.degrees(float(err[best])),
        "final_angular_velocity_rad_s": float(f.qd[best, 1]),
        "final_cart_velocity_m_s": float(f.qd[best, 0]),
        "final_cart_position_m": float(f.q[best, 0]),
        "candidates": B,
        "candidates_within_10_deg": upright,
        "best_candidate": best,
        "initial_cost_best": float(c0.min()),
        "final_cost_best": float(c1[best]),
        "iterations": hist.iterations,
        "seconds": seconds,
        "steps": T,
        "dt": DT,
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics


def _trajectory_plot(path, q, qd, u):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(q)) * DT
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].plot(t, np.degrees(np.abs(np.mod(q[:, 1], 2 * np.pi) - np.pi)))
    axes[0].set_title("pole angle from upright (deg)")
    axes[1].plot(t, qd[:, 1], label="pole (rad/s)")
    axes[1].plot(t, qd[:, 0], label="cart (m/s)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("velocities")
    axes[2].plot(t[1:], u)
    axes[2].set_title("motor input u")
    for ax in axes:
        ax.set_xlabel("t (s)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
