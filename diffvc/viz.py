"""Saving results: images (linear -> sRGB), animations, loss and parameter curves, metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch


def linear_to_srgb(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Linear radiance in [0, inf) -> sRGB-encoded uint8 (clamped to [0, 1] first)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.clip(a.astype(np.float64), 0.0, 1.0)
    s = np.where(a <= 0.0031308, 12.92 * a, 1.055 * np.power(a, 1 / 2.4) - 0.055)
    return (s * 255.0 + 0.5).astype(np.uint8)


def to_uint8(x: torch.Tensor | np.ndarray, srgb: bool = True) -> np.ndarray:
    """Image ``(H, W)``, ``(H, W, 1|3|4)`` in [0, 1] -> uint8 ``(H, W, 3|4)``.

    A uint8 array is already encoded (e.g. from :func:`tile` or :func:`figure_to_array`) and is
    returned as is (grey expanded to RGB): it is never rescaled a second time."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return a
    if srgb:
        return linear_to_srgb(a)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_image(path: str | Path, img, srgb: bool = True) -> Path:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(img, srgb))
    return path


def save_animation(path: str | Path, frames: Sequence, fps: int = 20, srgb: bool = True,
                   palette: str = "per_frame") -> Path:
    """Write frames ``(H, W, C)`` as an animated GIF (or MP4 if imageio-ffmpeg is present and asked),
    ``fps`` frames per second.

    ``palette``: ``"per_frame"`` (an adaptive 256-colour palette for each frame, median cut) or
    ``"shared"``: one adaptive palette from the first and last frames, every frame mapped to it
    without dithering -- for plots and diagrams whose frames share their colours (~20x faster to
    write: the median cut runs once instead of per frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [to_uint8(f, srgb) for f in frames]
    if palette == "shared" and path.suffix.lower() == ".gif" and imgs:
        from PIL import Image

        rgb = [a[..., :3] for a in imgs]
        pal = Image.fromarray(np.concatenate([rgb[0], rgb[-1]], 0)).quantize(256, method=Image.Quantize.MEDIANCUT)
        ims = [Image.fromarray(np.ascontiguousarray(a)).quantize(palette=pal, dither=Image.Dither.NONE) for a in rgb]
        ims[0].save(path, save_all=True, append_images=ims[1:], duration=1000.0 / fps, loop=0)
        return path
    if palette not in ("per_frame", "shared"):
        raise ValueError(f"palette must be 'per_frame' or 'shared', got {palette!r}")
    import imageio.v2 as iio2

    iio2.mimsave(path, imgs, duration=1000.0 / fps, loop=0)  # milliseconds per frame
    return path


def _label_strip(text: str, width: int, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(img)


def tile(images: Sequence, cols: int | None = None, pad: int = 2, labels: Sequence[str] | None = None,
         min_size: int = 0) -> np.ndarray:
    """Arrange equally sized images ``(H, W, C)`` in a grid with ``pad`` white pixels between them.

    Float images are taken as display values in [0, 1] (no sRGB encoding); uint8 images as is.
    ``labels``: one caption per panel, written in a white strip above it. ``min_size``: enlarge
    panels by an integer factor (nearest neighbour, pixels stay visible) until their shorter side
    is at least this many pixels. Returns uint8 ``(rows * h', cols * w', C)``.
    """
    arrs = [to_uint8(i, srgb=False) for i in images]
    if not arrs:
        raise ValueError("images is empty")
    if labels is not None and len(labels) != len(arrs):
        raise ValueError(f"labels: need one per image ({len(arrs)}), got {len(labels)}")
    h, w, c = arrs[0].shape
    if any(a.shape != (h, w, c) for a in arrs):
        raise ValueError("images must all have the same shape")
    if min_size > min(h, w):
        k = -(-min_size // min(h, w))
        arrs = [np.repeat(np.repeat(a, k, 0), k, 1) for a in arrs]
        h, w = h * k, w * k
    if labels is not None:
        arrs = [np.concatenate([_label_strip(str(t), w)[..., :c], a], 0) for t, a in zip(labels, arrs)]
        h = arrs[0].shape[0]
    n = len(arrs)
    cols = cols or n
    rows = math.ceil(n / cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), 255, np.uint8)
    for k, a in enumerate(arrs):
        r, q = divmod(k, cols)
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = a
    return out


def plot_curves(path: str | Path, curves: Mapping[str, Sequence[float]], title: str = "", logy: bool = True,
                xlabel: str = "iteration", targets: Mapping[str, float] | None = None) -> Path:
    """One subplot per curve (loss, parameters), value against index, 4.2 x 3.2 in per panel at
    110 dpi; log y where every finite value of the curve is positive; a dashed black line with a
    "target" legend at ``targets[name]`` where given. Written in the format of the path's
    extension (Pillow's formats: PNG, JPEG, PDF, ...); a path without one gets ``.png``, as
    matplotlib's ``savefig`` did. Returns the path written.

    Drawn with Pillow in matplotlib's default style (:mod:`diffvc.examples._lineplot`): importing
    matplotlib and laying out the figure cost ~2 s of CPU per run, more than some examples' whole
    optimisation.
    """
    from .examples._lineplot import plot_curves as _plot

    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty mapping of name -> values, got {curves!r:.80}")
    path = Path(path)
    if not path.suffix:                     # as matplotlib's savefig: PNG, ".png" appended
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    _plot(path, {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in curves.items()}, title=title,
          logy=logy, xlabel=xlabel, dpi=110.0, targets=dict(targets or {}))
    return path


def write_metrics(path: str | Path, metrics: Mapping) -> Path:
    """Write a flat JSON object of numbers and strings (tensors/numpy scalars converted)."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().item() if v.numel() == 1 else v.detach().cpu().tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (list, tuple, dict)):
            raise TypeError(f"metrics[{k!r}] must be a number or string (metrics.json is flat), got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        flat[k] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    return path


def figure_to_array(fig, pad: float = 1.08) -> np.ndarray:
    """Render a matplotlib figure to an RGB uint8 array ``(H, W, 3)`` and close it (animation frames)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(pad=pad)
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return out
