"""Data-parallel inverse problems on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Each process computes the loss of its shard of the work (views, frames, samples per pixel,
environments), :func:`~diffvc.optim.optimize` sums gradients and losses over processes before
every step (:func:`all_reduce_`), so all processes take identical steps. Start processes with
``diffvc run NAME --nproc N`` (local, on loopback) or with ``torchrun`` (several machines:
``torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT -m diffvc.cli run NAME``); both
set the usual ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` environment, which
:func:`init_from_env` reads. Without them everything runs in one process, unchanged.

Sharding helpers: :func:`shard` (this rank's items of a list, round-robin) and
:func:`rank_seed` (a per-rank seed derived from a base seed, so Monte Carlo shards are
independent and the same for any process count when the example shards by sample index).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist

from .._validate import as_int, describe

__all__ = ["launch", "init_from_env", "is_distributed", "rank", "world_size", "shard", "shard_range", "rank_seed",
           "all_reduce_", "barrier", "shutdown"]


def init_from_env(backend: str | None = None, timeout_s: float = 120.0) -> bool:
    """Join the process group described by the environment (``WORLD_SIZE`` > 1); returns
    whether this process is part of a multi-process run. ``backend``: ``"gloo"`` (CPU, default)
    or ``"nccl"`` (CUDA)."""
    import datetime

    if dist.is_initialized():
        return dist.get_world_size() > 1
    if "DIFFVC_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["DIFFVC_THREADS"]))
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1:
        return False
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if k not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={n} but {k} is not set (start with diffvc run --nproc or torchrun)")
    backend = backend or ("nccl" if torch.cuda.is_available() and os.environ.get("DIFFVC_BACKEND") == "nccl" else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard(items: Sequence) -> list:
    """This process's items, round-robin: ``items[rank::world_size]``."""
    if isinstance(items, (str, bytes)) or not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
        raise TypeError(f"items must be a sequence (list, tuple, range, tensor), got {describe(items)}")
    return list(items)[rank()::world_size()]


def shard_range(n: int) -> range:
    """This process's indices of ``range(n)``, round-robin."""
    n = as_int(n, "n", minimum=0)
    return range(rank(), n, world_size())


def rank_seed(base: int, index: int) -> int:
    """A seed for work item ``index`` derived from ``base`` (independent of the process count)."""
    base, index = as_int(base, "base", minimum=0), as_int(index, "index", minimum=0)
    return (base * 1_000_003 + index * 7919) % (2 ** 31 - 1)


def all_reduce_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over all processes, in place (one flat buffer, one collective)."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {describe(tensors)}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {describe(t)}")
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    k = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[k:k + n].reshape(t.shape).to(t.dtype))
        k += n


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: Sequence[str], nproc: int, threads: int | None = None, timeout_s: float | None = None,
           env: dict | None = None) -> int:
    """Run ``python argv...`` in ``nproc`` local processes joined by gloo on loopback (what
    ``diffvc run NAME --nproc N`` does; ``torchrun`` does the same across machines).

    Each process gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free
    ``MASTER_PORT`` and ``threads`` torch threads (default: CPU cores / nproc, at least 1).
    Rank 0's output goes to this process's stdout/stderr; the others' stdout is discarded (their
    errors still show). Returns the first non-zero exit status, else 0; on a timeout or a failed
    rank the remaining ranks are terminated.
    """
    import subprocess
    import sys
    import time

    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)) or \
            not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a list of strings (python's arguments), got {describe(argv)}")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    port = _free_port()
    procs = []
    for r in range(nproc):
        e = dict(os.environ, **(env or {}))
        e.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads),
                 DIFFVC_THREADS=str(threads))
        out = None if r == 0 else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, *argv], env=e, stdout=out))
    t0 = time.monotonic()
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if bad or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
                status = bad[0] if bad else 124
                break
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
            status = status or p.returncode
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return status
