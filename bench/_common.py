"""Helpers shared by the benchmarks (not a benchmark: ``bench.run_all`` skips this module)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def alternating_ms(cases: list, repeats: int, once) -> dict:
    """Wall milliseconds of ``once(case)`` for every case, ``repeats`` rounds each running every
    case once in turn (so load drift on a shared machine hits all cases alike), after one warm-up
    round (kernel loading). ``case[-1]`` is the torch thread count it runs with (restored after).
    Returns ``{case: {"median": ms, "min": ms}}``."""
    threads0 = torch.get_num_threads()
    times: dict = {c: [] for c in cases}
    try:
        for r in range(repeats + 1):
            for c in cases:
                torch.set_num_threads(c[-1])
                t0 = time.perf_counter()
                once(c)
                if r:
                    times[c].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads0)
    return {c: {"median": round(statistics.median(ts), 2), "min": round(min(ts), 2)} for c, ts in times.items()}


def cli(run, doc: str, argv=None) -> dict:
    """``python -m bench.NAME [--quick]``: runs ``run(quick)`` and prints its JSON."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    res = run(ap.parse_args(argv).quick)
    print(json.dumps(res, indent=2))
    return res
