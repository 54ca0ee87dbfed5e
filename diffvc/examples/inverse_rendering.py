"""Inverse rendering: recover a Cornell box's wall colours, light radiance and a box's position.

The Cornell box is made of explicit triangles (``diffvc.render.pt_scene.cornell_box``). One target
image is path traced (8 bounces) with the true parameters. Then:

1. **Materials and light**: starting from grey walls and a dim white light, L-BFGS on the three
   wall albedos (bounded to (0, 1)) and the light's RGB radiance (positive) recovers them from the
   image. Gradients: path replay backpropagation through every bounce.
2. **Geometry**: with the recovered materials, the short box starts displaced on the floor and
   its (x, z) position is recovered (Adam) from a *different* target: a low-noise photograph
   (``POS_TARGET_SPP`` samples per pixel, another seed) at twice the colour stage's resolution.
   Gradients: every edge term of :func:`~diffvc.render.pathtrace.path_trace` (primary edges
   -- silhouettes and creases --, the visibility boundary and interior terms at every path
   vertex up to ``max_depth``, and the shadow lines of the light).

The colour stage renders with the same seed and sample count as its target ("same-seed noise"),
so its loss is exactly zero at the true parameters; Russian roulette is off (``rr_depth`` above
``max_depth``) so the estimator is smooth in the albedos.

The position stage cannot work like that: with one fixed set of samples, the box settles where
*that* sample set's gradient vanishes, which the render's and the target's noise move away from
the truth (4.3 cm, 7% of the box's size, mostly in depth, at 32 x 32 and 8 spp against an 8-spp
target). So it draws fresh samples every iteration (the gradient noise averages out over
iterations instead of biasing the result), matches a target with ``POS_TARGET_SPP`` samples
(what is left of its noise biases the answer), renders at ``2 x`` the resolution (a
centimetre moves the box's edges twice as many pixels: the loss's curvature grows faster than its
noise), decays Adam's step, and reports the mean of the last ``AVERAGE_FRACTION`` of the
iterates (Polyak averaging) as the estimate.

Every render is the mean of ``SPP_CHUNKS`` renders of ``spp / SPP_CHUNKS`` samples, chunk ``k`` with
seed ``rank_seed(seed, k)`` (and ``1 / SPP_CHUNKS`` of the edge samples). ``diffvc run
inverse_rendering --nproc N`` (N <= ``SPP_CHUNKS``) splits the chunks over processes: each renders its
chunks, the chunk images are exchanged (the full image is the same sum in chunk order on every
process, so it does not depend on N), and each process back-propagates the loss through its own
chunks; :func:`~diffvc.optim.optimize` sums the gradients.

    diffvc run inverse_rendering [--quick]
"""

from __future__ import annotations

import time

import torch

from ..optim import Bounded, Free, ParameterSet, Positive, distributed, optimize
from ..render.pathtrace import path_trace
from ..render.pt_scene import CORNELL_COLORS, CORNELL_LIGHT, CORNELL_SHORT_BOX, cornell_box, cornell_camera
from ..viz import plot_curves, save_image, tile, to_uint8, write_metrics

DESCRIPTION = "Cornell box: recover wall colours, light radiance (path replay) and a box position (edge sampling)"

BOX_SIZE = CORNELL_SHORT_BOX[1][0]
START_OFFSET = (0.15, 0.0, -0.12)  # initial displacement of the short box (m)
POS_TARGET_SPP = 64  # the position stage's target: another seed, this many samples per pixel
AVERAGE_FRACTION = 0.5  # the position estimate: mean of this last fraction of the Adam iterates
SPP_CHUNKS = 4  # every render: this many chunks of spp / SPP_CHUNKS samples, the unit of sharding
SHARDS = f"samples per pixel ({SPP_CHUNKS} chunks of every render, each with its own seed; 1 to {SPP_CHUNKS} processes)"


