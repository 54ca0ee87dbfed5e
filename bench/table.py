"""The benchmark table: one row per headline figure of every benchmark in ``bench/``, read from the
JSON files that :mod:`bench.run_all` writes to ``bench/results/NAME.json``.

Each row: the benchmark, what is measured, diffvc's median (with its spread where the JSON has
one), the anchor measured in the same run (Mitsuba 3, raw Warp, plain torch, DiffTaichi, MuJoCo
...) or "not installed", the ratio ``diffvc / anchor`` of the two numbers shown, which way that
ratio is better, and the target where issue 18 (or the benchmark itself) states one.

The benchmarks' JSON keys differ, so each has a small extractor below (``_EXTRACTORS``). They are
tolerant: a key that is absent (an older JSON, a renamed figure, a skipped variant) shows "n/a"
in its cell instead of failing, and a result without an extractor gets one row saying so.

    python -m bench.table            # writes bench/results/TABLE.md and rewrites README.md's block
    python -m bench.table --print    # only prints the table

The README block sits between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
LOWER, HIGHER = "lower is better", "higher is better"
NOT_INSTALLED = "not installed"
META = "_run_all"  # the key bench.run_all adds to each JSON (quick flag, load average, date)


def get(d, path: str):
    """``d["a"]["b"]...`` for ``path = "a.b..."``; ``None`` where any step is missing."""
    for k in path.split("."):
        if isinstance(d, dict) and k in d:
            d = d[k]
        else:
            return None
    return d


def t(d, path: str) -> str:
    """``get(d, path)`` as text for a description, "?" where missing."""
    v = get(d, path)
    return "?" if v is None else str(v)


def num(x) -> float | None:
    """``x`` as a finite float, else ``None`` (strings such as "n/a (...)", lists, None)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def fmt(x, unit: str = "") -> str:
    """Three significant figures (no exponent for ordinary sizes) and the unit; "n/a" if ``x`` is
    not a number."""
    v = num(x)
    if v is None:
        return "n/a"
    a = abs(v)
    if a == 0:
        s = "0"
    elif a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 0.01:
        s = f"{v:.3g}"
    else:
        s = f"{v:.2e}"
    return f"{s} {unit}".strip()


@dataclass
class Row:
    """One headline figure. ``anchor_value is None`` shows ``anchor_status`` ("not installed" when
    the extractor knows the anchor is absent, else "n/a")."""

    bench: str
    measured: str
    ours: float | None
    unit: str
    anchor: str
    anchor_value: float | None
    better: str = LOWER
    spread: str | None = None
    target: str = ""
    anchor_status: str = "n/a"

    @property
    def ratio(self) -> float | None:
        o, a = num(self.ours), num(self.anchor_value)
        if o is None or a is None or a == 0:
            return None
        return o / a

    def cells(self) -> list[str]:
        ours = fmt(self.ours, self.unit)
        if self.spread and ours != "n/a":
            ours += f" ({self.spread})"
        if self.anchor_value is None and not self.anchor:
            anchor = "—"
        elif num(self.anchor_value) is None:
            anchor = f"{self.anchor}: {self.anchor_status}" if self.anchor else self.anchor_status
        else:
            anchor = f"{self.anchor}: {fmt(self.anchor_value, self.unit)}"
        r = self.ratio
        ratio = "n/a" if r is None else f"{r:.2f}×" if 0.1 <= abs(r) < 100 else fmt(r) + "×"
        return [self.bench, self.measured, ours, anchor, ratio, self.better, self.target or "—"]


def spread(d, lo: str | None = None, hi: str | None = None, pair: str | None = None, unit: str = "") -> str | None:
    """The spread of a median as text: ``pair`` names a ``[min, max]`` list, else ``lo``/``hi``
    name the minimum and maximum (either may be absent)."""
    if pair is not None:
        p = get(d, pair)
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(num(x) is not None for x in p):
            return f"{fmt(p[0])}–{fmt(p[1], unit)}"
    a = num(get(d, lo)) if lo else None
    b = num(get(d, hi)) if hi else None
    if a is not None and b is not None:
        return f"{fmt(a)}–{fmt(b, unit)}"
    if a is not None:
        return f"min {fmt(a, unit)}"
    if b is not None:
        return f"max {fmt(b, unit)}"
    return None


