"""SDF from views: recover a non-convex shape's signed distance field from shaded images by
sphere tracing.

The target is the blob "creature" of the ``silhouettes`` example (smooth-CSG body, head and three
limbs) with a bowl-shaped dent scooped out of its belly (``smooth_difference``): a concavity that
no silhouette shows, only the shading. It is rendered by sphere tracing its analytic SDF
(:func:`diffvc.render.render_sdf`, Lambert shading: diffuse under a directional light attached to
each camera, plus ambient) from 24 training views and 8 held-out views on a sphere.

The unknown is a dense grid SDF (trilinear, nodes on ``[-1, 1]^3``), coarse to fine
(24^3 -> 40^3 -> 64^3, each stage starts from the previous grid upsampled), initialised to a
sphere. Each iteration sphere-traces a random batch of pixels of all training views
(:func:`diffvc.render.sphere_trace`: implicit differentiation at the hits, relaxed silhouettes
``sigmoid(-f_min / smoothing)``, the smoothing annealed from coarse to fine) and minimises

* the L1 colour error of the shaded pixels (:func:`diffvc.render.sphere_trace.shade_sdf`),
* a mask term ``(coverage - mask)^2`` (the target's object mask),
* an eikonal term ``(|grad f| - 1)^2`` at the hits and at random points of the box (its gradient
  is a second derivative: double backward through the tracer's normals),
* a small Laplacian smoothness term on the grid.

The result's zero level set is meshed by marching tetrahedra (:func:`diffvc.geometry.sdf_to_mesh`).

Metrics: ``chamfer`` = symmetric Chamfer distance (means of unsquared nearest-neighbour
distances, both directions summed) between 100k surface samples of the result and of the target
mesh, divided by the target's bounding-box diagonal (the same convention as ``silhouettes``; two
independent 100k samplings of the *same* mesh score about 0.0024, the floor of this estimate);
``psnr_heldout`` = PSNR of the sphere-traced result against the target in the 8 held-out views;
``iou_heldout``: mean IoU of the binary masks there; wall and CPU seconds.

Measured (``--quick``: 64 px views, 300 iterations of 3072 rays; seed 0): Chamfer 0.0032 (start
0.118), held-out PSNR 32.1 dB (start 14.4 dB), held-out mask IoU 0.986; 129 s of CPU time for the
whole run (87 s optimising), single-threaded, so about that wall time on an idle machine (20 min
on the shared dev machine at load average ~20). Full (128 px views, 900 iterations of 6144 rays):
Chamfer 0.0027, held-out PSNR 36.1 dB, IoU 0.991; 308 s of CPU time optimising.

    diffvc run sdf_from_views [--quick]
"""

from __future__ import annotations

import math
import time

import torch

from ..geometry import chamfer_distance, grid_points, sample_points, sdf_sphere, sdf_to_mesh, smooth_difference, trilinear_sample
from ..optim import optimize
from ..render import Cameras, generate_rays, sphere_eyes
from ..render.sphere_trace import render_sdf, shade_sdf, sphere_trace
from ..viz import plot_curves, save_image, tile, write_metrics
from . import single_threaded
from .silhouettes import target_sdf as creature_sdf

DESCRIPTION = "recover a non-convex shape's SDF (dense grid, coarse to fine) from 24 shaded views by sphere tracing"

ALBEDO = (0.8, 0.62, 0.45)
AMBIENT = 0.15
BACKGROUND = (0.0, 0.0, 0.0)
LIGHT_CAM = (0.45, 0.6, 1.0)  # light direction in camera coordinates (towards the light; camera looks along -z)


def target_sdf(p: torch.Tensor) -> torch.Tensor:
    """The ``silhouettes`` creature with a bowl-shaped dent (about 0.1 deep) in its belly (+z side of the body)."""
    return smooth_difference(creature_sdf(p), sdf_sphere(p, (0.0, -0.08, 0.56), 0.3), 0.06)


def make_cameras(n: int, size: int, seed: int | None = None, dtype=torch.float32, device="cpu") -> Cameras:
    eyes = sphere_eyes(n, 3.0, seed=seed, dtype=dtype, device=device)
    return Cameras.look_at(eyes, width=size, height=size, fov_y=40.0).to(dtype, device)


