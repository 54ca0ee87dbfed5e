"""Articulated rigid bodies in reduced (joint) coordinates.

A kinematic tree of bodies, each attached to its parent (or the world) by zero or more joints
(``revolute``, ``prismatic``, ``ball``, ``free``; no joint = welded). The state is the joint
configuration ``q (B, nq)`` and velocity ``qd (B, nv)`` of ``B`` environments simulated in one
batch; the model holds the tree and every physical parameter as tensors (differentiable).

Coordinates (the conventions of MuJoCo, so that MJCF files mean the same thing here):
  * revolute: angle (rad) about ``axis`` through ``pos`` (both in the body frame); prismatic:
    displacement (m) along ``axis``. The joint value is measured from ``ref``.
  * ball: unit quaternion (w, x, y, z) (diffvc's and MuJoCo's order), 3 velocity dofs =
    angular velocity in the child body frame.
  * free (top-level bodies only): position (3) and quaternion (4) of the body frame in the world;
    velocity = linear velocity of the body origin in the world frame (3) and angular velocity in
    the body frame (3).

Dynamics. Composite-rigid-body algorithm + recursive Newton-Euler in world-frame spatial vectors,
then a dense Cholesky solve, rather than Featherstone's articulated-body algorithm (ABA): both
compute the same accelerations, but here every stage is a batched tensor contraction over the
tree (topology masks replace the per-body recursion except for forward kinematics), which is
what torch runs fast for many small systems on a CPU; joint armature and implicit joint damping
enter as ``M + diag(armature) + dt diag(damping)``, exactly as in MuJoCo's Euler integrator; and
nv is small (tens), so the O(nv^3) factorisation is cheaper than the extra per-body passes of
ABA in this setting.

    M(q) qdd = tau_control + tau_passive + tau_contact - C(q, qd)

Integrators (``integrator``): ``"euler"``, semi-implicit Euler (MuJoCo's ``Euler``):
``(M + dt D) qdd = f``, ``qd' = qd + dt qdd``, ``q' = q (+) dt qd'`` (quaternions by the
exponential map); ``"rk4"``, the classical 4-stage Runge-Kutta on (q, qd) with stage positions
``q (+) dt sum_j a_ij qd_j`` (MuJoCo's ``RK4``; damping explicit).

Passive forces: joint springs ``-stiffness (q - springref)``, damping ``-damping qd``, and joint
limits (revolute/prismatic with ``limited``) through the smoothed contact law of
:mod:`diffvc.physics.rigid` applied to the joint coordinate: with ``c = q - lo`` (and ``hi - q``)
and ``limit = (ke, kd, delta)``, ``tau = ke delta softplus(-c/delta) - kd sigmoid(-c/delta) min(qd, 0)``.

Contact: link geometry is a set of collision points (spheres of radius r >= 0) fixed in the
bodies: a sphere is one point, a capsule its two end spheres (exact against a plane), a box its
eight corners (radius 0), exactly like :class:`~diffvc.physics.RigidBodyModel`'s collision
points. Points touch the contact planes, and spheres on different (non parent/child) bodies
touch each other, through the same smoothed penalty + regularised Coulomb law as the rigid
solver (``contact = (ke, kd, mu, friction_smoothing, contact_smoothing)``); the resulting world
forces act on the tree through the transposed contact Jacobian.

Gradient contract. Everything is plain torch, so gradients reach the initial state, every
floating model tensor (masses, inertias, centres of mass, body offsets = link lengths, joint
axes, anchors, damping, armature, stiffness, limits, contact parameters, gravity) and the
controls. At contact onset and at a joint limit with ``delta = 0`` the gradient is the one-sided
derivative of the active branch; ``delta > 0`` makes the force field smooth (see the rigid
solver's module doc for why that matters when the timing of impacts depends on the parameters).
Controls clamped to ``ctrl_range`` have zero gradient outside the range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .particles import check_planes
from .._validate import as_int, check_dt, check_float, check_same_dtype
from ..geometry.transforms import quaternion_to_matrix as quat_to_matrix
from .rigid import _contact_law

__all__ = ["ArticulatedModel", "ArticulatedState", "ArticulationBuilder", "JOINT_TYPES"]

JOINT_TYPES = ("free", "ball", "prismatic", "revolute")
_NQ = {"free": 7, "ball": 4, "prismatic": 1, "revolute": 1}
_NV = {"free": 6, "ball": 3, "prismatic": 1, "revolute": 1}


# --------------------------------------------------------------------------------------------
# small batched math
# --------------------------------------------------------------------------------------------

def _skew(a: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(a[..., 0])
    return torch.stack([torch.stack([z, -a[..., 2], a[..., 1]], -1),
                        torch.stack([a[..., 2], z, -a[..., 0]], -1),
                        torch.stack([-a[..., 1], a[..., 0], z], -1)], -2)


# Small products stay batched matmuls: written elementwise (broadcast multiply + sum) they ran
# 3-5x slower on this CPU for 1,024 3x3 matrices (torch's small reductions are the bottleneck).

def _mv(R: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """R (..., 3, 3) @ v (..., 3)."""
    return (R @ v[..., None])[..., 0]


def _mm3(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A (..., 3, 3) @ B (..., 3, 3)."""
    return A @ B


def _axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) for unit axes (..., 3) and angles (...) (Rodrigues:
    c I + s [a]x + (1 - c) a a^T)."""
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return c * eye + s * _skew(axis) + (1.0 - c) * (axis[..., :, None] * axis[..., None, :])


def _mix(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out[b, n] = sum_k mask[n, k] x[b, k]`` for a topology matrix mask (N, K) and x (B, K, ...).

    Broadcast multiply + sum. Measured on this 2-core machine (B = 1,024): a matrix product over
    the folded trailing dimensions took 32 ms with torch's 2 threads under load (0.3 ms this way),
    a three-operand einsum was as slow, and a padded gather's backward took 20 ms."""
    m = mask.reshape(1, *mask.shape, *([1] * (x.dim() - 2)))
    return (m * x[:, None]).sum(2)


