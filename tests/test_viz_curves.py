"""viz.plot_curves (drawn with Pillow by diffvc.examples._lineplot): matplotlib's log-axis ticks
and labels, the dashed target line inside the y limits and its legend away from the curve."""

import numpy as np
import pytest
from PIL import Image

from diffvc.examples import _lineplot as lp
from diffvc.viz import plot_curves


@pytest.mark.parametrize("ylim", [(1.16e4, 2.48e4), (2.85e-3, 6.3e-3), (1e-18, 2e-3), (0.19, 0.42), (1e-3, 0.2)])
def test_log_ticks_match_matplotlib(ylim):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    fig.subplots_adjust(bottom=0.2, top=0.85)
    fig.canvas.draw()
    want_major = [v for v in ax.yaxis.get_majorticklocs() if ylim[0] <= v <= ylim[1]]
    want_minor = [v for v in ax.yaxis.get_minorticklocs() if ylim[0] <= v <= ylim[1]]
    want_labels = {round(float(np.log10(t.get_loc())), 9): t.label1.get_text() != ""
                   for t in ax.yaxis.get_minor_ticks() + ax.yaxis.get_major_ticks()
                   if ylim[0] <= t.get_loc() <= ylim[1]}
    h_pt = ax.get_position().height * 3.2 * 72
    plt.close(fig)
    a = lp.Axes((0, 0, 100, h_pt * lp.SS * 100 / 72), (0, 1), ylim, logy=True, dpi=100.0)
    got = a.yticks(10 * a.pt)
    np.testing.assert_allclose([v for v, _, m in got if m], want_major, rtol=1e-9)
    np.testing.assert_allclose([v for v, _, m in got if not m], want_minor, rtol=1e-9)
    assert {round(float(np.log10(v)), 9): lab != "" for v, lab, _ in got} == want_labels


def test_target_line_and_legend(tmp_path):
    ys = np.array([3.0, 2.8, 2.7, 2.7, 2.02, 2.0, 2.0])
    p = plot_curves(tmp_path / "c.png", {"loss": np.geomspace(1e-2, 1e-17, 7), "mass": ys}, targets={"mass": 1.5})
    img = np.asarray(Image.open(p).convert("RGB")).astype(int)
    assert img.shape == (352, 924, 3)
    right = img[:, 462:]
    black = (right.sum(-1) < 60)
    rows = np.nonzero(black.sum(1) > 120)[0]        # the dashed line spans the panel
    # below every curve point (the target 1.5 is the lowest value: the y limits include it)
    blue = np.abs(right - np.array(lp.TAB["tab:blue"])).sum(-1) < 60
    assert rows.size and rows.min() > np.nonzero(blue.any(1))[0].max()
    # the legend ("best": upper right is free of the curve) has its 0.8-grey frame up right
    grey = (np.abs(right - 204).sum(-1) < 30)
    gy, gx = np.nonzero(grey)
    assert gy.size > 50 and np.median(gx) > right.shape[1] / 2 and np.median(gy) < right.shape[0] / 2
    with pytest.raises(ValueError, match="curves"):
        plot_curves(tmp_path / "d.png", {})
