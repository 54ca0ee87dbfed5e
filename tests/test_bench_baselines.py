"""The anchors of bench.mass_spring and bench.mpm measure what they claim.

* bench.mass_spring's raw-Warp baseline (the concrete-typed loop written like Warp's examples)
  simulates the same physics as diffvc: bit for bit the final state and gradients of the same
  loop launching diffvc's own kernels, and diffvc's fused rollout to float32 rounding.
* bench.mpm's side-by-side runner (``_Stepped``) runs one timed iteration per ``go`` and reports
  it, so the two interpreters it interleaves are timed alternately; a child that dies is an error
  naming it.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed
from bench import mass_spring, mpm  # noqa: E402


@pytest.fixture(scope="module")
def small_lattice():
    # 3x3x3 particles 0.1 m apart, 0.3 m up: 60 steps reach the ground (contact and friction engaged)
    model, s0 = mass_spring.make_system(n_side=3, n_springs=60)
    return model, s0


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_raw_warp_baseline_is_diffvc_physics_bit_for_bit(small_lattice):
    model, s0 = small_lattice
    steps = 300
    fast = mass_spring._raw_warp(model, s0, steps)
    generic = mass_spring._raw_warp(model, s0, steps, kernels="diffvc")
    fast()
    generic()
    for a, b in zip(fast.grads, generic.grads):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    assert float(fast.grads[2][:, 1].min()) < 0.05  # the lattice reached the ground plane
    # a second iteration (fresh tape after tape.zero()) gives the same values: no stale gradients
    first = [g.clone() for g in fast.grads]
    fast()
    for a, b in zip(fast.grads, first):
        assert torch.equal(a, b)


def test_raw_warp_baseline_agrees_with_diffvc_rollout(small_lattice):
    model, s0 = small_lattice
    steps = 300
    raw = mass_spring._raw_warp(model, s0, steps)
    ours = mass_spring._diffvc(model, s0, steps, "fused")
    raw()
    ours()
    gv, gk, x = ours.grads
    rv, rk, rx = raw.grads
    assert _rel(x, rx) < 1e-6
    assert _rel(gv, rv) < 1e-4
    assert _rel(gk, rk) < 1e-4


def test_raw_warp_baseline_rejects_a_scene_it_was_not_written_for():
    model, s0 = mass_spring.make_system(n_side=2, n_springs=4)
    from dataclasses import replace

    two = replace(model, planes=torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -5.0]]))
    with pytest.raises(ValueError, match="one ground plane"):
        mass_spring._raw_warp(two, s0, 2)


_FAKE_CHILD = r"""
import json, sys, time
print("warming up", flush=True)
print("READY", flush=True)
n = 0
while sys.stdin.readline().strip() == "go":
    n += 1
    print("noise line", flush=True)
    print("ITER " + json.dumps([0.5 * n, 0.25 * n]), flush=True)
print("RESULT " + json.dumps({"iterations": n}), flush=True)
"""


def test_stepped_child_runs_one_iteration_per_go(tmp_path):
    child = mpm._Stepped("fake", [sys.executable, "-c", _FAKE_CHILD], tmp_path)
    assert child.step() == (0.5, 0.25)
    assert child.step() == (1.0, 0.5)
    assert child.finish() == {"iterations": 2}


def test_stepped_child_failure_names_it(tmp_path):
    with pytest.raises(RuntimeError, match="broken child failed"):
        mpm._Stepped("broken child", [sys.executable, "-c", "import sys; sys.exit('no taichi here')"], tmp_path)
