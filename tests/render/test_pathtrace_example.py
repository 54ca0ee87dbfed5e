import json

import pytest

from diffvc.testing import check_outputs
from diffvc.examples import EXAMPLES, RunConfig, run_example


def test_inverse_rendering_is_registered():
    assert EXAMPLES["inverse_rendering"] == "diffvc.examples.inverse_rendering"


def test_inverse_rendering_short_run_reduces_both_losses(tmp_path):
    m = run_example("inverse_rendering", RunConfig(out=tmp_path, quick=True, iters=3, progress=False))
    assert m["stage1_final_loss"] < 0.5 * m["stage1_initial_loss"]
    assert m["stage2_final_loss"] < m["stage2_initial_loss"]
    assert m["box_final_error_m"] < m["box_start_error_m"]
    for name in ("metrics.json", "curves.png", "images.png"):
        assert (tmp_path / name).exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stage1_iterations"] == 3 and saved["stage2_iterations"] == 3
    # the position stage: twice the resolution, a target with another seed and more samples
    assert saved["stage2_resolution"] == 2 * saved["resolution"]
    assert saved["stage2_target_seed"] != 0 and saved["stage2_target_spp"] > saved["spp"]
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move


@pytest.mark.slow
def test_inverse_rendering_quick_meets_targets(tmp_path):
    m = run_example("inverse_rendering", RunConfig(out=tmp_path, quick=True, progress=False))
    assert m["max_rel_err_colours_and_light"] < 0.02
    assert m["box_final_error_fraction_of_size"] < 0.01
    check_outputs(tmp_path)  # every image and animation read back: not blank, not saturated, frames move
