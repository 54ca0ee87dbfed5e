"""Forward + backward of rasterize -> interpolate -> antialias: 1 vs 2 threads, 8 views vs 1.

Mesh: a torus of 100,000 triangles (250 x 200 segments; non-convex, so it has occlusion and
silhouette edges) filling much of a 512 x 512 image, perspective cameras on a ring around it,
float32 on CPU. One iteration: project vertices, rasterize, interpolate per-vertex colours,
antialias, loss = mean of the image, backward to vertex positions and colours. The topology for
antialiasing is computed once (as a training loop would).

Issue 18's targets, each measured side by side in this run (``host_2core_scaling``: what two
independent pure-compute processes get from the host's two vCPUs before and after the 1-/2-thread
rounds, 2.0 on two free cores; on the shared dev VM it ranged 1.27-2.10 on 2026-12-03, the ceiling of
any 2-thread speedup measured beside it; ``host_steal_share_during_1v2``: the share of the vCPUs'
time the hypervisor ran something else during the 1-/2-thread rounds, from ``/proc/stat``):

- ``speedup_2threads_vs_1`` = median 1-thread time / median 2-thread time (1 view), >= 1.7
  (``speedup_2threads_vs_1_paired_median``: the median over adjacent 1-/2-thread repeats of
  their ratio, beside it);
- ``warp_1view_ms`` (2 threads) <= 39 ms (2x faster than the issue's 1-thread 78 ms);
- ``ratio_8views_vs_1`` = 8-view time / 1-view time (2 threads), <= 8.

The 1- and 2-thread repeats alternate (and so do the 1- and 8-view ones), so load drift on a
shared machine hits both sides of a ratio alike. Each figure is the median wall time over the
repeats, with the minimum and the median process CPU time (user + system of all threads: the
work itself, independent of other processes; with 2 threads it also counts torch's OpenMP
workers spinning after a parallel torch op). The plain-torch twin (``backend="torch"``) is timed
once for 1 view (and for 8 views without ``--quick``). On a machine with CUDA the Warp figures on
the GPU are added.

    python -m bench.raster [--quick]     or     diffvc bench raster
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

import torch


def make_scene(views: int, size: int = 512, dtype=torch.float32, device="cpu"):
    from diffvc.geometry import torus
    from diffvc.render import Cameras

    v, f = torus(1.0, 0.4, 250, 200, dtype=dtype, device=device)
    ang = torch.arange(views, dtype=torch.float64) * 2 * math.pi / max(views, 1)
    eyes = torch.stack([3.2 * torch.sin(ang), torch.full_like(ang, 1.6), 3.2 * torch.cos(ang)], -1)
    cams = Cameras.look_at(eyes, width=size, height=size, fov_y=40.0).to(dtype, device)
    col = torch.rand(v.shape[0], 3, generator=torch.Generator().manual_seed(0)).to(dtype=dtype, device=device)
    return v, f, cams, col


def _iteration(v, f, cams, col, topo, backend):
    from diffvc.render import antialias, interpolate, rasterize

    vv = v.clone().requires_grad_()
    cc = col.clone().requires_grad_()
    fr = rasterize(cams, vv, f, backend=backend)
    img = antialias(interpolate(cc, fr, backend=backend), fr, topo, backend=backend)
    img.mean().backward()
    return fr


class _Case:
    """One configuration (views, threads, backend, device) with its scene and timings."""

    def __init__(self, views: int, threads: int, backend: str = "warp", device="cpu", size: int = 512):
        from diffvc.render import mesh_topology

        self.views, self.threads, self.backend, self.device = views, threads, backend, device
        self.scene = make_scene(views, size, device=device)
        self.topo = mesh_topology(self.scene[1].to(device), self.scene[0].shape[0])
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.coverage = None

    def once(self, record: bool = True) -> None:
        torch.set_num_threads(self.threads)
        if self.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        c0 = time.process_time()
        fr = _iteration(*self.scene, self.topo, self.backend)
        if self.device != "cpu":
            torch.cuda.synchronize()
        if record:
            self.wall.append((time.perf_counter() - t0) * 1e3)
            self.cpu.append((time.process_time() - c0) * 1e3)
            # NumPy on the CPU: a parallel torch op here would leave torch's OpenMP workers spinning
            # into the next timed iteration
            fid = fr.face_id.numpy() if fr.face_id.device.type == "cpu" else fr.face_id.cpu().numpy()
            self.coverage = float((fid >= 0).mean())

    def summary(self) -> dict:
        return {"median_ms": round(statistics.median(self.wall), 2), "min_ms": round(min(self.wall), 2),
                "cpu_ms": round(statistics.median(self.cpu), 2), "repeats": len(self.wall)}


def _spin(n: int, out) -> None:
    """A pure-Python integer loop (no memory traffic, no threads): its wall time in ``out``."""
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    out.put(time.perf_counter() - t0)


def host_two_core_scaling(rounds: int = 3, n: int = 3_000_000) -> list[float]:
    """What two cores of this host deliver right now: ``2 * t1 / t2`` per round, ``t1`` the time of
    one process running :func:`_spin` alone and ``t2`` that of two running it at once (the slower
    one). 2.0 on two free cores; less when the host's vCPUs share a physical core or are
    descheduled (a shared VM). The ceiling for any 2-thread speedup measured beside it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = []
    for _ in range(rounds):
        q = ctx.Queue()
        p = ctx.Process(target=_spin, args=(n, q))
        p.start()
        one = q.get()
        p.join()
        ps = [ctx.Process(target=_spin, args=(n, q)) for _ in range(2)]
        for p in ps:
            p.start()
        two = max(q.get(), q.get())
        for p in ps:
            p.join()
        out.append(round(2 * one / two, 3))
    return out


