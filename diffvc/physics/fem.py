"""Linear tetrahedral FEM: stable Neo-Hookean and corotated linear elasticity, damping, gravity,
ground contact, pinned vertices; a semi-implicit step (Warp kernels, torch twin) and an implicit
backward-Euler step / static solve by Newton (system assembled in Warp, sparse factors reused)
whose backward pass is an adjoint solve.

Units: positions in m, Lame parameters in Pa (:func:`lame_parameters` converts Young's modulus
and Poisson's ratio), density in kg/m^3, time in s.

Materials (first Piola-Kirchhoff stress ``P(F)``, per tet, ``F = Ds Dm^-1``):

* ``"neohookean"``: stable Neo-Hookean (Smith, de Goes, Kim 2018),
  ``Psi = mu'/2 (I_C - 3) + lam'/2 (J - alpha)^2 - mu'/2 log(I_C + 1)`` with ``mu' = 4/3 mu``,
  ``lam' = lam + 5/6 mu``, ``alpha = 1 + 3 mu' / (4 lam')`` so that it linearises to linear
  elasticity with (mu, lam). Finite and restoring for inverted (J < 0) and flat (J = 0) tets.
* ``"corotated"``: ``Psi = mu |F - R|^2 + lam/2 tr(R^T F - I)^2``, R the polar rotation of F
  (scaled Newton iterations, a fixed count, so the derivative is that of the iteration). Finite
  for flat and inverted tets, but for ``det F < 0`` R is a reflection and nothing un-inverts the
  tet: use the Neo-Hookean material where elements may invert.

Damping (Rayleigh style): mass-proportional ``f = -alpha m v`` and stiffness-proportional strain
-rate stress ``P_d = beta F (2 mu E' + lam tr(E') I)``, ``E' = sym(F^T dF/dt)`` (equal to
``beta K v`` at rest, zero for rigid rotation). ``damping = (alpha 1/s, beta s)``.

Contact: each vertex against the model's planes with the smoothed penalty law of
:mod:`diffvc.physics.rigid` (``contact = (ke, kd, mu, friction_smoothing, contact_smoothing)``).
Gradient contract as there: with ``contact_smoothing > 0`` the force field is smooth.

Degenerate rest tets (zero volume) get ``Dm^-1 = 0`` and volume 0: they carry no force, values
and gradients stay finite.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._kernels import Out, kernel_op, launch, mat, vec
from .._kernels.fem import (COROTATED, NEOHOOKEAN, POLAR_ITERS, integrate_vertices, tet_forces, tet_system,
                            vertex_residual, vertex_system)
from .._validate import (as_int, as_tensor, check_choice, check_dt, check_finite, check_float, check_index,
                         check_like, check_positive, check_same_device, check_same_dtype)
from .particles import check_contact, check_planes, plane_contact_stability
from .rigid import _contact_law

__all__ = ["lame_parameters", "FEMModel", "FEMState", "fem_step", "fem_step_torch", "fem_forces_torch",
           "fem_implicit_step", "fem_static_solve", "element_stress_torch"]

_MATERIALS = {"neohookean": NEOHOOKEAN, "corotated": COROTATED}


def lame_parameters(youngs_modulus, poisson_ratio):
    """Lame parameters ``(mu, lam)`` in Pa from Young's modulus E (Pa) and Poisson's ratio nu
    (-1 < nu < 0.5): ``mu = E / (2 (1 + nu))``, ``lam = E nu / ((1 + nu)(1 - 2 nu))``.
    Floats or tensors (differentiable)."""
    E = check_positive(as_tensor(youngs_modulus, "youngs_modulus"), "youngs_modulus")
    nu = check_finite(as_tensor(poisson_ratio, "poisson_ratio"), "poisson_ratio")
    if ((nu.detach() <= -1) | (nu.detach() >= 0.5)).any():
        raise ValueError(f"poisson_ratio must be in (-1, 0.5), got {poisson_ratio}")
    return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))


def _t(x, dtype, device, name="value"):
    return as_tensor(x, name, dtype=dtype, device=device)


def _cols_cross(F):
    f0, f1, f2 = F[..., :, 0], F[..., :, 1], F[..., :, 2]
    return torch.stack([torch.cross(f1, f2, dim=-1), torch.cross(f2, f0, dim=-1), torch.cross(f0, f1, dim=-1)], -1)


def _safe_inv3(A):
    """Inverse of (T, 3, 3) matrices; singular ones (|det| <= tiny * scale) give 0 and flag False."""
    C = _cols_cross(A)  # columns c_k; A^-1 rows are c_k / det
    det = (A[..., :, 0] * C[..., :, 0]).sum(-1)
    scale = A.detach().abs().amax(dim=(-1, -2)) ** 3
    ok = det.detach().abs() > 1e-12 * scale.clamp_min(torch.finfo(A.dtype).tiny)
    safe = torch.where(ok, det, torch.ones_like(det))
    inv = C.transpose(-1, -2) / safe[..., None, None]
    return torch.where(ok[..., None, None], inv, torch.zeros_like(inv)), ok


@dataclass(frozen=True)
class FEMState:
    """x: (N, 3) vertex positions (m); v: (N, 3) velocities (m/s) (a leading batch of
    environments, ``(B, N, 3)``, is allowed). Checked on construction: floating, finite, one
    shape and dtype."""

    x: torch.Tensor
    v: torch.Tensor

    def __post_init__(self):
        check_float(self.x, "x", shape=(..., "N", 3), coerce=False)
        check_float(self.v, "v", shape=tuple(self.x.shape), coerce=False)
        check_same_dtype(("x", self.x), ("v", self.v))


def _trusted_state(x: torch.Tensor, v: torch.Tensor) -> FEMState:
    """A :class:`FEMState` built without its checks, for the per-step states a fused segment
    returns (views of one kernel output of a checked input; the segment's final state, and every
    state a binding renders, are still checked). Checking each of a long rollout's intermediate
    states cost a finiteness reduction per tensor per step (~10% of ``sysid``)."""
    st = object.__new__(FEMState)
    st.__dict__.update(x=x, v=v)
    return st


@dataclass(frozen=True)
class FEMModel:
    """A tet mesh body and its environment.

    rest: (N, 3) rest positions; tets: (T, 4) int32; Dm_inv: (T, 3, 3) inverse rest edge matrices;
    volume: (T,) rest volumes (m^3); mass: (N,) lumped vertex masses (kg); lame: (T, 2) per-tet
    (mu, lam) in Pa; damping: (2,) (alpha 1/s, beta s); gravity: (3,); planes: (K, 4) rows
    (nx, ny, nz, d); contact: (5,) (ke, kd, mu, friction_smoothing, contact_smoothing);
    pinned: (N,) bool; material: ``"neohookean"`` or ``"corotated"``.
    """

    rest: torch.Tensor
    tets: torch.Tensor
    Dm_inv: torch.Tensor
    volume: torch.Tensor
    mass: torch.Tensor
    lame: torch.Tensor
    damping: torch.Tensor
    gravity: torch.Tensor
    planes: torch.Tensor
    contact: torch.Tensor
    pinned: torch.Tensor
    material: str = "neohookean"

    @staticmethod
    def create(verts, tets, density=1000.0, youngs_modulus=1e5, poisson_ratio=0.3, lame=None,
               material="neohookean", damping=(0.0, 0.0), pinned=None, planes=None, ke=1e4, kd=10.0,
               mu=0.5, friction_smoothing=0.01, contact_smoothing=0.0, gravity=(0.0, -9.81, 0.0),
               dtype=None, device=None) -> "FEMModel":
        """Build a model from a tet mesh (e.g. :func:`diffvc.geometry.tet_box` or
        :func:`diffvc.geometry.tetrahedralize`).

        verts: (N, 3); tets: (T, 4) integer. density: scalar or (T,) kg/m^3. youngs_modulus,
        poisson_ratio: scalars or (T,) (ignored if ``lame = (mu, lam)`` is given, scalars or (T,)).
        pinned: None, (N,) bool mask or index list of vertices held in place. planes: default the
        ground y = 0; ``[]`` for none. Tensors keep their autograd history (e.g. E, nu, density,
        damping, rest positions), so the model can be rebuilt inside a loss.
        """
        verts = as_tensor(verts, "verts", dtype=None if isinstance(verts, torch.Tensor) else (dtype or torch.float32))
        dtype = dtype or verts.dtype
        device = device or verts.device
        verts = check_float(verts.to(dtype=dtype, device=device), "verts", shape=("N", 3))
        n = verts.shape[0]
        tets = check_index(tets, "tets", n, shape=("T", 4), device=device, dtype=torch.int32,
                           size_name="the number of vertices")
        nt = tets.shape[0]
        check_choice(material, "material", list(_MATERIALS))
        tl = tets.long()
        Dm = torch.stack([verts[tl[:, k]] - verts[tl[:, 0]] for k in (1, 2, 3)], -1)
        Dm_inv, ok = _safe_inv3(Dm)
        det = (Dm[..., :, 0] * _cols_cross(Dm)[..., :, 0]).sum(-1)
        volume = torch.where(ok, det.abs() / 6.0, torch.zeros_like(det))
        density = check_positive(_t(density, dtype, device, "density"), "density")
        tet_mass = density * volume
        mass = torch.zeros(n, dtype=dtype, device=device).index_add(0, tl.reshape(-1), (tet_mass / 4).repeat_interleave(4))
        if lame is None:
            m_, l_ = lame_parameters(_t(youngs_modulus, dtype, device, "youngs_modulus"),
                                     _t(poisson_ratio, dtype, device, "poisson_ratio"))
        else:
            if len(lame) != 2:
                raise ValueError(f"lame must be a pair (mu, lam), got {len(lame)} entries")
            m_, l_ = (_t(a, dtype, device, "lame") for a in lame)
        lame_t = torch.stack([m_.expand(nt) if m_.dim() == 0 else m_.reshape(nt),
                              l_.expand(nt) if l_.dim() == 0 else l_.reshape(nt)], -1)
        pin = torch.zeros(n, dtype=torch.bool, device=device)
        if pinned is not None:
            p = pinned if isinstance(pinned, torch.Tensor) else torch.as_tensor(pinned, device=device)
            if p.dtype == torch.bool:
                if p.shape != (n,):
                    raise ValueError(f"pinned mask must have shape ({n},), got {tuple(p.shape)}")
                pin = p.to(device)
            else:
                pin[check_index(p.reshape(-1), "pinned", n, device=device, size_name="the number of vertices")] = True
        planes = _t([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes, dtype, device, "planes").reshape(-1, 4)
        contact = torch.cat([_t(a, dtype, device, k).reshape(1) for a, k in
                             ((ke, "ke"), (kd, "kd"), (mu, "mu"), (friction_smoothing, "friction_smoothing"),
                              (contact_smoothing, "contact_smoothing"))])
        return FEMModel(verts, tets, Dm_inv, volume, mass, lame_t, _t(damping, dtype, device, "damping").reshape(2),
                        _t(gravity, dtype, device, "gravity").reshape(3), planes, contact, pin, material)

    def __post_init__(self):
        self.validate()  # every way of building the model (constructor, create, dataclasses.replace)

    def validate(self) -> None:
        floats = [(k, getattr(self, k)) for k in ("rest", "Dm_inv", "volume", "mass", "lame", "damping", "gravity",
                                                   "planes", "contact")]
        for k, v in floats:
            check_float(v, k, coerce=False)
        check_same_dtype(*floats)
        check_same_device(*floats, ("tets", self.tets), ("pinned", self.pinned))
        check_float(self.rest, "rest", shape=("N", 3))
        n = self.rest.shape[0]
        if not isinstance(self.tets, torch.Tensor) or self.tets.dtype != torch.int32:
            raise TypeError(f"tets must be an int32 tensor of shape (T, 4), got "
                            f"{getattr(self.tets, 'dtype', type(self.tets).__name__)}")
        check_index(self.tets, "tets", n, shape=("T", 4), dtype=torch.int32, size_name="the number of vertices")
        nt = self.tets.shape[0]
        check_float(self.Dm_inv, "Dm_inv", shape=(nt, 3, 3))
        check_positive(check_float(self.volume, "volume", shape=(nt,)), "volume", strict=False)
        check_positive(check_float(self.mass, "mass", shape=(n,)), "mass", strict=False)
        check_float(self.gravity, "gravity", shape=(3,))
        check_choice(self.material, "material", list(_MATERIALS))
        if not isinstance(self.pinned, torch.Tensor) or self.pinned.dtype != torch.bool:
            raise TypeError("pinned must be a bool tensor (N,)")
        if self.lame.shape != (nt, 2) or not torch.isfinite(self.lame).all() or (self.lame[:, 0] <= 0).any():
            raise ValueError(f"lame must be finite, shape ({nt}, 2), with mu > 0")
        if (self.lame[:, 1] + 2.0 / 3.0 * self.lame[:, 0] <= 0).any():
            raise ValueError("lame: the bulk modulus lam + 2/3 mu must be > 0")
        if self.damping.shape != (2,) or (self.damping < 0).any():
            raise ValueError("damping must be (alpha >= 0, beta >= 0)")
        check_planes(self.planes)
        check_contact(self.contact, "contact", n=5)
        if self.pinned.shape != (n,):
            raise ValueError(f"pinned must have shape ({n},)")

    @property
    def num_vertices(self) -> int:
        return self.rest.shape[0]

    def free(self) -> torch.Tensor:
        """(N,) 1.0 for vertices that move, 0.0 for pinned or massless ones."""
        return ((~self.pinned) & (self.mass.detach() > 0)).to(self.mass.dtype)

    def inv_mass(self) -> torch.Tensor:
        m = self.mass
        ok = m.detach() > 0
        return torch.where(ok, 1.0 / torch.where(ok, m, torch.ones_like(m)), torch.zeros_like(m))

    def initial_state(self) -> FEMState:
        """The rest configuration at zero velocity."""
        return FEMState(self.rest.detach().clone(), torch.zeros_like(self.rest).detach())

    def step(self, state: FEMState, dt: float, control: torch.Tensor | None = None) -> FEMState:
        """Simulator contract: explicit :func:`fem_step`; ``control``: external nodal forces
        ``(N, 3)`` in N. (The implicit integrator is :func:`fem_implicit_step`.)"""
        return fem_step(self, state, dt, control)

    def step_torch(self, state: FEMState, dt: float, control: torch.Tensor | None = None) -> FEMState:
        """Plain-torch twin of :meth:`step` (:func:`fem_step_torch`)."""
        return fem_step_torch(self, state, dt, control)

    def segment(self, state: FEMState, dt: float, n: int, control: torch.Tensor | None = None,
                recompute: bool = False, return_all: bool = False):
        """``n`` explicit steps fused in Warp as one autograd node (the contract's optional
        capability, :func:`diffvc.physics.fem_segment.fem_segment`; ``rollout`` uses it)."""
        from .fem_segment import fem_segment

        return fem_segment(self, state, dt, n, control, recompute, return_all)


def _check_state(state: FEMState, model: FEMModel) -> None:
    if not isinstance(model, FEMModel):
        raise TypeError(f"model must be a FEMModel, got {type(model).__name__}")
    if not isinstance(state, FEMState):
        raise TypeError(f"state must be a FEMState, got {type(state).__name__}")
    n = model.rest.shape[0]
    for name in ("x", "v"):
        check_like(getattr(state, name), f"state.{name}", (n, 3), model.rest)


# -------------------------------------------------------------------- semi-implicit step (Warp)

def _planes_arg(model):
    if model.planes.shape[0]:
        return model.planes.contiguous()
    return torch.zeros(1, 4, dtype=model.rest.dtype, device=model.rest.device)


def fem_step(model: FEMModel, state: FEMState, dt: float, external: torch.Tensor | None = None) -> FEMState:
    """Advance by ``dt`` seconds with semi-implicit (symplectic) Euler; two Warp kernels.

    Stable for ``dt`` below about ``h / sqrt((lam + 2 mu) / rho)`` (h: smallest edge) and
    ``sqrt(m / ke)``. external: optional (N, 3) force (N). Gradients reach the state and every
    floating model tensor (Lame parameters, damping, masses, rest shape via Dm_inv/volume, contact).
    """
    _check_state(state, model)
    dt = check_dt(dt)
    n, nt = model.rest.shape[0], model.tets.shape[0]
    plane_contact_stability("fem_step", dt, state.x, state.v, model.inv_mass() * model.free(),
                            torch.zeros_like(model.mass), model.planes, model.contact)
    if external is not None:
        check_like(external, "external", (n, 3), model.rest)
    x, v = state.x.contiguous(), state.v.contiguous()
    f = kernel_op(tet_forces, nt,
                  [vec(x), vec(v), model.tets, mat(model.Dm_inv.contiguous()), model.volume.contiguous(),
                   vec(model.lame.contiguous()), model.damping.contiguous(), _MATERIALS[model.material]],
                  [Out((n, 3), "vec")])
    if external is not None:
        f = f + external
    x1, v1 = kernel_op(integrate_vertices, n,
                       [vec(x), vec(v), vec(f.contiguous()), model.inv_mass().contiguous(), model.free().contiguous(),
                        vec(_planes_arg(model)), model.contact.contiguous(), vec(model.gravity.reshape(1, 3).contiguous()),
                        model.damping.contiguous(), model.planes.shape[0], float(dt)],
                       [Out((n, 3), "vec"), Out((n, 3), "vec")])
    return FEMState(x1, v1)


# -------------------------------------------------------------------- plain-torch twin

def polar_rotation_torch(F: torch.Tensor) -> torch.Tensor:
    """Twin of the kernel's scaled-Newton polar rotation (same fixed iteration count)."""
    X = F
    for _ in range(POLAR_ITERS):
        C = _cols_cross(X)
        det = (X[..., :, 0] * C[..., :, 0]).sum(-1)
        ad = det.abs().clamp_min(1e-8)
        sdet = torch.where(det < 0, -ad, ad)
        g = ad ** (-1.0 / 3.0)
        X = 0.5 * (X * g[..., None, None] + C / (g * sdet)[..., None, None])
    return X


