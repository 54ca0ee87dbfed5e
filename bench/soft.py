"""Soft silhouettes (SoftRas), forward + backward (to the table): the Warp kernels vs the torch twin.

A torus of 10,000 triangles filling much of a 256 x 256 view, float32, ``sigma = 1`` pixel^2
(``eps = 1e-4``: each face reaches ~3 pixels beyond its box), loss = mean of the silhouette,
backward to the vertices. Medians over repeats, torch on 1 and 2 threads (the variants' repeats
alternate); the 1-minute load average is recorded.

    python -m bench.soft [--quick]
"""

from __future__ import annotations

import os

import torch

from bench._common import alternating_ms, cli


def run(quick: bool = False) -> dict:
    from diffvc.geometry import torus
    from diffvc.render import Cameras, soft_silhouette

    v, f = torus(1.0, 0.4, 100, 50)
    cams = Cameras.look_at(torch.tensor([[0.0, 1.5, 3.0]]), width=256, height=256, fov_y=45.0)
    repeats = 3 if quick else 7
    out = {"faces": int(f.shape[0]), "resolution": "256x256", "sigma": 1.0, "repeats": repeats,
           "load_average_1min_start": round(os.getloadavg()[0], 2)}

    def once(case):
        x = v.clone().requires_grad_()
        soft_silhouette(cams, x, f, sigma=1.0, backend=case[0]).mean().backward()

    cases = [(be, th) for th in (1, 2) for be in ("warp", "torch")]
    for (be, th), ms in alternating_ms(cases, repeats, once).items():
        out[f"{be}_{th}thread_ms"] = ms["median"]
        out[f"{be}_{th}thread_min_ms"] = ms["min"]
    for th in (1, 2):
        out[f"speedup_vs_torch_{th}thread"] = round(out[f"torch_{th}thread_ms"] / out[f"warp_{th}thread_ms"], 2)
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv=None) -> dict:
    return cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
