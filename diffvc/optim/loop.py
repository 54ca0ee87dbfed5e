"""The inverse-problem loop every example uses: optimizer, progress bar, early stop, history."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .._validate import all_finite, as_float, describe
from . import checkpoint as _ckpt
from . import eager as _eager
from .distributed import all_reduce_, world_size
from .parameters import ParameterSet


@dataclass
class History:
    """What happened during :func:`optimize`. ``params[i]`` are the values *before* step ``i``."""

    loss: list[float] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    skipped: list[int] = field(default_factory=list)   # iterations whose non-finite gradient was skipped

    def __post_init__(self):
        for name in ("loss", "params", "skipped"):
            v = getattr(self, name)
            if not isinstance(v, list):
                raise TypeError(f"{name} must be a list, got {describe(v)}")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in self.loss):
            raise TypeError("loss must be a list of numbers (one per iteration)")
        if any(not isinstance(p, dict) for p in self.params):
            raise TypeError("params must be a list of dicts (parameter values before each step)")
        self.seconds = as_float(self.seconds, "seconds", nonneg=True)

    @property
    def iterations(self) -> int:
        return len(self.loss)

    @property
    def best_loss(self) -> float:
        return min(self.loss) if self.loss else math.nan


_METHODS = ("adam", "sgd", "lbfgs")
_NONFINITE = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A parameter's gradient held NaN or inf (raised by :func:`optimize` unless asked to skip)."""


def _format(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) <= 3 and all(isinstance(x, float) for x in v):
        return "(" + ",".join(f"{x:.3g}" for x in v) + ")"
    return "…"


