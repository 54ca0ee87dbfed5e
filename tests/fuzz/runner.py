"""Child process of the fuzz suite: runs calls ``start..stop`` of :func:`specs.cases` and prints
one JSON line per call (so the parent knows which call a crash interrupted).

Usage: ``python tests/fuzz/runner.py START STOP``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specs  # noqa: E402


def all_finite(x, depth=0) -> bool:
    if depth > 4:
        return True
    if isinstance(x, torch.Tensor):
        if x.is_sparse:
            x = x.coalesce().values()
        return not x.is_floating_point() or bool(torch.isfinite(x.detach()).all())
    if isinstance(x, float):
        return x == x and abs(x) != float("inf")
    if isinstance(x, (list, tuple)):
        return all(all_finite(y, depth + 1) for y in x)
    if isinstance(x, dict):
        return all(all_finite(y, depth + 1) for y in x.values())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return all(all_finite(getattr(x, f.name), depth + 1) for f in dataclasses.fields(x))
    if hasattr(x, "__dict__") and not isinstance(x, torch.nn.Module):
        return all(all_finite(y, depth + 1) for y in vars(x).values())
    return True


def names_argument(msg: str, names) -> bool:
    return any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(n) + r"(?![A-Za-z0-9_])", msg) for n in names)


def run_case(target: specs.Target, arg: str, label: str) -> tuple[str, str]:
    mutate, expect = next((m, e) for lab, m, e in specs.KIND_TABLE[target.kinds[arg]] if lab == label)
    expect = (target.overrides or {}).get((arg, label), expect)
    kwargs = target.args()
    kwargs[arg] = mutate(kwargs.get(arg), kwargs)
    names = (target.names or {}).get(arg, [arg])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = target.fn(**kwargs)
    except (ValueError, TypeError) as e:
        msg = f"{type(e).__name__}: {e}"
        if expect == "ok":
            return "rejected_valid", msg
        return ("clear_error" if names_argument(str(e), names) else "obscure_error"), msg
    except Exception as e:  # noqa: BLE001 - any other exception type is an obscure error
        return "obscure_error", f"{type(e).__name__}: {e}"
    if expect == "error":
        return "silent_wrong", "accepted"
    return ("documented" if all_finite(result) else "silent_wrong"), "finite" if all_finite(result) else "non-finite"


def main(start: int, stop: int) -> None:
    torch.manual_seed(0)
    # one scratch directory per batch, removed at the end: the working directory (a mutated path must
    # not write into the checkout) and every temporary path the specs make (tempfile.tempdir)
    with tempfile.TemporaryDirectory(prefix="diffvc_fuzz_") as scratch:
        os.chdir(scratch)
        tempfile.tempdir = scratch
        by_name = {t.name: t for t in specs.targets()}
        for i, (name, arg, label) in enumerate(specs.cases()[start:stop], start):
            outcome, msg = run_case(by_name[name], arg, label)
            print(json.dumps({"i": i, "case": f"{name}({arg}={label})", "outcome": outcome, "msg": msg[:300]}),
                  flush=True)
        os.chdir(os.path.dirname(os.path.abspath(__file__)))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
