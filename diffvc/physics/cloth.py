"""Cloth: a triangle-mesh membrane (StVK) with dihedral-angle bending, damping, gravity, pinned
vertices, and smoothed penalty contact with the ground, planes and analytic SDF obstacles.

Model (all forces in closed form, vectorised torch ops over triangles / hinges / vertices):

* **Membrane** (Saint Venant-Kirchhoff, per triangle of rest area ``A``): the deformation
  gradient ``F = Ds Dm^-1`` (3x2; ``Dm`` the rest edge matrix in the triangle's own 2-D frame),
  Green strain ``E = (F^T F - I) / 2`` and energy ``A (mu |E|_F^2 + lam/2 tr(E)^2)``; ``mu`` and
  ``lam`` are the membrane Lame parameters in N/m (thickness-integrated). Strain-rate damping
  adds the first Piola stress ``F (2 kd_stretch dE/dt)``.
* **Bending** (discrete shells): on every interior edge (a hinge of two triangles) the signed
  dihedral angle ``theta`` (0 when flat) has energy ``kb/2 w (theta - theta_rest)^2`` with the
  rest weight ``w = 3 |e|^2 / (A_1 + A_2)`` (1/1, so ``kb`` is in N m = J); bending damping
  ``-kd_bend w dtheta/dt grad(theta)``.
* **Gravity, drag, pins**: ``gravity`` (m/s^2) on free vertices; ``drag`` (1/s) divides the new
  velocity by ``1 + drag dt``; pinned vertices (``pins``) are kinematic: they stay where they
  are, or follow the control (targets ``(P, 3)`` reached at the end of the step).
* **Contact**: every vertex is a sphere of radius ``thickness`` against the planes
  ``(K, 4) (n, d)``, spheres ``(S, 4) (centre, radius)`` and axis-aligned boxes ``(B, 6)
  (centre, half size)``; the force is the rigid solver's smoothed penalty law
  (:mod:`diffvc.physics.rigid`: ``contact = (ke, kd, mu, friction_smoothing,
  contact_smoothing)``, same names, units and meaning) with the obstacle's analytic normal;
  obstacles are static (their parameters may require grad).
* **Moving rigid bodies**: spheres ``body_spheres (R, 4)`` (centre in the body frame, radius)
  and boxes ``body_boxes (R, 6)`` (centre in the body frame, half size) attached to rigid bodies
  (``body_sphere_ids``, ``body_box_ids``: body indices) take their pose from a
  :class:`~diffvc.physics.RigidBodyState` given with each step (``control=ClothControl(bodies=
  ...)``, or the state itself; e.g. a controller returning the frames of a rigid rollout). A
  vertex feels the same smoothed law with the obstacle's normal (the box's body-frame SDF
  normal rotated to the world) and its velocity relative to the body's at the vertex,
  ``v - (v_b + w_b x (x - x_b))``. One-way coupling: the bodies feel no reaction. Gradients
  reach the body states (``x``, ``q`` as given, unnormalised; ``v``, ``w``) and the shapes.

Integration is semi-implicit (symplectic) Euler: ``v' = (v + dt (f/m + g)) / (1 + drag dt)``,
``x' = x + dt v'``. It is explicit: ``dt`` must resolve the stiffest element,
``dt < ~ sqrt(m_vertex / mu)`` and ``sqrt(m_vertex / ke)`` for contact, and the damping terms
too: ``dt * c / m_vertex`` must stay well below 2 for every damping coefficient ``c`` a vertex
feels (bending damping acts with ``c ~ kd_bend w / h^2`` summed over the vertex's hinges, h the
triangle height: e.g. 0.0025 kg vertices 0.1 m apart went unstable at ``kd_bend = 3e-4`` N m s and
dt = 2.5 ms, measured). Without damping the
discrete energy oscillates but does not drift (tests/physics/test_cloth.py states the bound).

Gradient contract. Every force is a smooth function of positions, velocities and parameters
except (i) contact onset with ``contact_smoothing = 0`` (one-sided derivative at ``c = 0``; use
``contact_smoothing > 0`` when gradients w.r.t. the timing of contact matter, exactly as for rigid
bodies), (ii) the box SDF's normal, which jumps across the box's medial planes inside and its
edges outside (the gradient is that of the face whose normal is taken), and (iii) ``theta``
passing through +-pi (a folded-flat hinge; not reached in practice). Degenerate (zero-area)
triangles give finite forces (lengths are taken with a 1e-12 m^2 floor). A long, lightly damped
drape with contact can be chaotic: the gradient is still the exact derivative of the discrete
rollout, but that function is then rough at the scale of useful parameter steps (measured on the
cloth example's drape, 288 steps, float64, mu = 9 N/m, kb = 1.9e-3 N m, drag 0.5/s: a weighted sum
of positions has d/d(log mu) = -866 by autograd and by central differences with step 1e-6, but
+109 as the secant over +-1e-2). More damping, shorter horizons or truncated backpropagation
(``rollout(..., truncate=)``) make such gradients useful again.

Gradients reach the initial state, every floating model tensor (``mu``, ``lam``, ``kb``,
damping, mass, gravity, obstacle parameters, contact parameters) and the pin controls.
``step`` runs three Warp kernels (:mod:`diffvc._kernels.cloth`: triangle forces, hinge forces,
contact + velocity update; their adjoints give the gradients); ``step_torch`` is the plain-torch
twin (same function, checked to 1e-10; forward mode via ``rollout(..., backend="torch")``).
At most 8 planes, 8 spheres and 8 boxes, static and attached each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._kernels import Out, kernel_op, mat, vec
from .._kernels.cloth import (MAX_OBSTACLES, cloth_body_contact, cloth_hinge_forces, cloth_integrate,
                              cloth_triangle_forces)
from .._validate import (as_tensor, check_dt, check_faces, check_finite, check_float, check_index,
                         check_positive, check_same_dtype)
from ..geometry.transforms import quaternion_apply
from .particles import check_planes
from .rigid import RigidBodyState, _contact_law

__all__ = ["ClothModel", "ClothState", "ClothControl", "cloth_hinges"]

_EPS2 = 1e-12  # m^2 floor under squared lengths / doubled areas: finite at degenerate triangles


def _t(x, dtype, device, name: str = "value", nonneg: bool = False, positive: bool = False):
    """A model parameter as a finite tensor (its autograd history kept), >= 0 / > 0 if asked."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    check_finite(t, name)
    if positive or nonneg:
        check_positive(t, name, strict=positive)
    return t


