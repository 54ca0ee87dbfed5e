"""Running inverse problems: constrained parameters, the optimization loop, image losses and metrics."""

from .parameters import Bounded, Free, Param, ParameterSet, Positive, Softplus
from .checkpoint import CheckpointError, run_context
from .loop import History, NonFiniteGradientError, optimize
from . import distributed
from .losses import downsample, pyramid_mse
from .metrics import parameter_curves, plot_history, relative_error, relative_errors
from .implicit import cg, fixed_point, gmres, minimize, qp_solve, root_solve

__all__ = ["Param", "Free", "Positive", "Softplus", "Bounded", "ParameterSet", "History", "NonFiniteGradientError", "optimize", "run_context", "CheckpointError", "distributed",
           "pyramid_mse", "downsample", "relative_error", "relative_errors", "parameter_curves", "plot_history",
           "root_solve", "fixed_point", "minimize", "qp_solve", "gmres", "cg"]