def element_stress_torch(F, Fd, mu, lam, beta, material: str = "neohookean"):
    """First Piola-Kirchhoff stress (..., 3, 3) of the material plus strain-rate damping
    (twin of the kernel's ``element_stress``; formulas in the module doc)."""
    mu_, lam_ = mu[..., None, None], lam[..., None, None]
    if material == "neohookean":
        mu_s = mu_ * (4.0 / 3.0)
        lam_s = lam_ + mu_ * (5.0 / 6.0)
        alpha = 1.0 + 0.75 * mu_s / lam_s
        C = _cols_cross(F)
        J = (F[..., :, 0] * C[..., :, 0]).sum(-1)[..., None, None]
        Ic = (F * F).sum((-1, -2))[..., None, None]
        P = F * (mu_s * (1.0 - 1.0 / (Ic + 1.0))) + C * (lam_s * (J - alpha))
    else:
        R = polar_rotation_torch(F)
        tr = (R * F).sum((-1, -2))[..., None, None]
        P = 2.0 * mu_ * (F - R) + lam_ * (tr - 3.0) * R
    FtFd = F.transpose(-1, -2) @ Fd
    Ed = 0.5 * (FtFd + FtFd.transpose(-1, -2))
    eye = torch.eye(3, dtype=F.dtype, device=F.device)
    S = 2.0 * mu_ * Ed + lam_ * torch.diagonal(Ed, dim1=-2, dim2=-1).sum(-1)[..., None, None] * eye
    return P + beta * (F @ S)


