"""Whole-command time of the demos a new user runs: ``diffvc run bounce --quick`` and
``diffvc run sysid --quick`` (``make demo``), as the user runs them (a fresh process each:
imports, Warp module loading, the optimisation, images, GIFs, metrics.json).

Issue 18's targets, on an idle 2-core machine: bounce <= 5 s, sysid <= 20 s, with the same
accuracy as before (figures before this work, commit f6461bd: bounce final distance 0.02670 m;
sysid relative errors mass 2.6e-8, mu 6.2e-8, Young's modulus 1.8e-8, damping 3.4e-8).

Each command runs ``repeats`` times (the first also warms Warp's kernel cache); reported: median
wall seconds with (min, max), the child's user + system CPU seconds (``resource.getrusage``),
the 1-minute load average before each run (a loaded machine inflates wall time), and the
accuracy figures read back from the run's ``metrics.json``. ``*_target_met`` compares the median
wall time with the target (meaningful only when the load average is near 0).

    python -m bench.demo_time [--quick]     or     diffvc bench demo_time
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"bounce": 5.0, "sysid": 20.0}
ACCURACY = {"bounce": ("final_distance", "iterations"),
            "sysid": ("rigid_rel_error_mass", "rigid_rel_error_mu", "soft_rel_error_young",
                      "soft_rel_error_damping", "rigid_iterations", "soft_iterations")}


def _one(name: str, out: str) -> dict:
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffvc.cli", "run", name, "--quick", "--no-progress", "--out", out],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"diffvc run {name} --quick failed: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return {"wall": wall, "cpu": cpu, "load": load, "metrics": {k: metrics[k] for k in ACCURACY[name]}}


def run(quick: bool = False, names=("bounce", "sysid")) -> dict:
    repeats = 2 if quick else 3
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "repeats": repeats,
                    "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: [] for n in names}
        for r in range(repeats):
            for n in names:           # interleaved, so load drift hits both alike
                runs[n].append(_one(n, os.path.join(tmp, f"{n}{r}")))
        for n in names:
            walls = [x["wall"] for x in runs[n]]
            med = statistics.median(walls)
            result[f"{n}_wall_s"] = med
            result[f"{n}_wall_spread_s"] = [min(walls), max(walls)]
            result[f"{n}_cpu_s"] = statistics.median(x["cpu"] for x in runs[n])
            result[f"{n}_load_avg_1min"] = [round(x["load"], 2) for x in runs[n]]
            result[f"{n}_target_s"] = TARGETS[n]
            result[f"{n}_target_met"] = med <= TARGETS[n]
            result.update({f"{n}_{k}": v for k, v in runs[n][-1]["metrics"].items()})
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, sort_keys=True))
