import json

import numpy as np
import pytest
import torch

from diffvc.optim import (Free, ParameterSet, Positive, downsample, optimize, parameter_curves, plot_history,
                          pyramid_mse, relative_error, relative_errors)
from diffvc.testing import assert_grad_close


def test_downsample_averages_blocks():
    x = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4, 1)
    y = downsample(x)
    assert y.shape == (1, 2, 2, 1)
    assert torch.allclose(y[0, :, :, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]], dtype=torch.float64))


def test_pyramid_mse_levels_and_grad():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, 8, 3, generator=g, dtype=torch.float64)
    b = torch.rand(2, 8, 8, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(pyramid_mse(a, b, levels=1), ((a - b) ** 2).mean())
    expect = ((a - b) ** 2).mean() + ((downsample(a) - downsample(b)) ** 2).mean()
    assert torch.allclose(pyramid_mse(a, b, levels=2), expect)
    assert float(pyramid_mse(a, a, levels=3)) == 0.0
    assert_grad_close(lambda x: pyramid_mse(x, b, levels=3), (a.clone().requires_grad_(),))
    # more levels than the image supports: stops at 1x1, stays finite
    assert torch.isfinite(pyramid_mse(a, b, levels=10))


def test_pyramid_mse_bad_input():
    with pytest.raises(ValueError, match="pred"):
        pyramid_mse(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="levels"):
        pyramid_mse(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3), levels=0)


def test_relative_errors():
    assert relative_error(1.01, 1.0) == pytest.approx(0.01)
    assert relative_error(torch.tensor([3.0, 4.0]), [0.0, 0.0]) == pytest.approx(5.0)  # absolute at zero
    r = relative_errors({"m": torch.tensor(2.2), "mu": 0.5}, {"m": 2.0, "mu": 0.4})
    assert r["rel_error_m"] == pytest.approx(0.1, rel=1e-6) and r["rel_error_mu"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="estimates"):
        relative_errors({}, {"m": 1.0})


def test_parameter_curves_and_plot(tmp_path):
    ps = ParameterSet(a=Positive(2.0, dtype=torch.float64), v=Free([1.0, -1.0], dtype=torch.float64))
    hist = optimize(ps, lambda: (ps["a"] - 1.0) ** 2 + (ps["v"] ** 2).sum(), iters=30, lr=0.1, progress=False)
    curves = parameter_curves(hist, final=ps.snapshot())
    assert set(curves) == {"a", "v[0]", "v[1]"}
    assert len(curves["a"]) == 31 and curves["a"][0] == pytest.approx(2.0)
    assert abs(curves["a"][-1] - 1.0) < abs(curves["a"][0] - 1.0)
    p = plot_history(tmp_path / "curves.png", hist, targets={"a": 1.0}, final=ps.snapshot(), final_loss=0.0)
    assert p.exists() and p.stat().st_size > 1000
