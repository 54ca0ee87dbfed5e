"""The bridge between torch tensors and Warp kernels.

These live here and nowhere else:

* Warp is imported and initialised once, quietly (:data:`wp`).
* torch device <-> Warp device mapping (:func:`warp_device`) and zero-copy views of torch
  tensors as Warp arrays (:func:`to_warp`, with :func:`vec` / :func:`mat` tags that say how the
  trailing dimensions map onto Warp vector / matrix types).
* :func:`kernel_op`: a Warp kernel exposed as a differentiable torch function. The forward pass
  launches the kernel on zero-copy views; the backward pass launches Warp's generated adjoint
  kernel with the incoming gradients and returns the input gradients to torch autograd.
* Launch overhead out of the hot path: :func:`launch` and :func:`kernel_op` replay recorded
  launches (:func:`fast_launch`: one ``wp.Launch`` per kernel and argument types, arguments
  set from cached array descriptors), and :func:`segment_op` fuses K steps of a fixed launch
  sequence into one autograd node (the fused segments of rigid bodies and FEM; particles, which
  do not interact, run all K steps in one launch: ``particles.particle_segment``).

Kernels are written generically (``wp.array(dtype=Any)``, scalars ``Any``) so one source serves
float32 and float64; Warp specialises them at launch. Python floats passed to a kernel are cast
to the floating dtype of the tensors in the same launch.

CPU note (measured on the 2-core dev machine): a Warp CPU launch runs on one thread.
:func:`parallel_launch` is the one split launch of diffvc: it splits a launch into
:func:`split_chunks` (one per torch thread, each ``(start, count)``): the calling thread runs one
and the package's launch workers the others, each chunk a direct call of the kernel's entry point
(the kernel takes an ``offset: int`` first argument and uses ``wp.tid() + offset``) prepared by
the caller and handed to its worker in shared memory (``handoff``: native spinning for a short
while on both sides, locks after that). Warp's CPU atomics are *not* atomic across threads, so
never split a kernel that accumulates into shared entries unless each chunk gets its own
accumulation buffers (``inputs``/``outputs`` given as functions of the chunk index), and never
split adjoint launches (they scatter with atomics).

Stream policy (CUDA): every Warp launch and every Warp-side build (BVHs) runs on torch's
*current* CUDA stream (:func:`torch_stream`), so Warp work is ordered with the torch work around
it and no device-wide synchronisation is ever needed.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

os.environ.setdefault("WARP_CACHE_PATH", os.path.join(os.path.expanduser("~"), ".cache", "warp"))

import warp as wp  # noqa: E402  (the only import of warp in diffvc)

wp.config.log_level = getattr(wp, "LOG_WARNING", 30)
_init_lock = threading.Lock()
_initialised = False


def _ensure_init() -> None:
    global _initialised
    if not _initialised:
        with _init_lock:
            if not _initialised:
                if torch.cuda.is_available():
                    wp.init()
                else:
                    # Warp's native library prints a CUDA-driver warning to fd 2 on machines without
                    # CUDA; silence that one line, nothing else is printed during init.
                    saved = os.dup(2)
                    try:
                        with open(os.devnull, "w") as null:
                            os.dup2(null.fileno(), 2)
                            wp.init()
                    finally:
                        os.dup2(saved, 2)
                        os.close(saved)
                _initialised = True


_ensure_init()


def cuda_available() -> bool:
    """True when both torch and Warp see a CUDA device."""
    return torch.cuda.is_available() and wp.is_cuda_available()


def warp_device(device: torch.device | str) -> str:
    """Warp device string for a torch device: ``cpu`` -> ``"cpu"``, ``cuda[:i]`` -> ``"cuda:i"``."""
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if not wp.is_cuda_available():
            raise RuntimeError(f"device={device}: Warp found no CUDA device")
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    raise ValueError(f"device={device}: diffvc kernels run on 'cpu' or 'cuda' devices only")


@dataclass(frozen=True)
class _Tagged:
    tensor: torch.Tensor
    kind: str  # "vec" or "mat"


def vec(t: torch.Tensor) -> _Tagged:
    """Tag a tensor ``(..., n)`` so its last dimension becomes a Warp ``vector(n)``."""
    return _Tagged(t, "vec")


def mat(t: torch.Tensor) -> _Tagged:
    """Tag a tensor ``(..., n, m)`` so its last two dimensions become a Warp ``matrix((n, m))``."""
    return _Tagged(t, "mat")


_SCALAR = {
    torch.float32: wp.float32,
    torch.float64: wp.float64,
    torch.float16: wp.float16,
    torch.int32: wp.int32,
    torch.int64: wp.int64,
    torch.uint8: wp.uint8,
    torch.bool: wp.bool,
}


def _warp_dtype(t: torch.Tensor, kind: str | None):
    if t.dtype not in _SCALAR:
        raise TypeError(f"tensor dtype {t.dtype} has no Warp equivalent")
    scalar = _SCALAR[t.dtype]
    if kind is None:
        return scalar, t.shape
    if kind == "vec":
        if t.dim() < 1:
            raise ValueError("vec() needs a tensor with at least one dimension")
        return wp.types.vector(length=t.shape[-1], dtype=scalar), t.shape[:-1]
    if kind == "mat":
        if t.dim() < 2:
            raise ValueError("mat() needs a tensor with at least two dimensions")
        return wp.types.matrix(shape=(t.shape[-2], t.shape[-1]), dtype=scalar), t.shape[:-2]
    raise ValueError(f"unknown layout {kind!r}")


def to_warp(t: torch.Tensor | _Tagged, kind: str | None = None) -> "wp.array":
    """Zero-copy Warp view of a torch tensor (made contiguous first if it is not).

    ``kind`` is ``None`` (scalar array with the tensor's shape), ``"vec"`` or ``"mat"``; a tensor
    tagged with :func:`vec`/:func:`mat` carries its own kind. A tensor with no elements in its
    outer dimensions gives an empty array.
    """
    if isinstance(t, _Tagged):
        t, kind = t.tensor, t.kind
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    dtype, outer = _warp_dtype(t, kind)
    outer = tuple(int(s) for s in outer)
    if len(outer) == 0:
        outer = (1,)
    if len(outer) > 4:
        raise ValueError(f"Warp arrays have at most 4 dimensions, got outer shape {outer}")
    arr = wp.array(
        ptr=t.data_ptr(),
        dtype=dtype,
        shape=outer,
        device=warp_device(t.device),
        copy=False,
        requires_grad=False,
    )
    arr._diffvc_owner = t  # keep the storage (possibly a contiguous copy) alive as long as the view
    return arr


def _stream(device: torch.device):
    if device.type == "cuda":
        return wp.stream_from_torch(torch.cuda.current_stream(device))
    return None


@contextmanager
def torch_stream(device: torch.device | str):
    """Context in which Warp work that takes no explicit stream (e.g. building a ``wp.Mesh``
    BVH) runs on torch's current CUDA stream of ``device``; a no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        with wp.ScopedStream(_stream(device), sync_enter=False):
            yield
    else:
        yield


def _floating_dtype(items: Sequence[Any]) -> torch.dtype:
    for x in items:
        t = x.tensor if isinstance(x, _Tagged) else x
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _scalar(x: Any, fdtype: torch.dtype):
    if isinstance(x, bool):
        return x
    if isinstance(x, float):
        return _SCALAR[fdtype](x)
    return x


def _convert(items: Sequence[Any], fdtype: torch.dtype) -> list:
    out = []
    for x in items:
        if isinstance(x, (torch.Tensor, _Tagged)):
            out.append(to_warp(x))
        else:
            out.append(_scalar(x, fdtype))
    return out


def _device_of(items: Sequence[Any]) -> torch.device:
    for x in items:
        t = x.tensor if isinstance(x, _Tagged) else x
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


@contextmanager
def kernel_guard(kernel):
    """Run a launch (or a module load) of ``kernel`` so that a failure leaves diffvc usable.

    Warp compiles a generic kernel once per combination of argument types, adding an overload to
    the kernel before building its module. An overload that fails to compile (e.g. float32 and
    float64 arrays mixed in one launch) would stay in the module and make every later build of
    that module fail, for valid calls too (a poisoned process). Here the overloads added by the
    failed call are removed again and the module is marked for a rebuild; the error is re-raised
    (as a ``TypeError`` when it was a new overload that failed to build).
    """
    overloads = getattr(kernel, "overloads", None)
    before = set(overloads) if isinstance(overloads, dict) else None
    try:
        yield
    except Exception as e:
        new = [k for k in list(overloads)] if before is not None else []
        new = [k for k in new if k not in before]
        for k in new:
            overloads.pop(k, None)
        if new:
            kernel.module.mark_modified()
            first = str(e).strip().splitlines()
            raise TypeError(f"kernel {kernel.key!r} cannot be built for these argument types (are float32 and "
                            f"float64 tensors mixed in one call?): {' '.join(first[-2:])[:400]}") from e
        if isinstance(e, RuntimeError) and "argument" in str(e) and "dtype" in str(e):
            raise TypeError(str(e)) from e  # an array of the wrong dtype for a typed kernel argument
        raise


def launch(kernel, dim, inputs: Sequence[Any], outputs: Sequence[Any] = (), device=None) -> None:
    """Launch ``kernel`` on torch tensors (no autograd). Outputs are written in place.

    Runs through the recorded-launch cache (:func:`fast_launch`): after the first call with a
    given kernel and argument types, a call costs a replay plus ~1 us per argument."""
    device = torch.device(device) if device is not None else _device_of(list(inputs) + list(outputs))
    fdtype = _floating_dtype(list(inputs) + list(outputs))
    fast_launch(kernel, dim, list(inputs) + list(outputs), device, fdtype)


# --------------------------------------------------------------------------------------------
# recorded launches: the per-call cost of a Warp launch out of the hot path
# --------------------------------------------------------------------------------------------
#
# Measured on the 2-core dev machine (Warp 1.19, CPU, one run, machine shared): a ``wp.launch``
# of the 11-argument particle kernel on prebuilt views cost ~20x the replay of the same recorded
# ``wp.Launch`` (616 vs 30 us under load), and building a ``wp.array`` view of a tensor ~170x
# copying a cached array descriptor (``array_t``) and setting its data pointer (85 vs 0.5 us);
# bench/launch.py measures the end-to-end effect side by side. Every launch of diffvc that goes
# through :func:`launch`, :func:`kernel_op` or :func:`segment_op` therefore runs as: look up a
# recorded launch of the kernel for these argument *types* (dtype, vector/matrix layout, array
# rank, scalar types; recorded on the first call, which also compiles), set each argument from
# its descriptor, replay. Shapes and pointers change freely between calls; the cache is
# per thread (a recorded launch holds mutable parameters).

_ARRAY_T = type(to_warp(torch.zeros(1)).__ctype__())  # Warp's array descriptor struct
_TEMPLATES: dict = {}        # (dtype, kind, shape) -> array_t template (data pointer 0)
_MAX_TEMPLATES = 4096
_LOCAL = threading.local()   # .launches: per-thread recorded-launch cache
_MAX_LAUNCHES = 2048


def _desc(t: torch.Tensor, kind: str | None):
    """Warp array descriptor (``array_t``) of a contiguous tensor: a copy of a template cached
    per (dtype, layout, shape) with the tensor's data pointer. No ``wp.array`` object is built
    and the descriptor holds no reference to the tensor: the caller keeps it alive."""
    key = (t.dtype, kind, t.shape)
    tpl = _TEMPLATES.get(key)
    if tpl is None:
        tpl = _ARRAY_T.from_buffer_copy(to_warp(t, kind).__ctype__())
        tpl.data = 0
        tpl.grad = 0
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[key] = tpl
    c = _ARRAY_T.from_buffer_copy(tpl)
    c.data = t.data_ptr()
    return c


def rows(t: torch.Tensor, kind: str | None = None) -> list:
    """Descriptors (``array_t``) of each row ``t[r]`` of a contiguous tensor, made by pointer
    arithmetic on one template (~0.5 us each); for :func:`segment_op` buffers and replays."""
    if not t.is_contiguous():
        raise ValueError("rows() needs a contiguous tensor")
    base = _desc(t[0], kind)
    step = t[0].numel() * t.element_size()
    out = []
    for r in range(t.shape[0]):
        c = _ARRAY_T.from_buffer_copy(base)
        c.data = base.data + r * step
        out.append(c)
    return out


def _unwrap(x):
    return (x.tensor, x.kind) if isinstance(x, _Tagged) else (x, None)


def _sig(x: Any, fdtype: torch.dtype):
    """What decides the Warp overload and the packed parameter type of one argument."""
    t, kind = _unwrap(x)
    if isinstance(t, torch.Tensor):
        trail = 0 if kind is None else (1 if kind == "vec" else 2)
        return (t.dtype, kind, t.dim(), tuple(t.shape[t.dim() - trail:]))
    if x is None:
        return None
    if isinstance(x, bool):
        return bool
    if isinstance(x, float):
        return (float, fdtype)
    if isinstance(x, wp.array):
        return (wp.array, x.dtype, x.ndim)
    return type(x)


def _launch_cache() -> dict:
    cache = getattr(_LOCAL, "launches", None)
    if cache is None:
        cache = _LOCAL.launches = {}
    return cache


def _dim_tuple(dim) -> tuple:
    return tuple(int(d) for d in dim) if isinstance(dim, (tuple, list)) else (int(dim),)


def _to_param(x: Any, fdtype: torch.dtype, keep: list):
    """(value, from_ctype) for one argument of a recorded launch: an array descriptor or a plain
    number (set without conversion), or a Warp value (set with Warp's own packing)."""
    t, kind = _unwrap(x)
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        keep.append(t)
        return _desc(t, kind), True
    if x is None:
        return None, False
    if isinstance(x, (bool, int, float)):
        return x, True
    return x, False


class _Recorded:
    """A recorded ``wp.Launch`` with which of its parameters are arrays."""

    __slots__ = ("cmd", "dim", "is_array", "n", "keep")

    def __init__(self, cmd, dim):
        self.cmd, self.dim = cmd, dim
        self.is_array = [wp.types.is_array(a.type) for a in cmd.kernel.adj.args]
        self.n = len(self.is_array)

    def set(self, i: int, x: Any, fdtype: torch.dtype, keep: list, adjoint: bool = False) -> None:
        v, raw = _to_param(x, fdtype, keep)
        if v is None:
            if self.is_array[i]:
                self.cmd.set_param_at_index_from_ctype(i, _ARRAY_T(), adjoint=adjoint)
            return  # an absent adjoint of a scalar keeps the recorded zero
        if raw:
            self.cmd.set_param_at_index_from_ctype(i, v, adjoint=adjoint)
        else:
            self.cmd.set_param_at_index(i, v, adjoint=adjoint)

    def run(self, device: torch.device) -> None:
        stream = _stream(device)
        if stream is None:
            self.cmd.launch()
        else:
            self.cmd.launch(stream=stream)


def record(kernel, dim, args: Sequence[Any], device: torch.device, fdtype: torch.dtype | None = None,
           adj_args: Sequence[Any] | None = None) -> _Recorded:
    """Record a launch of ``kernel(*args)`` (forward, or its adjoint when ``adj_args`` is given)
    without running it. Arguments as for :func:`launch`; the kernel is compiled here if needed."""
    device = torch.device(device)
    fdtype = fdtype or _floating_dtype(list(args))
    w_args = _convert(args, fdtype)
    kw = {}
    if adj_args is not None:
        kw = dict(adj_inputs=_convert(adj_args, fdtype), adj_outputs=[], adjoint=True)
    with kernel_guard(kernel):
        cmd = wp.launch(kernel, dim=dim, inputs=w_args, outputs=[], device=warp_device(device), record_tape=False,
                        record_cmd=True, **kw)
    # the recorded arguments (views holding tensors) are not needed to replay: drop them
    cmd.fwd_args = None
    cmd.adj_args = None
    return _Recorded(cmd, _dim_tuple(dim))


_RECORDED = [True]


@contextmanager
def recorded_launches(enabled: bool):
    """Within this context :func:`launch` and :func:`kernel_op` use recorded launches
    (``enabled``, the default) or a plain ``wp.launch`` on freshly built ``wp.array`` views per
    call (the former path, kept for side-by-side benchmarks: ``bench/launch.py``)."""
    old = _RECORDED[0]
    _RECORDED[0] = bool(enabled)
    try:
        yield
    finally:
        _RECORDED[0] = old


def fast_launch(kernel, dim, args: Sequence[Any], device: torch.device, fdtype: torch.dtype,
                adj_args: Sequence[Any] | None = None) -> None:
    """Launch ``kernel(*args)`` (``args`` = inputs then outputs: tensors, optionally
    :func:`vec`/:func:`mat` tagged, Python scalars, Warp values, ``None``) through the per-thread
    recorded-launch cache; with ``adj_args`` (same layout: gradient tensors or ``None``) launch
    Warp's adjoint kernel instead. Outputs are written in place; non-contiguous tensors are
    copied, so outputs must be contiguous."""
    dims = _dim_tuple(dim)
    if any(d == 0 for d in dims):
        return
    if not _RECORDED[0]:  # the former path: views and argument packing at every call
        kw = {} if adj_args is None else dict(adj_inputs=_convert(adj_args, fdtype), adj_outputs=[], adjoint=True)
        with kernel_guard(kernel):
            wp.launch(kernel, dim=dims, inputs=_convert(args, fdtype), outputs=[], device=warp_device(device),
                      stream=_stream(device), record_tape=False, **kw)
        return
    keep: list = []
    _prepared(kernel, dims, args, device, fdtype, adj_args, keep).run(device)


def _prepared(kernel, dims: tuple, args: Sequence[Any], device: torch.device, fdtype: torch.dtype,
              adj_args: Sequence[Any] | None, keep: list, slot: int = 0) -> _Recorded:
    """The calling thread's recorded launch of ``kernel`` for these argument types, its
    parameters set to ``args`` (tensors it converted are appended to ``keep``, which must outlive
    the run). ``slot`` tells apart records prepared together for different threads (the chunks
    of one :func:`parallel_launch`): a record is replayed by one thread at a time."""
    key = (slot, kernel, device, tuple(_sig(a, fdtype) for a in args),
           None if adj_args is None else tuple(_sig(a, fdtype) for a in adj_args))
    cache = _launch_cache()
    rec = cache.get(key)
    if rec is None:
        if len(cache) >= _MAX_LAUNCHES:
            cache.clear()
        rec = cache[key] = record(kernel, dims, args, device, fdtype, adj_args)
    if rec.dim != dims:
        rec.cmd.set_dim(dims)
        rec.dim = dims
    for i, a in enumerate(args):
        rec.set(i, a, fdtype, keep)
    if adj_args is not None:
        for i, a in enumerate(adj_args):
            rec.set(i, a, fdtype, keep, adjoint=True)
    return rec


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The one launch thread pool of diffvc (sized for the machine; each split launch uses
    ``torch.get_num_threads()`` chunks, read at call time)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    return _POOL


def split_chunks(n: int, device: torch.device | str, min_per_thread: int = 4096) -> list[tuple[int, int]]:
    """The ``(start, count)`` thread ranges :func:`parallel_launch` splits ``n`` threads into:
    one per torch thread on CPU when every chunk gets at least ``min_per_thread`` threads, else a
    single range (always a single range on CUDA)."""
    device = torch.device(device)
    workers = max(1, torch.get_num_threads())
    if device.type != "cpu" or workers == 1 or n < 2 * min_per_thread:
        return [(0, n)]
    step = (n + workers - 1) // workers
    return [(s, min(step, n - s)) for s in range(0, n, step)]


def parallel_launch(kernel, n: int, inputs: Sequence[Any] | Callable[[int], Sequence[Any]],
                    outputs: Sequence[Any] | Callable[[int], Sequence[Any]] = (), device=None,
                    min_per_thread: int = 4096, ranges: Sequence[tuple[int, int]] | None = None) -> int:
    """Launch a 1-D ``kernel(offset, *inputs, *outputs)`` over ``n`` threads, split across CPU cores.

    ``inputs`` and ``outputs`` are torch tensors (optionally :func:`vec`/:func:`mat` tagged),
    Python scalars or Warp values (structs, arrays, ids). Either may instead be a function of the
    chunk index ``k`` (``0 <= k < len(split_chunks(n, device, min_per_thread))``) that gives that
    chunk its own arguments, e.g. private accumulation buffers, the way to split a kernel that
    accumulates (Warp's CPU atomics are not atomic across threads). Otherwise the kernel must write
    disjoint entries per thread. On CUDA, or when ``n`` is small, this is one launch with
    ``offset=0`` on torch's current stream. ``ranges``: on the CPU, the chunks' ``(start, count)``
    thread ranges (non-empty) instead of :func:`split_chunks`, e.g. ranges of uneven length whose
    writes the caller knows to be disjoint. Returns the number of chunks launched.
    """
    first_in = list(inputs(0) if callable(inputs) else inputs)
    first_out = list(outputs(0) if callable(outputs) else outputs)
    device = torch.device(device) if device is not None else _device_of(first_in + first_out)
    fdtype = _floating_dtype(first_in + first_out)
    wdev = warp_device(device)
    if ranges is not None and device.type == "cpu":
        chunks = [(int(a), int(c)) for a, c in ranges]
        if not chunks or any(c <= 0 for _, c in chunks):
            raise ValueError(f"ranges must be non-empty (start, count) pairs, got {ranges}")
    else:
        chunks = split_chunks(n, device, min_per_thread)

    def run(k: int) -> None:
        # through the per-thread recorded-launch cache (fast_launch): a chunk costs a replay, not a
        # wp.launch building Warp views of every argument (measured ~7x less per split launch)
        start, count = chunks[k]
        a_in = first_in if k == 0 or not callable(inputs) else list(inputs(k))
        a_out = first_out if k == 0 or not callable(outputs) else list(outputs(k))
        fast_launch(kernel, count, [start] + a_in + a_out, device, fdtype)

    with kernel_guard(kernel):
        if len(chunks) == 1:
            run(0)
        else:
            release_omp_workers()  # torch's OpenMP workers would spin beside the chunks
            kernel.module.load(wdev)  # compile/load on this thread so worker threads only launch
            key = (kernel.key, id(kernel), fdtype, str(wdev))
            first = 0
            if key not in _SPLIT_SEEN:
                # the first launch of a generic kernel for new argument types builds its overload
                # (code generation); two threads doing that at once crash Warp ("'Adjoint' object
                # has no attribute 'tid_extent_limit_candidate'"), so chunk 0 runs here first
                with _SPLIT_LOCK:
                    run(0)
                    _SPLIT_SEEN.add(key)
                first = 1
            if first == 0 and _RECORDED[0]:
                # the calling thread prepares every chunk's direct call (the Python work, under the
                # GIL: each shared argument converted once), then the launch workers call theirs
                # beside this thread's: a worker needs the GIL only for a moment, to make one ctypes
                # call. Threads take chunks from one queue: when a worker wakes late, this thread
                # runs its chunk too.
                keep: list = []
                jobs = _split_calls(kernel, chunks, first_in, first_out, inputs, outputs, device, fdtype, keep)
                if jobs is None:
                    queue: deque = deque()
                    for k, (start, count) in enumerate(chunks):
                        a_in = first_in if k == 0 or not callable(inputs) else list(inputs(k))
                        a_out = first_out if k == 0 or not callable(outputs) else list(outputs(k))
                        rec = _prepared(kernel, (count,), [start] + a_in + a_out, device, fdtype, None, keep,
                                        slot=1 + k)
                        queue.append(lambda rec=rec: rec.run(device))
                    futures = [_pool().submit(_drain, queue) for _ in range(1, len(chunks))]
                    try:
                        _drain(queue)
                    finally:
                        for f in futures:
                            f.result()
                else:
                    _WORKERS.run(jobs)
            elif first == 0:  # the calling thread runs chunk 0 beside the pool's chunks
                futures = [_pool().submit(run, k) for k in range(1, len(chunks))]
                try:
                    run(0)
                finally:
                    for f in futures:
                        f.result()
            else:
                for f in [_pool().submit(run, k) for k in range(first, len(chunks))]:
                    f.result()
    return len(chunks)


class _DirectCall:
    """One chunk of a split CPU launch as a direct call of the kernel's entry point with its own
    ctypes argument struct (Warp's ``invoke`` builds that struct afresh at every launch)."""

    __slots__ = ("cmd", "args", "names", "fn", "call", "dim", "addr")

    def __init__(self, rec: _Recorded):
        cmd = rec.cmd
        n = len(cmd.kernel.adj.args)
        if cmd.adjoint or getattr(cmd, "block_dim", 1) > 1 or cmd.hooks.forward is None or len(cmd.params) != 1 + n:
            raise RuntimeError("unexpected recorded launch layout")
        self.cmd = cmd
        self.names = [f"a{i}" for i in range(n)]
        fields = [(nm, type(cmd.params[1 + i])) for i, nm in enumerate(self.names)]
        self.args = type("SplitArgs", (ctypes.Structure,), {"_fields_": fields})()
        self.fn = cmd.hooks.forward
        self.dim = rec.dim
        self.call = (ctypes.byref(cmd.params[0]), ctypes.byref(self.args))
        # entry point, bounds and argument struct addresses, for a native hand-off (handoff.Worker)
        self.addr = (ctypes.cast(self.fn, ctypes.c_void_p).value, ctypes.addressof(cmd.params[0]),
                     ctypes.addressof(self.args))

    def prepare(self, dim: tuple, params: list, first: int = 0, like: "_DirectCall | None" = None) -> None:
        """Set the launch bounds and the arguments from index ``first`` on (``params``: their
        ``(value, raw)`` of :func:`_to_param`); with ``like`` (a call of the same kernel and argument
        types) first copy all of its arguments (one memmove for the arguments chunks share)."""
        cmd, args = self.cmd, self.args
        if dim != self.dim:
            cmd.set_dim(dim)  # replaces the bounds struct
            self.dim = dim
            self.call = (ctypes.byref(cmd.params[0]), ctypes.byref(args))
            self.addr = (self.addr[0], ctypes.addressof(cmd.params[0]), self.addr[2])
        if like is not None:
            ctypes.memmove(ctypes.addressof(args), ctypes.addressof(like.args), ctypes.sizeof(args))
        for i, (v, raw) in enumerate(params, first):
            nm = self.names[i]
            if v is None:
                if isinstance(getattr(args, nm), _ARRAY_T):
                    setattr(args, nm, _ARRAY_T())
                else:  # an absent scalar keeps the recorded value
                    setattr(args, nm, cmd.params[1 + i])
            elif raw:
                setattr(args, nm, v)
            else:  # a Warp value (struct, array, Warp scalar): Warp's own packing
                cmd.set_param_at_index(i, v)
                setattr(args, nm, cmd.params[1 + i])

    def __call__(self) -> None:
        self.fn(*self.call)


_SPLIT_DIRECT = [True]


def _sig_param(x: Any, fdtype: torch.dtype, keep: list) -> tuple:
    """``(_sig(x), _to_param(x))`` in one pass: the per-argument work of a split launch."""
    if isinstance(x, torch.Tensor):
        t, kind, trail = x, None, 0
    elif isinstance(x, _Tagged):
        t, kind = x.tensor, x.kind
        trail = 1 if kind == "vec" else 2
    else:
        return _sig(x, fdtype), _to_param(x, fdtype, keep)
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    keep.append(t)
    shape = t.shape
    return (t.dtype, kind, len(shape), tuple(shape[len(shape) - trail:])), (_desc(t, kind), True)


def _split_calls(kernel, chunks, first_in, first_out, inputs, outputs, device, fdtype, keep) -> list | None:
    """The direct calls (:class:`_DirectCall`) of a split CPU launch's chunks, prepared; ``None``
    where a direct call does not apply (CUDA, or a recorded launch laid out unexpectedly)."""
    if device.type != "cpu" or not _SPLIT_DIRECT[0]:
        return None
    cache = _launch_cache()

    def converted(a):
        both = [_sig_param(x, fdtype, keep) for x in a]
        return tuple(sp[0] for sp in both), [sp[1] for sp in both]

    sig_in, par_in = converted(first_in)
    sig_out, par_out = converted(first_out)
    n_in = len(first_in)
    sig0 = sig_in + sig_out
    jobs = []
    for k, (start, count) in enumerate(chunks):
        a_in = a_out = None
        if k > 0 and callable(inputs):
            a_in = list(inputs(k))
            sig_in, par_in = converted(a_in)
        if k > 0 and callable(outputs):
            a_out = list(outputs(k))
            sig_out, par_out = converted(a_out)
        key = ("split", k, kernel, device, sig_in + sig_out)
        call = cache.get(key)
        if call is None:
            if len(cache) >= _MAX_LAUNCHES:
                cache.clear()
            rec = record(kernel, (count,), [start] + (a_in or first_in) + (a_out or first_out), device, fdtype)
            try:
                call = _DirectCall(rec)
            except RuntimeError:  # pragma: no cover - depends on Warp internals
                _SPLIT_DIRECT[0] = False
                return None
            cache[key] = call
        if k == 0 or sig_in + sig_out != sig0:
            call.prepare((count,), [(start, True)] + par_in + par_out)
        else:  # chunk 0's arguments, then what differs: the offset and any per-chunk arguments
            call.prepare((count,), [(start, True)], like=jobs[0])
            if a_in is not None:
                call.prepare((count,), par_in, first=1)
            if a_out is not None:
                call.prepare((count,), par_out, first=1 + n_in)
        jobs.append(call)
    return jobs


def _drain(queue: deque) -> None:
    """Run the callables of ``queue`` until it is empty (several threads may drain one queue)."""
    while True:
        try:
            job = queue.popleft()
        except IndexError:
            return
        job()


class _LaunchWorkers:
    """Threads that run the chunks of split CPU launches beside the calling thread
    (:class:`~diffvc._kernels.handoff.Worker`: the hand-off meets in shared memory, in native code;
    a worker spins briefly for its next chunk before it parks, and so does the caller for the
    workers' completion before it sleeps). Direct calls (:class:`_DirectCall`, at most one per
    thread) are posted to the workers as entry points; other callables go through one queue that
    all threads drain in Python."""

    def __init__(self):
        self._workers: list = []
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one split launch at a time uses the workers

    def _ensure(self, n: int) -> list:
        with self._lock:
            if len(self._workers) < n:
                from .handoff import Worker

                while len(self._workers) < n:
                    self._workers.append(Worker(f"diffvc-launch-{len(self._workers)}"))
            return self._workers[:n]

    def run(self, jobs: list) -> None:
        """Run ``jobs`` (callables) on this thread and ``len(jobs) - 1`` workers; returns when all ran.
        While another thread's split launch holds the workers, this thread runs its jobs itself."""
        if not self._busy.acquire(blocking=False):
            for job in jobs:
                job()
            return
        try:
            self._run(jobs)
        finally:
            self._busy.release()

    def _run(self, jobs: list) -> None:
        threads = min(len(jobs), max(1, torch.get_num_threads()))
        workers = self._ensure(threads - 1)
        spin = threads <= _cores()  # no spinning on oversubscribed cores
        for w in workers:
            w.spinning(spin)
        if threads == len(jobs) and all(type(j) is _DirectCall for j in jobs):
            for w, job in zip(workers, jobs[1:]):
                w.post_call(*job.addr)
            try:
                jobs[0]()
            finally:
                for w in workers:
                    w.wait()
            return
        queue = deque(jobs)
        for w in workers:
            w.post_queue(queue)
        err = None
        try:
            _drain(queue)
        except BaseException as e:
            err = e
            queue.clear()
        for w in workers:
            w.wait()
            if err is None and w.error is not None:
                err = w.error
        if err is not None:
            raise err


_WORKERS = _LaunchWorkers()


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_split(jobs: Sequence[Callable[[], None]]) -> None:
    """Run the chunks of one split CPU launch (callables, e.g. recorded launches' ``launch``): one
    on the calling thread, the others on the package's launch workers (at most one per further
    torch thread; they take the chunks from one queue). Returns when all ran; an error in any
    chunk is raised here. The chunks must write disjoint memory."""
    if len(jobs) == 1:
        jobs[0]()
    elif jobs:
        release_omp_workers()  # torch's OpenMP workers would spin beside the chunks
        _WORKERS.run(list(jobs))


def _after_fork_in_child() -> None:
    # a forked child (e.g. a DataLoader worker) has none of the parent's threads: start afresh
    global _POOL, _WORKERS
    _POOL = None
    _WORKERS = _LaunchWorkers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_SPLIT_SEEN: set = set()
_SPLIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Out:
    """Specification of a kernel output allocated by :func:`kernel_op`.

    shape: full torch shape of the output tensor; kind: ``None``, ``"vec"`` or ``"mat"``
    (how the trailing dims map to Warp); dtype: defaults to the floating dtype of the inputs.
    """

    shape: tuple
    kind: str | None = None
    dtype: torch.dtype | None = None


class _KernelOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel, dim, n_inputs, layouts, out_specs, split, *args):
        inputs = list(args[:n_inputs])
        fdtype = _floating_dtype(inputs)
        device = _device_of(inputs)
        tagged_in = [(_Tagged(x, k) if (isinstance(x, torch.Tensor) and k) else x) for x, k in zip(inputs, layouts)]
        outs = []
        for spec in out_specs:
            outs.append(torch.zeros(spec.shape, dtype=spec.dtype or fdtype, device=device))
        tagged_out = [(_Tagged(o, s.kind) if s.kind else o) for o, s in zip(outs, out_specs)]
        if split:
            parallel_launch(kernel, dim, tagged_in, tagged_out, device=device)
        else:
            fast_launch(kernel, dim, tagged_in + tagged_out, device, fdtype)
        ctx.kernel, ctx.dim, ctx.layouts, ctx.out_specs, ctx.split = kernel, dim, layouts, out_specs, split
        ctx.fdtype, ctx.device = fdtype, device
        tensor_mask = [isinstance(x, torch.Tensor) for x in inputs]
        ctx.tensor_mask = tensor_mask
        ctx.scalars = [None if m else x for x, m in zip(inputs, tensor_mask)]
        ctx.save_for_backward(*[x for x in inputs if isinstance(x, torch.Tensor)], *outs)
        ctx.n_tensor_inputs = sum(tensor_mask)
        for o, s in zip(outs, out_specs):
            if not (o.is_floating_point()):
                ctx.mark_non_differentiable(o)
        return tuple(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, *grad_outs):
        saved = ctx.saved_tensors
        tensors = list(saved[: ctx.n_tensor_inputs])
        outs = list(saved[ctx.n_tensor_inputs:])
        inputs, it = [], iter(tensors)
        for m, s in zip(ctx.tensor_mask, ctx.scalars):
            inputs.append(next(it) if m else s)
        w_in, adj_in, grads = [], [], []
        for x, k in zip(inputs, ctx.layouts):
            if isinstance(x, torch.Tensor):
                w_in.append(_Tagged(x, k) if k else x)
                if x.is_floating_point():
                    # contiguous on purpose: a view of a non-contiguous buffer would be a copy and
                    # the adjoint would accumulate into the copy (a silent zero gradient)
                    g = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
                    grads.append(g)
                    adj_in.append(_Tagged(g, k) if k else g)
                else:
                    grads.append(None)
                    adj_in.append(None)
            else:
                w_in.append(x)
                adj_in.append(None)
                grads.append(None)
        w_out, adj_out = [], []
        for o, g, s in zip(outs, grad_outs, ctx.out_specs):
            w_out.append(_Tagged(o, s.kind) if s.kind else o)
            if g is None or not o.is_floating_point():
                g = torch.zeros_like(o)
            g = g.contiguous()
            adj_out.append(_Tagged(g, s.kind) if s.kind else g)
        if ctx.split:  # the split forward took a leading offset argument
            w_in, adj_in = [0] + w_in, [None] + adj_in
        fast_launch(ctx.kernel, ctx.dim, w_in + w_out, ctx.device, ctx.fdtype, adj_args=adj_in + adj_out)
        return (None, None, None, None, None, None, *grads)


