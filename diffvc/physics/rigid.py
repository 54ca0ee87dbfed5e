"""Rigid bodies with penalty contact and friction (semi-implicit Euler, Warp kernels).

A body has a mass, an inertia tensor about its centre of mass in its own frame, and collision
points fixed in that frame: mesh vertices (radius 0) or spheres (radius > 0). The state holds
the centre of mass ``x``, the orientation quaternion ``q = (w, x, y, z)`` (body -> world; the
convention of :mod:`diffvc.geometry.transforms`; the kernels' (x, y, z, w) quaternion order is an
internal detail converted at the kernel boundary), the
linear velocity ``v`` and the angular velocity ``w`` (world frame). :func:`rigid_step` is a pure
function ``(model, state, dt) -> new state``; :func:`diffvc.physics.rollout` drives it.

Contact model (the one of :mod:`diffvc.physics.particles`). A collision point of radius r at
signed distance ``c`` (< 0: penetrating) from a plane with normal n, whose contact point
``p - r n`` moves with velocity ``u`` (including ``w x arm``), feels

    f_n = max(0, -ke c - kd min(u.n, 0))                     normal, along n
    f_t = -mu f_n u_t / sqrt(|u_t|^2 + vs^2)                 regularised Coulomb friction

and with ``contact_smoothing`` delta > 0 the onset is smooth: ``c`` becomes
``-delta softplus(-c / delta)`` and the damping is gated by ``sigmoid(-c / delta)``.

Two spheres (points of different bodies with ``r_i + r_j > 0``) use the same law along the line
of centres with ``c = |p_j - p_i| - r_i - r_j`` and the relative velocity of their contact
point; ground/plane contact uses ``model.contact`` and body-body contact ``model.pair_contact``
(each ``(ke N/m, kd N s/m, mu, vs m/s, delta m)``). Forces act at the contact point, so friction makes
balls roll and boxes tip.

Gradient contract. With ``delta = 0`` the force is continuous in the state (zero at ``c = 0``)
and piecewise smooth; at contact onset the gradient is the one-sided derivative of the active
branch. That derivative is exact for the discrete simulation but, because the step in which a
contact starts depends on the initial state, the final state then carries a saw-tooth of period
one time step: e.g. a head-on elastic collision's d(v_out)/d(v_in) came out as -0.6/1.6 instead
of the physical 0/1 exchange. ``delta > 0`` (comparable to the distance moved per step or more) makes the
force field smooth, the saw-tooth vanishes and the same derivative matches the physical one
(tests: 1e-2). The default is therefore ``delta = 2 mm`` (and ``vs = 0.05 m/s``); set
``contact_smoothing=0`` only for a sharp onset whose timing gradients you do not need. Every step
warns once (:mod:`diffvc.physics.stability`) when its explicit contact or friction update is
outside its stability bound, naming the parameter to change.
``vs`` (``friction_smoothing``) turns friction viscous below ``vs``: there is no stick/slip
switch, so a sliding box that comes to rest does so smoothly and its final position is a smooth
function of mass, friction, contact parameters and the initial state. With ``kd > 0`` and time
steps small against ``sqrt(m / ke)`` and ``m vs / (mu f_n)`` the discrete contact dynamics are
dissipative, which is what keeps gradients bounded over thousands of steps (tests: 1,000 steps).

Integration: ``v += dt (F/m + g)``, ``w`` gets the torque and an implicit gyroscopic term (one
Newton step in the body frame, stable for fast spinning asymmetric bodies), linear/angular
damping ``v /= 1 + c dt``; then ``x += dt v``, ``q += dt/2 (w, 0) q``, ``q /= |q|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import Out, kernel_op, mat, vec
from .._kernels.rigid import integrate_bodies, rigid_contact_forces, rigid_segment
from .._validate import (as_tensor, check_dt, check_finite, check_float, check_index, check_like, check_positive,
                         check_same_device, check_same_dtype)
from ..geometry.transforms import quaternion_apply, quaternion_to_matrix
from .particles import check_contact, check_planes, plane_contact_stability, scalar_param, vec3_param

__all__ = ["RigidBodyModel", "RigidBodyState", "rigid_step", "rigid_step_torch", "apply_impulse",
           "quat_rotate", "quat_to_matrix"]


def _t(x, dtype, device, name="value"):
    return as_tensor(x, name, dtype=dtype, device=device)


@dataclass(frozen=True)
class RigidBodyState:
    """x: (B, 3) centres of mass (m); q: (B, 4) unit quaternions (w, x, y, z), body -> world;
    v: (B, 3) linear velocities (m/s); w: (B, 3) angular velocities in the world frame (rad/s)."""

    x: torch.Tensor
    q: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor

    @staticmethod
    def create(x, q=None, v=None, w=None, dtype=torch.float32, device="cpu") -> "RigidBodyState":
        """Build a state; omitted entries are identity orientations and zero velocities."""
        x = _t(x, dtype, device, "x")
        if x.dim() not in (1, 2) or x.shape[-1] != 3:
            raise ValueError(f"x must have shape (B, 3) or (3,) (body positions, m), got {tuple(x.shape)}")
        check_finite(x, "x")
        x = x.reshape(-1, 3)
        b = x.shape[0]

        def rows(a, k, name):
            a = _t(a, dtype, device, name)
            if a.numel() != b * k:
                raise ValueError(f"{name} must have shape ({b}, {k}) (one row per body), got {tuple(a.shape)}")
            return a.reshape(b, k)

        q = _t([1.0, 0.0, 0.0, 0.0], dtype, device).expand(b, 4).clone() if q is None else rows(q, 4, "q")
        v = torch.zeros_like(x) if v is None else rows(v, 3, "v")
        w = torch.zeros_like(x) if w is None else rows(w, 3, "w")
        return RigidBodyState(x, q, v, w)


@dataclass(frozen=True)
class RigidBodyModel:
    """Bodies, their collision geometry and their environment.

    mass: (B,) kg (> 0); inertia: (B, 3, 3) kg m^2 about the centre of mass, body frame (SPD);
    points: (P, 3) collision points in the body frame (m); point_body: (P,) int32 body index;
    point_radius: (P,) m (0: a vertex, > 0: a sphere); pairs: (C, 2) int32 point pairs tested
    for sphere-sphere contact; planes: (K, 4) rows (nx, ny, nz, d), plane n.x = d, free side
    n.x > d; contact, pair_contact: (5,) (ke, kd, mu, friction_smoothing, contact_smoothing) for
    plane and body-body contact; gravity: (3,) m/s^2; damping: (2,) linear and angular damping rates (1/s).
    Every floating tensor may require grad.
    """

    mass: torch.Tensor
    inertia: torch.Tensor
    points: torch.Tensor
    point_body: torch.Tensor
    point_radius: torch.Tensor
    pairs: torch.Tensor
    planes: torch.Tensor
    contact: torch.Tensor
    pair_contact: torch.Tensor
    gravity: torch.Tensor
    damping: torch.Tensor

    # ---------------------------------------------------------------- construction
    @staticmethod
    def create(mass, inertia, points, point_body=None, point_radius=0.0, pairs="auto", planes=None,
               ke=1e4, kd=10.0, mu=0.5, friction_smoothing=0.05, contact_smoothing=2e-3,
               pair_ke=None, pair_kd=None, pair_mu=None, pair_friction_smoothing=None,
               pair_contact_smoothing=None,
               gravity=(0.0, -9.81, 0.0), damping=(0.0, 0.0), dtype=torch.float32, device="cpu"):
        """Build a model from numbers or tensors (tensors keep their autograd history).

        pairs: ``"auto"`` (every pair of points on different bodies with r_i + r_j > 0), ``None``
        (no body-body contact) or a (C, 2) integer tensor. planes: default the ground y = 0.
        pair_*: body-body contact parameters (default: the plane ones).
        """
        mass = _t(mass, dtype, device, "mass").reshape(-1)
        nb = mass.shape[0]
        inertia = _t(inertia, dtype, device, "inertia")
        if inertia.numel() != nb * 9:
            raise ValueError(f"inertia must have shape ({nb}, 3, 3) (one per mass), got {tuple(inertia.shape)}")
        inertia = inertia.reshape(nb, 3, 3)
        points = _t(points, dtype, device, "points")
        if points.numel() % 3:
            raise ValueError(f"points must have shape (P, 3), got {tuple(points.shape)}")
        points = points.reshape(-1, 3)
        npnt = points.shape[0]
        if point_body is None:
            if nb != 1:
                raise ValueError("point_body is required when there is more than one body")
            point_body = torch.zeros(npnt, dtype=torch.int32, device=device)
        point_body = check_index(point_body, "point_body", nb, shape=(npnt,), device=device, dtype=torch.int32,
                                 size_name="the number of bodies")
        point_radius = _t(point_radius, dtype, device, "point_radius")
        point_radius = point_radius.expand(npnt) if point_radius.dim() == 0 else point_radius.reshape(-1)
        check_positive(check_float(point_radius, "point_radius", shape=(npnt,)), "point_radius", strict=False)
        if isinstance(pairs, str):
            if pairs != "auto":
                raise ValueError(f"pairs must be 'auto', None or a (C, 2) tensor, got {pairs!r}")
            i, j = torch.triu_indices(npnt, npnt, 1, device=device)
            keep = (point_body[i] != point_body[j]) & ((point_radius[i] + point_radius[j]).detach() > 0)
            pairs = torch.stack([i[keep], j[keep]], 1)
        elif pairs is None:
            pairs = torch.zeros(0, 2, dtype=torch.int32, device=device)
        pairs = check_index(pairs, "pairs", npnt, shape=("C", 2), device=device, dtype=torch.int32,
                            size_name="the number of points")
        planes = _t([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes, dtype, device, "planes").reshape(-1, 4)

        def c5(*vals):
            return torch.cat([scalar_param(a, k, dtype, device) for a, k in vals])

        def pick(a, k, b, kb):
            return (b, kb) if a is None else (a, k)

        contact = c5((ke, "ke"), (kd, "kd"), (mu, "mu"), (friction_smoothing, "friction_smoothing"),
                     (contact_smoothing, "contact_smoothing"))
        pair_contact = c5(pick(pair_ke, "pair_ke", ke, "ke"), pick(pair_kd, "pair_kd", kd, "kd"),
                          pick(pair_mu, "pair_mu", mu, "mu"),
                          pick(pair_friction_smoothing, "pair_friction_smoothing", friction_smoothing,
                               "friction_smoothing"),
                          pick(pair_contact_smoothing, "pair_contact_smoothing", contact_smoothing,
                               "contact_smoothing"))
        damping = _t(damping, dtype, device, "damping")
        if damping.numel() != 2:
            raise ValueError(f"damping must be (linear, angular), got shape {tuple(damping.shape)}")
        return RigidBodyModel(mass, inertia, points, point_body, point_radius, pairs, planes, contact,
                              pair_contact, vec3_param(gravity, "gravity", dtype, device), damping.reshape(2))

    def __post_init__(self):
        self.validate()  # every way of building the model (constructor, create, dataclasses.replace)

    @staticmethod
    def from_mesh(verts: torch.Tensor, faces: torch.Tensor, density=1000.0, **kw):
        """One body from a closed triangle mesh: mass and inertia from
        :func:`diffvc.geometry.mass_properties` (differentiable in ``verts`` and ``density``), the
        vertices (relative to the centre of mass) as collision points.

        Returns ``(model, com)``: put the body's state ``x`` at ``com`` to reproduce the mesh pose.
        ``kw`` go to :meth:`create` (contact parameters, planes, gravity, dtype, device).
        """
        from ..geometry import mass_properties

        if not isinstance(verts, torch.Tensor) or verts.dim() != 2 or verts.shape[1] != 3:
            raise ValueError(f"verts must be a (V, 3) tensor, got {getattr(verts, 'shape', type(verts))}")
        kw.setdefault("dtype", verts.dtype)
        kw.setdefault("device", verts.device)
        mass, com, inertia = mass_properties(verts, faces, density)
        if not (mass.detach() > 0):
            raise ValueError("verts/faces: the mesh encloses no positive volume (check orientation)")
        model = RigidBodyModel.create(mass.reshape(1), inertia.reshape(1, 3, 3), verts - com, pairs=None, **kw)
        return model, com

    @staticmethod
    def spheres(radius, mass, **kw) -> "RigidBodyModel":
        """B solid spheres (one collision sphere each, inertia 2/5 m r^2), all pairs in contact."""
        dtype, device = kw.get("dtype", torch.float32), kw.get("device", "cpu")
        mass = check_positive(_t(mass, dtype, device, "mass").reshape(-1), "mass")
        radius = _t(radius, dtype, device, "radius")
        radius = radius.expand(mass.shape[0]) if radius.dim() == 0 else radius.reshape(-1)
        check_positive(check_float(radius, "radius", shape=(mass.shape[0],)), "radius")
        eye = torch.eye(3, dtype=dtype, device=device)
        inertia = (0.4 * mass * radius ** 2)[:, None, None] * eye
        nb = mass.shape[0]
        return RigidBodyModel.create(mass, inertia, torch.zeros(nb, 3, dtype=dtype, device=device),
                                     point_body=torch.arange(nb, device=device), point_radius=radius, **kw)

    @staticmethod
    def combine(models: "list[RigidBodyModel]", pairs="auto") -> "RigidBodyModel":
        """One model holding the bodies of several (e.g. a mesh box from :meth:`from_mesh` and
        balls from :meth:`spheres`). Planes, contact parameters, gravity and damping come from
        the first model; ``pairs`` as in :meth:`create` ("auto": every vertex/sphere of one body
        against every sphere of another)."""
        if not models:
            raise ValueError("models: need at least one model")
        first = models[0]
        offsets, n = [], 0
        for m in models:
            offsets.append(n)
            n += m.mass.shape[0]
        point_body = torch.cat([m.point_body.long() + o for m, o in zip(models, offsets)])
        return RigidBodyModel.create(
            torch.cat([m.mass for m in models]), torch.cat([m.inertia for m in models]),
            torch.cat([m.points for m in models]), point_body=point_body,
            point_radius=torch.cat([m.point_radius for m in models]), pairs=pairs, planes=first.planes,
            ke=first.contact[0], kd=first.contact[1], mu=first.contact[2], friction_smoothing=first.contact[3],
            contact_smoothing=first.contact[4], pair_ke=first.pair_contact[0], pair_kd=first.pair_contact[1],
            pair_mu=first.pair_contact[2], pair_friction_smoothing=first.pair_contact[3],
            pair_contact_smoothing=first.pair_contact[4], gravity=first.gravity, damping=first.damping,
            dtype=first.mass.dtype, device=first.mass.device)

    # ---------------------------------------------------------------- checks and helpers
    @property
    def num_bodies(self) -> int:
        return self.mass.shape[0]

    def validate(self) -> None:
        floats = [(k, getattr(self, k)) for k in ("mass", "inertia", "points", "point_radius", "planes", "contact",
                                                   "pair_contact", "gravity", "damping")]
        for k, v in floats:
            check_float(v, k, coerce=False)
        check_same_dtype(*floats)
        check_same_device(*floats, ("point_body", self.point_body), ("pairs", self.pairs))
        check_float(self.mass, "mass", shape=("B",))
        check_float(self.points, "points", shape=("P", 3))
        check_float(self.gravity, "gravity", shape=(3,))
        check_float(self.damping, "damping", shape=(2,))
        nb, npnt = self.mass.shape[0], self.points.shape[0]
        if self.mass.dim() != 1 or nb == 0:
            raise ValueError(f"mass must have shape (B,) with B >= 1, got {tuple(self.mass.shape)}")
        if not torch.isfinite(self.mass).all() or (self.mass <= 0).any():
            raise ValueError("mass must be finite and > 0")
        if self.inertia.shape != (nb, 3, 3):
            raise ValueError(f"inertia must have shape ({nb}, 3, 3), got {tuple(self.inertia.shape)}")
        I = self.inertia.detach()
        if not torch.isfinite(I).all() or not torch.allclose(I, I.transpose(1, 2), atol=1e-4 * float(I.abs().max())):
            raise ValueError("inertia must be finite and symmetric")
        if (torch.linalg.eigvalsh(I.double()) <= 0).any():
            raise ValueError("inertia must be positive definite")
        if npnt == 0:
            raise ValueError("points: need at least one collision point")
        for name in ("point_body", "pairs"):
            if not isinstance(getattr(self, name), torch.Tensor) or getattr(self, name).dtype != torch.int32:
                raise TypeError(f"{name} must be an int32 tensor")
        check_index(self.point_body, "point_body", nb, shape=(npnt,), dtype=torch.int32, size_name="the number of bodies")
        check_float(self.point_radius, "point_radius", shape=(npnt,))
        check_positive(self.point_radius, "point_radius", strict=False)
        check_index(self.pairs, "pairs", npnt, shape=("C", 2), dtype=torch.int32, size_name="the number of points")
        check_planes(self.planes)
        for name in ("contact", "pair_contact"):
            check_contact(getattr(self, name), name, n=5)
        check_positive(self.damping, "damping", strict=False)

    def inv_inertia(self) -> torch.Tensor:
        """(B, 3, 3) inverse inertia in the body frame (differentiable)."""
        return inv3(self.inertia)

    def step(self, state: "RigidBodyState", dt: float, control: torch.Tensor | None = None) -> "RigidBodyState":
        """Simulator contract: :func:`rigid_step`; ``control``: external wrench ``(B, 6)`` per body,
        force (N, at the centre of mass) then torque (N m, world frame), held over the step."""
        f, t = _split_wrench(self, control)
        return rigid_step(self, state, dt, f, t)

    def step_torch(self, state: "RigidBodyState", dt: float, control: torch.Tensor | None = None) -> "RigidBodyState":
        """Plain-torch twin of :meth:`step` (:func:`rigid_step_torch`)."""
        f, t = _split_wrench(self, control)
        return rigid_step_torch(self, state, dt, f, t)

    def segment(self, state: "RigidBodyState", dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False):
        """``n`` steps fused in Warp as one autograd node (the contract's optional capability;
        :func:`~diffvc.physics.rollout` uses it by itself).

        Returns ``(final_state, states)``, ``states`` the states after each step if
        ``return_all`` (else empty). ``control``: external wrench ``(B, 6)`` (force N, torque
        N m, world frame) held over the segment; it receives gradients. ``recompute``: keep only
        the segment's input and re-run its steps in backward (checkpointing). Values and
        gradients equal those of ``n`` calls to :meth:`step` (the same two kernels, replayed as
        recorded launches; no autograd node per step); the stability warning checks the
        segment's first state.
        """
        _check_state(state, self)
        dt = check_dt(dt)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1 (steps), got {n!r}")
        nb = self.mass.shape[0]
        wrench = None
        if control is not None:
            wrench = check_like(control, "control", (nb, 6), self.mass).reshape(1, nb, 6)
        _stability(self, state, dt, "RigidBodyModel.segment")
        npnt, npair = self.points.shape[0], self.pairs.shape[0]
        geo = torch.cat([self.points, self.point_radius[:, None]], 1)
        params = torch.cat([self.contact, self.pair_contact])
        env = torch.cat([self.gravity, self.damping])
        out = rigid_segment(n, dt, _packed_body(state), geo, self.point_body, _dummy_pairs(self),
                            _dummy_planes(self), params, npnt, npair, self.planes.shape[0], self.mass, self.inertia,
                            env, wrench, recompute=recompute and torch.is_grad_enabled(), return_all=return_all)
        final = _unpack_body(out[0])
        if not return_all:
            return final, []
        allb = out[1]
        xs, vs, ws = allb[..., 0:3], allb[..., 7:10], allb[..., 10:13]
        qs = torch.cat([allb[..., 6:7], allb[..., 3:6]], -1)
        return final, [RigidBodyState(xs[k], qs[k], vs[k], ws[k]) for k in range(n)]


def _split_wrench(model: RigidBodyModel, control):
    if control is None:
        return None, None
    nb = model.mass.shape[0]
    check_like(control, "control", (nb, 6), model.mass)
    return control[:, :3], control[:, 3:]


def inv3(A: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 3, 3) matrices by cofactors (elementwise torch ops: on this CPU
    ``torch.linalg.inv`` of a small batch cost milliseconds per call under load)."""
    c0 = torch.cross(A[..., 1, :], A[..., 2, :], dim=-1)
    c1 = torch.cross(A[..., 2, :], A[..., 0, :], dim=-1)
    c2 = torch.cross(A[..., 0, :], A[..., 1, :], dim=-1)
    det = (A[..., 0, :] * c0).sum(-1)
    return torch.stack([c0, c1, c2], -1) / det[..., None, None]


