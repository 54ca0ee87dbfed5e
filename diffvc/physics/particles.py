"""Particles with gravity and penalty contact against planes (semi-implicit Euler).

State and model are plain dataclasses of tensors; :func:`particle_step` is a pure function
returning a new state. Every tensor in the model may require grad (masses, contact parameters,
gravity, plane placement); the step runs in a Warp kernel whose adjoint gives the gradients.

Contact model (documented gradient contract): a particle of radius r at signed distance
``c = n.x - d - r`` from a plane feels, when ``c < 0``,

    f_n = max(0, -ke c - kd min(v.n, 0))                   (normal, along n)
    f_t = -mu f_n v_t / sqrt(|v_t|^2 + vs^2)               (regularised Coulomb friction)

The force is continuous in the state (zero at c = 0) and piecewise smooth; its gradient is the
one-sided derivative of the active branch at the contact onset ``c = 0``. ``vs`` (the
``friction_smoothing`` velocity, m/s) makes friction differentiable at sticking (|v_t| = 0).
With substeps small against sqrt(m/ke) the integration is stable and gradients stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import Out, kernel_op, vec
from .._kernels.particles import MAX_PLANES, integrate_particles, particle_segment
from .stability import check_contact_stability
from .._validate import (as_tensor, check_dt, check_finite, check_float, check_like, check_positive, check_same_device,
                         check_same_dtype)


def check_planes(planes: torch.Tensor) -> None:
    """Validate contact planes (P, 4) rows (nx, ny, nz, d): unit normals, P <= MAX_PLANES.
    Shared by every solver that takes ``planes``."""
    check_float(planes, "planes", shape=("P", 4), coerce=False)
    if planes.shape[0] > MAX_PLANES:
        raise ValueError(f"planes: at most {MAX_PLANES} contact planes, got {planes.shape[0]}")
    if planes.shape[0]:
        nrm = planes[:, :3].detach().norm(dim=1)
        if not torch.allclose(nrm, torch.ones_like(nrm), atol=1e-4):
            raise ValueError("planes: normals (first three columns) must be unit length")


@dataclass(frozen=True)
class ParticleState:
    """x: positions (N, 3) in m; v: velocities (N, 3) in m/s (a leading batch of environments,
    ``(B, N, 3)``, is allowed). Checked on construction: floating, finite, one shape and dtype."""

    x: torch.Tensor
    v: torch.Tensor

    def __post_init__(self):
        check_float(self.x, "x", shape=(..., "N", 3), coerce=False)
        check_float(self.v, "v", shape=tuple(self.x.shape), coerce=False)
        check_same_dtype(("x", self.x), ("v", self.v))

    @classmethod
    def _unchecked(cls, x: torch.Tensor, v: torch.Tensor) -> "ParticleState":
        """A state from tensors known to be valid (a fused segment's rows), without the checks."""
        st = object.__new__(cls)
        object.__setattr__(st, "x", x)
        object.__setattr__(st, "v", v)
        return st


@dataclass(frozen=True)
class ParticleModel:
    """Particles and their environment.

    mass: (N,) kg (0 marks a kinematic particle); radius: (N,) m; planes: (P, 4) rows
    (nx, ny, nz, d) with unit normal n, plane n.x = d, free side n.x > d; contact: (4,)
    (ke N/m, kd N s/m, mu, friction_smoothing m/s); gravity: (3,) m/s^2.
    """

    mass: torch.Tensor
    radius: torch.Tensor
    planes: torch.Tensor
    contact: torch.Tensor
    gravity: torch.Tensor

    @staticmethod
    def create(mass, radius, planes=None, ke=1e4, kd=10.0, mu=0.2, friction_smoothing=0.2,
               gravity=(0.0, -9.81, 0.0), dtype=torch.float32, device="cpu") -> "ParticleModel":
        """Build a model from numbers or tensors (tensors keep their autograd history).

        The default ``friction_smoothing`` (0.2 m/s) keeps explicit friction stable
        (``dt mu f_n / (vs m) < 2``, :mod:`diffvc.physics.stability`) for impacts of ~7 m/s at the
        default contact (the bounce example peaks at dt mu f_n / m = 0.26 m/s, so needs vs > 0.13;
        the former 0.01 gave a rate of 25 and gradients of ~1e10 over 10,000 steps). A step warns
        once when the bound is not met.
        """
        names = iter(("mass", "radius", "planes"))

        def t(x):
            return as_tensor(x, next(names), dtype=dtype, device=device)

        mass = t(mass).reshape(-1)
        n = mass.shape[0]
        radius = t(radius)
        radius = radius.expand(n) if radius.dim() == 0 else radius.reshape(-1)
        planes = t([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes).reshape(-1, 4)
        parts = [scalar_param(v, k, dtype, device) for v, k in
                 ((ke, "ke"), (kd, "kd"), (mu, "mu"), (friction_smoothing, "friction_smoothing"))]
        return ParticleModel(mass, radius, planes, torch.cat(parts), vec3_param(gravity, "gravity", dtype, device))

    def __post_init__(self):
        self.validate()  # every way of building the model (constructor, create, dataclasses.replace)

    def validate(self) -> None:
        named = [(k, getattr(self, k)) for k in ("mass", "radius", "planes", "contact", "gravity")]
        for k, v in named:
            check_float(v, k, coerce=False)
        check_same_dtype(*named)
        check_same_device(*named)
        check_float(self.mass, "mass", shape=("N",))
        n = self.mass.shape[0]
        check_positive(self.mass, "mass", strict=False)
        check_float(self.radius, "radius", shape=(n,))
        check_positive(self.radius, "radius", strict=False)
        check_planes(self.planes)
        check_contact(self.contact, "contact")
        check_float(self.gravity, "gravity", shape=(3,))

    @property
    def inv_mass(self) -> torch.Tensor:
        m = self.mass
        safe = torch.where(m > 0, m, torch.ones_like(m))
        return torch.where(m > 0, 1.0 / safe, torch.zeros_like(m))

    def step(self, state: "ParticleState", dt: float, control: torch.Tensor | None = None) -> "ParticleState":
        """Simulator contract: :func:`particle_step`; ``control``: external force (N, 3) in N."""
        return particle_step(self, state, dt, control)

    def step_torch(self, state: "ParticleState", dt: float, control: torch.Tensor | None = None) -> "ParticleState":
        """Plain-torch twin of :meth:`step` (:func:`particle_step_torch`)."""
        return particle_step_torch(self, state, dt, control)

    def segment(self, state: "ParticleState", dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False):
        """``n`` steps fused in ONE Warp launch and one autograd node (the contract's optional
        capability; :func:`~diffvc.physics.rollout` uses it by itself).

        Returns ``(final_state, states)``, ``states`` the states after each step if
        ``return_all`` (else empty). ``control``: external force ``(N, 3)`` held over the segment
        (receives gradients). ``recompute``: keep only the segment's input and re-run its steps in
        backward (checkpointing). Values and gradients equal those of ``n`` calls to :meth:`step`
        (:func:`~diffvc._kernels.particles.particle_rollout`: every step in one launch, backward one
        launch of its adjoint); the stability warning checks the segment's first state.
        """
        _check_state(state, self)
        dt = check_dt(dt)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (steps), got {n!r}")
        nb = self.mass.shape[0]
        inv_mass = self.inv_mass
        plane_contact_stability("ParticleModel.segment", dt, state.x, state.v, inv_mass, self.radius, self.planes,
                                self.contact)
        ext = torch.zeros_like(state.x) if control is None else check_like(control, "control", (nb, 3), self.mass)
        out = particle_segment(n, dt, state.x, state.v, inv_mass, self.radius, self.planes, self.contact,
                               self.gravity.reshape(1, 3), ext, recompute=recompute and torch.is_grad_enabled(),
                               return_all=return_all)
        final = ParticleState(out[0], out[1])
        if return_all:  # rows of the checked segment output: valid by construction, not re-checked
            return final, [ParticleState._unchecked(out[2][k], out[3][k]) for k in range(n)]
        return final, []


def scalar_param(x, name: str, dtype, device) -> torch.Tensor:
    """A finite scalar model parameter as a (1,) tensor (tensors keep their autograd history)."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
    return check_finite(t.reshape(1), name)


def vec3_param(x, name: str, dtype, device) -> torch.Tensor:
    """A finite (3,) model parameter (e.g. gravity)."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    if t.numel() != 3:
        raise ValueError(f"{name} must have shape (3,), got {tuple(t.shape)}")
    return check_finite(t.reshape(3), name)


def check_contact(c: torch.Tensor, name: str, n: int = 4) -> None:
    """Contact parameters ``(ke, kd, mu, friction_smoothing[, contact_smoothing])``: finite,
    ke, kd, mu >= 0, friction_smoothing > 0 (and contact_smoothing >= 0)."""
    check_float(c, name, shape=(n,))
    c = c.detach()
    if bool((c[:3] < 0).any()) or not bool(c[3] > 0) or (n > 4 and bool((c[4:] < 0).any())):
        raise ValueError(f"{name} must be (ke >= 0, kd >= 0, mu >= 0, friction_smoothing > 0"
                         + (", contact_smoothing >= 0)" if n > 4 else ")") + f", got {c.tolist()}")


def plane_contact_stability(solver: str, dt: float, x: torch.Tensor, v: torch.Tensor, inv_mass: torch.Tensor,
                            radius: torch.Tensor, planes: torch.Tensor, contact: torch.Tensor) -> None:
    """Warn once when this step's explicit plane contact or friction is unstable
    (:mod:`diffvc.physics.stability`); points x, v (N, 3), inv_mass and radius (N,)."""
    if planes.shape[0] == 0:
        return
    with torch.no_grad():
        n, d = planes.detach()[:, :3], planes.detach()[:, 3]
        c = x.detach() @ n.T - d - radius.detach()[:, None]
        un = v.detach() @ n.T
        check_contact_stability(solver, dt, inv_mass.detach()[:, None].expand_as(c).reshape(-1), c.reshape(-1),
                                un.reshape(-1), contact)


def _check_state(state: ParticleState, model: ParticleModel) -> None:
    if not isinstance(model, ParticleModel):
        raise TypeError(f"model must be a ParticleModel, got {type(model).__name__}")
    if not isinstance(state, ParticleState):
        raise TypeError(f"state must be a ParticleState, got {type(state).__name__}")
    n = model.mass.shape[0]
    for name in ("x", "v"):
        check_like(getattr(state, name), f"state.{name}", (n, 3), model.mass)


def particle_step(model: ParticleModel, state: ParticleState, dt: float,
                  external: torch.Tensor | None = None) -> ParticleState:
    """Advance particles by ``dt`` seconds (semi-implicit Euler, Warp kernel).

    external: optional (N, 3) force in N applied during this step.
    Returns a new :class:`ParticleState`; gradients reach the state, model tensors and ``external``.
    """
    _check_state(state, model)
    dt = check_dt(dt)
    n = model.mass.shape[0]
    plane_contact_stability("particle_step", dt, state.x, state.v, model.inv_mass, model.radius, model.planes,
                            model.contact)
    ext = torch.zeros_like(state.x) if external is None else check_like(external, "external", (n, 3), model.mass)
    x, v = kernel_op(
        integrate_particles,
        n,
        [vec(state.x), vec(state.v), model.inv_mass, model.radius, vec(model.planes), model.contact,
         vec(model.gravity.reshape(1, 3)), vec(ext), float(dt)],
        [Out((n, 3), "vec"), Out((n, 3), "vec")],
    )
    return ParticleState(x, v)


def particle_step_torch(model: ParticleModel, state: ParticleState, dt: float,
                        external: torch.Tensor | None = None) -> ParticleState:
    """Plain-torch twin of :func:`particle_step` (same math; reference for tests and benchmarks)."""
    _check_state(state, model)
    dt = check_dt(dt)
    x, v = state.x, state.v
    f = torch.zeros_like(x) if external is None else external
    ke, kd, mu, vs = model.contact
    for k in range(model.planes.shape[0]):
        n, d = model.planes[k, :3], model.planes[k, 3]
        c = x @ n - d - model.radius
        vn = v @ n
        fn = torch.clamp(-(ke * c + kd * torch.clamp(vn, max=0.0)), min=0.0)
        vt = v - vn[:, None] * n
        denom = torch.sqrt((vt * vt).sum(1) + vs * vs)
        fc = n * fn[:, None] - vt * (mu * fn / denom)[:, None]
        f = f + torch.where((c < 0)[:, None], fc, torch.zeros_like(fc))
    w = model.inv_mass
    g = model.gravity * (w > 0).to(x.dtype)[:, None]
    v1 = v + (f * w[:, None] + g) * dt
    return ParticleState(x + v1 * dt, v1)