def kernel_op(kernel, dim, inputs: Sequence[Any], outputs: Sequence[Out], split: bool = False):
    """Run a Warp kernel as a differentiable torch function.

    Args:
        kernel: a ``@wp.kernel`` whose arguments are ``inputs`` followed by ``outputs``.
        dim: launch dimension (int or tuple).
        inputs: torch tensors (optionally tagged with :func:`vec` / :func:`mat`), Python scalars or
            other Warp-compatible values. Floating tensors receive gradients.
        outputs: :class:`Out` specs; outputs are zero-initialised before the launch.
        split: split the forward launch over CPU cores (the kernel then takes a leading
            ``offset: int`` argument; only for kernels whose threads write disjoint entries).

    Returns:
        One tensor, or a tuple of tensors, one per output spec. Their gradients flow back through
        Warp's adjoint kernel. The adjoint is exact for the code the kernel runs: where the kernel
        branches (contact on/off, a depth test) the gradient is that of the taken branch.
    """
    layouts, raw = [], []
    for x in inputs:
        if isinstance(x, _Tagged):
            layouts.append(x.kind)
            raw.append(x.tensor)
        else:
            layouts.append(None)
            raw.append(x)
    return _KernelOp.apply(kernel, dim, len(raw), tuple(layouts), tuple(outputs), split, *raw)


