from typing import Any

import pytest
import torch

from diffvc._kernels import Out, kernel_op, launch, mat, to_warp, vec, warp_device, wp
from diffvc._kernels.bridge import parallel_launch, split_chunks
from diffvc.testing import assert_grad_close


@wp.kernel
def _affine(x: wp.array(dtype=Any), A: wp.array(dtype=Any), w: wp.array(dtype=Any), s: Any,
            y: wp.array(dtype=Any), n: wp.array(dtype=Any)):
    i = wp.tid()
    yi = A[0] * x[i] * w[i] * s + wp.cw_mul(x[i], x[i])
    y[i] = yi
    n[i] = wp.length(yi)


@wp.kernel
def _square_split(offset: int, x: wp.array(dtype=Any), y: wp.array(dtype=Any)):
    i = wp.tid() + offset
    y[i] = x[i] * x[i] * x[i]


@wp.kernel
def _count_split(offset: int, total: wp.array(dtype=wp.float64), seen: wp.array(dtype=wp.int32)):
    i = wp.tid() + offset
    seen[i] = seen[i] + 1
    wp.atomic_add(total, 0, wp.float64(1.0))


def _op(x, A, w):
    return kernel_op(_affine, x.shape[0], [vec(x), mat(A), w, 0.5], [Out((x.shape[0], 3), "vec"), Out((x.shape[0],))])


def _twin(x, A, w):
    y = (x @ A[0].T) * w[:, None] * 0.5 + x * x
    return y, y.norm(dim=1)


def test_kernel_op_forward_matches_torch_twin():
    x, A, w = torch.randn(7, 3), torch.randn(1, 3, 3), torch.rand(7)
    for got, ref in zip(_op(x, A, w), _twin(x, A, w)):
        torch.testing.assert_close(got, ref)


def test_kernel_op_gradcheck_float64():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    A = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_op, (x, A, w), eps=1e-6, atol=1e-7)


def test_gradcheck_catches_a_wrong_adjoint():
    """The check used above must fail when the backward is wrong (here: the adjoint is skipped
    for the second output, so gradients through the norm are missing)."""
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    A = torch.randn(1, 3, 3, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64)

    def wrong(x):
        y, n = _op(x, A, w)
        return y, n.detach() * 1.0 + 0 * n

    def right_values(x):
        return _twin(x, A, w)

    g_wrong = torch.autograd.grad(sum(o.sum() for o in wrong(x)), x)[0]
    g_right = torch.autograd.grad(sum(o.sum() for o in right_values(x)), x)[0]
    assert not torch.allclose(g_wrong, g_right)


def test_split_launch_matches_single_launch_and_gradients():
    x = torch.randn(50_000, dtype=torch.float64, requires_grad=True)
    y = kernel_op(_square_split, x.shape[0], [x], [Out(tuple(x.shape))], split=True)
    torch.testing.assert_close(y, x.detach() ** 3)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, 3 * x.detach() ** 2)


def test_to_warp_is_zero_copy_and_launch_writes_in_place():
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    a = to_warp(vec(x))
    assert a.shape == (4,) and a.ptr == x.data_ptr()
    y = torch.zeros(4)
    xx = torch.ones(4)
    launch(_square_split, 4, [0, xx], [y])
    assert torch.equal(y, torch.ones(4))


def test_device_mapping_and_errors():
    assert warp_device(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="device"):
        warp_device("meta")
    with pytest.raises(TypeError, match="dtype"):
        to_warp(torch.zeros(3, dtype=torch.complex64))


@pytest.mark.cuda
def test_kernel_op_cuda_matches_cpu():
    x = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    A = torch.randn(1, 3, 3, dtype=torch.float64)
    w = torch.rand(64, dtype=torch.float64)
    y_cpu = _op(x, A, w)
    g_cpu = torch.autograd.grad(y_cpu[1].sum(), x)[0]
    xc = x.detach().cuda().requires_grad_()
    y_cuda = _op(xc, A.cuda(), w.cuda())
    g_cuda = torch.autograd.grad(y_cuda[1].sum(), xc)[0]
    torch.testing.assert_close(y_cuda[0].cpu(), y_cpu[0])
    torch.testing.assert_close(g_cuda.cpu(), g_cpu)
    assert torch.autograd.gradcheck(lambda x: _op(x, A.cuda(), w.cuda()), (xc,))


