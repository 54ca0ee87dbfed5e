"""Soft silhouettes (SoftRas), forward + backward (to the table): the Warp kernels vs the torch twin.

A torus of 10,000 triangles filling much of a 256 x 256 view, float32, ``sigma = 1`` pixel^2
(``eps = 1e-4``: each face reaches ~3 pixels beyond its box), loss = mean of the silhouette,
backward to the vertices. Medians over repeats, torch on 1 and 2 threads (the variants' repeats
alternate); the 1-minute load average is recorded.

    python -m bench.soft [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def run(quick: bool = False) -> dict:
    from diffvc.geometry import torus
    from diffvc.render import Cameras, soft_silhouette

    v, f = torus(1.0, 0.4, 100, 50)
    cams = Cameras.look_at(torch.tensor([[0.0, 1.5, 3.0]]), width=256, height=256, fov_y=45.0)
    repeats = 3 if quick else 7
    threads0 = torch.get_num_threads()
    out = {"faces": int(f.shape[0]), "resolution": "256x256", "sigma": 1.0, "repeats": repeats,
           "load_average_1min_start": round(os.getloadavg()[0], 2)}
    cases = [(be, th) for th in (1, 2) for be in ("warp", "torch")]
    times = {c: [] for c in cases}
    try:
        for r in range(repeats + 1):
            for be, th in cases:
                torch.set_num_threads(th)
                x = v.clone().requires_grad_()
                t0 = time.perf_counter()
                soft_silhouette(cams, x, f, sigma=1.0, backend=be).mean().backward()
                if r:  # the first round warms up (kernel loading)
                    times[(be, th)].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads0)
    for (be, th), ts in times.items():
        out[f"{be}_{th}thread_ms"] = round(statistics.median(ts), 2)
        out[f"{be}_{th}thread_min_ms"] = round(min(ts), 2)
    for th in (1, 2):
        out[f"speedup_vs_torch_{th}thread"] = round(out[f"torch_{th}thread_ms"] / out[f"warp_{th}thread_ms"], 2)
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    res = run(ap.parse_args(argv).quick)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
