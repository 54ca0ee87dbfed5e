"""NeRF-style radiance fields fitted to path-traced views: a dense grid with spherical harmonics
(Plenoxels-style) and a hash-grid :class:`~diffvc.geometry.NeuralField`.

Scene (rendered once by diffvc's own path tracer, :func:`diffvc.render.path_trace`, and cached):
three objects floating in front of a plain background, a red diffuse box, a blue diffuse box and
a glossy yellow "plastic" sphere (view-dependent highlight), lit by a uniform environment (which is
also the background) and a directional sun, with shadows and inter-reflections (3 bounces). A
bounded object set in front of a constant background was chosen over the closed Cornell box:
every ray leaves the object's box into the same known-to-be-constant background, so the volume
need only explain the objects (a closed box makes every pixel a surface of the volume, the light
a near-singular bright patch, and needs the cameras inside the box). Images are tone mapped as
``clamp(radiance, 0, 1)^(1/2.2)``; the path tracer's Monte Carlo noise is kept low by many samples
per pixel (the noise floor is reported: PSNR between two independent renders of one view).

Models (both rendered by :mod:`diffvc.render.volume`, trained on random batches of rays of the
training views, MSE loss, Adam with one learning rate per parameter group):

* ``grid``: density and SH coefficients (degree 1 quick, 2 full) on a voxel grid in the object
  box, the colour ``sigmoid(sum_k Y_k(d) f_k)``; the fused Warp march (:func:`render_grid`), ReLU
  of the interpolated density (the kernel's clamp), coarse-to-fine (the grid is upsampled
  trilinearly once), a total-variation prior on density and SH, a high learning rate on the grid
  (what makes Plenoxels fast), an :class:`OccupancyGrid` refreshed from the density for
  empty-space skipping and early ray termination; the background colour is learnt too.
* ``neural``: a :class:`NeuralField` (multiresolution hash encoding, Warp kernel, + an MLP with
  one hidden layer of 64) whose outputs are a density ``exp(out_0 - 1)`` and SH coefficients
  (degree 1) of the colour, rendered by :func:`render_field` (samples composited by the Warp
  kernel; the field evaluated only in cells its own occupancy grid marks). Instant-NGP's recipe
  scaled down to a 64 x 64 scene: levels at resolutions 16..128 (quick; 16..256 full), 2^15
  table rows per level (2^17 full), Adam (0.9, 0.99, eps 1e-15) at 1e-2 on the table and the
  MLP, random batches of 1024 rays x 48 samples (quick), one torch thread.

Metrics: PSNR and SSIM on held-out views (other cameras, never trained on), time per iteration
(wall and process CPU time: the machine is shared). Writes ``heldout.png`` (labelled panels:
target / grid / neural per held-out view), ``views.gif``, ``curves.png`` and ``metrics.json``.
``--quick``: 64 x 64 images; full: 128 x 128.

    diffvc run nerf [--quick]
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import NeuralField, icosphere
from ..render import Cameras, generate_rays, path_trace, sphere_eyes
from ..render.pt_scene import PathTracingScene, PTMaterial, oriented_box
from ..render.splat import ssim
from ..render.volume import OccupancyGrid, render_field, render_grid, sh_basis_volume
from ..viz import plot_curves, save_animation, save_image, tile, write_metrics
from . import single_threaded

DESCRIPTION = "nerf: fit a dense-grid + SH radiance field and a hash-grid NeuralField to path-traced views, held-out PSNR/SSIM"

RADIUS, FOV = 3.0, 40.0
BOX = 0.85                     # the fields live in [-BOX, BOX]^3
ENV = 0.45                     # uniform environment radiance (the background)
SUN_DIR, SUN = (0.45, 0.8, 0.4), (1.9, 1.8, 1.6)
N_TRAIN, N_TEST = 32, 8
SPP = {"quick": 256, "full": 512}   # path-traced samples per pixel of the targets
RES = {"quick": 64, "full": 128}    # image size
SCENE_VERSION = 1              # bump when the scene changes (cache key)


def make_scene(dtype=torch.float32) -> PathTracingScene:
    """The three objects, the environment and the sun (see the module docstring)."""
    v, f = icosphere(3, 0.3, dtype=dtype)
    v = v + torch.tensor([0.32, -0.12, 0.3], dtype=dtype)
    mats = [PTMaterial("diffuse", (0.75, 0.18, 0.12)), PTMaterial("diffuse", (0.15, 0.4, 0.75)),
            PTMaterial("plastic", (0.85, 0.7, 0.15), roughness=0.3)]
    meshes = [(*oriented_box((-0.28, 0.02, -0.12), (0.42, 0.85, 0.42), 0.5, dtype=dtype), 0),
              (*oriented_box((0.3, -0.42, -0.32), (0.5, 0.28, 0.5), -0.3, dtype=dtype), 1),
              (v, f, 2)]
    env = torch.full((8, 16, 3), ENV, dtype=dtype)
    return PathTracingScene.from_meshes(meshes, mats, directional_lights=[(SUN_DIR, SUN)], environment=env,
                                        dtype=dtype)


def cameras(n: int, res: int, seed: int | None = None) -> Cameras:
    return Cameras.look_at(sphere_eyes(n, RADIUS, seed=seed), width=res, height=res, fov_y=FOV)


def tonemap(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1) ** (1 / 2.2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-20))


def cache_dir() -> Path:
    """Where rendered targets are cached: ``$DIFFVC_CACHE/nerf`` (default ``~/.cache/diffvc/nerf``)."""
    return Path(os.environ.get("DIFFVC_CACHE", Path.home() / ".cache" / "diffvc")) / "nerf"


def render_targets(cams: Cameras, spp: int, seed: int, tag: str, progress: bool = False) -> torch.Tensor:
    """Tone-mapped path-traced images (B, H, W, 3) of ``cams``, from the cache when present."""
    key = hashlib.sha1(repr((SCENE_VERSION, tag, cams.height, cams.width, spp, seed,
                             cams.R.sum().item(), cams.t.sum().item())).encode()).hexdigest()[:16]
    path = cache_dir() / f"{tag}_{cams.height}px_{spp}spp_{key}.pt"
    if path.exists():
        return torch.load(path)
    scene = make_scene()
    imgs = []
    for i in tqdm(range(cams.batch_size), desc=f"path tracing {tag} views", disable=not progress):
        imgs.append(tonemap(path_trace(scene, cams[i], spp=spp, max_depth=3, seed=seed + i)))
    out = torch.stack(imgs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out


def tv(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Squared total variation of a grid ``(X, Y, Z[, C])`` at the flat voxel indices ``idx``
    (Plenoxels evaluates it on a random subset of voxels each step)."""
    n = x.shape[:3]
    i, j, k = idx // (n[1] * n[2]), (idx // n[2]) % n[1], idx % n[2]
    i, j, k = i.clamp(max=n[0] - 2), j.clamp(max=n[1] - 2), k.clamp(max=n[2] - 2)
    c = x[i, j, k]
    return ((x[i + 1, j, k] - c) ** 2 + (x[i, j + 1, k] - c) ** 2 + (x[i, j, k + 1] - c) ** 2).mean()


