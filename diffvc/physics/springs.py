"""Mass-spring systems: damped (optionally actuated) springs between particles, gravity, and the
penalty plane contact with friction of :mod:`diffvc.physics.particles`.

Spring s joins particles i = springs[s, 0] and j = springs[s, 1] (positions x, velocities v):

    l  = sqrt(|x_j - x_i|^2 + 1e-12)        (m; the 1e-12 m^2 keeps coincident ends finite)
    u  = (x_j - x_i) / l
    l0 = rest * (1 + gain * act)             (actuated rest length; act is a control, gain (S,))
    f  = ke (l - l0) + kd (v_j - v_i).u      (N, pulls i toward j when stretched)

Integration is semi-implicit Euler (velocity first); contact, friction and their gradient
contract are those of :func:`~diffvc.physics.particle_step` (continuous penalty force, one-sided
derivative at contact onset, friction smoothed by ``friction_smoothing`` m/s). Stability needs
``dt`` small against sqrt(m / ke) of the stiffest spring and of the contact.

The model follows the simulator contract (:mod:`diffvc.physics`): ``model.step(state, dt,
control)`` with ``control`` the actuation ``(S,)``, its twin ``model.step_torch``, and the optional
fused capability ``model.segment(state, dt, n, ...)`` -- n steps in Warp as one autograd node
(adjoint launched in reverse, optional recomputation = checkpointing) -- which
:func:`~diffvc.physics.rollout` uses by itself: ``rollout(model, state, steps, dt=dt)`` is the
fast path for long rollouts. :func:`spring_step` (one step, two Warp kernels) also takes an
external force; :func:`spring_step_torch` is the plain-torch twin (tests, benchmarks, forward mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import Out, kernel_op, vec
from .._kernels.particles import integrate_particles
from .._kernels.springs import LENGTH_EPS2, spring_forces, spring_segment
from .particles import ParticleState, check_planes

__all__ = ["SpringModel", "spring_step", "spring_step_torch", "springs_from_mesh"]


@dataclass(frozen=True)
class SpringModel:
    """Particles joined by springs, and their environment.

    mass: (N,) kg (0: kinematic); radius: (N,) m (contact offset); springs: (S, 2) int32 particle
    indices; rest: (S,) m; ke: (S,) N/m; kd: (S,) N s/m; gain: (S,) actuation gain (0: passive);
    planes: (P, 4) rows (nx, ny, nz, d), unit n, free side n.x > d; contact: (4,) (ke N/m,
    kd N s/m, mu, friction_smoothing m/s); gravity: (3,) m/s^2. Any float tensor may require grad.
    """

    mass: torch.Tensor
    radius: torch.Tensor
    springs: torch.Tensor
    rest: torch.Tensor
    ke: torch.Tensor
    kd: torch.Tensor
    gain: torch.Tensor
    planes: torch.Tensor
    contact: torch.Tensor
    gravity: torch.Tensor

    @staticmethod
    def create(x, springs, mass=1.0, radius=0.0, rest=None, ke=1e3, kd=1.0, gain=0.0, planes=None,
               contact_ke=1e4, contact_kd=10.0, mu=0.5, friction_smoothing=0.01, gravity=(0.0, -9.81, 0.0),
               dtype=None, device=None) -> "SpringModel":
        """Build a model. ``x`` (N, 3) rest positions give ``rest`` lengths when it is None; scalars
        broadcast per particle / spring; ``planes=None`` is the ground y = 0 (pass ``[]`` for none).
        Tensors keep their autograd history."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=dtype or torch.float32)
        dtype = dtype or x.dtype
        device = device or x.device

        def t(v):
            return v.to(dtype=dtype, device=device) if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=dtype, device=device)

        if x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (N, 3), got {tuple(x.shape)}")
        x = t(x)
        n = x.shape[0]
        springs = torch.as_tensor(springs, device=device)
        if springs.dim() != 2 or springs.shape[1] != 2 or springs.is_floating_point():
            raise ValueError(f"springs must be an integer tensor of shape (S, 2), got {tuple(springs.shape)} {springs.dtype}")
        if springs.numel() and (springs.min() < 0 or springs.max() >= n):
            raise ValueError(f"springs: indices must lie in [0, {n})")
        springs = springs.to(torch.int32).contiguous()
        s = springs.shape[0]

        def per(v, count, name):
            v = t(v)
            if v.dim() == 0:
                return v.expand(count).contiguous()
            if v.shape != (count,):
                raise ValueError(f"{name} must be a scalar or have shape ({count},), got {tuple(v.shape)}")
            return v

        if rest is None:
            rest = (x[springs[:, 1].long()] - x[springs[:, 0].long()]).norm(dim=1).detach()
        planes = t([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes).reshape(-1, 4)
        contact = torch.cat([t(contact_ke).reshape(1), t(contact_kd).reshape(1), t(mu).reshape(1),
                             t(friction_smoothing).reshape(1)])
        model = SpringModel(per(mass, n, "mass"), per(radius, n, "radius"), springs, per(rest, s, "rest"),
                            per(ke, s, "ke"), per(kd, s, "kd"), per(gain, s, "gain"), planes, contact,
                            t(gravity).reshape(3))
        model.validate()
        return model

    @property
    def num_particles(self) -> int:
        return self.mass.shape[0]

    @property
    def num_springs(self) -> int:
        return self.springs.shape[0]

    def validate(self) -> None:
        n, s = self.num_particles, self.num_springs
        if self.mass.dim() != 1 or (self.mass < 0).any() or not torch.isfinite(self.mass).all():
            raise ValueError("mass must have shape (N,) with finite values >= 0")
        if self.radius.shape != (n,):
            raise ValueError(f"radius must have shape ({n},), got {tuple(self.radius.shape)}")
        if self.springs.dtype != torch.int32 or self.springs.shape != (s, 2):
            raise ValueError("springs must be an int32 tensor of shape (S, 2)")
        for name in ("rest", "ke", "kd", "gain"):
            t = getattr(self, name)
            if t.shape != (s,):
                raise ValueError(f"{name} must have shape ({s},), got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite")
        if (self.rest < 0).any() or (self.ke < 0).any() or (self.kd < 0).any():
            raise ValueError("rest, ke and kd must be >= 0")
        check_planes(self.planes)
        if self.contact.shape != (4,) or (self.contact[:3] < 0).any() or self.contact[3] <= 0:
            raise ValueError("contact must be (ke >= 0, kd >= 0, mu >= 0, friction_smoothing > 0)")
        if self.gravity.shape != (3,):
            raise ValueError(f"gravity must have shape (3,), got {tuple(self.gravity.shape)}")

    @property
    def inv_mass(self) -> torch.Tensor:
        m = self.mass
        safe = torch.where(m > 0, m, torch.ones_like(m))
        return torch.where(m > 0, 1.0 / safe, torch.zeros_like(m))

    def step(self, state: ParticleState, dt: float, control: torch.Tensor | None = None) -> ParticleState:
        """Simulator contract: :func:`spring_step`; ``control``: actuation ``(S,)`` (rest length
        scaled by ``1 + gain * control``)."""
        return spring_step(self, state, dt, control)

    def step_torch(self, state: ParticleState, dt: float, control: torch.Tensor | None = None) -> ParticleState:
        """Plain-torch twin of :meth:`step` (:func:`spring_step_torch`)."""
        return spring_step_torch(self, state, dt, control)

    def segment(self, state: ParticleState, dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False):
        """``n`` steps fused in Warp as one autograd node (the contract's optional capability).

        Returns ``(final_state, states)`` where ``states`` lists the states after each step if
        ``return_all`` (else empty). ``control``: (S,) actuation held over the segment (it
        receives gradients). ``recompute``: keep only the segment's input and re-run its steps in
        backward (checkpointing). Gradients equal those of ``n`` calls to :meth:`step`.
        """
        if not (float(dt) > 0):
            raise ValueError(f"dt must be > 0, got {dt!r}")
        act = _check(self, state, control, None).reshape(1, -1)
        inv_mass, si, sj, planes, _ = _prepare(self)
        out = spring_segment(n, float(dt), state.x, state.v, inv_mass, self.radius, planes, self.contact,
                             self.gravity, si, sj, self.rest, self.ke, self.kd, self.gain, act, None,
                             recompute=recompute and torch.is_grad_enabled(), return_all=return_all)
        final = ParticleState(out[0], out[1])
        if return_all:
            return final, [ParticleState(out[2][k], out[3][k]) for k in range(n)]
        return final, []


def _planes(model: SpringModel) -> torch.Tensor:
    # the particle kernel wants at least one plane row; a plane far below never touches
    if model.planes.shape[0]:
        return model.planes
    return torch.tensor([[0.0, 1.0, 0.0, -1e30]], dtype=model.mass.dtype, device=model.mass.device)


def _check(model: SpringModel, state: ParticleState, actuation, external) -> torch.Tensor:
    n, s = model.num_particles, model.num_springs
    for name in ("x", "v"):
        t = getattr(state, name)
        if t.shape != (n, 3):
            raise ValueError(f"state.{name} must have shape ({n}, 3), got {tuple(t.shape)}")
        if t.dtype != model.mass.dtype or t.device != model.mass.device:
            raise ValueError(f"state.{name} must match the model's dtype/device ({model.mass.dtype}, {model.mass.device})")
    if external is not None and external.shape != (n, 3):
        raise ValueError(f"external must have shape ({n}, 3), got {tuple(external.shape)}")
    if actuation is None:
        return torch.zeros(s, dtype=model.mass.dtype, device=model.mass.device)
    if actuation.shape != (s,):
        raise ValueError(f"actuation must have shape ({s},) (one value per spring), got {tuple(actuation.shape)}")
    return actuation.to(model.mass.dtype)


def _prepare(model: SpringModel) -> tuple:
    """Per-model tensors every step needs."""
    sp = model.springs
    return (model.inv_mass, sp[:, 0].contiguous(), sp[:, 1].contiguous(), _planes(model),
            model.gravity.reshape(1, 3))


def _step(model: SpringModel, prep: tuple, state: ParticleState, dt: float, act: torch.Tensor,
          external: torch.Tensor | None) -> ParticleState:
    inv_mass, si, sj, planes, gravity = prep
    n, s = model.num_particles, model.num_springs
    f = kernel_op(spring_forces, s, [vec(state.x), vec(state.v), si, sj, model.rest, model.ke, model.kd, model.gain,
                                     act], [Out((n, 3), "vec")])
    if external is not None:
        f = f + external
    x, v = kernel_op(integrate_particles, n,
                     [vec(state.x), vec(state.v), inv_mass, model.radius, vec(planes), model.contact, vec(gravity),
                      vec(f), float(dt)],
                     [Out((n, 3), "vec"), Out((n, 3), "vec")])
    return ParticleState(x, v)


def spring_step(model: SpringModel, state: ParticleState, dt: float, actuation: torch.Tensor | None = None,
                external: torch.Tensor | None = None) -> ParticleState:
    """Advance a mass-spring system by ``dt`` s: two Warp kernels (springs, then integration with
    gravity and contact). actuation: (S,) controls (rest length scaled by 1 + gain * act);
    external: (N, 3) extra force in N. Gradients reach the state, every model tensor, the
    actuation and the external force."""
    act = _check(model, state, actuation, external)
    return _step(model, _prepare(model), state, dt, act, external)


def spring_forces_torch(model: SpringModel, state: ParticleState, actuation: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch twin of the spring-force kernel: total spring force on each particle (N, 3)."""
    x, v = state.x, state.v
    i, j = model.springs[:, 0].long(), model.springs[:, 1].long()
    d = x[j] - x[i]
    ln = torch.sqrt((d * d).sum(1) + LENGTH_EPS2)
    u = d / ln[:, None]
    act = torch.zeros_like(model.rest) if actuation is None else actuation
    l0 = model.rest * (1 + model.gain * act)
    fs = model.ke * (ln - l0) + model.kd * ((v[j] - v[i]) * u).sum(1)
    fv = u * fs[:, None]
    return torch.zeros_like(x).index_add(0, i, fv).index_add(0, j, -fv)


def spring_step_torch(model: SpringModel, state: ParticleState, dt: float, actuation: torch.Tensor | None = None,
                      external: torch.Tensor | None = None) -> ParticleState:
    """Plain-torch twin of :func:`spring_step` (same math; reference for tests, benchmarks and
    forward mode, which Warp kernels do not have)."""
    from .particles import ParticleModel, particle_step_torch

    f = spring_forces_torch(model, state, actuation)
    if external is not None:
        f = f + external
    pm = ParticleModel(model.mass, model.radius, model.planes, model.contact, model.gravity)
    return particle_step_torch(pm, state, dt, f)


def springs_from_mesh(verts: torch.Tensor, faces: torch.Tensor, bending: bool = False) -> torch.Tensor:
    """Springs (S, 2) int32 along the unique edges of a triangle mesh (``diffvc.geometry.edges``).

    bending: also join the two opposite vertices of every pair of triangles sharing an edge
    (resists folding, as in cloth models). verts: (V, 3) (checked for consistency only);
    faces: (F, 3) integer indices.
    """
    from ..geometry import edges

    if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(f"faces must be an integer tensor of shape (F, 3), got {getattr(faces, 'shape', faces)}")
    if verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {tuple(verts.shape)}")
    if faces.numel() and (faces.min() < 0 or faces.max() >= verts.shape[0]):
        raise ValueError(f"faces: indices must lie in [0, {verts.shape[0]})")
    faces = faces.long()
    e, inv = edges(faces, return_inverse=True)
    out = [e]
    if bending:
        # for each face corner k, edge k joins corners k, k+1; the opposite vertex is corner k+2
        eid = inv.reshape(-1)
        opp = faces.roll(-2, dims=1).reshape(-1)
        order = torch.argsort(eid, stable=True)
        eid, opp = eid[order], opp[order]
        same = eid[1:] == eid[:-1]
        pairs = torch.stack([opp[:-1][same], opp[1:][same]], dim=1)
        pairs, _ = pairs.sort(dim=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if pairs.numel():
            out.append(torch.unique(pairs, dim=0))
    return torch.cat(out).to(torch.int32)
