"""The flagship example: physical parameters from pixels. A short identification runs by default;
the full ``--quick`` example (targets of the issue) is a slow test."""

import json

import pytest
import torch

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example
from diffvc.examples.sysid import DTYPE, RigidExperiment, RigidProblem, identify
from diffvc.optim import pyramid_mse


def test_rigid_identification_short_moves_towards_truth():
    exp = RigidExperiment(RigidProblem(size=24))
    truth = exp.truth()
    with torch.no_grad():
        target = exp.video({k: torch.tensor(v, dtype=DTYPE) for k, v in truth.items()})
    params = exp.params(start=(2.4, 0.32))
    hist, _ = identify(exp, target, params, adam_iters=0, lbfgs_iters=2, lr=0.1, progress=False, desc="t",
                       lbfgs_kwargs={"max_iter": 6})
    est = params.snapshot()
    with torch.no_grad():
        final = float(pyramid_mse(exp.video(params.values()), target, levels=3))
    assert final < 0.05 * hist.loss[0]
    for k in truth:
        assert abs(est[k] - truth[k]) < 0.25 * abs(hist.params[0][k] - truth[k]), (k, est, hist.params[0])


@pytest.mark.slow
def test_sysid_quick_meets_targets(tmp_path):
    m = run_example("sysid", RunConfig(out=tmp_path, quick=True, progress=False))
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == set(m)
    assert m["rigid_rel_error_mass"] < 1e-3
    assert m["rigid_rel_error_mu"] < 1e-2
    assert m["soft_rel_error_young"] < 1e-2
    assert m["soft_rel_error_damping"] < 5e-2
    for part in ("rigid", "soft"):
        assert (tmp_path / part / "side_by_side.gif").exists() and (tmp_path / part / "curves.png").exists()
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move


@pytest.mark.slow
def test_sysid_noise_quick_within_five_percent(tmp_path):
    m = run_example("sysid_noise", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["noise"] == 0.01
    for k in ("rigid_rel_error_mass", "rigid_rel_error_mu", "soft_rel_error_young", "soft_rel_error_damping"):
        assert m[k] < 0.05, (k, m[k])
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
