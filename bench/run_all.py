"""Run every benchmark in bench/ and write bench/results/NAME.json (``make bench``)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = p.parse_args(argv)
    names = args.names or sorted(
        f.stem for f in Path(__file__).parent.glob("*.py") if f.stem not in ("__init__", "run_all", "_common")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        result = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"{name}: {time.perf_counter() - t0:.1f} s -> {args.out / (name + '.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