def _check_state(state: RigidBodyState, model: RigidBodyModel) -> None:
    if not isinstance(model, RigidBodyModel):
        raise TypeError(f"model must be a RigidBodyModel, got {type(model).__name__}")
    if not isinstance(state, RigidBodyState):
        raise TypeError(f"state must be a RigidBodyState, got {type(state).__name__}")
    nb = model.mass.shape[0]
    for name, k in (("x", 3), ("q", 4), ("v", 3), ("w", 3)):
        check_like(getattr(state, name), f"state.{name}", (nb, k), model.mass)


def _dummy_planes(model):
    if model.planes.shape[0]:
        return model.planes
    return torch.zeros(1, 4, dtype=model.mass.dtype, device=model.mass.device)


def _dummy_pairs(model):
    if model.pairs.shape[0]:
        return model.pairs
    return torch.zeros(1, 2, dtype=torch.int32, device=model.mass.device)


def _c(t: torch.Tensor) -> torch.Tensor:
    # kernel_op's backward writes input gradients into a buffer shaped like the input; give it
    # contiguous inputs so the adjoint lands in that buffer (a non-contiguous input, e.g. the
    # column-major result of torch.linalg.inv, would otherwise receive a zero gradient)
    return t.contiguous()


def _packed_body(state: RigidBodyState) -> torch.Tensor:
    # the kernels read Warp's quaternion order (x, y, z, w); the state is (w, x, y, z)
    return torch.cat([state.x, state.q[:, 1:], state.q[:, :1], state.v, state.w], 1)


