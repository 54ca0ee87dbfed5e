"""Smoke control (DiffTaichi's smoke task): optimise the initial velocity field so that the
advected density forms a target image after N steps.

A periodic grid (128 x 128 cells, or 64 x 64 with ``--quick``) starts with DiffTaichi's
checkerboard of 16-cell tiles (8 with ``--quick``) as density and an unknown initial velocity.
:class:`~diffvc.physics.SmokeModel` advects velocity and density (semi-Lagrangian, one-step
back-trace as in DiffTaichi) and projects the velocity to be divergence free every step (PCG,
implicitly differentiated); after 99 steps (60 with ``--quick``) the density should match a
target picture. Loss: mean squared difference; the gradient w.r.t. both initial velocity
components flows back through all steps and projections; Adam updates them.

Writes ``smoke.gif`` (the optimised rollout rendered through the pipeline: the density bound as a
thin :class:`~diffvc.pipeline.Volume` slab, ray-marched by the ``"volume"`` renderer, beside the
target), ``panels.png`` (start density, target, final density before and after optimisation,
initial speed), ``curves.png`` and ``metrics.json``.

    diffvc run smoke [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..optim import optimize
from ..physics import SmokeModel, SmokeState, rollout
from ..viz import linear_to_srgb, plot_curves, save_animation, save_image, tile, write_metrics
from . import single_threaded

DESCRIPTION = "smoke control (DiffTaichi's task): optimise the initial velocity so the density forms a target image"


def target_image(n: int) -> torch.Tensor:
    """A target picture (text ``dvc`` in a ring), ``(n, n)`` in [0, 1], indexed ``[x, y]`` with y up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    fig.patch.set_facecolor("black")
    ax.add_patch(plt.Circle((0.5, 0.5), 0.42, fill=False, color="white", lw=14))
    ax.text(0.5, 0.5, "dvc", color="white", fontsize=44, weight="bold", ha="center", va="center")
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    g = torch.from_numpy(img[..., :3].astype(np.float32).mean(-1) / 255.0)
    g = torch.nn.functional.interpolate(g[None, None], size=(n, n), mode="area")[0, 0]
    return g.flip(0).T.contiguous()            # rows (top first) -> [x, y], y up


def checkerboard(n: int, tile_cells: int) -> torch.Tensor:
    i = torch.arange(n)
    return (((i[:, None] // tile_cells) + (i[None, :] // tile_cells)) % 2).to(torch.float32)


class DensitySlab:
    """Binding: a 2-D smoke state -> a :class:`~diffvc.pipeline.Volume` slab ``[0, 1]^2 x [0, 0.05]``
    m whose extinction is ``sigma * density`` (emission-absorption, warm white)."""

    def __init__(self, sigma: float = 12.0, thickness: float = 0.05):
        self.sigma, self.thickness = sigma, thickness

    def __call__(self, state) -> "Volume":
        from ..pipeline import Volume

        d = (state.density.clamp_min(0.0) * self.sigma)[..., None].expand(*state.density.shape, 2)
        t = d.new_tensor
        return Volume(d, t([1.0, 0.95, 0.85]), t([0.0, 0.0, 0.0]), t([1.0, 1.0, self.thickness]))


def render_rollout(states, n: int) -> torch.Tensor:
    """Render smoke states through the pipeline (one camera looking down -z at the slab):
    ``(T, H, W, 3)``."""
    from ..pipeline import Scene, render_trajectory
    from ..render import Cameras

    cams = Cameras.look_at([[0.5, 0.5, 2.0]], target=(0.5, 0.5, 0.0), width=n, height=n, orthographic=True,
                           ortho_scale=1.0, dtype=states[0].density.dtype)
    scene = Scene(cams, background=torch.tensor([0.05, 0.06, 0.1], dtype=states[0].density.dtype))
    scene.add_volume("smoke", DensitySlab())
    return render_trajectory(scene, states, renderer="volume", n_samples=8)[:, 0]


def _show(d: torch.Tensor) -> np.ndarray:
    """[x, y] grid -> image rows (top first), grey."""
    return d.detach().clamp(0, 1).T.flip(0).cpu().numpy()


# grids of 4k-16k cells are too small for torch's intra-op threads to pay off (on a busy
# 2-core machine they stall: bench/smoke.py); run single-threaded and restore afterwards
@single_threaded
def run(cfg) -> dict:
    n = 64 if cfg.quick else 128
    steps = 60 if cfg.quick else 99
    iters = cfg.iterations(full=200, quick=60)
    dev = cfg.device
    model = SmokeModel((n, n), dx=1.0, boundary="periodic", backtrace="euler", tol=1e-5)
    d0 = checkerboard(n, 8 if cfg.quick else 16).to(dev)
    target = target_image(n).to(dev)
    # two plain leaf tensors (a ParameterSet would snapshot 2 n^2 values every iteration)
    vx = torch.zeros(n, n, device=dev, requires_grad=True)
    vy = torch.zeros(n, n, device=dev, requires_grad=True)

    def simulate(vx, vy, record=False):
        return rollout(model, SmokeState(d0, (vx, vy)), steps, dt=1.0, record=record)

    def loss_fn():
        return ((simulate(vx, vy).density - target) ** 2).mean()

    with torch.no_grad():
        start_final = simulate(vx, vy).density
    t0 = time.perf_counter()
    hist = optimize([vx, vy], loss_fn, iters=iters, lr=0.1, lr_final=0.02, method="adam", progress=cfg.progress,
                    desc="smoke")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final, states = simulate(vx, vy, record=True)
        final_loss = float(((final.density - target) ** 2).mean())
        div = float(model.divergence(final.velocity).abs().max())

    keep = [k for k in range(len(states)) if k % 3 == 0 or k == steps]
    with torch.no_grad():
        video = render_rollout([states[k] for k in keep], n)
    frames = [tile([linear_to_srgb(video[i]), _show(target)], labels=[f"step {k} (volume renderer)", "target"],
                   min_size=256) for i, k in enumerate(keep)]
    save_animation(cfg.out / "smoke.gif", frames, fps=15, srgb=False)
    speed = torch.sqrt(vx.detach() ** 2 + vy.detach() ** 2)
    panels = tile([_show(d0), _show(target), _show(start_final), _show(final.density),
                   _show(speed / speed.max().clamp_min(1e-6))],
                  labels=["initial density", "target", f"step {steps}, v0 = 0", f"step {steps}, optimised v0",
                          "optimised |v0| (scaled)"], min_size=192)
    save_image(cfg.out / "panels.png", panels, srgb=False)
    plot_curves(cfg.out / "curves.png", {"loss": hist.loss}, title="smoke control: density MSE to the target")
    metrics = {
        "grid": n, "steps": steps, "iterations": hist.iterations, "seconds": seconds,
        "seconds_per_iteration": seconds / max(hist.iterations, 1),
        "initial_loss": hist.loss[0], "final_loss": final_loss,
        "loss_reduction": hist.loss[0] / max(final_loss, 1e-12),
        "final_max_abs_divergence": div,
        "max_initial_speed_cells_per_step": float(speed.max()),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
