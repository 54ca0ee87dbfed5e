"""`diffvc run topopt --quick`, shortened: the MBB beam follows the top88 port iterate for iterate;
the two-load cantilever's compliance falls; images, animation, curves and metrics are written."""

import json

import pytest

from diffvc.examples import RunConfig, run_example


def test_topopt_example_short(tmp_path):
    m = run_example("topopt", RunConfig(out=tmp_path, quick=True, iters=12, progress=False))
    assert m["mbb_iterations"] == m["mbb_top88_iterations"] == 12
    assert m["mbb_compliance_rel_diff"] < 1e-6
    assert m["cantilever_compliance"] < 0.5 * m["cantilever_compliance_initial"]
    assert m["cantilever_hole_max_density"] == 0.0
    assert abs(m["cantilever_volume"] - 0.4) < 0.01
    for f in ("densities.png", "iterations.gif", "curves.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["mbb_size"] == "60x20"


@pytest.mark.slow
def test_topopt_example_full(tmp_path):
    """The full run: MBB 150x50 against the top88 port to convergence, the 120x60 two-load
    cantilever, the 48x16x8 3D cantilever."""
    m = run_example("topopt", RunConfig(out=tmp_path, quick=False, progress=False))
    assert abs(m["mbb_iterations"] - m["mbb_top88_iterations"]) <= 3
    assert m["mbb_compliance_rel_diff"] < 0.005
    assert m["cantilever3d_compliance"] < 0.5 * m["cantilever3d_compliance_initial"]
    assert m["cantilever3d_volume"] <= 0.2 + 2e-3
    assert (tmp_path / "cantilever3d.png").stat().st_size > 1000
