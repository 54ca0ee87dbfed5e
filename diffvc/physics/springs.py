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
from .._kernels.springs import (LENGTH_EPS2, SegmentWorkspace, controlled_spring_segment, spring_forces,
                               spring_segment)
from .._validate import (as_tensor, check_dt, check_faces, check_float, check_index, check_like, check_positive,
                         check_same_device, check_same_dtype)
from .particles import ParticleState, check_contact, check_planes, plane_contact_stability, scalar_param, vec3_param

__all__ = ["SpringModel", "spring_step", "spring_step_torch", "springs_from_mesh", "mlp_controller_features",
           "mlp_controller_torch"]


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
               contact_ke=1e4, contact_kd=10.0, mu=0.5, friction_smoothing=0.05, gravity=(0.0, -9.81, 0.0),
               dtype=None, device=None) -> "SpringModel":
        """Build a model. ``x`` (N, 3) rest positions give ``rest`` lengths when it is None; scalars
        broadcast per particle / spring; ``planes=None`` is the ground y = 0 (pass ``[]`` for none).
        Tensors keep their autograd history."""
        x = as_tensor(x, "x", dtype=None if isinstance(x, torch.Tensor) else (dtype or torch.float32))
        dtype = dtype or x.dtype
        device = device or x.device

        def t(v, name):
            return as_tensor(v, name, dtype=dtype, device=device)

        x = check_float(t(x, "x"), "x", shape=("N", 3))
        n = x.shape[0]
        springs = check_index(springs, "springs", n, shape=("S", 2), device=device, dtype=torch.int32,
                              size_name="the number of particles")
        s = springs.shape[0]

        def per(v, count, name):
            v = t(v, name)
            if v.dim() == 0:
                return v.expand(count).contiguous()
            if v.shape != (count,):
                raise ValueError(f"{name} must be a scalar or have shape ({count},), got {tuple(v.shape)}")
            return v

        if rest is None:
            rest = (x[springs[:, 1].long()] - x[springs[:, 0].long()]).norm(dim=1).detach()
        planes = t([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes, "planes").reshape(-1, 4)
        contact = torch.cat([scalar_param(v, k, dtype, device) for v, k in
                             ((contact_ke, "contact_ke"), (contact_kd, "contact_kd"), (mu, "mu"),
                              (friction_smoothing, "friction_smoothing"))])
        return SpringModel(per(mass, n, "mass"), per(radius, n, "radius"), springs, per(rest, s, "rest"),
                           per(ke, s, "ke"), per(kd, s, "kd"), per(gain, s, "gain"), planes, contact,
                           vec3_param(gravity, "gravity", dtype, device))

    def __post_init__(self):
        self.validate()  # every way of building the model (constructor, create, dataclasses.replace)

    @property
    def num_particles(self) -> int:
        return self.mass.shape[0]

    @property
    def num_springs(self) -> int:
        return self.springs.shape[0]

    def validate(self) -> None:
        floats = [(k, getattr(self, k)) for k in ("mass", "radius", "rest", "ke", "kd", "gain", "planes", "contact",
                                                   "gravity")]
        for k, v in floats:
            check_float(v, k, coerce=False)
        check_same_dtype(*floats)
        check_same_device(*floats, ("springs", self.springs))
        check_float(self.mass, "mass", shape=("N",))
        n = self.num_particles
        check_positive(self.mass, "mass", strict=False)
        check_float(self.radius, "radius", shape=(n,))
        check_positive(self.radius, "radius", strict=False)
        if not isinstance(self.springs, torch.Tensor) or self.springs.dtype != torch.int32:
            raise TypeError(f"springs must be an int32 tensor of shape (S, 2), got "
                            f"{getattr(self.springs, 'dtype', type(self.springs).__name__)}")
        # range-checked here, so the kernels never read out of bounds
        check_index(self.springs, "springs", n, shape=("S", 2), dtype=torch.int32, size_name="the number of particles")
        s = self.num_springs
        for name in ("rest", "ke", "kd", "gain"):
            check_float(getattr(self, name), name, shape=(s,))
        for name in ("rest", "ke", "kd"):
            check_positive(getattr(self, name), name, strict=False)
        check_planes(self.planes)
        check_contact(self.contact, "contact")
        check_float(self.gravity, "gravity", shape=(3,))

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
                recompute: bool = False, return_all: bool = False, workspace=None):
        """``n`` steps fused in Warp as one autograd node (the contract's optional capability).

        Returns ``(final_state, states)`` where ``states`` lists the states after each step if
        ``return_all`` (else empty). ``control``: (S,) actuation held over the segment (it
        receives gradients). ``recompute``: keep only the segment's input and re-run its steps in
        backward (checkpointing; a segment of more than 128 steps re-runs them in blocks of
        ~sqrt(n) steps, so its backward holds O(sqrt n) states). ``workspace``: scratch buffers
        shared by the segments of one rollout (:meth:`segment_workspace`; :func:`rollout` passes
        one). The backward keeps two rolling adjoint rows, not one per step. Gradients equal
        those of ``n`` calls to :meth:`step`.
        """
        dt = check_dt(dt)
        if control is None:
            _check(self, state, None, None)
            act = _indices(self)[2]  # zero actuation, shared by every segment of this model
        else:
            act = _check(self, state, control, None).reshape(1, -1)
        inv_mass, si, sj, planes, _ = _prepare(self)
        plane_contact_stability("SpringModel.segment", dt, state.x, state.v, inv_mass, self.radius, self.planes,
                                self.contact)
        out = spring_segment(n, float(dt), state.x, state.v, inv_mass, self.radius, planes, self.contact,
                             self.gravity, si, sj, self.rest, self.ke, self.kd, self.gain, act, None,
                             recompute=recompute and torch.is_grad_enabled(), return_all=return_all,
                             workspace=workspace)
        final = ParticleState(out[0], out[1])
        if return_all:
            return final, [ParticleState(out[2][k], out[3][k]) for k in range(n)]
        return final, []

    def segment_workspace(self) -> SegmentWorkspace:
        """A fresh scratch workspace for :meth:`segment` (its ``workspace`` argument): the rows
        that the segments of one rollout share instead of allocating them per segment."""
        return SegmentWorkspace()


