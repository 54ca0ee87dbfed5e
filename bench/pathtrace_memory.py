"""Memory of a path-traced backward pass at depth 8 vs depth 1 (path replay backpropagation).

Each depth runs in a fresh subprocess (so allocator caches do not leak between them): the scene
is the Cornell box at 128x128, 16 spp, gradients w.r.t. every albedo and emission. We report the
peak resident memory increase during the backward pass (sampled every millisecond from
``/proc/self/statm``) and, on CUDA, ``torch.cuda.max_memory_allocated`` during it. With path
replay, the backward pass allocates only the gradient buffers and re-traces the paths, so the
ratio depth 8 / depth 1 should be about 1 (a tape of every bounce would make it about 8).

    python -m bench.pathtrace_memory [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import json, os, sys, threading, time
import torch
from diffvc.render.pathtrace import path_trace
from diffvc.render.pt_scene import cornell_box, cornell_camera

depth, size, spp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

scene, _ = cornell_box()
cam = cornell_camera(size, size)
alb = scene.albedo.clone().requires_grad_()
em = scene.emission.clone().requires_grad_()
def fwd():
    return path_trace(scene.replace(albedo=alb, emission=em), cam, spp=spp, max_depth=depth, seed=0)
fwd().mean().backward()  # warm-up: kernels compiled, pools created
alb.grad = None; em.grad = None
img = fwd()
loss = img.mean()
base = rss()
peak = [base]
stop = [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
th = threading.Thread(target=sample); th.start()
t0 = time.perf_counter()
loss.backward()
dt = time.perf_counter() - t0
stop[0] = True; th.join()
import resource
print(json.dumps({"backward_peak_rss_increase_bytes": peak[0] - base, "backward_s": dt,
                  "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _run_depth(depth: int, size: int, spp: int) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(depth), str(size), str(spp)], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    size, spp = (64, 4) if quick else (128, 16)
    r1 = _run_depth(1, size, spp)
    r8 = _run_depth(8, size, spp)
    mb = 1.0 / (1024 * 1024)
    return {
        "resolution": size, "spp": spp,
        "depth1_backward_peak_rss_increase_mb": r1["backward_peak_rss_increase_bytes"] * mb,
        "depth8_backward_peak_rss_increase_mb": r8["backward_peak_rss_increase_bytes"] * mb,
        "ratio_depth8_over_depth1": (r8["backward_peak_rss_increase_bytes"] + 1) / (r1["backward_peak_rss_increase_bytes"] + 1),
        "depth1_process_peak_rss_mb": r1["process_peak_rss_bytes"] * mb,
        "depth8_process_peak_rss_mb": r8["process_peak_rss_bytes"] * mb,
        "depth1_backward_ms": r1["backward_s"] * 1e3,
        "depth8_backward_ms": r8["backward_s"] * 1e3,
        "image_bytes": size * size * 3 * 4,
        "note": "peak RSS increase during loss.backward(), fresh process per depth",
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
