"""Inverse rendering: recover a Cornell box's wall colours, light radiance and a box's position.

The Cornell box is made of explicit triangles (``diffvc.render.pt_scene.cornell_box``). One target
image is path traced (8 bounces) with the true parameters. Then:

1. **Materials and light**: starting from grey walls and a dim white light, L-BFGS on the three
   wall albedos (bounded to (0, 1)) and the light's RGB radiance (positive) recovers them from the
   image. Gradients: path replay backpropagation through every bounce.
2. **Geometry**: with the recovered materials, the short box starts displaced on the floor and
   its (x, z) position is recovered (Adam). Gradients: edge sampling of primary visibility (the box's
   silhouette and creases); shading and shadow changes contribute to the loss but not to the
   gradient (see ``diffvc.render.pathtrace``).

The optimisation renders with the same seed and sample count as the target ("same-seed noise"),
so the loss is exactly zero at the true parameters; Russian roulette is off (``rr_depth`` above
``max_depth``) so the estimator is smooth in the albedos.

    diffvc run inverse_rendering [--quick]
"""

from __future__ import annotations

import time

import torch

from ..optim import Bounded, ParameterSet, Positive, optimize
from ..render.pathtrace import path_trace
from ..render.pt_scene import CORNELL_COLORS, CORNELL_LIGHT, CORNELL_SHORT_BOX, cornell_box, cornell_camera
from ..viz import plot_curves, save_image, tile, to_uint8, write_metrics

DESCRIPTION = "Cornell box: recover wall colours, light radiance (path replay) and a box position (edge sampling)"

BOX_SIZE = CORNELL_SHORT_BOX[1][0]
START_OFFSET = (0.15, 0.0, -0.12)  # initial displacement of the short box (m)


def _loss(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # relative squared error: the light (radiance ~18) and the walls (~0.3) weigh alike
    return (((img - target) / (target + 0.05)) ** 2).mean()


def run(cfg) -> dict:
    dev = cfg.device
    size = 32 if cfg.quick else 64
    spp, depth, rr = 8, 8, 100
    seed = cfg.seed
    cam = cornell_camera(size, size, device=dev)
    true_center = torch.tensor(CORNELL_SHORT_BOX[0], device=dev)
    scene_true, info = cornell_box(device=dev)
    with torch.no_grad():
        target = path_trace(scene_true, cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)

    # ---------------------------------------------------------------- stage 1: colours + light
    names = ["white", "red", "green"]
    params = ParameterSet(
        white=Bounded([0.5, 0.5, 0.5], 0.0, 1.0, device=dev),
        red=Bounded([0.5, 0.5, 0.5], 0.0, 1.0, device=dev),
        green=Bounded([0.5, 0.5, 0.5], 0.0, 1.0, device=dev),
        light=Positive([5.0, 5.0, 5.0], device=dev),
    )

    def scene_with(p, center=None):
        s, _ = cornell_box(short_box_center=center, wall_colors={k: p[k] for k in names}, light_radiance=p["light"],
                           device=dev)
        return s

    with torch.no_grad():
        init_img = path_trace(scene_with(params), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)

    def loss1():
        return _loss(path_trace(scene_with(params), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr), target)

    # the same-seed objective is smooth and deterministic in these parameters: L-BFGS
    iters1 = cfg.iterations(full=30, quick=20)
    t0 = time.perf_counter()
    h1 = optimize(params, loss1, iters=iters1, lr=1.0, method="lbfgs", progress=cfg.progress,
                  desc="inverse_rendering: materials+light")
    t1 = time.perf_counter() - t0
    truth = {**{k: torch.tensor(CORNELL_COLORS[k]) for k in names}, "light": torch.tensor(CORNELL_LIGHT)}
    rel = {k: float(((params[k].detach().cpu() - truth[k]).abs() / truth[k]).max()) for k in truth}

    # ---------------------------------------------------------------- stage 2: box position
    fixed = {k: params[k].detach() for k in truth}
    offset = torch.zeros(2, device=dev, requires_grad=True)  # (dx, dz) from the start position
    start = true_center + torch.tensor(START_OFFSET, device=dev)

    def center_of(off):
        return start + torch.stack([off[0], torch.zeros_like(off[0]), off[1]])

    def scene_at(off):
        s, inf = cornell_box(short_box_center=center_of(off), wall_colors={k: fixed[k] for k in names},
                             light_radiance=fixed["light"], device=dev)
        return s.replace(dynamic_faces=inf["short_box_faces"])

    edge_samples = 4000 if cfg.quick else 8000

    def loss2():
        img = path_trace(scene_at(offset), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr,
                         edge_samples=edge_samples, edge_spp=2)
        return _loss(img, target)

    with torch.no_grad():
        start_img = path_trace(scene_at(offset), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)
    # the edge-sampled gradient changes with the sample placement: Adam with a decaying step
    iters2 = cfg.iterations(full=150, quick=150)
    t0 = time.perf_counter()
    h2 = optimize([offset], loss2, iters=iters2, lr=0.02, lr_final=0.002, method="adam", progress=cfg.progress,
                  desc="inverse_rendering: box position")
    t2 = time.perf_counter() - t0
    with torch.no_grad():
        final_center = center_of(offset).cpu()
        final_img = path_trace(scene_at(offset), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)
    pos_err = float((final_center - true_center.cpu()).norm())
    start_err = float(torch.tensor(START_OFFSET).norm())

    # ---------------------------------------------------------------- outputs
    panels = [to_uint8(im, srgb=True) for im in (init_img, target, start_img, final_img)]
    save_image(cfg.out / "images.png", tile(panels, labels=["colours: start", "target", "box: start", "box: result"],
                                           min_size=256), srgb=False)
    plot_curves(cfg.out / "curves.png", {"materials+light loss": h1.loss, "box position loss": h2.loss},
                title="inverse rendering (Cornell box)")
    metrics = {
        "resolution": size, "spp": spp, "max_depth": depth,
        "stage1_iterations": h1.iterations, "stage1_seconds": t1,
        "stage1_initial_loss": h1.loss[0], "stage1_final_loss": h1.loss[-1],
        **{f"rel_err_{k}": v for k, v in rel.items()},
        "max_rel_err_colours_and_light": max(rel.values()),
        "stage2_iterations": h2.iterations, "stage2_seconds": t2,
        "stage2_initial_loss": h2.loss[0], "stage2_final_loss": h2.loss[-1],
        "box_start_error_m": start_err, "box_final_error_m": pos_err, "box_size_m": BOX_SIZE,
        "box_final_error_fraction_of_size": pos_err / BOX_SIZE,
        **{f"recovered_{k}": str([round(x, 4) for x in fixed[k].cpu().tolist()]) for k in truth},
        "recovered_box_center": str([round(x, 4) for x in final_center.tolist()]),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