def _unpack_body(body: torch.Tensor) -> RigidBodyState:
    """Inverse of :func:`_packed_body`."""
    return RigidBodyState(body[:, 0:3], torch.cat([body[:, 6:7], body[:, 3:6]], 1), body[:, 7:10], body[:, 10:13])


def _stability(model: RigidBodyModel, state: RigidBodyState, dt: float, solver: str) -> None:
    """Warn once when the explicit contact or friction update is unstable at a collision point."""
    if model.planes.shape[0]:
        with torch.no_grad():
            b = model.point_body.long()
            p = state.x.detach()[b] + quaternion_apply(state.q.detach()[b], model.points.detach())
            u = state.v.detach()[b] + torch.linalg.cross(state.w.detach()[b], p - state.x.detach()[b], dim=-1)
            plane_contact_stability(solver, dt, p, u, 1.0 / model.mass.detach()[b], model.point_radius,
                                    model.planes, model.contact)


def _contact_ft(model: RigidBodyModel, body: torch.Tensor) -> torch.Tensor:
    npnt, npair = model.points.shape[0], model.pairs.shape[0]
    geo = torch.cat([model.points, model.point_radius[:, None]], 1)
    params = torch.cat([model.contact, model.pair_contact])
    return kernel_op(
        rigid_contact_forces, npnt + npair,
        [body, geo, model.point_body, _dummy_pairs(model), vec(_c(_dummy_planes(model))), params,
         npnt, npair, model.planes.shape[0]],
        [Out((model.mass.shape[0], 6))],
    )


