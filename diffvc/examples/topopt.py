"""Topology optimisation (SIMP): the MBB beam, a two-load cantilever and (full run) a 3D cantilever.

Compliance minimisation under a volume fraction with penalised densities ``E = Emin + x^3 (E0 -
Emin)``. The MBB half-beam is top88's own problem (volfrac 0.5, penal 3, rmin 1.5, density filter,
optimality criteria) and is checked against the numpy port of top88 run in the same process; the
cantilever carries two load cases (top-right down, bottom-right up) with a passive hole and is
optimised by MMA with a density filter and a Heaviside projection (beta continuation); the 3D
cantilever (full run) uses OC. The compliance gradient is the adjoint of the FEM solve.

    diffvc run topopt [--quick]

Writes ``densities.png`` (final designs), ``iterations.gif`` (the designs while they form),
``curves.png`` (compliance, volume, change) and ``metrics.json``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..topopt import SIMP, VOID, cantilever, cantilever_3d, mbb_beam, with_passive
from ..topopt.top88 import top88
from ..viz import figure_to_array, plot_curves, save_animation, save_image, tile, write_metrics
from . import single_threaded

DESCRIPTION = "SIMP topology optimisation: top88's MBB beam, a two-load cantilever (MMA, Heaviside), a 3D cantilever"


def _image(d: torch.Tensor, scale: int = 1) -> np.ndarray:
    """2D density ``(nelx, nely)`` -> grey image (black = solid) ``(nely, nelx, 3)`` in [0, 1]."""
    a = 1.0 - d.detach().cpu().float().numpy().T
    a = np.repeat(np.repeat(a, scale, 0), scale, 1)
    return np.repeat(a[..., None], 3, -1)


def _projections(d: torch.Tensor, scale: int = 4) -> np.ndarray:
    """3D density ``(nelx, nely, nelz)``: mean along z (front view) and along y (top view), stacked."""
    front = _image(d.mean(2), scale)
    top = _image(d.mean(1), scale)
    pad = np.ones((4, front.shape[1], 3))
    return np.concatenate([front, pad, top], 0)


def _frames(runs: list[tuple[str, object, int]], n_frames: int = 40) -> list[np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    for k in range(n_frames):
        fig, axes = plt.subplots(len(runs), 1, figsize=(5.0, 2.2 * len(runs)), dpi=80, squeeze=False)
        for ax, (name, res, _) in zip(axes[:, 0], runs):
            snaps = res.snapshots
            j = min(int(round(k / (n_frames - 1) * (len(snaps) - 1))), len(snaps) - 1)
            it, d = snaps[j]
            img = _image(d) if d.dim() == 2 else _projections(d, 1)
            ax.imshow(img, interpolation="nearest")
            c = res.compliance[min(it, res.iterations - 1)]
            ax.set_title(f"{name}: iteration {it}, c = {c:.4g}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        frames.append(figure_to_array(fig))
    return frames


# small tensors in a Python loop: one torch thread (a second one mostly spins on a shared
# CPU; the top88 port beside it is single-threaded too)
@single_threaded
def run(cfg) -> dict:
    quick = cfg.quick
    dtype = torch.float64
    dev = cfg.device
    metrics: dict = {}
    runs = []
    t_all = time.perf_counter()

    # 1. top88's MBB beam (density filter, OC) against the numpy port of top88
    nelx, nely = (60, 20) if quick else (150, 50)
    mbb_iters = cfg.iterations(2000, 2000)
    t0 = time.perf_counter()
    ref = top88(nelx, nely, 0.5, 3.0, 1.5, 2, max_iter=mbb_iters)
    t_ref = time.perf_counter() - t0
    s = SIMP(mbb_beam(nelx, nely, dtype, dev), 0.5, 3.0, 1.5, filter="density")
    t0 = time.perf_counter()
    mbb = s.optimize("oc", max_iter=mbb_iters, snapshot_every=2, progress=cfg.progress)
    t_mbb = time.perf_counter() - t0
    runs.append((f"MBB {nelx}x{nely} (OC, density filter)", mbb, 2))
    metrics.update({
        "mbb_size": f"{nelx}x{nely}", "mbb_compliance": mbb.compliance[-1], "mbb_iterations": mbb.iterations,
        "mbb_volume": float(mbb.density.mean()), "mbb_seconds": t_mbb,
        "mbb_top88_compliance": ref["c"][-1], "mbb_top88_iterations": ref["iterations"], "mbb_top88_seconds": t_ref,
        "mbb_compliance_rel_diff": abs(mbb.compliance[-1] - ref["c"][-1]) / ref["c"][-1],
        "mbb_max_density_diff": float(np.abs(mbb.density.cpu().numpy().T - ref["x"]).max()),
    })

    # 2. cantilever, two load cases, a passive hole; MMA + density filter + Heaviside projection
    nelx, nely = (60, 30) if quick else (120, 60)
    prob = cantilever(nelx, nely, load="two", dtype=dtype, device=dev)
    ii, jj = torch.meshgrid(torch.arange(nelx), torch.arange(nely), indexing="ij")
    passive = torch.zeros(nelx, nely, dtype=torch.int8)
    passive[((ii - nelx // 3) ** 2 + (jj - nely // 2) ** 2) < (nely // 5) ** 2] = VOID
    prob = with_passive(prob, passive.to(dev))
    s2 = SIMP(prob, 0.4, 3.0, rmin=1.5 if quick else 2.5, filter="density", beta=1.0, beta_max=8.0,
              beta_every=25 if quick else 40)
    t0 = time.perf_counter()
    cant = s2.optimize("mma", max_iter=cfg.iterations(300, 120), snapshot_every=2, progress=cfg.progress)
    runs.append((f"cantilever {nelx}x{nely}, 2 loads, hole (MMA, Heaviside)", cant, 2))
    grey = float((4 * cant.density * (1 - cant.density)).mean())
    metrics.update({
        "cantilever_size": f"{nelx}x{nely}", "cantilever_compliance_initial": cant.compliance[0],
        "cantilever_compliance": cant.compliance[-1], "cantilever_iterations": cant.iterations,
        "cantilever_volume": float(cant.density.mean()), "cantilever_greyness": grey,
        "cantilever_hole_max_density": float(cant.density[passive.to(dev) == VOID].max()),
        "cantilever_final_beta": cant.beta[-1], "cantilever_seconds": time.perf_counter() - t0,
    })

    images = [_image(mbb.density, max(1, 600 // mbb.density.shape[0])),
              _image(cant.density, max(1, 600 // cant.density.shape[0]))]
    labels = [f"MBB (OC, density filter): c = {mbb.compliance[-1]:.4f}, top88 port: {ref['c'][-1]:.4f}, "
              f"{mbb.iterations} vs {ref['iterations']} iterations",
              f"cantilever, 2 load cases, passive hole (MMA, Heaviside): c = {cant.compliance[-1]:.4g}"]

    # 3. 3D cantilever (full run only)
    if not quick:
        p3 = cantilever_3d(48, 16, 8, dtype=dtype, device=dev)
        s3 = SIMP(p3, 0.2, 3.0, rmin=1.5, filter="density")
        t0 = time.perf_counter()
        c3 = s3.optimize("oc", max_iter=cfg.iterations(60, 60), snapshot_every=2, progress=cfg.progress)
        runs.append(("3D cantilever 48x16x8 (front / top mean density)", c3, 2))
        metrics.update({"cantilever3d_compliance_initial": c3.compliance[0], "cantilever3d_compliance": c3.compliance[-1],
                        "cantilever3d_iterations": c3.iterations, "cantilever3d_volume": float(c3.density.mean()),
                        "cantilever3d_seconds": time.perf_counter() - t0})
        save_image(cfg.out / "cantilever3d.png",
                   tile([_projections(c3.density, 8)], labels=[f"3D cantilever 48x16x8: front (mean over z) / top "
                                                             f"(mean over y), c = {c3.compliance[-1]:.4g}"]), srgb=False)

    w = max(i.shape[1] for i in images)
    padded = []
    for im in images:  # same size panels for tile()
        h = max(i.shape[0] for i in images)
        p = np.ones((h, w, 3))
        p[: im.shape[0], : im.shape[1]] = im
        padded.append(p)
    save_image(cfg.out / "densities.png", tile(padded, cols=1, labels=labels), srgb=False)
    save_animation(cfg.out / "iterations.gif", _frames(runs), fps=8, srgb=False)
    curves = {}
    for name, res, _ in runs:
        key = name.split(" ")[0] if not name.startswith("3D") else "3D"
        curves[f"{key} compliance"] = res.compliance
    curves["MBB volume"] = mbb.volume
    curves["cantilever change"] = cant.change
    plot_curves(cfg.out / "curves.png", curves, title="SIMP topology optimisation")
    metrics["seconds"] = time.perf_counter() - t_all
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
