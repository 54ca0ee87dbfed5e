"""diffvc.topopt: density-based topology optimisation (SIMP) on structured 2D/3D grids.

Compliance minimisation under a volume fraction with penalised densities, density/sensitivity
filters, Heaviside projection, passive elements and several load cases; OC and MMA updates. The
FEM solve (:mod:`.elasticity`, multigrid-preconditioned CG in torch) is differentiated by its
adjoint, so :meth:`SIMP.compliance` is an ordinary torch loss. :mod:`.top88` is a numpy port of
the 88-line MATLAB code, kept as the reference the tests and ``bench/topopt.py`` compare against.
"""

from .elasticity import ElasticityGrid, compliance, displacements, element_dofs, element_stiffness
from .filters import DensityFilter, heaviside
from .optimizers import MMA, oc_update
from .problems import SOLID, VOID, GridProblem, cantilever, cantilever_3d, mbb_beam, with_passive
from .simp import SIMP, SIMPResult

__all__ = [
    "ElasticityGrid", "compliance", "displacements", "element_dofs", "element_stiffness",
    "DensityFilter", "heaviside", "MMA", "oc_update",
    "GridProblem", "mbb_beam", "cantilever", "cantilever_3d", "with_passive", "VOID", "SOLID",
    "SIMP", "SIMPResult",
]
