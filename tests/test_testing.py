import pytest
import torch

from diffvc.testing import assert_grad_close, grad_check


class _WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # wrong: should be 2 x


def test_grad_check_passes_on_correct_gradients_with_several_inputs():
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rep = assert_grad_close(lambda a, b: (torch.sin(a) * b, (a @ b).exp()), (a, b))
    assert rep.max_rel_error < 1e-7
    assert len(rep.rel_errors) == 2


def test_grad_check_detects_wrong_gradient():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rep = grad_check(_WrongSquare.apply, (x,))
    assert rep.rel_errors[0] > 0.3
    with pytest.raises(AssertionError, match="gradient mismatch"):
        assert_grad_close(_WrongSquare.apply, (x,))


def test_grad_check_rejects_float32_and_no_grad_inputs():
    with pytest.raises(TypeError, match="float64"):
        grad_check(torch.sin, (torch.randn(3, requires_grad=True),))
    with pytest.raises(ValueError, match="requires grad"):
        grad_check(torch.sin, (torch.randn(3, dtype=torch.float64),))


def test_grad_check_subsamples_elements():
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    rep = grad_check(torch.tanh, (x,), max_elements=10)
    assert rep.numeric[0].shape == (10,) and rep.max_rel_error < 1e-7
