"""Spline fit: a bicubic B-spline surface fitted to a point cloud by its Chamfer distance.

The target is 4,000 points sampled on the height field ``z = 0.5 exp(-4 (x^2 + y^2)) - 0.25 x y``
over ``[-1, 1]^2``. The surface is a bicubic B-spline with an 8 x 8 control net (clamped uniform
knots), starting flat at ``z = 0``; Adam moves all 192 control-point coordinates to minimise the
Chamfer distance between the surface sampled on a 40 x 40 parameter grid and the cloud, with a
small second-difference penalty on the control net. The gradient reaches the control points
through the B-spline basis (:func:`diffvc.geometry.bspline_surface`). Reported: the Chamfer
distance and the fitted surface's height error against the closed-form target.

    diffvc run spline_fit [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..geometry import bspline_surface, chamfer_distance
from ..optim import Free, ParameterSet, optimize
from ..viz import figure_to_array, plot_curves, save_animation, save_image, write_metrics

DESCRIPTION = "fit a bicubic B-spline surface (8x8 control net) to a point cloud by Chamfer distance"

N_CTRL, RES = 8, 40


def target_height(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.exp(-4 * (x * x + y * y)) - 0.25 * x * y


def _render(ctrl: torch.Tensor, cloud: np.ndarray, title: str) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = torch.linspace(0, 1, 25, dtype=ctrl.dtype)
    S = bspline_surface(ctrl, u, u).detach().cpu().numpy()
    fig = plt.figure(figsize=(4.6, 3.8), dpi=80)
    ax = fig.add_subplot(projection="3d")
    ax.scatter(cloud[::6, 0], cloud[::6, 1], cloud[::6, 2], s=1, c="tab:red", alpha=0.5, label="target points")
    ax.plot_wireframe(S[..., 0], S[..., 1], S[..., 2], color="tab:blue", lw=0.6, label="B-spline surface")
    C = ctrl.detach().cpu().numpy()
    ax.scatter(C[..., 0], C[..., 1], C[..., 2], s=6, c="k", label="control points")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-0.4, 0.6)
    ax.view_init(elev=25, azim=-60)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=6)
    return figure_to_array(fig)


def run(cfg) -> dict:
    dtype, dev = torch.float32, cfg.device
    gen = torch.Generator().manual_seed(cfg.seed)
    xy = torch.rand(4000, 2, generator=gen, dtype=dtype) * 2 - 1
    cloud = torch.cat([xy, target_height(xy[:, 0], xy[:, 1])[:, None]], 1).to(dev)
    g = torch.linspace(-1, 1, N_CTRL, dtype=dtype)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    ctrl0 = torch.stack([gx, gy, torch.zeros_like(gx)], -1).to(dev)
    params = ParameterSet(ctrl=Free(ctrl0, dtype=dtype, device=dev))
    u = torch.linspace(0, 1, RES, dtype=dtype, device=dev)
    iters = cfg.iterations(full=600, quick=150)

    def surface(c):
        return bspline_surface(c, u, u).reshape(-1, 3)

    def loss_fn():
        c = params["ctrl"]
        smooth = ((c[2:] - 2 * c[1:-1] + c[:-2]) ** 2).mean() + ((c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]) ** 2).mean()
        return chamfer_distance(surface(c), cloud) + 1e-4 * smooth

    def height_error(c):
        with torch.no_grad():
            S = surface(c)
            inside = (S[:, :2].abs() <= 1).all(1)
            e = (S[inside, 2] - target_height(S[inside, 0], S[inside, 1])).abs()
            return float(e.max()), float(e.pow(2).mean().sqrt())

    snaps, rms_hist = [], []
    every = max(1, iters // 15)

    def callback(i, loss):
        if i % every == 0:
            snaps.append((i, params["ctrl"].detach().clone()))
        rms_hist.append(height_error(params["ctrl"])[1])

    e0 = height_error(ctrl0)
    c0 = float(chamfer_distance(surface(ctrl0), cloud))
    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=0.03, lr_final=0.002, method="adam", progress=cfg.progress,
                    desc="spline_fit", callback=callback)
    seconds = time.perf_counter() - t0
    ctrl = params["ctrl"].detach()
    snaps.append((iters, ctrl.clone()))
    e1 = height_error(ctrl)
    c1 = float(chamfer_distance(surface(ctrl), cloud))
    cl = cloud.cpu().numpy()
    frames = [_render(c, cl, f"iteration {i}") for i, c in snaps]
    save_animation(cfg.out / "fit.gif", frames, fps=8, srgb=False)
    both = np.concatenate([_render(ctrl0, cl, f"initial: chamfer {c0:.2e}"),
                           _render(ctrl, cl, f"fitted: chamfer {c1:.2e}, rms dz {e1[1]:.1e}")], 1)
    save_image(cfg.out / "fit.png", both, srgb=False)
    plot_curves(cfg.out / "curves.png", {"loss": hist.loss, "rms height error": rms_hist},
                title="B-spline surface fit to a point cloud")
    metrics = {"chamfer_initial": c0, "chamfer_final": c1, "height_error_max_initial": e0[0],
               "height_error_rms_initial": e0[1], "height_error_max": e1[0], "height_error_rms": e1[1],
               "iterations": hist.iterations, "seconds": seconds, "control_points": N_CTRL * N_CTRL}
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
