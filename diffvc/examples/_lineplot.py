"""Small line plots drawn with Pillow: :func:`diffvc.viz.plot_curves` (every example's
``curves.png``) and the bounce example's trajectory frames (``diffvc run bounce``).

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
        return self._log_ticks(label_px)

    def _log_ticks(self, label_px: float):
        """matplotlib's log axis (3.11 ``LogLocator`` / ``LogFormatterSciNotation``): decade ticks
        at a stride that keeps at most ``clip(tick space, 2, 9)`` of them, at integer multiples of
        the stride where possible; minor ticks at 2..9 x 10^k only at stride 1 and under 10
        decades, and when the view holds at most one tick, linear "nice" ticks instead; minor
        labels on every minor tick within 0.4 decades, on 2, 3, 4, 6 x 10^k within 1 decade."""
        efmin, efmax = math.log10(self.ylim[0]), math.log10(self.ylim[1])
        emin, emax = math.ceil(efmin - 1e-10), math.floor(efmax + 1e-10)
        n_avail = emax - emin + 1
        n_req = min(9, max(2, int((self.box[3] - self.box[1]) / (label_px * 2))))
        stride = n_avail // (n_req + 1) + 1
        nr = math.ceil(n_avail / stride)
        n_req = min(n_req, nr)
        if n_req == 0:
            decades = [emin - 1, emax + 1]
            stride = decades[1] - decades[0]
        elif n_req == 1:
            mid = round((efmin + efmax) / 2)
            stride = max(mid - (emin - 1), (emax + 1) - mid)
            decades = [mid - stride, mid, mid + stride]
        else:
            stride = (n_avail - 1) // (n_req - 1)
            if stride < n_avail / n_req:
                stride = n_avail // n_req
            olo = max(n_avail - stride * n_req, 0)
            ohi = min(n_avail - stride * (n_req - 1), stride)
            offset = (-emin) % stride
            if not olo <= offset < ohi:
                offset = olo
            decades = list(range(emin + offset - stride, emax + stride + 1, stride))
        inside = lambda v: self.ylim[0] * (1 - 1e-10) <= v <= self.ylim[1] * (1 + 1e-10)  # noqa: E731
        majors = [10.0 ** e for e in decades if inside(10.0 ** e)]
        minors: list[float] = []
        if n_avail < 10 and (stride == 1 or n_avail <= 1):
            minors = [m * 10.0 ** e for e in range(emin - 1, emax + 1) for m in range(2, 10)]
            minors = [v for v in minors if inside(v)]
            if stride == 1 and len(decades) - 2 + len(minors) <= 1:    # matplotlib's AutoLocator fallback
                majors = []
                minors = [float(v) for v in nice_ticks(*self.ylim, nbins=9) if v > 0]  # (no axis: 9 bins)
        numdec = efmax - efmin
        sub = set(range(1, 11)) if numdec <= 0.4 else ({1, 2, 3, 4, 6, 10} if numdec <= 1 else {1})

        def label(v: float) -> str:
            fx = math.log10(v)
            if abs(fx - round(fx)) < 1e-10:
                return "10" + str(int(round(fx))).translate(_SUP)
            e = math.floor(fx)
            c = 10.0 ** (fx - e)
            if round(c) not in sub:
                return ""
            c = round(c) if abs(c - round(c)) < 1e-10 else c
            return f"{c:g}\u00d7" + "10" + str(e).translate(_SUP)

        out = [(v, label(v), True) for v in majors] + [(v, label(v), False) for v in minors]
        return sorted(out, key=lambda t: t[0])

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


def dashed_hline(dr: ImageDraw.ImageDraw, u0: float, u1: float, v: float, color, width: float,
                 on: float, off: float) -> None:
    """A horizontal dashed line from ``u0`` to ``u1`` at ``v``: dashes of ``on`` pixels, gaps of
    ``off``, the first dash starting at ``u0`` (matplotlib's ``"--"`` with offset 0)."""
    u = u0
    w = max(1, int(round(width)))
    while u < u1:
        dr.line([(u, v), (min(u + on, u1), v)], fill=color, width=w)
        u += on + off


def _legend(img: Image.Image, dr: ImageDraw.ImageDraw, ax: Axes, label: str, u, v, vt: float,
            fs: float, pt: float) -> None:
    """matplotlib's one-entry legend for a dashed black line at ``ax`` pixel row ``vt``,
    ``loc="best"``: of the corners in matplotlib's order (upper right, upper left, lower left,
    lower right) the first of least badness, matplotlib's count: curve points (``u``, ``v``
    pixels) inside the box plus one for each line (the curve, the target line) crossing it;
    frame: white at alpha 0.8 over the plot,
    0.8-grey 1 pt edge rounded by 0.2 font sizes; borderpad 0.4, handle 2.0 + pad 0.8 font sizes,
    0.5 font sizes from the axes."""
    l, t, r, b = ax.box
    tw, th = text_size(label, fs)
    bw = (0.4 * 2 + 2.0 + 0.8) * fs + tw
    bh = 0.4 * 2 * fs + th
    gap = 0.5 * fs
    corners = [(r - gap - bw, t + gap), (l + gap, t + gap), (l + gap, b - gap - bh), (r - gap - bw, b - gap - bh)]
    u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)

    # the curve's segments, sampled finely enough to see one cross a box of the legend's size
    w = np.linspace(0.0, 1.0, 17)[:, None]
    su = (u[:-1] * (1 - w) + u[1:] * w).ravel() if u.size > 1 else u
    sv = (v[:-1] * (1 - w) + v[1:] * w).ravel() if v.size > 1 else v

    def inside(x0, y0, pu, pv):
        return (pu >= x0) & (pu <= x0 + bw) & (pv >= y0) & (pv <= y0 + bh)

    def covered(c):
        x0, y0 = c
        return (int(np.sum(inside(x0, y0, u, v))) + int(bool(np.any(inside(x0, y0, su, sv))))
                + int(y0 <= vt <= y0 + bh))

    x0, y0 = min(corners, key=covered)                       # min keeps the first of equals
    box = tuple(int(round(z)) for z in (x0, y0, x0 + bw, y0 + bh))
    region = img.crop(box)
    img.paste(Image.blend(region, Image.new("RGB", region.size, TAB["white"]), 0.8), box[:2])
    dr.rounded_rectangle(box, radius=0.2 * fs, outline=(204, 204, 204), width=max(1, round(1.0 * pt)))
    ym = y0 + bh / 2
    dashed_hline(dr, x0 + 0.4 * fs, x0 + 2.4 * fs, ym, TAB["k"], 1.0 * pt, 3.7 * pt, 1.6 * pt)
    draw_text(dr, (x0 + 3.2 * fs, ym), label, fs, "lm")


