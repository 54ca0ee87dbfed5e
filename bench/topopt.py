"""SIMP topology optimisation: diffvc.topopt against a numpy/scipy port of top88 (the reference
written the way its authors write it: ``coo_matrix`` assembly, ``(K + K') / 2``, ``spsolve``).

* MBB beam 60x20, volfrac 0.5, penal 3, rmin 1.5, ft = 1 (sensitivity filter) and ft = 2
  (density filter), both run to top88's stop (change <= 0.01): iterations, final compliance,
  seconds, side by side.
* MBB beam 120x40 and 240x80 (rmin 1.5, as top88 is called), ft = 1:
  the first N iterations of both (N = 40, quick 6), median seconds per iteration and the
  compliance at iteration N of each (they follow the same iterates). Full mode also runs 120x40
  to convergence.

Both sides run single-threaded (``torch.set_num_threads(1)``; SuperLU and numpy are
single-threaded here), in this one process; the load average is recorded (shared machine).

    python -m bench.topopt [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from diffvc.topopt import SIMP, mbb_beam
from diffvc.topopt.top88 import top88


def _diffvc(nelx, nely, ft, max_iter, solver="auto"):
    s = SIMP(mbb_beam(nelx, nely), 0.5, 3.0, 1.5, filter="sensitivity" if ft == 1 else "density", solver=solver)
    t0 = time.perf_counter()
    r = s.optimize("oc", max_iter=max_iter)
    return {"iterations": r.iterations, "compliance": r.compliance[-1], "seconds": time.perf_counter() - t0,
            "median_s_per_iter": statistics.median(r.seconds_per_iter)}


def _ref(nelx, nely, ft, max_iter):
    t0 = time.perf_counter()
    r = top88(nelx, nely, 0.5, 3.0, 1.5, ft, max_iter=max_iter)
    return {"iterations": r["iterations"], "compliance": r["c"][-1], "seconds": time.perf_counter() - t0,
            "median_s_per_iter": statistics.median(r["seconds_per_iter"])}


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"threads": 1, "loadavg_start": os.getloadavg()[0]}
    try:
        for ft in (1, 2):
            ref = _ref(60, 20, ft, 2000)
            dv = _diffvc(60, 20, ft, 2000)
            out[f"mbb60x20_ft{ft}"] = {
                "top88_numpy": ref, "diffvc": dv,
                "compliance_rel_diff": abs(dv["compliance"] - ref["compliance"]) / ref["compliance"],
                "iteration_diff": dv["iterations"] - ref["iterations"],
                "speedup_total": ref["seconds"] / dv["seconds"],
            }
        n_iter = 6 if quick else 40
        sizes = [(120, 40), (240, 80)]
        for nelx, nely in sizes:
            ref = _ref(nelx, nely, 1, n_iter)
            dv = _diffvc(nelx, nely, 1, n_iter)
            row = {"iterations_run": n_iter, "top88_numpy": ref, "diffvc": dv,
                   "compliance_rel_diff_at_last": abs(dv["compliance"] - ref["compliance"]) / ref["compliance"],
                   "speedup_median_per_iter": ref["median_s_per_iter"] / dv["median_s_per_iter"]}
            if not quick:
                mg = _diffvc(nelx, nely, 1, n_iter, solver="mgcg")
                row["diffvc_mgcg"] = mg
                row["speedup_mgcg_median_per_iter"] = ref["median_s_per_iter"] / mg["median_s_per_iter"]
            out[f"mbb{nelx}x{nely}_ft1_first{n_iter}"] = row
        if not quick:
            ref = _ref(120, 40, 1, 2000)
            dv = _diffvc(120, 40, 1, 2000)
            out["mbb120x40_ft1_converged"] = {
                "top88_numpy": ref, "diffvc": dv,
                "compliance_rel_diff": abs(dv["compliance"] - ref["compliance"]) / ref["compliance"],
                "iteration_diff": dv["iterations"] - ref["iterations"], "speedup_total": ref["seconds"] / dv["seconds"]}
    finally:
        torch.set_num_threads(threads)
    out["loadavg_end"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
