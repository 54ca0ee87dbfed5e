"""Linear tetrahedral FEM: stable Neo-Hookean and corotated linear elasticity, damping, gravity,
ground contact, pinned vertices; a semi-implicit step (Warp kernels, torch twin) and an implicit
backward-Euler step / static solve by Newton whose backward pass is an adjoint solve.

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

from .._kernels import Out, kernel_op, mat, vec
from .._kernels.fem import COROTATED, NEOHOOKEAN, POLAR_ITERS, integrate_vertices, tet_forces
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
    """x: (N, 3) vertex positions (m); v: (N, 3) velocities (m/s)."""

    x: torch.Tensor
    v: torch.Tensor


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
    return FEMModel(model.rest, model.tets, d["Dm_inv"], d["volume"], d["mass"], d["lame"], d["damping"],
                    d["gravity"], d["planes"], d["contact"], model.pinned, model.material)


def _residual(model, x, x0, v0, dt, static):
    """Backward-Euler residual scaled by dt^2 (or the static force balance), pinned rows
    ``m (x - x0)``: zero at the step's solution."""
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


def _jacobian(model, x, x0, dt, static):
    """Sparse d(residual)/dx at x as a scipy CSR matrix (3N x 3N)."""
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


def _sparse_solve(A, b: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    import scipy.sparse.linalg as spla

    M = A.T.tocsc() if transpose else A
    sol = spla.spsolve(M, b.detach().double().cpu().numpy().reshape(-1))
    return torch.as_tensor(np.asarray(sol), dtype=b.dtype, device=b.device).reshape(b.shape)


def _newton(model, x0, v0, dt, static, x_init, iters, tol):
    x = x_init.detach().clone()
    max_step = 0.5 * float((model.rest.detach().amax(0) - model.rest.detach().amin(0)).max())
    info = {"iterations": 0, "converged": False}
    r = _residual(model, x, x0, v0, dt, static)
    damp, last = 1.0, float("inf")
    for it in range(iters):
        A = _jacobian(model, x, x0, dt, static)
        dx = _sparse_solve(A, -r)
        # full Newton steps (a residual-norm line search rejects good steps: the residual of a
        # bending beam grows on the first, correct step), limited to max_step per vertex and
        # halved while the residual is not finite
        dmax = float(dx.abs().max())
        # damping when the updates stop contracting (Newton cycling around the friction law's
        # curved region); relaxed again while they contract
        if it >= 2 and dmax > (1.0 - 0.25 * damp) * last:  # under a quarter of the expected progress
            damp = max(damp * 0.5, 1.0 / 16)
        elif dmax < 0.1 * last:  # fast contraction: back towards full steps
            damp = min(damp * 2.0, 1.0)
        last = dmax
        step = min(damp, max_step / dmax) if dmax > 0 else 1.0
        for _ in range(30):
            xn = x + step * dx
            r = _residual(model, xn, x0, v0, dt, static)
            if bool(torch.isfinite(r).all()):
                break
            step *= 0.5
        x = xn
        info["iterations"] = it + 1
        if dmax * step <= tol:
            info["converged"] = True
            break
    if not info.get("converged"):
        warnings.warn(f"Newton did not converge in {iters} iterations (last update {dmax * step:.3g} m > tol "
                      f"{tol:.3g} m); the adjoint assumes a solution. Try a smaller dt, more newton_iters or a "
                      "larger friction_smoothing", RuntimeWarning, stacklevel=3)
    return x, info


class _ImplicitSolve(torch.autograd.Function):
    """x* with residual(x*, x0, v0, theta) = 0. Backward: implicit function theorem,
    A^T lam = g at x*, then grads = -lam^T d(residual)/d(x0, v0, theta) (one adjoint solve with
    the same system matrix; the Newton iterations are not differentiated)."""

    @staticmethod
    def forward(ctx, model, dt, static, iters, tol, x_init, x0, v0, *tensors):
        m = _with(model, [t.detach() for t in tensors])
        x, info = _newton(m, x0.detach(), v0.detach(), dt, static, x_init, iters, tol)
        ctx.model, ctx.dt, ctx.static = model, dt, static
        ctx.info = info
        ctx.save_for_backward(x, x0, v0, *tensors)
        return x

    @staticmethod
    def backward(ctx, g):
        x, x0, v0, *tensors = ctx.saved_tensors
        model = _with(ctx.model, [t.detach() for t in tensors])
        A = _jacobian(model, x, x0, ctx.dt, ctx.static)
        lam = _sparse_solve(A, g, transpose=True)
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
    by Newton's method (sparse direct solves, backtracking on the residual), ``v = (x - x0)/dt``.
    Unconditionally stable for stiff materials.

    Backward: implicit function theorem (one adjoint sparse solve with the transposed system
    matrix at the solution); exact for the solution, independent of how Newton got there.

    Newton takes full steps (capped at half the body size; no line search: a residual-norm line
    search rejects good steps of a bending beam). With sliding ground contact the regularised
    friction law is very curved below ``friction_smoothing`` and full steps can cycle; Newton then
    halves its step (down to 1/16) while the updates stop contracting, which converges linearly.
    If it still has not converged after ``newton_iters`` a ``RuntimeWarning`` says so (the
    adjoint then differentiates a non-solution). Cost: the
    system matrix is assembled from per-tet 9x9 stress derivatives (one forward-mode pass) and
    factorised by SciPy's sparse LU (CPU; tensors on another device go through the host).
    ``tol``: stop when the Newton update is below ``tol`` m (default 1e-10 for float64, 1e-6
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
    ``x_init`` (default: the rest shape), by Newton's method. Differentiable by the implicit
    function theorem (w.r.t. Lame parameters, masses, gravity, rest shape, pinned positions)."""
    x_init = model.rest if x_init is None else check_like(x_init, "x_init", tuple(model.rest.shape), model.rest,
                                                          finite=True)
    newton_iters = as_int(newton_iters, "newton_iters", minimum=1)
    size = float((model.rest.detach().amax(0) - model.rest.detach().amin(0)).max())
    if tol is None:
        tol = (1e-12 if x_init.dtype == torch.float64 else 1e-6) * max(size, 1e-12)
    tensors = [getattr(model, f) for f in _TENSOR_FIELDS]
    return _ImplicitSolve.apply(model, 1.0, True, newton_iters, tol, x_init.detach(), x_init,
                                torch.zeros_like(x_init), *tensors)
