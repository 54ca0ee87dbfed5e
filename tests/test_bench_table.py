"""bench.table: rows, ratios and "better" directions from fake benchmark JSON; missing keys,
absent anchors and unknown shapes give "n/a" rather than errors; the README block is rewritten
in place."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed (as `python -m pytest` would)
from bench import table  # noqa: E402
from bench.table import HIGHER, LOWER, rows_for  # noqa: E402


def _row(rows, measured_part, anchor_part=""):
    hits = [r for r in rows if measured_part in r.measured and anchor_part in r.anchor]
    assert len(hits) == 1, [(r.measured, r.anchor) for r in rows]
    return hits[0]


def test_pathtrace_rows_ratio_and_direction():
    d = {"resolution": 128, "forward_spp": 64, "fwd_bwd_spp": 16, "max_depth": 8, "forward_ms": 950.0,
         "fwd_bwd_ms": 740.0, "mitsuba_variant": "llvm_ad_rgb", "mitsuba_forward_ms": 340.0,
         "mitsuba_fwd_bwd_ms": 320.0}
    rows = rows_for("pathtrace", d)
    fwd = _row(rows, "64 spp")
    assert fwd.ours == 950.0 and fwd.anchor_value == 340.0
    assert fwd.ratio == pytest.approx(950 / 340)
    assert fwd.better == LOWER and fwd.target == "≤ 1.0×"
    cells = fwd.cells()
    assert cells[0] == "pathtrace" and "128²" in cells[1] and cells[2] == "950 ms"
    assert "Mitsuba 3 `path` (llvm_ad_rgb): 340 ms" == cells[3] and cells[4] == "2.79×"
    fb = _row(rows, "16 spp")
    assert fb.ratio == pytest.approx(740 / 320) and "prb" in fb.anchor


def test_anchor_not_installed_and_non_numeric_anchor():
    rows = rows_for("pathtrace", {"forward_ms": 900.0, "fwd_bwd_ms": 700.0, "mitsuba_variant": "not installed"})
    for r in rows:
        assert r.ratio is None
        assert r.cells()[3].endswith("not installed") and r.cells()[4] == "n/a"
    # scalar variant: the prb figure is a string in the JSON
    rows = rows_for("pathtrace", {"forward_ms": 900.0, "fwd_bwd_ms": 700.0, "mitsuba_variant": "scalar_rgb",
                                  "mitsuba_forward_ms": 3000.0, "mitsuba_fwd_bwd_ms": "n/a (no AD variant)"})
    assert _row(rows, "spp", "path").ratio == pytest.approx(0.3)
    assert "?²" in rows[0].measured  # a missing description key shows "?"
    assert _row(rows, "backward").cells()[3].endswith("n/a")


def test_missing_keys_print_na():
    rows = rows_for("mass_spring", {"particles": 1000, "results": {"diffvc_fused": {"total_ms": 480.0}}})
    raw = _row(rows, "fused", "raw Warp")
    assert raw.ratio is None and raw.cells()[3].endswith(": n/a") and raw.cells()[4] == "n/a"
    assert raw.cells()[2] == "480 ms" and raw.target == "≤ 0.7×"
    # a completely empty JSON: every extractor still yields rows, every figure n/a
    for name in table._EXTRACTORS:
        rows = rows_for(name, {})
        assert rows, name
        for r in rows:
            assert r.cells()[2] == "n/a" and r.cells()[4] == "n/a", (name, r)
    # an unexpected shape (a list where a dict is expected) is reported, not raised
    rows = rows_for("geometry", {"sample_chamfer_fwd_bwd": [1, 2]})
    assert rows and all(r.cells()[2] in ("n/a",) or r.ours is not None for r in rows)
    assert rows_for("no_such_bench", {"x": 1})[0].measured.startswith("(no table extractor")


def test_mass_spring_spread_and_best_torch():
    d = {"particles": 1000, "springs": 5000, "steps": 1000,
         "results": {"diffvc_fused": {"total_ms": 480.0, "total_min_ms": 470.0}, "raw_warp": {"total_ms": 600.0},
                     "torch": {"total_ms": 9000.0}, "torch_1thread": {"total_ms": 6000.0}}}
    rows = rows_for("mass_spring", d)
    raw = _row(rows, "fused", "raw Warp")
    assert raw.ratio == pytest.approx(0.8) and raw.cells()[2] == "480 ms (min 470 ms)" and raw.cells()[4] == "0.80×"
    tiny = table.Row("x", "y", 1.0, "ms", "slow", 6000.0)
    assert tiny.cells()[4] == "1.67e-04×"  # small ratios keep their digits
    assert _row(rows, "fused", "torch").anchor_value == 6000.0


def test_higher_is_better_rows():
    d = {"environments": 1024, "steps": 100, "mujoco_available": True,
         "diffvc_fwd_bwd_1thread_env_steps_per_s": 2e5, "diffvc_fwd_1thread_env_steps_per_s": 1e6,
         "mujoco_fwd_1thread_env_steps_per_s": 5e5, "mujoco_fwd_2threads_env_steps_per_s": 8e5}
    rows = rows_for("articulated", d)
    fb = _row(rows, "fwd + bwd")
    assert fb.better == HIGHER and fb.anchor_value == 8e5 and fb.ratio == pytest.approx(0.25)
    rows = rows_for("articulated", {"mujoco_available": False, "diffvc_fwd_1thread_env_steps_per_s": 1e6})
    assert _row(rows, "forward (").cells()[3].endswith("not installed")


def test_launch_pair_spread_and_target():
    d = {"rigid_steps": 250, "rigid_slide_fused_ms": 50.0, "rigid_slide_fused_ms_spread": [45.0, 61.0],
         "rigid_slide_steps_legacy_ms": 400.0}
    r = _row(rows_for("launch", d), "rigid slide")
    assert r.ratio == pytest.approx(0.125) and "45.0–61.0 ms" in r.cells()[2] and "5×" in r.target


def test_quick_marker_and_markdown(tmp_path):
    d = {"forward_ms": 950.0, "mitsuba_variant": "llvm_ad_rgb", "mitsuba_forward_ms": 340.0,
         table.META: {"quick": True, "loadavg_1min_start": 3.25, "date": "2026-12-02 12:00 UTC"}}
    assert rows_for("pathtrace", d)[0].bench == "pathtrace (quick)"
    md = table.markdown({"pathtrace": d, "fem": {"fem_implicit_ms_per_step": 40.0}})
    lines = md.splitlines()
    assert lines[0].startswith("| benchmark |") and lines[1].startswith("|---|")
    assert sum(1 for ln in lines if ln.startswith("| pathtrace")) == 2
    assert any("| 40.0 ms |" in ln and "≤ 50 ms" in ln for ln in lines)
    assert "load 3.2" in md


def test_write_rewrites_only_the_readme_block(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "fem.json").write_text(json.dumps({"fem_implicit_ms_per_step": 40.0, "cantilever_solve_ms": 1500.0}))
    (res / "broken.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{table.START}\nold table\n{table.END}\nafter\n")
    out = table.write(res, readme)
    text = readme.read_text()
    assert text.startswith("intro\n" + table.START + "\n| benchmark |") and text.endswith(table.END + "\nafter\n")
    assert "old table" not in text and "1,500 ms" in text and "(no table extractor" in text
    assert (res / "TABLE.md").read_text() == out
    table.write(res, readme)  # idempotent
    assert readme.read_text() == text
    with pytest.raises(ValueError, match="markers"):
        table.replace_block("no markers here", out)


def test_anchor_finders_honour_the_environment(monkeypatch, tmp_path):
    """The anchors are found where ``make bench-anchors`` puts them, and an environment variable
    overrides each (a script that is not there is not found)."""
    import bench

    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "diffmpm.py").write_text("")
    monkeypatch.setenv("DIFFTAICHI_REPO", str(tmp_path))
    assert bench.difftaichi_example("diffmpm.py") == str(tmp_path / "examples" / "diffmpm.py")
    monkeypatch.setenv("DIFFTAICHI_PYTHON", "/some/python")
    assert bench.taichi_python() == "/some/python"
    monkeypatch.setenv("DRJIT_LIBLLVM_PATH", "/some/libLLVM.so")
    assert bench.libllvm_path() == "/some/libLLVM.so"
    assert bench.difftaichi_example("no_such_example.py") is None


def test_volume_and_demo_rows_read_their_figures():
    rows = rows_for("volume", {"grid": "128^3", "image": "128^2", "target_speedup": 5.0, "emission_warp_ms": 10.0,
                               "emission_torch_ms": 55.0})
    em = _row(rows, "emission", "plain-torch")
    assert em.cells()[2] == "10.0 ms" and abs(em.ratio - 10 / 55) < 1e-12 and em.target.startswith("≤ 0.2×")
    sp = rows_for("splat", {"gaussians": 1000, "resolution": "64x64", "target_speedup": 4.0, "warp_fwd_bwd_ms": 5.0,
                            "torch_twin_fwd_bwd_ms": 40.0})[0]
    assert sp.cells()[2] == "5 ms" and sp.ratio == 0.125 and sp.target.startswith("≤ 0.25×")
    rows = rows_for("demo_time", {"bounce_wall_s": 4.2, "bounce_target_s": 5.0, "bounce_wall_spread_s": [4.0, 4.5]})
    b = _row(rows, "bounce", "")
    assert b.cells()[2].startswith("4.2 s") and b.target == "≤ 5 s"