def _render(scene, cam, spp: int, seed: int, **kw) -> torch.Tensor:
    """``path_trace`` as the mean of ``SPP_CHUNKS`` chunks of ``spp // SPP_CHUNKS`` samples (chunk k:
    seed ``rank_seed(seed, k)``; ``edge_samples``, ``secondary_spp`` and ``interior_spp`` split
    alike, at least 1 each), this process rendering chunks ``shard_range(SPP_CHUNKS)``.

    Returns the full (H, W, 3) image on every process: the chunk images are exchanged (each chunk
    comes from one process, so the sum is exact and in chunk order: the image does not depend on the
    process count). With grad enabled, its gradient reaches this process's chunks only; the other
    chunks' shares come from the other processes (:func:`~diffvc.optim.optimize` sums gradients).
    """
    per = {k: max(1, v // SPP_CHUNKS) for k, v in kw.items() if k in ("edge_samples", "secondary_spp", "interior_spp")
           and v > 0}
    mine = {k: path_trace(scene, cam, spp=max(1, spp // SPP_CHUNKS), seed=distributed.rank_seed(seed, k),
                          **{**kw, **per}) for k in distributed.shard_range(SPP_CHUNKS)}
    ref = next(iter(mine.values()))
    buf = torch.zeros(SPP_CHUNKS, *ref.shape, dtype=ref.dtype, device=ref.device)
    for k, im in mine.items():
        buf[k] = im.detach()
    distributed.all_reduce_([buf])
    full = buf.sum(0) / SPP_CHUNKS
    if not (torch.is_grad_enabled() and ref.requires_grad):
        return full
    own = torch.stack(list(mine.values())).sum(0) / SPP_CHUNKS
    return full + (own - own.detach())


def _share(loss: torch.Tensor) -> torch.Tensor:
    """This process's share of ``loss`` computed from a :func:`_render` image: its value is
    ``loss / N`` (optimize sums the processes' values back to ``loss``) and its gradient is this
    process's chunks' part of the gradient of ``loss``."""
    return loss.detach() / distributed.world_size() + (loss - loss.detach())


def _loss(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # relative squared error: the light (radiance ~18) and the walls (~0.3) weigh alike
    return (((img - target) / (target + 0.05)) ** 2).mean()


def run(cfg) -> dict:
    dev = cfg.device
    size = 32 if cfg.quick else 64
    spp, depth, rr = 8, 8, 100
    seed = cfg.seed
    if distributed.world_size() > SPP_CHUNKS:
        raise ValueError(f"nproc: inverse_rendering splits {SPP_CHUNKS} sample chunks, not {distributed.world_size()} "
                         f"processes")
    cam = cornell_camera(size, size, device=dev)
    true_center = torch.tensor(CORNELL_SHORT_BOX[0], device=dev)
    scene_true, info = cornell_box(device=dev)
    with torch.no_grad():
        target = _render(scene_true, cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)

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
        init_img = _render(scene_with(params), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)

    def loss1():
        return _share(_loss(_render(scene_with(params), cam, spp=spp, max_depth=depth, seed=seed, rr_depth=rr),
                            target))

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
    size2 = 2 * size
    cam2 = cornell_camera(size2, size2, device=dev)
    pos = ParameterSet(offset=Free([0.0, 0.0], device=dev))  # (dx, dz) from the start position
    start = true_center + torch.tensor(START_OFFSET, device=dev)

    def center_of(off):
        return start + torch.stack([off[0], torch.zeros_like(off[0]), off[1]])

    def scene_at(off):
        s, inf = cornell_box(short_box_center=center_of(off), wall_colors={k: fixed[k] for k in names},
                             light_radiance=fixed["light"], device=dev)
        return s.replace(dynamic_faces=inf["short_box_faces"])

    edge_samples = 4000 if cfg.quick else 8000
    with torch.no_grad():
        target2 = _render(scene_true, cam2, spp=POS_TARGET_SPP, max_depth=depth, seed=seed + 1, rr_depth=rr)
    step = [0]  # iteration whose render comes next (the callback advances it; every process alike)

    def loss2():
        # fresh samples every iteration (seed + 2 + iteration); the gradient has every edge term:
        # primary edges, and the visibility and interior terms at every path vertex
        img = _render(scene_at(pos["offset"]), cam2, spp=spp, max_depth=depth, seed=seed + 2 + step[0], rr_depth=rr,
                      edge_samples=edge_samples, edge_spp=2, secondary_spp=4, interior_spp=4)
        return _share(_loss(img, target2))

    def advance(it, _loss_value):
        step[0] = it + 1

    with torch.no_grad():
        start_img = _render(scene_at(pos["offset"]), cam2, spp=spp, max_depth=depth, seed=seed, rr_depth=rr)
    iters2 = cfg.iterations(full=200, quick=100)
    t0 = time.perf_counter()
    h2 = optimize(pos, loss2, iters=iters2, lr=0.02, lr_final=0.001, method="adam", progress=cfg.progress,
                  desc="inverse_rendering: box position", callback=advance)
    t2 = time.perf_counter() - t0
    iterates = torch.tensor([p["offset"] for p in h2.params] + [pos["offset"].detach().cpu().tolist()])
    n_avg = max(1, round(AVERAGE_FRACTION * h2.iterations))
    with torch.no_grad():
        last_center = center_of(pos["offset"].detach()).cpu()
        estimate = iterates[-n_avg:].mean(0).to(dev)
        final_center = center_of(estimate).cpu()
        final_img = _render(scene_at(estimate), cam2, spp=POS_TARGET_SPP, max_depth=depth, seed=seed + 1,
                            rr_depth=rr)
    pos_err = float((final_center - true_center.cpu()).norm())
    last_err = float((last_center - true_center.cpu()).norm())
    start_err = float(torch.tensor(START_OFFSET).norm())
    err_curve = [float((center_of(o.to(dev)).cpu() - true_center.cpu()).norm()) for o in iterates]

    # ---------------------------------------------------------------- outputs
    if distributed.rank() != 0:
        return {}  # outputs and metrics are rank 0's
    up = size2 // size  # the colour stage's panels enlarged to the position stage's resolution
    panels = [to_uint8(im, srgb=True).repeat(up, 0).repeat(up, 1) for im in (init_img, target)]
    panels += [to_uint8(im, srgb=True) for im in (target2, start_img, final_img)]
    save_image(cfg.out / "images.png",
               tile(panels, labels=["colours: start", "colours: target", f"box: target ({POS_TARGET_SPP} spp)",
                                    "box: start", "box: result"], min_size=256), srgb=False)
    plot_curves(cfg.out / "curves.png", {"materials+light loss": h1.loss, "box position loss": h2.loss,
                                         "box position error (m)": err_curve},
                title="inverse rendering (Cornell box)", targets={"box position error (m)": 0.01 * BOX_SIZE})
    metrics = {
        "resolution": size, "spp": spp, "spp_chunks": SPP_CHUNKS, "processes": distributed.world_size(),
        "max_depth": depth,
        "stage1_iterations": h1.iterations, "stage1_seconds": t1,
        "stage1_initial_loss": h1.loss[0], "stage1_final_loss": h1.loss[-1],
        **{f"rel_err_{k}": v for k, v in rel.items()},
        "max_rel_err_colours_and_light": max(rel.values()),
        "stage2_resolution": size2, "stage2_target_spp": POS_TARGET_SPP, "stage2_target_seed": seed + 1,
        "stage2_edge_samples": edge_samples, "stage2_secondary_spp": 4, "stage2_interior_spp": 4,
        "stage2_iterations": h2.iterations, "stage2_seconds": t2, "stage2_averaged_iterates": n_avg,
        "stage2_initial_loss": h2.loss[0], "stage2_final_loss": h2.loss[-1],
        "box_start_error_m": start_err, "box_final_error_m": pos_err, "box_size_m": BOX_SIZE,
        "box_final_error_fraction_of_size": pos_err / BOX_SIZE, "box_last_iterate_error_m": last_err,
        **{f"recovered_{k}": str([round(x, 4) for x in fixed[k].cpu().tolist()]) for k in truth},
        "recovered_box_center": str([round(x, 4) for x in final_center.tolist()]),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