# --------------------------------------------------------------------------------------------
# fused multi-step segments: K steps of recorded launches as one autograd node
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """A :func:`segment_op` launch argument: row ``k + offset`` of segment buffer ``name`` at step
    ``k`` (``offset`` 1 only for state buffers: the step's output)."""

    name: str
    offset: int = 0


@dataclass(frozen=True)
class Const:
    """A :func:`segment_op` launch argument: constant input ``index`` (same for every step)."""

    index: int


@dataclass(frozen=True)
class Step:
    """One launch of a fused step: ``kernel`` over ``dim`` threads with ``args`` (inputs then
    outputs), each a :class:`Row`, a :class:`Const` or a Python scalar."""

    kernel: Any
    dim: Any
    args: tuple


class _Replay:
    """The per-step replay of a recorded launch inside a segment.

    On CPU the kernel's entry point is called directly with argument structs kept across steps,
    of which only the changed data pointers are rewritten (what ``wp.Launch.launch`` does, less
    rebuilding the struct from every parameter at every call; measured under load, one bounce
    iteration of 288 fused steps forward + backward: 70 ms with ``Launch.launch``, 28 ms with
    this). This reads the recorded launch's ``hooks``/``params`` (Warp's own replay
    data); where they are not as expected (another Warp version, CUDA, a block launch) it falls
    back to ``set_param_at_index_from_ctype`` + ``launch``."""

    def __init__(self, rec: _Recorded, device: torch.device):
        self.rec, self.device = rec, device
        self.direct = False
        cmd = rec.cmd
        try:
            if device.type == "cpu" and getattr(cmd, "block_dim", 1) <= 1:
                labels = [a.label for a in cmd.kernel.adj.args]
                n = len(labels)

                def struct(offset):
                    fields = [(f"a{i}", type(cmd.params[offset + i])) for i in range(n)]
                    st = type("ReplayArgs", (ctypes.Structure,), {"_fields_": fields})()
                    for i in range(n):
                        setattr(st, f"a{i}", cmd.params[offset + i])
                    return st

                self.args = struct(1)
                self.adj = struct(1 + n) if cmd.adjoint else None
                fn = cmd.hooks.backward if cmd.adjoint else cmd.hooks.forward
                if fn is None or len(cmd.params) != 1 + n * (2 if cmd.adjoint else 1):
                    raise RuntimeError("unexpected recorded launch layout")
                self.fn = fn
                self.call_args = ((ctypes.byref(cmd.params[0]), ctypes.byref(self.args))
                                  + ((ctypes.byref(self.adj),) if cmd.adjoint else ()))
                self.names = [f"a{i}" for i in range(n)]
                # the data pointer of each array argument, written in place (rows of a segment
                # buffer share shape and strides: only the pointer changes between steps)
                data = _ARRAY_T.data.offset
                self.ptrs = [ctypes.c_uint64.from_address(ctypes.addressof(self.args) + getattr(type(self.args), nm).offset
                                                          + data) for nm in self.names]
                self.adj_ptrs = None if self.adj is None else [
                    ctypes.c_uint64.from_address(ctypes.addressof(self.adj) + getattr(type(self.adj), nm).offset + data)
                    for nm in self.names]
                self.direct = True
        except Exception:  # pragma: no cover - depends on Warp internals
            self.direct = False

    def refresh(self) -> None:
        """Copy the recorded launch's current parameters (constants just set) into the
        argument structs of the direct call."""
        if self.direct:
            cmd, n = self.rec.cmd, len(self.names)
            # set_dim replaces the bounds struct: point the call at the current one
            self.call_args = ((ctypes.byref(cmd.params[0]), ctypes.byref(self.args))
                              + ((ctypes.byref(self.adj),) if self.adj is not None else ()))
            for i, nm in enumerate(self.names):
                setattr(self.args, nm, cmd.params[1 + i])
                if self.adj is not None:
                    setattr(self.adj, nm, cmd.params[1 + n + i])

    def setter(self, i: int, descs: list, adjoint: bool = False):
        """A function ``f(k)`` that points array argument ``i`` at ``descs[k]`` (a row
        descriptor list made by :func:`rows`: same shape and strides, other data pointers)."""
        if self.direct:
            cell = (self.adj_ptrs if adjoint else self.ptrs)[i]
            setattr(self.adj if adjoint else self.args, self.names[i], descs[0])  # shape, strides
            ptrs = [d.data for d in descs]

            def f(k):
                cell.value = ptrs[k]
            return f
        cmd = self.rec.cmd
        return lambda k: cmd.set_param_at_index_from_ctype(i, descs[k], adjoint=adjoint)

    def run(self) -> None:
        if self.direct:
            self.fn(*self.call_args)
        else:
            self.rec.run(self.device)


