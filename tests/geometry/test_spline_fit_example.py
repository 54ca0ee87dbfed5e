"""`diffvc run spline_fit`, shortened: the B-spline surface moves onto the point cloud."""

from diffvc.examples import RunConfig, run_example


def test_spline_fit_short(tmp_path):
    m = run_example("spline_fit", RunConfig(out=tmp_path, quick=True, iters=40, progress=False))
    assert m["chamfer_final"] < 0.25 * m["chamfer_initial"]
    assert m["height_error_rms"] < 0.5 * m["height_error_rms_initial"]
    for f in ("fit.png", "fit.gif", "curves.png", "metrics.json"):
        assert (tmp_path / f).stat().st_size > 100