def mlp_controller_features(state: ParticleState, waves: torch.Tensor, goal: torch.Tensor, dims: int = 3,
                            scale: float = 1.0) -> torch.Tensor:
    """Input of :meth:`SpringModel.controlled_segment`'s controller at one step (torch twin):
    [waves (W,), scale (x_p - c)[:dims] and scale v_p[:dims] for each particle p, (goal - c)[:dims]],
    c the mean particle position."""
    c = state.x.mean(0)
    per = torch.cat([(state.x - c)[:, :dims], state.v[:, :dims]], 1).reshape(-1) * scale
    return torch.cat([waves, per, (goal - c)[:dims]])


def mlp_controller_torch(model: SpringModel, state: ParticleState, dt: float, steps: int, waves, goal, w1, b1, w2,
                         b2, dims: int = 3, scale: float = 1.0):
    """Plain-torch twin of :meth:`SpringModel.controlled_segment` (``steps`` calls of
    :func:`spring_step_torch`); returns (final state, actuations (steps, S))."""
    acts = []
    for k in range(steps):
        feat = mlp_controller_features(state, waves[k], goal, dims, scale)
        act = torch.tanh(w2 @ torch.tanh(w1 @ feat + b1) + b2)
        acts.append(act)
        state = spring_step_torch(model, state, dt, act)
    return state, torch.stack(acts)


def _controlled_segment(self, state: ParticleState, dt: float, n: int, waves: torch.Tensor, goal: torch.Tensor,
                        w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, dims: int = 3,
                        scale: float = 1.0):
    """``n`` steps under a closed-loop controller, fused in Warp as one autograd node.

    At step k the actuation is ``tanh(w2 tanh(w1 feat_k + b1) + b2)`` (S,), with ``feat_k`` =
    :func:`mlp_controller_features` (time features ``waves[k]``, each particle's offset from the
    centre and velocity in the first ``dims`` coordinates times ``scale``, the goal's offset):
    DiffTaichi's mass-spring robot controller. waves: (n, W); goal: (3,); w1: (H, W + 2 dims N +
    dims); b1: (H,); w2: (S, H); b2: (S,). Returns (final state, actuations (n, S)); gradients
    reach the state, the model tensors, goal and the weights, equal to those of
    :func:`mlp_controller_torch`.
    """
    dt = check_dt(dt)
    _check(self, state, None, None)
    n = int(n)
    dims = int(dims)
    if not 1 <= dims <= 3:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    N, S = self.num_particles, self.num_springs
    W = check_float(waves, "waves", shape=(n, "W"), coerce=False).shape[1]
    H = check_float(w1, "w1", shape=("H", W + 2 * dims * N + dims), coerce=False).shape[0]
    check_like(b1, "b1", (H,), self.mass)
    check_like(w2, "w2", (S, H), self.mass)
    check_like(b2, "b2", (S,), self.mass)
    check_like(goal, "goal", (3,), self.mass)
    check_like(waves, "waves", (n, W), self.mass)
    check_like(w1, "w1", (H, W + 2 * dims * N + dims), self.mass)
    inv_mass, si, sj, planes, _ = _prepare(self)
    plane_contact_stability("SpringModel.controlled_segment", dt, state.x, state.v, inv_mass, self.radius,
                            self.planes, self.contact)
    x, v, act = controlled_spring_segment(n, float(dt), dims, float(scale), state.x, state.v, inv_mass, self.radius,
                                          planes, self.contact, self.gravity, si, sj, self.rest, self.ke, self.kd,
                                          self.gain, waves, goal, w1, b1, w2, b2)
    return ParticleState(x, v), act