# ----------------------------------------------------------------------------------------------
# the two models
# ----------------------------------------------------------------------------------------------


class GridField:
    """Plenoxels-style dense grid: raw density (n^3) and SH coefficients (n^3 x 3 (L+1)^2)."""

    def __init__(self, n: int, degree: int):
        self.degree = degree
        self.k = (degree + 1) ** 2
        self.density = torch.full((n, n, n), 0.1).requires_grad_()
        self.sh = torch.zeros(n, n, n, 3 * self.k).requires_grad_()
        self.bg = torch.zeros(3).requires_grad_()   # background colour, sigmoid(bg)
        self.occ = OccupancyGrid(32, -BOX, BOX, threshold=0.5)

    def upsample(self, n: int) -> None:
        """Trilinear upsampling of the voxel-centred grids (coarse to fine)."""
        def up(x):
            y = x.detach().movedim(-1, 0)[None]
            y = torch.nn.functional.interpolate(y, size=(n, n, n), mode="trilinear", align_corners=False)
            return y[0].movedim(0, -1).contiguous().requires_grad_()
        self.density = up(self.density[..., None])[..., 0].detach().contiguous().requires_grad_()
        self.sh = up(self.sh)

    def params(self, lr_density: float, lr_sh: float):
        return [{"params": [self.density], "lr": lr_density, "name": "density"},
                {"params": [self.sh], "lr": lr_sh, "name": "sh"},
                {"params": [self.bg], "lr": 1e-2, "name": "background"}]

    def render(self, o, d, n_samples, jitter=None):
        return render_grid(self.density, o, d, -BOX, BOX, n_samples, features=self.sh, sh_degree=self.degree,
                           background=torch.sigmoid(self.bg), jitter=jitter, t_stop=1e-3,
                           occupancy=self.occ).color

    def update_occupancy(self):
        self.occ.update(self.density.detach().clamp_min(0))


