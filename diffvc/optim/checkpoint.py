"""Resumable optimisation: checkpoints of :func:`~diffvc.optim.optimize` and the run context.

Inside ``with run_context(directory, every=k):`` every call to :func:`~diffvc.optim.optimize`
writes a checkpoint ``<directory>/<nn>_<desc>.pt`` (``nn``: the call's index within the run)
every ``k`` iterations, when it finishes, and when the process receives SIGINT or SIGTERM (the
current iteration completes, the checkpoint is written, then the signal's usual exit happens:
``KeyboardInterrupt`` or exit status 143). A checkpoint holds the parameters, the optimiser's
and the learning-rate schedule's state, the torch / NumPy / Python RNG states, the history and
the early-stopping counters.

With ``resume=True`` each call loads its checkpoint and continues from the next iteration; a
call whose checkpoint says it finished returns its history at once with the parameters set to
its final values. Deterministic problems therefore end exactly where an uninterrupted run ends
(test: ``tests/optim/test_resume.py``). Errors are never silent: resuming from a directory
without checkpoints, a checkpoint that does not load (corrupted) or one written by another
problem (other parameter names or shapes, method, iteration count) raises
:class:`CheckpointError` naming the file and the difference -- never a restart from scratch.

``diffvc run NAME --resume DIR`` and ``--checkpoint-every K`` drive this for every example.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["CheckpointError", "run_context", "current_run"]

_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or belongs to another problem."""


@dataclass
class RunState:
    """The active run context (see :func:`run_context`)."""

    directory: Path
    every: int = 10
    resume: bool = False
    calls: int = 0
    interrupted: list = field(default_factory=list)   # signal numbers received
    active: bool = False                               # an optimize loop is running


_RUN: RunState | None = None


def current_run() -> RunState | None:
    """The active :func:`run_context`, or ``None``."""
    return _RUN


def run_context(directory, every: int = 10, resume: bool = False):
    """Checkpoint every :func:`~diffvc.optim.optimize` call inside the block (module doc).

    Args:
        directory: where checkpoints go (created).
        every: write a checkpoint every ``every`` iterations (>= 1).
        resume: continue from the checkpoints in ``directory`` (it must hold at least one).

    The arguments are checked when it is called (not only when the block is entered).
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if not isinstance(directory, (str, os.PathLike)) or (isinstance(directory, str) and not directory):
        raise TypeError(f"directory must be a path (str or pathlib.Path), got {type(directory).__name__}")
    return _run_context(Path(directory), every, bool(resume))


@contextlib.contextmanager
def _run_context(directory: Path, every: int, resume: bool):
    global _RUN
    if resume:
        if not directory.is_dir() or not any(directory.glob("*.pt")):
            raise CheckpointError(f"resume: no checkpoint in {directory} (nothing to resume; run without --resume)")
    directory.mkdir(parents=True, exist_ok=True)
    state = RunState(directory, every, resume)
    previous, _RUN = _RUN, state
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            if not state.active:          # outside an optimisation loop: leave at once, as usual
                exit_for_signal(signum)
            state.interrupted.append(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        yield state
    finally:
        _RUN = previous
        for sig, h in handlers.items():
            signal.signal(sig, h)


def _key(index: int, desc: str) -> str:
    return f"{index:02d}_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", desc).strip("_") or "optimize")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


class Checkpointer:
    """Saving and loading of one :func:`~diffvc.optim.optimize` call (used by the loop)."""

    def __init__(self, run: RunState, desc: str, meta: dict):
        self.run = run
        self.path = run.directory / (_key(run.calls, desc) + ".pt")
        run.calls += 1
        self.meta = meta

    def load(self) -> dict | None:
        """The saved state if the run resumes and this call has a checkpoint; checks it matches."""
        if not self.run.resume or not self.path.exists():
            return None
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is a corrupted file
            raise CheckpointError(f"checkpoint {self.path} is corrupted or unreadable: {e}") from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT or "meta" not in data:
            raise CheckpointError(f"checkpoint {self.path} is not a diffvc optimisation checkpoint")
        for k, v in self.meta.items():
            if data["meta"].get(k) != v:
                raise CheckpointError(f"checkpoint {self.path} belongs to another problem: {k} is "
                                      f"{data['meta'].get(k)!r} there, {v!r} here")
        return data

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": _FORMAT, "meta": self.meta, **state}, tmp)
        os.replace(tmp, self.path)

    def interrupted(self) -> int | None:
        return self.run.interrupted[0] if self.run.interrupted else None


def exit_for_signal(signum: int):
    """Leave the way the signal would have: KeyboardInterrupt for SIGINT, status 143 for SIGTERM."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + int(signum))
