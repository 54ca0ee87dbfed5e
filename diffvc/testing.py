"""Gradient checking against central finite differences, for every differentiable op in diffvc.

Usage in a test::

    from diffvc.testing import assert_grad_close
    assert_grad_close(lambda v, f: my_op(v, f), (verts64.requires_grad_(), weights64.requires_grad_()))

The function may take several tensors and return a tensor of any shape (or a tuple of tensors).
The check contracts the output with fixed random weights ``w`` (seeded), so one backward pass
gives ``d(sum w*f)/d(inputs)``; the same scalar is differentiated by central differences in every
input element that requires grad. Inputs must be float64 for the comparison to mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch


@dataclass
class GradReport:
    """Result of :func:`grad_check`: per-input relative errors and the gradients compared."""

    rel_errors: list[float]
    abs_errors: list[float]
    analytic: list[torch.Tensor] = field(repr=False)
    numeric: list[torch.Tensor] = field(repr=False)

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors) if self.rel_errors else 0.0

    def __str__(self) -> str:
        lines = ["input  rel_err     abs_err     |numeric|"]
        for i, (r, a, n) in enumerate(zip(self.rel_errors, self.abs_errors, self.numeric)):
            lines.append(f"{i:5d}  {r:.3e}  {a:.3e}  {n.norm().item():.3e}")
        return "\n".join(lines)


def _flatten_outputs(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    if isinstance(out, (tuple, list)):
        return torch.cat([o.reshape(-1) for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()])
    raise TypeError(f"function must return a tensor or a tuple of tensors, got {type(out).__name__}")


def grad_check(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    eps: float = 1e-6,
    seed: int = 0,
    max_elements: int | None = None,
) -> GradReport:
    """Compare autograd gradients of ``fn(*inputs)`` with central finite differences.

    Args:
        fn: function of the tensors in ``inputs`` returning a tensor (any shape) or tuple of tensors.
        inputs: tensors; those with ``requires_grad`` are checked. Should be float64.
        eps: finite-difference step (absolute, per element).
        seed: seed of the random output weights.
        max_elements: check at most this many (randomly chosen, seeded) elements per input; the
            relative error is then computed on those elements only.

    Returns:
        A :class:`GradReport`. ``rel_errors[i] = |g_ad - g_fd| / max(|g_fd|, 1e-12)`` (2-norms
        over the checked elements of input ``i``).
    """
    inputs = list(inputs)
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.requires_grad and x.dtype != torch.float64:
            raise TypeError(f"inputs[{i}] must be float64 for a finite-difference check, got {x.dtype}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out0 = _flatten_outputs(fn(*inputs))
    w = torch.randn(out0.shape, generator=gen, dtype=torch.float64).to(out0.device, out0.dtype)

    def scalar(*xs) -> torch.Tensor:
        return (_flatten_outputs(fn(*xs)) * w).sum()

    diff_idx = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    if not diff_idx:
        raise ValueError("inputs: no tensor requires grad")
    loss = scalar(*inputs)
    analytic_all = torch.autograd.grad(loss, [inputs[i] for i in diff_idx], allow_unused=True)

    rel, absd, ana_list, num_list = [], [], [], []
    for k, i in enumerate(diff_idx):
        x = inputs[i]
        ana = analytic_all[k]
        ana = torch.zeros_like(x) if ana is None else ana.detach()
        n = x.numel()
        if max_elements is not None and n > max_elements:
            idx = torch.randperm(n, generator=gen)[:max_elements]
        else:
            idx = torch.arange(n)
        num = torch.zeros(len(idx), dtype=torch.float64)
        base = x.detach().clone()
        with torch.no_grad():
            for j, e in enumerate(idx.tolist()):
                xp = base.clone().reshape(-1)
                xp[e] += eps
                xm = base.clone().reshape(-1)
                xm[e] -= eps
                args_p = list(inputs)
                args_p[i] = xp.reshape(x.shape)
                args_m = list(inputs)
                args_m[i] = xm.reshape(x.shape)
                num[j] = (scalar(*args_p) - scalar(*args_m)).double().cpu() / (2 * eps)
        a = ana.reshape(-1)[idx.to(ana.device)].double().cpu()
        err = (a - num).norm().item()
        rel.append(err / max(num.norm().item(), 1e-12))
        absd.append(err)
        ana_list.append(a)
        num_list.append(num)
    return GradReport(rel, absd, ana_list, num_list)


def assert_grad_close(
    fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    rtol: float = 1e-5,
    atol: float = 1e-8,
    eps: float = 1e-6,
    seed: int = 0,
    max_elements: int | None = None,
) -> GradReport:
    """Raise ``AssertionError`` unless every checked input's gradient matches finite differences.

    An input passes when ``|g_ad - g_fd| <= atol + rtol * |g_fd|`` (2-norms over its elements).
    """
    rep = grad_check(fn, inputs, eps=eps, seed=seed, max_elements=max_elements)
    bad = [
        i for i, (a, n) in enumerate(zip(rep.abs_errors, rep.numeric)) if a > atol + rtol * n.norm().item()
    ]
    if bad:
        raise AssertionError(f"gradient mismatch for checked inputs {bad} (rtol={rtol}, atol={atol}):\n{rep}")
    return rep


# --------------------------------------------------------------------------------------------
# what an example writes: images and animations read back
# --------------------------------------------------------------------------------------------

_PLOT_NAMES = ("curves", "plot", "convergence", "history")


def _image_problem(a, what: str, plot: bool) -> str | None:
    import numpy as np

    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    rgb = a[..., :3].reshape(-1, a.shape[-1] if a.shape[-1] < 3 else 3).astype(np.int64)
    if rgb.shape[0] == 0:
        return f"{what} is empty"
    # the most common colour and how many pixels differ from it
    keys = rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2] if rgb.shape[1] == 3 else rgb[:, 0]
    vals, counts = np.unique(keys, return_counts=True)
    other = 1.0 - counts.max() / keys.size
    if other < (0.003 if plot else 0.01):
        return f"{what} is blank (one colour covers {100 * (1 - other):.1f}% of it)"
    if not plot:
        white = float((rgb >= 254).all(axis=1).mean())
        black = float((rgb <= 1).all(axis=1).mean())
        # a white page with many colours on it is a figure (plot); a clipped render has few colours
        if white > 0.6 and vals.size < 64:
            return f"{what} is saturated ({100 * white:.0f}% of its pixels are white, {vals.size} colours)"
        if black > 0.9:
            return f"{what} is black ({100 * black:.0f}% of its pixels)"
    return None


def check_outputs(out_dir, min_images: int = 1) -> dict:
    """Read back every image (``*.png``) and animation (``*.gif``) an example wrote under
    ``out_dir`` and raise ``AssertionError`` naming the file if one is blank (one colour), a
    render is saturated (mostly white) or black, or an animation's frames do not move (fewer
    than half of them distinct, or fewer than 2). Plots (``curves*.png`` ...) are only checked
    for being blank. Returns counts ``{"images": n, "animations": n, "frames": n}``."""
    from pathlib import Path

    import imageio.v3 as iio
    import numpy as np

    out_dir = Path(out_dir)
    pngs = sorted(out_dir.rglob("*.png"))
    gifs = sorted(out_dir.rglob("*.gif"))
    if len(pngs) + len(gifs) < min_images:
        raise AssertionError(f"{out_dir}: expected at least {min_images} images/animations, found {len(pngs) + len(gifs)}")
    frames_total = 0
    for p in pngs:
        plot = any(p.stem.startswith(n) or n in p.stem for n in _PLOT_NAMES)
        msg = _image_problem(iio.imread(p), str(p.relative_to(out_dir)), plot)
        if msg:
            raise AssertionError(msg)
    for g in gifs:
        frames = [np.asarray(f) for f in iio.imiter(g)]
        name = str(g.relative_to(out_dir))
        if len(frames) < 2:
            raise AssertionError(f"{name} has {len(frames)} frame(s); an animation needs at least 2")
        for k, f in enumerate(frames):
            msg = _image_problem(f, f"{name} frame {k}", plot=False)
            if msg:
                raise AssertionError(msg)
        distinct = len({f.tobytes() for f in frames})
        if distinct < max(2, len(frames) // 2):
            raise AssertionError(f"{name}: only {distinct} of {len(frames)} frames differ (the animation does not move)")
        frames_total += len(frames)
    return {"images": len(pngs), "animations": len(gifs), "frames": frames_total}
