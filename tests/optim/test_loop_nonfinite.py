"""optimize(): a non-finite gradient stops the run naming the parameter and the iteration; the
opt-in skip leaves the parameters unchanged for that iteration and records it."""

import math

import pytest
import torch

from diffvc.optim import Free, NonFiniteGradientError, ParameterSet, Positive, optimize


def _loss_with_nan_at(params, bad_iters, counter):
    def loss_fn():
        k = counter[0]
        counter[0] += 1
        x = params["x"]
        m = params["m"]
        loss = ((x - 2.0) ** 2).sum() + (m - 1.0) ** 2
        if k in bad_iters:
            loss = loss + torch.sqrt(m - 100.0)      # sqrt of a negative number: NaN value and gradient for m
        return loss

    return loss_fn


def test_nonfinite_gradient_raises_naming_parameter_and_iteration():
    ps = ParameterSet(x=Free([0.0, 0.0]), m=Positive(3.0))
    with pytest.raises(NonFiniteGradientError, match=r"gradient of m at iteration 2"):
        optimize(ps, _loss_with_nan_at(ps, {2}, [0]), iters=5, lr=0.1, progress=False)


def test_nonfinite_gradient_raises_for_plain_tensors_too():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(NonFiniteGradientError, match=r"params\[0\] at iteration 0"):
        optimize([x], lambda: torch.sqrt(x - 1.0).sum(), iters=3, progress=False)


def test_skip_is_opt_in_recorded_and_makes_no_update():
    ps = ParameterSet(x=Free([0.0, 0.0]), m=Positive(3.0))
    seen = []
    hist = optimize(ps, _loss_with_nan_at(ps, {1, 3}, [0]), iters=6, lr=0.1, progress=False, nonfinite="skip",
                    callback=lambda it, loss: seen.append(ps.snapshot()))
    assert hist.skipped == [1, 3]
    # the skipped iterations left the parameters where they were
    assert seen[1] == seen[0] and seen[3] == seen[2]
    assert seen[2] != seen[1]
    assert math.isnan(hist.loss[1]) and math.isfinite(hist.loss[2])


def test_nonfinite_argument_is_checked():
    x = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="nonfinite"):
        optimize([x], lambda: x.sum(), iters=1, nonfinite="zero", progress=False)
