"""The ``diffvc`` command: ``list``, ``run NAME``, ``bench NAME``."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2, no usage dump
        sys.stderr.write(f"diffvc: error: {message}\n")
        raise SystemExit(2)


def _bench_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "bench"


def _bench_names() -> list[str]:
    d = _bench_dir()
    return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_") and p.stem not in ("run_all", "table")) if d.is_dir() else []


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="diffvc", description="Differentiable visual computing: runnable inverse problems and benchmarks.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the examples with a one-line description")
    r = sub.add_parser("run", help="run an example")
    r.add_argument("name")
    r.add_argument("--quick", action="store_true", help="short version (minutes on a laptop CPU)")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--out", type=Path, default=None, help="output directory (default out/NAME)")
    r.add_argument("--seed", type=_int, default=0)
    r.add_argument("--iters", type=_positive_int, default=None, help="override the number of iterations")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.add_argument("--renderer", default="raster",
                   help="renderer for examples that render through the pipeline (raster, pathtrace, ...)")
    r.add_argument("--nproc", type=_positive_int, default=1,
                   help="split the example's work over N local processes (gloo on loopback)")
    r.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the run whose output directory is DIR from its checkpoints")
    r.add_argument("--checkpoint-every", type=_positive_int, default=10, metavar="K",
                   help="write an optimisation checkpoint every K iterations (and at SIGINT/SIGTERM)")
    b = sub.add_parser("bench", help="run a benchmark from bench/ and print (or write) its JSON")
    b.add_argument("name")
    b.add_argument("--json", type=Path, default=None, help="write the JSON result to this file")
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "list":
        from .examples import EXAMPLES, description

        width = max(len(n) for n in EXAMPLES)
        for name in sorted(EXAMPLES):
            print(f"{name:<{width}}  {description(name)}")
        return 0
    if args.cmd == "run":
        # As the command (not a call from Python): no cyclic garbage collection while torch, Warp
        # and the example are imported, then gc.freeze() what they built. The collector otherwise
        # traversed those ~10^6 long-lived objects over and over during the imports (~15 % of
        # their CPU time) and once more at exit (~1 s on the 2-core machine, under load).
        quiet_gc = argv is None and gc.isenabled()
        if quiet_gc:
            gc.disable()
        from .examples import EXAMPLES, RunConfig, run_example
        from .optim import CheckpointError

        if args.name not in EXAMPLES:
            sys.stderr.write(f"diffvc: error: unknown example {args.name!r}; choose from {', '.join(sorted(EXAMPLES))}\n")
            return 2
        if args.device == "cuda":
            import torch

            from ._kernels import cuda_available

            if not cuda_available():
                sys.stderr.write("diffvc: error: --device cuda requested but no CUDA device is available\n")
                return 2
        if args.resume is not None:
            if args.out is not None and Path(args.out) != args.resume:
                sys.stderr.write("diffvc: error: --resume DIR is the output directory; do not also give --out\n")
                return 2
            if not (args.resume / "checkpoints").is_dir():
                sys.stderr.write(f"diffvc: error: --resume: {args.resume} holds no checkpoints/ directory\n")
                return 2
        out = args.resume if args.resume is not None else (args.out if args.out is not None else Path("out") / args.name)
        from .optim import distributed

        if args.nproc > 1:
            from .examples import load

            if not getattr(load(args.name), "SHARDS", None):
                sys.stderr.write(f"diffvc: error: --nproc: example {args.name!r} does not split its work over processes\n")
                return 2
            child = list(argv if argv is not None else sys.argv[1:])
            if "--nproc" in child:
                k = child.index("--nproc")
                child = child[:k] + child[k + 2:]
            child = [a for a in child if not a.startswith("--nproc=")]
            if args.out is None and args.resume is None:
                child += ["--out", str(out)]
            return distributed.launch(["-m", "diffvc.cli", *child], args.nproc)
        distributed.init_from_env()
        rank = distributed.rank()
        from .examples import load

        supported = tuple(getattr(load(args.name), "RENDERERS", ("raster",)))
        if quiet_gc:  # the imports are done
            gc.enable()
            gc.freeze()
        if args.renderer not in supported:
            sys.stderr.write(f"diffvc: error: --renderer {args.renderer!r}: example {args.name!r} renders with "
                             f"{', '.join(supported)}\n")
            return 2
        cfg = RunConfig(out=out, quick=args.quick, device=args.device, seed=args.seed, iters=args.iters,
                        progress=not args.no_progress and rank == 0, renderer=args.renderer,
                        checkpoint_every=args.checkpoint_every, resume=args.resume is not None)
        try:
            metrics = run_example(args.name, cfg)
        except CheckpointError as e:
            sys.stderr.write(f"diffvc: error: {e}\n")
            return 2
        finally:
            distributed.shutdown()
        if rank == 0:
            print(json.dumps(metrics, indent=2, sort_keys=True))
            print(f"wrote {out}/")
        return 0
    if args.cmd == "bench":
        names = _bench_names()
        if args.name not in names:
            sys.stderr.write(f"diffvc: error: unknown benchmark {args.name!r}; choose from {', '.join(names) or '(none)'}\n")
            return 2
        root = str(_bench_dir().parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        mod = importlib.import_module(f"bench.{args.name}")
        result = mod.run(quick=args.quick)
        text = json.dumps(result, indent=2, sort_keys=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
        print(text)
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