def _grad_ops(model):
    """g (T, 4, 3): dF_ij / dx_{a,k} = delta_ik g[a, j] for the tet's vertex a."""
    G = model.Dm_inv
    return torch.cat([-G.sum(1, keepdim=True), G], 1)


def _deformation(model, x):
    tl = model.tets.long()
    x0 = x[tl[:, 0]]
    Ds = torch.stack([x[tl[:, k]] - x0 for k in (1, 2, 3)], -1)
    return Ds @ model.Dm_inv


def fem_forces_torch(model: FEMModel, x: torch.Tensor, v: torch.Tensor, Fd: torch.Tensor | None = None) -> torch.Tensor:
    """Elastic + stiffness-damping nodal forces (N, 3) (twin of the ``tet_forces`` kernel).
    ``Fd`` overrides the deformation rate (T, 3, 3) computed from ``v``."""
    F = _deformation(model, x)
    if Fd is None:
        Fd = _deformation(model, v) if v is not None else torch.zeros_like(F)
    P = element_stress_torch(F, Fd, model.lame[:, 0], model.lame[:, 1], model.damping[1], model.material)
    g = _grad_ops(model)
    fl = -model.volume[:, None, None] * torch.einsum("tij,taj->tai", P, g)  # (T, 4, 3)
    return torch.zeros_like(x).index_add(0, model.tets.long().reshape(-1), fl.reshape(-1, 3))