def test_non_contiguous_inputs_get_their_gradient():
    """A column-major input (e.g. the output of torch.linalg.inv) must receive its gradient."""
    x = torch.randn(3, 6, dtype=torch.float64).T.requires_grad_()  # (6, 3), not contiguous
    A = torch.randn(1, 3, 3, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64)
    assert not x.is_contiguous()
    y, n = _op(x, A, w)
    (g,) = torch.autograd.grad(n.sum(), x)
    xr = x.detach().contiguous().requires_grad_()
    (g_ref,) = torch.autograd.grad(_twin(xr, A, w)[1].sum(), xr)
    torch.testing.assert_close(g, g_ref)


def test_split_launch_with_per_chunk_buffers_loses_no_adds():
    """The split launch covers every thread once, and per-chunk accumulation buffers (inputs given
    as a function of the chunk index) receive every atomic add: their sum is exactly n."""
    n = 200_001
    torch.set_num_threads(4)
    chunks = split_chunks(n, "cpu", min_per_thread=256)
    assert len(chunks) == 4 and chunks[0][0] == 0 and sum(c for _, c in chunks) == n
    assert split_chunks(100, "cpu", min_per_thread=256) == [(0, 100)]
    seen = torch.zeros(n, dtype=torch.int32)
    bufs = [torch.zeros(1, dtype=torch.float64) for _ in chunks]
    launched = parallel_launch(_count_split, n, lambda k: [bufs[k]], [seen], min_per_thread=256)
    assert launched == 4
    assert torch.equal(seen, torch.ones(n, dtype=torch.int32))
    assert sum(float(b) for b in bufs) == n
    assert all(float(b) == c for b, (_, c) in zip(bufs, chunks))



@wp.kernel
def _scaled_split(offset: int, x: wp.array(dtype=Any), s: Any, y: wp.array(dtype=Any)):
    i = wp.tid() + offset
    y[i] = x[i] * s + y[i]


def test_split_launch_direct_calls_follow_new_shapes_scalars_and_buffers():
    """After the first split launch of a kernel its chunks run as direct calls on the launch
    workers: later calls with other sizes (other chunk bounds), other tensors, other scalars, other
    dtypes and other per-chunk buffers compute their own values, the same as the former pooled path;
    an argument that fails for one chunk raises in the caller and later launches still run; split
    launches from two Python threads at once both complete."""
    from diffvc._kernels import bridge

    try:
        torch.set_num_threads(3)
        for direct in (True, False, True):
            bridge._SPLIT_DIRECT[0] = direct
            for n, s, dtype in ((30_001, 0.5, torch.float64), (12_288, -2.0, torch.float64),
                                (30_001, 3.0, torch.float32), (30_001, 0.25, torch.float64)):
                x = torch.rand(n, dtype=dtype)
                y = torch.ones(n, dtype=dtype)
                launched = parallel_launch(_scaled_split, n, [x, s], [y], min_per_thread=1024)
                assert launched == 3
                torch.testing.assert_close(y, x * s + 1, rtol=0, atol=0)
                seen = torch.zeros(n, dtype=torch.int32)
                bufs = [torch.zeros(1, dtype=torch.float64) for _ in range(3)]
                parallel_launch(_count_split, n, lambda k: [bufs[k]], [seen], min_per_thread=1024)
                assert torch.equal(seen, torch.ones(n, dtype=torch.int32))
                assert [float(b) for b in bufs] == [float(c) for _, c in split_chunks(n, "cpu", 1024)]
        # a failing chunk (here: a callable argument that raises for chunk 2) reaches the caller
        with pytest.raises(ZeroDivisionError):
            parallel_launch(_scaled_split, 30_001, lambda k: [x, 1.0 / (2 - k)], [y], min_per_thread=1024)
        y = torch.zeros(30_001, dtype=torch.float64)
        parallel_launch(_scaled_split, 30_001, [torch.ones(30_001, dtype=torch.float64), 2.0], [y],
                        min_per_thread=1024)
        assert torch.equal(y, torch.full_like(y, 2.0))
        import threading

        outs = [torch.zeros(50_000, dtype=torch.float64) for _ in range(4)]

        def many(o):
            for _ in range(20):
                parallel_launch(_scaled_split, o.shape[0], [torch.ones_like(o), 1.0], [o], min_per_thread=1024)

        threads = [threading.Thread(target=many, args=(o,)) for o in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(o, torch.full_like(o, 20.0)) for o in outs)
    finally:
        bridge._SPLIT_DIRECT[0] = True