def _imul(m: torch.Tensor, h: torch.Tensor, J: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Spatial inertia (mass m (..., 1), first moment h = m c (..., 3), rotational inertia about the
    origin J (..., 3, 3)) times a spatial motion s = (w, v) (..., 6): (J w + h x v, m v - h x w)."""
    w, v = s[..., :3], s[..., 3:]
    return torch.cat([_mv(J, w) + torch.cross(h, v, dim=-1), m * v - torch.cross(h, w, dim=-1)], -1)


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, av = a[..., :1], a[..., 1:]
    bw, bv = b[..., :1], b[..., 1:]
    return torch.cat([aw * bw - (av * bv).sum(-1, keepdim=True),
                      aw * bv + bw * av + torch.cross(av, bv, dim=-1)], -1)


def quat_exp(w: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (w, x, y, z) of the rotation vector ``w (..., 3)`` (angle |w|); smooth at 0."""
    th2 = (w * w).sum(-1, keepdim=True)
    th = torch.sqrt(th2 + 1e-30)
    small = th2 < 1e-12
    h = 0.5 * th
    sinc = torch.where(small, 0.5 - th2 / 48.0, torch.sin(h) / torch.where(small, torch.ones_like(th), th))
    return torch.cat([torch.cos(h), w * sinc], -1)


def _cross_motion(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Spatial motion cross product m x s, (..., 6) = (angular, linear)."""
    w, v = m[..., :3], m[..., 3:]
    sw, sv = s[..., :3], s[..., 3:]
    return torch.cat([torch.cross(w, sw, dim=-1), torch.cross(w, sv, dim=-1) + torch.cross(v, sw, dim=-1)], -1)


def _cross_force(m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Spatial force cross product m x* f."""
    w, v = m[..., :3], m[..., 3:]
    n, fl = f[..., :3], f[..., 3:]
    return torch.cat([torch.cross(w, n, dim=-1) + torch.cross(v, fl, dim=-1), torch.cross(w, fl, dim=-1)], -1)


def _t(x, dtype, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# state and model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArticulatedState:
    """q: (B, nq) joint positions (rad, m, unit quaternions w,x,y,z); qd: (B, nv) joint
    velocities (rad/s, m/s; ball/free angular velocities in the body frame)."""

    q: torch.Tensor
    qd: torch.Tensor

    def __post_init__(self):
        # checked on construction: floating, finite, one batch and dtype (sizes against the
        # model are checked by the step)
        check_float(self.q, "q", shape=(..., "nq"), coerce=False)
        check_float(self.qd, "qd", shape=tuple(self.q.shape[:-1]) + ("nv",), coerce=False)
        check_same_dtype(("q", self.q), ("qd", self.qd))


@dataclass(frozen=True)
class ArticulatedModel:
    """A kinematic tree of rigid bodies (see the module doc for conventions).

    Bodies (N): ``parent`` (N,) ints (-1 = world, parents listed before children); ``body_pos``
    (N, 3) m and ``body_quat`` (N, 4) (w, x, y, z): body frame in the parent frame at q = ref;
    ``body_mass`` (N,) kg; ``body_com`` (N, 3) m centre of mass in the body frame;
    ``body_inertia`` (N, 3, 3) kg m^2 about the centre of mass, body frame.
    Joints (J): ``joint_type`` (J,) names from :data:`JOINT_TYPES`; ``joint_body`` (J,) ints
    (a body's joints apply in order); ``joint_axis`` (J, 3) unit, ``joint_pos`` (J, 3) m anchor,
    both in the body frame; ``joint_ref`` (J,) value at which the body sits at
    ``body_pos/quat`` (revolute/prismatic); ``joint_springref`` (J,) rest value of the joint
    spring; ``joint_limited`` (J,) bools, ``joint_range`` (J, 2).
    Dofs (nv): ``dof_damping`` (N m s/rad or N s/m), ``dof_armature`` (kg m^2 or kg),
    ``dof_stiffness`` (N m/rad or N/m), each (nv,).
    Actuators (nu): ``gear`` (nu, nv) maps controls to joint forces ``tau = u @ gear``;
    ``ctrl_limited`` (nu,) bools, ``ctrl_range`` (nu, 2).
    Collision points (P): ``point`` (P, 3) m in the body frame, ``point_body`` (P,) ints,
    ``point_radius`` (P,) m; ``pairs`` (C, 2) long point pairs for sphere-sphere contact;
    ``planes`` (K, 4) rows (nx, ny, nz, d) with free side n.x > d; ``contact`` (5,) =
    (ke N/m, kd N s/m, mu, friction_smoothing m/s, contact_smoothing m); ``limit`` (3,) =
    (ke, kd, delta) of the joint-limit penalty; ``gravity`` (3,) m/s^2.
    ``names``: optional dict of name tuples (bodies, joints, actuators); ``geoms``: optional
    tuple of geometry descriptions for drawing (each ``(body, kind, size, pos, quat)``);
    ``integrator``: ``"euler"`` (semi-implicit, implicit damping) or ``"rk4"`` (module doc).
    """

    parent: tuple
    body_pos: torch.Tensor
    body_quat: torch.Tensor
    body_mass: torch.Tensor
    body_com: torch.Tensor
    body_inertia: torch.Tensor
    joint_type: tuple
    joint_body: tuple
    joint_axis: torch.Tensor
    joint_pos: torch.Tensor
    joint_ref: torch.Tensor
    joint_springref: torch.Tensor
    joint_limited: tuple
    joint_range: torch.Tensor
    dof_damping: torch.Tensor
    dof_armature: torch.Tensor
    dof_stiffness: torch.Tensor
    gear: torch.Tensor
    ctrl_limited: tuple
    ctrl_range: torch.Tensor
    point: torch.Tensor
    point_body: tuple
    point_radius: torch.Tensor
    pairs: torch.Tensor
    planes: torch.Tensor
    contact: torch.Tensor
    limit: torch.Tensor
    gravity: torch.Tensor
    names: dict = field(default_factory=dict, compare=False, hash=False)
    geoms: tuple = ()
    integrator: str = "euler"
    # derived topology (filled in __post_init__)
    nq: int = field(init=False)
    nv: int = field(init=False)
    nu: int = field(init=False)
    qpos_adr: tuple = field(init=False, repr=False)
    dof_adr: tuple = field(init=False, repr=False)
    _topo: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        nb = len(self.parent)
        if nb == 0:
            raise ValueError("parent: need at least one body")
        for i, p in enumerate(self.parent):
            if not isinstance(p, int) or not (-1 <= p < i):
                raise ValueError(f"parent[{i}] must be an int in [-1, {i - 1}] (parents before children), got {p!r}")
        ref = self.body_mass
        if not isinstance(ref, torch.Tensor) or not ref.is_floating_point():
            raise TypeError("body_mass must be a floating tensor")
        dtype, device = ref.dtype, ref.device
        shapes = {"body_pos": (nb, 3), "body_quat": (nb, 4), "body_mass": (nb,), "body_com": (nb, 3),
                  "body_inertia": (nb, 3, 3)}
        nj = len(self.joint_type)
        if len(self.joint_body) != nj or len(self.joint_limited) != nj:
            raise ValueError("joint_body and joint_limited must have one entry per joint_type")
        for j, (t, b) in enumerate(zip(self.joint_type, self.joint_body)):
            if t not in JOINT_TYPES:
                raise ValueError(f"joint_type[{j}] must be one of {JOINT_TYPES}, got {t!r}")
            if not isinstance(b, int) or not 0 <= b < nb:
                raise ValueError(f"joint_body[{j}] must be a body index in [0, {nb - 1}], got {b!r}")
            if t == "free" and (self.parent[b] != -1 or sum(1 for bb in self.joint_body if bb == b) != 1):
                raise ValueError(f"joint_type[{j}]: a free joint must be the only joint of a top-level body")
            if j and b < self.joint_body[j - 1]:
                raise ValueError("joint_body must be non-decreasing (joints listed body by body)")
        nq = sum(_NQ[t] for t in self.joint_type)
        nv = sum(_NV[t] for t in self.joint_type)
        nu = self.gear.shape[0] if self.gear.dim() == 2 else -1
        npnt = len(self.point_body)
        shapes.update({"joint_axis": (nj, 3), "joint_pos": (nj, 3), "joint_ref": (nj,), "joint_springref": (nj,), "joint_range": (nj, 2),
                       "dof_damping": (nv,), "dof_armature": (nv,), "dof_stiffness": (nv,), "gear": (nu, nv),
                       "ctrl_range": (nu, 2), "point": (npnt, 3), "point_radius": (npnt,), "contact": (5,),
                       "limit": (3,), "gravity": (3,)})
        for name, shp in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a tensor")
            if tuple(t.shape) != shp:
                raise ValueError(f"{name} must have shape {shp}, got {tuple(t.shape)}")
            if t.dtype != dtype or t.device != device:
                raise ValueError(f"{name} must have the dtype/device of body_mass ({dtype}, {device})")
            if not torch.isfinite(t.detach()).all():
                raise ValueError(f"{name} must be finite")
        if len(self.ctrl_limited) != nu:
            raise ValueError(f"ctrl_limited must have {nu} entries")
        if (self.body_mass.detach() < 0).any():
            raise ValueError("body_mass must be >= 0")
        I = self.body_inertia.detach()
        if not torch.allclose(I, I.transpose(1, 2), atol=1e-9 + 1e-6 * float(I.abs().max())):
            raise ValueError("body_inertia must be symmetric")
        if (torch.linalg.eigvalsh(I.double()) < -1e-12).any():
            raise ValueError("body_inertia must be positive semi-definite")
        for name in ("dof_damping", "dof_armature", "dof_stiffness"):
            if (getattr(self, name).detach() < 0).any():
                raise ValueError(f"{name} must be >= 0")
        if npnt and (any(not (isinstance(b, int) and 0 <= b < nb) for b in self.point_body)):
            raise ValueError(f"point_body must index bodies 0..{nb - 1}")
        if (self.point_radius.detach() < 0).any():
            raise ValueError("point_radius must be >= 0")
        if self.pairs.dim() != 2 or self.pairs.shape[1] != 2 or self.pairs.dtype != torch.long:
            raise ValueError(f"pairs must be a (C, 2) long tensor, got {tuple(self.pairs.shape)} {self.pairs.dtype}")
        if self.pairs.numel() and (self.pairs.min() < 0 or self.pairs.max() >= npnt):
            raise ValueError(f"pairs must index points 0..{npnt - 1}")
        check_planes(self.planes)
        if self.integrator not in ("euler", "rk4"):
            raise ValueError(f"integrator must be 'euler' or 'rk4', got {self.integrator!r}")
        c = self.contact.detach()
        if (c[:3] < 0).any() or c[3] <= 0 or c[4] < 0:
            raise ValueError("contact must be (ke >= 0, kd >= 0, mu >= 0, friction_smoothing > 0, contact_smoothing >= 0)")
        if (self.limit.detach() < 0).any():
            raise ValueError("limit must be (ke >= 0, kd >= 0, delta >= 0)")
        for j, (t, lim) in enumerate(zip(self.joint_type, self.joint_limited)):
            if lim and t not in ("revolute", "prismatic"):
                raise ValueError(f"joint_limited[{j}]: limits are supported on revolute/prismatic joints, not {t}")
            if lim and not (self.joint_range[j, 0] < self.joint_range[j, 1]):
                raise ValueError(f"joint_range[{j}] must have lower < upper")

        # ---- derived topology
        qpos_adr, dof_adr, qa, da = [], [], 0, 0
        for t in self.joint_type:
            qpos_adr.append(qa)
            dof_adr.append(da)
            qa += _NQ[t]
            da += _NV[t]
        object.__setattr__(self, "nq", nq)
        object.__setattr__(self, "nv", nv)
        object.__setattr__(self, "nu", nu)
        object.__setattr__(self, "qpos_adr", tuple(qpos_adr))
        object.__setattr__(self, "dof_adr", tuple(dof_adr))
        anc = torch.zeros(nb, nb, dtype=torch.bool)  # anc[a, b]: a is an ancestor-or-self of b
        for b in range(nb):
            a = b
            while a >= 0:
                anc[a, b] = True
                a = self.parent[a]
        dof_body, dof_joint = [], []
        for j, t in enumerate(self.joint_type):
            dof_body += [self.joint_body[j]] * _NV[t]
            dof_joint += [j] * _NV[t]
        db = torch.tensor(dof_body, dtype=torch.long)
        support = anc[db].T.clone() if nv else torch.zeros(nb, 0, dtype=torch.bool)  # (N, nv): dof k moves body b
        # carrier[k, j]: dof j contributes to the velocity of the frame in which dof k's axis is fixed
        carrier = torch.zeros(nv, nv, dtype=torch.bool)
        for k in range(nv):
            j, b = dof_joint[k], dof_body[k]
            for i in range(nv):
                if dof_body[i] != b:
                    carrier[k, i] = bool(anc[dof_body[i], b])
                elif dof_joint[i] < j:
                    carrier[k, i] = True
                elif dof_joint[i] == j and self.joint_type[j] in ("ball", "free"):
                    # ball/free rotation axes are fixed in the child frame (after the whole joint);
                    # free translation axes are world axes
                    carrier[k, i] = not (self.joint_type[j] == "free" and k - dof_adr[j] < 3)
        # dof pairs (i, j) where dof i moves the body of dof j (lower triangle source of M)
        amask = support[db].T.clone() if nv else torch.zeros(0, 0, dtype=torch.bool)  # [i, j]
        fdt = dict(dtype=dtype, device=device)
        topo = {
            "desc": anc.to(**fdt),                 # (N, N): desc[b, d] = d in subtree(b)
            "support": support.to(**fdt),          # (N, nv)
            "carrier": carrier.to(**fdt),          # (nv, nv)
            "amask": amask.to(device),             # (nv, nv) bool
            "amask_t": (amask.T & ~amask).to(device),
            "dof_body": db.to(device),
            "desc_dof": anc[db].to(**fdt) if nv else torch.zeros(0, nb, **fdt),  # (nv, N): subtree of dof's body
            "point_body": torch.tensor(self.point_body, dtype=torch.long, device=device),
        }
        object.__setattr__(self, "_topo", topo)

    # ---------------------------------------------------------------- convenience
    @property
    def num_bodies(self) -> int:
        return len(self.parent)

    @property
    def dtype(self) -> torch.dtype:
        return self.body_mass.dtype

    @property
    def device(self) -> torch.device:
        return self.body_mass.device

    def replace(self, **changes) -> "ArticulatedModel":
        """A copy with some fields replaced (e.g. ``body_mass=m`` with ``m.requires_grad``)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        kw.update(changes)
        return ArticulatedModel(**kw)

    def qpos0(self) -> torch.Tensor:
        """(nq,) the reference configuration (every body at its ``body_pos/quat``)."""
        parts = []
        for j, t in enumerate(self.joint_type):
            if t in ("revolute", "prismatic"):
                parts.append(self.joint_ref[j].detach().reshape(1))
            elif t == "ball":
                parts.append(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=self.dtype, device=self.device))
            else:
                b = self.joint_body[j]
                parts.append(torch.cat([self.body_pos[b].detach(), self.body_quat[b].detach()]))
        if not parts:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def initial_state(self, batch: int = 1, q=None, qd=None) -> ArticulatedState:
        """A state of ``batch`` environments at ``q`` (default :meth:`qpos0`) and ``qd`` (default 0);
        ``q``/``qd`` may be (nq,)/(nv,) (broadcast) or (batch, nq)/(batch, nv)."""
        batch = as_int(batch, "batch", minimum=1)
        q = self.qpos0() if q is None else _t(q, self.dtype, self.device)
        qd = torch.zeros(self.nv, dtype=self.dtype, device=self.device) if qd is None else _t(qd, self.dtype, self.device)
        return ArticulatedState(q.expand(batch, self.nq).clone() if q.dim() == 1 else q,
                                qd.expand(batch, self.nv).clone() if qd.dim() == 1 else qd)

    def check_state(self, state: ArticulatedState) -> int:
        if not isinstance(state, ArticulatedState):
            raise TypeError(f"state must be an ArticulatedState, got {type(state).__name__}")
        for name, n in (("q", self.nq), ("qd", self.nv)):
            t = getattr(state, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != n:
                raise ValueError(f"state.{name} must have shape (B, {n}), got {tuple(getattr(t, 'shape', ()))}")
            if t.dtype != self.dtype or t.device != self.device:
                raise ValueError(f"state.{name} must match the model's dtype/device ({self.dtype}, {self.device})")
        if state.q.shape[0] != state.qd.shape[0]:
            raise ValueError(f"state.q and state.qd must have the same batch size, got {state.q.shape[0]} and {state.qd.shape[0]}")
        return state.q.shape[0]

    # ---------------------------------------------------------------- kinematics
    def forward_kinematics(self, q: torch.Tensor):
        """World poses and motion subspaces for configurations ``q (B, nq)``.

        Returns ``(R, p, S)``: body rotations (B, N, 3, 3), body-frame origins (B, N, 3) m, and the
        dofs' world-frame motion subspaces ``S`` (B, nv, 6) = (angular, linear velocity of the
        point at the world origin) per unit joint velocity.
        """
        B = q.shape[0]
        dtype, device = q.dtype, q.device
        eye = torch.eye(3, dtype=dtype, device=device).expand(B, 3, 3)
        zero3 = torch.zeros(B, 3, dtype=dtype, device=device)
        Rl = quat_to_matrix(self.body_quat / self.body_quat.norm(dim=-1, keepdim=True))  # (N, 3, 3)
        Rs, ps, S = [], [], []
        ji = 0
        nj = len(self.joint_type)
        for b, par in enumerate(self.parent):
            Rp, pp = (eye, zero3) if par < 0 else (Rs[par], ps[par])
            R = _mm3(Rp, Rl[b])
            p = pp + Rp @ self.body_pos[b]
            while ji < nj and self.joint_body[ji] == b:
                t, qa = self.joint_type[ji], self.qpos_adr[ji]
                if t == "revolute":
                    axis = R @ self.joint_axis[ji]
                    anchor = p + R @ self.joint_pos[ji]
                    S.append(torch.cat([axis, torch.cross(anchor, axis, dim=-1)], -1)[:, None])
                    R = _mm3(_axis_angle(axis, q[:, qa] - self.joint_ref[ji]), R)
                    p = anchor - R @ self.joint_pos[ji]
                elif t == "prismatic":
                    axis = R @ self.joint_axis[ji]
                    S.append(torch.cat([torch.zeros_like(axis), axis], -1)[:, None])
                    p = p + axis * (q[:, qa] - self.joint_ref[ji])[:, None]
                elif t == "ball":
                    anchor = p + R @ self.joint_pos[ji]
                    qq = q[:, qa:qa + 4]
                    R = _mm3(R, quat_to_matrix(qq / qq.norm(dim=-1, keepdim=True)))
                    p = anchor - R @ self.joint_pos[ji]
                    ax = R.transpose(1, 2)  # rows: world directions of the body axes
                    S.append(torch.cat([ax, torch.cross(anchor[:, None].expand(B, 3, 3), ax, dim=-1)], -1))
                else:  # free
                    qq = q[:, qa + 3:qa + 7]
                    R = quat_to_matrix(qq / qq.norm(dim=-1, keepdim=True))
                    p = q[:, qa:qa + 3]
                    anchor = p + R @ self.joint_pos[ji]
                    e = torch.eye(3, dtype=dtype, device=device).expand(B, 3, 3)
                    ax = R.transpose(1, 2)
                    S.append(torch.cat([torch.cat([torch.zeros_like(e), e], -1),
                                        torch.cat([ax, torch.cross(anchor[:, None].expand(B, 3, 3), ax, dim=-1)], -1)], 1))
                ji += 1
            Rs.append(R)
            ps.append(p)
        S = torch.cat(S, 1) if S else torch.zeros(B, 0, 6, dtype=dtype, device=device)
        return torch.stack(Rs, 1), torch.stack(ps, 1), S

    def body_velocities(self, S: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        """(B, N, 6) world spatial velocities (angular, linear at the origin) of the bodies."""
        return _mix(self._topo["support"], S * qd[..., None])

    def _spatial_inertia(self, R, p):
        """Per-body world spatial inertia at the origin as (mass (N, 1), first moment m c
        (B, N, 3), rotational inertia about the origin (B, N, 3, 3)) and the world centres of mass."""
        nb = self.num_bodies
        # per body: products with the body's constant com/inertia fold into single matmuls
        c = p + torch.stack([R[:, b] @ self.body_com[b] for b in range(nb)], 1)
        Ic = torch.stack([(R[:, b] @ self.body_inertia[b]) @ R[:, b].transpose(-1, -2) for b in range(nb)], 1)
        m = self.body_mass[:, None]
        eye = torch.eye(3, dtype=p.dtype, device=p.device)
        J = Ic + m[..., None] * ((c * c).sum(-1)[..., None, None] * eye - c[..., :, None] * c[..., None, :])
        return (m, m * c, J), c

    def mass_matrix(self, q: torch.Tensor) -> torch.Tensor:
        """Joint-space mass matrix M(q) (B, nv, nv) including armature (composite rigid bodies)."""
        R, p, S = self.forward_kinematics(q)
        inertia, _ = self._spatial_inertia(R, p)
        return self._mass_matrix(S, inertia)

    def _mass_matrix(self, S, inertia):
        topo = self._topo
        m, h, J = inertia
        desc, db = topo["desc"], topo["dof_body"]
        # composite inertia of each dof's subtree (sums over descendants are linear in m, h, J)
        mk = (desc @ m)[db]
        hk = _mix(topo["desc_dof"], h)
        Jk = _mix(topo["desc_dof"], J)
        F = _imul(mk, hk, Jk, S)  # (B, nv, 6)
        Mf = S @ F.transpose(1, 2)  # Mf[i, j] = s_i . Icomp_{body j} s_j
        M = torch.where(topo["amask"], Mf, torch.where(topo["amask_t"], Mf.transpose(1, 2), torch.zeros_like(Mf)))
        return M + torch.diag_embed(self.dof_armature)

    # ---------------------------------------------------------------- forces
    def contact_wrenches(self, R, p, V) -> torch.Tensor:
        """World contact wrenches (B, N, 6) = (torque about the origin, force) on each body."""
        B, nb = p.shape[0], self.num_bodies
        wr = torch.zeros(B, nb, 6, dtype=p.dtype, device=p.device)
        npnt = self.point.shape[0]
        if npnt == 0 or (self.planes.shape[0] == 0 and self.pairs.shape[0] == 0):
            return wr
        pb = self._topo["point_body"]
        x = p[:, pb] + _mv(R[:, pb], self.point)  # (B, P, 3) point centres
        Vp = V[:, pb]  # (B, P, 6)
        r = self.point_radius.expand(B, npnt)
        for k in range(self.planes.shape[0]):
            n = self.planes[k, :3].expand(B, npnt, 3)
            c = (x * n).sum(-1) - self.planes[k, 3] - r
            cp = x - n * r[..., None]
            u = Vp[..., 3:] + torch.cross(Vp[..., :3], cp, dim=-1)
            f = _contact_law(n.reshape(-1, 3), c.reshape(-1), u.reshape(-1, 3), self.contact).reshape(B, npnt, 3)
            wr = wr.index_add(1, pb, torch.cat([torch.cross(cp, f, dim=-1), f], -1))
        if self.pairs.shape[0]:
            i, j = self.pairs[:, 0], self.pairs[:, 1]
            C = i.shape[0]
            d = x[:, j] - x[:, i]
            dist = torch.sqrt((d * d).sum(-1) + 1e-24)
            n = d / dist[..., None]
            ri, rj = self.point_radius[i], self.point_radius[j]
            c = dist - ri - rj
            cp = x[:, i] + n * (ri + 0.5 * c)[..., None]
            Vi, Vj = Vp[:, i], Vp[:, j]
            urel = (Vj[..., 3:] + torch.cross(Vj[..., :3], cp, dim=-1)) - (Vi[..., 3:] + torch.cross(Vi[..., :3], cp, dim=-1))
            f = _contact_law(n.reshape(-1, 3), c.reshape(-1), urel.reshape(-1, 3), self.contact).reshape(B, C, 3)
            w = torch.cat([torch.cross(cp, f, dim=-1), f], -1)
            wr = wr.index_add(1, pb[j], w).index_add(1, pb[i], -w)
        return wr

    def passive_forces(self, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        """Joint springs, damping and limit forces (B, nv) (damping is integrated implicitly by
        :meth:`step`; it is included here)."""
        tau = -qd * self.dof_damping
        if not (any(self.joint_limited) or bool((self.dof_stiffness.detach() > 0).any())):
            return tau
        cols = []
        ke, kd, delta = self.limit
        for j, t in enumerate(self.joint_type):
            da, qa = self.dof_adr[j], self.qpos_adr[j]
            if t not in ("revolute", "prismatic"):
                cols.append(torch.zeros_like(qd[:, da:da + _NV[t]]))
                continue
            x, v = q[:, qa], qd[:, da]
            f = -self.dof_stiffness[da] * (x - self.joint_springref[j])
            if self.joint_limited[j]:
                lo, hi = self.joint_range[j]
                f = f + _limit_force(x - lo, v, ke, kd, delta) - _limit_force(hi - x, -v, ke, kd, delta)
            cols.append(f[:, None])
        return tau + torch.cat(cols, 1)

    def _control_forces(self, control, B):
        if control is None:
            return None
        if not isinstance(control, torch.Tensor):
            raise TypeError(f"control must be a tensor of shape (B, {self.nu}) or ({self.nu},), got {type(control).__name__}")
        if control.shape[-1] != self.nu or control.dim() not in (1, 2) or (control.dim() == 2 and control.shape[0] not in (1, B)):
            raise ValueError(f"control must have shape ({B}, {self.nu}) or ({self.nu},), got {tuple(control.shape)}")
        u = control.to(self.dtype)
        if any(self.ctrl_limited):
            lim = torch.tensor(self.ctrl_limited, device=self.device)
            u = torch.where(lim, torch.minimum(torch.maximum(u, self.ctrl_range[:, 0]), self.ctrl_range[:, 1]), u)
        return u @ self.gear

    def dynamics(self, state: ArticulatedState, control=None, dt: float = 0.0):
        """Joint accelerations qdd (B, nv) solving ``(M + dt diag(damping)) qdd = f`` (dt = 0:
        the plain forward dynamics), plus the mass matrix (B, nv, nv) used."""
        q, qd = state.q, state.qd
        B = q.shape[0]
        R, p, S = self.forward_kinematics(q)
        inertia, _ = self._spatial_inertia(R, p)
        M = self._mass_matrix(S, inertia)
        topo = self._topo
        Sq = S * qd[..., None]
        V = _mix(topo["support"], Sq)  # (B, N, 6) body velocities
        Vc = _mix(topo["carrier"], Sq)
        cdot = _cross_motion(Vc, S)  # (B, nv, 6): d/dt s_k
        g = torch.cat([torch.zeros_like(self.gravity), -self.gravity])
        A = g + _mix(topo["support"], cdot * qd[..., None])  # bias accelerations
        f = _imul(*inertia, A) + _cross_force(V, _imul(*inertia, V)) - self.contact_wrenches(R, p, V)
        fc = _mix(topo["desc_dof"], f)  # subtree sums per dof
        C = (S * fc).sum(-1)  # (B, nv)
        rhs = self.passive_forces(q, qd) - C
        tau = self._control_forces(control, B)
        if tau is not None:
            rhs = rhs + tau
        Meff = M + torch.diag_embed(self.dof_damping * dt) if dt else M
        return _spd_solve(Meff, rhs), M

    # ---------------------------------------------------------------- contract
    def step(self, state: ArticulatedState, dt: float, control: torch.Tensor | None = None) -> ArticulatedState:
        """Advance ``dt`` seconds with the model's ``integrator`` (default semi-implicit Euler with
        implicit joint damping; ``"rk4"``: classical Runge-Kutta, control held over the step).

        control: actuator inputs (B, nu) or (nu,) (None: no actuation); joint forces are
        ``clamp(control, ctrl_range) @ gear`` (for a model built without actuators ``gear`` is
        the identity: control = joint torques/forces, N m or N).
        Returns a new :class:`ArticulatedState`.
        """
        self.check_state(state)
        dt = check_dt(dt)
        if self.integrator == "rk4":
            return self._rk4(state, dt, control)
        qdd, _ = self.dynamics(state, control, dt)
        qd = state.qd + dt * qdd
        return ArticulatedState(self.integrate_q(state.q, qd, dt), qd)

    def _rk4(self, state: ArticulatedState, dt: float, control) -> ArticulatedState:
        q0, v0 = state.q, state.qd
        vs, accs = [v0], [self.dynamics(state, control)[0]]
        for c in (0.5, 0.5, 1.0):  # the classical tableau: each stage uses the previous one only
            q = self.integrate_q(q0, vs[-1], c * dt)
            v = v0 + (c * dt) * accs[-1]
            vs.append(v)
            accs.append(self.dynamics(ArticulatedState(q, v), control)[0])
        w = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
        v_avg = sum(wi * vi for wi, vi in zip(w, vs))
        a_avg = sum(wi * ai for wi, ai in zip(w, accs))
        return ArticulatedState(self.integrate_q(q0, v_avg, dt), v0 + dt * a_avg)

    def step_torch(self, state: ArticulatedState, dt: float, control: torch.Tensor | None = None) -> ArticulatedState:
        """The plain-torch twin of :meth:`step`: the model is plain torch, so this is :meth:`step`
        (``rollout(..., backend="torch")`` and forward mode use it)."""
        return self.step(state, dt, control)

    def integrate_q(self, q: torch.Tensor, qd: torch.Tensor, dt: float) -> torch.Tensor:
        """``q (+) dt qd``: additive for revolute/prismatic/free positions, exponential map on the
        right (body-frame angular velocity) for quaternions."""
        if all(t in ("revolute", "prismatic") for t in self.joint_type):
            return q + dt * qd
        parts = []
        for j, t in enumerate(self.joint_type):
            qa, da = self.qpos_adr[j], self.dof_adr[j]
            if t in ("revolute", "prismatic"):
                parts.append(q[:, qa:qa + 1] + dt * qd[:, da:da + 1])
                continue
            if t == "free":
                parts.append(q[:, qa:qa + 3] + dt * qd[:, da:da + 3])
                qa, da = qa + 3, da + 3
            qq = quat_mul(q[:, qa:qa + 4], quat_exp(dt * qd[:, da:da + 3]))
            parts.append(qq / qq.norm(dim=-1, keepdim=True))
        return torch.cat(parts, 1)

    # ---------------------------------------------------------------- diagnostics
    def energy(self, state: ArticulatedState) -> torch.Tensor:
        """Total mechanical energy (B,) J: kinetic ``qd^T M qd / 2`` (armature included) +
        gravitational + joint-spring energy (contact and limit penalties not included)."""
        R, p, S = self.forward_kinematics(state.q)
        inertia, c = self._spatial_inertia(R, p)
        M = self._mass_matrix(S, inertia)
        ke = 0.5 * (state.qd[:, None, :] @ M @ state.qd[:, :, None])[:, 0, 0]
        pe = -(self.body_mass * (c @ self.gravity)).sum(-1)
        for j, t in enumerate(self.joint_type):
            if t in ("revolute", "prismatic"):
                d = state.q[:, self.qpos_adr[j]] - self.joint_springref[j]
                pe = pe + 0.5 * self.dof_stiffness[self.dof_adr[j]] * d * d
        return ke + pe

    def body_poses(self, state: ArticulatedState):
        """World rotations (B, N, 3, 3) and origins (B, N, 3) of the bodies (for drawing/losses)."""
        R, p, _ = self.forward_kinematics(state.q)
        return R, p

    def point_positions(self, state: ArticulatedState) -> torch.Tensor:
        """World positions (B, P, 3) of the collision points."""
        R, p, _ = self.forward_kinematics(state.q)
        pb = self._topo["point_body"]
        return p[:, pb] + _mv(R[:, pb], self.point)


def _limit_force(c, v, ke, kd, delta):
    """Smoothed one-sided penalty of the contact law, along +1, for gap ``c`` and rate ``v``."""
    if float(delta.detach()) > 0:
        z = -c / delta
        return ke * delta * torch.nn.functional.softplus(z) - kd * torch.sigmoid(z) * torch.clamp(v, max=0.0)
    return torch.clamp(-(ke * c + kd * torch.clamp(v, max=0.0)), min=0.0) * (c < 0)


def _spd_solve(M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve M x = b for a batch of SPD matrices (B, n, n). Small n: an unrolled Cholesky over
    the batch (a handful of elementwise ops; torch.linalg's batched LAPACK calls cost more per
    call than the whole factorisation for n <= 6); larger n: torch.linalg.cholesky."""
    n = M.shape[-1]
    if n == 0:
        return b
    if n > 6:
        L = torch.linalg.cholesky(M)
        return torch.cholesky_solve(b[..., None], L)[..., 0]
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = M[:, j, j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        L[j][j] = torch.sqrt(s)
        for i in range(j + 1, n):
            s = M[:, i, j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s / L[j][j]
    y = []
    for i in range(n):
        s = b[:, i]
        for k in range(i):
            s = s - L[i][k] * y[k]
        y.append(s / L[i][i])
    x = [None] * n
    for i in reversed(range(n)):
        s = y[i]
        for k in range(i + 1, n):
            s = s - L[k][i] * x[k]
        x[i] = s / L[i][i]
    return torch.stack(x, 1)


# --------------------------------------------------------------------------------------------
# building models
# --------------------------------------------------------------------------------------------

def _builder_value(x, name: str, shape, nonneg: bool = False) -> None:
    """A builder argument: a number/sequence or a tensor (kept as given, so it may require grad),
    finite, of ``shape`` (``()`` a scalar, ``(3,)`` ... ; ``None``: ``(3,)`` or ``(3, 3)``), and >= 0
    when ``nonneg``."""
    if isinstance(x, torch.Tensor):
        t = check_float(x, name, coerce=False)
    else:
        if x is None or isinstance(x, (str, bytes)):
            raise TypeError(f"{name} must be a number or a sequence of numbers, got {type(x).__name__} {x!r}")
        try:
            t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a number or a sequence of numbers, got {x!r}") from None
        check_float(t, name)
    ok = (t.shape in ((3,), (3, 3))) if shape is None else (tuple(t.shape) == tuple(shape))
    if not ok:
        want = "(3,) or (3, 3)" if shape is None else str(tuple(shape))
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if nonneg and t.numel() and bool((t.detach() < 0).any()) and (shape is not None or t.dim() == 1):
        raise ValueError(f"{name} must be >= 0, got {t.detach().tolist()}")


class ArticulationBuilder:
    """Collects bodies, joints, collision geometry and actuators, then :meth:`build` s an
    :class:`ArticulatedModel`. Values may be numbers or tensors (tensors keep their autograd
    history, e.g. a differentiable link length). The MJCF and URDF loaders use it.

    Example (a pendulum hanging from the origin, y up)::

        b = ArticulationBuilder(gravity=(0, -9.81, 0))
        link = b.add_body(parent=-1, mass=1.0, com=(0, -0.5, 0), inertia=[1e-3] * 3)
        b.add_joint(link, "revolute", axis=(0, 0, 1))
        model = b.build()
    """

    def __init__(self, gravity=(0.0, -9.81, 0.0), planes=None, ke=1e4, kd=10.0, mu=0.5,
                 friction_smoothing=0.01, contact_smoothing=0.0, limit_ke=1e4, limit_kd=10.0,
                 limit_smoothing=0.0):
        self.gravity = gravity
        self.planes = [] if planes is None else [list(p) for p in planes]
        self.contact = (ke, kd, mu, friction_smoothing, contact_smoothing)
        self.limit = (limit_ke, limit_kd, limit_smoothing)
        self.bodies: list[dict] = []
        self.joints: list[dict] = []
        self.points: list[dict] = []
        self.actuators: list[dict] = []
        self.geoms: list[tuple] = []

    def add_body(self, parent: int = -1, pos=(0.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0), mass=0.0,
                 com=(0.0, 0.0, 0.0), inertia=(0.0, 0.0, 0.0), name: str | None = None) -> int:
        """Add a body (frame ``pos``/``quat`` (w,x,y,z) in the parent frame). ``inertia``: (3,)
        principal moments about the centre of mass in the body axes, or a full (3, 3) matrix.
        Returns its index."""
        if not isinstance(parent, int) or not -1 <= parent < len(self.bodies):
            raise ValueError(f"parent must be -1 or an existing body index, got {parent!r}")
        _builder_value(mass, "mass", (), nonneg=True)
        _builder_value(inertia, "inertia", None, nonneg=True)
        _builder_value(pos, "pos", (3,))
        _builder_value(quat, "quat", (4,))
        _builder_value(com, "com", (3,))
        self.bodies.append(dict(parent=parent, pos=pos, quat=quat, mass=mass, com=com, inertia=inertia,
                                name=name or f"body{len(self.bodies)}"))
        return len(self.bodies) - 1

    def add_joint(self, body: int, type: str = "revolute", axis=(0.0, 0.0, 1.0), pos=(0.0, 0.0, 0.0),
                  ref=0.0, limited: bool = False, range=(0.0, 0.0), damping=0.0, armature=0.0,
                  stiffness=0.0, springref=0.0, name: str | None = None) -> int:
        """Add a joint between ``body`` and its parent (joints of one body apply in the order
        added; they must be added body by body). Returns the joint index."""
        if type not in JOINT_TYPES:
            raise ValueError(f"type must be one of {JOINT_TYPES}, got {type!r}")
        if not isinstance(body, int) or not 0 <= body < len(self.bodies):
            raise ValueError(f"body must be an existing body index, got {body!r}")
        if self.joints and body < self.joints[-1]["body"]:
            raise ValueError("add joints body by body (in body order)")
        _builder_value(axis, "axis", (3,))
        _builder_value(pos, "pos", (3,))
        for arg, value in (("ref", ref), ("springref", springref)):
            _builder_value(value, arg, ())
        for arg, value in (("damping", damping), ("armature", armature), ("stiffness", stiffness)):
            _builder_value(value, arg, (), nonneg=True)
        self.joints.append(dict(type=type, body=body, axis=axis, pos=pos, ref=ref, limited=bool(limited),
                                range=range, damping=damping, armature=armature, stiffness=stiffness,
                                springref=springref, name=name or f"joint{len(self.joints)}"))
        return len(self.joints) - 1

    def add_sphere(self, body: int, radius, pos=(0.0, 0.0, 0.0)):
        """A collision sphere (radius m, centre ``pos`` in the body frame)."""
        self.points.append(dict(body=body, pos=pos, radius=radius))
        self.geoms.append((body, "sphere", (radius,), pos, (1.0, 0.0, 0.0, 0.0)))

    def add_capsule(self, body: int, radius, p0, p1):
        """A collision capsule: its two end spheres at ``p0``, ``p1`` (body frame)."""
        self.points.append(dict(body=body, pos=p0, radius=radius))
        self.points.append(dict(body=body, pos=p1, radius=radius))
        self.geoms.append((body, "capsule", (radius,), (p0, p1), None))

    def add_box(self, body: int, half_extents, pos=(0.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0)):
        """A collision box: its eight corners (radius 0)."""
        he = torch.as_tensor(half_extents, dtype=torch.float64)
        signs = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float64)
        R = quat_to_matrix(torch.as_tensor(quat, dtype=torch.float64))
        corners = (signs * he) @ R.T + torch.as_tensor(pos, dtype=torch.float64)
        for c in corners:
            self.points.append(dict(body=body, pos=c.tolist(), radius=0.0))
        self.geoms.append((body, "box", tuple(he.tolist()), pos, quat))

    def add_actuator(self, joint: int, gear=1.0, ctrl_range=None, name: str | None = None) -> int:
        """A motor on a revolute/prismatic joint: joint force ``gear * u`` (``u`` clamped to
        ``ctrl_range`` when given). Returns the actuator index."""
        if not isinstance(joint, int) or not 0 <= joint < len(self.joints):
            raise ValueError(f"joint must be an existing joint index, got {joint!r}")
        if self.joints[joint]["type"] not in ("revolute", "prismatic"):
            raise ValueError(f"joint {joint}: motors drive revolute/prismatic joints, not {self.joints[joint]['type']}")
        self.actuators.append(dict(joint=joint, gear=gear, range=ctrl_range, name=name or f"motor{len(self.actuators)}"))
        return len(self.actuators) - 1

    def build(self, dtype=torch.float32, device="cpu", pairs="auto", integrator: str = "euler") -> ArticulatedModel:
        """The model. ``pairs``: ``"auto"`` (every pair of spheres on bodies that are neither the
        same nor parent/child), ``None`` (no body-body contact) or a (C, 2) tensor. Without
        actuators, ``gear`` is the identity (control = joint forces)."""
        if not self.bodies:
            raise ValueError("add at least one body before build()")
        T = lambda x: _t(x, dtype, device)  # noqa: E731

        def stack(rows, shape):
            if not rows:
                return torch.zeros(0, *shape, dtype=dtype, device=device)
            return torch.stack([T(r).reshape(shape) for r in rows])

        inertias = []
        for b in self.bodies:
            I = T(b["inertia"])
            inertias.append(torch.diag_embed(I.reshape(3)) if I.numel() == 3 else I.reshape(3, 3))
        dof_vals = {"damping": [], "armature": [], "stiffness": []}
        for j in self.joints:
            for key in dof_vals:
                dof_vals[key].append(T(j[key]).reshape(1).expand(_NV[j["type"]]))
        nv = sum(_NV[j["type"]] for j in self.joints)
        zero_nv = torch.zeros(0, dtype=dtype, device=device)
        if self.actuators:
            dof_adr = [0]
            for j in self.joints:
                dof_adr.append(dof_adr[-1] + _NV[j["type"]])
            rows = []
            for a in self.actuators:
                onehot = torch.zeros(nv, dtype=dtype, device=device)
                onehot[dof_adr[a["joint"]]] = 1.0
                rows.append(onehot * T(a["gear"]))
            gear = torch.stack(rows)
            ctrl_limited = tuple(a["range"] is not None for a in self.actuators)
            ctrl_range = torch.stack([T(a["range"] if a["range"] is not None else (0.0, 0.0)).reshape(2) for a in self.actuators])
        else:
            gear = torch.eye(nv, dtype=dtype, device=device)
            ctrl_limited = (False,) * nv
            ctrl_range = torch.zeros(nv, 2, dtype=dtype, device=device)
        point_body = tuple(int(p["body"]) for p in self.points)
        radius = stack([p["radius"] for p in self.points], ()) if self.points else torch.zeros(0, dtype=dtype, device=device)
        parent = tuple(b["parent"] for b in self.bodies)
        if isinstance(pairs, str):
            if pairs != "auto":
                raise ValueError(f"pairs must be 'auto', None or a (C, 2) tensor, got {pairs!r}")
            rows = []
            for i in range(len(self.points)):
                for j in range(i + 1, len(self.points)):
                    bi, bj = point_body[i], point_body[j]
                    if bi == bj or parent[bi] == bj or parent[bj] == bi:
                        continue
                    if float(radius[i]) + float(radius[j]) > 0:
                        rows.append((i, j))
            pairs = torch.tensor(rows, dtype=torch.long, device=device).reshape(-1, 2)
        elif pairs is None:
            pairs = torch.zeros(0, 2, dtype=torch.long, device=device)
        else:
            pairs = torch.as_tensor(pairs, device=device).long().reshape(-1, 2)
        names = {"bodies": tuple(b["name"] for b in self.bodies), "joints": tuple(j["name"] for j in self.joints),
                 "actuators": tuple(a["name"] for a in self.actuators)}
        return ArticulatedModel(
            parent=parent,
            body_pos=stack([b["pos"] for b in self.bodies], (3,)),
            body_quat=stack([b["quat"] for b in self.bodies], (4,)),
            body_mass=stack([b["mass"] for b in self.bodies], ()),
            body_com=stack([b["com"] for b in self.bodies], (3,)),
            body_inertia=torch.stack(inertias),
            joint_type=tuple(j["type"] for j in self.joints),
            joint_body=tuple(j["body"] for j in self.joints),
            joint_axis=_unit_rows(stack([j["axis"] for j in self.joints], (3,))),
            joint_pos=stack([j["pos"] for j in self.joints], (3,)),
            joint_ref=stack([j["ref"] for j in self.joints], ()),
            joint_springref=stack([j["springref"] for j in self.joints], ()),
            joint_limited=tuple(j["limited"] for j in self.joints),
            joint_range=stack([j["range"] for j in self.joints], (2,)),
            dof_damping=torch.cat(dof_vals["damping"]) if nv else zero_nv,
            dof_armature=torch.cat(dof_vals["armature"]) if nv else zero_nv,
            dof_stiffness=torch.cat(dof_vals["stiffness"]) if nv else zero_nv,
            gear=gear, ctrl_limited=ctrl_limited, ctrl_range=ctrl_range,
            point=stack([p["pos"] for p in self.points], (3,)),
            point_body=point_body, point_radius=radius, pairs=pairs,
            planes=stack(self.planes, (4,)) if self.planes else torch.zeros(0, 4, dtype=dtype, device=device),
            contact=torch.stack([T(c).reshape(()) for c in self.contact]),
            limit=torch.stack([T(c).reshape(()) for c in self.limit]),
            gravity=T(self.gravity).reshape(3), names=names, geoms=tuple(self.geoms), integrator=integrator)


def _unit_rows(a: torch.Tensor) -> torch.Tensor:
    if a.shape[0] == 0:
        return a
    n = a.norm(dim=-1, keepdim=True)
    if (n.detach() < 1e-12).any():
        raise ValueError("joint axis must be non-zero")
    return a / n