def cpu_ticks() -> tuple[int, int] | None:
    """``(steal, total)`` clock ticks of all CPUs from ``/proc/stat`` (Linux; None elsewhere):
    steal = time the hypervisor ran something else while this VM's vCPUs wanted to run."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (vals[7] if len(vals) > 7 else 0), sum(vals)


def _interleaved(cases: list[_Case], repeats: int) -> None:
    for c in cases:  # warm-up: kernel loading, first-call allocations
        c.once(record=False)
    for _ in range(repeats):
        for c in cases:
            c.once()


def run(quick: bool = False) -> dict:
    threads0 = torch.get_num_threads()
    out = {"triangles": 100000, "resolution": "512x512", "dtype": "float32", "device": "cpu", "threads": 2,
           "cpu_count": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    try:
        # 1 view: 1 vs 2 threads, alternating; the host's own 2-core scaling before and after
        ceiling = host_two_core_scaling()
        one = {n: _Case(1, n) for n in (1, 2)}
        t0 = cpu_ticks()
        _interleaved(list(one.values()), 7 if quick else 21)
        t1 = cpu_ticks()
        ceiling += host_two_core_scaling()
        # 8 views vs 1 view at 2 threads, alternating
        eight, one_b = _Case(8, 2), _Case(1, 2)
        _interleaved([eight, one_b], 3 if quick else 7)
        eight1 = _Case(8, 1)
        _interleaved([eight1], 2 if quick else 5)
        s1, s2, s8, s1b, s81 = (one[1].summary(), one[2].summary(), eight.summary(), one_b.summary(),
                                eight1.summary())
        out.update({
            "warp_1view_ms": s2["median_ms"], "warp_1view_min_ms": s2["min_ms"],
            "warp_1view_process_cpu_ms": s2["cpu_ms"], "warp_1view_repeats": s2["repeats"],
            "warp_1view_1thread_ms": s1["median_ms"], "warp_1view_1thread_min_ms": s1["min_ms"],
            "warp_1view_1thread_process_cpu_ms": s1["cpu_ms"],
            "speedup_2threads_vs_1": round(s1["median_ms"] / s2["median_ms"], 3),
            # the same from adjacent repeats (1 thread, then 2): drift of the host's speed over the
            # run cancels in each pair
            "speedup_2threads_vs_1_paired_median": round(statistics.median(
                a / b for a, b in zip(one[1].wall, one[2].wall)), 3),
            "cpu_2threads_vs_1": round(s2["cpu_ms"] / s1["cpu_ms"], 3),
            # two independent processes of pure compute, before and after the rounds above: what
            # the host's two vCPUs delivered (2.0 = two free cores), and the speedup as a share of it
            "host_2core_scaling": ceiling,
            "host_2core_scaling_median": round(statistics.median(ceiling), 3),
            # share of the vCPUs' time the hypervisor gave to others during the 1-/2-thread rounds
            "host_steal_share_during_1v2": (round((t1[0] - t0[0]) / max(t1[1] - t0[1], 1), 4)
                                            if t0 and t1 else None),
            "speedup_2threads_vs_1_of_host_scaling": round(s1["median_ms"] / s2["median_ms"]
                                                           / statistics.median(ceiling), 3),
            "warp_8view_ms": s8["median_ms"], "warp_8view_min_ms": s8["min_ms"],
            "warp_8view_process_cpu_ms": s8["cpu_ms"], "warp_8view_repeats": s8["repeats"],
            "warp_1view_ms_beside_8view": s1b["median_ms"],
            "ratio_8views_vs_1": round(s8["median_ms"] / s1b["median_ms"], 3),
            "warp_8view_1thread_ms": s81["median_ms"], "warp_8view_1thread_process_cpu_ms": s81["cpu_ms"],
            "coverage_1view": round(one[2].coverage, 3), "coverage_8view": round(eight.coverage, 3),
        })
        # the plain-torch twin (slow: timed once)
        torch.set_num_threads(2)
        for views in ((1,) if quick else (1, 8)):
            tw = _Case(views, 2, backend="torch")
            _interleaved([tw], 1)
            out[f"torch_{views}view_ms"] = tw.summary()["median_ms"]
            out[f"speedup_vs_torch_{views}view"] = round(tw.summary()["median_ms"] / out[f"warp_{views}view_ms"], 2)
    finally:
        torch.set_num_threads(threads0)
    out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    out["targets"] = {"speedup_2threads_vs_1": ">= 1.7", "warp_1view_ms": "<= 39 (2 threads)",
                      "ratio_8views_vs_1": "<= 8"}
    out["meets"] = {"speedup_2threads_vs_1": out["speedup_2threads_vs_1"] >= 1.7,
                    "warp_1view_ms": out["warp_1view_ms"] <= 39.0,
                    "ratio_8views_vs_1": out["ratio_8views_vs_1"] <= 8.0}
    if torch.cuda.is_available():
        from diffvc._kernels import cuda_available

        if cuda_available():
            for views in (1, 8):
                c = _Case(views, threads0, device="cuda")
                _interleaved([c], 20)
                out[f"cuda_warp_{views}view_ms"] = c.summary()["median_ms"]
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
