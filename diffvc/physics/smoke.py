"""Eulerian smoke: incompressible flow on a MAC grid (2-D and 3-D) carrying a passive density.

Grid. ``resolution = (nx, ny[, nz])`` cells of size ``dx`` (m); arrays are indexed ``[x, y(, z)]``
with y up (buoyancy acts along +y). The density lives at cell centres, shape ``resolution``.
Velocity component ``a`` (m/s) lives on the faces normal to axis ``a``: with ``boundary="wall"``
(a closed box, free-slip walls) it has ``n_a + 1`` entries along axis ``a`` and the wall faces
are zero; with ``boundary="periodic"`` it has ``n_a`` entries (face ``i`` sits between cells
``i - 1`` and ``i``, wrapping).

One step (``model.step(state, dt, control)``), in DiffTaichi's smoke order:

1. **advect** the velocity by itself, semi-Lagrangian: every sample point is traced back
   through the velocity field (midpoint rule, ``backtrace="rk2"``, or one Euler step,
   ``"euler"``) and the field is interpolated (multi-linearly) there; ``advection=
   "maccormack"`` adds MacCormack's forward-backward error correction, clamped to the values of
   the interpolation stencil (the limiter keeps it stable);
2. **forces**: buoyancy ``buoyancy * density`` (m/s^2) on the vertical faces, plus the control
   (per-face accelerations, m/s^2);
3. **project**: solve ``-lap(phi) = -div(u)`` (Neumann at walls, or periodic) and set
   ``u -= grad(phi)``, which makes ``u`` discretely divergence free up to the solver tolerance;
4. **advect** the density by the projected velocity.

Pressure solve (``projection="pcg"``, the default). Preconditioned conjugate gradients on the 5-point (7-point) Laplacian, to a
relative residual ``tol`` (so ``|div u| <= tol |div u_before|``). The preconditioner
``"spectral"`` is the exact pseudo-inverse of the obstacle-free box Laplacian by separable
eigen-decomposition (a DCT for walls, a Fourier basis for periodic boundaries) -- on the plain
box PCG then converges in one iteration; ``None`` is plain CG. The solve is differentiated
**implicitly**: its backward is one more PCG solve with the same
symmetric operator applied to the incoming gradient -- never a replay of CG's iterations -- so
the gradient is that of the exact solution, whatever the number of iterations.

Fixed-work projection (``projection="jacobi"``): exactly ``jacobi_iters`` Jacobi sweeps from
``phi = 0``, ``phi <- D^-1 (b + N phi)`` with ``A = D - N`` (``D`` the neighbour counts / dx^2),
the mean removed before and after -- DiffTaichi's smoke projection (10 sweeps), for comparisons at
equal work. The velocity is then only approximately divergence free (the sweeps damp the short
wavelengths of the divergence; long ones remain). The map ``b -> phi`` is linear and symmetric
(``J_K = sum_{k<K} (D^-1 N)^k D^-1``), so its exact gradient -- backpropagation through the sweeps
-- is the same ``K`` sweeps applied to the incoming gradient, which is how the backward runs.

Gradient contract. Semi-Lagrangian interpolation is piecewise multilinear: the gradient w.r.t.
the velocity (through the traced-back positions) jumps when a traced point crosses a grid line
(the derivative of the active cell is taken) and is zero across clamped borders of wall boxes;
MacCormack's limiter contributes the gradient of the bound where it clamps. Everything else is
smooth. Gradients reach the initial density and velocity, the buoyancy and the controls.

In 2-D with the one-step Euler back-trace and semi-Lagrangian advection, ``step`` and
``segment`` run the whole step as recorded Warp launches (:func:`diffvc._kernels.smoke.
smoke_segment2d`: advection, forces with the divergence, Jacobi sweeps, gradient subtraction; only
the PCG solve is torch), ``n`` steps as one autograd node whose backward runs hand-written adjoint
passes in reverse (``recompute=True`` re-runs the forward in backward: a checkpoint segment). On
CPU each pass is split into row ranges on torch's threads (``torch.get_num_threads()``, when each
range gets at least 2,048 cells): the advection adjoints scatter into per-range buffers summed
afterwards, the Jacobi sweeps of each range run on a window overlapping its neighbours by
``jacobi_iters - 1`` rows, and the torch PCG solve runs on one thread meanwhile. In
other configurations with the Euler back-trace (MacCormack, 3-D) the semi-Lagrangian passes run
as Warp kernels (bilinear :func:`~diffvc._kernels.smoke.advect2d`, trilinear
:func:`~diffvc._kernels.smoke.advect3d`; Warp's adjoints) and the rest is torch; the RK2
back-trace runs in torch. ``step_torch`` is the plain-torch twin (``grid_sample`` interpolation; values
and gradients checked against the kernels). The PCG projection is torch (FFT / dense separable
transforms for the preconditioner); MacCormack's limiter (stencil bounds) is torch. Reverse mode only: neither the kernel
nor torch's ``grid_sample`` has a forward-mode derivative, so ``rollout_jvp`` does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .._kernels import Out, kernel_op
from .._validate import check_dt, check_float, check_same_dtype
from .._kernels.smoke import Jacobi2D, advect2d, advect3d, smoke_segment2d

__all__ = ["SmokeModel", "SmokeState"]

_BOUNDARIES = ("wall", "periodic")
_ADVECTION = ("semi_lagrangian", "maccormack")
_BACKTRACE = ("rk2", "euler")
_PROJECTION = ("pcg", "jacobi")
_GRID_CACHE: dict = {}


@dataclass(frozen=True)
class SmokeState:
    """density: ``resolution`` cell-centred values; velocity: tuple of d face arrays (m/s),
    component a of shape ``resolution`` with ``n_a + 1`` along axis a for walls (``n_a`` for
    periodic boundaries)."""

    density: torch.Tensor
    velocity: tuple

    def __post_init__(self):
        # checked on construction: floating, finite, one dtype, face arrays of the density's grid
        # (n_a + 1 or n_a cells along their own axis; sizes against a model are checked by its step)
        check_float(self.density, "density", coerce=False)
        d = self.density.dim()
        if d not in (2, 3):
            raise ValueError(f"density must be a 2-D or 3-D grid, got shape {tuple(self.density.shape)}")
        if not isinstance(self.velocity, (tuple, list)) or len(self.velocity) != d:
            raise TypeError(f"velocity must be a tuple of {d} face arrays, got {type(self.velocity).__name__}")
        object.__setattr__(self, "velocity", tuple(self.velocity))
        for a, u in enumerate(self.velocity):
            name = f"velocity[{a}]"
            check_float(u, name, coerce=False)
            n = tuple(self.density.shape)
            ok = [n[:a] + (n[a] + extra,) + n[a + 1:] for extra in (1, 0)]
            if tuple(u.shape) not in ok:
                raise ValueError(f"{name} must have shape {ok[0]} (walls) or {ok[1]} (periodic), got {tuple(u.shape)}")
            check_same_dtype(("density", self.density), (name, u))


# ----------------------------------------------------------------------------------------------
# the implicitly differentiated pressure solve
# ----------------------------------------------------------------------------------------------

class _Solve(torch.autograd.Function):
    """x = A^+ b for a symmetric PSD operator: the backward pass is the same solve."""

    @staticmethod
    def forward(b, solver):
        return solver.solve(b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.solver = inputs[1]

    @staticmethod
    def backward(ctx, g):
        return ctx.solver.solve(g), None


class _Poisson:
    """PCG for ``A phi = b``, ``A = -div grad`` on the grid of a :class:`SmokeModel`."""

    def __init__(self, model: "SmokeModel", dtype, device):
        import dataclasses

        # the grid operators only (no buoyancy tensor, which may carry an autograd graph)
        self.m = dataclasses.replace(model, buoyancy=0.0)
        self.stats = {"iterations": 0}
        self.basis = None
        self.fourier = None
        self.jacobi = None
        self.dtype, self.device = dtype, device
        if model.projection == "jacobi":
            # the diagonal of A: (number of neighbours) / dx^2 (walls: no neighbour across a wall)
            d = len(model.resolution)
            D = 0.0
            for a, n in enumerate(model.resolution):
                c = torch.full((n,), 2.0, dtype=dtype, device=device)
                if model.boundary == "wall":
                    c[0] = c[-1] = 1.0
                D = D + c.reshape([-1 if k == a else 1 for k in range(d)])
            self.jacobi = D / model.dx ** 2
        elif model.preconditioner == "spectral" and model.boundary == "periodic":
            # the periodic Laplacian is diagonal in the Fourier basis: eigenvalues
            # sum_a (2 - 2 cos(2 pi k_a / n_a)) / dx^2 on rfftn's frequency grid
            d = len(model.resolution)
            Lam = 0.0
            for a, n in enumerate(model.resolution):
                k = torch.arange(n // 2 + 1 if a == d - 1 else n, dtype=torch.float64)
                lam = (2.0 - 2.0 * torch.cos(2.0 * torch.pi * k / n)) / model.dx ** 2
                Lam = Lam + lam.reshape([-1 if j == a else 1 for j in range(d)])
            inv = torch.where(Lam > 1e-9 * Lam.max(), 1.0 / Lam, torch.zeros_like(Lam))
            self.fourier = inv.to(dtype=dtype, device=device)
        elif model.preconditioner == "spectral":
            # walls: Neumann Laplacian, separable; each axis' eigenvectors (a DCT-II basis) by eigh
            qs, lams = [], []
            for a, n in enumerate(model.resolution):
                T = _laplacian_1d(n, model.boundary, dtype=torch.float64) / model.dx ** 2
                lam, Q = torch.linalg.eigh(T)
                qs.append(Q.to(dtype=dtype, device=device))
                lams.append(lam.to(dtype=dtype, device=device))
            d = len(model.resolution)
            Lam = sum(l.reshape([-1 if k == a else 1 for k in range(d)]) for a, l in enumerate(lams))
            inv = torch.where(Lam > 1e-9 * Lam.max(), 1.0 / Lam, torch.zeros_like(Lam))
            self.basis = (qs, inv)

    def apply(self, phi):
        return -self.m._div(self.m._grad(phi))

    def precondition(self, r):
        if self.fourier is not None:
            return torch.fft.irfftn(torch.fft.rfftn(r) * self.fourier, s=r.shape)
        if self.basis is None:
            return r - r.mean()
        qs, inv = self.basis
        y = r
        for a, Q in enumerate(qs):
            y = torch.movedim(torch.tensordot(y, Q, dims=([a], [0])), -1, a)      # Q^T along axis a
        y = y * inv
        for a, Q in enumerate(qs):
            y = torch.movedim(torch.tensordot(y, Q, dims=([a], [1])), -1, a)      # Q along axis a
        return y

    def jacobi_warp(self):
        """The 2-D fixed-sweep Jacobi solve as recorded Warp launches (same map as :meth:`solve`)."""
        if not hasattr(self, "_jacobi_warp"):
            m = self.m
            self._jacobi_warp = Jacobi2D(*m.resolution, m.jacobi_iters, m.dx, m.boundary == "periodic",
                                         self.dtype, self.device)
        return self._jacobi_warp

    def solve(self, b):
        m = self.m
        b = b - b.mean()                      # the consistent part (constants are the null space)
        if self.jacobi is not None:
            # fixed sweeps from 0: x_{k+1} = x_k + (b - A x_k) / D = D^-1 (b + N x_k)
            x = torch.zeros_like(b)
            for _ in range(m.jacobi_iters):
                x = x + (b - self.apply(x)) / self.jacobi
            self.stats["iterations"] = m.jacobi_iters
            return x - x.mean()
        bn = float(torch.linalg.vector_norm(b))
        x = torch.zeros_like(b)
        if bn == 0.0:
            return x
        r = b
        z = self.precondition(r)
        p = z
        rz = (r * z).sum()
        it = 0
        for it in range(1, m.max_iter + 1):
            Ap = self.apply(p)
            pAp = (p * Ap).sum()
            if float(pAp) <= 0.0:
                break
            alpha = rz / pAp
            x = x + alpha * p
            r = r - alpha * Ap
            if float(torch.linalg.vector_norm(r)) <= m.tol * bn:
                break
            z = self.precondition(r)
            rz_new = (r * z).sum()
            p = z + (rz_new / rz) * p
            rz = rz_new
        self.stats["iterations"] = it
        return x - x.mean()


def _laplacian_1d(n: int, boundary: str, dtype=torch.float64) -> torch.Tensor:
    """The 1-D operator -d2/dx2 (unit spacing) on n cells: Neumann ends for walls, wrapping for periodic."""
    T = 2.0 * torch.eye(n, dtype=dtype) - torch.diag(torch.ones(n - 1, dtype=dtype), 1) \
        - torch.diag(torch.ones(n - 1, dtype=dtype), -1)
    if boundary == "periodic":
        if n == 1:
            return torch.zeros(1, 1, dtype=dtype)
        T[0, -1] -= 1.0
        T[-1, 0] -= 1.0
        if n == 2:
            T = torch.tensor([[2.0, -2.0], [-2.0, 2.0]], dtype=dtype)
    else:
        T[0, 0] = 1.0
        T[-1, -1] = 1.0
        if n == 1:
            T = torch.zeros(1, 1, dtype=dtype)
    return T


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmokeModel:
    """A MAC grid, its boundary, and the smoke's parameters (see the module docstring).

    resolution: (nx, ny) or (nx, ny, nz) cells; dx: cell size (m); boundary: ``"wall"`` or
    ``"periodic"``; buoyancy: scalar tensor, upward acceleration per unit density (m/s^2);
    advection: ``"semi_lagrangian"`` or ``"maccormack"``; backtrace: ``"rk2"`` or ``"euler"``;
    tol: relative residual of the pressure solve; max_iter: PCG iteration cap;
    preconditioner: ``"spectral"`` or ``None``; projection: ``"pcg"`` (to the tolerance) or
    ``"jacobi"`` (exactly ``jacobi_iters`` Jacobi sweeps from zero, DiffTaichi's fixed work; the
    result is *not* divergence free, see the module docstring).
    """

    resolution: tuple
    dx: float = 1.0
    boundary: str = "wall"
    buoyancy: torch.Tensor = field(default_factory=lambda: torch.tensor(0.0))
    advection: str = "semi_lagrangian"
    backtrace: str = "rk2"
    tol: float = 1e-6
    max_iter: int = 500
    preconditioner: str | None = "spectral"
    projection: str = "pcg"
    jacobi_iters: int = 10

    def __post_init__(self):
        res = self.resolution
        if (not isinstance(res, (tuple, list)) or len(res) not in (2, 3)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in res)):
            raise ValueError(f"resolution must be a tuple of 2 or 3 ints >= 2, got {res!r}")
        object.__setattr__(self, "resolution", tuple(int(n) for n in res))
        if (isinstance(self.dx, bool) or not isinstance(self.dx, (int, float)) or not (self.dx > 0)
                or self.dx == float("inf")):
            raise ValueError(f"dx must be a finite number > 0 (m), got {self.dx!r}")
        if self.boundary not in _BOUNDARIES:
            raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {self.boundary!r}")
        if self.advection not in _ADVECTION:
            raise ValueError(f"advection must be one of {_ADVECTION}, got {self.advection!r}")
        if self.backtrace not in _BACKTRACE:
            raise ValueError(f"backtrace must be one of {_BACKTRACE}, got {self.backtrace!r}")
        b = self.buoyancy
        if not isinstance(b, torch.Tensor):
            b = torch.tensor(float(b))
            object.__setattr__(self, "buoyancy", b)
        if b.dim() != 0 or not torch.isfinite(b.detach()):
            raise ValueError("buoyancy must be a finite scalar")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (0 < self.tol < 1):
            raise ValueError(f"tol must be in (0, 1), got {self.tol!r}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if self.preconditioner not in ("spectral", None):
            raise ValueError(f"preconditioner must be 'spectral' or None, got {self.preconditioner!r}")
        if self.projection not in _PROJECTION:
            raise ValueError(f"projection must be one of {_PROJECTION}, got {self.projection!r}")
        if (not isinstance(self.jacobi_iters, int) or isinstance(self.jacobi_iters, bool)
                or self.jacobi_iters < 1):
            raise ValueError(f"jacobi_iters must be an int >= 1, got {self.jacobi_iters!r}")
        key = (self.resolution, float(self.dx), self.boundary, self.preconditioner, self.tol, self.max_iter,
               self.projection, self.jacobi_iters)
        if key not in _GRID_CACHE:
            if len(_GRID_CACHE) > 16:
                _GRID_CACHE.clear()
            _GRID_CACHE[key] = {}
        # per grid configuration: sample points and pressure solvers (models that differ only in
        # buoyancy or advection share them, e.g. one model per optimisation iteration)
        object.__setattr__(self, "_solvers", _GRID_CACHE[key])

    # ------------------------------------------------------------------ shapes and states
    @property
    def dim(self) -> int:
        return len(self.resolution)

    def face_shape(self, a: int) -> tuple:
        """Shape of velocity component ``a``."""
        extra = 1 if self.boundary == "wall" else 0
        return tuple(n + (extra if k == a else 0) for k, n in enumerate(self.resolution))

    def state(self, density=None, velocity=None, dtype=torch.float32, device="cpu") -> SmokeState:
        """A state (zeros where not given); tensors keep their autograd history."""
        if density is None:
            density = torch.zeros(self.resolution, dtype=dtype, device=device)
        if (not isinstance(density, torch.Tensor) or not density.is_floating_point()
                or tuple(density.shape) != self.resolution or not bool(torch.isfinite(density.detach()).all())):
            raise ValueError(f"density must be a finite floating tensor of shape {self.resolution}")
        dtype, device = density.dtype, density.device
        if velocity is None:
            velocity = tuple(torch.zeros(self.face_shape(a), dtype=dtype, device=device) for a in range(self.dim))
        return SmokeState(density, tuple(velocity))

    def _check_state(self, state: SmokeState) -> None:
        d = getattr(state, "density", None)
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != self.resolution or not d.is_floating_point():
            raise ValueError(f"state.density must be a floating tensor of shape {self.resolution}, "
                             f"got {tuple(getattr(d, 'shape', ()))}")
        vel = getattr(state, "velocity", None)
        if not isinstance(vel, (tuple, list)) or len(vel) != self.dim:
            raise ValueError(f"state.velocity must be a tuple of {self.dim} face arrays")
        for a, u in enumerate(vel):
            if not isinstance(u, torch.Tensor) or tuple(u.shape) != self.face_shape(a):
                raise ValueError(f"state.velocity[{a}] must have shape {self.face_shape(a)}, "
                                 f"got {tuple(getattr(u, 'shape', ()))}")
            if u.dtype != d.dtype or u.device != d.device:
                raise ValueError(f"state.velocity[{a}] must match state.density's dtype/device")

    # ------------------------------------------------------------------ discrete operators
    def _div(self, u: Sequence[torch.Tensor]) -> torch.Tensor:
        """Cell-centred divergence (1/s)."""
        out = 0.0
        for a, ua in enumerate(u):
            if self.boundary == "wall":
                out = out + (ua.narrow(a, 1, ua.shape[a] - 1) - ua.narrow(a, 0, ua.shape[a] - 1))
            else:
                out = out + (ua.roll(-1, a) - ua)
        return out / self.dx

    def _grad(self, phi: torch.Tensor) -> tuple:
        """Face-centred gradient; zero on wall faces."""
        out = []
        for a in range(self.dim):
            if self.boundary == "wall":
                n = phi.shape[a]
                g = (phi.narrow(a, 1, n - 1) - phi.narrow(a, 0, n - 1)) / self.dx
                pad = [0, 0] * self.dim
                pad[2 * (self.dim - 1 - a)] = 1
                pad[2 * (self.dim - 1 - a) + 1] = 1
                out.append(F.pad(g, pad))
            else:
                out.append((phi - phi.roll(1, a)) / self.dx)
        return tuple(out)

    def _solver(self, dtype, device) -> _Poisson:
        key = ("solver", dtype, str(device))
        s = self._solvers.get(key)
        if s is None:
            s = _Poisson(self, dtype, device)
            self._solvers[key] = s
        return s

    def project(self, velocity: Sequence[torch.Tensor]) -> tuple:
        """Make a face velocity field divergence free: ``u - grad(phi)`` with
        ``-lap(phi) = -div(u)`` solved by PCG (implicitly differentiated)."""
        u = tuple(velocity)
        solver = self._solver(u[0].dtype, u[0].device)
        phi = _Solve.apply(-self._div(u), solver)
        g = self._grad(phi)
        return tuple(ua - ga for ua, ga in zip(u, g))

    def divergence(self, velocity: Sequence[torch.Tensor]) -> torch.Tensor:
        """Cell-centred divergence of a face velocity field (1/s)."""
        return self._div(tuple(velocity))

    # ------------------------------------------------------------------ interpolation
    # Coordinates are kept as one tensor per axis (cell units, cell centre i at i): torch's CPU
    # kernels broadcast badly over a trailing dimension of size 2 or 3.
    def _offset(self, a: int | None) -> list:
        """Coordinate (in cell units) of sample 0 of a field along each axis."""
        return [(-0.5 if k == a else 0.0) for k in range(self.dim)]

    def _points(self, a: int | None, dtype, device) -> list:
        """Sample points of the density (a = None) or velocity component a: d tensors of the field's shape."""
        key = ("points", a, dtype, str(device))
        pts = self._solvers.get(key)
        if pts is None:
            shape = self.resolution if a is None else self.face_shape(a)
            axes = [torch.arange(n, dtype=dtype, device=device) + o for n, o in zip(shape, self._offset(a))]
            pts = [t.contiguous() for t in torch.meshgrid(*axes, indexing="ij")]
            self._solvers[key] = pts
        return pts

    def _grid(self, f: torch.Tensor, c: Sequence[torch.Tensor], a: int | None):
        """``grid_sample`` input and normalised grid for sampling field ``f`` at points ``c``."""
        off = self._offset(a)
        g = []
        if self.boundary == "periodic":
            for k in range(self.dim):
                n = f.shape[k]
                x = c[k] - off[k]
                x = x - torch.floor(x * (1.0 / n)) * n          # wrap into [0, n) (faster than remainder)
                g.append(x * (2.0 / n) - 1.0)
            fp = F.pad(f[None, None], [0, 1] * self.dim, mode="circular")
        else:
            for k in range(self.dim):
                g.append((c[k] - off[k]) * (2.0 / (f.shape[k] - 1)) - 1.0)
            fp = f[None, None]
        return fp, torch.stack(g[::-1], -1)[None]

    def _sample(self, f: torch.Tensor, c: Sequence[torch.Tensor], a: int | None, mode: str = "bilinear") -> torch.Tensor:
        """Interpolate field ``f`` (density-like if ``a`` is None, else velocity component a) at
        points ``c`` (d tensors, cell units); clamped at walls, wrapped when periodic."""
        fp, g = self._grid(f, c, a)
        return F.grid_sample(fp, g, mode=mode, padding_mode="border", align_corners=True)[0, 0]

    def _centre_avg(self, ub: torch.Tensor, b: int) -> torch.Tensor:
        if self.boundary == "wall":
            n = ub.shape[b]
            return 0.5 * (ub.narrow(b, 1, n - 1) + ub.narrow(b, 0, n - 1))
        return 0.5 * (ub + ub.roll(-1, b))

    def _face_avg(self, c: torch.Tensor, a: int) -> torch.Tensor:
        if self.boundary == "wall":
            n = c.shape[a]
            p = torch.cat([c.narrow(a, 0, 1), c, c.narrow(a, n - 1, 1)], a)
            return 0.5 * (p.narrow(a, 1, n + 1) + p.narrow(a, 0, n + 1))
        return 0.5 * (c + c.roll(1, a))

    def _velocity_on(self, u, a: int | None) -> list:
        """Velocity components at the sample points of field ``a`` (cell centres if None): the
        multilinear interpolation there reduces to averages of 2 or 4 neighbours."""
        out = []
        for b, ub in enumerate(u):
            if a is None:
                out.append(self._centre_avg(ub, b))
            elif b == a:
                out.append(ub)
            else:
                out.append(self._face_avg(self._centre_avg(ub, b), a))
        return out

    def _backtrace(self, u, a: int | None, dt: float, dtype, device) -> list:
        c = self._points(a, dtype, device)
        s = dt / self.dx
        vel = self._velocity_on(u, a)
        if self.backtrace == "euler":
            return [ck - s * vk for ck, vk in zip(c, vel)]
        mid = [ck - (0.5 * s) * vk for ck, vk in zip(c, vel)]
        return [ck - s * self._sample(ub, mid, b) for b, (ck, ub) in enumerate(zip(c, u))]

    def _stencil_bounds(self, f: torch.Tensor, c: Sequence[torch.Tensor], a: int | None):
        """Min and max of the 2^d values the interpolation of ``f`` at ``c`` blends."""
        d = self.dim
        x = f[None, None]
        mode = "circular" if self.boundary == "periodic" else "replicate"
        xp = F.pad(x, [1, 1] * d, mode=mode)
        pool = F.max_pool2d if d == 2 else F.max_pool3d
        mx = pool(xp, 2, stride=1)[0, 0]
        mn = -pool(-xp, 2, stride=1)[0, 0]
        off = self._offset(a)
        g = []
        for k in range(d):
            n = f.shape[k]
            idx = c[k].detach() - off[k]
            if self.boundary == "periodic":
                idx = torch.remainder(idx, float(n))
            else:
                idx = idx.clamp(0.0, n - 1.0)
            g.append((torch.floor(idx) + 1.0) * (2.0 / n) - 1.0)   # pooled index of the low corner
        g = torch.stack(g[::-1], -1)[None]
        lo = F.grid_sample(mn[None, None], g, mode="nearest", padding_mode="border", align_corners=True)[0, 0]
        hi = F.grid_sample(mx[None, None], g, mode="nearest", padding_mode="border", align_corners=True)[0, 0]
        return lo, hi

    def _semi_lagrangian(self, f, u, dt: float, a: int | None, warp: bool):
        """One semi-Lagrangian pass; returns (advected field, traced points or None)."""
        if warp and self.backtrace == "euler":
            kernel = advect2d if self.dim == 2 else advect3d
            out = kernel_op(kernel, tuple(f.shape),
                            [f.contiguous(), *(ub.contiguous() for ub in u), -1 if a is None else a,
                             1 if self.boundary == "periodic" else 0, *self.resolution,
                             float(dt / self.dx)], [Out(tuple(f.shape))])
            return out, None
        src = self._backtrace(u, a, dt, f.dtype, f.device)
        return self._sample(f, src, a), src

    def _advect(self, f: torch.Tensor, u, dt: float, a: int | None, warp: bool = False) -> torch.Tensor:
        out, src = self._semi_lagrangian(f, u, dt, a, warp)
        if self.advection == "maccormack":
            if a is not None:
                # wall faces carry no flow (their own trace sits exactly on the clamp border,
                # a kink of the interpolation): zero them before tracing back
                out = self._wall_mask(out, a)
            back = self._semi_lagrangian(out, u, -dt, a, warp)[0]
            corrected = out + 0.5 * (f - back)
            if src is None:
                src = self._backtrace(u, a, dt, f.dtype, f.device)
            lo, hi = self._stencil_bounds(f, src, a)
            out = torch.maximum(torch.minimum(corrected, hi), lo)
        return out

    def _wall_mask(self, ua: torch.Tensor, a: int) -> torch.Tensor:
        if self.boundary != "wall":
            return ua
        n = ua.shape[a]
        inner = ua.narrow(a, 1, n - 2)
        pad = [0, 0] * self.dim
        pad[2 * (self.dim - 1 - a)] = 1
        pad[2 * (self.dim - 1 - a) + 1] = 1
        return F.pad(inner, pad)

    def _buoyancy(self, density: torch.Tensor) -> torch.Tensor:
        """Upward acceleration on the y faces (m/s^2): buoyancy times the face-averaged density."""
        a = 1
        if self.boundary == "wall":
            n = density.shape[a]
            avg = 0.5 * (density.narrow(a, 1, n - 1) + density.narrow(a, 0, n - 1))
            pad = [0, 0] * self.dim
            pad[2 * (self.dim - 1 - a)] = 1
            pad[2 * (self.dim - 1 - a) + 1] = 1
            avg = F.pad(avg, pad)
        else:
            avg = 0.5 * (density + density.roll(1, a))
        return self.buoyancy.to(density) * avg

    # ------------------------------------------------------------------ the step (contract)
    def step(self, state: SmokeState, dt: float, control=None) -> SmokeState:
        """Advance the smoke by ``dt`` seconds (advect velocity, forces, project, advect density).
        In 2-D with ``backtrace="euler"`` and semi-Lagrangian advection the whole step runs as
        Warp launches (:meth:`segment` with ``n = 1``); other Euler configurations (MacCormack,
        3-D) run the semi-Lagrangian passes as Warp kernels and the rest in torch (module
        docstring).

        control: ``None`` or a tuple of d per-face accelerations (m/s^2), shaped like the
        velocity components, held over the step. Returns a new :class:`SmokeState`.
        """
        if self._fused():
            return self.segment(state, dt, 1, control)[0]
        return self._step(state, dt, control, warp=True)

    def _fused(self) -> bool:
        return self.dim == 2 and self.backtrace == "euler" and self.advection == "semi_lagrangian"

    def segment(self, state: SmokeState, dt: float, n: int, control=None, recompute: bool = False,
                return_all: bool = False):
        """``n`` steps as one autograd node (the contract's optional fused capability).

        Fused Warp launches in 2-D with ``backtrace="euler"`` and ``advection="semi_lagrangian"``
        (see the module docstring); otherwise ``n`` calls of :meth:`step` (under
        ``torch.utils.checkpoint`` when ``recompute``). ``control``: held over the segment.
        ``recompute``: keep only the segment's input and re-run it in backward. Returns
        ``(final_state, states)``, ``states`` the states after each step if ``return_all`` (else
        empty). Gradients equal those of ``n`` calls of :meth:`step`.
        """
        self._check_state(state)
        self._check_control(control)
        dt = check_dt(dt)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if n == 0:
            return state, []
        if not self._fused():
            return self._segment_steps(state, dt, n, control, recompute, return_all)
        d = state.density
        solver = self._solver(d.dtype, d.device)
        solve = solver.jacobi_warp() if self.projection == "jacobi" else solver.solve
        c = control if control is not None else tuple(
            torch.zeros(self.face_shape(a), dtype=d.dtype, device=d.device) for a in range(2))
        out = smoke_segment2d(n, float(dt), self.dx, self.boundary == "periodic", d, state.velocity[0],
                              state.velocity[1], self.buoyancy.to(d).reshape(1), c[0].to(d), c[1].to(d), solve,
                              recompute=recompute and torch.is_grad_enabled(), return_all=return_all)
        final = SmokeState(out[0], (out[1], out[2]))
        if return_all:
            return final, [SmokeState(out[3][k], (out[4][k], out[5][k])) for k in range(n)]
        return final, []

    def _segment_steps(self, state, dt, n, control, recompute, return_all):
        def run(*ts):
            st = SmokeState(ts[0], tuple(ts[1:]))
            outs = []
            for _ in range(n):
                st = self._step(st, dt, control, warp=True)
                if return_all:
                    outs.append(st)
            return st, outs

        if recompute and torch.is_grad_enabled() and not return_all:
            import torch.utils.checkpoint as ckpt

            ts = ckpt.checkpoint(lambda *a: (lambda s: (s.density, *s.velocity))(run(*a)[0]),
                                 state.density, *state.velocity, use_reentrant=False)
            return SmokeState(ts[0], tuple(ts[1:])), []
        return run(state.density, *state.velocity)

    def step_torch(self, state: SmokeState, dt: float, control=None) -> SmokeState:
        """Plain-torch twin of :meth:`step` (``grid_sample`` interpolation throughout)."""
        return self._step(state, dt, control, warp=False)

    def _check_control(self, control) -> None:
        if control is not None:
            if not isinstance(control, (tuple, list)) or len(control) != self.dim or any(
                    not isinstance(c, torch.Tensor) or tuple(c.shape) != self.face_shape(a) for a, c in enumerate(control)):
                raise ValueError(f"control must be a tuple of {self.dim} face accelerations shaped like "
                                 f"the velocity components {[self.face_shape(a) for a in range(self.dim)]}")

    def _step(self, state: SmokeState, dt: float, control, warp: bool) -> SmokeState:
        self._check_state(state)
        u = tuple(state.velocity)
        self._check_control(control)
        dt = check_dt(dt)
        adv = [self._advect(ua, u, dt, a, warp) for a, ua in enumerate(u)]
        adv[1] = adv[1] + dt * self._buoyancy(state.density)
        if control is not None:
            adv = [ua + dt * ca.to(ua) for ua, ca in zip(adv, control)]
        adv = [self._wall_mask(ua, a) for a, ua in enumerate(adv)]
        u1 = self.project(adv)
        d1 = self._advect(state.density, u1, dt, None, warp)
        return SmokeState(d1, u1)
