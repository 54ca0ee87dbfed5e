"""A fused multi-step segment of the semi-implicit FEM step (:func:`fem_segment`).

One step is the two launches of :func:`diffvc.physics.fem_step` -- :func:`~diffvc._kernels.fem.tet_forces`
(one thread per tet, forces accumulated with atomics into a per-step force buffer that starts at
the external force) and :func:`~diffvc._kernels.fem.integrate_vertices` -- replayed as recorded
launches; K steps are one autograd node (:func:`~diffvc._kernels.bridge.segment_op`).
"""

from __future__ import annotations

from .bridge import Const, Row, Step, mat, segment_op, vec
from .fem import integrate_vertices, tet_forces


def fem_segment(K: int, dt: float, x0, v0, tets, Dm_inv, volume, lame, damping, material: int, inv_mass, free,
                planes, contact, gravity, n_planes: int, external=None, recompute: bool = False,
                return_all: bool = False):
    """K fused semi-implicit FEM steps as one differentiable torch op.

    x0, v0: (N, 3); tets: (T, 4) int32; Dm_inv: (T, 3, 3); volume: (T,); lame: (T, 2); damping: (2,);
    inv_mass, free: (N,); planes: (P >= 1, 4); contact: (5,); gravity: (1, 3); external: optional
    (1, N, 3) force held over the segment. Returns (x_K, v_K) and, with ``return_all``, the states
    of steps 1..K ``(K, N, 3)`` twice.
    """
    n, nt = x0.shape[0], tets.shape[0]
    forces = Step(tet_forces, nt, (Row("x"), Row("v"), Const(0), Const(1), Const(2), Const(3), Const(4),
                                   int(material), Row("f")))
    integ = Step(integrate_vertices, n, (Row("x"), Row("v"), Row("f"), Const(5), Const(6), Const(7), Const(8),
                                         Const(9), Const(4), int(n_planes), float(dt), Row("x", 1), Row("v", 1)))
    return segment_op([forces, integ], K, [("x", x0, "vec"), ("v", v0, "vec")],
                      consts=[tets, mat(Dm_inv), volume, vec(lame), damping, inv_mass, free, vec(planes), contact,
                              vec(gravity)],
                      work=[("f", (n, 3), "vec", external)], recompute=recompute, return_all=return_all)