def contact_forces(model: RigidBodyModel, state: RigidBodyState) -> tuple[torch.Tensor, torch.Tensor]:
    """Total contact force (B, 3) N and torque about each centre of mass (B, 3) N m (Warp)."""
    _check_state(state, model)
    ft = _contact_ft(model, _packed_body(state))
    return ft[:, :3], ft[:, 3:]


def rigid_step(model: RigidBodyModel, state: RigidBodyState, dt: float,
               force: torch.Tensor | None = None, torque: torch.Tensor | None = None) -> RigidBodyState:
    """Advance the bodies by ``dt`` seconds (semi-implicit Euler, two Warp kernels).

    force, torque: optional external (B, 3) force (N, at the centre of mass) and torque (N m,
    world frame) held over this step. Returns a new :class:`RigidBodyState`; gradients reach the
    state, every floating model tensor and the external loads (contact contract: module doc).
    """
    _check_state(state, model)
    dt = check_dt(dt)
    nb = model.mass.shape[0]
    for name, load in (("force", force), ("torque", torque)):
        if load is not None:
            check_like(load, name, (nb, 3), model.mass)
    _stability(model, state, dt, "rigid_step")  # explicit contact stability (warned once)
    body = _packed_body(state)
    ft = _contact_ft(model, body)
    if force is not None or torque is not None:
        zero = torch.zeros_like(state.x)
        ft = ft + torch.cat([zero if force is None else force, zero if torque is None else torque], 1)
    env = torch.cat([model.gravity, model.damping])
    x, q, v, w = kernel_op(
        integrate_bodies, nb,
        [body, _c(model.mass), mat(_c(model.inertia)), _c(ft), env, float(dt)],
        [Out((nb, 3), "vec"), Out((nb, 4), "vec"), Out((nb, 3), "vec"), Out((nb, 3), "vec")],
    )
    return RigidBodyState(x, torch.cat([q[:, 3:], q[:, :3]], 1), v, w)  # back to (w, x, y, z)