def _scale(x, k: float):
    x = num(x)
    return None if x is None else x * k


def _div(a, b):
    a, b = num(a), num(b)
    return None if a is None or b is None or b == 0 else a / b


def _first_key(d: dict, prefix: str) -> str | None:
    ks = sorted(k for k in d if isinstance(k, str) and k.startswith(prefix))
    return ks[0] if ks else None


# ---------------------------------------------------------------- one extractor per benchmark


def _pathtrace(d):
    variant = get(d, "mitsuba_variant")
    status = NOT_INSTALLED if variant in (None, "not installed") else "n/a"
    mi = f"Mitsuba 3 `path` ({variant})" if status != NOT_INSTALLED else "Mitsuba 3 `path`"
    mi_prb = f"Mitsuba 3 `prb` ({variant})" if status != NOT_INSTALLED else "Mitsuba 3 `prb`"
    res, spp, depth, sppb = (t(d, k) for k in ("resolution", "forward_spp", "max_depth", "fwd_bwd_spp"))
    return [
        Row("pathtrace", f"Cornell box {res}², {spp} spp, depth {depth}, forward", get(d, "forward_ms"), "ms",
            mi, num(get(d, "mitsuba_forward_ms")), target="≤ 1.0×", anchor_status=status),
        Row("pathtrace", f"Cornell box {res}², {sppb} spp, depth {depth}, forward + backward (albedos, light)",
            get(d, "fwd_bwd_ms"), "ms", mi_prb, num(get(d, "mitsuba_fwd_bwd_ms")), target="≤ 1.0×",
            anchor_status=status),
    ]


def _pathtrace_memory(d):
    return [Row("pathtrace_memory", f"backward peak RSS increase, depth 8 vs depth 1 ({t(d, 'resolution')}², "
                f"{t(d, 'spp')} spp)", get(d, "depth8_backward_peak_rss_increase_mb"), "MB",
                "diffvc at depth 1", get(d, "depth1_backward_peak_rss_increase_mb"))]


def _mass_spring(d):
    what = f"{t(d, 'particles')} particles, {t(d, 'springs')} springs, {t(d, 'steps')} steps, fwd + bwd"
    ours, sp = get(d, "results.diffvc_fused.total_ms"), spread(d, lo="results.diffvc_fused.total_min_ms", unit="ms")
    torches = [x for x in (num(get(d, "results.torch.total_ms")), num(get(d, "results.torch_1thread.total_ms")))
               if x is not None]
    return [
        Row("mass_spring", what + " (fused)", ours, "ms", "raw Warp loop (`wp.Tape`)",
            get(d, "results.raw_warp.total_ms"), spread=sp, target="≤ 0.7×"),
        Row("mass_spring", what + " (fused)", ours, "ms", "plain torch (faster thread count)",
            min(torches) if torches else None, spread=sp),
    ] + ([Row("mass_spring", what + " (fused, full tape: every state kept, as `wp.Tape` keeps)",
              get(d, "results.diffvc_full_tape.total_ms"), "ms", "raw Warp loop (`wp.Tape`)",
              get(d, "results.raw_warp.total_ms"),
              spread=spread(d, lo="results.diffvc_full_tape.total_min_ms", unit="ms"))]
         if get(d, "results.diffvc_full_tape.total_ms") is not None else [])


def _difftaichi_mass_spring(d):
    skipped = "skipped" in d and get(d, "difftaichi_ms_per_iteration") is None
    return [Row("difftaichi_mass_spring", f"DiffTaichi robot 0, {t(d, 'steps')} steps, fwd + bwd + update, "
                "per iteration", get(d, "diffvc_ms_per_iteration"), "ms", "DiffTaichi (pip `taichi`)",
                get(d, "difftaichi_ms_per_iteration"), spread=spread(d, lo="diffvc_min_ms", unit="ms"),
                target="diffvc ≤ 300 ms", anchor_status=NOT_INSTALLED if skipped else "n/a")]


