"""Cloth: recover a cloth's stretch and bending stiffness from a video of it draping over a ball,
pixels only.

A 1 m square of cloth (a 10 x 10 grid of triangle pairs, 0.3 kg/m^2) falls from 0.58 m onto a
ball of radius 0.25 m resting on the ground and drapes over it
(:class:`~diffvc.physics.ClothModel`: StVK membrane with Lame parameters ``mu`` and ``lam = mu /
2``, dihedral-angle bending ``kb``, smoothed contact with the ball and the ground). The "measured"
video is rendered through the pipeline (:func:`~diffvc.pipeline.render_trajectory`, the cloth
bound to the render mesh by a :class:`~diffvc.pipeline.SoftBinding`) from two cameras for the
true ``mu = 10 N/m`` and ``kb = 3e-3 N m``. Starting from ``mu = 25`` and ``kb = 1e-3``, Adam on
the log-parameters minimises a 3-level pyramid MSE between rendered and measured videos; the
gradient runs back through the rasterizer's antialiasing, every cloth step and every contact.
Damping (drag 1.5/s, strain-rate damping 0.03 N s/m) keeps the drape from being chaotic: with a
third of it the exact gradient of the rollout became useless for steps of a few percent (see the
gradient contract in :mod:`diffvc.physics.cloth`).

Writes ``side_by_side.gif`` / ``.png`` (target | start | result, each view), ``curves.png``
(loss and both parameters with their true values) and ``metrics.json``.

    diffvc run cloth [--quick]
"""

from __future__ import annotations

import time

import torch

from ..geometry import box, icosphere
from ..geometry.primitives import grid
from ..optim import ParameterSet, Positive, optimize, plot_history, pyramid_mse, relative_error
from ..physics import ClothModel, rollout
from ..pipeline import Scene, SoftBinding, render_trajectory
from ..render import AmbientLight, Cameras, DirectionalLight
from ..viz import save_animation, tile, write_metrics
from . import single_threaded

DESCRIPTION = "cloth draping over a ball: recover stretch and bending stiffness from video pixels"

DTYPE = torch.float32
TRUE = {"mu": 10.0, "kb": 3e-3}
START = {"mu": 25.0, "kb": 1e-3}
BALL = (0.0, 0.25, 0.0, 0.25)          # centre, radius (m)
DT, SUBSTEPS, FRAMES = 2.5e-3, 24, 20  # 1.2 s; a video frame every 60 ms
STRETCH_DAMPING, DRAG = 0.03, 1.5      # N s/m, 1/s: damped enough that the drape is not chaotic


class ClothDrape:
    """The scene, the simulation and the video for given ``mu`` and ``kb``."""

    def __init__(self, size: int = 64, device="cpu"):
        v, f = grid(1.0, 10, dtype=DTYPE, device=device)
        self.rest = v + torch.tensor([0.1, 0.58, 0.05], dtype=DTYPE, device=device)
        self.faces = f
        self.device = device
        cams = Cameras.look_at([[0.0, 1.3, 1.9], [1.9, 1.1, -0.4]], target=(0.0, 0.2, 0.0), width=size,
                               height=size, fov_y=45.0, dtype=DTYPE, device=device)
        lights = [DirectionalLight.create([-0.3, -1.0, -0.5], [2.4, 2.4, 2.4], dtype=DTYPE, device=device),
                  AmbientLight.create([0.2, 0.2, 0.22], dtype=DTYPE, device=device)]
        self.scene = Scene(cams, lights, torch.tensor([0.55, 0.65, 0.8], dtype=DTYPE, device=device))
        self.scene.add_shape("cloth", f, SoftBinding(None, num_nodes=v.shape[0]), color=(0.85, 0.3, 0.25),
                             smooth=True)
        bv, bf = icosphere(3, radius=BALL[3], dtype=DTYPE, device=device)
        self.scene.add_shape("ball", bf, bv + torch.tensor(BALL[:3], dtype=DTYPE, device=device),
                             color=(0.3, 0.5, 0.8), smooth=True)
        gv, gf = box((2.4, 0.02, 2.4), dtype=DTYPE, device=device)
        self.scene.add_shape("ground", gf, gv - torch.tensor([0.0, 0.01, 0.0], dtype=DTYPE, device=device),
                             color=(0.5, 0.5, 0.45))
        self.scene.add_body("cloth", mu=TRUE["mu"], kb=TRUE["kb"])

    def model(self, mu: torch.Tensor, kb: torch.Tensor) -> ClothModel:
        return ClothModel.create(self.rest, self.faces, density=0.3, mu=mu, lam=0.5 * mu, kb=kb,
                                 stretch_damping=STRETCH_DAMPING, drag=DRAG, spheres=[BALL], ke=100.0, kd=0.3, friction=0.5,
                                 friction_smoothing=0.05, contact_smoothing=0.003, thickness=0.01)

    def simulate(self, mu, kb, frames: int = FRAMES):
        """States at the video frames (frames + 1 of them)."""
        m = self.model(mu, kb)
        _, states = rollout(m, m.state(self.rest), frames, dt=DT, substeps=SUBSTEPS, record=True)
        return states

    def video(self, values: dict, frames: int = FRAMES) -> torch.Tensor:
        """``(T, V, H, W, 3)``: the cloth's parameters go in by name through the scene."""
        scene = self.scene.replace({"body.cloth.mu": values["mu"], "body.cloth.kb": values["kb"]})
        b = scene.body("cloth")
        return render_trajectory(scene, self.simulate(b["mu"], b["kb"], frames))


