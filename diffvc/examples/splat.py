"""Splat: fit 3D Gaussians to multi-view renders of a mesh scene (3D Gaussian splatting).

Target: a box, a smooth sphere and a torus, Lambert-shaded under a directional and an ambient
light, rendered by diffvc's own rasterizer (``diffvc.pipeline.render_frame``, antialiased) from
24 training cameras on a sphere; 8 further cameras (a rotated lattice) are held out. The splats
start from points sampled on the mesh surfaces (standing in for an SfM cloud) with grey colour
and are trained as in 3DGS: (0.8 L1 + 0.2 (1 - SSIM)) on random batches of training views,
Adam with one learning rate per parameter group (exponentially decaying for the means),
adaptive density control (clone / split / prune from view-space gradients) and SH degree raised
one band at a time. Reported: PSNR / SSIM on the held-out views, the number of Gaussians and the
time per iteration. 128 x 128 pixels; ``--quick``: 3,000 initial splats, SH degree 1, 200
iterations of 2 views; full: 5,000, SH degree 3, 400 iterations of 4 views.

Measured on the 2-core dev machine, idle: ``--quick`` held-out PSNR 28.0 dB (min 25.1), SSIM
0.946, 4,234 Gaussians, 59 ms per iteration, 15 s wall; full 38.0 dB (min 35.1), SSIM 0.985,
5,582 Gaussians, 109 ms per iteration, 47 s wall.

    diffvc run splat [--quick]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import box, icosphere, sample_points, torus
from ..geometry.transforms import axis_angle_to_matrix
from ..pipeline import Scene, render_frame
from ..render import AmbientLight, Cameras, DirectionalLight, sphere_eyes
from ..render.splat import (DensityControl, exponential_lr, gaussians_from_params, init_splat_params, psnr,
                            render_gaussians, splat_loss, splat_optimizer, ssim)
from ..viz import figure_to_array, plot_curves, save_animation, save_image, write_metrics

DESCRIPTION = "3D Gaussian splatting: fit splats to 24 rasterized views of a mesh scene, PSNR on 8 held-out views"

BACKGROUND = (0.04, 0.04, 0.06)
RADIUS, FOV = 3.4, 40.0


def _meshes(dtype):
    """(verts, faces, colour, smooth) of the three objects."""
    out = []
    v, f = box((0.55, 0.55, 0.55), dtype=dtype)
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.6, 0.0], dtype=dtype))
    out.append((v @ R.T + torch.tensor([-0.45, -0.2, 0.15], dtype=dtype), f, (0.8, 0.25, 0.2), False))
    v, f = icosphere(3, radius=0.33, dtype=dtype)
    out.append((v + torch.tensor([0.45, -0.1, -0.15], dtype=dtype), f, (0.2, 0.4, 0.85), True))
    v, f = torus(0.3, 0.1, dtype=dtype)
    R = axis_angle_to_matrix(torch.tensor([0.9, 0.0, 0.3], dtype=dtype))
    out.append((v @ R.T + torch.tensor([0.0, 0.45, 0.0], dtype=dtype), f, (0.9, 0.75, 0.2), True))
    return out


def make_scene(cameras: Cameras) -> Scene:
    dt = cameras.dtype
    lights = [DirectionalLight.create((-0.5, -1.0, -0.7), (2.6, 2.5, 2.4), dtype=dt),
              AmbientLight.create((0.12, 0.12, 0.14), dtype=dt)]
    scene = Scene(cameras, lights, background=torch.tensor(BACKGROUND, dtype=dt))
    for i, (v, f, c, smooth) in enumerate(_meshes(dt)):
        scene.add_shape(f"obj{i}", f, v, color=c, smooth=smooth)
    return scene


def cameras(n: int, res: int, seed: int | None = None, dtype=torch.float32) -> Cameras:
    return Cameras.look_at(sphere_eyes(n, RADIUS, seed=seed, dtype=dtype), width=res, height=res, fov_y=FOV,
                           dtype=dtype)


def surface_points(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    meshes = _meshes(dtype)
    verts = torch.cat([m[0] for m in meshes])
    offs = np.cumsum([0] + [m[0].shape[0] for m in meshes])
    faces = torch.cat([m[1] + int(o) for m, o in zip(meshes, offs)])
    g = torch.Generator().manual_seed(seed)
    return sample_points(verts, faces, n, generator=g)


def evaluate(params, cams: Cameras, targets: torch.Tensor, degree: int, chunk: int = 4):
    """PSNR / SSIM per view and the renders, without gradients."""
    outs = []
    with torch.no_grad():
        g = gaussians_from_params(params)
        for s in range(0, cams.batch_size, chunk):
            idx = list(range(s, min(s + chunk, cams.batch_size)))
            outs.append(render_gaussians(g, cams[idx], background=BACKGROUND, sh_degree=degree).color.clamp(0, 1))
    img = torch.cat(outs)
    ps = [psnr(img[i], targets[i]) for i in range(img.shape[0])]
    ss = [float(ssim(img[i:i + 1], targets[i:i + 1])) for i in range(img.shape[0])]
    return ps, ss, img


def _panel(path, targets, renders, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = targets.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n, 6.0), dpi=90)
    err = (renders - targets).abs().mean(-1)
    for i in range(n):
        for r, (img, lab) in enumerate([(targets[i], "target (raster)"), (renders[i], "splats"),
                                       (err[i], "|error| x4")]):
            ax = axes[r, i]
            if r < 2:
                ax.imshow(np.clip(img.cpu().numpy(), 0, 1) ** (1 / 2.2))
            else:
                ax.imshow(np.clip(img.cpu().numpy() * 4, 0, 1), cmap="magma", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(lab, fontsize=8)
        axes[1, i].set_title(f"{psnr(renders[i], targets[i]):.1f} dB", fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_image(path, figure_to_array(fig), srgb=False)


def run(cfg) -> dict:
    torch.manual_seed(cfg.seed)
    dt = torch.float32
    res = 128
    iters = cfg.iterations(full=400, quick=200)
    n_init = 3000 if cfg.quick else 5000
    max_degree = 1 if cfg.quick else 3
    batch = 2 if cfg.quick else 4
    train_cams = cameras(24, res, dtype=dt)
    test_cams = cameras(8, res, seed=cfg.seed + 1, dtype=dt)
    with torch.no_grad():
        train_img = render_frame(make_scene(train_cams), None).clamp(0, 1)
        test_img = render_frame(make_scene(test_cams), None).clamp(0, 1)

    pts = surface_points(n_init, cfg.seed, dt)
    params = init_splat_params(pts, sh_degree=max_degree, opacity=0.3)
    extent = float((pts - pts.mean(0)).norm(dim=-1).max()) * 1.1
    lr_means = 1.6e-3 * extent
    lrs = {"means": lr_means, "scales": 1e-2, "quats": 2e-3, "opacities": 5e-2, "sh0": 1e-2, "shN": 1e-2 / 20}
    opt = splat_optimizer(params, lrs)
    dc = DensityControl(extent, grad_threshold=2e-4, percent_dense=0.01)
    densify_every = 40 if cfg.quick else 50
    max_gaussians = 8000 if cfg.quick else 30000
    densify_until = int(0.6 * iters)
    degree_every = max(iters // 6, 1)
    gen = torch.Generator().manual_seed(cfg.seed)

    init_psnr, _, _ = evaluate(params, test_cams, test_img, 0)
    hist = {"loss": [], "train_psnr": [], "gaussians": []}
    t0 = time.perf_counter()
    bar = tqdm(range(iters), desc="splat", disable=not cfg.progress, dynamic_ncols=True)
    for it in bar:
        for group in opt.param_groups:
            if group["name"] == "means":
                group["lr"] = exponential_lr(it, lr_means, lr_means / 100, iters)
        degree = min(it // degree_every, max_degree)
        idx = torch.randperm(24, generator=gen)[:batch].tolist()
        out = render_gaussians(gaussians_from_params(params), train_cams[idx], background=BACKGROUND,
                               sh_degree=degree)
        means2d = out.projected.means2d
        means2d.retain_grad()
        loss = splat_loss(out.color, train_img[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if it < densify_until:
            # the loss averages `batch` views: scale back to one view's gradient (3DGS uses one)
            dc.accumulate(means2d.grad * batch, out.projected.radii, res, res)
        opt.step()
        if it < densify_until and (it + 1) % densify_every == 0 and it + 1 >= 2 * densify_every:
            grow = params["means"].shape[0] < max_gaussians
            params, _ = dc.densify_and_prune(params, opt, densify=grow, generator=gen)
        hist["loss"].append(float(loss.detach()))
        hist["train_psnr"].append(psnr(out.color.clamp(0, 1), train_img[idx]))
        hist["gaussians"].append(float(params["means"].shape[0]))
        bar.set_postfix(loss=f"{hist['loss'][-1]:.4f}", psnr=f"{hist['train_psnr'][-1]:.1f}",
                        n=params["means"].shape[0], refresh=False)
    bar.close()
    seconds = time.perf_counter() - t0
    # final prune of transparent splats (no densification)
    params, _ = dc.densify_and_prune(params, opt, densify=False)

    test_psnr, test_ssim, test_out = evaluate(params, test_cams, test_img, max_degree)
    train_psnr, _, train_out = evaluate(params, train_cams, train_img, max_degree)
    _panel(cfg.out / "heldout.png", test_img, test_out,
           f"held-out views: mean PSNR {np.mean(test_psnr):.2f} dB, SSIM {np.mean(test_ssim):.3f}, "
           f"{params['means'].shape[0]} Gaussians")
    frames = [np.concatenate([test_img[i].cpu().numpy(), test_out[i].cpu().numpy()], 1) for i in range(8)]
    frames += [np.concatenate([train_img[i].cpu().numpy(), train_out[i].cpu().numpy()], 1) for i in range(24)]
    save_animation(cfg.out / "views.gif", frames, fps=4)
    plot_curves(cfg.out / "curves.png", {"loss": hist["loss"], "train PSNR (dB, batch)": hist["train_psnr"],
                                         "Gaussians": hist["gaussians"]}, title="3D Gaussian splatting")
    metrics = {
        "heldout_psnr_db": float(np.mean(test_psnr)),
        "heldout_psnr_min_db": float(np.min(test_psnr)),
        "heldout_ssim": float(np.mean(test_ssim)),
        "initial_heldout_psnr_db": float(np.mean(init_psnr)),
        "train_psnr_db": float(np.mean(train_psnr)),
        "num_gaussians": int(params["means"].shape[0]),
        "initial_gaussians": n_init,
        "train_views": 24,
        "heldout_views": 8,
        "resolution": res,
        "iterations": iters,
        "seconds": seconds,
        "seconds_per_iteration": seconds / iters,
        "views_per_iteration": batch,
        "sh_degree": max_degree,
        "final_loss": hist["loss"][-1],
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
