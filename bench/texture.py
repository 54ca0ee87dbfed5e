"""Texture lookups, forward + backward (to the table): the Warp kernels vs the ``grid_sample`` twin.

A 1024 x 1024 RGB float32 texture looked up at 512 x 512 texture coordinates (a gently warped
view of 0.9 of the texture: about one texel per pixel, the common case), loss = mean squared
difference to a random target, backward to the texture and the coordinates; ``bilinear`` and
``mipmap`` (coordinates spanning ~7 levels: a plane receding to 31x minification). Medians over
repeats, torch on 1 and 2 threads (the 1- and 2-thread repeats alternate); the 1-minute load
average is recorded.

    python -m bench.texture [--quick]
"""

from __future__ import annotations

import os

import torch

from bench._common import alternating_ms, cli


def _scene(H: int = 512, W: int = 512, size: int = 1024):
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(size, size, 3, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    near = torch.stack([xx * 0.9 + 0.03 * torch.sin(6 * yy), yy * 0.9 + 0.02 * torch.cos(5 * xx)], -1)[None]
    s = 1 + 30 * yy
    far = torch.stack([xx * s, yy * s], -1)[None]  # footprint growing to ~31 texels: lod 0..~7
    target = torch.rand(1, H, W, 3, generator=g)
    return tex, near, far, target


def run(quick: bool = False) -> dict:
    from diffvc.render import texture

    tex, near, far, target = _scene()
    repeats = 5 if quick else 11
    out = {"texture": "1024x1024x3 float32", "lookups": "512x512", "repeats": repeats,
           "load_average_1min_start": round(os.getloadavg()[0], 2)}

    def once(case):
        f, be, _ = case
        t = tex.clone().requires_grad_()
        u = (near if f == "bilinear" else far).clone().requires_grad_()
        img = texture(t, u, filter=f, backend=be)
        ((img - target) ** 2).mean().backward()

    cases = [(f, be, th) for f in ("bilinear", "mipmap") for th in (1, 2) for be in ("warp", "torch")]
    for (f, be, th), ms in alternating_ms(cases, repeats, once).items():
        out[f"{f}_{be}_{th}thread_ms"] = ms["median"]
        out[f"{f}_{be}_{th}thread_min_ms"] = ms["min"]
    for f in ("bilinear", "mipmap"):
        for th in (1, 2):
            out[f"{f}_speedup_vs_torch_{th}thread"] = round(out[f"{f}_torch_{th}thread_ms"] / out[f"{f}_warp_{th}thread_ms"], 2)
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv=None) -> dict:
    return cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