def plot_curves(path, curves: dict, title: str = "", logy: bool = True, xlabel: str = "iteration",
                dpi: float = 110.0, targets: dict | None = None) -> None:
    """One panel per curve (value against index), log y where every value is positive, titles,
    grid; a dashed black line with a "target" legend at ``targets[name]`` where given (in the
    y limits, as matplotlib's ``axhline``); the layout of :func:`diffvc.viz.plot_curves`
    (4.2 x 3.2 in per panel at ``dpi``)."""
    targets = targets or {}
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
        tg = targets.get(name)
        tg = float(tg) if tg is not None and math.isfinite(float(tg)) and (float(tg) > 0 or not log) else None
        if tg is not None:
            fin = np.append(fin, tg)
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        ax = Axes((0, 0, 1, 1), _limits(0.0, max(len(ys) - 1, 1), False), _limits(lo, hi, log), log, dpi)
        axes.append((name, ys, ax, tg))
    pad = 1.08 * 10 * pt
    panel = W * SS / n
    title_h = text_size("Ag", big)[1] + 6 * pt
    label_h = text_size("Ag", med)[1]
    for k, (name, ys, ax, tg) in enumerate(axes):
        bottom = H * SS - pad - 2 * label_h - 7 * pt - 4 * pt
        ax.box = (0, top + title_h, 1, bottom)                  # height first: it sets the y ticks
        left = k * panel + pad + ax.ytick_label_width(med) + 7 * pt + (pad if k else 0) * 0.5
        right = (k + 1) * panel - pad * (1.0 if k == n - 1 else 0.5)
        ax.box = (left, top + title_h, right, bottom)
        ax.draw_frame(dr, med, grid=True)
        u, v = ax.px(np.arange(len(ys)), ys)
        ok = np.isfinite(v)
        for run in np.split(np.arange(len(v)), np.nonzero(~ok)[0]):   # broken at non-finite values
            run = run[ok[run]]
            polyline(dr, u[run], v[run], TAB["tab:blue"], 1.5 * pt)
        l, t, r, b = ax.box
        if tg is not None:
            _, vt = ax.px(0.0, tg)
            dashed_hline(dr, l, r, float(vt), TAB["k"], 1.0 * pt, 3.7 * pt, 1.6 * pt)
            _legend(img, dr, ax, "target", u[ok], v[ok], float(vt), med, pt)
        dr.rectangle([l, t, r, b], outline=(0, 0, 0), width=max(1, round(0.8 * pt)))
        draw_text(dr, ((l + r) / 2, t - 6 * pt), name, big, "md")
        draw_text(dr, ((l + r) / 2, H * SS - pad), xlabel, med, "md")
    img.reduce(SS).save(path)
