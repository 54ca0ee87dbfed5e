"""MLS-MPM (moving least squares material point method), 2D and 3D, differentiable.

Particles carry mass m (kg), volume V (m^d), position x, velocity v, the APIC affine velocity
field C (1/s), the elastic deformation gradient F and a plastic scalar J_p. One step of ``dt``
(Hu et al. 2018, the update of DiffTaichi's ``diffmpm.py``) on a regular grid of ``res`` nodes,
spacing ``dx`` (node i sits at i dx; quadratic B-spline weights):

1. F <- (I + dt C) F, then the material's plastic projection (snow, sand);
2. Kirchhoff stress tau(F) plus actuation tau_a = a F d d^T F^T (a: the particle's control in Pa,
   d: its unit actuation direction ``act_dir``, DiffTaichi's ``A = diag(0, 1) * act``);
3. P2G: node i gets w_ip (m v_p + (m C_p - dt V 4/dx^2 tau) (x_i - x_p)) and w_ip m;
4. grid: v_i = momentum / mass + dt g, then walls (below); empty nodes 0;
5. G2P: v_p = sum w_ip v_i, C_p = 4/dx^2 sum w_ip v_i (x_i - x_p)^T, x_p += dt v_p.

Materials (Lame mu, lam from Young's modulus E and Poisson ratio nu, per particle):

* ``"fixed_corotated"``: tau = 2 mu (F - R) F^T + lam (J - 1) J I (Stomakhin et al. 2012; R the
  polar rotation: closed form in 2D, scaled Newton in 3D -- for det F < 0 the 3D R is a
  reflection);
* ``"neo_hookean"``: tau = mu (F F^T - I) + lam log(max(J, 1e-6)) I (zero gradient in J below);
* ``"snow"``: fixed-corotated with the singular values of F clamped to [1 - theta_c, 1 + theta_s]
  and mu, lam scaled by clamp(exp(hardening (1 - J_p)), 0.1, 5) (Stomakhin et al. 2013);
* ``"sand"``: Drucker-Prager return mapping of the Hencky strain with friction angle
  ``friction_angle`` and Hencky St. Venant-Kirchhoff stress (Klar et al. 2016; J_p holds the
  log-volume correction, as in taichi_elements).

Walls: the nodes within ``bound`` cells of each face of the grid (DiffTaichi's ``bound = 3``)
apply the face's condition, in the order x-low, x-high, y-low, y-high(, z-low, z-high):
``"sticky"`` (v = 0), ``"slip"`` (normal part removed), ``"separate"`` (only when moving into
the wall: normal part removed and Coulomb friction ``friction`` on the tangential part;
``friction=inf`` stops a node that moves into the wall -- DiffTaichi's walls). The ground is the
y-low wall.

Gradients (the Warp adjoint of exactly this code and the torch twin's autograd agree): to the
initial state, mass, volume, E, nu and the actuation. Where the forward map branches (a wall
engages, a plastic clamp switches on, the stencil base cell changes -- the B-spline weights are
C1 there, so that one is smooth) the gradient is that of the branch taken. Plastic projections
differentiate through an SVD whose adjoint (Warp's, mirrored by the twin) divides by
sigma_j^2 - sigma_i^2 clamped away from 0 (1e-6 float32, 1e-12 float64): with (near-)repeated
singular values under an active projection that gradient is approximate. Elastic particles
never go through the SVD.

CPU parallelism (``slots`` threads; by default one per torch thread once each gets >= 16,384
particles, else one): the forward P2G splits particles over threads, each scattering into its
own copy of the grid (summed in a fixed order: deterministic, no lost adds); grid update, G2P and
the P2G and grid adjoints split too (disjoint writes); the G2P adjoint, which scatters into the
grid adjoint, runs on one thread. :meth:`MPMModel.segment` fuses many steps into one autograd
node (states kept per step, grids too when they fit in 64 MB, else recomputed in backward;
``recompute=True`` keeps only the input and re-runs the segment in backward).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from .._kernels.mpm import (COROTATED, J_MIN, NEOHOOKEAN, SAND, SAND_SIG_MIN, SNOW, HARDEN_MAX,
                            HARDEN_MIN, mpm_segment)
from .._validate import as_float, as_tensor, check_float, check_same_dtype
from .fem import lame_parameters, polar_rotation_torch

__all__ = ["MPMModel", "MPMState", "MATERIALS", "WALLS"]

MATERIALS = {"fixed_corotated": COROTATED, "neo_hookean": NEOHOOKEAN, "snow": SNOW, "sand": SAND}
WALLS = {"sticky": 0, "slip": 1, "separate": 2}
_BIG_FRICTION = 1e20  # friction=inf is passed to the kernels as this (stops any node moving inward)


@dataclass(frozen=True)
class MPMState:
    """Particle state: x, v (N, d) m and m/s; C (N, d, d) 1/s; F (N, d, d); Jp (N,)."""

    x: torch.Tensor
    v: torch.Tensor
    C: torch.Tensor
    F: torch.Tensor
    Jp: torch.Tensor

    def __post_init__(self):
        # checked on construction: floating, finite, shapes consistent, one dtype
        check_float(self.x, "x", shape=(..., "N", None), coerce=False)
        d = self.x.shape[-1]
        if d not in (2, 3):
            raise ValueError(f"x must have shape (N, 2) or (N, 3), got {tuple(self.x.shape)}")
        lead = tuple(self.x.shape[:-1])
        check_float(self.v, "v", shape=lead + (d,), coerce=False)
        check_float(self.C, "C", shape=lead + (d, d), coerce=False)
        check_float(self.F, "F", shape=lead + (d, d), coerce=False)
        check_float(self.Jp, "Jp", shape=lead, coerce=False)
        check_same_dtype(("x", self.x), ("v", self.v), ("C", self.C), ("F", self.F), ("Jp", self.Jp))

    @staticmethod
    def create(x: torch.Tensor, v: torch.Tensor | None = None) -> "MPMState":
        """Undeformed particles at ``x`` (N, d) with velocity ``v`` (default 0): C = 0, F = I,
        J_p = 1 for snow (pass ``Jp=0`` for sand: :meth:`MPMModel.initial_state` does it)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] not in (2, 3):
            raise ValueError(f"x must be a tensor of shape (N, 2) or (N, 3), got {getattr(x, 'shape', x)}")
        n, d = x.shape
        if v is None:
            v = torch.zeros_like(x)
        if v.shape != x.shape:
            raise ValueError(f"v must have shape {tuple(x.shape)}, got {tuple(v.shape)}")
        eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(n, d, d).contiguous()
        return MPMState(x, v, torch.zeros(n, d, d, dtype=x.dtype, device=x.device), eye,
                        torch.ones(n, dtype=x.dtype, device=x.device))