def _rows(x, k, name, dtype, device):
    t = _t(x, dtype, device)
    if t.numel() % k:
        raise ValueError(f"{name} must have shape (N, {k}), got {tuple(t.shape)}")
    return t.reshape(-1, k)


@dataclass(frozen=True)
class ClothState:
    """x: (V, 3) vertex positions (m); v: (V, 3) vertex velocities (m/s) (a leading batch of
    environments, ``(B, V, 3)``, is allowed). Checked on construction: floating, finite, one
    shape and dtype."""

    x: torch.Tensor
    v: torch.Tensor

    def __post_init__(self):
        check_float(self.x, "x", shape=(..., "V", 3), coerce=False)
        check_float(self.v, "v", shape=tuple(self.x.shape), coerce=False)
        check_same_dtype(("x", self.x), ("v", self.v))


@dataclass(frozen=True)
class ClothControl:
    """What drives a cloth step from outside: ``pins`` -- targets ``(P, 3)`` (m) the pinned
    vertices reach at the end of the step, or None (they stay put); ``bodies`` -- the
    :class:`~diffvc.physics.RigidBodyState` (pose and velocity, e.g. one frame of a rigid
    rollout) of the bodies the model's body-attached obstacles belong to, or None. A plain
    tensor control means ``ClothControl(pins=control)``, a ``RigidBodyState`` control
    ``ClothControl(bodies=control)``."""

    pins: torch.Tensor | None = None
    bodies: RigidBodyState | None = None

    def __post_init__(self):
        if self.pins is not None:
            check_float(self.pins, "pins", shape=(..., "P", 3), coerce=False)
        if self.bodies is not None and not isinstance(self.bodies, RigidBodyState):
            raise TypeError(f"bodies must be a RigidBodyState or None, got {type(self.bodies).__name__}")


def cloth_hinges(faces: torch.Tensor) -> torch.Tensor:
    """Interior edges of a consistently oriented triangle mesh as hinges ``(H, 4)`` long:
    ``(a, b, c, d)`` with the shared edge ``a -> b`` as it runs in triangle ``(a, b, c)`` and
    ``d`` the opposite vertex of the other triangle ``(b, a, d)``. Edges shared by more than two
    triangles (non-manifold) have no hinge. Built on the one edge-face adjacency of
    :mod:`diffvc.geometry.topology`."""
    from ..geometry.topology import _interior_edge_corners

    faces = check_index(faces, "faces", 2 ** 62, shape=("F", 3), size_name="any vertex index")
    _, i, j = _interior_edge_corners(faces)
    flat = faces.reshape(-1)
    fi, ki = i // 3, i % 3
    fj, kj = j // 3, j % 3
    a = flat[3 * fi + ki]
    b = flat[3 * fi + (ki + 1) % 3]
    c = flat[3 * fi + (ki + 2) % 3]
    d = flat[3 * fj + (kj + 2) % 3]
    return torch.stack([a, b, c, d], 1)


def _tri_frames(X: torch.Tensor, faces: torch.Tensor):
    """Rest edge matrices in each triangle's own orthonormal 2-D frame: ``Dm (F, 2, 2)``."""
    x0, x1, x2 = X[faces[:, 0]], X[faces[:, 1]], X[faces[:, 2]]
    e1, e2 = x1 - x0, x2 - x0
    l1 = torch.sqrt((e1 * e1).sum(-1) + _EPS2)
    t1 = e1 / l1[:, None]
    n = torch.cross(e1, e2, dim=-1)
    t2 = torch.cross(n, t1, dim=-1)
    t2 = t2 / torch.sqrt((t2 * t2).sum(-1) + _EPS2)[:, None]
    row0 = torch.stack([l1, (e2 * t1).sum(-1)], -1)
    row1 = torch.stack([torch.zeros_like(l1), (e2 * t2).sum(-1)], -1)
    return torch.stack([row0, row1], -2)


