"""``torch.optim`` optimizers that never import ``torch._dynamo``.

Every ``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use: ``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped by ``torch._disable_dynamo``
(which imports it lazily on the first call) and ``Adam.step`` / ``SGD.step`` by
``_use_grad_for_differentiable`` (which imports it to insert graph breaks). That import costs
about as much CPU as importing torch itself (2.3-2.6 s of CPU on the shared 2-core dev machine,
measured with ``time.process_time`` around ``import torch._dynamo``): half of a ``diffvc run
bounce --quick`` whose optimisation takes a fraction of a second.

:class:`Adam`, :class:`SGD` and :class:`LBFGS` here are the torch classes with those methods
calling the undecorated originals (``__wrapped__``), so the arithmetic, the ``param_groups``,
the state dicts (checkpoints) and the learning-rate schedulers are exactly torch's: the same
updates bit for bit (checked in ``tests/optim/test_eager.py``). What is dropped is only what
the wrappers do *under* ``torch.compile``: these optimizers are for eager loops (such as
:func:`~diffvc.optim.optimize`); do not compile their ``step``.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

__all__ = ["Adam", "SGD", "LBFGS"]


def _plain(fn):
    """The function under torch's dynamo-disabling wrapper (the function itself if none)."""
    return getattr(fn, "__wrapped__", fn)


_add_param_group = _plain(Optimizer.add_param_group)
_zero_grad = _plain(Optimizer.zero_grad)
_state_dict = _plain(Optimizer.state_dict)
_load_state_dict = _plain(Optimizer.load_state_dict)


class _Eager:
    def add_param_group(self, param_group):
        return _add_param_group(self, param_group)

    def zero_grad(self, set_to_none: bool = True):
        return _zero_grad(self, set_to_none)

    def state_dict(self):
        return _state_dict(self)

    def load_state_dict(self, state_dict):
        return _load_state_dict(self, state_dict)


# the step functions under ``_use_grad_for_differentiable`` (which sets grad mode to
# ``defaults["differentiable"]`` around the update and imports dynamo for graph breaks)
_adam_step = _plain(torch.optim.Adam.step)
_sgd_step = _plain(torch.optim.SGD.step)


class Adam(_Eager, torch.optim.Adam):
    """``torch.optim.Adam`` without the ``torch._dynamo`` import (module doc)."""

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _adam_step(self, closure)


class SGD(_Eager, torch.optim.SGD):
    """``torch.optim.SGD`` without the ``torch._dynamo`` import (module doc)."""

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _sgd_step(self, closure)


class LBFGS(_Eager, torch.optim.LBFGS):
    """``torch.optim.LBFGS`` without the ``torch._dynamo`` import (its ``step`` is torch's:
    it only runs under ``torch.no_grad``)."""
