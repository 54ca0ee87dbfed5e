"""Fuzz suite: malformed calls to the public functions and classes of diffvc.geometry, physics,
render, pipeline and optim (generator: ``specs.py``), run crash-safely in subprocess batches.

Every call must end in one of two ways:

* a ``ValueError``/``TypeError`` whose message names the offending argument (clear error), or
* a finite result, for inputs that are documented as accepted (documented result);

never a crash (the batch's process dies), an obscure error (any other exception, or a message
that does not name the argument) or a silent wrong result (a malformed input accepted, or a
non-finite result). The counts are printed and written to ``fuzz_counts.json`` in pytest's
temporary directory.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BATCHES = 2


def _num_cases() -> int:
    sys.path.insert(0, HERE)
    try:
        import specs
        return len(specs.cases())
    finally:
        sys.path.remove(HERE)


def _run_batch(start: int, stop: int) -> tuple[list[dict], int, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "runner.py"), str(start), str(stop)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return rows, proc.returncode, proc.stderr[-2000:]


def test_malformed_calls_give_clear_errors_or_documented_results(tmp_path):
    n = _num_cases()
    bounds = [round(k * n / BATCHES) for k in range(BATCHES + 1)]
    rows, crashes, crash_info = [], 0, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = a
        while start < b:  # a crash ends its batch: count it, resume after the crashing call
            got, rc, err = _run_batch(start, b)
            rows += got
            done = got[-1]["i"] + 1 if got else start
            if done >= b and rc == 0:
                break
            crashes += 1
            crash_info.append(f"call {done} (return code {rc}): {err}")
            start = done + 1
    counts = collections.Counter(r["outcome"] for r in rows)
    summary = {"calls": len(rows) + crashes, "clear_errors": counts["clear_error"],
               "documented_results": counts["documented"], "crashes": crashes,
               "obscure_errors": counts["obscure_error"], "silent_wrong_results": counts["silent_wrong"],
               "rejected_valid_inputs": counts["rejected_valid"],
               "targets": len({r["case"].split("(")[0] for r in rows})}
    (tmp_path / "fuzz_counts.json").write_text(json.dumps(summary, indent=1))
    print("fuzz counts:", json.dumps(summary))
    bad = [f"{r['outcome']}: {r['case']} -> {r['msg']}" for r in rows if r["outcome"] not in ("clear_error", "documented")]
    assert summary["calls"] >= 300
    assert crashes == 0, crash_info
    assert not bad, "\n".join(bad[:40])
    assert summary["clear_errors"] + summary["documented_results"] == summary["calls"]


def test_every_export_has_a_fuzz_target():
    """Every public function and class of geometry, physics, render, pipeline and optim is a
    fuzz target (or, for the few that take no malformed input, listed with the reason in
    ``specs.NOT_FUZZED``)."""
    import importlib

    sys.path.insert(0, HERE)
    try:
        import specs
        covered = {tuple(t.name.split("[")[0].split(".")[:2]) for t in specs.targets()}
        not_fuzzed = dict(specs.NOT_FUZZED)
    finally:
        sys.path.remove(HERE)
    missing, exports = [], 0
    for mod in ("geometry", "physics", "render", "pipeline", "optim"):
        for name in importlib.import_module(f"diffvc.{mod}").__all__:
            exports += 1
            if (mod, name) not in covered and f"{mod}.{name}" not in not_fuzzed:
                missing.append(f"{mod}.{name}")
    assert exports > 250
    assert not missing, f"exports without a fuzz target: {missing}"
    stale = [k for k in not_fuzzed if tuple(k.split(".")) in covered]
    assert not stale, f"NOT_FUZZED lists targets that are fuzzed: {stale}"
