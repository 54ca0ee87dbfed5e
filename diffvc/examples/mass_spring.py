"""Mass-spring walker: optimise a closed-loop neural controller so a spring robot walks far.

The DiffTaichi spring robot, in the x-y plane (z = 0, y up). Particles on a 0.1 m lattice form a
body (two rows of five) and two legs; lattice edges and diagonals are damped springs; the
vertical springs of the legs and the body's lower row are actuated (rest length scaled by
``1 + 0.25 act``). The controller is an ``nn.Module``: four sinusoids of time plus the particles'
positions relative to the centre of mass and their velocities -> one hidden tanh layer -> tanh
actuation per actuator, evaluated every frame (5 substeps of 2 ms). Ground contact is the
penalty model with regularised Coulomb friction of :mod:`diffvc.physics.particles`.

One controller is trained on ``ENVS`` walker environments at once (domain randomisation):
environment 0 is the nominal robot, the others have their own body mass and spring stiffness
scales (0.9 to 1.1) and drop height (0 to 2 cm), drawn from ``rank_seed(seed, e)``. They run as
ONE batched simulation (:func:`diffvc.physics.batch_model`: every step is one kernel launch over
all environments). The loss is minus the mean over environments of the x displacement of the
centre of mass after the rollout; Adam on the controller's weights, gradients through every
step and contact (the Warp step's adjoint); the best controller seen during training is kept.
The initial controller has small random weights: it twitches in place.

``diffvc run mass_spring --nproc N`` (N <= ``ENVS``) splits the environments over processes
(each simulates its share as one batch). The controller's weights are copied per environment
(:meth:`WalkerController.per_env`), so each environment's distance and gradient are computed on
their own row with the same arithmetic whatever the batch; the processes exchange these rows
exactly and every process sums them in environment order, so the objective, the gradient and
every iterate are bit-identical for any N (the walker's contact dynamics are chaotic enough that
a mere change of summation order made 1- and 2-process runs diverge after 3 iterations).

    diffvc run mass_spring [--quick]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..optim import distributed, optimize
from . import single_threaded
from ..physics import ParticleState, SpringModel, batch_model, rollout, unbatch
from ..viz import figure_to_array, plot_curves, save_animation, write_metrics

DESCRIPTION = "spring robot walker: optimise a closed-loop neural controller to walk as far as possible"

H = 0.1  # lattice spacing, m
DT, SUBSTEPS = 2e-3, 5  # s; the controller acts once per frame of 10 ms
GAIN = 0.25
N_SIN, HIDDEN = 4, 32
FREQ = 2.0  # Hz of the controller's clock
ENVS = 4  # walker environments trained at once (environment 0: the nominal robot)
SHARDS = f"walker environments ({ENVS}, each process simulating its share as one batch)"


def make_robot(dtype=torch.float32, device="cpu"):
    """Return (model, rest positions (N, 3), actuator index per spring (S,), number of actuators).

    Layout (columns 0..4 at x = 0..0.4 m; rows at y = 0..0.3 m): body rows 2-3 at every column,
    legs rows 0-1 at columns 0-1 (back) and 3-4 (front).
    """
    cells = [(c, r) for r in (2, 3) for c in range(5)]
    cells += [(c, r) for r in (0, 1) for c in (0, 1, 3, 4)]
    pts = torch.tensor([[c * H, r * H + 0.02, 0.0] for c, r in cells], dtype=torch.float64)
    n = pts.shape[0]
    d = torch.cdist(pts, pts)
    i, j = torch.nonzero(torch.triu((d > 1e-6) & (d < H * 1.5), diagonal=1), as_tuple=True)
    springs = torch.stack([i, j], 1)
    # actuators: each leg's springs (one actuator per leg side x spring direction) and the body's
    # lower row springs, grouped by position
    act = torch.full((springs.shape[0],), -1, dtype=torch.long)
    names: dict = {}
    for s, (a, b) in enumerate(springs.tolist()):
        ya, yb = pts[a, 1].item(), pts[b, 1].item()
        xm = 0.5 * (pts[a, 0] + pts[b, 0]).item()
        vertical = abs(pts[a, 0] - pts[b, 0]).item() < 1e-6
        if min(ya, yb) < 2 * H and vertical:  # the legs' vertical springs, one actuator per column
            key = ("leg", round(xm / H))
        elif max(ya, yb) < 2.5 * H and abs(ya - yb) < 1e-6 and min(ya, yb) > 1.5 * H:  # lower body row
            key = ("body", round(xm / H * 2))
        else:
            continue
        act[s] = names.setdefault(key, len(names))
    gain = torch.where(act >= 0, torch.full_like(act, 1, dtype=torch.float64) * GAIN, torch.zeros(act.shape, dtype=torch.float64))
    model = SpringModel.create(pts.to(dtype), springs, mass=0.1, radius=0.0, ke=2000.0, kd=2.0,
                               gain=gain.to(dtype), contact_ke=8e3, contact_kd=20.0, mu=1.0,
                               friction_smoothing=0.1, dtype=dtype, device=device)
    return model, pts.to(dtype=dtype, device=device), act.clamp_min(0).to(device), len(names)


class WalkerController(torch.nn.Module):
    """Closed loop: [sin(2 pi f t + 2 pi k / 4), x - centre, v] -> tanh(W1 .) -> tanh(W2 .)."""

    def __init__(self, n_particles: int, n_actuators: int, actuator_of_spring: torch.Tensor, dtype=torch.float32,
                 init_scale: float = 0.1):
        super().__init__()
        self.hidden = torch.nn.Linear(N_SIN + 4 * n_particles, HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, n_actuators)
        with torch.no_grad():
            for lin in (self.hidden, self.out):
                lin.weight.mul_(init_scale)
                lin.bias.zero_()
        self.register_buffer("actuator_of_spring", actuator_of_spring)
        self.register_buffer("phases", torch.arange(N_SIN, dtype=torch.float64) * (2 * math.pi / N_SIN))
        self.to(dtype)

    def forward(self, state: ParticleState, frame: int) -> torch.Tensor:
        """Actuation per spring: (S,) for one walker's state (x, v of shape (N, 3)), (B, S) for a
        batch of walkers (x, v of shape (B, N, 3), :func:`diffvc.physics.batch_model`)."""
        t = frame * DT * SUBSTEPS
        x, v = state.x, state.v
        batched = x.dim() == 3
        if not batched:
            x, v = x[None], v[None]
        xy = x[..., :2]
        rel = xy - xy.mean(-2, keepdim=True)
        clock = torch.sin(2 * math.pi * FREQ * t + self.phases).expand(x.shape[0], N_SIN)
        inp = torch.cat([clock, rel.reshape(x.shape[0], -1) * 5.0, v[..., :2].reshape(x.shape[0], -1)], -1)
        a = torch.tanh(self.out(torch.tanh(self.hidden(inp))))[:, self.actuator_of_spring]
        return a if batched else a[0]  # actuation per spring (gain 0 on passive springs)

    def per_env(self, weights):
        """A controller for a batch of walkers with one copy of the weights per environment:
        ``weights`` = (hidden.weight, hidden.bias, out.weight, out.bias), each with a leading
        (B, ...) axis. Every environment's actuation (and its weights' gradient) is computed on
        its own row, the same arithmetic whatever B (what makes sharded training exact)."""
        w1, b1, w2, b2 = weights

        def control(state: ParticleState, frame: int) -> torch.Tensor:
            x, v = state.x, state.v
            t = frame * DT * SUBSTEPS
            rel = x[..., :2] - x[..., :2].mean(-2, keepdim=True)
            clock = torch.sin(2 * math.pi * FREQ * t + self.phases).to(x.dtype).expand(x.shape[0], N_SIN)
            inp = torch.cat([clock, rel.reshape(x.shape[0], -1) * 5.0, v[..., :2].reshape(x.shape[0], -1)], -1)
            h = torch.tanh((w1 * inp[:, None, :]).sum(-1) + b1)
            return torch.tanh((w2 * h[:, None, :]).sum(-1) + b2)[:, self.actuator_of_spring]

        return control


def make_envs(model: SpringModel, x0: torch.Tensor, envs, seed: int = 0):
    """Walker environments ``envs`` (indices) as one batch: returns ``(BatchedModel, x0 (B, N, 3))``.

    Environment 0 is the nominal robot; environment e > 0 scales the particle masses and the
    spring stiffnesses by factors in [0.9, 1.1] and lifts the robot by 0 to 2 cm, drawn from
    ``rank_seed(seed, e)`` (so an environment is the same whichever process simulates it)."""
    envs = list(envs)
    mass, ke, lift = [], [], []
    for e in envs:
        g = torch.Generator().manual_seed(distributed.rank_seed(seed, e))
        a, b, h = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        nominal = e == 0
        mass.append(1.0 if nominal else 0.9 * (1.1 / 0.9) ** a)
        ke.append(1.0 if nominal else 0.9 * (1.1 / 0.9) ** b)
        lift.append(0.0 if nominal else 0.02 * h)

    def col(v):
        return torch.tensor(v, dtype=x0.dtype, device=x0.device)

    bm = batch_model(model, len(envs), mass=model.mass.detach()[None] * col(mass)[:, None],
                     ke=model.ke.detach()[None] * col(ke)[:, None])
    xb = x0[None] + torch.stack([torch.zeros_like(col(lift)), col(lift), torch.zeros_like(col(lift))], -1)[:, None]
    return bm, xb


def simulate(model, x0, controller, frames: int, record: bool = False, checkpoint_every: int | None = None):
    """Roll the walker out; returns the centre-of-mass x displacement (and states per frame).

    One walker: ``model`` a :class:`SpringModel`, ``x0`` (N, 3), displacement a scalar; a batch:
    ``model`` a :class:`~diffvc.physics.BatchedModel` (:func:`make_envs`), ``x0`` (B, N, 3),
    displacements (B,)."""
    state = ParticleState(x0, torch.zeros_like(x0))
    out = rollout(model, state, frames, dt=DT, substeps=SUBSTEPS,
                  controller=controller, record=record, checkpoint_every=checkpoint_every)
    final, states = (out if record else (out, None))
    dist = final.x[..., 0].mean(-1) - x0[..., 0].mean(-1)
    return (dist, states) if record else dist


def _frames(model, runs, labels, every=3, size=(640, 260)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = model.springs.long().cpu().numpy()
    actuated = (model.gain.detach().cpu().numpy() > 0)
    xmin = min(float(st.x[:, 0].min()) for s in runs for st in s) - 0.1
    xmax = max(float(st.x[:, 0].max()) for s in runs for st in s) + 0.1
    ymax = max(0.5, max(float(st.x[:, 1].max()) for s in runs for st in s) + 0.05)
    out = []
    n = len(runs[0])
    for k in range(0, n, every):
        fig, axes = plt.subplots(len(runs), 1, figsize=(size[0] / 80, size[1] / 80 * len(runs) / 1.6), dpi=80)
        for ax, states, lab in zip(np.atleast_1d(axes), runs, labels):
            x = states[min(k, len(states) - 1)].x.detach().cpu().numpy()
            ax.axhline(0, color="k", lw=1.5)
            for (a, b), act in zip(sp, actuated):
                ax.plot([x[a, 0], x[b, 0]], [x[a, 1], x[b, 1]], color="tab:red" if act else "tab:gray", lw=1)
            ax.plot(x[:, 0], x[:, 1], "o", color="k", ms=2.5)
            ax.set_xlim(xmin, xmax)
            ax.set_ylim(-0.05, ymax)
            ax.set_aspect("equal")
            ax.set_title(f"{lab}  t = {k * DT * SUBSTEPS:.2f} s", fontsize=8)
            ax.tick_params(labelsize=6)
        out.append(figure_to_array(fig))
    return out


@single_threaded  # small tensors: torch's intra-op threads stall a batch of 4 walkers ~8x on a loaded CPU
def run(cfg) -> dict:
    dtype = torch.float32
    torch.manual_seed(cfg.seed)
    model, x0, act_index, n_act = make_robot(dtype, cfg.device)
    ctrl = WalkerController(x0.shape[0], n_act, act_index, dtype).to(cfg.device)
    frames = 150 if cfg.quick else 300  # 1.5 s or 3 s
    iters = cfg.iterations(full=200, quick=60)
    body_length = float(x0[:, 0].max() - x0[:, 0].min())
    if distributed.world_size() > ENVS:
        raise ValueError(f"nproc: mass_spring has {ENVS} environments to split, not {distributed.world_size()} processes")
    mine = list(distributed.shard_range(ENVS))
    bm, xb = make_envs(model, x0, mine, cfg.seed)          # this process's environments, one batch
    bm_all, xb_all = make_envs(model, x0, range(ENVS), cfg.seed)

    def every_env():  # the controller of the training runs, on all environments
        return ctrl.per_env([p.detach()[None].expand(ENVS, *p.shape) for p in
                             (ctrl.hidden.weight, ctrl.hidden.bias, ctrl.out.weight, ctrl.out.bias)])

    with torch.no_grad():
        d0, traj0 = simulate(bm_all, xb_all, every_env(), frames, record=True)
    initial_distance = float(d0.mean())
    dist_hist: list[float] = []

    best = {"distance": -math.inf, "state": None}

    params = [ctrl.hidden.weight, ctrl.hidden.bias, ctrl.out.weight, ctrl.out.bias]
    sizes = [p.numel() for p in params]

    def loss_fn():
        # one copy of the weights per environment, so each environment's gradient is its own row;
        # the rows of all processes are exchanged exactly and summed in environment order: the
        # objective, the gradient and hence every iterate are bit-identical for any process count
        ws = [p.detach()[None].expand(len(mine), *p.shape).clone().requires_grad_() for p in params]
        d = simulate(bm, xb, ctrl.per_env(ws), frames)      # (B,) this process's environments
        grads = torch.autograd.grad(d.sum(), ws)
        rows = torch.zeros(ENVS, 1 + sum(sizes), dtype=torch.float64, device=xb.device)
        rows[mine] = torch.cat([d.detach()[:, None], *[g.reshape(len(mine), -1) for g in grads]], 1).double()
        distributed.all_reduce_([rows])
        total = rows.sum(0) / ENVS                          # [mean distance, mean gradient]
        dv = float(total[0])
        dist_hist.append(dv)
        if dv > best["distance"]:  # keep the best controller seen (the weights of this forward pass)
            best["distance"], best["state"] = dv, {k: v.detach().clone() for k, v in ctrl.state_dict().items()}
        # value: this process's share of -mean distance; gradient: -mean gradient on rank 0 only
        # (optimize sums the processes' gradients: adding zeros is exact)
        g = total[1:].to(params[0].dtype) * (1.0 if distributed.rank() == 0 else 0.0)
        flat = torch.cat([p.reshape(-1) for p in params])
        lin = (g * flat).sum()
        return -(total[0] / distributed.world_size()).to(flat.dtype) - (lin - lin.detach())  # (lin - lin) == 0

    t0 = time.perf_counter()
    hist = optimize(params, loss_fn, iters=iters, lr=0.01, lr_final=0.003, method="adam",
                    grad_clip=1.0, progress=cfg.progress, desc="mass_spring")
    seconds = time.perf_counter() - t0
    ctrl.load_state_dict(best["state"])
    if distributed.rank() != 0:
        return {}  # outputs and metrics are rank 0's
    with torch.no_grad():
        d1, traj1 = simulate(bm_all, xb_all, every_env(), frames, record=True)
    distance = float(d1.mean())
    env0 = [unbatch(s)[0] for s in traj0], [unbatch(s)[0] for s in traj1]
    heavy = int(torch.argmax(bm_all.model.mass.reshape(ENVS, -1)[:, 0]))
    env_h = [unbatch(s)[heavy] for s in traj1]

    plot_curves(cfg.out / "curves.png", {"mean distance (m)": dist_hist}, logy=False,
                title=f"mass_spring: mean distance walked over {ENVS} environments per iteration",
                targets={"mean distance (m)": body_length})
    frames_img = _frames(model, [env0[0], env0[1], env_h],
                         ["initial controller (env 0)", "optimised controller (env 0, nominal)",
                          f"optimised controller (env {heavy}, heaviest)"])
    save_animation(cfg.out / "walk.gif", frames_img, fps=15, srgb=False)
    import imageio.v3 as iio

    iio.imwrite(cfg.out / "walk.png", frames_img[-1])
    metrics = {
        "distance": distance,
        **{f"distance_env{e}": float(v) for e, v in enumerate(d1)},
        "envs": ENVS,
        "processes": distributed.world_size(),
        "initial_distance": initial_distance,
        "body_length": body_length,
        "distance_in_body_lengths": distance / body_length,
        "ratio": distance / max(abs(initial_distance), 1e-6),
        "best_training_distance": max(dist_hist),
        "iterations": hist.iterations,
        "seconds": seconds,
        "seconds_per_iteration": seconds / max(hist.iterations, 1),
        "frames": frames,
        "substeps": SUBSTEPS,
        "dt": DT,
        "particles": int(x0.shape[0]),
        "springs": model.num_springs,
        "actuators": n_act,
    }
    write_metrics(cfg.out / "metrics.json", metrics)
    return metrics