def _mpm(d):
    side = get(d, "difftaichi_measured_side_by_side")
    steps = get(d, "setting.steps")
    ours = get(d, "results.diffvc_checkpointed.seconds_per_iteration")
    rows = [Row("mpm", f"diffmpm robot, {steps} steps, fwd + bwd + update, per iteration", ours, "s",
                "DiffTaichi `diffmpm.py`", get(d, "difftaichi.seconds_per_iteration") if side else None,
                anchor_status=NOT_INSTALLED if side is False else "n/a")]
    per_step = _div(_scale(ours, 1e3), steps)
    rows.append(Row("mpm", "per step, fwd + bwd", per_step, "ms", "plain-torch twin",
                    get(d, "results.torch_twin.ms_per_step")))
    return rows


def _smoke(d):
    ours = get(d, "results.diffvc_jacobi.s_per_iteration_median")
    sp = spread(d, lo="results.diffvc_jacobi.s_per_iteration_min", unit="s")
    grid, steps = get(d, "grid"), get(d, "steps")
    n = grid[0] if isinstance(grid, list) and grid else "?"
    what = f"smoke control {n}², {steps} steps, fwd + bwd + update (Jacobi)"
    rows = []
    for key, label in (("difftaichi", "DiffTaichi `smoke_taichi.py`"), ("phiflow_torch", "PhiFlow (torch)")):
        a = get(d, f"results.{key}.s_per_iteration_median")
        rows.append(Row("smoke", what + ", per iteration", ours, "s", label, a, spread=sp,
                        anchor_status=NOT_INSTALLED if get(d, f"results.{key}") is None
                        or get(d, f"results.{key}.error") is not None else "n/a"))
    return rows


def _topopt(d):
    rows = []
    for size in ("120x40", "240x80"):
        k = _first_key(d, f"mbb{size}_ft1_first")
        row = d.get(k, {}) if k else {}
        rows.append(Row("topopt", f"MBB {size}, seconds per iteration ({k.rsplit('_', 1)[-1] if k else 'n/a'})",
                        get(row, "diffvc.median_s_per_iter"), "s", "top88 (numpy/SciPy)",
                        get(row, "top88_numpy.median_s_per_iter")))
    rows.append(Row("topopt", "MBB 60x20 (ft 1), to convergence", get(d, "mbb60x20_ft1.diffvc.seconds"), "s",
                    "top88 (numpy/SciPy)", get(d, "mbb60x20_ft1.top88_numpy.seconds")))
    return rows


def _raster(d):
    tri, res = get(d, "triangles"), get(d, "resolution")
    what = f"{fmt(tri)} triangles, {res}, fwd + bwd"
    w1 = get(d, "warp_1view_ms")
    sp1 = spread(d, lo="warp_1view_min_ms", unit="ms")
    return [
        Row("raster", what + f", 1 view ({t(d, 'threads')} threads)", w1, "ms", "plain-torch twin",
            get(d, "torch_1view_ms"), spread=sp1, target="≤ 39 ms (2× faster than issue 18's 1-thread 78 ms)"),
        Row("raster", what + f", {t(d, 'threads')} threads vs 1", w1, "ms", "diffvc, 1 thread",
            get(d, "warp_1view_1thread_ms"), spread=sp1, target="≤ 0.59× (≥ 1.7× faster)"),
        Row("raster", what + ", 1 thread", get(d, "warp_1view_1thread_ms"), "ms", "", None,
            spread=spread(d, lo="warp_1view_1thread_min_ms", unit="ms")),
        Row("raster", what + f", speedup of {t(d, 'threads')} threads over 1 as a share of the host's own 2-core "
            "scaling (two pure-compute processes vs one, measured before and after; 2.0 on two free cores: "
            f"median {fmt(get(d, 'host_2core_scaling_median'))}"
            + (f"; hypervisor steal during the rounds: {100 * get(d, 'host_steal_share_during_1v2'):.1f}% of CPU time"
               if get(d, "host_steal_share_during_1v2") is not None else "") + ")",
            get(d, "speedup_2threads_vs_1_of_host_scaling"),
            "", "", None, better=HIGHER),
        Row("raster", what + ", 8 views vs 1", get(d, "warp_8view_ms"), "ms",
            "diffvc, 1 view (its repeats alternating with the 8-view ones)",
            get(d, "warp_1view_ms_beside_8view") if get(d, "warp_1view_ms_beside_8view") is not None else w1,
            spread=spread(d, lo="warp_8view_min_ms", unit="ms"), target="≤ 8×"),
    ]


