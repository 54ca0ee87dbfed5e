"""The bridge between torch tensors and Warp kernels.

Three things live here and nowhere else:

* Warp is imported and initialised once, quietly (:data:`wp`).
* torch device <-> Warp device mapping (:func:`warp_device`) and zero-copy views of torch
  tensors as Warp arrays (:func:`to_warp`, with :func:`vec` / :func:`mat` tags that say how the
  trailing dimensions map onto Warp vector / matrix types).
* :func:`kernel_op`: a Warp kernel exposed as a differentiable torch function. The forward pass
  launches the kernel on zero-copy views; the backward pass launches Warp's generated adjoint
  kernel with the incoming gradients and returns the input gradients to torch autograd.

Kernels are written generically (``wp.array(dtype=Any)``, scalars ``Any``) so one source serves
float32 and float64; Warp specialises them at launch. Python floats passed to a kernel are cast
to the floating dtype of the tensors in the same launch.

CPU note (measured on the 2-core dev machine): a Warp CPU launch runs on one thread.
:func:`parallel_launch` is the one split launch of diffvc: it splits a launch into
:func:`split_chunks` (one per torch thread, each ``(start, count)``) run on the one launch thread
pool of the package (the kernel takes an ``offset: int`` first argument and uses
``wp.tid() + offset``). Warp's CPU atomics are *not* atomic across threads, so never split a kernel
that accumulates into shared entries unless each chunk gets its own accumulation buffers
(``inputs``/``outputs`` given as functions of the chunk index), and never split adjoint launches
(they scatter with atomics).

Stream policy (CUDA): every Warp launch and every Warp-side build (BVHs) runs on torch's
*current* CUDA stream (:func:`torch_stream`), so Warp work is ordered with the torch work around
it and no device-wide synchronisation is ever needed.
"""

from __future__ import annotations

import os
import threading
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
    """Launch ``kernel`` on torch tensors (no autograd). Outputs are written in place."""
    device = torch.device(device) if device is not None else _device_of(list(inputs) + list(outputs))
    fdtype = _floating_dtype(list(inputs) + list(outputs))
    with kernel_guard(kernel):
        wp.launch(
            kernel,
            dim=dim,
            inputs=_convert(inputs, fdtype),
            outputs=_convert(outputs, fdtype),
            device=warp_device(device),
            stream=_stream(device),
            record_tape=False,
        )


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
                    min_per_thread: int = 4096) -> int:
    """Launch a 1-D ``kernel(offset, *inputs, *outputs)`` over ``n`` threads, split across CPU cores.

    ``inputs`` and ``outputs`` are torch tensors (optionally :func:`vec`/:func:`mat` tagged),
    Python scalars or Warp values (structs, arrays, ids). Either may instead be a function of the
    chunk index ``k`` (``0 <= k < len(split_chunks(n, device, min_per_thread))``) that gives that
    chunk its own arguments, e.g. private accumulation buffers, the way to split a kernel that
    accumulates (Warp's CPU atomics are not atomic across threads). Otherwise the kernel must write
    disjoint entries per thread. On CUDA, or when ``n`` is small, this is one launch with
    ``offset=0`` on torch's current stream. Returns the number of chunks launched.
    """
    first_in = list(inputs(0) if callable(inputs) else inputs)
    first_out = list(outputs(0) if callable(outputs) else outputs)
    device = torch.device(device) if device is not None else _device_of(first_in + first_out)
    fdtype = _floating_dtype(first_in + first_out)
    wdev = warp_device(device)
    chunks = split_chunks(n, device, min_per_thread)
    # shared arguments are converted once (a copy made for a non-contiguous output would be lost)
    w_in = None if callable(inputs) else _convert(first_in, fdtype)
    w_out = None if callable(outputs) else _convert(first_out, fdtype)

    def run(k: int) -> None:
        start, count = chunks[k]
        a_in = w_in if w_in is not None else _convert(first_in if k == 0 else inputs(k), fdtype)
        a_out = w_out if w_out is not None else _convert(first_out if k == 0 else outputs(k), fdtype)
        wp.launch(kernel, dim=count, inputs=[start] + a_in, outputs=a_out, device=wdev, stream=_stream(device),
                  record_tape=False)

    with kernel_guard(kernel):
        if len(chunks) == 1:
            run(0)
        else:
            kernel.module.load(wdev)  # compile/load on this thread so worker threads only launch
            for f in [_pool().submit(run, k) for k in range(len(chunks))]:
                f.result()
    return len(chunks)


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
            launch(kernel, dim, tagged_in, tagged_out, device=device)
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
        fdtype, device = ctx.fdtype, ctx.device
        wdev = warp_device(device)
        w_in, adj_in, grads = [], [], []
        for x, k in zip(inputs, ctx.layouts):
            if isinstance(x, torch.Tensor):
                w_in.append(to_warp(x, k))
                if x.is_floating_point():
                    # contiguous on purpose: to_warp of a non-contiguous buffer would copy it and
                    # the adjoint would accumulate into the copy (a silent zero gradient)
                    g = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
                    grads.append(g)
                    adj_in.append(to_warp(g, k))
                else:
                    grads.append(None)
                    adj_in.append(None)
            else:
                w_in.append(_scalar(x, fdtype))
                adj_in.append(None)
                grads.append(None)
        w_out, adj_out = [], []
        for o, g, s in zip(outs, grad_outs, ctx.out_specs):
            w_out.append(to_warp(o, s.kind))
            if g is None or not o.is_floating_point():
                g = torch.zeros_like(o)
            adj_out.append(to_warp(g.contiguous(), s.kind))
        if ctx.split:  # the split forward took a leading offset argument
            w_in, adj_in = [0] + w_in, [None] + adj_in
        with kernel_guard(ctx.kernel):
            wp.launch(ctx.kernel, dim=ctx.dim, inputs=w_in, outputs=w_out, adj_inputs=adj_in, adj_outputs=adj_out,
                      adjoint=True, device=wdev, stream=_stream(device), record_tape=False)
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
