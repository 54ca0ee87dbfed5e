"""Silhouettes: recover a non-convex shape from its silhouettes in 20 views.

The target is a genus-0 "creature" built procedurally from smooth-CSG SDF blobs (a body, a head
and three limbs, smooth union) and meshed by marching tetrahedra (``diffvc.geometry``). It is
rendered from 20 cameras spread over a sphere as antialiased silhouettes
(``rasterize -> antialias``). Starting from an icosphere, the vertex positions are optimized with
the large-steps reparameterization (Nicolet et al. 2021: Adam on ``u = (I + lam L) x``) so the
rendered silhouettes match; the only gradient signal is the visibility gradient at silhouette
edges from the antialiasing pass.

Metrics: ``chamfer`` = symmetric mean point-to-point distance between 20k surface samples of
result and target (``mean_x d(x, Y) + mean_y d(y, X)``), divided by the target's bounding-box
diagonal; ``iou`` = mean intersection-over-union of the binary silhouettes in 8 held-out views
(cameras not used for fitting).

    diffvc run silhouettes [--quick]
"""

from __future__ import annotations

import time

import torch

from ..geometry import (LargeSteps, chamfer_distance, icosphere, sample_points, sdf_capsule, sdf_sphere,
                        sdf_to_mesh, smooth_union)
from ..optim import optimize
from ..render import Cameras, antialias, mesh_topology, rasterize, sphere_eyes
from ..viz import plot_curves, save_image, tile, to_uint8, write_metrics

DESCRIPTION = "recover a non-convex shape from 20 silhouette views (icosphere + large steps)"


def target_sdf(p: torch.Tensor) -> torch.Tensor:
    """Smooth union of a body, a head and three limbs (a non-convex, genus-0 blob creature)."""
    d = sdf_sphere(p, (0.0, -0.05, 0.0), 0.42)
    d = smooth_union(d, sdf_sphere(p, (0.05, 0.52, 0.05), 0.24), 0.12)
    d = smooth_union(d, sdf_capsule(p, (0.2, -0.05, 0.0), (0.72, 0.25, 0.15), 0.13), 0.1)
    d = smooth_union(d, sdf_capsule(p, (-0.2, -0.1, 0.0), (-0.7, -0.3, -0.25), 0.14), 0.1)
    d = smooth_union(d, sdf_capsule(p, (0.0, -0.3, 0.1), (0.1, -0.78, 0.45), 0.12), 0.1)
    return d


def make_target(resolution: int = 40, dtype=torch.float32, device="cpu"):
    with torch.no_grad():
        v, f = sdf_to_mesh(target_sdf, resolution, (-1.0, 1.0), dtype=dtype, device=device)
    return v.detach(), f


def make_cameras(n: int, size: int, seed: int | None = None, dtype=torch.float32, device="cpu") -> Cameras:
    eyes = sphere_eyes(n, 3.0, seed=seed, dtype=dtype, device=device)
    return Cameras.look_at(eyes, width=size, height=size, fov_y=40.0).to(dtype, device)