def _fem(d):
    return [
        Row("fem", "implicit FEM step, 384 tets, fwd + bwd", get(d, "fem_implicit_ms_per_step"), "ms", "", None,
            target="≤ 50 ms"),
        Row("fem", "cantilever static solve, 10,800 tets", get(d, "cantilever_solve_ms"), "ms", "", None,
            target="≤ 2,000 ms"),
        Row("fem", f"FEM drop, {t(d, 'fem_drop_steps')} steps, fwd + bwd", get(d, "fem_drop_warp_total_ms"), "ms",
            "plain-torch twin", get(d, "fem_drop_torch_total_ms"),
            spread=spread(d, lo="fem_drop_warp_total_min_ms", unit="ms")),
        Row("fem", f"rigid slide, {t(d, 'rigid_steps')} steps, fwd + bwd", get(d, "rigid_slide_warp_total_ms"),
            "ms", "plain-torch twin", get(d, "rigid_slide_torch_total_ms"),
            spread=spread(d, lo="rigid_slide_warp_total_min_ms", unit="ms")),
    ]


def _launch(d):
    before = "per-call launches (before), same run"
    rows = [Row("launch", f"rigid slide, {t(d, 'rigid_steps')} steps, fwd + bwd (fused)",
                get(d, "rigid_slide_fused_ms"), "ms", before, get(d, "rigid_slide_steps_legacy_ms"),
                spread=spread(d, pair="rigid_slide_fused_ms_spread", unit="ms"), target="≤ 0.2× (≥ 5× faster)")]
    for part in ("rigid", "soft"):
        rows.append(Row("launch", f"sysid --quick: one {part} loss evaluation", get(d, f"sysid_{part}_eval_fused_s"),
                        "s", before, get(d, f"sysid_{part}_eval_legacy_s"),
                        spread=spread(d, pair=f"sysid_{part}_eval_fused_s_spread", unit="s")))
    rows.append(Row("launch", "one particle step, forward", get(d, "particle_step_forward_us"), "µs", before,
                    get(d, "particle_step_forward_legacy_us"),
                    spread=spread(d, pair="particle_step_forward_us_spread", unit="µs")))
    rows.append(Row("launch", "kernel_op cost per tensor argument", get(d, "kernel_op_per_arg_us"), "µs", before,
                    get(d, "kernel_op_per_arg_legacy_us")))
    if get(d, "split_launch_2threads_us") is not None:
        rows.append(Row("launch", "split launch of an empty kernel, 2 threads (native hand-off)",
                        get(d, "split_launch_2threads_us"), "µs", "the same through a thread pool (futures), same run",
                        get(d, "split_launch_2threads_pooled_us"),
                        spread=spread(d, pair="split_launch_2threads_us_spread", unit="µs")))
        rows.append(Row("launch", "split launch of an empty kernel, 2 threads vs 1 thread (one direct launch)",
                        get(d, "split_launch_2threads_us"), "µs", "1 thread, same run",
                        get(d, "split_launch_1thread_us")))
    return rows


