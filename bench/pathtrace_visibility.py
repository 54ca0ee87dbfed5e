"""Issue 12 validation: the Cornell box's tall-box translation gradient against finite differences.

``cornell_box`` at 16x16 (float64 scene), the tall box's x position; the image sum and its four
8x8 block sums (row-major: top-left, top-right, bottom-left, bottom-right):

* AD: ``path_trace(..., spp=1, edge_samples=20000, edge_spp=8, secondary_spp=S, interior_spp=S,
  rr_depth=100)`` per seed (all geometry terms: primary edges, warped interior and boundary terms
  at every path vertex, shadow lines, pixel borders); mean over seeds and its standard error.
* FD: central differences ``(I(x + h) - I(x - h)) / 2h`` with the same seed on both sides,
  ``fd_spp`` paths per pixel, mean over seeds and its standard error.

``max_depth`` in diffvc's counting (1: direct light; 7: seven bounces). Each part prints one JSON
line per seed as it goes (the run is long on a CPU) and a summary JSON at the end::

    python -m bench.pathtrace_visibility --depth 7 --ad-seeds 8 --ad-spp 256 --fd-seeds 4 --fd-spp 8192
    python -m bench.pathtrace_visibility --depth 1 --ad-seeds 4 --ad-spp 256 --fd-seeds 4 --fd-spp 8192

``--fd-seeds 0`` / ``--ad-seeds 0`` skip FD / AD (``--fd-json FILES`` / ``--ad-json FILES`` read per-seed
lines written by earlier runs).

Per-seed lines of the runs below: ``bench/results/pathtrace_visibility/*.jsonl``; merge them
with ``--ad-seeds 0 --fd-seeds 0 --ad-json FILES --fd-json FILES`` (or add seeds to them).

Measured 2026-12-02 (warped-area path terms, shared CPU at load 3-5; [image, TL, TR, BL, BR],
mean +- standard error over seeds; AD 256 secondary/interior spp, FD 8192 spp, step 0.02):

* depth 1: AD (16 seeds, 0-15) -6.082 +- 0.027, -0.527 +- 0.016, -1.925 +- 0.012, -0.118 +- 0.031,
  -3.512 +- 0.012; FD (24 seeds, 1000-1023) -6.072 +- 0.023, -0.546 +- 0.007, -1.889 +- 0.009,
  -0.141 +- 0.013, -3.496 +- 0.010. ~3 s CPU per AD gradient, ~1.7 s per FD seed.
* depth 2: AD (24 seeds, 0-23) -5.738 +- 0.121, 0.260 +- 0.069, -0.271 +- 0.078, -1.732 +- 0.101,
  -3.994 +- 0.075; FD (16 seeds, 1006-1021) -5.699 +- 0.046, 0.269 +- 0.034, -0.306 +- 0.024,
  -1.696 +- 0.023, -3.966 +- 0.017. (An earlier report of a depth-2 bias, AD -6.23 +- 0.08 and
  bottom-left -2.30, came from seeds 0-3 alone: seeds 4-7 give -4.9 .. -5.5; the per-seed
  spread is ~0.6 at 256 spp. ``bench.pathtrace_terms`` splits the gradient by term; their sum agrees with FD.)
* depth 7: AD (80 seeds, 100-179) -6.102 +- 0.139, 0.457 +- 0.060, -0.660 +- 0.060,
  -0.776 +- 0.090, -5.123 +- 0.056; FD (64 seeds, 1016-1079) -5.970 +- 0.036, 0.503 +- 0.022,
  -0.652 +- 0.021, -0.747 +- 0.018, -5.074 +- 0.013. Per-seed AD std 1.2-1.3 on the image sum
  (``int``, ``edge1`` and ``edge2+`` terms about equally), ~12 s CPU per AD gradient, ~6 s per FD
  seed. Earlier (16 AD seeds 0-15): -5.520 +- 0.293.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffvc.render.pathtrace import path_trace
from diffvc.render.pt_scene import CORNELL_TALL_BOX, cornell_box, cornell_camera

H = 16


def _image(c, depth: int, spp: int, seed: int, **kw):
    cam = cornell_camera(H, H, dtype=torch.float64)
    s, inf = cornell_box(tall_box_center=c, dtype=torch.float64)
    s = s.replace(dynamic_faces=inf["tall_box_faces"])
    return path_trace(s, cam, spp=spp, max_depth=depth, seed=seed, rr_depth=100, **kw)


def blocks(img: torch.Tensor) -> torch.Tensor:
    """(5,) image sum and the four 8x8 block sums of an (H, W, 3) image."""
    b = img.sum(-1).reshape(H // 8, 8, H // 8, 8).sum((1, 3)).reshape(-1)
    return torch.cat([b.sum()[None], b])


def ad_gradient(depth: int, spp: int, seed: int) -> list:
    c0 = torch.tensor(CORNELL_TALL_BOX[0], dtype=torch.float64)
    c = c0.clone().requires_grad_()
    b = blocks(_image(c, depth, 1, seed, edge_samples=20000, edge_spp=8, secondary_spp=spp, interior_spp=spp))
    return [float(torch.autograd.grad(b[i], c, retain_graph=True)[0][0]) for i in range(b.numel())]


def fd_gradient(depth: int, spp: int, seed: int, step: float) -> list:
    c0 = torch.tensor(CORNELL_TALL_BOX[0], dtype=torch.float64)
    e = torch.tensor([step, 0.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        d = blocks(_image(c0 + e, depth, spp, seed)) - blocks(_image(c0 - e, depth, spp, seed))
    return (d / (2 * step)).tolist()


def _stats(rows: list) -> tuple:
    t = torch.tensor(rows, dtype=torch.float64)
    sem = t.std(0) / len(rows) ** 0.5 if len(rows) > 1 else torch.full((t.shape[1],), float("nan"))
    return [round(x, 4) for x in t.mean(0).tolist()], [round(x, 4) for x in sem.tolist()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=7)
    ap.add_argument("--ad-seeds", type=int, default=8)
    ap.add_argument("--ad-seed0", type=int, default=0)
    ap.add_argument("--ad-spp", type=int, default=256)
    ap.add_argument("--fd-seeds", type=int, default=4)
    ap.add_argument("--fd-seed0", type=int, default=1000)
    ap.add_argument("--fd-spp", type=int, default=8192)
    ap.add_argument("--step", type=float, default=0.02)
    ap.add_argument("--fd-json", default=None, nargs="*",
                    help="files of per-seed FD lines ({'fd_seed': s, 'fd': [...]}) of earlier runs (merged)")
    ap.add_argument("--ad-json", default=None, nargs="*",
                    help="files of per-seed AD lines ({'ad_seed': s, 'g': [...]}) of earlier runs (merged; seeds deduplicated)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"scene": "cornell_box 16x16 float64, tall box x", "max_depth": a.depth, "rr_depth": 100,
           "order": ["image", "top_left", "top_right", "bottom_left", "bottom_right"]}
    ad, seen = [], set()
    for path in a.ad_json or []:
        with open(path) as f:
            for line in f:
                if line.strip().startswith("{") and '"ad_seed"' in line:
                    r = json.loads(line)
                    if r["ad_seed"] not in seen and r.get("spp", a.ad_spp) == a.ad_spp:
                        seen.add(r["ad_seed"])
                        ad.append(r["g"])
    for seed in range(a.ad_seed0, a.ad_seed0 + a.ad_seeds):
        t0 = time.process_time()
        g = ad_gradient(a.depth, a.ad_spp, seed)
        ad.append(g)
        print(json.dumps({"ad_seed": seed, "spp": a.ad_spp, "g": [round(x, 4) for x in g],
                          "cpu_s": round(time.process_time() - t0, 1)}), flush=True)
    fd = []
    for path in a.fd_json or []:
        with open(path) as f:
            fd += [json.loads(line)["fd"] for line in f if line.strip().startswith("{") and '"fd_seed"' in line]
    for seed in range(a.fd_seed0, a.fd_seed0 + a.fd_seeds):
        t0 = time.process_time()
        d = fd_gradient(a.depth, a.fd_spp, seed, a.step)
        fd.append(d)
        print(json.dumps({"fd_seed": seed, "spp": a.fd_spp, "step": a.step, "fd": [round(x, 4) for x in d],
                          "cpu_s": round(time.process_time() - t0, 1)}), flush=True)
    if ad:
        out["ad_mean"], out["ad_sem"] = _stats(ad)
        out["ad"] = f"{len(ad)} seeds x (edge_samples 20000, edge_spp 8, secondary/interior spp {a.ad_spp})"
    if fd:
        out["fd_mean"], out["fd_sem"] = _stats(fd)
        out["fd"] = f"{len(fd)} seeds x {a.fd_spp} spp, step {a.step}"
    if ad and fd:
        m, f = torch.tensor(out["ad_mean"]), torch.tensor(out["fd_mean"])
        out["rel_err"] = [round(x, 4) for x in ((m - f).abs() / f.abs()).tolist()]
        out["abs_err_over_fd_image"] = [round(x, 4) for x in ((m - f).abs() / f[0].abs()).tolist()]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
