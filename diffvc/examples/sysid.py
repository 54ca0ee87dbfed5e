"""System identification from video alone: physical parameters recovered from pixels.

The flagship of diffvc (gradSim's experiment, on a CPU): a target video is rendered by the same
pipeline (physics -> binding -> rasterizer) with known parameters; the estimate starts elsewhere
and sees only the target's pixels. Gradients of the image loss flow back through the
antialiased rasterizer, the bindings and every physics step to the physical parameters.

* rigid: a box at rest on the ground is struck by a known impulse J (along +x). It leaves with
  speed ``v0 = J / m`` and slides, decelerated by friction at ``mu g``, to a stop. Identifiability:
  the position over time ``x(t) = v0 t - mu g t^2 / 2`` (until it stops) fixes ``v0`` - hence the
  mass - from the early frames and ``mu g`` from the curvature and the stopping point. (With
  friction alone and no known impulse only ``mu`` would be observable; with the impulse alone and
  only the final resting place, only ``v0^2 / mu``.) Recovered: mass, friction coefficient.
* soft: an FEM body (a box tetrahedralized by :func:`diffvc.geometry.tetrahedralize`) is dropped
  on the ground, squashes and rebounds. The squash depth and the jiggle frequency fix Young's
  modulus; how fast the jiggle dies out fixes the damping. Recovered: Young's modulus, damping.

Identifiability is also measured, not only argued: ``<part>_gn_*`` in ``metrics.json`` are the
eigenvalues, condition number and column correlation of the Gauss-Newton matrix of the pixel
residual w.r.t. the log-parameters at the truth (see :func:`identifiability`); measured: rigid
condition 6.2, correlation 0.66 (mass and friction both visible, partly traded off); soft
condition 208, correlation 0.06 (damping moves fewer pixels than stiffness, but independently).

Each part writes ``<part>/side_by_side.gif`` (target | estimate at start | estimate at end, two
camera views each), ``<part>/curves.png`` (loss and parameter curves) and contributes
``<part>_rel_error_<param>`` to ``metrics.json``. The optimizer runs Adam on a 3-level image
pyramid loss (a wide basin) then L-BFGS on the same loss (a precise minimum). ``--quick`` runs
3 Adam steps for the box (without them L-BFGS's first line search tries masses of ~1e-5 kg)
and none for the soft body, whose L-BFGS converges from the start (measured: 22 and 25 video
evaluations instead of 55 and 37 with 8 and 10 Adam steps, relative errors 2e-8 to 6e-8 either
way). With noise they keep 8 and 10: without the warm-up the soft body's L-BFGS stopped at a
higher loss (Young's modulus 2e-4 off instead of 8e-6 with 1% noise).

    diffvc run sysid [--quick]          # noise-free targets
    diffvc run sysid_noise [--quick]    # 1% Gaussian pixel noise added to the targets
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..geometry import box, mass_properties, tet_boundary_faces, tetrahedralize
from ..optim import Bounded, ParameterSet, Positive, distributed, optimize, plot_history, pyramid_mse, relative_error
from ..physics import rollout
from ..physics.fem import FEMModel
from ..physics.rigid import RigidBodyModel, RigidBodyState, apply_impulse
from ..pipeline import RigidBinding, Scene, SoftBinding
from ..pipeline.video import render_trajectory
from ..render import AmbientLight, Cameras, DirectionalLight
from ..viz import save_animation, tile, write_metrics

DESCRIPTION = "system identification from video: box mass & friction, soft body Young's modulus & damping"
RENDERERS = ("raster", "pathtrace")
SHARDS = "camera views (each process renders and differentiates its views of every video)"

# path tracer settings for the video (a target and an estimate share the seed: common random numbers)
PATHTRACE = dict(spp=8, max_depth=2, edge_samples=4096, edge_spp=2, secondary_spp=1, interior_spp=1, seed=0)


def _renderer_options(renderer: str) -> dict:
    return dict(PATHTRACE) if renderer == "pathtrace" else {}


def _views(scene: Scene, views) -> Scene:
    """The scene seen from a subset of its cameras (a data-parallel shard)."""
    if views is None:
        return scene
    return dataclasses.replace(scene, cameras=scene.cameras[list(views)])

DTYPE = torch.float64


# ------------------------------------------------------------------------------------------
# shared scene pieces
# ------------------------------------------------------------------------------------------

def _rig(eyes, target, size: int, device) -> Cameras:
    return Cameras.look_at(eyes, target=target, width=size, height=size, fov_y=40.0, dtype=DTYPE, device=device)


def _lights(device):
    return [DirectionalLight.create([-0.4, -1.0, -0.6], [2.6, 2.6, 2.6], dtype=DTYPE, device=device),
            AmbientLight.create([0.12, 0.12, 0.13], dtype=DTYPE, device=device)]


def _background(device):
    return torch.tensor([0.55, 0.65, 0.8], dtype=DTYPE, device=device)


def _ground(scene: Scene, size=(2.6, 0.02, 1.4), device="cpu") -> None:
    gv, gf = box(size, dtype=DTYPE, device=device)
    gv = gv - torch.tensor([0.0, size[1] / 2, 0.0], dtype=DTYPE, device=device)  # top face at y = 0
    scene.add_shape("ground", gf, gv, color=(0.45, 0.45, 0.5))


# ------------------------------------------------------------------------------------------
# rigid: a box struck by a known impulse slides to rest
# ------------------------------------------------------------------------------------------

@dataclass
class RigidProblem:
    """Settings of the rigid experiment (SI units)."""

    size: int = 64                       # image side, pixels
    box_size: tuple = (0.4, 0.2, 0.4)    # m
    duration: float = 0.6                # s
    dt: float = 1.0 / 300.0              # physics step, s
    every: int = 10                      # physics steps per video frame (30 fps)
    impulse: float = 4.0                 # N s, along +x (v0 = 2 m/s for the true mass)
    ke: float = 2e4                      # contact stiffness per corner, N/m
    kd: float = 100.0                    # contact damping per corner, N s/m
    friction_smoothing: float = 0.05     # m/s
    true: tuple = (2.0, 0.4)             # mass kg, mu
    start: tuple = (3.0, 0.25)
    device: str = "cpu"
    renderer: str = "raster"             # any registered renderer that draws meshes

    @property
    def frames(self) -> int:
        return int(round(self.duration / (self.dt * self.every)))


class RigidExperiment:
    def __init__(self, prob: RigidProblem):
        self.p = prob
        dev = prob.device
        v, f = box(prob.box_size, dtype=DTYPE, device=dev)
        m1, com, inertia1 = mass_properties(v, f, 1.0)
        self.verts, self.faces = v - com, f
        self.inertia_per_kg = inertia1 / m1
        self.scene = Scene(_rig([[0.0, 0.9, 1.7], [1.4, 1.1, 1.1]], (0.0, 0.1, 0.0), prob.size, dev), _lights(dev),
                           _background(dev))
        self.scene.add_shape("box", f, RigidBinding(self.verts), color=(0.8, 0.25, 0.1))
        _ground(self.scene, device=dev)
        self.scene.add_body("box", mass=prob.true[0], mu=prob.true[1])

    def simulate(self, mass: torch.Tensor, mu: torch.Tensor):
        """Recorded states at the video frames (frames + 1 of them)."""
        p = self.p
        model = RigidBodyModel.create(mass.reshape(1), (self.inertia_per_kg * mass).reshape(1, 3, 3), self.verts,
                                      pairs=None, ke=p.ke, kd=p.kd, mu=mu, friction_smoothing=p.friction_smoothing,
                                      dtype=DTYPE, device=p.device)
        half_h = p.box_size[1] / 2
        # rest height for the TRUE weight (the known set-up), same for every estimate
        y0 = half_h - p.true[0] * 9.81 / (4 * p.ke)
        st = RigidBodyState.create([[-0.4, y0, 0.0]], dtype=DTYPE, device=p.device)
        st = apply_impulse(model, st, torch.tensor([[p.impulse, 0.0, 0.0]], dtype=DTYPE, device=p.device))
        # the model itself (not a step closure): rollout runs its fused segment, all the frames'
        # steps as one autograd node of replayed Warp launches
        _, states = rollout(model, st, p.frames, dt=p.dt, substeps=p.every, record=True)
        return states

    def simulate_scene(self, values: dict):
        """The scene with the parameter values put in by name, and the simulated states."""
        scene = self.scene.replace({"body.box.mass": values["mass"], "body.box.mu": values["mu"]})
        b = scene.body("box")
        return scene, self.simulate(b["mass"], b["mu"])

    def video(self, values: dict, views=None) -> torch.Tensor:
        """``(T, V, H, W, 3)`` video for parameter ``values`` (``views``: camera indices, default all)."""
        scene, states = self.simulate_scene(values)
        return render_trajectory(_views(scene, views), states, renderer=self.p.renderer,
                                 **_renderer_options(self.p.renderer))

    def params(self, start=None) -> ParameterSet:
        m, mu = self.p.start if start is None else start
        return ParameterSet(mass=Positive(m, dtype=DTYPE, device=self.p.device),
                            mu=Bounded(mu, 0.01, 2.0, dtype=DTYPE, device=self.p.device))

    def truth(self) -> dict:
        return {"mass": self.p.true[0], "mu": self.p.true[1]}


# ------------------------------------------------------------------------------------------
# soft: an FEM body tetrahedralized from a mesh, dropped on the ground
# ------------------------------------------------------------------------------------------

@dataclass
class SoftProblem:
    """Settings of the soft-body experiment (SI units)."""

    size: int = 64                       # image side, pixels
    body_size: float = 0.2               # m, a cube surface mesh, tetrahedralized
    resolution: int = 3                  # lattice cells along the cube's side
    drop: float = 0.1                    # m, initial gap between the body and the ground
    density: float = 500.0               # kg/m^3
    poisson: float = 0.3                 # known
    duration: float = 0.6                # s
    dt: float = 1.0 / 1200.0             # physics step, s (explicit: stable over the bounds below)
    every: int = 40                      # physics steps per video frame (30 fps)
    ke: float = 1e4                      # ground contact stiffness per node, N/m
    kd: float = 10.0                     # ground contact damping per node, N s/m
    contact_smoothing: float = 0.002     # m, smooth contact onset (see diffvc.physics.fem)
    # frictionless ground: the drop is vertical, and regularised Coulomb friction on the impact's
    # force spike is a stiff viscous term for this explicit step (its rollout became chaotic:
    # finite differences disagreed with themselves); without it gradients match FD to 1e-8
    friction: float = 0.0
    true: tuple = (2e4, 0.003)           # Young's modulus Pa, stiffness-proportional damping s
    start: tuple = (1.2e4, 0.006)
    # damping search range: the explicit step is stable for E <= 5e4 Pa with beta <= 0.01 s at this dt
    damping_bounds: tuple = (3e-4, 0.008)
    device: str = "cpu"

    @property
    def frames(self) -> int:
        return int(round(self.duration / (self.dt * self.every)))


class SoftExperiment:
    """Neo-Hookean FEM body (Rayleigh damping ``(0, beta)``: stiffness-proportional, so the fall
    itself is undamped and the damping shows only in the squash-and-jiggle after impact)."""

    def __init__(self, prob: SoftProblem):
        self.p = prob
        dev = prob.device
        v, f = box(prob.body_size, dtype=DTYPE, device=dev)
        tv, tets = tetrahedralize(v, f, resolution=prob.resolution)
        lift = prob.body_size / 2 + prob.drop
        self.rest = tv + torch.tensor([0.0, lift, 0.0], dtype=DTYPE, device=dev)
        self.tets = tets
        self.surface = tet_boundary_faces(tets)   # render mesh: the tet mesh's boundary faces
        self.scene = Scene(_rig([[0.0, 0.35, 1.0], [0.7, 0.6, 0.7]], (0.0, 0.15, 0.0), prob.size, dev), _lights(dev),
                           _background(dev))
        self.scene.add_shape("jelly", self.surface, SoftBinding(None, num_nodes=tv.shape[0]), color=(0.25, 0.7, 0.3),
                             smooth=True)
        _ground(self.scene, device=dev)
        self.scene.add_body("jelly", young=prob.true[0], damping=prob.true[1])

    def simulate(self, young: torch.Tensor, damping: torch.Tensor):
        p = self.p
        model = FEMModel.create(self.rest, self.tets, density=p.density, youngs_modulus=young, poisson_ratio=p.poisson,
                                damping=torch.stack([torch.zeros_like(damping), damping]), ke=p.ke, kd=p.kd,
                                mu=p.friction, friction_smoothing=0.05, contact_smoothing=p.contact_smoothing,
                                dtype=DTYPE, device=p.device)
        _, states = rollout(model, model.initial_state(), p.frames, dt=p.dt, substeps=p.every, record=True)
        return states

    def simulate_scene(self, values: dict):
        """The scene with the parameter values put in by name, and the simulated states."""
        scene = self.scene.replace({"body.jelly.young": values["young"], "body.jelly.damping": values["damping"]})
        b = scene.body("jelly")
        return scene, self.simulate(b["young"], b["damping"])

    def video(self, values: dict, views=None) -> torch.Tensor:
        scene, states = self.simulate_scene(values)
        return render_trajectory(_views(scene, views), states)

    def params(self, start=None) -> ParameterSet:
        E, beta = self.p.start if start is None else start
        bl, bh = self.p.damping_bounds
        return ParameterSet(young=Positive(E, dtype=DTYPE, device=self.p.device),
                            damping=Bounded(beta, bl, bh, dtype=DTYPE, device=self.p.device))

    def truth(self) -> dict:
        return {"young": self.p.true[0], "damping": self.p.true[1]}


# ------------------------------------------------------------------------------------------
# identification loop, shared by both parts
# ------------------------------------------------------------------------------------------

def identify(exp, target: torch.Tensor, params: ParameterSet, adam_iters: int, lbfgs_iters: int,
             lr: float, progress: bool, desc: str, lbfgs_kwargs: dict | None = None):
    """Adam on a 3-level pyramid loss, then L-BFGS on the same loss. Returns (history, seconds)."""
    from ..optim import History

    # data parallel: this process's camera views; the mean over all views is the sum over
    # processes of (views here / all views) x the mean over the views here
    n_views = target.shape[1]
    if distributed.world_size() > n_views:
        raise ValueError(f"nproc: sysid has {n_views} camera views to split, not {distributed.world_size()} processes")
    mine = distributed.shard(range(n_views))
    share = len(mine) / n_views

    def loss_fn():
        views = None if len(mine) == n_views else mine
        return share * pyramid_mse(exp.video(params.values(), views), target[:, mine], levels=3)

    t0 = time.perf_counter()
    hist = History()
    if adam_iters > 0:
        h1 = optimize(params, loss_fn, iters=adam_iters, lr=lr, lr_final=lr / 10, method="adam",
                      progress=progress, desc=f"{desc} adam")
        hist.loss += h1.loss
        hist.params += h1.params
    if lbfgs_iters > 0:
        h2 = optimize(params, loss_fn, iters=lbfgs_iters, lr=1.0, method="lbfgs", progress=progress,
                      desc=f"{desc} lbfgs", tol=1e-14, patience=3,
                      optimizer_kwargs={"max_iter": 4, "history_size": 10, "tolerance_grad": 1e-14,
                                        "tolerance_change": 1e-16, **(lbfgs_kwargs or {})})
        hist.loss += h2.loss
        hist.params += h2.params
        hist.stopped_early = h2.stopped_early
    hist.seconds = time.perf_counter() - t0
    return hist, hist.seconds


def _side_by_side(path, target, start, end, fps=10, panel: int = 256):
    """GIF: per frame, [target | start | result] for each view stacked vertically, labelled,
    each panel enlarged to at least ``panel`` px."""
    frames = []
    for t in range(target.shape[0]):
        rows = [tile([target[t, v], start[t, v], end[t, v]], min_size=panel,
                     labels=[f"target (view {v})", f"start (view {v})", f"result (view {v})"])
                for v in range(target.shape[1])]
        frames.append(tile(rows, cols=1))
    save_animation(path, frames, fps=fps, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(path.with_suffix(".png"), frames[len(frames) // 2])


def identifiability(exp, rel_step: float = 1e-4) -> dict:
    """Local identifiability at the true parameters: the Gauss-Newton matrix ``G = J^T J`` of the
    per-pixel residual w.r.t. the *log* parameters, ``J`` by central differences of the video
    (2 renders per parameter, no backward pass). Both eigenvalues clearly above zero mean each
    parameter (and each combination) changes the pixels; the condition number says how elongated
    the valley is, and ``corr`` is the cosine between the two Jacobian columns (1: confounded)."""
    truth = exp.truth()
    names = list(truth)
    cols = []
    with torch.no_grad():
        for k in names:
            vids = []
            for sgn in (1.0, -1.0):
                vals = {n: torch.tensor(truth[n], dtype=DTYPE, device=exp.p.device) for n in names}
                vals[k] = vals[k] * torch.exp(torch.tensor(sgn * rel_step, dtype=DTYPE))
                vids.append(exp.video(vals))
            cols.append(((vids[0] - vids[1]) / (2 * rel_step)).reshape(-1))
    J = torch.stack(cols, 1)
    G = J.T @ J / J.shape[0]
    ev = torch.linalg.eigvalsh(G)
    corr = float(G[0, 1] / torch.sqrt(G[0, 0] * G[1, 1]))
    return {"gn_eig_min": float(ev[0]), "gn_eig_max": float(ev[-1]), "gn_condition": float(ev[-1] / ev[0]),
            "gn_corr": corr}


def run_part(name: str, exp, cfg, adam_iters: int, lbfgs_iters: int, lr: float, noise: float,
             lbfgs_kwargs: dict | None = None) -> dict:
    out = cfg.out / name
    out.mkdir(parents=True, exist_ok=True)
    truth = exp.truth()
    with torch.no_grad():
        target = exp.video({k: torch.tensor(v, dtype=DTYPE, device=cfg.device) for k, v in truth.items()})
        if noise > 0:
            g = torch.Generator(device="cpu").manual_seed(cfg.seed)
            target = target + noise * torch.randn(target.shape, generator=g, dtype=DTYPE).to(target.device)
    params = exp.params()
    if distributed.rank() == 0:
        with torch.no_grad():
            start_video = exp.video(params.values())
    hist, seconds = identify(exp, target, params, adam_iters, lbfgs_iters, lr, cfg.progress, name, lbfgs_kwargs)
    if distributed.rank() != 0:
        return {}              # outputs and metrics are rank 0's
    with torch.no_grad():
        end_video = exp.video(params.values())
    est = params.snapshot()
    final_loss = float(pyramid_mse(end_video, target, levels=3))
    _side_by_side(out / "side_by_side.gif", target, start_video, end_video, panel=128 if cfg.quick else 256)
    plot_history(out / "curves.png", hist, targets=truth, final=est, final_loss=final_loss,
                 title=f"sysid {name}: from pixels" + (f" ({noise:.0%} noise)" if noise > 0 else ""))
    m = {f"{name}_seconds": seconds, f"{name}_iterations": hist.iterations,
         f"{name}_initial_loss": hist.loss[0], f"{name}_final_loss": final_loss}
    m.update({f"{name}_{k}": v for k, v in identifiability(exp).items()})
    for k, v in truth.items():
        m[f"{name}_{k}_true"] = v
        m[f"{name}_{k}_start"] = hist.params[0][k]
        m[f"{name}_{k}_estimate"] = est[k]
        m[f"{name}_rel_error_{k}"] = relative_error(est[k], v)
    return m


def run(cfg, noise: float = 0.0) -> dict:
    """Both parts; ``noise`` is the standard deviation of Gaussian noise added to the target pixels.

    ``cfg.renderer`` picks the renderer of every video (target and estimate alike) through the
    pipeline's renderer contract. With ``"pathtrace"`` only the rigid part runs, at 48 px and
    15 fps: the soft body's smooth (interpolated-normal) shading has no path-traced counterpart,
    and each path-traced video costs about 20x a rasterized one.
    """
    renderer = getattr(cfg, "renderer", "raster")
    metrics: dict = {"noise": noise, "quick": str(bool(cfg.quick)), "renderer": renderer,
                     "processes": distributed.world_size()}
    t0 = time.perf_counter()
    lb = {"max_iter": 10}
    # fewer Adam steps in the noise-free rasterized --quick run (module doc); with noise (or the
    # path tracer) the short warm-up was not measured to reach today's minimum, so it keeps 8 / 10
    fast = noise == 0 and renderer == "raster"
    if renderer == "pathtrace":
        rigid = RigidExperiment(RigidProblem(device=cfg.device, renderer=renderer, size=48, every=20))
    else:
        rigid = RigidExperiment(RigidProblem(device=cfg.device, renderer=renderer))
    metrics.update(run_part("rigid", rigid, cfg, adam_iters=cfg.iterations(30, 3 if fast else 8), lbfgs_iters=cfg.iterations(15, 4),
                            lr=0.08, noise=noise, lbfgs_kwargs=lb))
    if renderer != "raster":
        metrics["seconds"] = time.perf_counter() - t0
        if distributed.rank() == 0:
            write_metrics(cfg.out / "metrics.json", metrics)
        return metrics
    soft = SoftExperiment(SoftProblem(device=cfg.device))
    metrics.update(run_part("soft", soft, cfg, adam_iters=cfg.iterations(30, 0 if fast else 10),
                            lbfgs_iters=cfg.iterations(15, 4), lr=0.1, noise=noise, lbfgs_kwargs=lb))
    metrics["seconds"] = time.perf_counter() - t0
    if distributed.rank() == 0:
        write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
