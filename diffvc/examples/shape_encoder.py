"""Shape encoder: a PointNet learns to predict a NURBS ellipsoid from a point cloud, trained only
through geometry (no parameter labels).

Each training shape is an axis-aligned ellipsoid (centre in ``[-0.3, 0.3]^3``, radii in ``[0.3,
1.0]``) seen as 256 points on its surface. A :class:`~diffvc.geometry.PointNetEncoder` maps the
cloud to 6 numbers -> centre and radii -> the control net of an exact NURBS ellipsoid (the degree-2
NURBS sphere, 9 x 5 control points, mapped affinely) -> the surface tessellated on a 16 x 12
parameter grid (:func:`~diffvc.geometry.bspline_surface`) -> Chamfer distance to the input cloud.
The loss is measured after this differentiable conversion only; the parameter error on 64
held-out shapes (never used for training) shows what the network learned.

    diffvc run shape_encoder [--quick]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..geometry import PointNetEncoder, bspline_surface, nurbs_circle
from ..optim import optimize
from ..viz import figure_to_array, plot_curves, save_animation, save_image, write_metrics

DESCRIPTION = "PointNet predicts a NURBS ellipsoid from a point cloud, trained through the spline (Chamfer loss)"

N_POINTS, BATCH = 256, 16


def unit_sphere_net(dtype=torch.float32):
    """Control net ``(9, 5, 3)``, weights ``(9, 5)`` and knots of the exact unit NURBS sphere."""
    Pc, wc, kc = nurbs_circle(1.0, dtype=torch.float64)
    s = math.sqrt(0.5)
    mer = torch.tensor([[0, -1], [1, -1], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
    wm = torch.tensor([1, s, 1, s, 1], dtype=torch.float64)
    km = torch.tensor([0, 0, 0, 0.5, 0.5, 1, 1, 1], dtype=torch.float64)
    ctrl = torch.cat([Pc[:, None, :] * mer[None, :, :1], mer[None, :, 1:].expand(9, 5, 1)], -1)
    return ctrl.to(dtype), (wc[:, None] * wm[None, :]).to(dtype), (kc.to(dtype), km.to(dtype))


def sample_shapes(n: int, gen: torch.Generator, dtype=torch.float32):
    """``n`` random ellipsoids: params ``(n, 6)`` (centre, radii) and clouds ``(n, N_POINTS, 3)``."""
    c = (torch.rand(n, 3, generator=gen) * 2 - 1) * 0.3
    r = 0.3 + 0.7 * torch.rand(n, 3, generator=gen)
    d = torch.randn(n, N_POINTS, 3, generator=gen)
    d = d / d.norm(dim=-1, keepdim=True)
    return torch.cat([c, r], 1).to(dtype), (c[:, None] + r[:, None] * d).to(dtype)


class EllipsoidDecoder:
    """Params ``(B, 6)`` -> surface points ``(B, U V, 3)`` through the NURBS evaluation."""

    def __init__(self, dtype=torch.float32, res=(16, 12)):
        self.ctrl, self.w, self.knots = unit_sphere_net(dtype)
        self.u = torch.linspace(0, 1, res[0], dtype=dtype)
        self.v = torch.linspace(0, 1, res[1], dtype=dtype)

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        B = params.shape[0]
        ctrl = params[:, None, None, :3] + params[:, None, None, 3:] * self.ctrl  # (B, 9, 5, 3): affine map
        net = ctrl.permute(1, 2, 0, 3).reshape(9, 5, B * 3)  # batch folded into the coordinate axis
        S = bspline_surface(net, self.u, self.v, (2, 2), self.knots, self.w)  # (U, V, B*3)
        return S.reshape(-1, B, 3).transpose(0, 1)


def chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched symmetric squared Chamfer distance, ``(B,)``."""
    d = torch.cdist(a, b) ** 2
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def to_params(out: torch.Tensor) -> torch.Tensor:
    return torch.cat([0.3 * torch.tanh(out[:, :3]), 0.3 + 0.7 * torch.sigmoid(out[:, 3:])], 1)


def _panel(clouds, preds, decoder, title) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = clouds.shape[0]
    fig = plt.figure(figsize=(2.6 * n, 2.9), dpi=80)
    with torch.no_grad():
        S = decoder(preds).reshape(n, len(decoder.u), len(decoder.v), 3).numpy()
    for k in range(n):
        ax = fig.add_subplot(1, n, k + 1, projection="3d")
        c = clouds[k].numpy()
        ax.scatter(c[:, 0], c[:, 1], c[:, 2], s=1.5, c="tab:red")
        ax.plot_wireframe(S[k, ..., 0], S[k, ..., 1], S[k, ..., 2], color="tab:blue", lw=0.5)
        for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            set_lim(-1.3, 1.3)
        ax.set_axis_off()
        ax.set_title(f"held-out {k}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return figure_to_array(fig)


def run(cfg) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread mostly spins on the shared CPU
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg) -> dict:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    test_params, test_clouds = sample_shapes(64, torch.Generator().manual_seed(12345))
    net = PointNetEncoder(out_dim=6, widths=(64, 128, 256))
    decoder = EllipsoidDecoder()
    iters = cfg.iterations(full=1500, quick=300)

    def evaluate():
        with torch.no_grad():
            p = to_params(net(test_clouds))
            err_c = (p[:, :3] - test_params[:, :3]).abs().mean()
            err_r = (p[:, 3:] - test_params[:, 3:]).abs().mean()
            return float(err_c), float(err_r), float(chamfer(decoder(p), test_clouds).mean()), p

    e0 = evaluate()
    show = slice(0, 4)
    frames = [_panel(test_clouds[show], e0[3][show], decoder, "iteration 0 (untrained)")]
    hist_err = []
    every = max(1, iters // 12)

    def loss_fn():
        _, clouds = sample_shapes(BATCH, gen)
        return chamfer(decoder(to_params(net(clouds))), clouds).mean()

    def callback(i, loss):
        if (i + 1) % every == 0 or i + 1 == iters:
            e = evaluate()
            hist_err.append(e[0] + e[1])
            frames.append(_panel(test_clouds[show], e[3][show], decoder, f"iteration {i + 1}"))

    t0 = time.perf_counter()
    hist = optimize(list(net.parameters()), loss_fn, iters=iters, lr=3e-3, lr_final=3e-4, method="adam",
                    progress=cfg.progress, desc="shape_encoder", callback=callback)
    seconds = time.perf_counter() - t0
    e1 = evaluate()
    save_animation(cfg.out / "training.gif", frames, fps=3, srgb=False)
    save_image(cfg.out / "predictions.png",
               np.concatenate([frames[0], _panel(test_clouds[show], e1[3][show], decoder,
                                                 f"after {iters} iterations: red = input points, blue = predicted NURBS")], 0),
               srgb=False)
    plot_curves(cfg.out / "curves.png", {"train chamfer": hist.loss, f"held-out param error (x{every} iterations)": hist_err},
                title="PointNet -> NURBS ellipsoid, trained through the surface")
    metrics = {"iterations": hist.iterations, "seconds": seconds,
               "heldout_center_mae_initial": e0[0], "heldout_radius_mae_initial": e0[1],
               "heldout_chamfer_initial": e0[2], "heldout_center_mae": e1[0], "heldout_radius_mae": e1[1],
               "heldout_chamfer": e1[2], "train_loss_first": hist.loss[0], "train_loss_last": hist.loss[-1]}
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