def camera_lights(cams: Cameras) -> torch.Tensor:
    """One directional light per camera, (B, 3) world directions: ``LIGHT_CAM`` in camera axes."""
    l = torch.tensor(LIGHT_CAM, dtype=cams.dtype, device=cams.device)
    l = l / l.norm()
    return (cams.R.transpose(-1, -2) @ l).reshape(-1, 3)


def grid_sdf(values: torch.Tensor):
    """The SDF of a node grid on ``[-1, 1]^3`` (trilinear)."""
    return lambda p: trilinear_sample(values, p, (-1.0, 1.0))


def upsample(values: torch.Tensor, n: int) -> torch.Tensor:
    """Resample a node grid to ``n^3`` nodes (trilinear, same box)."""
    with torch.no_grad():
        p = grid_points(n, (-1.0, 1.0), values.dtype, values.device).reshape(-1, 3)
        return trilinear_sample(values, p, (-1.0, 1.0)).reshape(n, n, n)


def laplacian_loss(v: torch.Tensor) -> torch.Tensor:
    """Mean squared discrete Laplacian of a node grid, scaled by h^2 (h the node spacing)."""
    lap = (v[2:, 1:-1, 1:-1] + v[:-2, 1:-1, 1:-1] + v[1:-1, 2:, 1:-1] + v[1:-1, :-2, 1:-1]
           + v[1:-1, 1:-1, 2:] + v[1:-1, 1:-1, :-2] - 6 * v[1:-1, 1:-1, 1:-1])
    h = 2.0 / (v.shape[0] - 1)
    return (lap / h).pow(2).mean()


