from typing import Any

import pytest
import torch

from diffvc._kernels import Out, kernel_op, launch, mat, to_warp, vec, warp_device, wp
from diffvc._kernels.bridge import parallel_launch, split_chunks


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
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        chunks = split_chunks(n, "cpu", min_per_thread=256)
        assert len(chunks) == 4 and chunks[0][0] == 0 and sum(c for _, c in chunks) == n
        assert split_chunks(100, "cpu", min_per_thread=256) == [(0, 100)]
        seen = torch.zeros(n, dtype=torch.int32)
        bufs = [torch.zeros(1, dtype=torch.float64) for _ in chunks]
        launched = parallel_launch(_count_split, n, lambda k: [bufs[k]], [seen], min_per_thread=256)
    finally:
        torch.set_num_threads(old)
    assert launched == 4
    assert torch.equal(seen, torch.ones(n, dtype=torch.int32))
    assert sum(float(b) for b in bufs) == n
    assert all(float(b) == c for b, (_, c) in zip(bufs, chunks))