def _inv2(M: torch.Tensor) -> torch.Tensor:
    a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
    det = a * d - b * c
    det = torch.where(det.abs() > 1e-20, det, torch.full_like(det, 1e-20))
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]


def _dihedral(x: torch.Tensor, hinges: torch.Tensor):
    """Signed dihedral angles ``theta (H,)`` (0 flat, > 0 when the hinge folds toward the normal
    side... as defined by atan2 below) and their gradients w.r.t. the 4 hinge vertices ``(H, 4, 3)``."""
    x0, x1, x2, x3 = (x[hinges[:, k]] for k in range(4))
    e = x1 - x0
    L2 = (e * e).sum(-1) + _EPS2
    L = torch.sqrt(L2)
    n1 = torch.cross(e, x2 - x0, dim=-1)
    n2 = torch.cross(x3 - x0, e, dim=-1)
    n1sq = (n1 * n1).sum(-1) + _EPS2
    n2sq = (n2 * n2).sum(-1) + _EPS2
    cosv = (n1 * n2).sum(-1)
    sinv = (torch.cross(n1, n2, dim=-1) * e).sum(-1) / L
    theta = torch.atan2(sinv, cosv)
    g2 = -n1 * (L / n1sq)[:, None]
    g3 = -n2 * (L / n2sq)[:, None]
    a1 = ((x2 - x0) * e).sum(-1) / L2
    a2 = ((x3 - x0) * e).sum(-1) / L2
    g0 = -(1 - a1)[:, None] * g2 - (1 - a2)[:, None] * g3
    g1 = -a1[:, None] * g2 - a2[:, None] * g3
    return theta, torch.stack([g0, g1, g2, g3], 1)


def _box_sdf(p: torch.Tensor, boxes: torch.Tensor):
    """Distances (V, B) and outward unit normals (V, B, 3) of axis-aligned boxes
    ``(B, 6) (centre, half size)``. Inside, the normal is that of the nearest face."""
    q = p[:, None, :] - boxes[None, :, :3]
    s = torch.where(q >= 0, torch.ones_like(q), -torch.ones_like(q))
    d = q.abs() - boxes[None, :, 3:]
    out = d.clamp_min(0.0)
    outn = torch.sqrt((out * out).sum(-1) + _EPS2 * 1e-6)
    inside = d.max(-1)
    dist = outn + inside.values.clamp_max(0.0)
    n_out = s * out / outn[..., None]
    n_in = s * torch.nn.functional.one_hot(inside.indices, 3).to(p.dtype)
    is_out = (inside.values > 0)[..., None]
    return dist, torch.where(is_out, n_out, n_in)


def _box_sdf_pairs(p: torch.Tensor, boxes: torch.Tensor):
    """:func:`_box_sdf` for points paired with boxes: ``p (V, R, 3)`` against box r of ``boxes
    (R, 6)``; distances (V, R) and normals (V, R, 3)."""
    q = p - boxes[None, :, :3]
    s = torch.where(q >= 0, torch.ones_like(q), -torch.ones_like(q))
    d = q.abs() - boxes[None, :, 3:]
    out = d.clamp_min(0.0)
    outn = torch.sqrt((out * out).sum(-1) + _EPS2 * 1e-6)
    inside = d.max(-1)
    dist = outn + inside.values.clamp_max(0.0)
    n_out = s * out / outn[..., None]
    n_in = s * torch.nn.functional.one_hot(inside.indices, 3).to(p.dtype)
    return dist, torch.where((inside.values > 0)[..., None], n_out, n_in)


