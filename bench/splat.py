"""Gaussian splatting forward + backward: the Warp kernel vs the plain-torch twin, and gsplat's
pure-PyTorch reference for the projection and SH (optional ``validation`` extra).

Scene: 100,000 Gaussians with means uniform in [-1, 1]^3, scales log-uniform in [4, 30] mm,
random rotations, opacities uniform in [0.05, 0.95], SH degree 3 (random coefficients); one
perspective camera 4 m away, 256 x 256, float32 on CPU. One iteration: project, evaluate SH,
bin, rasterize (colour, alpha, depth), loss = weighted sum of the three, backward to every
parameter. Each configuration runs in its own process so its peak resident memory (ru_maxrss,
minus the resident size before the first iteration) is its own. Median wall time over repeats
(and the process CPU time, since the machine is shared); the twin is timed in the same run.

gsplat (``pip install gsplat``; its rasterizer needs its CUDA extension, but
``gsplat.cuda._torch_impl`` is plain torch): our projection (means2d, conics, depths) and SH
colours are compared with ``_fully_fused_projection`` and ``_spherical_harmonics`` in float64,
values and gradients.

    python -m bench.splat [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

N_GAUSS = 100_000
SIZE = 256


def make_scene(n: int = N_GAUSS, size: int = SIZE, dtype=torch.float32, seed: int = 0):
    from diffvc.render import Cameras

    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1
    scales = torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(torch.log(torch.tensor(0.004)).item(),
                                                                       torch.log(torch.tensor(0.03)).item(),
                                                                       generator=g))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sh = torch.randn(n, 16, 3, generator=g, dtype=torch.float64) * 0.2
    cams = Cameras.look_at([[0.4, 0.8, 4.0]], width=size, height=size, fov_y=40.0, dtype=dtype)
    params = [x.to(dtype) for x in (means, scales, quats, opac, sh)]
    return params, cams


def _iteration(params, cams, backend):
    from diffvc.render.splat import Gaussians, render_gaussians

    ps = [p.clone().requires_grad_() for p in params]
    img = render_gaussians(Gaussians(*ps), cams, background=(0.1, 0.1, 0.1), backend=backend)
    loss = img.color.mean() + img.alpha.mean() + 0.1 * img.depth.mean()
    loss.backward()
    return img, ps


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(backend: str, threads: int, repeats: int) -> dict:
    import resource

    torch.set_num_threads(threads)
    params, cams = make_scene()
    if backend == "warp":
        import diffvc._kernels.splat  # noqa: F401  (kernel module loaded before measuring)
    base = _rss_mib()
    times, cpu = [], []
    img = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        img, _ = _iteration(params, cams, backend)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from diffvc.render.splat import bin_gaussians

    p = img.projected
    pairs = bin_gaussians(p.means2d, p.radii, p.depths, SIZE, SIZE).num_pairs
    return {"median_ms": statistics.median(times), "min_ms": min(times), "cpu_ms": statistics.median(cpu),
            "repeats": repeats, "peak_rss_mib": round(peak, 1), "peak_above_setup_mib": round(peak - base, 1),
            "visible": int((p.radii > 0).sum()), "tile_pairs": pairs,
            "mean_alpha": float(img.alpha.detach().mean())}


def _run_child(backend: str, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "bench.splat", "--child", backend, str(threads), str(repeats)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def validate_gsplat() -> dict:
    """Projection and SH against gsplat's pure-PyTorch reference, float64 (values and gradients)."""
    try:
        import gsplat
        from gsplat.cuda import _torch_impl as ref
    except Exception as e:  # optional validation extra
        return {"gsplat": f"not importable ({type(e).__name__}: {e})"}
    from diffvc.geometry.transforms import quaternion_to_matrix
    from diffvc.render.splat import eval_sh, project_gaussians

    out = {"gsplat_version": gsplat.__version__}
    (means, scales, quats, opac, sh), cams = make_scene(n=2000, dtype=torch.float64, seed=1)
    ps = [means.requires_grad_(), scales.requires_grad_(), quats.requires_grad_()]
    ours = project_gaussians(*ps, cams, eps2d=0.3, near=0.01)
    # gsplat's camera is OpenCV (y down, z forward): flip diffvc's y and z camera axes
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    view = torch.eye(4, dtype=torch.float64).repeat(1, 1, 1)
    view[:, :3, :3] = flip @ cams.R
    view[:, :3, 3] = (flip @ cams.t[0])
    fx, fy, cx, cy = cams.intrinsics[0].tolist()
    K = torch.tensor([[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]], dtype=torch.float64)
    R = quaternion_to_matrix(quats)
    M = R * scales[:, None, :]
    covars = M @ M.transpose(-1, -2)
    radii, m2, d, con, _ = ref._fully_fused_projection(means, covars, view, K, SIZE, SIZE, eps2d=0.3,
                                                        near_plane=0.01)
    vis = (ours.radii[0] > 0) & (radii[0] > 0).all(-1)
    out["gsplat_projection_compared"] = int(vis.sum())
    out["gsplat_max_abs_diff_means2d_px"] = float((ours.means2d[0][vis] - m2[0][vis]).detach().abs().max())
    out["gsplat_max_rel_diff_conics"] = float(((ours.conics[0][vis] - con[0][vis]).abs().max(-1).values
                                               / con[0][vis].abs().max(-1).values).max().detach())
    out["gsplat_max_abs_diff_depths"] = float((ours.depths[0][vis] - d[0][vis]).detach().abs().max())
    w = torch.randn(2000, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * vis[:, None]
    f_ours = (torch.cat([ours.means2d[0], ours.conics[0] * 100], -1) * w).sum()
    f_ref = (torch.cat([m2[0], con[0] * 100], -1) * w).sum()
    g_ours = torch.autograd.grad(f_ours, ps)
    g_ref = torch.autograd.grad(f_ref, ps)
    for name, a, b in zip(("means", "scales", "quats"), g_ours, g_ref):
        out[f"gsplat_grad_rel_diff_{name}"] = float((a - b).norm() / b.norm())
    # SH, degree 3, directions camera centre -> mean
    c = sh.clone().requires_grad_()
    dirs = means.detach() - cams.centers[0]
    ours_sh = eval_sh(c, dirs)
    ref_sh = (ref._spherical_harmonics(3, dirs, c) + 0.5).clamp_min(0)
    out["gsplat_sh_max_abs_diff"] = float((ours_sh - ref_sh).detach().abs().max())
    wsh = torch.randn(ours_sh.shape, dtype=torch.float64)
    ga = torch.autograd.grad((ours_sh * wsh).sum(), c)[0]
    gb = torch.autograd.grad((ref_sh * wsh).sum(), c)[0]
    out["gsplat_sh_grad_rel_diff"] = float((ga - gb).norm() / gb.norm())
    out["gsplat_rasterizer"] = "not compared: gsplat's rasterizer (and its torch reference) needs its CUDA extension"
    return out


def run(quick: bool = False) -> dict:
    out = {"gaussians": N_GAUSS, "resolution": f"{SIZE}x{SIZE}", "sh_degree": 3, "dtype": "float32",
           "device": "cpu", "threads": torch.get_num_threads(),
           "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    reps = 3 if quick else 7
    threads = torch.get_num_threads()
    w = _run_child("warp", threads, reps)
    w1 = _run_child("warp", 1, reps)
    t = _run_child("torch", threads, 1 if quick else 2)
    for tag, r in (("warp", w), ("warp_1thread", w1), ("torch_twin", t)):
        out[f"{tag}_fwd_bwd_ms"] = round(r["median_ms"], 1)
        out[f"{tag}_fwd_bwd_min_ms"] = round(r["min_ms"], 1)
        out[f"{tag}_process_cpu_ms"] = round(r["cpu_ms"], 1)
        out[f"{tag}_peak_rss_mib"] = r["peak_rss_mib"]
        out[f"{tag}_peak_above_setup_mib"] = r["peak_above_setup_mib"]
        out[f"{tag}_repeats"] = r["repeats"]
    out["visible_gaussians"] = w["visible"]
    out["tile_pairs"] = w["tile_pairs"]
    out["mean_alpha"] = round(w["mean_alpha"], 3)
    out["speedup_vs_twin"] = round(t["median_ms"] / w["median_ms"], 2)
    out["speedup_vs_twin_1thread"] = round(t["median_ms"] / w1["median_ms"], 2)
    # process CPU time: the work itself, robust to other load on a shared machine
    out["speedup_vs_twin_process_cpu"] = round(t["cpu_ms"] / w["cpu_ms"], 2)
    out["speedup_vs_twin_process_cpu_1thread"] = round(t["cpu_ms"] / w1["cpu_ms"], 2)
    out["target_speedup"] = 10.0
    out["meets_target"] = bool(out["speedup_vs_twin"] >= 10.0)
    out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    out.update(validate_gsplat())
    return out


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        print(json.dumps(child(sys.argv[i + 1], int(sys.argv[i + 2]), int(sys.argv[i + 3]))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