class _SegmentPlan:
    """What one fused segment runs: the launches of a step, the state buffers (K + 1 rows; row 0
    is the input state), the work buffers (K rows, e.g. force accumulators, each row initialised
    from an input tensor of 1 or K rows, or zeros), and the constant inputs."""

    def __init__(self, steps, K, states, work, consts):
        self.steps, self.K = steps, K
        self.states = states      # [(name, kind)]
        self.work = work          # [(name, kind, shape, has_init)]
        self.consts = consts      # [kind]
        self.n_states, self.n_work = len(states), sum(1 for w in work if w[3])

    def split(self, tensors):
        s = list(tensors[:self.n_states])
        w = list(tensors[self.n_states:self.n_states + self.n_work])
        c = list(tensors[self.n_states + self.n_work:])
        return s, w, c

    def _const_args(self, consts):
        return [_Tagged(t, k) if (k and isinstance(t, torch.Tensor)) else t for t, k in zip(consts, self.consts)]

    def forward(self, tensors):
        s0, winit, consts = self.split(tensors)
        K = self.K
        dev, fdtype = s0[0].device, s0[0].dtype
        bufs, descs = {}, {}
        for (name, kind), x in zip(self.states, s0):
            b = torch.empty((K + 1, *x.shape), dtype=x.dtype, device=dev)
            b[0] = x
            bufs[name] = b
            descs[name] = rows(b, kind)
        it = iter(winit)
        for name, kind, shape, has_init in self.work:
            b = torch.zeros((K, *shape), dtype=fdtype, device=dev)
            if has_init:
                b += next(it)  # (1, ...) held or (K, ...) per step
            bufs[name] = b
            descs[name] = rows(b, kind)
        cargs = self._const_args(consts)
        recs = [self._record(st, bufs, cargs, dev, fdtype) for st in self.steps]
        plays = []
        for play, refs in recs:
            plays.append((play, [(play.setter(i, descs[r.name]), r.offset) for i, r in refs]))
        for k in range(K):
            for play, sets in plays:
                for f, o in sets:
                    f(k + o)
                play.run()
        for play, _ in plays:
            play.rec.keep = None  # a cached launch holds no tensor past its segment
        return bufs, descs

    def _args(self, st, bufs, cargs):
        """The launch arguments of step 0 (rows tagged with their buffer's layout); scalars
        become ``None`` when ``bufs`` are adjoint buffers."""
        kinds = dict(self.states)
        kinds.update({w[0]: w[1] for w in self.work})
        out = []
        for a in st.args:
            if isinstance(a, Row):
                x = bufs[a.name][a.offset]
                out.append(_Tagged(x, kinds[a.name]) if kinds[a.name] else x)
            elif isinstance(a, Const):
                out.append(cargs[a.index])
            else:
                out.append(a)
        return out

    def _record(self, st, bufs, cargs, dev, fdtype, adj=None):
        """The replay of ``st`` (a recorded launch, cached per thread by kernel and argument
        types, so consecutive segments reuse it) with its constants set, and its :class:`Row`
        arguments ``[(index, row)]`` to set per step."""
        args = self._args(st, bufs, cargs)
        adj_args = None if adj is None else [None if not isinstance(a, (Row, Const)) else x
                                             for a, x in zip(st.args, self._args(st, adj[0], adj[1]))]
        key = ("segment", st.kernel, dev, tuple(_sig(a, fdtype) for a in args),
               None if adj_args is None else tuple(_sig(a, fdtype) for a in adj_args))
        cache = _launch_cache()
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= _MAX_LAUNCHES:
                cache.clear()
            entry = cache[key] = [record(st.kernel, st.dim, args, dev, fdtype, adj_args), None]
        rec = entry[0]
        dims = _dim_tuple(st.dim)
        if rec.dim != dims:
            rec.cmd.set_dim(dims)
            rec.dim = dims
        keep: list = []
        for i, x in enumerate(args):  # every argument (rows: row 0, which gives shape and strides)
            rec.set(i, x, fdtype, keep)
            if adj_args is not None:
                rec.set(i, adj_args[i], fdtype, keep, adjoint=True)
        rec.keep = keep
        if entry[1] is None:
            entry[1] = _Replay(rec, dev)
        else:
            entry[1].refresh()
        return entry[1], [(i, a) for i, a in enumerate(st.args) if isinstance(a, Row)]

    def adjoint(self, tensors, bufs, descs, g_final, g_all):
        s0, winit, consts = self.split(tensors)
        K = self.K
        dev, fdtype = s0[0].device, s0[0].dtype
        abufs, adescs = {}, {}
        for j, (name, kind) in enumerate(self.states):
            a = torch.zeros_like(bufs[name])
            if g_final[j] is not None:
                a[K] += g_final[j]
            if g_all[j] is not None:
                a[1:] += g_all[j]
            abufs[name] = a
            adescs[name] = rows(a, kind)
        for name, kind, shape, has_init in self.work:
            a = torch.zeros_like(bufs[name])
            abufs[name] = a
            adescs[name] = rows(a, kind)
        g_consts = [torch.zeros_like(c) if (isinstance(c, torch.Tensor) and c.is_floating_point()) else None
                    for c in consts]
        cargs = self._const_args(consts)
        acargs = self._const_args(g_consts)
        recs = [self._record(st, bufs, cargs, dev, fdtype, adj=(abufs, acargs)) for st in self.steps]
        plays = []
        for play, refs in reversed(recs):
            sets = []
            for i, r in refs:
                sets.append((play.setter(i, descs[r.name]), r.offset))
                sets.append((play.setter(i, adescs[r.name], adjoint=True), r.offset))
            plays.append((play, sets))
        for k in range(K - 1, -1, -1):
            for play, sets in plays:
                for f, o in sets:
                    f(k + o)
                play.run()
        for play, _ in plays:
            play.rec.keep = None
        g_states = [abufs[name][0] for name, _ in self.states]
        g_work, it = [], iter(winit)
        for name, kind, shape, has_init in self.work:
            if has_init:
                init = next(it)
                g_work.append(abufs[name] if init.shape[0] == K else abufs[name].sum(0, keepdim=True))
        return g_states + g_work + g_consts


