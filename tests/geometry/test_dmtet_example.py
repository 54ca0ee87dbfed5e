import json

from diffvc.testing import check_outputs
from diffvc.examples import RunConfig, run_example


def test_dmtet_short_run_improves(tmp_path):
    m = run_example("dmtet", RunConfig(out=tmp_path, quick=True, iters=12, progress=False))
    assert m["chamfer"] < 0.8 * m["chamfer_start"]
    assert m["final_loss"] < m["initial_loss"]
    assert m["watertight"] == "True"
    for name in ("shapes.png", "curves.png", "metrics.json"):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 12
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