def _contact_torch(model, x, v):
    f = torch.zeros_like(x)
    for k in range(model.planes.shape[0]):
        n = model.planes[k, :3].expand_as(x)
        c = (x * n).sum(-1) - model.planes[k, 3]
        f = f + _contact_law(n, c, v, model.contact)
    return f


def fem_step_torch(model: FEMModel, state: FEMState, dt: float, external: torch.Tensor | None = None) -> FEMState:
    """Plain-torch twin of :func:`fem_step`."""
    _check_state(state, model)
    dt = check_dt(dt)
    f = fem_forces_torch(model, state.x, state.v) + _contact_torch(model, state.x, state.v)
    if external is not None:
        f = f + external
    v1 = (state.v + (f * model.inv_mass()[:, None] + model.gravity) * dt) / (1.0 + model.damping[0] * dt)
    v1 = v1 * model.free()[:, None]
    return FEMState(state.x + v1 * dt, v1)


# -------------------------------------------------------------------- implicit step and static solve

_TENSOR_FIELDS = ("Dm_inv", "volume", "mass", "lame", "damping", "gravity", "planes", "contact")


def _with(model, tensors):
    d = dict(zip(_TENSOR_FIELDS, tensors))
    # the tensors are (detached copies of) a validated model's: no second validation (__post_init__)
    out = object.__new__(FEMModel)
    out.__dict__.update(rest=model.rest, tets=model.tets, pinned=model.pinned, material=model.material, **d)
    out.__dict__["_fem_pattern"] = _pattern(model)  # same mesh: share the sparsity pattern
    return out


def _residual(model, x, x0, v0, dt, static):
    """Backward-Euler residual (N, 3) scaled by dt^2 (or the static force balance), pinned rows
    ``m (x - x0)``: zero at the step's solution. Two Warp kernels, differentiable (torch
    autograd through their adjoints) w.r.t. x, x0, v0 and the model's float tensors."""
    n, nt = model.rest.shape[0], model.tets.shape[0]
    if static:
        dt_, inv_dt, scale, inertia = 1.0, 0.0, 1.0, 0.0
    else:
        dt_, inv_dt, scale, inertia = float(dt), 1.0 / dt, float(dt) ** 2, 1.0
    x, x0, v0 = x.contiguous(), x0.contiguous(), v0.contiguous()
    v = (x - x0) * inv_dt
    f = kernel_op(tet_forces, nt,
                  [vec(x), vec(v.contiguous()), model.tets, mat(model.Dm_inv.contiguous()), model.volume.contiguous(),
                   vec(model.lame.contiguous()), model.damping.contiguous(), _MATERIALS[model.material]],
                  [Out((n, 3), "vec")])
    return kernel_op(vertex_residual, n,
                     [vec(x), vec(x0), vec(v0), vec(f), model.mass.contiguous(), model.free().contiguous(),
                      vec(_planes_arg(model)), model.contact.contiguous(), vec(model.gravity.reshape(1, 3).contiguous()),
                      model.damping.contiguous(), model.planes.shape[0], dt_, inv_dt, scale, inertia],
                     [Out((n, 3), "vec")])