def grid_eikonal(v: torch.Tensor) -> torch.Tensor:
    """Mean ``(|grad f| - 1)^2`` over all cells of a node grid, with the trilinear gradient at each
    cell centre (the mean of the cell's four edge differences per axis)."""
    h = 2.0 / (v.shape[0] - 1)
    dx = (v[1:] - v[:-1]) / h
    dy = (v[:, 1:] - v[:, :-1]) / h
    dz = (v[:, :, 1:] - v[:, :, :-1]) / h
    gx = 0.25 * (dx[:, 1:, 1:] + dx[:, :-1, 1:] + dx[:, 1:, :-1] + dx[:, :-1, :-1])
    gy = 0.25 * (dy[1:, :, 1:] + dy[:-1, :, 1:] + dy[1:, :, :-1] + dy[:-1, :, :-1])
    gz = 0.25 * (dz[1:, 1:] + dz[:-1, 1:] + dz[1:, :-1] + dz[:-1, :-1])
    return ((gx * gx + gy * gy + gz * gz + 1e-12).sqrt() - 1).pow(2).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def chamfer_metric(va, fa, vb, fb, n: int = 100_000, seed: int = 0) -> float:
    """Symmetric Chamfer distance (unsquared, means) between ``n`` samples of each mesh, divided by
    the bounding-box diagonal of mesh ``b`` (the target)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pa = sample_points(va.double(), fa, n, generator=g)
        pb = sample_points(vb.double(), fb, n, generator=g)
        d = chamfer_distance(pa, pb, squared=False)
        diag = (vb.amax(0) - vb.amin(0)).double().norm()
    return float(d / diag)


def render(cams: Cameras, sdf, smoothing: float, chunk: int = 4):
    """Full images (B, H, W, 3) and hit masks (B, H, W), without gradients, a few views at a time."""
    imgs, masks = [], []
    with torch.no_grad():
        for i in range(0, cams.batch_size, chunk):
            c = cams[list(range(i, min(i + chunk, cams.batch_size)))]
            img, hits = render_sdf(c, sdf, albedo=ALBEDO, light_dir=camera_lights(c), ambient=AMBIENT,
                                   background=BACKGROUND, smoothing=smoothing, max_steps=128)
            imgs.append(img.detach())
            masks.append(hits.hit.reshape(c.batch_size, c.height, c.width))
    return torch.cat(imgs), torch.cat(masks)


@single_threaded
def run(cfg) -> dict:
    dtype = torch.float32
    dev = cfg.device
    size = int(getattr(cfg, "size", None) or (64 if cfg.quick else 128))
    n_views, n_held = 24, 8
    iters_total = cfg.iterations(full=900, quick=300)
    n_rays = int(getattr(cfg, "rays", None) or (3072 if cfg.quick else 6144))
    resolutions = tuple(getattr(cfg, "resolutions", None) or (24, 40, 64))
    mesh_res = int(getattr(cfg, "mesh_resolution", None) or 64)       # marching-tets grid of both meshes
    n_samples = int(getattr(cfg, "chamfer_samples", None) or 100_000)  # surface samples per mesh
    fractions = (0.3, 0.3, 0.4)[-len(resolutions):] if len(resolutions) <= 3 else [1 / len(resolutions)] * len(resolutions)
    g = torch.Generator().manual_seed(cfg.seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    cams = make_cameras(n_views, size, dtype=dtype, device=dev)
    held = make_cameras(n_held, size, seed=cfg.seed + 17, dtype=dtype, device=dev)
    target, target_mask = render(cams, target_sdf, smoothing=1e-3)
    target_held, held_mask = render(held, target_sdf, smoothing=1e-3)
    with torch.no_grad():
        tv, tf = sdf_to_mesh(target_sdf, mesh_res, (-1.0, 1.0), dtype=dtype, device=dev)
    o_all, d_all = generate_rays(cams)
    o_all, d_all = o_all.reshape(-1, 3), d_all.reshape(-1, 3)
    light_all = camera_lights(cams)[:, None, :].expand(n_views, size * size, 3).reshape(-1, 3)
    tgt_all = target.reshape(-1, 3)
    mask_all = target_mask.reshape(-1).to(dtype)

    p0 = grid_points(resolutions[0], (-1.0, 1.0), dtype, dev)
    values0 = (p0.norm(dim=-1) - 0.6).contiguous()
    values = values0.clone()
    curves = {"total": [], "colour L1": [], "mask": [], "eikonal": []}
    stage_iters = []
    left = iters_total
    for s, n in enumerate(resolutions):
        it_s = left if s == len(resolutions) - 1 else max(1, round(iters_total * fractions[s]))
        left -= it_s
        stage_iters.append(it_s)
    smooth_stage = [0.04, 0.02, 0.01][-len(resolutions):] if len(resolutions) <= 3 else [0.02] * len(resolutions)
    lap_w = [3e-3, 1e-3, 3e-4][-len(resolutions):] if len(resolutions) <= 3 else [1e-3] * len(resolutions)
    eik_w = float(getattr(cfg, "eikonal_weight", None) or 0.1)
    stats = {}
    for s, n in enumerate(resolutions):
        if values.shape[0] != n:
            values = upsample(values, n)
        v = values.clone().requires_grad_()
        fn = grid_sdf(v)
        smoothing = smooth_stage[s]

        def loss_fn():
            idx = torch.randint(0, o_all.shape[0], (n_rays,), generator=g)
            hits = sphere_trace(fn, o_all[idx], d_all[idx], max_steps=64, n_min_samples=48, smoothing=smoothing)
            rgb = shade_sdf(hits, ALBEDO, light_all[idx], AMBIENT, BACKGROUND)
            l_rgb = (rgb - tgt_all[idx]).abs().mean()
            l_mask = (hits.coverage - mask_all[idx]).pow(2).mean()
            # eikonal: at the hits (|grad f| by autograd: its gradient is a second derivative, a
            # double backward through the tracer) and over every cell of the grid
            eik_hits = ((hits.grad_norm[hits.hit] - 1) ** 2).mean() if bool(hits.hit.any()) else v.sum() * 0
            eik = 0.5 * (eik_hits + grid_eikonal(v))
            loss = l_rgb + l_mask + eik_w * eik + lap_w[s] * laplacian_loss(v)
            stats.update(rgb=float(l_rgb.detach()), mask=float(l_mask.detach()), eik=float(eik.detach()))
            return loss

        def record(it, loss):
            curves["total"].append(loss)
            curves["colour L1"].append(stats["rgb"])
            curves["mask"].append(stats["mask"])
            curves["eikonal"].append(stats["eik"])

        optimize([v], loss_fn, iters=stage_iters[s], lr=0.03 if s == 0 else 0.005, lr_final=0.005 if s == 0 else 0.001,
                 method="adam", progress=cfg.progress, desc=f"sdf_from_views {n}^3", callback=record)
        values = v.detach()
    seconds, cpu_seconds = time.perf_counter() - wall0, time.process_time() - cpu0
    if cfg.progress:
        print(f"optimisation: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")

    fn = grid_sdf(values)
    with torch.no_grad():
        rv, rf = sdf_to_mesh(fn, mesh_res, (-1.0, 1.0), dtype=dtype, device=dev)
        sv, sf = sdf_to_mesh(grid_sdf(values0), mesh_res, (-1.0, 1.0), dtype=dtype, device=dev)
    result, result_mask = render(cams, fn, smoothing=1e-3)
    show = [0, 6, 12, 18]
    start, _ = render(cams[show], grid_sdf(values0), smoothing=1e-3)
    result_held, rmask_held = render(held, fn, smoothing=1e-3)
    start_held, _ = render(held, grid_sdf(values0), smoothing=1e-3)

    def iou(a, b):
        return float(((a & b).sum((1, 2)).double() / (a | b).sum((1, 2)).double().clamp_min(1)).mean())

    panel = 160 if cfg.quick else 256
    imgs, labels = [], []
    for name, x in (("target", target[show]), ("start", start), ("result", result[show])):
        for k, i in enumerate(show):
            imgs.append(x[k])
            labels.append(f"{name} (train view {i})")
    save_image(cfg.out / "comparison.png", tile(imgs, cols=len(show), min_size=panel, labels=labels))
    imgs, labels = [], []
    for name, x in (("target", target_held), ("start", start_held), ("result", result_held)):
        for i in range(4):
            imgs.append(x[i])
            labels.append(f"{name} (held-out {i})")
    save_image(cfg.out / "heldout.png", tile(imgs, cols=4, min_size=panel, labels=labels))
    err = (result_held[:4] - target_held[:4]).abs().mean(-1, keepdim=True).expand(-1, -1, -1, 3) * 4
    save_image(cfg.out / "heldout_error.png",
               tile(list(err.clamp(0, 1)), cols=4, min_size=panel, labels=[f"|error| x4 (held-out {i})" for i in range(4)]),
               srgb=False)
    plot_curves(cfg.out / "curves.png", curves, title="sdf_from_views: loss terms (stages " +
                " -> ".join(f"{n}^3" for n in resolutions) + ")")

    metrics = {
        "chamfer": chamfer_metric(rv, rf, tv, tf, n_samples),
        "chamfer_start": chamfer_metric(sv, sf, tv, tf, n_samples),
        "chamfer_samples": n_samples,
        "mesh_resolution": mesh_res,
        "psnr_heldout": psnr(result_held, target_held),
        "psnr_heldout_start": psnr(start_held, target_held),
        "psnr_train": psnr(result, target),
        "iou_heldout": iou(rmask_held, held_mask),
        "iou_train": iou(result_mask, target_mask),
        "final_loss": curves["total"][-1],
        "initial_loss": curves["total"][0],
        "iterations": sum(stage_iters),
        "stage_iterations": " / ".join(str(i) for i in stage_iters),
        "grid_resolutions": " -> ".join(f"{n}^3" for n in resolutions),
        "rays_per_iteration": n_rays,
        "seconds": seconds,            # optimisation (wall); the CPU-time figures are single-threaded
        "cpu_seconds": cpu_seconds,    # optimisation (CPU)
        "total_seconds": time.perf_counter() - wall0,      # the whole run up to here: targets, fit, meshes, renders
        "total_cpu_seconds": time.process_time() - cpu0,
        "seconds_per_iteration": seconds / max(1, sum(stage_iters)),
        "views": n_views,
        "held_out_views": n_held,
        "resolution": size,
        "result_vertices": int(rv.shape[0]),
        "target_vertices": int(tv.shape[0]),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