# -------------------------------------------------------------------- plain-torch twin

quat_rotate = quaternion_apply  # (w, x, y, z), diffvc.geometry.transforms
quat_to_matrix = quaternion_to_matrix


def _contact_law(n, c, u, params):
    """Torch twin of ``smooth_contact_force`` (rows of n, c, u)."""
    ke, kd, mu, vs, delta = params
    un = (u * n).sum(-1)
    if float(delta.detach()) > 0:
        z = -c / delta
        fn = delta * torch.nn.functional.softplus(z) * ke - kd * torch.sigmoid(z) * torch.clamp(un, max=0.0)
        active = c < delta * 20.0
    else:
        fn = torch.clamp(-(ke * c + kd * torch.clamp(un, max=0.0)), min=0.0)
        active = c < 0
    ut = u - un[:, None] * n
    denom = torch.sqrt((ut * ut).sum(-1) + vs * vs)
    f = n * fn[:, None] - ut * (mu * fn / denom)[:, None]
    return torch.where(active[:, None], f, torch.zeros_like(f))


def contact_forces_torch(model: RigidBodyModel, state: RigidBodyState):
    """Plain-torch twin of :func:`contact_forces`."""
    b = model.point_body.long()
    xb, qb, vb, wb = state.x[b], state.q[b], state.v[b], state.w[b]
    r = model.point_radius
    p = xb + quat_rotate(qb, model.points)
    force = torch.zeros_like(state.x)
    torque = torch.zeros_like(state.x)
    for k in range(model.planes.shape[0]):
        n = model.planes[k, :3].expand_as(p)
        c = (p * n).sum(-1) - model.planes[k, 3] - r
        arm = p - n * r[:, None] - xb
        f = _contact_law(n, c, vb + torch.cross(wb, arm, dim=-1), model.contact)
        force = force.index_add(0, b, f)
        torque = torque.index_add(0, b, torch.cross(arm, f, dim=-1))
    if model.pairs.shape[0]:
        i, j = model.pairs[:, 0].long(), model.pairs[:, 1].long()
        bi, bj = b[i], b[j]
        pi, pj = p[i], p[j]
        d = pj - pi
        dist = torch.sqrt((d * d).sum(-1) + 1e-24)
        n = d / dist[:, None]
        c = dist - r[i] - r[j]
        cp = pi + n * (r[i] + 0.5 * c)[:, None]
        ui = state.v[bi] + torch.cross(state.w[bi], cp - state.x[bi], dim=-1)
        uj = state.v[bj] + torch.cross(state.w[bj], cp - state.x[bj], dim=-1)
        f = _contact_law(n, c, uj - ui, model.pair_contact)
        force = force.index_add(0, bj, f).index_add(0, bi, -f)
        torque = (torque.index_add(0, bj, torch.cross(cp - state.x[bj], f, dim=-1))
                  .index_add(0, bi, -torch.cross(cp - state.x[bi], f, dim=-1)))
    return force, torque