def _per(v, n, name, dtype, device):
    t = v.to(dtype=dtype, device=device) if isinstance(v, torch.Tensor) else as_tensor(v, name, dtype=dtype, device=device)
    if t.dim() == 0:
        return t.expand(n).contiguous()
    if t.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t


@dataclass(frozen=True)
class MPMModel:
    """An MLS-MPM material sample on a grid (see the module doc for the update and materials).

    res: grid nodes per axis (2 or 3 ints, each >= 2 bound + 3); dx: node spacing (m);
    mass, volume: (N,) kg and m^d; E: (N,) Young's modulus (Pa); nu: (N,) Poisson ratio in
    (-1, 0.5); material: (N,) int32 codes of :data:`MATERIALS`; act_dir: (N, d) unit actuation
    directions; gravity: (d,) m/s^2; walls: 2d names of :data:`WALLS` (x-low, x-high, y-low, ...);
    friction: 2d Coulomb coefficients (>= 0, inf allowed) for ``"separate"`` walls; bound: wall
    thickness in cells; theta_c, theta_s, hardening: snow; friction_angle: sand (degrees).
    Float tensors may require grad (mass, volume, E, nu receive gradients).
    """

    res: tuple
    dx: float
    mass: torch.Tensor
    volume: torch.Tensor
    E: torch.Tensor
    nu: torch.Tensor
    material: torch.Tensor
    act_dir: torch.Tensor
    gravity: torch.Tensor
    walls: tuple
    friction: tuple
    bound: int = 3
    theta_c: float = 2.5e-2
    theta_s: float = 7.5e-3
    hardening: float = 10.0
    friction_angle: float = 30.0
    _walls: tuple = field(default=(), init=False, repr=False, compare=False)

    @staticmethod
    def create(x, res, dx, mass=None, volume=None, density=1000.0, E=1e4, nu=0.2, material="fixed_corotated",
               act_dir=None, gravity=None, walls="separate", friction=0.0, bound=3, **kwargs) -> "MPMModel":
        """Build a model for particles at ``x`` (N, d) (only its N, d, dtype and device are used).

        Defaults: volume (dx / 2)^d (4 particles per cell in 2D), mass = density * volume,
        act_dir e_y, gravity -9.81 e_y, every wall ``walls`` with ``friction``. Scalars broadcast
        per particle; ``material`` is a name, a list of names or an int tensor; ``walls`` and
        ``friction`` are one value or 2d values. Extra keywords: theta_c, theta_s, hardening,
        friction_angle."""
        check_float(x, "x", shape=("N", "d"), coerce=False)
        if x.shape[1] not in (2, 3):
            raise ValueError(f"x must have shape (N, 2) or (N, 3), got {tuple(x.shape)}")
        n, d = x.shape
        dtype, device = x.dtype, x.device
        dx = as_float(dx, "dx", positive=True)
        if volume is None:
            volume = (0.5 * dx) ** d
        volume = _per(volume, n, "volume", dtype, device)
        mass = volume * density if mass is None else _per(mass, n, "mass", dtype, device)
        if isinstance(material, str):
            material = [material] * n
        if not isinstance(material, (torch.Tensor, list, tuple)):
            raise TypeError(f"material must be a name, a list of names or an int tensor, got {material!r}")
        if not isinstance(material, torch.Tensor):
            bad = [m for m in material if m not in MATERIALS]
            if bad:
                raise ValueError(f"material must name one of {sorted(MATERIALS)}, got {bad[0]!r}")
            material = torch.tensor([MATERIALS[m] for m in material], dtype=torch.int32, device=device)
        if act_dir is None:
            act_dir = torch.zeros(n, d, dtype=dtype, device=device)
            act_dir[:, 1] = 1.0
        if gravity is None:
            gravity = [0.0, -9.81, 0.0][:d]
        if not isinstance(walls, (str, list, tuple)):
            raise TypeError(f"walls must be a name or 2d names from {sorted(WALLS)}, got {walls!r}")
        walls = (walls,) * (2 * d) if isinstance(walls, str) else tuple(walls)
        friction = (float(friction),) * (2 * d) if isinstance(friction, (int, float)) else tuple(float(f) for f in friction)
        return MPMModel(tuple(int(r) for r in res), float(dx), mass, volume, _per(E, n, "E", dtype, device),
                        _per(nu, n, "nu", dtype, device), material.to(device=device, dtype=torch.int32),
                        torch.as_tensor(act_dir, dtype=dtype, device=device),
                        torch.as_tensor(gravity, dtype=dtype, device=device), walls, friction, int(bound), **kwargs)

    def __post_init__(self):
        res = self.res
        if not isinstance(res, tuple) or len(res) not in (2, 3) or not all(isinstance(r, int) for r in res):
            raise ValueError(f"res must be a tuple of 2 or 3 ints, got {res!r}")
        if isinstance(self.bound, bool) or not isinstance(self.bound, int) or self.bound < 1:
            raise ValueError(f"bound must be an int >= 1, got {self.bound!r}")
        if any(r < 2 * self.bound + 3 for r in res):
            raise ValueError(f"res must be >= 2 bound + 3 = {2 * self.bound + 3} per axis, got {res}")
        if not (isinstance(self.dx, float) and math.isfinite(self.dx) and self.dx > 0):
            raise ValueError(f"dx must be a finite float > 0 (m), got {self.dx!r}")
        d = len(res)
        m = self.mass
        if not isinstance(m, torch.Tensor) or m.dim() != 1 or not m.is_floating_point():
            raise ValueError(f"mass must be a float tensor of shape (N,), got {getattr(m, 'shape', m)}")
        n = m.shape[0]
        for name in ("volume", "E", "nu"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.shape != (n,):
                raise ValueError(f"{name} must be a tensor of shape ({n},), got {getattr(t, 'shape', t)}")
        for name in ("mass", "volume", "E", "nu", "act_dir", "gravity"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != m.dtype or t.device != m.device:
                raise ValueError(f"{name} must be a tensor with the dtype/device of mass ({m.dtype}, {m.device})")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite")
        if (m <= 0).any() or (self.volume <= 0).any():
            raise ValueError("mass and volume must be > 0")
        if (self.E <= 0).any():
            raise ValueError("E (Young's modulus) must be > 0")
        if ((self.nu <= -1) | (self.nu >= 0.5)).any():
            raise ValueError("nu (Poisson ratio) must lie in (-1, 0.5)")
        mat = self.material
        if not isinstance(mat, torch.Tensor) or mat.dtype != torch.int32 or mat.shape != (n,):
            raise ValueError(f"material must be an int32 tensor of shape ({n},)")
        if n and ((mat < 0) | (mat > 3)).any():
            raise ValueError(f"material codes must be in {sorted(MATERIALS.values())} ({MATERIALS})")
        if self.act_dir.shape != (n, d):
            raise ValueError(f"act_dir must have shape ({n}, {d}), got {tuple(self.act_dir.shape)}")
        if self.gravity.shape != (d,):
            raise ValueError(f"gravity must have shape ({d},), got {tuple(self.gravity.shape)}")
        if len(self.walls) != 2 * d or any(w not in WALLS for w in self.walls):
            raise ValueError(f"walls must be {2 * d} names from {sorted(WALLS)}, got {self.walls!r}")
        if len(self.friction) != 2 * d or any(not (f >= 0) for f in self.friction):
            raise ValueError(f"friction must be {2 * d} values >= 0 (inf allowed), got {self.friction!r}")
        if not (0 < self.theta_c < 1 and self.theta_s > 0 and math.isfinite(self.hardening)):
            raise ValueError("theta_c must be in (0, 1), theta_s > 0 and hardening finite")
        if not (0 <= self.friction_angle < 90):
            raise ValueError(f"friction_angle must be in [0, 90) degrees, got {self.friction_angle!r}")
        kinds = torch.tensor([WALLS[w] for w in self.walls], dtype=torch.int32, device=m.device)
        fr = torch.tensor([min(f, _BIG_FRICTION) for f in self.friction], dtype=m.dtype, device=m.device)
        object.__setattr__(self, "_walls", (kinds, fr))

    # ----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.res)

    @property
    def num_particles(self) -> int:
        return self.mass.shape[0]

    def lame(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, lam) per particle (Pa), differentiable in E and nu."""
        return lame_parameters(self.E, self.nu)

    @property
    def sand_alpha(self) -> float:
        s = math.sin(math.radians(self.friction_angle))
        return math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)

    def initial_state(self, x: torch.Tensor, v: torch.Tensor | None = None) -> MPMState:
        """Undeformed state at ``x`` (N, d): F = I, C = 0, J_p = 1 (snow hardening) or 0 (sand
        log-volume correction)."""
        s = MPMState.create(x, v)
        jp = torch.where(self.material == SAND, torch.zeros_like(s.Jp), s.Jp)
        return MPMState(s.x, s.v, s.C, s.F, jp)

    # ----------------------------------------------------------------------------------------
    def _check(self, state: MPMState, control, n_steps: int | None = None) -> torch.Tensor:
        n, d = self.num_particles, self.dim
        if not isinstance(state, MPMState):
            raise TypeError(f"state must be an MPMState, got {type(state).__name__}")
        shapes = {"x": (n, d), "v": (n, d), "C": (n, d, d), "F": (n, d, d), "Jp": (n,)}
        for name, shp in shapes.items():
            t = getattr(state, name)
            if not isinstance(t, torch.Tensor) or t.shape != shp:
                raise ValueError(f"state.{name} must have shape {shp}, got {getattr(t, 'shape', t)}")
            if t.dtype != self.mass.dtype or t.device != self.mass.device:
                raise ValueError(f"state.{name} must match the model's dtype/device ({self.mass.dtype}, {self.mass.device})")
        if control is None:
            return torch.zeros(1, n, dtype=self.mass.dtype, device=self.mass.device)
        if not isinstance(control, torch.Tensor):
            raise TypeError(f"control must be a tensor of per-particle actuation (N,), got {type(control).__name__}")
        control = control.to(self.mass.dtype)
        if control.shape == (n,):
            return control.reshape(1, n)
        if n_steps is not None and control.shape == (n_steps, n):
            return control
        want = f"({n},)" + (f" or ({n_steps}, {n})" if n_steps is not None else "")
        raise ValueError(f"control must have shape {want} (actuation per particle, Pa), got {tuple(control.shape)}")

    def step(self, state: MPMState, dt: float, control: torch.Tensor | None = None) -> MPMState:
        """Simulator contract: one MLS-MPM step of ``dt`` s (Warp kernels).

        control: per-particle actuation ``(N,)`` in Pa (stress a F d d^T F^T along ``act_dir``
        d); None = 0. Gradients reach the state, mass, volume, E, nu and the control."""
        return self.segment(state, dt, 1, control)[0]

    def segment(self, state: MPMState, dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False, slots: int | None = None):
        """``n`` steps fused in Warp as one autograd node (the contract's optional capability).

        control: ``(N,)`` held over the segment or ``(n, N)`` one row per step. ``recompute``:
        keep only the input state and re-run the steps in backward (a checkpoint). Returns
        ``(final_state, states)``, ``states`` the n states after each step if ``return_all``.
        ``slots``: CPU threads / grid copies of the split launches (default: one per torch thread
        when each gets >= 16,384 particles). Gradients equal those of n calls to :meth:`step`."""
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0 (s), got {dt!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        act = self._check(state, control, n)
        mu, lam = self.lame()
        kinds, fr = self._walls
        out = mpm_segment(n, float(dt), self.res, self.dx, self.bound,
                          (self.theta_c, self.theta_s, self.hardening, self.sand_alpha),
                          state.x, state.v, state.C, state.F, state.Jp, self.mass, self.volume, mu, lam,
                          self.material, act, self.act_dir, self.gravity, kinds, fr,
                          recompute=recompute and torch.is_grad_enabled(), return_all=return_all, slots=slots)
        final = MPMState(*out[:5])
        if return_all:
            return final, [MPMState(*(o[k] for o in out[5:])) for k in range(n)]
        return final, []

    def step_torch(self, state: MPMState, dt: float, control: torch.Tensor | None = None) -> MPMState:
        """Plain-torch twin of :meth:`step` (same math; reference for tests and forward mode)."""
        act = self._check(state, control)[0]
        return _step_torch(self, state, float(dt), act)


# --------------------------------------------------------------------------------------------
# plain-torch twin
# --------------------------------------------------------------------------------------------

class _SVD(torch.autograd.Function):
    """Rotation-variant SVD F = U diag(s) V^T (U, V rotations; the last s may be negative) with
    Warp's adjoint (1 / (s_j^2 - s_i^2) clamped to <= -eps), so twin and kernel agree."""

    @staticmethod
    def forward(ctx, F):
        U, s, Vh = torch.linalg.svd(F)
        V = Vh.transpose(-1, -2)
        fu = torch.linalg.det(U) < 0
        fv = torch.linalg.det(V) < 0
        sign_u = torch.where(fu, -1.0, 1.0).to(F.dtype)
        sign_v = torch.where(fv, -1.0, 1.0).to(F.dtype)
        U = torch.cat([U[..., :-1], U[..., -1:] * sign_u[..., None, None]], -1)
        V = torch.cat([V[..., :-1], V[..., -1:] * sign_v[..., None, None]], -1)
        s = torch.cat([s[..., :-1], s[..., -1:] * (sign_u * sign_v)[..., None]], -1)
        ctx.save_for_backward(U, s, V)
        return U, s, V

    @staticmethod
    def backward(ctx, gU, gs, gV):
        U, s, V = ctx.saved_tensors
        d = s.shape[-1]
        eps = 1e-12 if s.dtype == torch.float64 else 1e-6
        s2 = s * s
        diff = s2[..., None, :] - s2[..., :, None]  # [i, j] = s_j^2 - s_i^2
        upper = torch.ones(d, d, dtype=torch.bool, device=s.device).triu(1)
        Fm = torch.where(upper, 1.0 / diff.clamp(max=-eps), torch.zeros_like(diff))
        Fm = Fm - Fm.transpose(-1, -2)
        Ut, Vt = U.transpose(-1, -2), V.transpose(-1, -2)
        S = torch.diag_embed(s)
        out = U @ torch.diag_embed(gs) @ Vt
        skew_u = Fm * (Ut @ gU - gU.transpose(-1, -2) @ U)
        out = out + U @ (skew_u @ S) @ Vt
        skew_v = Fm * (Vt @ gV - gV.transpose(-1, -2) @ V)
        out = out + U @ (S @ (skew_v @ Vt))
        return out


def _polar_torch(F: torch.Tensor) -> torch.Tensor:
    if F.shape[-1] == 3:
        return polar_rotation_torch(F)
    a = F[:, 0, 0] + F[:, 1, 1]
    b = F[:, 1, 0] - F[:, 0, 1]
    n2 = a * a + b * b
    ok = n2 > 1e-30
    nrm = torch.sqrt(torch.where(ok, n2, torch.ones_like(n2)))
    c = torch.where(ok, a / nrm, torch.ones_like(a))
    s = torch.where(ok, b / nrm, torch.zeros_like(b))
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _corotated_tau(F, mu, lam):
    d = F.shape[-1]
    eye = torch.eye(d, dtype=F.dtype, device=F.device)
    R = _polar_torch(F)
    J = torch.linalg.det(F)
    return 2.0 * mu[:, None, None] * (F - R) @ F.transpose(-1, -2) + (lam * (J - 1.0) * J)[:, None, None] * eye


def _stress_torch(model: MPMModel, F, jp, mu, lam):
    """Plastic projection and Kirchhoff stress per particle: (F_elastic, J_p, tau)."""
    d = F.shape[-1]
    eye = torch.eye(d, dtype=F.dtype, device=F.device)
    mat = model.material
    Fe, jn = F, jp
    tau = _corotated_tau(F, mu, lam)
    # neo-Hookean
    J = torch.linalg.det(F).clamp_min(J_MIN)
    tau_nh = mu[:, None, None] * (F @ F.transpose(-1, -2) - eye) + (lam * torch.log(J))[:, None, None] * eye
    tau = torch.where((mat == NEOHOOKEAN)[:, None, None], tau_nh, tau)
    snow = torch.nonzero(mat == SNOW).reshape(-1)
    if snow.numel():
        Fs, js = F[snow], jp[snow]
        U, sig, V = _SVD.apply(Fs)
        lo, hi = 1.0 - model.theta_c, 1.0 + model.theta_s
        clamped = ((sig < lo) | (sig > hi)).any(-1)
        sc = sig.clamp(lo, hi)
        Fp = U @ torch.diag_embed(sc) @ V.transpose(-1, -2)
        Fs2 = torch.where(clamped[:, None, None], Fp, Fs)
        js2 = torch.where(clamped, js * sig.prod(-1) / sc.prod(-1), js)
        h = torch.exp(model.hardening * (1.0 - js2)).clamp(HARDEN_MIN, HARDEN_MAX)
        tau_s = _corotated_tau(Fs2, mu[snow] * h, lam[snow] * h)
        Fe = Fe.index_copy(0, snow, Fs2)
        jn = jn.index_copy(0, snow, js2)
        tau = tau.index_copy(0, snow, tau_s)
    sand = torch.nonzero(mat == SAND).reshape(-1)
    if sand.numel():
        Fs, js = F[sand], jp[sand]
        ms, ls = mu[sand], lam[sand]
        U, sig, V = _SVD.apply(Fs)
        e = torch.log(sig.abs().clamp_min(SAND_SIG_MIN))
        tr = e.sum(-1) + js
        eh = e - tr[:, None] / d
        hn = torch.sqrt((eh * eh).sum(-1) + 1e-30)
        dg = hn + (d * ls + 2.0 * ms) / (2.0 * ms) * tr * model.sand_alpha
        e_proj = torch.where((dg > 0)[:, None], e - (dg / hn)[:, None] * eh, e)
        sep = tr >= 0
        e_new = torch.where(sep[:, None], torch.zeros_like(e), e_proj)
        js2 = torch.where(sep, tr, torch.zeros_like(tr))
        Fs2 = U @ torch.diag_embed(torch.exp(e_new)) @ V.transpose(-1, -2)
        te = e_new.sum(-1)
        tau_s = U @ torch.diag_embed(2.0 * ms[:, None] * e_new + (ls * te)[:, None]) @ U.transpose(-1, -2)
        Fe = Fe.index_copy(0, sand, Fs2)
        jn = jn.index_copy(0, sand, js2)
        tau = tau.index_copy(0, sand, tau_s)
    return Fe, jn, tau


def _stencil(x, model: MPMModel):
    """Base node, weights (N, 3^d), offsets (3^d, d) and flat node indices (N, 3^d)."""
    d = model.dim
    inv_dx = 1.0 / model.dx
    res = torch.tensor(model.res, device=x.device)
    xg = x * inv_dx
    base = torch.floor(xg - 0.5).long()
    base = torch.minimum(base.clamp_min(0), res - 3)
    fx = xg - base.to(x.dtype)
    w = torch.stack([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2], 1)  # (N, 3, d)
    offs = torch.tensor(list(itertools.product(range(3), repeat=d)), device=x.device)  # (3^d, d)
    wgt = torch.ones(x.shape[0], offs.shape[0], dtype=x.dtype, device=x.device)
    for a in range(d):
        wgt = wgt * w[:, offs[:, a], a]
    strides = [1] * d
    for a in range(d - 2, -1, -1):
        strides[a] = strides[a + 1] * model.res[a + 1]
    node = ((base[:, None, :] + offs[None]) * torch.tensor(strides, device=x.device)).sum(-1)
    return fx, wgt, offs.to(x.dtype), node


def _walls_torch(model: MPMModel, v):
    d = model.dim
    G = v.shape[0]
    idx = torch.arange(G, device=v.device)
    coords = []
    for a in range(d - 1, -1, -1):
        coords.append(idx % model.res[a])
        idx = idx // model.res[a]
    coords = coords[::-1]
    for w, (name, mu) in enumerate(zip(model.walls, model.friction)):
        a, side = w // 2, w % 2
        n = torch.zeros(d, dtype=v.dtype, device=v.device)
        n[a] = 1.0 if side == 0 else -1.0
        mask = coords[a] < model.bound if side == 0 else coords[a] > model.res[a] - model.bound
        if name == "sticky":
            new = torch.zeros_like(v)
        elif name == "slip":
            new = v - (v @ n)[:, None] * n
        else:
            mu = min(mu, _BIG_FRICTION)
            lin = v @ n
            vt = v - lin[:, None] * n
            lit = torch.sqrt((vt * vt).sum(-1) + 1e-20)
            stick = lit + mu * lin <= 0
            # the sliding factor only where it is used: elsewhere mu lin / lit may overflow, and a
            # where() would send 0 * inf = NaN back through it
            slide = (lin < 0) & ~stick
            lin_s = torch.where(slide, lin, torch.zeros_like(lin))
            fric = torch.where(stick[:, None], torch.zeros_like(v), vt * (1.0 + mu * lin_s / lit)[:, None])
            new = torch.where((lin < 0)[:, None], fric, v)
        v = torch.where(mask[:, None], new, v)
    return v


def _step_torch(model: MPMModel, state: MPMState, dt: float, act: torch.Tensor) -> MPMState:
    d = model.dim
    inv_dx = 1.0 / model.dx
    x, v, C = state.x, state.v, state.C
    G = math.prod(model.res)
    fx, wgt, offs, node = _stencil(x, model)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    Fn = (eye + dt * C) @ state.F
    mu, lam = model.lame()
    Fe, jn, tau = _stress_torch(model, Fn, state.Jp, mu, lam)
    a = model.act_dir
    tau = tau + act[:, None, None] * (Fe @ (a[:, :, None] * a[:, None, :]) @ Fe.transpose(-1, -2))
    m = model.mass
    affine = tau * (-dt * 4.0 * inv_dx * inv_dx * model.volume)[:, None, None] + m[:, None, None] * C
    dpos = (offs[None] - fx[:, None]) * model.dx  # (N, 3^d, d)
    contrib = wgt[..., None] * (m[:, None, None] * v[:, None] + (affine[:, None] @ dpos[..., None]).squeeze(-1))
    flat = node.reshape(-1)
    gmv = torch.zeros(G, d, dtype=x.dtype, device=x.device).index_add(0, flat, contrib.reshape(-1, d))
    gm = torch.zeros(G, dtype=x.dtype, device=x.device).index_add(0, flat, (wgt * m[:, None]).reshape(-1))
    has = gm > 0
    gv = gmv / torch.where(has, gm, torch.ones_like(gm))[:, None] + dt * model.gravity
    gv = torch.where(has[:, None], _walls_torch(model, gv), torch.zeros_like(gv))
    g = gv[node]  # (N, 3^d, d)
    nv = (wgt[..., None] * g).sum(1)
    nC = (4.0 * inv_dx) * ((wgt[..., None, None] * g[..., :, None] * (offs[None] - fx[:, None])[..., None, :]).sum(1))
    return MPMState(x + dt * nv, nv, nC, Fe, jn)
