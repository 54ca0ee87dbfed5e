"""Small line plots drawn with Pillow, for the bounce example (``diffvc run bounce``).

Importing matplotlib and laying out its figures took more CPU time (~2 s on the 2-core dev
machine) than bounce's whole optimisation; the plots bounce writes -- a loss and parameter curve
plot and the frames of a 2-D trajectory animation -- need only lines, markers, ticks, grid lines
and text. These are drawn here with Pillow (already loaded to write the PNG and GIF files) at 3x
resolution and reduced (anti-aliasing), in matplotlib's default style: DejaVu Sans (matplotlib's
own font file), the tab10 colours, ticks at 1-2-2.5-5 steps or decades, 5 % data margins.
"""

from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SS = 3                                      # supersampling factor (anti-aliasing)
TAB = {"tab:blue": (31, 119, 180), "tab:gray": (127, 127, 127), "tab:red": (214, 39, 40),
       "red": (255, 0, 0), "k": (0, 0, 0), "white": (255, 255, 255)}


@lru_cache(maxsize=None)
def font(px: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (the file matplotlib ships; found without importing matplotlib) at ``px``
    pixels; Pillow's built-in font when that file is absent."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.exists(path):
            return ImageFont.truetype(path, max(1, int(round(px))))
    return ImageFont.load_default(max(1, int(round(px))))


def text_size(text: str, px: float) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` at ``px`` (height from the font's ascent/descent)."""
    f = font(px)
    l, _, r, _ = f.getbbox(text)
    a, d = f.getmetrics() if hasattr(f, "getmetrics") else (px, 0)
    return r - l, a + d


def draw_text(dr: ImageDraw.ImageDraw, xy, text: str, px: float, anchor: str, fill=(0, 0, 0)) -> None:
    """``text`` at ``xy`` with a Pillow anchor (e.g. ``"mt"`` middle-top, ``"rm"`` right-middle)."""
    dr.text(xy, text, font=font(px), anchor=anchor, fill=fill)


def nice_ticks(lo: float, hi: float, nbins: int = 9) -> np.ndarray:
    """Ticks at multiples of the smallest step of 1, 2, 2.5, 5 x 10^k that splits [lo, hi] into
    at most ``nbins`` intervals (matplotlib's MaxNLocator steps), those inside [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return np.array([lo])
    base = 10.0 ** math.floor(math.log10(span / max(nbins, 1)))
    for m in (1, 2, 2.5, 5, 10, 20, 25, 50):
        step = m * base
        if span / step <= nbins + 1e-9:
            first = math.ceil(lo / step - 1e-9)
            last = math.floor(hi / step + 1e-9)
            return np.arange(first, last + 1) * step
    return np.array([lo, hi])


def tick_label(v: float, step: float) -> str:
    decimals = max(0, -int(math.floor(math.log10(step) + 1e-9))) if step > 0 else 0
    if abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:  # 2.5 x 10^k
        decimals += 1
    s = f"{v:.{decimals}f}"
    if float(s) == 0:
        s = s.lstrip("-")
    return s.replace("-", "\u2212")         # matplotlib's minus sign


_SUP = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


class Axes:
    """A data -> pixel mapping of one axes box (pixel coordinates of the supersampled image) with
    drawing of its frame, ticks, tick labels and grid, in matplotlib's default style."""

    def __init__(self, box, xlim, ylim, logy: bool = False, dpi: float = 100.0):
        self.box = box                      # (left, top, right, bottom) supersampled pixels
        self.xlim, self.ylim, self.logy = xlim, ylim, logy
        self.pt = dpi / 72.0 * SS           # supersampled pixels per point

    def px(self, x, y):
        """Pixel coordinates of data points ``x``, ``y`` (arrays)."""
        l, t, r, b = self.box
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        y0, y1 = self.ylim
        if self.logy:
            y, y0, y1 = np.log10(y), math.log10(y0), math.log10(y1)
        u = l + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (r - l)
        v = b - (y - y0) / (y1 - y0) * (b - t)
        return u, v

    def _nbins(self, length_px: float, label_px: float, factor: int) -> int:
        """matplotlib's ``nbins="auto"``: the axis length over ``factor`` tick-label heights,
        at most 9."""
        return max(1, min(9, int(length_px / (label_px * factor))))

    def yticks(self, label_px: float):
        """(value, label, major) of the y ticks."""
        if not self.logy:
            ticks = nice_ticks(*self.ylim, nbins=self._nbins(self.box[3] - self.box[1], label_px, 2))
            step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
            return [(v, tick_label(v, step), True) for v in ticks]
        lo, hi = math.log10(self.ylim[0]), math.log10(self.ylim[1])
        out = []
        for e in range(math.floor(lo), math.ceil(hi) + 1):
            for m in range(1, 10):
                v = m * 10.0 ** e
                if lo - 1e-9 <= math.log10(v) <= hi + 1e-9:
                    out.append((v, e, m))
        sup = lambda e: "10" + str(e).translate(_SUP)  # noqa: E731
        if hi - lo < 1 and not any(m == 1 for _, _, m in out):  # within a decade: label every tick
            return [(v, f"{m}\u00d7{sup(e)}", True) for v, e, m in out]
        return [(v, sup(e) if m == 1 else "", m == 1) for v, e, m in out]

    def xticks(self, label_px: float):
        ticks = nice_ticks(*self.xlim, nbins=self._nbins(self.box[2] - self.box[0], label_px, 3))
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        return [(v, tick_label(v, step), True) for v in ticks]

    def draw_frame(self, dr: ImageDraw.ImageDraw, label_px: float, grid: bool = False) -> None:
        """Grid (alpha 0.3 of the default grey, drawn as its blend with white), ticks pointing
        out (3.5 pt major, 2 pt minor), tick labels and the 0.8 pt black frame."""
        l, t, r, b = self.box
        pt = self.pt
        lw = max(1, round(0.8 * pt))
        gridc = tuple(int(round(255 - 0.3 * (255 - c))) for c in (176, 176, 176))
        for v, lab, major in self.xticks(label_px):
            u, _ = self.px(v, self.ylim[0])
            u = float(u)
            if grid and major:
                dr.line([(u, t), (u, b)], fill=gridc, width=lw)
            dr.line([(u, b), (u, b + 3.5 * pt)], fill=(0, 0, 0), width=lw)
            draw_text(dr, (u, b + 3.5 * pt + 3.5 * pt), lab, label_px, "mt")
        for v, lab, major in self.yticks(label_px):
            _, y = self.px(self.xlim[0], v)
            y = float(y)
            if grid and major:
                dr.line([(l, y), (r, y)], fill=gridc, width=lw)
            dr.line([(l - (3.5 if major else 2.0) * pt, y), (l, y)], fill=(0, 0, 0), width=lw)
            if lab:
                draw_text(dr, (l - 7 * pt, y), lab, label_px, "rm")
        dr.rectangle([l, t, r, b], outline=(0, 0, 0), width=lw)

    def ytick_label_width(self, label_px: float) -> int:
        return max([text_size(lab, label_px)[0] for _, lab, _ in self.yticks(label_px) if lab] or [0])


def polyline(dr: ImageDraw.ImageDraw, u, v, color, width: float) -> None:
    pts = list(zip(np.asarray(u, dtype=float).tolist(), np.asarray(v, dtype=float).tolist()))
    if len(pts) >= 2:
        dr.line(pts, fill=color, width=max(1, int(round(width))), joint="curve")


def dot(dr: ImageDraw.ImageDraw, u: float, v: float, diameter: float, color) -> None:
    r = diameter / 2
    dr.ellipse([u - r, v - r, u + r, v + r], fill=color)


def star(dr: ImageDraw.ImageDraw, u: float, v: float, diameter: float, color) -> None:
    """matplotlib's ``"*"`` marker: a five-pointed star, inner radius 0.381966 of the outer."""
    r_out, r_in = diameter / 2, diameter / 2 * 0.381966
    pts = []
    for k in range(10):
        a = math.pi / 2 + k * math.pi / 5
        rr = r_out if k % 2 == 0 else r_in
        pts.append((u + rr * math.cos(a), v - rr * math.sin(a)))
    dr.polygon(pts, fill=color)


def _limits(lo: float, hi: float, log: bool) -> tuple[float, float]:
    """matplotlib's default 5 % margins (in log10 for a log axis)."""
    if log:
        a, b = math.log10(lo), math.log10(hi)
        m = 0.05 * (b - a) if b > a else 0.5
        return 10 ** (a - m), 10 ** (b + m)
    m = 0.05 * (hi - lo) if hi > lo else (abs(lo) * 0.05 or 0.05)
    return lo - m, hi + m


def plot_curves(path, curves: dict, title: str = "", logy: bool = True, xlabel: str = "iteration",
                dpi: float = 110.0) -> None:
    """One panel per curve (value against index), log y where every value is positive, titles,
    grid; the layout of :func:`diffvc.viz.plot_curves` (4.2 x 3.2 in per panel at ``dpi``)."""
    n = len(curves)
    W, H = int(round(4.2 * n * dpi)), int(round(3.2 * dpi))
    img = Image.new("RGB", (W * SS, H * SS), TAB["white"])
    dr = ImageDraw.Draw(img)
    pt = dpi / 72.0 * SS
    big, med = 12 * pt, 10 * pt                             # 'large' and 'medium' font sizes
    top = 1.08 * 10 * pt                                    # tight_layout's pad
    if title:
        draw_text(dr, (W * SS / 2, top), title, big, "mt")
        top += text_size(title, big)[1] + 0.5 * big
    axes = []
    for name, ys in curves.items():
        ys = np.asarray(ys, dtype=np.float64)
        fin = ys[np.isfinite(ys)]
        log = logy and fin.size > 0 and bool(np.all(fin > 0))
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        ax = Axes((0, 0, 1, 1), _limits(0.0, max(len(ys) - 1, 1), False), _limits(lo, hi, log), log, dpi)
        axes.append((name, ys, ax))
    pad = 1.08 * 10 * pt
    panel = W * SS / n
    title_h = text_size("Ag", big)[1] + 6 * pt
    label_h = text_size("Ag", med)[1]
    for k, (name, ys, ax) in enumerate(axes):
        bottom = H * SS - pad - 2 * label_h - 7 * pt - 4 * pt
        ax.box = (0, top + title_h, 1, bottom)                  # height first: it sets the y ticks
        left = k * panel + pad + ax.ytick_label_width(med) + 7 * pt + (pad if k else 0) * 0.5
        right = (k + 1) * panel - pad * (1.0 if k == n - 1 else 0.5)
        ax.box = (left, top + title_h, right, bottom)
        ax.draw_frame(dr, med, grid=True)
        u, v = ax.px(np.arange(len(ys)), ys)
        ok = np.isfinite(v)
        polyline(dr, u[ok], v[ok], TAB["tab:blue"], 1.5 * pt)
        l, t, r, b = ax.box
        dr.rectangle([l, t, r, b], outline=(0, 0, 0), width=max(1, round(0.8 * pt)))
        draw_text(dr, ((l + r) / 2, t - 6 * pt), name, big, "md")
        draw_text(dr, ((l + r) / 2, H * SS - pad), xlabel, med, "md")
    img.reduce(SS).save(path)
