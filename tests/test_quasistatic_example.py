"""The quasistatic example: IFT gradients of the spring cantilever's equilibrium w.r.t. its rest
lengths against finite differences, and a few design iterations reducing the sag."""

import json

import torch

from diffvc.examples import RunConfig, run_example
from diffvc.examples.quasistatic import energy_fn, equilibrium, lattice
from diffvc.testing import assert_grad_close


def test_equilibrium_gradient_wrt_rest_lengths_matches_fd():
    x, springs, free, tip = lattice()
    energy = energy_fn(x, springs, free, tip)
    d = x[springs[:, 1]] - x[springs[:, 0]]
    log_rest = torch.log(d.norm(dim=-1)).clone().requires_grad_()
    u0 = x[free]
    assert_grad_close(lambda lr: equilibrium(energy, u0, lr)[-3:], (log_rest,), rtol=1e-5, eps=1e-6, max_elements=6)


def test_quick_design_iterations_reduce_the_sag(tmp_path):
    m = run_example("quasistatic", RunConfig(out=tmp_path, quick=True, iters=8, progress=False))
    assert m["rms_node_error_final_m"] < 0.8 * m["rms_node_error_initial_m"]
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 8
    for f in ("curves.png", "equilibria.png"):
        assert (tmp_path / f).stat().st_size > 1000