def _articulated(d):
    have = get(d, "mujoco_available")
    mj = [x for x in (num(get(d, "mujoco_fwd_1thread_env_steps_per_s")),
                      num(get(d, "mujoco_fwd_2threads_env_steps_per_s"))) if x is not None]
    best = max(mj) if mj else None
    what = f"cart-poles {t(d, 'environments')} envs x {t(d, 'steps')} steps"
    status = NOT_INSTALLED if have is False else "n/a"
    return [
        Row("articulated", what + ", fwd + bwd (1 thread)", get(d, "diffvc_fwd_bwd_1thread_env_steps_per_s"),
            "env-steps/s", "MuJoCo rollout, forward only", best, better=HIGHER, anchor_status=status),
        Row("articulated", what + ", forward (1 thread)", get(d, "diffvc_fwd_1thread_env_steps_per_s"),
            "env-steps/s", "MuJoCo rollout, forward", best, better=HIGHER, anchor_status=status),
    ]


def _cloth(d):
    what = f"cloth {t(d, 'vertices')} vertices, {t(d, 'steps')} steps, fwd + bwd"
    ours = get(d, "results.diffvc_1thread.total_s")
    return [
        Row("cloth", what, ours, "s", "torch autograd of the energy", get(d, "results.autograd_energy.total_s")),
        Row("cloth", what, ours, "s", "plain-torch twin", get(d, "results.torch_twin.total_s")),
    ]


def _geometry(d):
    ch = get(d, "sample_chamfer_fwd_bwd") or {}
    brute = get(ch, "torch_brute_ms")
    brute_label = "torch `cdist` brute force"
    if brute is None and get(ch, "torch_brute_extrapolated_ms_both_directions") is not None:
        brute, brute_label = get(ch, "torch_brute_extrapolated_ms_both_directions"), brute_label + " (extrapolated)"
    nf_q = get(d, "nearest_face_ms.queries")
    return [
        Row("geometry", f"normals at {fmt(get(d, 'faces'))} faces, fwd + bwd",
            get(d, "normals_fwd_bwd_ms.diffvc_mesh_normals"), "ms", "plain torch",
            get(d, "normals_fwd_bwd_ms.torch_baseline")),
        Row("geometry", "cotangent Laplacian build", get(d, "cot_laplacian_build_ms.diffvc"), "ms",
            "plain torch (law of cosines)", get(d, "cot_laplacian_build_ms.torch_baseline")),
        Row("geometry", f"sample + Chamfer, {fmt(get(ch, 'points'))} points, fwd + bwd", get(ch, "diffvc_ms"), "ms",
            brute_label, brute),
        Row("geometry", f"winding number, {fmt(get(d, 'winding_number_ms.queries'))} points", get(d, "winding_number_ms.warp"),
            "ms", "torch twin (scaled from 2k queries)", get(d, "winding_number_ms.torch_twin_scaled_from_2k_queries")),
        Row("geometry", "nearest face, per 1k queries", _div(_scale(get(d, "nearest_face_ms.warp_bvh_incl_build"), 1e3), nf_q),
            "ms", "torch brute force", get(d, "nearest_face_ms.torch_brute_per_1k_queries")),
    ]


def _splat(d):
    speedup = num(get(d, "target_speedup"))
    return [Row("splat", f"{fmt(get(d, 'gaussians'))} Gaussians, {t(d, 'resolution')}, fwd + bwd",
                get(d, "warp_fwd_bwd_ms"), "ms", "plain-torch twin", get(d, "torch_twin_fwd_bwd_ms"),
                spread=spread(d, lo="warp_fwd_bwd_min_ms", unit="ms"),
                target=f"≤ {1 / speedup:.2g}× (bench's own ≥ {speedup:g}×)" if speedup else "")]


def _volume(d):
    speedup = num(get(d, "target_speedup"))
    rows = []
    for mode in ("emission", "absorption"):
        rows.append(Row("volume", f"{t(d, 'grid')} grid, {t(d, 'image')}, {mode}, fwd + bwd",
                        get(d, f"{mode}_warp_ms"), "ms", "plain-torch twin", get(d, f"{mode}_torch_ms"),
                        spread=spread(d, lo=f"{mode}_warp_min_ms", unit="ms"),
                        target=f"≤ {1 / speedup:.2g}× (bench's own ≥ {speedup:g}×)" if speedup else ""))
    rows.append(Row("volume", "sparse scene with occupancy grid", get(d, "sparse_occupancy_warp_ms"), "ms",
                    "diffvc without occupancy grid", get(d, "sparse_warp_ms"),
                    spread=spread(d, lo="sparse_occupancy_warp_min_ms", unit="ms")))
    return rows