class _SegmentOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, recompute, return_all, *tensors):
        ctx.plan, ctx.recompute, ctx.return_all = plan, recompute, return_all
        bufs, descs = plan.forward(tensors)
        ctx.save_for_backward(*tensors)
        ctx.bufs = None if recompute else (bufs, descs)
        K = plan.K
        finals = [bufs[name][K].clone() for name, _ in plan.states]
        if return_all:
            return (*finals, *[bufs[name][1:] for name, _ in plan.states])
        return tuple(finals)

    @staticmethod
    def backward(ctx, *grads):
        plan = ctx.plan
        tensors = ctx.saved_tensors
        bufs, descs = ctx.bufs if ctx.bufs is not None else plan.forward(tensors)
        ns = plan.n_states
        g_final = list(grads[:ns])
        g_all = list(grads[ns:2 * ns]) if ctx.return_all else [None] * ns
        out = plan.adjoint(tensors, bufs, descs, g_final, g_all)
        ctx.bufs = None
        out = [g if ctx.needs_input_grad[3 + j] else None for j, g in enumerate(out)]
        return (None, None, None, *out)


def segment_op(steps: Sequence[Step], K: int, states: Sequence[tuple], consts: Sequence[Any] = (),
               work: Sequence[tuple] = (), recompute: bool = False, return_all: bool = False):
    """``K`` steps of Warp launches fused as ONE differentiable torch op (the spring solver's
    technique, for any solver whose step is a fixed sequence of kernels).

    Args:
        steps: the launches of one step, in order (:class:`Step`); their arguments are
            :class:`Row` (a row of a segment buffer at step k), :class:`Const` or Python scalars.
        K: number of steps (>= 1).
        states: ``(name, tensor, kind)`` per state buffer: ``tensor`` is the initial state
            (row 0); a step reads ``Row(name)`` and writes ``Row(name, 1)``. ``kind``:
            ``None``, ``"vec"`` or ``"mat"`` (:func:`to_warp`).
        consts: tensors (optionally :func:`vec`/:func:`mat` tagged), fixed for the
            segment (model parameters, held controls); floating tensors receive gradients.
        work: ``(name, shape, kind, init)`` per work buffer (one row per step, e.g. a force
            accumulated with atomics): ``init`` None (zeros), a ``(1, *shape)`` tensor held for
            every step or ``(K, *shape)`` per step; ``init`` receives gradients.
        recompute: keep only the inputs and re-run the K steps at the start of backward
            (a checkpoint: memory of one segment).
        return_all: also return, per state, the stacked rows of steps 1..K ``(K, ...)``.

    Returns:
        The final state tensors (one per ``states`` entry), then with ``return_all`` the stacked
        states. Forward: K replays of each recorded launch (the pointer arguments swapped per
        step). Backward: Warp's adjoint kernels replayed in reverse, into preallocated adjoint
        buffers. The gradient equals that of K separate :func:`kernel_op` steps (the same
        adjoint kernels; tests: 1e-10 in float64).
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an int >= 1, got {K!r}")
    c_kinds, c_vals = [], []
    for j, c in enumerate(consts):
        t, kind = _unwrap(c)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"consts[{j}] must be a tensor (pass scalars in the Step's args), got {type(t).__name__}")
        c_kinds.append(kind)
        c_vals.append(t.contiguous() if isinstance(t, torch.Tensor) else t)
    s_spec, s_vals = [], []
    for name, t, kind in states:
        s_spec.append((name, kind))
        s_vals.append(t.contiguous())
    w_spec, w_vals = [], []
    for name, shape, kind, init in work:
        w_spec.append((name, kind, tuple(shape), init is not None))
        if init is not None:
            if init.dim() != len(shape) + 1 or tuple(init.shape[1:]) != tuple(shape) or init.shape[0] not in (1, K):
                raise ValueError(f"work buffer {name!r}: init must have shape (1 or {K}, {', '.join(map(str, shape))}), "
                                 f"got {tuple(init.shape)}")
            w_vals.append(init.contiguous())
    plan = _SegmentPlan(tuple(steps), K, s_spec, w_spec, c_kinds)
    return _SegmentOp.apply(plan, bool(recompute), bool(return_all), *s_vals, *w_vals, *c_vals)


def twin_backward(twin, inputs: Sequence[torch.Tensor], needs: Sequence[bool],
                  grads: Sequence[torch.Tensor | None]) -> list:
    """The backward of a kernel op with a hand-written adjoint when it runs under
    ``create_graph=True`` (double backward): the op's torch twin ``twin(*inputs)`` (a tensor or a
    tuple, entries may be None) is run again with graph and differentiated against ``grads`` (one
    per twin output, None where none came), so second derivatives exist; first-order results
    elsewhere are the kernels'. Returns one gradient per input (None where ``needs`` is False or
    the outputs do not depend on it)."""
    with torch.enable_grad():
        xs = [x if x.requires_grad else x.detach().requires_grad_(bool(n)) for x, n in zip(inputs, needs)]
        outs = twin(*xs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None]
        want = [x for x, n in zip(xs, needs) if n]
        if not pairs or not want:
            return [None] * len(xs)
        gs = iter(torch.autograd.grad([o for o, _ in pairs], want, [g for _, g in pairs], create_graph=True,
                                      allow_unused=True))
        return [next(gs) if n else None for n in needs]


_OMP_PAUSE: list = []


def release_omp_workers() -> None:
    """Ends the spinning of torch's idle OpenMP workers (CPU, more than one torch thread, torch
    built with the GNU OpenMP runtime it bundles; otherwise a no-op). Every split CPU launch
    (:func:`parallel_launch`, :func:`run_split`) calls it first, so no solver needs to.

    After every parallel torch op (a user's ``clone``, ``sum``, its backward, autograd's gradient
    sums) libgomp's workers busy-wait for the next parallel region, ~3-5 ms of a core each time on
    the 2-core dev machine; split launches that followed shared the cores with them (a split
    launch of ~1.4 ms right after a parallel ``sum`` took 2.6 ms).
    ``omp_pause_resource_all(omp_pause_soft)`` (OpenMP 5.0) lets them go now (0.4 us when none
    spins); the next parallel torch op starts its workers again (tens of microseconds)."""
    if not _OMP_PAUSE:
        fn = None
        try:
            import glob

            if "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
                libs = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))
                if libs:  # torch's own copy, loaded already: dlopen returns that instance
                    fn = ctypes.CDLL(libs[0]).omp_pause_resource_all
                    fn.argtypes = [ctypes.c_int]
                    fn.restype = ctypes.c_int
        except (OSError, AttributeError, RuntimeError):
            fn = None
        _OMP_PAUSE.append(fn)
    if _OMP_PAUSE[0] is not None and torch.get_num_threads() > 1:
        _OMP_PAUSE[0](1)  # omp_pause_soft
