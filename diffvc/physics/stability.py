"""Stability checks of explicit contact updates, warned once per process and parameter.

The solvers integrate contact explicitly (semi-implicit Euler). Two of their updates have a
stability bound on the time step; outside it the forward simulation still looks plausible but
its gradients grow geometrically with the number of steps (e.g. 1e10 over 10,000 steps):

* regularised friction ``f_t = -mu f_n u_t / sqrt(|u_t|^2 + vs^2)`` is a viscous force of rate
  ``mu f_n / (vs m)`` below ``vs``; its explicit update is stable while
  ``dt mu f_n / (vs m) < 2`` (``vs``: ``friction_smoothing``);
* the penalty contact ``f_n = -ke c - kd u_n`` is a damped spring of stiffness ``ke`` on mass
  ``m``; its explicit update is stable while ``dt sqrt(ke / m) < 2`` and ``dt kd / m < 2``.

:func:`check_contact_stability` evaluates these bounds for the contacts active in the state a
step starts from (plain torch, no autograd) and, the first time one is exceeded, emits a
:class:`StabilityWarning` naming the parameter to change and the value that would satisfy the
bound. Each (solver, parameter) pair warns once per process; after all of a solver's checks have
warned, the check costs nothing.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["StabilityWarning", "check_contact_stability", "reset_stability_warnings"]

BOUND = 2.0  # explicit (semi-implicit Euler) stability limit of the rates above, times dt
_WARNED: set[tuple[str, str]] = set()
_PARAMS = ("friction_smoothing", "ke", "kd")


class StabilityWarning(RuntimeWarning):
    """An explicit contact or friction update is outside its stability bound (gradients blow up)."""


def reset_stability_warnings() -> None:
    """Forget which warnings were given (each warns once per process otherwise)."""
    _WARNED.clear()


def _warn(solver: str, param: str, message: str) -> None:
    if (solver, param) not in _WARNED:
        _WARNED.add((solver, param))
        warnings.warn(message, StabilityWarning, stacklevel=4)


def check_contact_stability(solver: str, dt: float, inv_mass: torch.Tensor, c: torch.Tensor, un: torch.Tensor,
                            contact: torch.Tensor) -> None:
    """Warn (once per solver and parameter) when the explicit contact updates are unstable.

    Args:
        solver: name used in the message and the once-per-process key (e.g. ``"particle_step"``).
        dt: time step (s).
        inv_mass: (K,) inverse mass (1/kg) of the body each contact acts on (0: kinematic).
        c: (K,) signed distance of each contact point to its plane (m; < 0: in contact).
        un: (K,) normal velocity of each contact point (m/s).
        contact: (>= 4,) ``(ke, kd, mu, friction_smoothing, ...)`` of these contacts.
    """
    if all((solver, p) in _WARNED for p in _PARAMS):
        return
    with torch.no_grad():
        ke, kd, mu, vs = (float(a) for a in contact.detach()[:4])
        w = inv_mass.detach()
        if w.numel() == 0 or not bool((w > 0).any()):
            return
        w_max = float(w.max())
        if dt * math.sqrt(ke * w_max) >= BOUND:
            _warn(solver, "ke", f"{solver}: the explicit penalty contact is unstable: dt sqrt(ke / m) = "
                  f"{dt * math.sqrt(ke * w_max):.3g} >= {BOUND} (ke = {ke:g} N/m, lightest m = {1 / w_max:g} kg, "
                  f"dt = {dt:g} s). Reduce ke below {(BOUND / dt) ** 2 / w_max:.3g} N/m or dt below "
                  f"{BOUND / math.sqrt(ke * w_max):.3g} s.")
        if dt * kd * w_max >= BOUND:
            _warn(solver, "kd", f"{solver}: the explicit contact damping is unstable: dt kd / m = "
                  f"{dt * kd * w_max:.3g} >= {BOUND}. Reduce kd below {BOUND / (dt * w_max):.3g} N s/m or dt.")
        if c.numel() == 0 or mu == 0.0:
            return
        fn = torch.clamp(-(ke * c.detach() + kd * torch.clamp(un.detach(), max=0.0)), min=0.0)
        fn = torch.where(c.detach() < 0, fn, torch.zeros_like(fn))
        rate = float((fn * w).max()) * dt * mu / vs
        if rate >= BOUND:
            need = rate * vs / BOUND
            _warn(solver, "friction_smoothing",
                  f"{solver}: the explicit friction update is unstable: dt mu f_n / (friction_smoothing m) = "
                  f"{rate:.3g} >= {BOUND} (mu = {mu:g}, friction_smoothing = {vs:g} m/s, dt = {dt:g} s); "
                  f"gradients will grow without bound over long rollouts. Increase friction_smoothing above "
                  f"{need:.3g} m/s or reduce dt below {dt * BOUND / rate:.3g} s.")
