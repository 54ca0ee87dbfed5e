"""Measuring an inverse problem: relative errors against known values, parameter curves from a
:class:`~diffvc.optim.History`, and the curve plot every example writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .._validate import as_tensor, check_float, describe

from .loop import History

__all__ = ["relative_error", "relative_errors", "parameter_curves", "plot_history"]


def relative_error(estimate, target) -> float:
    """``|estimate - target| / |target|`` (2-norms for vectors; absolute error where ``target == 0``)."""
    e = check_float(as_tensor(estimate, "estimate", dtype=torch.float64).detach().cpu().reshape(-1), "estimate")
    t = check_float(as_tensor(target, "target", dtype=torch.float64).detach().cpu().reshape(-1), "target")
    if e.shape != t.shape:
        raise ValueError(f"estimate has {e.numel()} elements but target has {t.numel()}")
    num = float((e - t).norm())
    den = float(t.norm())
    return num / den if den > 0 else num


def relative_errors(estimates: Mapping, targets: Mapping, prefix: str = "rel_error_") -> dict[str, float]:
    """``{prefix + name: relative_error(estimates[name], targets[name])}`` for every name in ``targets``."""
    for name, m in (("estimates", estimates), ("targets", targets)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name} must be a mapping of parameter name -> value, got {describe(m)}")
    missing = [k for k in targets if k not in estimates]
    if missing:
        raise ValueError(f"estimates: missing {missing} (targets has them)")
    return {prefix + k: relative_error(estimates[k], targets[k]) for k in targets}


def _check_history(history) -> None:
    if not isinstance(history, History):
        raise TypeError(f"history must be a diffvc.optim.History, got {describe(history)}")


def parameter_curves(history: History, final: Mapping | None = None) -> dict[str, np.ndarray]:
    """Per-parameter value curves from ``history.params`` (values before each step), with
    ``final`` (values after the last step) appended when given. Vector parameters give one curve
    per component, named ``name[i]``."""
    _check_history(history)
    if final is not None and not isinstance(final, Mapping):
        raise TypeError(f"final must be a mapping of parameter name -> value or None, got {describe(final)}")
    snaps = list(history.params) + ([dict(final)] if final is not None else [])
    if not snaps:
        return {}
    curves: dict[str, list] = {}
    for k in snaps[0]:
        vals = [s[k] for s in snaps]
        if isinstance(vals[0], (list, tuple)):
            arr = np.asarray(vals, dtype=np.float64).reshape(len(vals), -1)
            for i in range(arr.shape[1]):
                curves[f"{k}[{i}]"] = arr[:, i]
        else:
            curves[k] = np.asarray(vals, dtype=np.float64)
    return curves


def plot_history(path: str | Path, history: History, targets: Mapping[str, float] | None = None,
                 final: Mapping | None = None, title: str = "", final_loss: float | None = None) -> Path:
    """Loss and parameter curves in one figure (dashed target lines), via :func:`diffvc.viz.plot_curves`.
    ``final`` / ``final_loss``: parameter values and loss after the last step, appended to the curves."""
    from ..viz import plot_curves

    _check_history(history)
    if not isinstance(path, (str, Path)) or not str(path):
        raise TypeError(f"path must be a file path (str or Path), got {describe(path)}")
    if targets is not None and not isinstance(targets, Mapping):
        raise TypeError(f"targets must be a mapping of parameter name -> value or None, got {describe(targets)}")
    loss = list(history.loss) + ([float(final_loss)] if final_loss is not None else [])
    curves = {"loss": np.asarray(loss, dtype=np.float64)}
    curves.update(parameter_curves(history, final))
    tg = {k: float(v) for k, v in (targets or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return plot_curves(path, curves, title=title, targets=tg)