def _side_by_side(path, target, start, end, panel: int):
    frames = []
    for t in range(target.shape[0]):
        rows = [tile([target[t, v], start[t, v], end[t, v]], min_size=panel,
                     labels=[f"target (view {v})", f"start (view {v})", f"result (view {v})"])
                for v in range(target.shape[1])]
        frames.append(tile(rows, cols=1))
    save_animation(path, frames, fps=8, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(path.with_suffix(".png"), frames[-1])


# a 121-vertex cloth is far too small for torch's intra-op threads (on a busy 2-core machine
# they stall); run single-threaded and restore afterwards
@single_threaded
def run(cfg) -> dict:
    exp = ClothDrape(size=48 if cfg.quick else 64, device=cfg.device)
    frames = 12 if cfg.quick else FRAMES   # quick: the first 0.72 s (fall, contact, drape)
    iters = cfg.iterations(full=40, quick=20)
    with torch.no_grad():
        target = exp.video({k: torch.tensor(v, dtype=DTYPE) for k, v in TRUE.items()}, frames)
    params = ParameterSet(mu=Positive(START["mu"], dtype=DTYPE, device=cfg.device),
                          kb=Positive(START["kb"], dtype=DTYPE, device=cfg.device))
    with torch.no_grad():
        start_video = exp.video(params.values(), frames)

    def loss_fn():
        return pyramid_mse(exp.video(params.values(), frames), target, levels=3)

    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=0.3, lr_final=0.03, method="adam", progress=cfg.progress,
                    desc="cloth")
    seconds = time.perf_counter() - t0
    est = params.snapshot()
    with torch.no_grad():
        end_video = exp.video(params.values(), frames)
    final_loss = float(pyramid_mse(end_video, target, levels=3))
    _side_by_side(cfg.out / "side_by_side.gif", target, start_video, end_video, panel=144 if cfg.quick else 192)
    plot_history(cfg.out / "curves.png", hist, targets=TRUE, final=est, final_loss=final_loss,
                 title="cloth: stretch (mu) and bending (kb) stiffness from pixels")
    metrics = {"iterations": hist.iterations, "seconds": seconds,
               "seconds_per_iteration": seconds / max(hist.iterations, 1), "frames": frames + 1,
               "views": int(target.shape[1]), "image_size": int(target.shape[2]),
               "initial_loss": hist.loss[0], "final_loss": final_loss}
    for k, v in TRUE.items():
        metrics[f"{k}_true"] = v
        metrics[f"{k}_start"] = START[k]
        metrics[f"{k}_estimate"] = est[k]
        metrics[f"rel_error_{k}"] = relative_error(est[k], v)
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
