"""Running inverse problems: constrained parameters and the optimization loop."""

from .parameters import Bounded, Free, Param, ParameterSet, Positive, Softplus
from .loop import History, optimize

__all__ = ["Param", "Free", "Positive", "Softplus", "Bounded", "ParameterSet", "History", "optimize"]