def _residual_torch(model, x, x0, v0, dt, static):
    """Plain-torch twin of :func:`_residual`."""
    m = model.mass[:, None]
    if static:
        f = fem_forces_torch(model, x, None) + _contact_torch(model, x, torch.zeros_like(x)) + m * model.gravity
        r = -f
    else:
        v = (x - x0) / dt
        Fd = (_deformation(model, x) - _deformation(model, x0)) / dt
        f = (fem_forces_torch(model, x, None, Fd=Fd) + _contact_torch(model, x, v) + m * model.gravity
             - model.damping[0] * m * v)
        r = m * (x - x0 - dt * v0) - dt * dt * f
    free = model.free()[:, None]
    return free * r + (1.0 - free) * m.clamp_min(1e-30) * (x - x0)


def _jacobian_torch(model, x, x0, dt, static):
    """Twin of :func:`_assemble`'s Jacobian: sparse d(residual)/dx at x as a scipy CSC matrix
    (3N x 3N), from per-tet 9x9 stress derivatives by torch forward mode (reference for tests;
    the solver assembles in Warp)."""
    import scipy.sparse as sp

    n = x.shape[0]
    with torch.no_grad(), warnings.catch_warnings():
        # torch's forward-mode decompositions use torch.jit.script on first import (deprecated)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        F = _deformation(model, x)
        F0 = _deformation(model, x0)
        mu, lam, beta = model.lame[:, 0], model.lame[:, 1], model.damping[1]

        def ptot(Fe):
            Fd = torch.zeros_like(Fe) if static else (Fe - F0[:, None]) / dt
            return element_stress_torch(Fe, Fd, mu[:, None], lam[:, None], beta, model.material)

        # dP/dF by one forward-mode pass over the 9 basis directions (batched as (T, 9, 3, 3))
        basis = torch.eye(9, dtype=x.dtype, device=x.device).reshape(1, 9, 3, 3).expand(F.shape[0], 9, 3, 3)
        _, dPk = torch.func.jvp(ptot, (F[:, None].expand(-1, 9, 3, 3).contiguous(),), (basis.contiguous(),))
        dP = dPk.reshape(-1, 3, 3, 3, 3).permute(0, 3, 4, 1, 2)  # (T, i, j, k, l) = dP_ij / dF_kl
        g = _grad_ops(model)
        Ke = model.volume[:, None, None, None, None] * torch.einsum("taj,tijkl,tbl->taibk", g, dP, g)
        s = 1.0 if static else dt * dt
        tl = model.tets.long()
        dof = (tl[:, :, None] * 3 + torch.arange(3, device=x.device)).reshape(-1, 12)  # (T, 12)
        rows = dof[:, :, None].expand(-1, 12, 12).reshape(-1)
        cols = dof[:, None, :].expand(-1, 12, 12).reshape(-1)
        vals = (s * Ke).reshape(-1)
        # per-vertex blocks: inertia, mass damping, contact
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        m = model.mass
        blocks = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)
        if not static:
            blocks = blocks + (m * (1.0 + dt * model.damping[0]))[:, None, None] * eye
        if model.planes.shape[0]:
            # d f_contact / d(x, v) per vertex: one forward-mode pass over 6 basis directions
            v = torch.zeros_like(x) if static else (x - x0) / dt
            e6 = torch.eye(6, dtype=x.dtype, device=x.device).expand(n, 6, 6)
            xr = x[:, None].expand(n, 6, 3).reshape(-1, 3)
            vr = v[:, None].expand(n, 6, 3).reshape(-1, 3)
            _, dfc = torch.func.jvp(lambda a, b: _contact_torch(model, a, b), (xr, vr),
                                    (e6[..., :3].reshape(-1, 3), e6[..., 3:].reshape(-1, 3)))
            dfc = dfc.reshape(n, 6, 3).transpose(1, 2)  # (N, 3 force comps, 6 dirs)
            Jx, Jv = dfc[..., :3], dfc[..., 3:]
            blocks = blocks - s * (Jx + (0.0 if static else Jv / dt))
        vd = (torch.arange(n, device=x.device)[:, None] * 3 + torch.arange(3, device=x.device))
        rows = torch.cat([rows, vd[:, :, None].expand(-1, 3, 3).reshape(-1)])
        cols = torch.cat([cols, vd[:, None, :].expand(-1, 3, 3).reshape(-1)])
        vals = torch.cat([vals, blocks.reshape(-1)])
        free = model.free().repeat_interleave(3)
        vals = vals * free[rows]
        pin = (1.0 - free)
        diag = torch.arange(3 * n, device=x.device)
        rows = torch.cat([rows, diag])
        cols = torch.cat([cols, diag])
        vals = torch.cat([vals, pin * m.clamp_min(1e-30).repeat_interleave(3)])
    A = sp.coo_matrix((vals.double().cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(3 * n, 3 * n))
    return A.tocsc()


class _Pattern:
    """The sparsity of a tet mesh's system matrix, made once per mesh and reused by every
    assembly, factorisation, Newton iteration and step: 3x3 blocks for every pair of vertices
    sharing a tet and every vertex's diagonal (``blocks`` (T, 16): each tet's 16 block slots,
    ``diag`` (N,)), a fill-reducing symmetric ordering ``perm`` (SuperLU's minimum degree on
    A^T + A, computed on the first matrix) and the map from block values to the CSC data of the
    permuted matrix, so a new matrix is a gather plus SuperLU's numeric factorisation."""

    def __init__(self, tets: torch.Tensor, n: int):
        tl = tets.detach().long().cpu()
        pairs = (tl[:, :, None] * n + tl[:, None, :]).reshape(-1)
        keys = torch.cat([pairs, torch.arange(n) * (n + 1)])
        uniq, inv = torch.unique(keys, return_inverse=True)
        self.n, self.nnzb = n, uniq.numel()
        dev = tets.device
        self.blocks = inv[: pairs.numel()].reshape(-1, 16).to(torch.int32).to(dev).contiguous()
        self.diag = inv[pairs.numel():].to(torch.int32).to(dev).contiguous()
        br, bc = (uniq // n).numpy(), (uniq % n).numpy()
        i3 = np.arange(3)
        self._rows = (3 * br[:, None, None] + i3[None, :, None]).repeat(3, 2).reshape(-1)
        self._cols = (3 * bc[:, None, None] + i3[None, None, :]).repeat(3, 1).reshape(-1)
        self.perm = None
        self.factorisations = 0  # counts, for tests and benchmarks
        self.last = {}  # the latest factors per kind of system (static / dynamic), reused across solves

    def _set_order(self, A):
        """Fix the fill-reducing ordering from the first matrix (SuperLU's COLAMD, used
        symmetrically) and the data map for it; returns that first matrix's factors."""
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        m = 3 * self.n
        probe = spla.splu(A, permc_spec="COLAMD")
        pinv = np.asarray(probe.perm_c)  # old index j moves to pinv[j] (scipy: Pr A Pc = L U)
        self.perm = np.argsort(pinv)
        nnz = self._rows.size
        C = sp.coo_matrix((np.arange(1, nnz + 1, dtype=np.float64), (pinv[self._rows], pinv[self._cols])),
                          shape=(m, m)).tocsc()
        C.sort_indices()
        self.map = C.data.astype(np.int64) - 1
        self.indices, self.indptr = C.indices, C.indptr
        return _LU(probe, None)

    def matrix(self, blocks: torch.Tensor):
        """The scipy CSC matrix (3N x 3N, float64) of block values (nnzb, 3, 3), unpermuted."""
        import scipy.sparse as sp

        vals = blocks.detach().double().cpu().numpy().reshape(-1)
        return sp.csc_matrix((vals, (self._rows, self._cols)), shape=(3 * self.n, 3 * self.n))

    def factor(self, blocks: torch.Tensor) -> "_LU":
        """LU factors of the matrix with block values ``blocks`` (nnzb, 3, 3)."""
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        self.factorisations += 1
        if self.perm is None:
            return self._set_order(self.matrix(blocks))
        vals = blocks.detach().double().cpu().numpy().reshape(-1)[self.map]
        m = 3 * self.n
        B = sp.csc_matrix((vals, self.indices, self.indptr), shape=(m, m))
        # the ordering is fixed: SuperLU only factors (partial pivoting, diagonal preferred)
        return _LU(spla.splu(B, permc_spec="NATURAL", diag_pivot_thresh=0.1,
                             options=dict(SymmetricMode=True)), self.perm)


class _LU:
    """SuperLU factors of P A P^T (P: the pattern's ordering, or none); solves with A or A^T."""

    def __init__(self, lu, perm):
        self.lu, self.perm = lu, perm

    def solve(self, b: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        bb = b.detach().double().cpu().numpy().reshape(-1)
        if self.perm is None:
            y = self.lu.solve(bb, trans="T" if transpose else "N")
        else:
            y = np.empty_like(bb)
            y[self.perm] = self.lu.solve(bb[self.perm], trans="T" if transpose else "N")
        return torch.as_tensor(y, dtype=b.dtype, device=b.device).reshape(b.shape)


_PATTERNS: dict = {}  # (N, T, digest of tets) -> _Pattern: shared by the models of one mesh (a few kept)


def _pattern(model) -> _Pattern:
    p = model.__dict__.get("_fem_pattern")
    if p is None:
        import hashlib

        tets = model.tets.detach()
        key = (model.rest.shape[0], tets.shape[0], str(tets.device),
               hashlib.blake2b(tets.cpu().numpy().tobytes(), digest_size=16).hexdigest())
        p = _PATTERNS.get(key)
        if p is None:
            p = _Pattern(tets, model.rest.shape[0])
            while len(_PATTERNS) >= 4:
                _PATTERNS.pop(next(iter(_PATTERNS)))
            _PATTERNS[key] = p
        object.__setattr__(model, "_fem_pattern", p)
    return p


class _System:
    """Residual and Jacobian of one implicit step (or static solve) by two Warp kernels."""

    def __init__(self, model, x0, v0, dt, static):
        self.model, self.static, self.dt = model, static, dt
        self.pattern = _pattern(model)
        self.x0, self.v0 = x0.detach().contiguous(), v0.detach().contiguous()
        self.free = model.free().detach().contiguous()
        self.n, self.nt = model.rest.shape[0], model.tets.shape[0]
        d = lambda t: t.detach().contiguous()  # noqa: E731
        self.tet_args = [d(model.tets), mat(d(model.Dm_inv)), d(model.volume), vec(d(model.lame)), d(model.damping),
                         self.free, self.pattern.blocks, _MATERIALS[model.material]]
        self.vert_args = [d(model.mass), self.free, vec(d(_planes_arg(model))), d(model.contact),
                          vec(d(model.gravity.reshape(1, 3))), d(model.damping), self.pattern.diag,
                          model.planes.shape[0]]
        if static:
            self.scalars = (1.0, 0.0, 1.0, 0.0)  # dt, inv_dt, scale, inertia
        else:
            self.scalars = (float(dt), 1.0 / dt, float(dt) ** 2, 1.0)

    def __call__(self, x: torch.Tensor, jacobian: bool = True):
        """(residual (N, 3), Jacobian blocks (nnzb, 3, 3) or None) at x."""
        dt, inv_dt, scale, inertia = self.scalars
        x = x.contiguous()
        f = torch.zeros_like(x)
        A = torch.zeros((self.pattern.nnzb if jacobian else 1, 3, 3), dtype=x.dtype, device=x.device)
        launch(tet_system, self.nt, [vec(x), vec(self.x0), *self.tet_args, inv_dt, scale, int(jacobian)],
               [vec(f), mat(A)])
        r = torch.empty_like(x)
        launch(vertex_system, self.n, [vec(x), vec(self.x0), vec(self.v0), vec(f), *self.vert_args, dt, inv_dt,
                                           scale, inertia, int(jacobian)], [vec(r), mat(A)])
        return r, (A if jacobian else None)


def _krylov(A, lu, b, rtol, transpose=False, iters=10):
    """GMRES on ``A y = b`` (or ``A^T y = b``) preconditioned by LU factors of an earlier matrix of
    the same mesh; None unless the relative residual reaches ``rtol`` within ``iters`` iterations."""
    import scipy.sparse.linalg as spla

    m = A.shape[0]
    op = A.T if transpose else A
    prec = spla.LinearOperator((m, m), dtype=np.float64,
                               matvec=lambda z: lu.solve(torch.as_tensor(z.reshape(-1)), transpose).numpy())
    y, status = spla.gmres(op, b, x0=prec.matvec(b), rtol=rtol, atol=0.0, restart=iters, maxiter=1, M=prec)
    if status != 0 or not np.isfinite(y).all() or np.linalg.norm(b - op @ y) > rtol * np.linalg.norm(b) * 1.01:
        return None
    return y


def _direction(pattern, lu, A_blocks, r, eta=1e-3):
    """The Newton direction dx with ``A dx = -r`` to a relative residual ``eta``: by GMRES
    preconditioned with the LU factors of an earlier matrix of this mesh (an earlier iteration,
    step or solve) when they are close enough to reach ``eta`` in a few iterations, else by
    factorising A (with the mesh's fixed ordering). Returns (dx, factors, whether made here)."""
    b = -r.detach().double().cpu().numpy().reshape(-1)
    if lu is not None and np.linalg.norm(b) > 0:
        dx = _krylov(pattern.matrix(A_blocks), lu, b, eta)
        if dx is not None:
            return torch.as_tensor(dx, dtype=r.dtype, device=r.device).reshape(r.shape), lu, False
    lu = pattern.factor(A_blocks)
    return lu.solve(-r), lu, True


def _newton(model, x0, v0, dt, static, x_init, iters, tol):
    """Newton's method on the residual, with an energy line search. Returns (x, info); info holds
    the factorisation of the last Newton matrix (``"lu"``) and the Jacobian blocks at x
    (``"A"``), which the adjoint reuses."""
    system = _System(model, x0, v0, dt, static)
    x = x_init.detach().clone().contiguous()
    max_step = 0.5 * float((model.rest.detach().amax(0) - model.rest.detach().amin(0)).max())
    info = {"iterations": 0, "converged": False, "line_search_cuts": 0}
    r, A = system(x)
    pattern = system.pattern
    lu = pattern.last.get(static)
    damp, last = 1.0, float("inf")
    for it in range(iters):
        dx, lu, fresh = _direction(pattern, lu, A, r)
        info["factorisations"] = info.get("factorisations", 0) + int(fresh)
        dmax = float(dx.abs().max())
        # energy line search (Armijo): phi(a) = int_0^a r(x + s dx).dx ds is the change of the
        # step's incremental potential along dx (inertia, elasticity, gravity, mass damping; for
        # friction and strain-rate damping their work along the step), by Simpson's rule
        slope = float((r * dx).sum())
        descent = slope < 0
        # without a descent direction (friction and damping make the system unsymmetric): damped
        # steps when the updates stop contracting (Newton cycling around the friction law's
        # curved region), relaxed again while they contract
        if not descent and it >= 2 and dmax > (1.0 - 0.25 * damp) * last:  # < 1/4 of the expected progress
            damp = max(damp * 0.5, 1.0 / 16)
        elif descent or dmax < 0.1 * last:  # fast contraction: back towards full steps
            damp = min(damp * 2.0, 1.0)
        last = dmax
        step = min(damp, max_step / dmax) if dmax > 0 else 1.0
        search = descent and dmax * step > 1e3 * tol
        best = None
        for _ in range(30):
            xn = x + step * dx
            rn, An = system(xn)
            if not bool(torch.isfinite(rn).all()):
                step *= 0.5
                continue
            if not search:
                best = (step, xn, rn, An)
                break
            rm, _ = system(x + 0.5 * step * dx, jacobian=False)
            phi = step / 6.0 * (slope + 4.0 * float((rm * dx).sum()) + float((rn * dx).sum()))
            if best is None or phi < best[0]:
                best = (phi, xn, rn, An, step)
            if phi <= 1e-4 * step * slope:
                best = (step, xn, rn, An)
                break
            step *= 0.5
            info["line_search_cuts"] += 1
        else:
            if best is None:
                raise FloatingPointError("fem: the residual is not finite along the Newton direction")
            best = (best[4], best[1], best[2], best[3])
        step, x, r, A = best
        info["iterations"] = it + 1
        if dmax * step <= tol:
            info["converged"] = True
            break
    pattern.last[static] = lu
    info["lu"], info["A"] = lu, A
    if not info.get("converged"):
        warnings.warn(f"Newton did not converge in {iters} iterations (last update {dmax * step:.3g} m > tol "
                      f"{tol:.3g} m); the adjoint assumes a solution. Try a smaller dt, more newton_iters or a "
                      "larger friction_smoothing", RuntimeWarning, stacklevel=3)
    return x, info


def _adjoint_solve(pattern, lu, A_blocks, g, max_refine=8):
    """lam with A^T lam = g, A the Jacobian at the solution (blocks ``A_blocks``), using the LU
    factors ``lu`` of the last Newton matrix (within about one Newton update of the solution)
    with iterative refinement against A itself to a backward error at rounding level, or a fresh
    factorisation of A when that does not converge. The result is the adjoint of A to working
    precision, not of the reused matrix."""
    gg = g.detach().double().cpu().numpy().reshape(-1)
    gnorm = np.linalg.norm(gg)
    if gnorm == 0:
        return torch.zeros_like(g)
    At = pattern.matrix(A_blocks).T.tocsr()
    anorm = float(abs(At).sum(axis=1).max())
    lam = lu.solve(torch.as_tensor(gg), transpose=True).numpy()
    prev = np.inf
    for _ in range(max_refine):
        res = gg - At @ lam
        rel = np.linalg.norm(res) / gnorm
        if not np.isfinite(rel) or rel > 0.5 * prev:
            break
        # backward error at the level of rounding: |res| <= 64 eps (|A| |lam| + |g|)
        if np.abs(res).max() <= 64 * np.finfo(np.float64).eps * (anorm * np.abs(lam).max() + np.abs(gg).max()):
            return torch.as_tensor(lam, dtype=g.dtype, device=g.device).reshape(g.shape)
        prev = rel
        lam = lam + lu.solve(torch.as_tensor(res), transpose=True).numpy()
    return pattern.factor(A_blocks).solve(g.detach().double(), transpose=True).to(g.dtype).reshape(g.shape)


class _ImplicitSolve(torch.autograd.Function):
    """x* with residual(x*, x0, v0, theta) = 0. Backward: implicit function theorem,
    A^T lam = g at x*, then grads = -lam^T d(residual)/d(x0, v0, theta) (one adjoint solve with
    the same system matrix; the Newton iterations are not differentiated)."""

    @staticmethod
    def forward(ctx, model, dt, static, iters, tol, x_init, x0, v0, *tensors):
        m = _with(model, [t.detach() for t in tensors])
        x, info = _newton(m, x0.detach(), v0.detach(), dt, static, x_init, iters, tol)
        ctx.model, ctx.dt, ctx.static = model, dt, static
        ctx.lu, ctx.A = info.pop("lu"), info.pop("A")
        ctx.info = info
        ctx.save_for_backward(x, x0, v0, *tensors)
        return x

    @staticmethod
    def backward(ctx, g):
        x, x0, v0, *tensors = ctx.saved_tensors
        model = _with(ctx.model, [t.detach() for t in tensors])
        lam = _adjoint_solve(_pattern(ctx.model), ctx.lu, ctx.A, g)
        ctx.lu = ctx.A = None
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in (x0, v0, *tensors)]
            r = _residual(_with(ctx.model, leaves[2:]), x, leaves[0], leaves[1], ctx.dt, ctx.static)
            wants = [l for l in leaves if l.requires_grad]
            grads = torch.autograd.grad(r, wants, grad_outputs=-lam, allow_unused=True)
        it = iter(grads)
        out = [next(it) if l.requires_grad else None for l in leaves]
        return (None, None, None, None, None, None, *out)


def fem_implicit_step(model: FEMModel, state: FEMState, dt: float, newton_iters: int = 50,
                      tol: float | None = None) -> FEMState:
    """Advance by ``dt`` with backward Euler: solve ``M (x - x0 - dt v0) = dt^2 f(x, (x - x0)/dt)``
    by Newton's method, ``v = (x - x0)/dt``. Unconditionally stable for stiff materials.

    Each Newton system (residual and analytic 3x3-block Jacobian: elasticity, strain-rate and
    mass damping, contact and friction) is assembled by two Warp kernels into a sparsity pattern
    made once per mesh, with a fill-reducing ordering fixed on the first matrix. Directions come
    from GMRES preconditioned by the LU factors of an earlier matrix of the mesh (earlier
    iterations, steps or solves); the matrix is factorised again (SciPy SuperLU, numeric phase
    only; tensors on another device go through the host) only when those factors stop reaching a
    relative residual of 1e-3 in 10 iterations. Steps are capped at half the body size and chosen
    by an energy line search: Armijo backtracking on ``phi(a) = int_0^a r(x + s dx).dx ds``, the
    change of the step's incremental potential (inertia, elasticity, gravity, mass damping; for
    friction and strain-rate damping, their work along the step). Where friction makes the Newton
    direction no descent direction and full steps cycle, steps are halved (down to 1/16) while
    the updates stop contracting. If Newton has not converged after ``newton_iters`` a
    ``RuntimeWarning`` says so (the adjoint then differentiates a non-solution).

    Backward: implicit function theorem, one adjoint solve with the transposed Jacobian at the
    solution (the last factors with iterative refinement against that Jacobian, to rounding
    level), and vector-Jacobian products of the residual through the Warp kernels' adjoints;
    exact for the solution, independent of how Newton got there.
    ``tol``: stop when the Newton update is below ``tol`` m (default 1e-11 for float64, 1e-6
    for float32 times the body size).
    """
    _check_state(state, model)
    dt = check_dt(dt)
    newton_iters = as_int(newton_iters, "newton_iters", minimum=1)
    size = float((model.rest.detach().amax(0) - model.rest.detach().amin(0)).max())
    if tol is None:
        tol = (1e-11 if state.x.dtype == torch.float64 else 1e-6) * max(size, 1e-12)
    x_init = state.x.detach() + dt * state.v.detach() * model.free()[:, None]
    tensors = [getattr(model, f) for f in _TENSOR_FIELDS]
    x = _ImplicitSolve.apply(model, float(dt), False, newton_iters, tol, x_init, state.x, state.v, *tensors)
    return FEMState(x, (x - state.x) / dt)


def fem_static_solve(model: FEMModel, x_init: torch.Tensor | None = None, newton_iters: int = 30,
                     tol: float | None = None) -> torch.Tensor:
    """Static equilibrium ``f_elastic(x) + f_contact(x) + m g = 0`` with pinned vertices held at
    ``x_init`` (default: the rest shape), by the Newton solver of :func:`fem_implicit_step`
    (Warp assembly, reused factors, energy line search: the total potential energy).
    Differentiable by the implicit function theorem (w.r.t. Lame parameters, masses, gravity,
    rest shape, pinned positions)."""
    if not isinstance(model, FEMModel):
        raise TypeError(f"model must be a FEMModel, got {type(model).__name__}")
    x_init = model.rest if x_init is None else check_like(x_init, "x_init", tuple(model.rest.shape), model.rest,
                                                          finite=True)
    newton_iters = as_int(newton_iters, "newton_iters", minimum=1)
    size = float((model.rest.detach().amax(0) - model.rest.detach().amin(0)).max())
    if tol is None:
        tol = (1e-12 if x_init.dtype == torch.float64 else 1e-6) * max(size, 1e-12)
    tensors = [getattr(model, f) for f in _TENSOR_FIELDS]
    return _ImplicitSolve.apply(model, 1.0, True, newton_iters, tol, x_init.detach(), x_init,
                                torch.zeros_like(x_init), *tensors)