class NeuralRadiance(torch.nn.Module):
    """A hash-grid NeuralField (Instant-NGP-style: multiresolution hash encoding, one hidden layer
    of 64) with outputs (density, SH coefficients of the colour, degree 1). The density is
    ``exp(out_0 - 1)`` (Instant-NGP's exponential activation, clamped at ``exp(10)``), so the
    field starts nearly transparent (``sigma ~ 0.37`` per world unit: optical depth ~0.6 across
    the box) and its occupancy grid empties as soon as it is refreshed."""

    def __init__(self, levels: int, log2_table: int, max_resolution: int, hidden: int = 64, layers: int = 1):
        super().__init__()
        self.degree, self.k = 1, 4
        self.field = NeuralField(out_dim=1 + 3 * self.k, encoding="hash", hidden=hidden, layers=layers,
                                 activation="relu", levels=levels, features=2, log2_table=log2_table,
                                 base_resolution=16, max_resolution=max_resolution, bounds=(-BOX, BOX),
                                 init_scale=1e-4)
        self.bg = torch.nn.Parameter(torch.zeros(3))
        self.occ = OccupancyGrid(32, -BOX, BOX, threshold=0.5)

    @staticmethod
    def _sigma(raw):
        return torch.exp((raw - 1.0).clamp(max=10.0))

    def forward(self, x, d):
        out = self.field(x)
        sigma = self._sigma(out[:, 0])
        dn = d / d.norm(dim=-1, keepdim=True)
        y = sh_basis_volume(dn, self.degree)
        col = torch.sigmoid((out[:, 1:].reshape(-1, 3, self.k) * y[:, None, :]).sum(-1))
        return sigma, col

    def density_at(self, x):
        with torch.no_grad():
            return self._sigma(self.field(x)[:, 0])

    def render(self, o, d, n_samples, jitter=None):
        return render_field(self, o, d, -BOX, BOX, n_samples, background=torch.sigmoid(self.bg), jitter=jitter,
                            t_stop=1e-3, occupancy=self.occ).color

    def update_occupancy(self, generator=None):
        self.occ.update(self.density_at, generator=generator)


# ----------------------------------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------------------------------


def render_views(model, cams: Cameras, n_samples: int, chunk: int = 8192) -> torch.Tensor:
    o, d = generate_rays(cams)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    with torch.no_grad():
        out = torch.cat([model.render(o[i:i + chunk], d[i:i + chunk], n_samples) for i in range(0, o.shape[0], chunk)])
    return out.reshape(cams.batch_size, cams.height, cams.width, 3).clamp(0, 1)


def evaluate(model, cams, targets, n_samples):
    img = render_views(model, cams, n_samples)
    ps = [psnr(img[i], targets[i]) for i in range(img.shape[0])]
    ss = [float(ssim(img[i:i + 1], targets[i:i + 1])) for i in range(img.shape[0])]
    return float(np.mean(ps)), float(np.mean(ss)), img, ps


def train(name, model, groups, o, d, target, iters, batch, n_samples, gen, progress, hooks=None, evals=None):
    """Adam on random ray batches; ``hooks(it, opt)`` may change the model (returns a new optimiser
    or None); ``evals``: (every, fn) called every ``every`` iterations for the curves."""
    opt = torch.optim.Adam(groups(), betas=(0.9, 0.99), eps=1e-15)
    base = [g["lr"] for g in opt.param_groups]
    losses, curve = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(iters), desc=f"nerf {name}", disable=not progress, dynamic_ncols=True)
    for it in bar:
        if hooks is not None:
            new = hooks(it)
            if new is not None:
                opt = torch.optim.Adam(new, betas=(0.9, 0.99), eps=1e-15)
                base = [g["lr"] for g in opt.param_groups]
        decay = 0.1 ** (it / iters)  # exponential decay to 1/10 of each group's rate
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * decay
        idx = torch.randint(0, o.shape[0], (batch,), generator=gen)
        jit = torch.rand(batch, generator=gen).clamp_max(1 - 1e-6)
        pred = model.render(o[idx], d[idx], n_samples() if callable(n_samples) else n_samples, jitter=jit)
        loss = ((pred - target[idx]) ** 2).mean()
        reg = model.regulariser(gen) if hasattr(model, "regulariser") else None
        total = loss + reg if reg is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if evals is not None and ((it + 1) % evals[0] == 0 or it + 1 == iters):
            curve.append(evals[1]())
        bar.set_postfix(loss=f"{losses[-1]:.2e}", psnr=f"{-10 * math.log10(max(losses[-1], 1e-20)):.1f}",
                        refresh=False)
    bar.close()
    return losses, curve, time.perf_counter() - t0, time.process_time() - c0


