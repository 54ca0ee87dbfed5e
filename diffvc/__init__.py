"""diffvc: differentiable visual computing with PyTorch as host."""

__version__ = "0.1.0"