def shaded(cams: Cameras, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Smooth-shaded renders (B, H, W, 3) of a mesh (pipeline rasterizer, one key light)."""
    from ..pipeline import Scene, render_frame
    from ..render import AmbientLight, DirectionalLight

    dt, dev = verts.dtype, verts.device
    scene = Scene(cams, [DirectionalLight.create([-0.5, -1.0, -0.7], [2.4, 2.4, 2.4], dtype=dt, device=dev),
                         AmbientLight.create([0.1, 0.1, 0.12], dtype=dt, device=dev)],
                  background=torch.tensor([0.9, 0.92, 0.95], dtype=dt, device=dev))
    scene.add_shape("mesh", faces, verts, color=(0.75, 0.55, 0.35), smooth=True)
    return render_frame(scene, None)


def silhouettes(cams: Cameras, verts: torch.Tensor, faces: torch.Tensor, topo=None) -> torch.Tensor:
    """Antialiased silhouettes (B, H, W, 1): coverage, differentiable w.r.t. ``verts``."""
    fr = rasterize(cams, verts, faces)
    return antialias(fr.mask, fr, topo, background=0.0)


def iou(cams: Cameras, va, fa, vb, fb) -> float:
    """Mean IoU of the binary (pixel-centre) silhouettes of two meshes over the views."""
    with torch.no_grad():
        a = rasterize(cams, va, fa).face_id >= 0
        b = rasterize(cams, vb, fb).face_id >= 0
        inter = (a & b).sum((1, 2)).double()
        union = (a | b).sum((1, 2)).double().clamp_min(1)
    return float((inter / union).mean())


def chamfer_metric(va, fa, vb, fb, n: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance (not squared, means) / target bounding-box diagonal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pa = sample_points(va, fa, n, generator=g)
        pb = sample_points(vb, fb, n, generator=g)
        d = chamfer_distance(pa, pb, squared=False)
        diag = (vb.amax(0) - vb.amin(0)).norm()
    return float(d / diag)


def cfg_size(cfg) -> int:
    """Image size: 128 px for --quick, 192 px otherwise (``cfg.size`` overrides, for tests)."""
    return int(getattr(cfg, "size", None) or (128 if cfg.quick else 192))


def run(cfg) -> dict:
    dtype = torch.float32
    dev = cfg.device
    size = cfg_size(cfg)
    n_views, n_held = 20, 8
    iters = cfg.iterations(full=600, quick=200)
    subdiv = getattr(cfg, "subdivisions", None) or 4

    tv, tf = make_target(40, dtype, dev)
    cams = make_cameras(n_views, size, dtype=dtype, device=dev)
    held = make_cameras(n_held, size, seed=cfg.seed + 17, dtype=dtype, device=dev)
    with torch.no_grad():
        target = silhouettes(cams, tv, tf)

    v0, f0 = icosphere(subdiv, radius=0.55, dtype=dtype, device=dev)
    topo = mesh_topology(f0, v0.shape[0])
    ls = LargeSteps(v0, f0, lam=20.0)

    def loss_fn():
        return ((silhouettes(cams, ls.verts(), f0, topo) - target) ** 2).mean()

    # The per-op tensors here are small (20 views of 128^2 px): torch's intra-op threads cost
    # more than they save (on the shared 2-core dev machine one iteration took 0.05 s with one
    # thread and 0.3 s with two), so the loop runs single-threaded and the setting is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        hist = optimize([ls.u], loss_fn, iters=iters, lr=0.1, lr_final=0.01, method="adam",
                        progress=cfg.progress, desc="silhouettes")
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)

    with torch.no_grad():
        vr = ls.verts().detach()
        show = cams[[0, 5, 10, 15]]
        rows = [silhouettes(show, tv, tf), silhouettes(show, v0, f0), silhouettes(show, vr, f0)]
        shade_t, shade_r = shaded(show, tv, tf), shaded(show, vr, f0)
    panel = 128 if cfg.quick else 256
    for name, r in zip(("target", "start", "result"), rows):
        save_image(cfg.out / f"{name}.png", tile([r[i] for i in range(r.shape[0])], min_size=panel,
                                                 labels=[f"{name} (view {i})" for i in range(r.shape[0])]), srgb=False)
    save_image(cfg.out / "comparison.png",
               tile([rows[k][i] for k in range(3) for i in range(4)], cols=4, min_size=panel,
                    labels=[f"{n} silhouette (view {i})" for n in ("target", "start", "result") for i in range(4)]),
               srgb=False)
    shades = [to_uint8(x, srgb=True) for x in list(shade_t) + list(shade_r)]
    save_image(cfg.out / "shaded.png",
               tile(shades, cols=4, min_size=panel,
                    labels=[f"{n} shaded (view {i})" for n in ("target", "result") for i in range(4)]), srgb=False)
    plot_curves(cfg.out / "curves.png", {"silhouette loss": hist.loss}, title="silhouettes: loss")

    metrics = {
        "chamfer": chamfer_metric(vr, f0, tv, tf),
        "chamfer_start": chamfer_metric(v0, f0, tv, tf),
        "iou": iou(held, vr, f0, tv, tf),
        "iou_start": iou(held, v0, f0, tv, tf),
        "iou_train_views": iou(cams, vr, f0, tv, tf),
        "final_loss": hist.loss[-1],
        "initial_loss": hist.loss[0],
        "iterations": hist.iterations,
        "seconds": seconds,
        "views": n_views,
        "held_out_views": n_held,
        "resolution": size,
        "mesh_vertices": int(v0.shape[0]),
        "mesh_faces": int(f0.shape[0]),
        "target_vertices": int(tv.shape[0]),
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
