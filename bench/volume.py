"""Volume rendering of dense grids, forward + backward: fused Warp march vs the plain-torch twin.

A 128^3 density grid and a 128^3 x 3 RGB grid (random, float32) in the box [-1, 1]^3, one
perspective camera, a 128 x 128 image, 128 stratified samples per ray (2.1 M samples), loss =
weighted sum of the image, backward to both grids. Modes: ``emission`` (emission-absorption,
RGB) and ``absorption`` (transmittance only, density grid only); and, for empty-space skipping,
``sparse`` (emission with the density zeroed outside a ball of radius 0.5) without and with a
32^3 :class:`~diffvc.render.OccupancyGrid` (``sparse_occupancy``; grid update included).

* ``warp``: :func:`diffvc.render.render_volume` (``backend="warp"``): the fused kernel; its
  backward re-marches every ray and stores no per-sample values.
* ``torch``: the same maths in plain torch (``backend="torch"``: every sample materialised,
  ``grid_sample`` lookups, cumsum compositing, torch autograd) - how a torch user writes it.

Each variant runs in its own subprocess (so peak memory is its own, with glibc's mmap threshold
fixed so freed large blocks go back to the OS): a warm-up on an 8^3 grid (kernel loading), then
the peak-RSS counter is reset (``/proc/self/clear_refs``) and ``peak_mib`` is the rise of the
resident set during the first full-size iteration above the level before it (inputs and the
leaf grids already allocated; it includes the gradient buffers). The timed iteration is the
render, the loss and the backward pass (plus the occupancy update in ``sparse_occupancy``); the
leaf grids are made before it, the same way for both variants.
Times are medians over repeats (wall clock, with torch's default threads; also process CPU time);
the machine is shared, so the 1-minute load average is recorded. With CUDA present, the Warp
variant also runs on the GPU.

    python -m bench.volume [--quick]     or     diffvc bench volume
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

RES, IMG, SAMPLES = 128, 128, 128


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _inputs(device="cpu"):
    from diffvc.render import Cameras

    g = torch.Generator().manual_seed(0)
    dens = (torch.rand(RES, RES, RES, generator=g) * 2).to(device)
    feat = torch.rand(RES, RES, RES, 3, generator=g).to(device)
    cam = Cameras.look_at([[0.6, 0.9, 2.8]], width=IMG, height=IMG, fov_y=45.0, device=device)
    w = torch.rand(1, IMG, IMG, 3, generator=g).to(device)
    return dens, feat, cam, w


def _sparse(dens):
    """The density kept inside a ball of radius 0.5 (6.5% of the box), zero elsewhere."""
    n = dens.shape[0]
    c = (torch.arange(n, dtype=dens.dtype, device=dens.device) + 0.5) / n * 2 - 1
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    return torch.where(x * x + y * y + z * z < 0.25, dens, torch.zeros_like(dens))


def _leaves(dens, feat, mode):
    """The grids being differentiated (leaf tensors made before timing: their allocation is setup,
    not rendering, for both variants)."""
    if mode.startswith("sparse"):
        dens = _sparse(dens)
    dd = dens.clone().requires_grad_()
    ff = feat.clone().requires_grad_() if mode != "absorption" else None
    return dd, ff


def _iteration(dd, ff, cam, w, backend, mode):
    """One timed iteration: (occupancy update,) render, loss, backward to the grids."""
    from diffvc.render import OccupancyGrid, render_volume

    occ = None
    if mode == "sparse_occupancy":
        occ = OccupancyGrid(32, step_size=2 * 3 ** 0.5 / SAMPLES, dtype=dd.dtype, device=dd.device).update(dd.detach())
    img = render_volume(cam, dd, ff, n_samples=SAMPLES, backend=backend, occupancy=occ)
    (img * w[..., : img.shape[-1]]).sum().backward()
    return img


def worker(backend: str, mode: str, repeats: int, device: str = "cpu") -> dict:
    dens, feat, cam, w = _inputs(device)
    # warm-up (kernel loading) on a small problem, so the first full-size iteration's memory is
    # not already held by the allocator (MALLOC_MMAP_THRESHOLD_ makes large blocks return to the OS)
    small = _leaves(dens[:8, :8, :8].contiguous(), feat[:8, :8, :8].contiguous(), mode)
    _iteration(*small, cam[0], w, backend, mode)
    del small
    times, cpu = [], []
    peak = None
    for r in range(repeats):
        dd, ff = _leaves(dens, feat, mode)
        if device == "cpu" and r == 0:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _rss_kib("VmRSS")
        if device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        t0, c0 = time.perf_counter(), time.process_time()
        _iteration(dd, ff, cam, w, backend, mode)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if r == 0:
            if device == "cpu":
                peak = (_rss_kib("VmHWM") - base) / 1024
            else:
                peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        del dd, ff
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "process_cpu_ms": 1e3 * statistics.median(cpu), "peak_mib": peak, "repeats": repeats}


def _spawn(backend, mode, repeats, device="cpu") -> dict:
    cmd = [sys.executable, "-m", "bench.volume", "--worker", backend, mode, str(repeats), device]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    reps = 2 if quick else 5
    out = {"grid": f"{RES}^3", "image": f"{IMG}x{IMG}", "samples_per_ray": SAMPLES, "dtype": "float32",
           "device": "cpu", "threads": torch.get_num_threads(),
           "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    for mode in ("emission", "absorption"):
        w = _spawn("warp", mode, reps)
        t = _spawn("torch", mode, reps)
        for name, r in (("warp", w), ("torch", t)):
            out[f"{mode}_{name}_ms"] = round(r["median_ms"], 1)
            out[f"{mode}_{name}_min_ms"] = round(r["min_ms"], 1)
            out[f"{mode}_{name}_process_cpu_ms"] = round(r["process_cpu_ms"], 1)
            out[f"{mode}_{name}_peak_mib"] = round(r["peak_mib"], 1)
        out[f"{mode}_speedup"] = round(t["median_ms"] / w["median_ms"], 2)
        out[f"{mode}_memory_ratio"] = round(t["peak_mib"] / max(w["peak_mib"], 1e-3), 2)
    # empty-space skipping: the emission setup with the density kept in a ball (6.5% of the box)
    for mode in ("sparse", "sparse_occupancy"):
        r = _spawn("warp", mode, reps)
        out[f"{mode}_warp_ms"] = round(r["median_ms"], 1)
        out[f"{mode}_warp_process_cpu_ms"] = round(r["process_cpu_ms"], 1)
    out["occupancy_speedup"] = round(out["sparse_warp_ms"] / out["sparse_occupancy_warp_ms"], 2)
    out["occupancy_speedup_process_cpu"] = round(out["sparse_warp_process_cpu_ms"] /
                                                  out["sparse_occupancy_warp_process_cpu_ms"], 2)
    out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    out["target_speedup"] = 5.0
    out["meets_target"] = bool(min(out["emission_speedup"], out["absorption_speedup"]) >= 5.0)
    if torch.cuda.is_available():
        from diffvc._kernels import cuda_available

        if cuda_available():
            for mode in ("emission", "absorption"):
                for backend in ("warp", "torch"):
                    r = _spawn(backend, mode, 10, "cuda")
                    out[f"cuda_{mode}_{backend}_ms"] = round(r["median_ms"], 2)
                    out[f"cuda_{mode}_{backend}_peak_mib"] = round(r["peak_mib"], 1)
                out[f"cuda_{mode}_speedup"] = round(out[f"cuda_{mode}_torch_ms"] / out[f"cuda_{mode}_warp_ms"], 2)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