def optimize(
    params: ParameterSet | Sequence[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    iters: int,
    lr: float = 1e-2,
    method: str = "adam",
    progress: bool = True,
    desc: str = "optimize",
    tol: float | None = None,
    patience: int = 10,
    grad_clip: float | None = None,
    lr_final: float | None = None,
    callback: Callable[[int, float], None] | None = None,
    optimizer_kwargs: dict | None = None,
    nonfinite: str = "raise",
) -> History:
    """Minimise ``loss_fn()`` over ``params``.

    Args:
        params: a :class:`ParameterSet` (constrained values, its raw tensors are optimized) or
            a list of leaf tensors with ``requires_grad``.
        loss_fn: closure returning a scalar loss tensor; it reads the parameters itself.
        iters: maximum number of iterations (>= 1).
        lr: learning rate (step size for Adam/SGD; initial step for L-BFGS).
        method: ``"adam"``, ``"sgd"`` or ``"lbfgs"`` (strong-Wolfe line search).
        progress: show a tqdm bar with the current loss and parameter values.
        tol: stop once the loss is below ``tol`` ...
        patience: ... or has not improved by more than 1e-12 relative for ``patience`` iterations
            (only when ``tol`` is given).
        grad_clip: clip the global gradient norm of the raw parameters (Adam/SGD).
        lr_final: if given, the learning rate decays exponentially from ``lr`` to ``lr_final``
            over ``iters`` iterations (Adam/SGD); lets noisy (contact-rich) objectives settle.
        callback: ``callback(iteration, loss)`` after each step.
        nonfinite: what a NaN/inf gradient does. ``"raise"`` (default): stop with
            :class:`NonFiniteGradientError` naming the parameter and the iteration -- a
            non-finite gradient is a bug or an unstable simulation, never repaired silently.
            ``"skip"`` (opt in): that iteration makes no update (its gradients are zeroed) and
            is recorded in ``History.skipped`` (examples report the count in ``metrics.json``).

    Data parallel: when ``torch.distributed`` is initialised with several processes
    (:mod:`diffvc.optim.distributed`), each process's ``loss_fn`` returns its share of the
    total loss (a sum over its shard of views, frames, samples or environments); the loop sums
    the gradients and the losses over processes before every step, so every process takes the
    same step and the result does not depend on the number of processes.

    Resumable: inside :func:`~diffvc.optim.run_context` the loop writes checkpoints and resumes
    from them (:mod:`diffvc.optim.checkpoint`).

    Returns:
        :class:`History` with per-iteration loss and parameter values.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    lr = as_float(lr, "lr", positive=True)
    if nonfinite not in _NONFINITE:
        raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable () -> scalar loss tensor, got {describe(loss_fn)}")
    pset = params if isinstance(params, ParameterSet) else None
    if pset is None and (params is None or isinstance(params, (str, torch.Tensor)) or not hasattr(params, "__iter__")):
        raise TypeError(f"params must be a ParameterSet or a sequence of tensors, got {describe(params)}")
    tensors = pset.raw() if pset is not None else list(params)
    names = list(pset) if pset is not None else [f"params[{i}]" for i in range(len(tensors))]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise ValueError("params: need at least one tensor and every tensor must require grad")
    kw = dict(optimizer_kwargs or {})
    if method == "adam":
        opt = _eager.Adam(tensors, lr=lr, **kw)   # torch's, without the torch._dynamo import
    elif method == "sgd":
        opt = _eager.SGD(tensors, lr=lr, **kw)
    else:
        kw.setdefault("line_search_fn", "strong_wolfe")
        kw.setdefault("max_iter", 5)
        opt = _eager.LBFGS(tensors, lr=lr, **kw)

    sched = None
    if lr_final is not None:
        if not (0 < lr_final <= lr):
            raise ValueError(f"lr_final must be in (0, lr], got {lr_final!r}")
        if method != "lbfgs":
            gamma = (lr_final / lr) ** (1.0 / max(iters - 1, 1))
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    hist = History()
    t0 = time.perf_counter()
    best, stale = math.inf, 0
    start = 0
    run = _ckpt.current_run()
    ck = None
    if run is not None:
        ck = _ckpt.Checkpointer(run, desc, {"desc": desc, "method": method, "iters": iters, "names": names,
                                            "shapes": [tuple(t.shape) for t in tensors]})
        saved = ck.load()
        if saved is not None:
            with torch.no_grad():
                for t, v in zip(tensors, saved["params"]):
                    t.copy_(v.to(dtype=t.dtype, device=t.device))
            opt.load_state_dict(saved["optimizer"])
            if sched is not None and saved["scheduler"] is not None:
                sched.load_state_dict(saved["scheduler"])
            _ckpt.set_rng_state(saved["rng"])
            hist = saved["history"]
            best, stale, start = saved["best"], saved["stale"], saved["next"]
            if saved["finished"]:
                return hist
    elapsed0 = hist.seconds

    def save(next_it: int, finished: bool) -> None:
        hist.seconds = elapsed0 + time.perf_counter() - t0
        ck.save({"params": [t.detach().cpu().clone() for t in tensors], "optimizer": opt.state_dict(),
                 "scheduler": None if sched is None else sched.state_dict(), "rng": _ckpt.rng_state(),
                 "history": hist, "best": best, "stale": stale, "next": next_it, "finished": finished})

    distributed = world_size() > 1
    bar = tqdm(range(start, iters), desc=desc, disable=not progress, dynamic_ncols=True, leave=True,
               initial=start, total=iters)
    if run is not None:
        run.active = True
    try:
        done = False
        for it in bar:
            snap = pset.snapshot() if pset is not None else {}

            skip = []

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn()
                if loss.dim() != 0:
                    raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                loss.backward()
                if distributed:  # every process takes the same step: sum gradients and losses
                    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
                    total = loss.detach().clone().reshape(1)
                    all_reduce_(grads + [total])
                    for t, g in zip(tensors, grads):
                        t.grad = g
                    loss = total[0]
                bad = [n for n, t in zip(names, tensors) if t.grad is not None and not all_finite(t.grad)]
                if bad:
                    if nonfinite == "raise":
                        raise NonFiniteGradientError(
                            f"non-finite gradient of {', '.join(bad)} at iteration {it} (loss {float(loss.detach()):.6g}); "
                            f"pass nonfinite='skip' to skip such iterations")
                    skip.append(it)
                    for t in tensors:
                        if t.grad is not None:
                            t.grad.zero_()
                if grad_clip is not None and method != "lbfgs":
                    torch.nn.utils.clip_grad_norm_(tensors, grad_clip)
                return loss

            if method == "lbfgs":
                loss = opt.step(closure)
            else:
                loss = closure()
                if not skip:
                    opt.step()
                if sched is not None:
                    sched.step()
            if skip:
                hist.skipped.append(it)
            lv = float(loss.detach())
            hist.loss.append(lv)
            hist.params.append(snap)
            if progress:
                post = {"loss": f"{lv:.4g}"}
                post.update({k: _format(v) for k, v in list(snap.items())[:4]})
                bar.set_postfix(post, refresh=False)
            if callback is not None:
                callback(it, lv)
            if tol is not None:
                if lv < tol:
                    hist.stopped_early = it + 1 < iters
                    done = True
                elif lv < best * (1 - 1e-12):
                    best, stale = lv, 0
                else:
                    stale += 1
                    if stale >= patience:
                        hist.stopped_early = True
                        done = True
            if ck is not None:
                signum = ck.interrupted()
                if done or it + 1 == iters or signum is not None or (it + 1 - start) % run.every == 0:
                    save(it + 1, done or it + 1 == iters)
                if signum is not None and not (done or it + 1 == iters):
                    bar.close()
                    _ckpt.exit_for_signal(signum)
            if done:
                break
    finally:
        if run is not None:
            run.active = False
    bar.close()
    hist.seconds = elapsed0 + time.perf_counter() - t0
    return hist