def run(cfg) -> dict:
    torch.manual_seed(cfg.seed)
    quick = cfg.quick
    res = RES["quick" if quick else "full"]
    spp = SPP["quick" if quick else "full"]
    gen = torch.Generator().manual_seed(cfg.seed)
    train_cams = cameras(N_TRAIN, res)
    test_cams = cameras(N_TEST, res, seed=cfg.seed + 1)
    t_targets = time.perf_counter()
    train_img = render_targets(train_cams, spp, 0, "train", cfg.progress)
    test_img = render_targets(test_cams, spp, 10_000, "test", cfg.progress)
    noise_ref = render_targets(test_cams[0:1], spp, 20_000, "noise", cfg.progress)   # a second render of view 0
    noise_floor = psnr(noise_ref[0], test_img[0])
    t_targets = time.perf_counter() - t_targets
    o, d = generate_rays(train_cams)
    o, d, target = o.reshape(-1, 3), d.reshape(-1, 3), train_img.reshape(-1, 3)
    metrics: dict = {"resolution": res, "train_views": N_TRAIN, "heldout_views": N_TEST, "target_spp": spp,
                     "target_noise_psnr_db": noise_floor, "target_seconds": t_targets}
    renders, curves = {}, {}

    # ---- dense grid + SH (Plenoxels-style) ----
    degree = 1 if quick else 2
    n0, n1 = (40, 64) if quick else (64, 128)
    grid = GridField(n0, degree)
    iters = cfg.iterations(full=1500, quick=250)
    up_at = int(0.3 * iters)
    samples = lambda n: int(2.2 * n)  # noqa: E731  (about two samples per voxel along a box diagonal)
    lr_density, lr_sh = 2.0, 0.05

    def grid_reg(g):
        idx = torch.randint(0, grid.density.numel(), (grid.density.numel() // 20,), generator=g)
        return 1e-4 * tv(grid.density[..., None], idx) + 1e-3 * tv(grid.sh, idx)

    grid.regulariser = grid_reg

    def grid_hooks(it):
        if it % 16 == 0 and it > 0:
            grid.update_occupancy()
        if it == up_at:
            grid.upsample(n1)
            grid.update_occupancy()
            return grid.params(lr_density, lr_sh)
        return None

    n_cur = lambda: grid.density.shape[0]  # noqa: E731
    evals = (max(5, iters // 8), lambda: evaluate(grid, test_cams, test_img, samples(n_cur()))[0])
    p0 = evaluate(grid, test_cams, test_img, samples(n0))[0]
    losses, curve, secs, cpu = train("grid", grid, lambda: grid.params(lr_density, lr_sh), o, d, target, iters,
                                     2048 if quick else 8192, lambda: samples(n_cur()), gen, cfg.progress, grid_hooks,
                                     evals)
    p, s, img, per_view = evaluate(grid, test_cams, test_img, samples(n1))
    renders["grid"] = img
    curves["grid"] = (losses, curve)
    metrics.update({"grid_heldout_psnr_db": p, "grid_heldout_psnr_min_db": min(per_view), "grid_heldout_ssim": s,
                    "grid_initial_heldout_psnr_db": p0, "grid_iterations": iters, "grid_seconds": secs,
                    "grid_seconds_per_iteration": secs / iters, "grid_cpu_seconds_per_iteration": cpu / iters,
                    "grid_resolution": f"{n0}^3 -> {n1}^3", "grid_sh_degree": degree,
                    "grid_initial_loss": losses[0], "grid_final_loss": float(np.mean(losses[-5:])),
                    "grid_occupied_fraction": grid.occ.fraction})

    # ---- hash-grid NeuralField (Instant-NGP-style settings, one torch thread) ----
    metrics.update(_fit_neural(dict(cfg=cfg, quick=quick, o=o, d=d, target=target, test_cams=test_cams,
                                    test_img=test_img, gen=gen, renders=renders, curves=curves)))

    # ---- outputs ----
    panels, labels = [], []
    for i in range(N_TEST):
        for lab, imgs in (("target", test_img), ("grid", renders["grid"]), ("neural", renders["neural"])):
            panels.append(imgs[i].numpy())
            labels.append(f"view {i} {lab}" + ("" if lab == "target" else f" {psnr(imgs[i], test_img[i]):.1f}dB"))
    save_image(cfg.out / "heldout.png", tile(panels, cols=6, labels=labels, min_size=128), srgb=False)
    frames = [tile([test_img[i].numpy(), renders["grid"][i].numpy(), renders["neural"][i].numpy()],
                   labels=["target", "grid+SH", "NeuralField"], min_size=128) for i in range(N_TEST)]
    save_animation(cfg.out / "views.gif", frames, fps=2, srgb=False)
    plot_curves(cfg.out / "curves.png", {
        "grid: batch MSE": curves["grid"][0], "grid: held-out PSNR (dB)": curves["grid"][1],
        "neural: batch MSE": curves["neural"][0], "neural: held-out PSNR, views 0-1 (dB)": curves["neural"][1]},
        title=f"radiance fields from {N_TRAIN} path-traced views, {res}x{res}", xlabel="iteration / evaluation")
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics


@single_threaded
def _fit_neural(job: dict) -> dict:
    """Fit the hash-grid :class:`NeuralRadiance` (one torch thread: its tensors are ~50k samples x
    64 channels, for which intra-op threads cost more than they give on a shared 2-core CPU; the
    hash-encoding kernel runs on the calling thread too). Instant-NGP's recipe, scaled down:
    Adam (0.9, 0.99, eps 1e-15) at 1e-2 for the hash table and the MLP (weight decay 1e-6 on the
    MLP), random batches of rays from all training views, the occupancy grid refreshed every 16
    iterations after a 64-iteration warm-up. Fills ``job["renders"]``/``job["curves"]``; returns
    the metrics."""
    cfg, quick, test_cams, test_img = job["cfg"], job["quick"], job["test_cams"], job["test_img"]
    neural = NeuralRadiance(levels=8 if quick else 12, log2_table=15 if quick else 17,
                            max_resolution=128 if quick else 256)
    iters = cfg.iterations(full=1500, quick=300)
    batch, ns = (1024, 48) if quick else (4096, 96)

    def hooks(it):
        if it % 16 == 0 and it >= 64:
            neural.update_occupancy()
        return None

    # the curve: PSNR on the first two held-out views (the final figures use all of them)
    curve_views = min(2, test_cams.batch_size)
    evals = (max(5, iters // 5), lambda: evaluate(neural, test_cams[0:curve_views], test_img[:curve_views], ns)[0])
    p0 = evaluate(neural, test_cams, test_img, ns)[0]
    groups = lambda: [{"params": [neural.field.encoding.table], "lr": 1e-2},  # noqa: E731
                      {"params": list(neural.field.mlp.parameters()), "lr": 1e-2, "weight_decay": 1e-6},
                      {"params": [neural.bg], "lr": 1e-2}]
    losses, curve, secs, cpu = train("neural", neural, groups, job["o"], job["d"], job["target"], iters, batch, ns,
                                     job["gen"], cfg.progress, hooks, evals)
    p, s, img, per_view = evaluate(neural, test_cams, test_img, ns)
    job["renders"]["neural"] = img
    job["curves"]["neural"] = (losses, curve)
    return {"neural_heldout_psnr_db": p, "neural_heldout_psnr_min_db": min(per_view),
            "neural_heldout_ssim": s, "neural_initial_heldout_psnr_db": p0, "neural_iterations": iters,
            "neural_batch_rays": batch, "neural_samples_per_ray": ns,
            "neural_initial_loss": losses[0], "neural_final_loss": float(np.mean(losses[-5:])),
            "neural_seconds": secs, "neural_seconds_per_iteration": secs / iters,
            "neural_cpu_seconds_per_iteration": cpu / iters, "neural_torch_threads": torch.get_num_threads(),
            "neural_parameters": sum(q.numel() for q in neural.parameters()),
            "neural_hash_resolutions": ",".join(map(str, neural.field.encoding.resolutions)),
            "neural_occupied_fraction": neural.occ.fraction}