def _demo_time(d):
    rows = []
    for name, extra in (("bounce", "make it hit the target"), ("sysid", "`make demo`")):
        rows.append(Row("demo_time", f"`diffvc run {name} --quick` ({extra}), wall, fresh process",
                        get(d, f"{name}_wall_s"), "s", "", None,
                        spread=spread(d, pair=f"{name}_wall_spread_s", unit="s"),
                        target=f"≤ {fmt(get(d, f'{name}_target_s'), 's')}" if get(d, f"{name}_target_s") else ""))
    return rows


def _hashgrid(d):
    return [Row("hashgrid", f"hash-grid encoding, {fmt(get(d, 'points'))} points, {t(d, 'levels')} levels, fwd + bwd "
                            f"({t(d, 'torch_threads')} thread)",
                get(d, "encoding_warp_ms"), "ms", "plain-torch twin (vectorised)", get(d, "encoding_torch_ms")),
            Row("hashgrid", "hash-grid field (encoding + MLP), fwd + bwd", get(d, "field_warp_ms"), "ms",
                "plain-torch twin (vectorised)", get(d, "field_torch_ms"))]


def _soft(d):
    return [Row("soft", f"soft silhouette, {fmt(get(d, 'faces'))} faces, {t(d, 'resolution')}, fwd + bwd ({th} thread"
                + ("s" if th > 1 else "") + ")", get(d, f"warp_{th}thread_ms"), "ms", "plain-torch twin",
                get(d, f"torch_{th}thread_ms"), spread=spread(d, lo=f"warp_{th}thread_min_ms", unit="ms"))
            for th in (1, 2)]


def _texture(d):
    return [Row("texture", f"{f} lookups, {t(d, 'lookups')} in a {t(d, 'texture')} texture, fwd + bwd ({th} thread"
                + ("s" if th > 1 else "") + ")", get(d, f"{f}_warp_{th}thread_ms"), "ms", "grid_sample twin (plain torch)",
                get(d, f"{f}_torch_{th}thread_ms"), spread=spread(d, lo=f"{f}_warp_{th}thread_min_ms", unit="ms"))
            for f in ("bilinear", "mipmap") for th in (1, 2)]


def _pipeline(d):
    return [Row("pipeline", f"sysid {part} loss evaluation (physics, render, backward)", get(d, f"{part}_warp_total_ms"),
                "ms", "plain-torch rasterizer twin", get(d, f"{part}_torch_total_ms")) for part in ("rigid", "soft")]


def _scale_bench(d):
    w = get(d, "walker_batched_vs_loop") or {}
    k = str(max((int(x) for x in w if str(x).isdigit()), default=1024))
    p = "inverse_rendering_processes"
    return [
        Row("scale", f"walker, {k} envs, fwd + bwd", get(w, f"{k}.batched_env_steps_per_s"), "env-steps/s",
            "Python loop of single rollouts", get(w, f"{k}.loop_env_steps_per_s"), better=HIGHER),
        Row("scale", "inverse rendering, 2 processes x 1 thread, per iteration",
            get(d, f"{p}.2_processes_1_thread_each.per_iteration_s_median"), "s", "1 process, 1 thread",
            get(d, f"{p}.1_process_1_thread.per_iteration_s_median")),
    ]


def _rollout_memory(d):
    return [Row("rollout_memory", f"{t(d, 'steps')}-step rollout peak memory, fused + checkpointed",
                get(d, "results.fused_checkpointed.peak_extra_mb"), "MB", "per-step rollout, full tape",
                get(d, "results.per_step_full.peak_extra_mb"))]