SpringModel.controlled_segment = _controlled_segment


def _planes(model: SpringModel) -> torch.Tensor:
    # the particle kernel wants at least one plane row; a plane far below never touches
    if model.planes.shape[0]:
        return model.planes
    return torch.tensor([[0.0, 1.0, 0.0, -1e30]], dtype=model.mass.dtype, device=model.mass.device)


def _check(model: SpringModel, state: ParticleState, actuation, external) -> torch.Tensor:
    if not isinstance(model, SpringModel):
        raise TypeError(f"model must be a SpringModel, got {type(model).__name__}")
    n, s = model.num_particles, model.num_springs
    if not isinstance(state, ParticleState):
        raise TypeError(f"state must be a ParticleState, got {type(state).__name__}")
    for name in ("x", "v"):
        check_like(getattr(state, name), f"state.{name}", (n, 3), model.mass)
    if external is not None:
        check_like(external, "external", (n, 3), model.mass)
    if actuation is None:
        return torch.zeros(s, dtype=model.mass.dtype, device=model.mass.device)
    return check_like(actuation, "actuation", (s,), model.mass)


def _indices(model: SpringModel) -> tuple:
    """The springs' end indices as contiguous columns and a zero actuation (no autograd history),
    made once per model: checkpointed segments store their inputs, and per-call copies of these
    were most of what a long rollout kept per segment."""
    cache = model.__dict__.get("_index_cache")
    if cache is None:
        sp = model.springs
        cache = (sp[:, 0].contiguous(), sp[:, 1].contiguous(),
                 torch.zeros(1, sp.shape[0], dtype=model.mass.dtype, device=model.mass.device))
        object.__setattr__(model, "_index_cache", cache)
    return cache


def _prepare(model: SpringModel) -> tuple:
    """Per-model tensors every step needs."""
    si, sj, _ = _indices(model)
    return (model.inv_mass, si, sj, _planes(model), model.gravity.reshape(1, 3))


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
    dt = check_dt(dt)
    prep = _prepare(model)
    plane_contact_stability("spring_step", dt, state.x, state.v, prep[0], model.radius, model.planes, model.contact)
    return _step(model, prep, state, dt, act, external)


def spring_forces_torch(model: SpringModel, state: ParticleState, actuation: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch twin of the spring-force kernel: total spring force on each particle (N, 3)."""
    _check(model, state, actuation, None)
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

    _check(model, state, actuation, external)
    dt = check_dt(dt)
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
    from ..geometry.topology import _interior_edge_corners, edges

    verts = check_float(verts, "verts", shape=("V", 3), coerce=False)
    faces = check_faces(faces, verts.shape[0], device=verts.device)
    out = [edges(faces)]
    if bending:
        # the two faces across each interior edge (the one edge-face adjacency, geometry.topology);
        # slot 3 f + k is edge k of face f (corners k, k+1), its opposite vertex is corner k + 2
        _, i, j = _interior_edge_corners(faces)
        opp = faces.roll(-2, dims=1).reshape(-1)
        pairs = torch.stack([opp[i], opp[j]], dim=1)
        pairs, _ = pairs.sort(dim=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if pairs.numel():
            out.append(torch.unique(pairs, dim=0))
    return torch.cat(out).to(torch.int32)