@dataclass(frozen=True)
class ClothModel:
    """A cloth mesh, its material, pins and environment (see the module docstring for the model).

    faces: (F, 3) long; hinges: (H, 4) long (:func:`cloth_hinges`); Dm_inv: (F, 2, 2) inverse
    rest edge matrices (1/m); area: (F,) rest areas (m^2); hinge_rest: (H,) rest dihedral angles
    (rad); hinge_weight: (H,) ``3 |e|^2 / (A_1 + A_2)``; mass: (V,) lumped vertex masses (kg);
    pins: (P,) long indices of kinematic vertices; mu, lam: membrane Lame parameters (N/m),
    scalar or (F,); kb: bending stiffness (N m), scalar or (H,); damping: (3,) (stretch strain
    -rate damping N s/m, bending damping N m s, drag 1/s); gravity: (3,) m/s^2; thickness:
    scalar contact radius (m); planes: (K, 4) (n, d), free side n.x > d; spheres: (S, 4) (centre,
    radius) m; boxes: (B, 6) (centre, half size) m; contact: (5,) (ke N/m, kd N s/m, mu,
    friction_smoothing m/s, contact_smoothing m), the rigid solver's law; body_spheres (R, 4)
    (centre in the body frame, radius) m and body_boxes (R, 6) (centre in the body frame, half
    size) m with their body indices body_sphere_ids, body_box_ids (R,) long: obstacles moving
    with rigid bodies (default none).
    Every floating tensor may require grad.
    """

    faces: torch.Tensor
    hinges: torch.Tensor
    Dm_inv: torch.Tensor
    area: torch.Tensor
    hinge_rest: torch.Tensor
    hinge_weight: torch.Tensor
    mass: torch.Tensor
    pins: torch.Tensor
    mu: torch.Tensor
    lam: torch.Tensor
    kb: torch.Tensor
    damping: torch.Tensor
    gravity: torch.Tensor
    thickness: torch.Tensor
    planes: torch.Tensor
    spheres: torch.Tensor
    boxes: torch.Tensor
    contact: torch.Tensor
    body_spheres: torch.Tensor | None = None
    body_sphere_ids: torch.Tensor | None = None
    body_boxes: torch.Tensor | None = None
    body_box_ids: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def create(verts, faces, density=0.2, mu=50.0, lam=20.0, kb=1e-4, stretch_damping=0.0,
               bend_damping=0.0, drag=0.0, pins=None, gravity=(0.0, -9.81, 0.0), thickness=0.005,
               planes=None, spheres=None, boxes=None, ke=200.0, kd=0.5, friction=0.5,
               friction_smoothing=0.05, contact_smoothing=0.002, rest_angles=False,
               body_spheres=None, body_boxes=None, dtype=None, device=None) -> "ClothModel":
        """Build a cloth from its rest mesh.

        verts: (V, 3) rest positions (m); faces: (F, 3) consistently oriented triangles;
        density: areal density (kg/m^2), lumped to vertices (a third of each triangle's mass);
        mu, lam: membrane Lame parameters (N/m); kb: bending stiffness (N m); pins: vertex
        indices held kinematic; planes: default the ground y = 0 (``[]`` for none); spheres,
        boxes: SDF obstacles (default none); ke, kd, friction (mu), friction_smoothing,
        contact_smoothing: the contact law (:mod:`diffvc.physics.rigid`); rest_angles: take the
        rest dihedral angles from ``verts`` (default: flat, 0); body_spheres: rows (body index,
        cx, cy, cz, radius) and body_boxes: rows (body index, cx, cy, cz, hx, hy, hz), obstacles
        attached to rigid bodies (centres in the body frame; module docstring). Tensors keep
        their autograd history (e.g. a differentiable ``mu``)."""
        verts = check_float(verts, "verts", shape=("V", 3), dtype=None if isinstance(verts, torch.Tensor) else
                            (dtype or torch.float32))
        dtype = dtype or verts.dtype
        device = device or verts.device
        X = verts.to(dtype=dtype, device=device)
        nv = X.shape[0]
        faces = check_faces(faces, nv, device=device)
        if faces.shape[0] == 0:
            raise ValueError("faces must hold at least one triangle")
        hinges = cloth_hinges(faces)
        Xd = X.detach()
        Dm = _tri_frames(Xd, faces)
        Dm_inv = _inv2(Dm)
        area = 0.5 * (Dm[:, 0, 0] * Dm[:, 1, 1]).abs()
        if (area <= 0).any():
            raise ValueError("verts/faces: the rest mesh has zero-area triangles")
        density = _t(density, dtype, device, "density", positive=True)
        mu, lam, kb = (_t(mu, dtype, device, "mu", nonneg=True), _t(lam, dtype, device, "lam", nonneg=True),
                       _t(kb, dtype, device, "kb", nonneg=True))
        mass = torch.zeros(nv, dtype=dtype, device=device).index_add(
            0, faces.reshape(-1), (density * area / 3.0).repeat_interleave(3))
        ea = hinges[:, 0]
        eb = hinges[:, 1]
        elen2 = ((Xd[eb] - Xd[ea]) ** 2).sum(-1)
        # the two triangles of each hinge: areas from the cross products (rest)
        def tri_area(i, j, k):
            return 0.5 * torch.cross(Xd[j] - Xd[i], Xd[k] - Xd[i], dim=-1).norm(dim=-1)
        a1 = tri_area(hinges[:, 0], hinges[:, 1], hinges[:, 2])
        a2 = tri_area(hinges[:, 1], hinges[:, 0], hinges[:, 3])
        hinge_weight = 3.0 * elen2 / (a1 + a2)
        hinge_rest = (_dihedral(Xd, hinges)[0] if rest_angles else torch.zeros(hinges.shape[0], dtype=dtype,
                                                                                 device=device))
        if pins is None:
            pins = torch.zeros(0, dtype=torch.long, device=device)
        if isinstance(pins, (list, tuple)) and not pins:
            pins = torch.zeros(0, dtype=torch.long, device=device)
        pins = check_index(pins, "pins", nv, shape=("P",), device=device)
        planes = _rows([[0.0, 1.0, 0.0, 0.0]] if planes is None else planes, 4, "planes", dtype, device)
        spheres = _rows([] if spheres is None else spheres, 4, "spheres", dtype, device)
        boxes = _rows([] if boxes is None else boxes, 6, "boxes", dtype, device)

        def c1(v):
            return _t(v, dtype, device).reshape(1)

        contact = torch.cat([c1(ke), c1(kd), c1(friction), c1(friction_smoothing), c1(contact_smoothing)])
        damping = torch.cat([c1(stretch_damping), c1(bend_damping), c1(drag)])
        bs = _rows([] if body_spheres is None else body_spheres, 5, "body_spheres", dtype, device)
        bb = _rows([] if body_boxes is None else body_boxes, 7, "body_boxes", dtype, device)
        for name, t in (("body_spheres", bs), ("body_boxes", bb)):
            ids = t[:, 0].detach()
            if t.shape[0] and ((ids != ids.round()).any() or (ids < 0).any()):
                raise ValueError(f"{name}: the first column must hold body indices (integers >= 0)")
        return ClothModel(faces, hinges, Dm_inv, area, hinge_rest, hinge_weight, mass, pins,
                          _t(mu, dtype, device), _t(lam, dtype, device), _t(kb, dtype, device), damping,
                          _t(gravity, dtype, device).reshape(3), _t(thickness, dtype, device).reshape(()),
                          planes, spheres, boxes, contact, bs[:, 1:], bs[:, 0].detach().long(), bb[:, 1:],
                          bb[:, 0].detach().long())

    def replace(self, **changes) -> "ClothModel":
        """A new model with some fields swapped (e.g. ``model.replace(mu=params["mu"])``)."""
        import dataclasses

        return dataclasses.replace(self, **changes)

    def __post_init__(self):
        for name, k, ids in (("body_spheres", 4, "body_sphere_ids"), ("body_boxes", 6, "body_box_ids")):
            t, i = getattr(self, name), getattr(self, ids)
            if t is None:
                t = torch.zeros(0, k, dtype=self.mass.dtype, device=self.mass.device)
                object.__setattr__(self, name, t)
            if i is None:
                i = torch.zeros(t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 2 else 0,
                                dtype=torch.long, device=self.mass.device)
                object.__setattr__(self, ids, i)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != k:
                raise ValueError(f"{name} must have shape (R, {k})")
            if not isinstance(i, torch.Tensor) or i.dtype != torch.long or i.shape != (t.shape[0],) or (
                    i.numel() and i.min() < 0):
                raise ValueError(f"{ids} must be a long tensor of {t.shape[0]} body indices >= 0")
            if t.shape[0] > MAX_OBSTACLES:
                raise ValueError(f"{name}: at most {MAX_OBSTACLES} rows, got {t.shape[0]}")
        if (self.body_spheres.detach()[:, 3] <= 0).any() or (self.body_boxes.detach()[:, 3:] <= 0).any():
            raise ValueError("body_spheres radii and body_boxes half sizes must be > 0")
        nf, nh = self.faces.shape[0], self.hinges.shape[0]
        nv = self.mass.shape[0]
        if self.faces.dim() != 2 or self.faces.shape[1] != 3 or self.faces.dtype != torch.long:
            raise ValueError("faces must be a long tensor of shape (F, 3)")
        if self.hinges.dim() != 2 or self.hinges.shape[1] != 4 or self.hinges.dtype != torch.long:
            raise ValueError("hinges must be a long tensor of shape (H, 4)")
        if self.Dm_inv.shape != (nf, 2, 2) or self.area.shape != (nf,):
            raise ValueError(f"Dm_inv must have shape ({nf}, 2, 2) and area ({nf},)")
        if self.hinge_rest.shape != (nh,) or self.hinge_weight.shape != (nh,):
            raise ValueError(f"hinge_rest and hinge_weight must have shape ({nh},)")
        if self.mass.dim() != 1 or not torch.isfinite(self.mass.detach()).all() or (self.mass.detach() <= 0).any():
            raise ValueError("mass must have shape (V,) with finite values > 0 (pin vertices with pins)")
        if self.pins.dim() != 1 or self.pins.dtype != torch.long or (
                self.pins.numel() and (self.pins.min() < 0 or self.pins.max() >= nv)):
            raise ValueError(f"pins must be a 1-D long tensor of vertex indices in [0, {nv})")
        for name, n in (("mu", nf), ("lam", nf), ("kb", nh)):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.shape not in ((), (n,)):
                raise ValueError(f"{name} must be a scalar or have shape ({n},), got {tuple(getattr(t, 'shape', ()))}")
            if not torch.isfinite(t.detach()).all() or (t.detach() < 0).any():
                raise ValueError(f"{name} must be finite and >= 0")
        if self.damping.shape != (3,) or (self.damping.detach() < 0).any():
            raise ValueError("damping must be (stretch_damping >= 0, bend_damping >= 0, drag >= 0)")
        if self.gravity.shape != (3,):
            raise ValueError(f"gravity must have shape (3,), got {tuple(self.gravity.shape)}")
        if self.thickness.shape != () or not (self.thickness.detach() >= 0):
            raise ValueError("thickness must be a scalar >= 0")
        check_planes(self.planes)
        if self.spheres.dim() != 2 or self.spheres.shape[1] != 4 or (self.spheres.detach()[:, 3] <= 0).any():
            raise ValueError("spheres must have shape (S, 4) rows (cx, cy, cz, radius > 0)")
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 6 or (self.boxes.detach()[:, 3:] <= 0).any():
            raise ValueError("boxes must have shape (B, 6) rows (cx, cy, cz, hx > 0, hy > 0, hz > 0)")
        c = self.contact.detach()
        if c.shape != (5,) or (c[:3] < 0).any() or c[3] <= 0 or c[4] < 0:
            raise ValueError("contact must be (ke >= 0, kd >= 0, mu >= 0, friction_smoothing > 0, "
                             "contact_smoothing >= 0)")

    @property
    def num_verts(self) -> int:
        return self.mass.shape[0]

    def state(self, x, v=None) -> ClothState:
        """A state at positions ``x (V, 3)`` (e.g. the rest mesh), velocities ``v`` (default 0)."""
        x = _t(x, self.mass.dtype, self.mass.device)
        return ClothState(x, torch.zeros_like(x) if v is None else _t(v, x.dtype, x.device))

    # ------------------------------------------------------------------ forces
    def _check_state(self, state: ClothState) -> None:
        nv = self.num_verts
        for name in ("x", "v"):
            t = getattr(state, name, None)
            if not isinstance(t, torch.Tensor) or t.shape != (nv, 3):
                raise ValueError(f"state.{name} must have shape ({nv}, 3), got {tuple(getattr(t, 'shape', ()))}")
            if t.dtype != self.mass.dtype or t.device != self.mass.device:
                raise ValueError(f"state.{name} must match the model's dtype/device ({self.mass.dtype}, {self.mass.device})")

    def _membrane(self, x, v):
        f = self.faces
        x0, x1, x2 = x[f[:, 0]], x[f[:, 1]], x[f[:, 2]]
        Ds = torch.stack([x1 - x0, x2 - x0], -1)                      # (F, 3, 2)
        F = Ds @ self.Dm_inv
        FtF = F.transpose(1, 2) @ F
        eye = torch.eye(2, dtype=x.dtype, device=x.device)
        E = 0.5 * (FtF - eye)
        trE = E[:, 0, 0] + E[:, 1, 1]
        mu = self.mu if self.mu.dim() == 0 else self.mu[:, None, None]
        lam = self.lam if self.lam.dim() == 0 else self.lam
        S = 2.0 * mu * E + (lam * trE)[:, None, None] * eye
        kd = self.damping[0]
        v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        Fd = torch.stack([v1 - v0, v2 - v0], -1) @ self.Dm_inv
        Ed = F.transpose(1, 2) @ Fd
        S = S + kd * (Ed + Ed.transpose(1, 2))
        H = -(self.area[:, None, None]) * (F @ S) @ self.Dm_inv.transpose(1, 2)  # (F, 3, 2)
        f1, f2 = H[..., 0], H[..., 1]
        fv = torch.stack([-(f1 + f2), f1, f2], 1)                     # (F, 3, 3)
        return torch.zeros_like(x).index_add(0, f.reshape(-1), fv.reshape(-1, 3))

    def _bending(self, x, v):
        h = self.hinges
        if h.shape[0] == 0:
            return torch.zeros_like(x)
        theta, g = _dihedral(x, h)
        vh = torch.stack([v[h[:, k]] for k in range(4)], 1)           # (H, 4, 3)
        theta_dot = (g * vh).sum((1, 2))
        s = self.hinge_weight * (self.kb * (theta - self.hinge_rest) + self.damping[1] * theta_dot)
        fh = -s[:, None, None] * g
        return torch.zeros_like(x).index_add(0, h.reshape(-1), fh.reshape(-1, 3))

    @property
    def has_bodies(self) -> bool:
        """True when obstacles are attached to rigid bodies (each step then needs their state)."""
        return bool(self.body_spheres.shape[0] or self.body_boxes.shape[0])

    def _split_control(self, control):
        """(pin targets or None, RigidBodyState or None) from a step's control."""
        if isinstance(control, ClothControl):
            pins, bodies = control.pins, control.bodies
        elif isinstance(control, RigidBodyState):
            pins, bodies = None, control
        else:
            pins, bodies = control, None
        if self.has_bodies:
            if not isinstance(bodies, RigidBodyState):
                raise ValueError("control: this cloth has obstacles attached to rigid bodies; pass their "
                                 "RigidBodyState (control=state or ClothControl(bodies=state)) with every step")
            nb = bodies.x.shape[0]
            for name, k in (("x", 3), ("q", 4), ("v", 3), ("w", 3)):
                t = getattr(bodies, name)
                if not isinstance(t, torch.Tensor) or t.shape != (nb, k) or t.dtype != self.mass.dtype:
                    raise ValueError(f"control: bodies.{name} must have shape ({nb}, {k}) and the cloth's dtype")
            top = max([int(i.max()) for i in (self.body_sphere_ids, self.body_box_ids) if i.numel()])
            if top >= nb:
                raise ValueError(f"control: the attached obstacles refer to body {top}, the state has {nb} bodies")
        elif bodies is not None:
            raise ValueError("control: this cloth has no obstacles attached to rigid bodies (bodies must be None)")
        return pins, (bodies if self.has_bodies else None)

    def _body_contact(self, x, v, bodies):
        """Torch twin of :func:`~diffvc._kernels.cloth.cloth_body_contact` (V, 3) N."""
        f = torch.zeros_like(x)
        r = self.thickness
        nv = x.shape[0]
        for shapes, ids, kind in ((self.body_spheres, self.body_sphere_ids, "sphere"),
                                  (self.body_boxes, self.body_box_ids, "box")):
            m = shapes.shape[0]
            if not m:
                continue
            bx, bq, bv, bw = (t[ids][None].expand(nv, m, t.shape[1]) for t in
                              (bodies.x, bodies.q, bodies.v, bodies.w))
            xe = x[:, None, :].expand(nv, m, 3)
            ub = bv + torch.cross(bw, xe - bx, dim=-1)
            u = (v[:, None, :] - ub).reshape(-1, 3)
            if kind == "sphere":
                d = xe - (bx + quaternion_apply(bq, shapes[None, :, :3].expand(nv, m, 3)))
                dist = torch.sqrt((d * d).sum(-1) + _EPS2 * 1e-6)
                n = d / dist[..., None]
                c = dist - shapes[None, :, 3] - r
            else:
                pb = quaternion_apply(bq, xe - bx, inverse=True)                      # (V, m, 3) body frame
                dist, nl = _box_sdf_pairs(pb, shapes)
                n = quaternion_apply(bq, nl)
                c = dist - r
            f = f + _contact_law(n.reshape(-1, 3), c.reshape(-1), u, self.contact).reshape(nv, m, 3).sum(1)
        return f

    def _contact(self, x, v, bodies=None):
        f = torch.zeros_like(x)
        if bodies is not None:
            f = f + self._body_contact(x, v, bodies)
        r = self.thickness
        params = self.contact
        for k in range(self.planes.shape[0]):
            n = self.planes[k, :3].expand_as(x)
            c = (x * n).sum(-1) - self.planes[k, 3] - r
            f = f + _contact_law(n, c, v, params)
        nv = x.shape[0]
        if self.spheres.shape[0]:
            s = self.spheres.shape[0]
            d = x[:, None, :] - self.spheres[None, :, :3]
            dist = torch.sqrt((d * d).sum(-1) + _EPS2 * 1e-6)
            n = (d / dist[..., None]).reshape(-1, 3)
            c = (dist - self.spheres[None, :, 3] - r).reshape(-1)
            u = v[:, None, :].expand(nv, s, 3).reshape(-1, 3)
            f = f + _contact_law(n, c, u, params).reshape(nv, s, 3).sum(1)
        if self.boxes.shape[0]:
            b = self.boxes.shape[0]
            dist, n = _box_sdf(x, self.boxes)
            u = v[:, None, :].expand(nv, b, 3).reshape(-1, 3)
            f = f + _contact_law(n.reshape(-1, 3), (dist - r).reshape(-1), u, params).reshape(nv, b, 3).sum(1)
        return f

    def forces(self, state: ClothState, bodies: RigidBodyState | None = None) -> torch.Tensor:
        """Total internal + contact force on each vertex (V, 3) in N (gravity excluded);
        ``bodies``: the rigid bodies' state when obstacles are attached to them."""
        self._check_state(state)
        _, bodies = self._split_control(ClothControl(bodies=bodies))
        x, v = state.x, state.v
        return self._membrane(x, v) + self._bending(x, v) + self._contact(x, v, bodies)

    def energy(self, state: ClothState) -> dict:
        """Kinetic, gravitational, membrane and bending energies (J, scalars) of free vertices;
        contact energy is excluded (use it without contact for conservation checks)."""
        self._check_state(state)
        x, v = state.x, state.v
        free = torch.ones_like(self.mass)
        if self.pins.numel():
            free = free.index_fill(0, self.pins, 0.0)
        m = self.mass * free
        kinetic = 0.5 * (m * (v * v).sum(-1)).sum()
        grav = -(m * (x @ self.gravity)).sum()
        f = self.faces
        Ds = torch.stack([x[f[:, 1]] - x[f[:, 0]], x[f[:, 2]] - x[f[:, 0]]], -1)
        F = Ds @ self.Dm_inv
        E = 0.5 * (F.transpose(1, 2) @ F - torch.eye(2, dtype=x.dtype, device=x.device))
        trE = E[:, 0, 0] + E[:, 1, 1]
        membrane = (self.area * (self.mu * (E * E).sum((1, 2)) + 0.5 * self.lam * trE ** 2)).sum()
        theta = _dihedral(x, self.hinges)[0] if self.hinges.shape[0] else x.new_zeros(0)
        bending = (0.5 * self.kb * self.hinge_weight * (theta - self.hinge_rest) ** 2).sum()
        return {"kinetic": kinetic, "gravity": grav, "membrane": membrane, "bending": bending,
                "total": kinetic + grav + membrane + bending}

    # ------------------------------------------------------------------ the step (contract)
    def _pins(self, x, v1, dt, control):
        control = self._split_control(control)[0]
        if self.pins.numel():
            p = self.pins
            if control is None:
                vp = torch.zeros(p.shape[0], 3, dtype=x.dtype, device=x.device)
            else:
                if not isinstance(control, torch.Tensor) or control.shape != (p.shape[0], 3):
                    raise ValueError(f"control must be pin targets of shape ({p.shape[0]}, 3), "
                                     f"got {tuple(getattr(control, 'shape', ()))}")
                vp = (control.to(x.dtype) - x[p]) / dt
            v1 = v1.index_copy(0, p, vp)
        elif control is not None:
            raise ValueError("control: this cloth has no pins to drive (pass control=None)")
        return ClothState(x + dt * v1, v1)

    def _kernel_args(self):
        """Per-model kernel inputs (int32 topology, padded obstacle tables), built once."""
        cache = self.__dict__.get("_kcache")
        if cache is None:
            def padded(t, k):
                n = t.shape[0]
                if n > MAX_OBSTACLES:
                    raise ValueError(f"at most {MAX_OBSTACLES} obstacles of each kind, got {n}")
                return t if n else torch.zeros(1, k, dtype=t.dtype, device=t.device), n

            dev = self.mass.device
            planes, npl = padded(self.planes, 4)
            spheres, nsp = padded(self.spheres, 4)
            boxes, nbx = padded(self.boxes, 6)
            nf, nh = self.faces.shape[0], self.hinges.shape[0]
            cache = {
                "faces": self.faces.to(torch.int32).contiguous(),
                "hinges": self.hinges.to(torch.int32).contiguous(),
                "mu": self.mu.expand(nf).contiguous() if self.mu.dim() == 0 else self.mu.contiguous(),
                "lam": self.lam.expand(nf).contiguous() if self.lam.dim() == 0 else self.lam.contiguous(),
                "kb": self.kb.expand(nh).contiguous() if self.kb.dim() == 0 else self.kb.contiguous(),
                "inv_mass": 1.0 / self.mass,
                "planes": planes.contiguous(), "spheres": spheres.contiguous(), "boxes": boxes.contiguous(),
                "counts": torch.tensor([npl, nsp, nbx], dtype=torch.int32, device=dev),
                "body_spheres": padded(self.body_spheres, 4)[0].contiguous(),
                "body_boxes": padded(self.body_boxes, 6)[0].contiguous(),
                "body_sphere_ids": (self.body_sphere_ids if self.body_sphere_ids.numel() else
                                    torch.zeros(1, dtype=torch.long, device=dev)).to(torch.int32).contiguous(),
                "body_box_ids": (self.body_box_ids if self.body_box_ids.numel() else
                                 torch.zeros(1, dtype=torch.long, device=dev)).to(torch.int32).contiguous(),
                "body_counts": torch.tensor([self.body_spheres.shape[0], self.body_boxes.shape[0]],
                                            dtype=torch.int32, device=dev),
            }
            object.__setattr__(self, "_kcache", cache)
        return cache

    def step(self, state: ClothState, dt: float, control: torch.Tensor | None = None) -> ClothState:
        """Advance the cloth by ``dt`` seconds (semi-implicit Euler; three Warp kernels: triangle
        forces, hinge forces, contact + velocity update).

        control: ``None`` (pinned vertices stay put), pin targets ``(P, 3)`` m, the positions
        the pinned vertices ``pins`` reach at the end of this step (moving handles; gradients
        flow to them), a :class:`~diffvc.physics.RigidBodyState` (the pose and velocity of the
        bodies the attached obstacles move with, a fourth kernel), or a :class:`ClothControl`
        with both. Returns a new :class:`ClothState`.
        """
        dt = check_dt(dt)
        self._check_state(state)
        _, bodies = self._split_control(control)
        x, v = state.x, state.v
        k = self._kernel_args()
        nv, nf, nh = x.shape[0], self.faces.shape[0], self.hinges.shape[0]
        f = kernel_op(cloth_triangle_forces, nf,
                      [vec(x), vec(v), k["faces"], mat(self.Dm_inv.contiguous()), self.area, k["mu"], k["lam"],
                       self.damping], [Out((nv, 3), "vec")])
        if nh:
            f = f + kernel_op(cloth_hinge_forces, nh,
                              [vec(x), vec(v), k["hinges"], self.hinge_rest, self.hinge_weight, k["kb"],
                               self.damping], [Out((nv, 3), "vec")])
        if bodies is not None:
            f = f + kernel_op(cloth_body_contact, nv,
                              [vec(x), vec(v), vec(bodies.x.contiguous()), bodies.q.contiguous(),
                               vec(bodies.v.contiguous()), vec(bodies.w.contiguous()), k["body_spheres"],
                               k["body_sphere_ids"], k["body_boxes"], k["body_box_ids"], k["body_counts"],
                               self.contact, self.thickness.reshape(1)], [Out((nv, 3), "vec")])
        v1 = kernel_op(cloth_integrate, nv,
                       [vec(x), vec(v), vec(f), k["inv_mass"], k["planes"], k["spheres"], k["boxes"], k["counts"],
                        self.contact, self.thickness.reshape(1), vec(self.gravity.reshape(1, 3)), self.damping,
                        float(dt)],
                       [Out((nv, 3), "vec")])
        return self._pins(x, v1, dt, control)

    def step_torch(self, state: ClothState, dt: float, control: torch.Tensor | None = None) -> ClothState:
        """Plain-torch twin of :meth:`step` (same function; tests, forward mode via
        ``rollout(..., backend="torch")``)."""
        dt = check_dt(dt)
        self._check_state(state)
        _, bodies = self._split_control(control)
        x, v = state.x, state.v
        f = self._membrane(x, v) + self._bending(x, v) + self._contact(x, v, bodies)
        a = f / self.mass[:, None] + self.gravity
        v1 = (v + dt * a) / (1.0 + self.damping[2] * dt)
        return self._pins(x, v1, dt, control)