def _skew(a):
    z = torch.zeros_like(a[..., 0])
    return torch.stack([torch.stack([z, -a[..., 2], a[..., 1]], -1),
                        torch.stack([a[..., 2], z, -a[..., 0]], -1),
                        torch.stack([-a[..., 1], a[..., 0], z], -1)], -2)


def rigid_step_torch(model: RigidBodyModel, state: RigidBodyState, dt: float,
                     force: torch.Tensor | None = None, torque: torch.Tensor | None = None) -> RigidBodyState:
    """Plain-torch twin of :func:`rigid_step` (same math; reference for tests, forward mode)."""
    _check_state(state, model)
    dt = check_dt(dt)
    f, t = contact_forces_torch(model, state)
    if force is not None:
        f = f + force
    if torque is not None:
        t = t + torque
    q = state.q
    v1 = (state.v + (f / model.mass[:, None] + model.gravity) * dt) / (1.0 + model.damping[0] * dt)
    wl = quat_rotate(q, state.w, inverse=True)
    tl = quat_rotate(q, t, inverse=True)
    I = model.inertia
    wa = wl + (model.inv_inertia() @ tl[..., None])[..., 0] * dt
    Iw = (I @ wa[..., None])[..., 0]
    J = I + (_skew(wa) @ I - _skew(Iw)) * dt
    wb = wa - (inv3(J) @ (torch.cross(wa, Iw, dim=-1) * dt)[..., None])[..., 0]
    wb = wb / (1.0 + model.damping[1] * dt)
    w1 = quat_rotate(q, wb)
    qs, qv = q[:, :1], q[:, 1:]
    dqv = 0.5 * (w1 * qs + torch.cross(w1, qv, dim=-1))
    dqs = -0.5 * (w1 * qv).sum(-1, keepdim=True)
    qn = q + torch.cat([dqs, dqv], -1) * dt
    qn = qn / qn.norm(dim=-1, keepdim=True)
    return RigidBodyState(state.x + v1 * dt, qn, v1, w1)


def apply_impulse(model: RigidBodyModel, state: RigidBodyState, impulse: torch.Tensor,
                  point: torch.Tensor | None = None) -> RigidBodyState:
    """Apply instantaneous impulses ``impulse (B, 3)`` (N s) at world points ``point (B, 3)``
    (default: the centres of mass). Returns a new state: ``v += J/m``, ``w += I_w^-1 (r x J)``.
    Differentiable in everything."""
    _check_state(state, model)
    nb = model.mass.shape[0]
    check_like(impulse, "impulse", (nb, 3), model.mass, finite=True)
    v = state.v + impulse / model.mass[:, None]
    if point is None:
        return RigidBodyState(state.x, state.q, v, state.w)
    check_like(point, "point", (nb, 3), model.mass, finite=True)
    dl = torch.cross(point - state.x, impulse, dim=-1)
    dw_body = (model.inv_inertia() @ quat_rotate(state.q, dl, inverse=True)[..., None])[..., 0]
    return RigidBodyState(state.x, state.q, v, state.w + quat_rotate(state.q, dw_body))
