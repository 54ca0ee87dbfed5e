"""Constrained parameters for inverse problems.

A parameter that must stay positive or inside bounds is *stored* unconstrained (the optimizer
moves ``raw``) and *read* through a smooth bijection, so no clamping ever stops a gradient:

* :class:`Free`       value = raw
* :class:`Positive`   value = exp(raw)            (``log`` parameterisation; relative steps)
* :class:`Softplus`   value = softplus(raw) + min (positive, near-linear far from ``min``)
* :class:`Bounded`    value = low + (high - low) * sigmoid(raw)

:class:`ParameterSet` collects named parameters (``traverse``-style access by name, as in
Mitsuba 3) and gives the raw tensors to an optimizer.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .._validate import as_float, as_tensor, check_finite


class Param:
    """A named, possibly constrained, optimizable tensor. ``value`` is differentiable w.r.t. ``raw``."""

    def __init__(self, value, dtype=None, device=None):
        v = as_tensor(value, "value", dtype=dtype or torch.get_default_dtype(), device=device)
        if not torch.isfinite(v).all():
            raise ValueError(f"{type(self).__name__}: initial value must be finite, got {v}")
        self._check(v)
        self.raw = torch.nn.Parameter(self._inverse(v.detach().clone()))

    # -- to be specialised
    def _check(self, v: torch.Tensor) -> None:
        pass

    def _forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def _inverse(self, v: torch.Tensor) -> torch.Tensor:
        return v

    @property
    def value(self) -> torch.Tensor:
        return self._forward(self.raw)

    def set(self, value) -> None:
        v = as_tensor(value, "value", dtype=self.raw.dtype, device=self.raw.device)
        check_finite(v, "value")
        self._check(v)
        with torch.no_grad():
            self.raw.copy_(self._inverse(v))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value.detach().cpu().numpy()})"


class Free(Param):
    """Unconstrained parameter."""


class Positive(Param):
    """Positive parameter, ``value = exp(raw)``: steps are relative, natural for masses and stiffnesses."""

    def _check(self, v):
        if (v <= 0).any():
            raise ValueError(f"Positive: initial value must be > 0, got {v}")

    def _forward(self, raw):
        return torch.exp(raw)

    def _inverse(self, v):
        return torch.log(v)


class Softplus(Param):
    """Parameter above ``minimum``, ``value = minimum + softplus(raw)``."""

    def __init__(self, value, minimum: float = 0.0, dtype=None, device=None):
        self.minimum = as_float(minimum, "minimum")
        super().__init__(value, dtype, device)

    def _check(self, v):
        if (v <= self.minimum).any():
            raise ValueError(f"Softplus: initial value must be > {self.minimum}, got {v}")

    def _forward(self, raw):
        return self.minimum + torch.nn.functional.softplus(raw)

    def _inverse(self, v):
        y = v - self.minimum
        return y + torch.log(-torch.expm1(-y))


class Bounded(Param):
    """Parameter in the open interval ``(low, high)``, ``value = low + (high - low) * sigmoid(raw)``."""

    def __init__(self, value, low: float, high: float, dtype=None, device=None):
        low, high = as_float(low, "low"), as_float(high, "high")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"Bounded: need finite low < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        super().__init__(value, dtype, device)

    def _check(self, v):
        if ((v <= self.low) | (v >= self.high)).any():
            raise ValueError(f"Bounded: initial value must lie in ({self.low}, {self.high}), got {v}")

    def _forward(self, raw):
        return self.low + (self.high - self.low) * torch.sigmoid(raw)

    def _inverse(self, v):
        t = (v - self.low) / (self.high - self.low)
        return torch.log(t) - torch.log1p(-t)


class ParameterSet:
    """Named parameters; ``ps["mass"]`` gives the constrained value, ``ps.raw()`` the optimizer's tensors."""

    def __init__(self, **params: Param):
        for k, p in params.items():
            if not isinstance(p, Param):
                raise TypeError(f"parameter {k!r} must be a diffvc.optim Param, got {type(p).__name__}")
        self._params = dict(params)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._params:
            raise KeyError(f"no parameter named {name!r}; have {sorted(self._params)}")
        return self._params[name].value

    def __contains__(self, name: str) -> bool:
        return name in self._params

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def param(self, name: str) -> Param:
        return self._params[name]

    def raw(self) -> list[torch.nn.Parameter]:
        return [p.raw for p in self._params.values()]

    def values(self) -> dict[str, torch.Tensor]:
        return {k: p.value for k, p in self._params.items()}

    def snapshot(self) -> dict[str, float | list]:
        """Detached current values as plain Python numbers (scalars) or lists."""
        out = {}
        for k, p in self._params.items():
            v = p.value.detach().cpu()
            out[k] = v.item() if v.numel() == 1 else v.tolist()
        return out