def test_split_launch_in_a_forked_child_after_the_parent_used_the_workers():
    """A process forked after split launches (a DataLoader worker, say) has none of its parent's
    launch threads; its own split launches start fresh ones and finish (no wait on a thread that
    does not exist)."""
    import os
    import time

    torch.set_num_threads(2)
    y = torch.zeros(30_000, dtype=torch.float64)
    for _ in range(3):
        parallel_launch(_scaled_split, 30_000, [torch.ones_like(y), 1.0], [y], min_per_thread=1024)
    pid = os.fork()
    if pid == 0:  # child: exit code 0 when its split launches computed the right values
        ok = False
        try:
            z = torch.zeros(30_000, dtype=torch.float64)
            for _ in range(3):
                parallel_launch(_scaled_split, 30_000, [torch.ones_like(z), 2.0], [z], min_per_thread=1024)
            ok = bool(torch.equal(z, torch.full_like(z, 6.0)))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's split launch did not finish")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert torch.equal(y, torch.full_like(y, 3.0))


def test_split_launch_argument_conversion_equals_signature_and_parameter():
    """The split launch's one-pass argument conversion gives what the recorded-launch path's
    ``_sig`` and ``_to_param`` give: tensors (plain, vec/mat tagged, requiring grad,
    non-contiguous: copied), Python and None scalars."""
    from diffvc._kernels import bridge

    nc = torch.rand(3, 4, dtype=torch.float64).t()
    for x in (vec(torch.zeros(5, 3)), mat(torch.zeros(4, 3, 3)), nc, torch.zeros(3, requires_grad=True),
              torch.zeros(2, 7, dtype=torch.int32), 2.5, True, 3, None):
        keep1, keep2 = [], []
        s1, p1 = bridge._sig(x, torch.float64), bridge._to_param(x, torch.float64, keep1)
        s2, p2 = bridge._sig_param(x, torch.float64, keep2)
        assert s1 == s2 and p1[1] == p2[1] and len(keep1) == len(keep2)
        if isinstance(p1[0], bridge._ARRAY_T):
            assert p1[0].shape[:] == p2[0].shape[:] and p1[0].strides[:] == p2[0].strides[:]
            assert p2[0].data == keep2[0].data_ptr() and torch.equal(keep2[0], keep1[0])
        else:
            assert p1[0] == p2[0]


def test_launch_workers_hand_off_through_every_path(monkeypatch):
    """The native hand-off (handoff.Worker) with spin windows so short that every split launch
    takes the slow paths too: the worker parks between launches and is woken through its lock, the
    calling thread sleeps on the worker's completion and is woken from the worker's loop. Direct
    calls and Python callables (run_split), after pauses of several lengths: every launch computes
    its values; an error in a worker's callable reaches the caller and the workers still run."""
    import time

    from diffvc._kernels import bridge, handoff

    monkeypatch.setattr(handoff, "IDLE_US", 0.01)
    monkeypatch.setattr(handoff, "WAIT_US", 0.01)
    monkeypatch.setattr(bridge, "_WORKERS", bridge._LaunchWorkers())
    torch.set_num_threads(3)
    n = 300_001
    x = torch.rand(n, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.float64)
    for i, pause in enumerate((0.0, 1e-5, 1e-3, 0.0, 2e-3, 1e-4) * 3):
        parallel_launch(_scaled_split, n, [x, 1.0], [y], min_per_thread=1024)
        torch.testing.assert_close(y, x * (i + 1), rtol=1e-12, atol=0)
        time.sleep(pause)
    hits = []

    def job(k):
        def run():
            time.sleep(1e-3 * k)
            hits.append(k)
        return run

    for _ in range(5):
        hits.clear()
        bridge.run_split([job(k) for k in range(5)])
        assert sorted(hits) == list(range(5))

    def fail():
        time.sleep(2e-3)
        raise KeyError("chunk")

    with pytest.raises(KeyError):
        bridge.run_split([lambda: None, fail, lambda: None])
    parallel_launch(_scaled_split, n, [x, 1.0], [y], min_per_thread=1024)
    torch.testing.assert_close(y, x * 19, rtol=1e-12, atol=0)
    workers = bridge._WORKERS._workers
    assert len(workers) == 2 and all(w.thread.is_alive() for w in workers)
    # each worker parked and was woken through its lock, and the caller slept on each one
    assert all(w.parks > 0 and w.sleeps > 0 for w in workers)


