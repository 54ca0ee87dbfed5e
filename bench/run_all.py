"""Run every benchmark in bench/ (each module with a ``run(quick)``) and write bench/results/NAME.json, then the table of headline
figures bench/results/TABLE.md and README.md's benchmark block from every JSON there
(``make bench``; ``python -m bench.table`` alone rebuilds the table from existing JSON)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--no-readme", action="store_true", help="write TABLE.md but leave README.md alone")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = p.parse_args(argv)
    names = args.names or sorted(
        f.stem for f in Path(__file__).parent.glob("*.py") if f.stem not in ("__init__", "run_all", "_common", "table")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    import torch

    threads = torch.get_num_threads()
    for name in names:
        torch.set_num_threads(threads)  # a benchmark that changes it (1-thread rows) does not set the next one's
        t0 = time.perf_counter()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "run"):   # a validation script with its own command line (see its docstring)
            print(f"{name}: no run(), not a table benchmark; skipped", file=sys.stderr)
            continue
        try:
            result = module.run(quick=args.quick)
        except Exception:  # one benchmark (or its anchor) failing leaves the others' figures
            traceback.print_exc()
            print(f"{name}: FAILED; bench/results/{name}.json left as it was", file=sys.stderr)
            failed.append(name)
            continue
        if isinstance(result, dict):  # run conditions, shown by bench.table
            result[table.META] = {"quick": args.quick, "loadavg_1min_start": load,
                                  "date": started,
                                  "seconds": round(time.perf_counter() - t0, 1)}
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"{name}: {time.perf_counter() - t0:.1f} s -> {args.out / (name + '.json')}", file=sys.stderr)
    table.write(args.out, None if args.no_readme else table.README)
    print(f"table -> {args.out / 'TABLE.md'}" + ("" if args.no_readme else f" and {table.README}"), file=sys.stderr)
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
