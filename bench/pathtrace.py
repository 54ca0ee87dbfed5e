"""Path tracer benchmark and validation against Mitsuba 3 on the Cornell box.

* forward: 128x128, 64 spp, max depth 8 (samples per second);
* forward + backward (path replay, gradients w.r.t. all albedos and the light) at 16 spp;
* where ``mitsuba`` is importable (optional: ``pip install mitsuba``; its LLVM variants need a
  libLLVM named by ``DRJIT_LIBLLVM_PATH``, else the slow ``scalar_rgb`` variant is used): the same
  scene (same triangles, camera, diffuse two-sided materials, emitter) rendered by Mitsuba's
  ``path`` / ``prb`` integrators in the same run, the speed ratio, and the image agreement for
  direct lighting and 8 bounces (relative error of the mean radiance per channel and the mean
  absolute per-pixel difference, next to Mitsuba-vs-Mitsuba with another seed = the noise floor).

    python -m bench.pathtrace [--quick] [--speed-only]

``--speed-only`` skips the gradient and image checks (the speed figures alone). Mitsuba runs on
``torch.get_num_threads()`` threads (``dr.set_thread_count``), as diffvc does. Times are medians
of ``repeats`` runs in this process, diffvc's and Mitsuba's alternating (one of each in turn);
``spread`` has their min/max and the median process CPU seconds (all threads).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch

from diffvc.render.pathtrace import path_trace
from diffvc.render.pt_scene import cornell_box, cornell_camera


_SPREAD: dict = {}


def _alternating(fns: dict, repeats: int) -> dict:
    """Median wall time (s) of each of ``fns`` (tag -> function) over ``repeats`` rounds that call
    every function once in turn, so the machine's drift over the run hits them alike; min/max
    and the median process CPU seconds go to ``_SPREAD[tag]``."""
    ts = {k: [] for k in fns}
    cs = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts[k].append(time.perf_counter() - t0)
            cs[k].append(time.process_time() - c0)
    for k in fns:
        _SPREAD[k] = {"min_ms": min(ts[k]) * 1e3, "max_ms": max(ts[k]) * 1e3, "cpu_s": statistics.median(cs[k])}
    return {k: statistics.median(v) for k, v in ts.items()}


def _mitsuba():
    import os

    from bench import libllvm_path

    if libllvm_path() and "DRJIT_LIBLLVM_PATH" not in os.environ:   # Mitsuba's LLVM variants need one
        os.environ["DRJIT_LIBLLVM_PATH"] = libllvm_path()
    try:
        import drjit as dr
        import mitsuba as mi
    except Exception:  # noqa: BLE001  (optional dependency)
        return None, None
    dr.set_thread_count(max(1, torch.get_num_threads()))  # the same thread count as diffvc
    for variant in ("llvm_ad_rgb", "scalar_rgb"):
        try:
            mi.set_variant(variant)
            return mi, variant
        except Exception:  # noqa: BLE001  (no libLLVM: fall back)
            continue
    return None, None


def mitsuba_scene(mi, scene, camera, max_depth: int, integrator: str = "path", seed_rr: int = 5):
    """The same scene as a Mitsuba dict: one mesh per material (two-sided diffuse BSDFs, area
    emitters on the front side), a box-filtered pinhole camera. ``max_depth`` counts bounces as
    diffvc does (Mitsuba's max_depth = ours + 1)."""
    v = scene.vertices.detach().double().cpu().numpy()
    f = scene.faces.cpu().numpy()
    fm = scene.face_material.cpu().numpy()
    d = {"type": "scene",
         "integrator": {"type": integrator, "max_depth": max_depth + 1, "rr_depth": seed_rr}}
    for m in range(scene.albedo.shape[0]):
        faces = f[fm == m]
        if len(faces) == 0:
            continue
        used, inv = np.unique(faces.reshape(-1), return_inverse=True)
        alb = scene.albedo[m].detach().double().cpu().tolist()
        em = scene.emission[m].detach().double().cpu().tolist()
        props = mi.Properties()
        props["bsdf"] = mi.load_dict({"type": "twosided", "bsdf": {"type": "diffuse",
                                                                   "reflectance": {"type": "rgb", "value": alb}}})
        if max(em) > 0:
            props["emitter"] = mi.load_dict({"type": "area", "radiance": {"type": "rgb", "value": em}})
        mesh = mi.Mesh(f"mesh{m}", len(used), len(faces), props)
        p = mi.traverse(mesh)
        p["vertex_positions"] = mi.Float(v[used].reshape(-1).astype(np.float32))
        p["faces"] = mi.UInt32(inv.reshape(-1).astype(np.uint32))
        p.update()
        d[f"mesh{m}"] = mesh
    R = camera.R[0].detach().double().cpu()
    eye = camera.centers[0].detach().double().cpu()
    K = camera.intrinsics[0].detach().double().cpu()
    fov = float(2 * np.degrees(np.arctan(0.5 * camera.height / float(K[1]))))
    d["sensor"] = {"type": "perspective", "fov": fov, "fov_axis": "y",
                   "to_world": mi.ScalarTransform4f().look_at(origin=eye.tolist(), target=(eye - R[2]).tolist(),
                                                              up=R[1].tolist()),
                   "film": {"type": "hdrfilm", "width": camera.width, "height": camera.height,
                            "rfilter": {"type": "box"}, "pixel_format": "rgb"},
                   "sampler": {"type": "independent"}}
    return mi.load_dict(d)


def _agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> dict:
    """Relative error of the mean radiance (worst channel) and relative mean absolute per-pixel
    difference over the pixels in ``mask`` (H, W)."""
    a, b = a[mask], b[mask]
    mean_a, mean_b = a.mean(0), b.mean(0)
    return {"mean_rel_err_max_channel": float(np.max(np.abs(mean_a - mean_b) / mean_b)),
            "pixel_mae_rel": float(np.abs(a - b).mean() / b.mean())}


def _translation_gradient_check(quick: bool) -> dict:
    """Gradient of the image sum and of its 8x8 block sums (row-major: top-left, top-right,
    bottom-left, bottom-right) w.r.t. the tall box's x position (issue 12's setup, 16x16), at
    max_depth 1 and 7: primary edges + boundary and interior terms at every path vertex, the mean
    over seeds with its standard error, against central finite differences (float64 scene, step
    0.02, the mean over seeds with its standard error; the same seeds at +-step)."""
    from diffvc.render.pt_scene import CORNELL_TALL_BOX

    H = 16
    seeds, spp, fd_spp, fd_seeds = (2, 64, 2048, 2) if quick else (8, 256, 32768, 8)
    cam = cornell_camera(H, H, dtype=torch.float64)
    c0 = torch.tensor(CORNELL_TALL_BOX[0], dtype=torch.float64)
    res = {}
    for depth in (1, 7):
        def image(c, spp_, seed, **kw):
            s, inf = cornell_box(tall_box_center=c, dtype=torch.float64)
            s = s.replace(dynamic_faces=inf["tall_box_faces"])
            return path_trace(s, cam, spp=spp_, max_depth=depth, seed=seed, rr_depth=100, **kw)

        def blocks(img):
            b = img.sum(-1).reshape(H // 8, 8, H // 8, 8).sum((1, 3)).reshape(-1)
            return torch.cat([b.sum()[None], b])

        gs = []
        for seed in range(seeds):
            c = c0.clone().requires_grad_()
            b = blocks(image(c, 1, seed, edge_samples=20000, edge_spp=8, secondary_spp=spp, interior_spp=spp))
            gs.append(torch.stack([torch.autograd.grad(b[i], c, retain_graph=True)[0][0] for i in range(b.numel())]))
        g = torch.stack(gs)
        step = 0.02
        e = torch.tensor([step, 0.0, 0.0], dtype=torch.float64)
        with torch.no_grad():
            fds = torch.stack([(blocks(image(c0 + e, fd_spp, s)) - blocks(image(c0 - e, fd_spp, s))) / (2 * step)
                               for s in range(1000, 1000 + fd_seeds)])
        fd = fds.mean(0)
        tag = f"tall_box_dx_depth{depth}"
        res[f"{tag}_grad_image_then_blocks"] = [round(x, 4) for x in g.mean(0).tolist()]
        res[f"{tag}_grad_sem"] = [round(x, 4) for x in (g.std(0) / seeds ** 0.5).tolist()]
        res[f"{tag}_fd"] = [round(x, 4) for x in fd.tolist()]
        res[f"{tag}_fd_sem"] = [round(x, 4) for x in (fds.std(0) / fd_seeds ** 0.5).tolist()]
        res[f"{tag}_rel_err_image"] = float((g.mean(0)[0] - fd[0]).abs() / fd[0].abs())
        res[f"{tag}_spp_seeds_fd_spp_seeds"] = f"{spp}x{seeds}, fd {fd_spp}x{fd_seeds}"
    return res


def run(quick: bool = False, speed_only: bool = False) -> dict:
    torch.manual_seed(0)
    size, spp_f, spp_b, depth = (64, 16, 4, 8) if quick else (128, 64, 16, 8)
    repeats = 1 if quick else 5
    scene, _ = cornell_box()
    cam = cornell_camera(size, size)
    n = size * size
    alb = scene.albedo.clone().requires_grad_()
    em = scene.emission.clone().requires_grad_()

    def forward():
        path_trace(scene, cam, spp=spp_f, max_depth=depth)

    def fwd_bwd():
        img = path_trace(scene.replace(albedo=alb, emission=em), cam, spp=spp_b, max_depth=depth)
        img.mean().backward()

    fwd = {"forward": forward}
    fb = {"fwd_bwd": fwd_bwd}
    mi, variant = _mitsuba()
    if mi is not None:
        import drjit as dr

        ms = mitsuba_scene(mi, scene, cam, depth)
        fwd["mitsuba_forward"] = lambda: np.array(mi.render(ms, spp=spp_f, seed=1))
        if "_ad_" in variant:
            ms_prb = mitsuba_scene(mi, scene, cam, depth, integrator="prb")
            params = mi.traverse(ms_prb)
            keys = [k for k in params.keys() if k.endswith("reflectance.value") or k.endswith("radiance.value")]

            def mi_fwd_bwd():
                for k in keys:
                    dr.enable_grad(params[k])
                params.update()
                img = mi.render(ms_prb, params, spp=spp_b, seed=2)
                dr.backward(dr.mean(img, axis=None))
                return [np.array(dr.grad(params[k])) for k in keys]

            fb["mitsuba_fwd_bwd"] = mi_fwd_bwd
    for f in list(fwd.values()) + list(fb.values()):  # warm-up: kernel compile / load, Mitsuba's JIT
        f()
    # diffvc and Mitsuba alternate (repeat r of each, then repeat r + 1): drift of a shared
    # machine's speed over the run hits both sides of a ratio alike
    t = {**_alternating(fwd, repeats), **_alternating(fb, repeats)}
    t_fwd, t_fb = t["forward"], t["fwd_bwd"]
    out = {
        "device": "cpu", "threads": torch.get_num_threads(), "resolution": size, "max_depth": depth,
        "repeats": repeats, "forward_spp": spp_f, "forward_ms": t_fwd * 1e3,
        "forward_samples_per_s": n * spp_f / t_fwd,
        "fwd_bwd_spp": spp_b, "fwd_bwd_ms": t_fb * 1e3, "fwd_bwd_samples_per_s": n * spp_b / t_fb,
    }
    if not speed_only:
        out.update(_translation_gradient_check(quick))
    out["mitsuba_variant"] = variant or "not installed"
    out["spread"] = _SPREAD
    if mi is None:
        return out
    t_mi = t["mitsuba_forward"]
    out["mitsuba_forward_ms"] = t_mi * 1e3
    out["mitsuba_forward_samples_per_s"] = n * spp_f / t_mi
    out["forward_speed_ratio_diffvc_over_mitsuba"] = t_mi / t_fwd
    out["time_ratio_diffvc_over_mitsuba_forward"] = t_fwd / t_mi
    if "mitsuba_fwd_bwd" not in t:  # scalar variants have no autodiff: no prb comparison
        out["mitsuba_fwd_bwd_ms"] = "n/a (no AD variant)"
        return out if speed_only else _validate(out, mi, scene, quick)
    t_mfb = t["mitsuba_fwd_bwd"]
    out["mitsuba_fwd_bwd_ms"] = t_mfb * 1e3
    out["fwd_bwd_speed_ratio_diffvc_over_mitsuba"] = t_mfb / t_fb
    # the issue's form: diffvc time / Mitsuba time (<= 1: diffvc as fast or faster)
    out["time_ratio_diffvc_over_mitsuba_fwd_bwd"] = t_fb / t_mfb
    import os

    out["load_average"] = list(os.getloadavg())
    return out if speed_only else _validate(out, mi, scene, quick)


def _validate(out: dict, mi, scene, quick: bool) -> dict:
    # image agreement at a validation resolution, direct lighting and 8 bounces
    vsize, vspp = (32, 256) if quick else (64, 1024)
    vcam = cornell_camera(vsize, vsize)
    # pixels that see the light directly are excluded (their value is the light's pixel coverage,
    # which we check separately against the exact projected area)
    mask = path_trace(scene, vcam, spp=64, max_depth=0).amax(-1).numpy() == 0
    out["validation_pixels_used"] = int(mask.sum())
    for d_ in (1, 8):
        ours = path_trace(scene, vcam, spp=vspp, max_depth=d_, seed=3).numpy().astype(np.float64)
        msd = mitsuba_scene(mi, scene, vcam, d_)
        ref = np.array(mi.render(msd, spp=vspp, seed=11), dtype=np.float64)
        ref2 = np.array(mi.render(msd, spp=vspp, seed=12), dtype=np.float64)
        ag = _agreement(ours, ref, mask)
        noise = _agreement(ref2, ref, mask)
        tag = "direct" if d_ == 1 else "depth8"
        out[f"vs_mitsuba_{tag}_mean_rel_err"] = ag["mean_rel_err_max_channel"]
        out[f"vs_mitsuba_{tag}_pixel_mae_rel"] = ag["pixel_mae_rel"]
        out[f"mitsuba_noise_floor_{tag}_mean_rel_err"] = noise["mean_rel_err_max_channel"]
        out[f"mitsuba_noise_floor_{tag}_pixel_mae_rel"] = noise["pixel_mae_rel"]
        out[f"validation_{tag}_resolution_spp"] = f"{vsize}x{vsize}x{vspp}"
    # directly visible light: mean image radiance vs the exact value (projected light area x radiance)
    light = scene.vertices[scene.faces[scene.face_material == 3]].reshape(-1, 3)  # the two light triangles
    corners = torch.unique(light, dim=0)
    p = vcam.project(corners)[0, :, :2].double()
    c = p.mean(0)
    order = torch.argsort(torch.atan2(p[:, 1] - c[1], p[:, 0] - c[0]))
    x, y = p[order, 0], p[order, 1]
    area = 0.5 * abs(float((x * torch.roll(y, -1) - torch.roll(x, -1) * y).sum()))
    exact = area * scene.emission[3].double() / (vsize * vsize)
    ours0 = path_trace(scene, vcam, spp=vspp, max_depth=0, seed=3).double().mean((0, 1))
    ref0 = torch.tensor(np.array(mi.render(mitsuba_scene(mi, scene, vcam, 0), spp=vspp, seed=11),
                                 dtype=np.float64)).mean((0, 1))
    out["light_coverage_rel_err_diffvc"] = float(((ours0 - exact) / exact).abs().max())
    out["light_coverage_rel_err_mitsuba"] = float(((ref0 - exact) / exact).abs().max())
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, speed_only="--speed-only" in sys.argv), indent=2))