def test_process_exits_cleanly_right_after_a_split_launch():
    """Interpreter exit while a launch worker still spins in its native loop: the exit handler
    waits until it parks (it would otherwise run on in Warp code released at exit)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2)\n"
            "from tests.test_kernels_bridge import _scaled_split\n"
            "from diffvc._kernels.bridge import parallel_launch\n"
            "y = torch.zeros(100_000, dtype=torch.float64)\n"
            "for _ in range(50): parallel_launch(_scaled_split, 100_000, [torch.ones_like(y), 1.0], [y], "
            "min_per_thread=1024)\n"
            "assert float(y[0]) == 50.0\n")
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------ recorded launches, fused segments

from diffvc._kernels.bridge import Const, Row, Step, fast_launch, segment_op  # noqa: E402


def test_recorded_launches_follow_new_shapes_pointers_and_scalars():
    """After the first call a kernel runs from the recorded-launch cache: later calls with other
    shapes, other tensors and other scalars still compute their own values and gradients."""
    A = torch.randn(1, 3, 3, dtype=torch.float64)
    for n, s in ((5, 0.5), (9, 0.5), (2, 0.5), (9, 0.5)):
        x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
        w = torch.rand(n, dtype=torch.float64)
        y, nrm = _op(x, A, w)
        y2, n2 = _twin(x, A, w)
        torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
        (g,) = torch.autograd.grad(nrm.sum(), x)
        (g2,) = torch.autograd.grad(n2.sum(), x)
        torch.testing.assert_close(g, g2, rtol=1e-12, atol=1e-12)
    # a scalar changes between calls: the replay uses the new one
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.rand(4, dtype=torch.float64)
    for s in (0.5, 2.0, -1.0):
        y = kernel_op(_affine, 4, [vec(x), mat(A), w, s], [Out((4, 3), "vec"), Out((4,))])[0]
        torch.testing.assert_close(y, (x @ A[0].T) * w[:, None] * s + x * x, rtol=1e-12, atol=1e-12)
    # float32 tensors after float64 ones: another overload, recorded separately
    y = kernel_op(_affine, 4, [vec(x.float()), mat(A.float()), w.float(), 0.5], [Out((4, 3), "vec"), Out((4,))])[0]
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _twin(x, A, w)[0], rtol=1e-5, atol=1e-5)
    # an empty launch does nothing
    out = torch.zeros(0, 3, dtype=torch.float64)
    fast_launch(_affine, 0, [vec(out), mat(A), w[:0], 0.5, vec(out), out[:, 0]], torch.device("cpu"), torch.float64)


@wp.kernel
def _pair_forces(x: wp.array(dtype=Any), pairs: wp.array2d(dtype=wp.int32), k: wp.array(dtype=Any),
                 f: wp.array(dtype=Any)):
    """Springs of rest length 0 between pairs: atomically accumulated into f."""
    p = wp.tid()
    i = pairs[p, 0]
    j = pairs[p, 1]
    d = (x[j] - x[i]) * k[p]
    wp.atomic_add(f, i, d)
    wp.atomic_sub(f, j, d)


@wp.kernel
def _euler(x: wp.array(dtype=Any), v: wp.array(dtype=Any), f: wp.array(dtype=Any), c: wp.array(dtype=Any),
           dt: Any, x_out: wp.array(dtype=Any), v_out: wp.array(dtype=Any)):
    i = wp.tid()
    v1 = v[i] + (f[i] - v[i] * c[0] + wp.sin(x[i])) * dt
    x_out[i] = x[i] + v1 * dt
    v_out[i] = v1


def _toy(K=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    v = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    k = torch.rand(4, dtype=torch.float64, generator=g).requires_grad_()
    c = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    held = torch.randn(1, 5, dtype=torch.float64, generator=g).requires_grad_()
    per = torch.randn(K, 5, dtype=torch.float64, generator=g).requires_grad_()
    pairs = torch.tensor([[0, 1], [1, 2], [3, 4], [0, 4]], dtype=torch.int32)
    return x, v, k, c, held, per, pairs


def _toy_steps(x, v, k, c, ext, pairs, K, dt=0.05):
    """K steps as separate kernel_op calls (the reference)."""
    xs, vs = [], []
    for s in range(K):
        f = kernel_op(_pair_forces, 4, [x, pairs, k], [Out((5,))]) + ext[s if ext.shape[0] > 1 else 0]
        x, v = kernel_op(_euler, 5, [x, v, f, c, dt], [Out((5,)), Out((5,))])
        xs.append(x)
        vs.append(v)
    return x, v, torch.stack(xs), torch.stack(vs)


def _toy_segment(x, v, k, c, ext, pairs, K, dt=0.05, **kw):
    steps = [Step(_pair_forces, 4, (Row("x"), Const(0), Const(1), Row("f"))),
             Step(_euler, 5, (Row("x"), Row("v"), Row("f"), Const(2), dt, Row("x", 1), Row("v", 1)))]
    return segment_op(steps, K, [("x", x, None), ("v", v, None)], consts=[pairs, k, c],
                      work=[("f", (5,), None, ext)], **kw)


@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("recompute", [False, True])
def test_segment_op_equals_separate_steps_values_and_gradients(per_step, recompute):
    """segment_op (two recorded launches per step, a work buffer filled by atomics, held or
    per-step initial values) gives the values and gradients of K separate kernel_op steps."""
    K = 6
    x, v, k, c, held, per, pairs = _toy(K)
    ext = per if per_step else held
    ref = _toy_steps(x, v, k, c, ext, pairs, K)
    got = _toy_segment(x, v, k, c, ext, pairs, K, recompute=recompute, return_all=True)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    w = [torch.randn_like(t) for t in ref]
    leaves = [x, v, k, c, ext]
    g_ref = torch.autograd.grad(sum((a * b).sum() for a, b in zip(ref, w)), leaves)
    g_got = torch.autograd.grad(sum((a * b).sum() for a, b in zip(got, w)), leaves)
    for a, b in zip(g_ref, g_got):
        assert float((a - b).abs().max()) <= 1e-10 * max(1.0, float(a.abs().max()))


def test_segment_op_gradients_match_finite_differences():
    K = 5
    x, v, k, c, held, per, pairs = _toy(K)

    def fn(x, v, k, c, per):
        xf, vf = _toy_segment(x, v, k, c, per, pairs, K)
        return xf * vf

    assert_grad_close(fn, [x, v, k, c, per], rtol=1e-7, atol=1e-10, eps=1e-6)


def test_segment_op_rejects_bad_arguments():
    x, v, k, c, held, per, pairs = _toy(4)
    with pytest.raises(ValueError, match="K must be"):
        _toy_segment(x, v, k, c, held, pairs, 0)
    with pytest.raises(ValueError, match="work buffer 'f'"):
        _toy_segment(x, v, k, c, per, pairs, 3)  # 4 rows of init for 3 steps
    with pytest.raises(TypeError, match="consts\\[0\\]"):
        segment_op([], 2, [("x", x, None)], consts=[0.5])


def test_legacy_launch_path_gives_the_same_values_and_gradients():
    """recorded_launches(False) (the former per-call wp.launch, kept for side-by-side benchmarks)
    and the recorded path compute the same thing."""
    from diffvc._kernels.bridge import recorded_launches

    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    A = torch.randn(1, 3, 3, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64)
    out = []
    for enabled in (False, True):
        with recorded_launches(enabled):
            y, n = _op(x, A, w)
            out.append((y, torch.autograd.grad(n.sum(), x)[0]))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_split_launch_over_explicit_ranges():
    """``ranges=``: the chunks are the given (start, count) ranges (uneven lengths), each launched
    once with its start as offset; empty or missing ranges are rejected naming the argument."""
    torch.set_num_threads(2)
    n = 10_000
    x = torch.rand(n, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.float64)
    launched = parallel_launch(_scaled_split, n, [x, 2.0], [y], ranges=[(0, 7_000), (7_000, 2_000)])
    assert launched == 2
    assert torch.equal(y[:9_000], 2.0 * x[:9_000]) and not bool(y[9_000:].any())
    for bad in ([], [(0, 0)], [(0, 5), (5, -1)]):
        with pytest.raises(ValueError, match="ranges"):
            parallel_launch(_scaled_split, n, [x, 2.0], [y], ranges=bad)


def test_split_launches_pause_torchs_openmp_workers(monkeypatch):
    """Every split CPU launch (parallel_launch with more than one chunk, run_split with more than one
    job) first lets torch's spinning OpenMP workers go (omp_pause_resource_all, soft), so a solver's
    split launches after a parallel torch op get the cores; a single-chunk launch does not; and the
    launch still computes its values after a parallel torch op."""
    from diffvc._kernels import bridge

    bridge.release_omp_workers()  # resolves the runtime's entry point (None without libgomp)
    calls = []
    monkeypatch.setattr(bridge, "_OMP_PAUSE", [lambda kind: calls.append(kind)])
    torch.set_num_threads(2)
    n = 30_001
    x = torch.rand(n, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.float64)
    x.sum()  # a parallel torch op
    assert parallel_launch(_scaled_split, n, [x, 2.0], [y], min_per_thread=1024) == 2
    assert calls == [1]
    torch.testing.assert_close(y, x * 2 + 0, rtol=1e-12, atol=0)
    assert parallel_launch(_scaled_split, n, [x, 2.0], [y], min_per_thread=n) == 1
    assert calls == [1]
    bridge.run_split([lambda: None])
    assert calls == [1]
    bridge.run_split([lambda: None, lambda: None])
    assert calls == [1, 1]
    torch.set_num_threads(1)
    parallel_launch(_scaled_split, n, [x, 2.0], [y], min_per_thread=1024)
    assert calls == [1, 1]  # one torch thread: one chunk, nothing to release
