"""One loss evaluation of the sysid example, split by stage: physics rollout, rendering the video,
and the backward pass through both; Warp rasterizer vs its plain-torch twin in the same run.

Settings are the example's (float64, 64 x 64, 2 views, 19 frames): the rigid box (180 steps of
``rigid_step``) and the soft cube (720 steps of ``fem_step``, 64 nodes, 162 tets). Median wall
time in ms over repeats, plus the process CPU time per iteration (the dev machine is shared, so
wall time includes waiting for a core).

    python -m bench.pipeline [--quick]     or     diffvc bench pipeline
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


def _time_iteration(exp, target, backend: str):
    from diffvc.optim import pyramid_mse
    from diffvc.pipeline.video import render_trajectory

    params = exp.params()
    t0, c0 = time.perf_counter(), time.process_time()
    scene, states = exp.simulate_scene(params.values())
    t1 = time.perf_counter()
    video = render_trajectory(scene, states, backend=backend)
    t2 = time.perf_counter()
    loss = pyramid_mse(video, target, levels=3)
    loss.backward()
    t3, c3 = time.perf_counter(), time.process_time()
    return {"physics": t1 - t0, "render": t2 - t1, "backward": t3 - t2, "total": t3 - t0, "cpu": c3 - c0}


def _bench(exp, repeats: int) -> dict:
    from diffvc.examples.sysid import DTYPE

    with torch.no_grad():
        target = exp.video({k: torch.tensor(v, dtype=DTYPE) for k, v in exp.truth().items()})
    out = {}
    for backend in ("warp", "torch"):
        _time_iteration(exp, target, backend)  # warm-up (kernel load, caches)
        runs = [_time_iteration(exp, target, backend) for _ in range(repeats)]
        for k in runs[0]:
            out[f"{backend}_{k}_ms"] = 1000 * statistics.median(r[k] for r in runs)
    out["render_speedup_warp_vs_torch"] = out["torch_render_ms"] / out["warp_render_ms"]
    out["total_speedup_warp_vs_torch"] = out["torch_total_ms"] / out["warp_total_ms"]
    return out


def run(quick: bool = False) -> dict:
    from diffvc.examples.sysid import RigidExperiment, RigidProblem, SoftExperiment, SoftProblem

    repeats = 2 if quick else 5
    res = {"repeats": repeats, "threads": torch.get_num_threads()}
    for name, exp in (("rigid", RigidExperiment(RigidProblem())), ("soft", SoftExperiment(SoftProblem()))):
        for k, v in _bench(exp, repeats).items():
            res[f"{name}_{k}"] = v
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
