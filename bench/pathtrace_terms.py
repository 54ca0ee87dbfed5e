"""Issue 12 diagnostic: the Cornell tall-box x gradient of ``bench.pathtrace_visibility`` split by term.

Each term is the AD gradient (image sum and the four 8x8 blocks) with only that term switched on
(the others are zeroed by filtering the path records / replacing the term's function):

* ``primary``: primary edges (warped sides), ``border``: pixel borders of warped camera hits,
  ``poolcam``: the lights' shadow lines seen by the camera;
* ``int``: interior terms of every path vertex (camera density, link and next-event geometry
  factors, area elements); ``edge0``, ``edge1``, ``edge2+``: secondary-edge terms at the camera
  hit, at the second vertex and at later vertices.

The terms add up to the full gradient with the same seed. Mean and standard error over seeds::

    python -m bench.pathtrace_terms --depth 2 --seeds 24 --seed0 100 --spp 128

Measured 2026-12-02 (shared CPU, load ~4): depth 2, 24 seeds x 128 spp: ``int`` image 1.175 +- 0.114,
bottom-left -1.320 +- 0.057; ``edge1`` -1.358 +- 0.146, -0.099 +- 0.100; ``edge0`` -0.674 +- 0.013,
0.198 +- 0.010; ``border`` 0, -2.626 +- 0.025 (8 seeds x 64 spp: ``primary`` -6.420 +- 0.031,
0.603 +- 0.022; ``poolcam`` 1.536 +- 0.035, 1.546 +- 0.035). Their sum, image -5.74 +- 0.19 and
bottom-left -1.70 +- 0.13, agrees with FD (-5.843 +- 0.065, -1.735 +- 0.057). Depth 7, 12 seeds x
128 spp: per-seed std of the image term: ``int`` 0.97, ``edge1`` 0.74, ``edge2+`` 0.72, ``edge0``
0.15 (the path terms carry the variance).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import diffvc.render.pt_edges as E
from diffvc._kernels import pathtrace as K
from diffvc.render.pt_scene import CORNELL_TALL_BOX

from .pathtrace_visibility import _image, blocks

TERMS = ("primary", "border", "poolcam", "int", "edge0", "edge1", "edge2+")


def _zero(*args, **kw):
    return torch.zeros((), dtype=torch.float64)


def term_gradient(term: str, depth: int, spp: int, seed: int) -> list:
    """The gradient of [image, TL, TR, BL, BR] w.r.t. the tall box's x with only ``term`` on."""
    orig = (K.path_derivative, E._pixel_border_grad, E._shadow_camera_grad)

    def records(*args, **kw):
        rec = orig[0](*args, **kw)
        k = torch.arange(rec["edge"].shape[1], device=rec["edge"].device)[None].expand_as(rec["edge"])
        if term != "int":
            rec["lkind"][:] = 0
        keep = {"int": k < 0, "edge0": k == 0, "edge1": k == 1, "edge2+": k >= 2}.get(term, k < 0)
        rec["edge"][~keep] = -1
        return rec

    K.path_derivative = records
    if term != "border":
        E._pixel_border_grad = _zero
    if term != "poolcam":
        E._shadow_camera_grad = _zero
    try:
        c = torch.tensor(CORNELL_TALL_BOX[0], dtype=torch.float64).requires_grad_()
        b = blocks(_image(c, depth, 1, seed, edge_samples=20000 if term == "primary" else 0, edge_spp=8,
                          secondary_spp=spp, interior_spp=spp))
        return [float(torch.autograd.grad(b[i], c, retain_graph=True)[0][0]) for i in range(b.numel())]
    finally:
        K.path_derivative, E._pixel_border_grad, E._shadow_camera_grad = orig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--spp", type=int, default=128)
    ap.add_argument("--terms", default=",".join(TERMS))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"max_depth": a.depth, "spp": a.spp, "seeds": a.seeds,
           "order": ["image", "top_left", "top_right", "bottom_left", "bottom_right"]}
    total = None
    for term in a.terms.split(","):
        if term not in TERMS:
            raise ValueError(f"--terms: unknown term {term!r} (one of {TERMS})")
        t0 = time.process_time()
        rows = torch.tensor([term_gradient(term, a.depth, a.spp, s) for s in range(a.seed0, a.seed0 + a.seeds)],
                            dtype=torch.float64)
        m = rows.mean(0)
        se = rows.std(0) / a.seeds ** 0.5 if a.seeds > 1 else torch.full_like(m, float("nan"))
        total = m if total is None else total + m
        out[term] = {"mean": [round(x, 4) for x in m.tolist()], "sem": [round(x, 4) for x in se.tolist()],
                     "std": [round(x, 4) for x in (se * a.seeds ** 0.5).tolist()],
                     "cpu_s": round(time.process_time() - t0, 1)}
        print(json.dumps({term: out[term]}), flush=True)
    out["sum"] = [round(x, 4) for x in total.tolist()]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