_EXTRACTORS = {
    "articulated": _articulated, "cloth": _cloth, "demo_time": _demo_time, "hashgrid": _hashgrid, "difftaichi_mass_spring": _difftaichi_mass_spring, "fem": _fem,
    "geometry": _geometry, "launch": _launch, "mass_spring": _mass_spring, "mpm": _mpm, "pathtrace": _pathtrace,
    "pathtrace_memory": _pathtrace_memory, "pipeline": _pipeline, "raster": _raster,
    "rollout_memory": _rollout_memory, "scale": _scale_bench, "smoke": _smoke, "soft": _soft, "splat": _splat, "texture": _texture,
    "topopt": _topopt, "volume": _volume,
}


def rows_for(name: str, result: dict) -> list[Row]:
    """The table rows of benchmark ``name`` from its JSON ``result``. Never raises on the JSON's
    content: an extractor that fails on an unexpected shape yields one "n/a" row naming the error."""
    fn = _EXTRACTORS.get(name)
    if fn is None:
        return [Row(name, "(no table extractor: see the JSON)", None, "", "", None)]
    if not isinstance(result, dict):
        return [Row(name, "(result is not a JSON object)", None, "", "", None)]
    try:
        rows = fn(result)
    except Exception as e:  # noqa: BLE001  (a JSON of an unexpected shape must not break the table)
        return [Row(name, f"(unreadable result: {type(e).__name__}: {e})", None, "", "", None)]
    meta = result.get(META) if isinstance(result.get(META), dict) else {}
    if meta.get("quick"):
        for r in rows:
            r.bench = f"{name} (quick)"
    return rows


HEADER = ["benchmark", "what is measured", "diffvc: median (spread)", "anchor, same run", "ratio diffvc / anchor",
          "better", "target"]


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(results: dict[str, dict]) -> str:
    """The Markdown table (and a line of run conditions) for ``results`` = {bench name: JSON}."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name in sorted(results):
        for r in rows_for(name, results[name]):
            lines.append("| " + " | ".join(_esc(c) for c in r.cells()) + " |")
    loads = []
    for name in sorted(results):
        meta = results[name].get(META) if isinstance(results[name], dict) else None
        if isinstance(meta, dict) and num(meta.get("loadavg_1min_start")) is not None:
            loads.append(f"{name} {meta.get('date', '?')} load {meta['loadavg_1min_start']:.1f}")
    note = ("Ratios are diffvc / anchor of the two figures shown, measured in the same run; medians over "
            "repeats; spreads are min (or min–max) where the JSON records them. Wall times on a shared "
            "machine are inflated by its load.")
    if loads:
        note += " Runs (date, 1-minute load average at start): " + "; ".join(loads) + "."
    return "\n".join(lines) + "\n\n" + note + "\n"


def load_results(results_dir: Path = RESULTS) -> dict[str, dict]:
    """Every ``NAME.json`` in ``results_dir`` (unreadable files are reported as such)."""
    out = {}
    for f in sorted(Path(results_dir).glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            out[f.stem] = {"_unreadable": str(e)}
    return out


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between the README markers replaced by ``table``; ValueError if the
    markers are missing or out of order."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"README markers {START} ... {END} not found (in that order)")
    return text[: i + len(START)] + "\n" + table.rstrip("\n") + "\n" + text[j:]


def write(results_dir: Path = RESULTS, readme: Path | None = README) -> str:
    """Write ``results_dir/TABLE.md`` from the JSON there and rewrite ``readme``'s block (if given
    and it has the markers). Returns the table."""
    table = markdown(load_results(results_dir))
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    (Path(results_dir) / "TABLE.md").write_text(table)
    if readme is not None and Path(readme).exists():
        text = Path(readme).read_text()
        if START in text and END in text:
            Path(readme).write_text(replace_block(text, table))
        else:
            print(f"{readme}: no {START} block, left unchanged", file=sys.stderr)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--no-readme", action="store_true", help="only write TABLE.md")
    p.add_argument("--print", action="store_true", help="print the table, write nothing")
    args = p.parse_args(argv)
    if args.print:
        print(markdown(load_results(args.results)))
        return 0
    print(write(args.results, None if args.no_readme else args.readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
