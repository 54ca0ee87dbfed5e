"""Benchmarks: each module has ``run(quick=False) -> dict`` (JSON-able) and runs as ``python -m bench.NAME``.

diffvc is imported first so that its OpenMP setting (see ``diffvc/__init__.py``) applies to the
whole benchmark process, diffvc and the plain-torch baselines alike.

Anchors (optional, never core dependencies) are found here, so that ``make bench`` -- which
installs them where they install (``make bench-anchors``) -- and a run by hand agree:

* Mitsuba 3 / MuJoCo: importable from this interpreter (``pip install mitsuba mujoco``);
* DiffTaichi: pip ``taichi`` in its own interpreter, :func:`taichi_python` (``$DIFFTAICHI_PYTHON``
  or ``$TAICHI_PYTHON``, else ``.venv-taichi/bin/python`` in the repository root, else
  ``/tmp/tivenv/bin/python``), and DiffTaichi's example scripts, :func:`difftaichi_example`
  (``$DIFFTAICHI_REPO/examples``, else the clone ``make bench-anchors`` makes in
  ``bench/.anchors/difftaichi``, else ``/tmp/dtrepo``). DiffTaichi's repository has no licence
  file, so its scripts are run from a clone, never copied into this repository.
"""

import os
import sys
from pathlib import Path

import diffvc  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def taichi_python() -> str | None:
    """A Python interpreter with ``taichi`` for the DiffTaichi anchors, or None."""
    for env in ("DIFFTAICHI_PYTHON", "TAICHI_PYTHON"):
        if os.environ.get(env):
            return os.environ[env]
    for cand in (ROOT / ".venv-taichi" / "bin" / "python", Path("/tmp/tivenv/bin/python")):
        if cand.exists():
            return str(cand)
    return None


def difftaichi_example(name: str) -> str | None:
    """Path of DiffTaichi's ``examples/<name>`` (e.g. ``diffmpm.py``), or None when no clone is found."""
    roots = [os.environ["DIFFTAICHI_REPO"]] if os.environ.get("DIFFTAICHI_REPO") else []
    roots += [ROOT / "bench" / ".anchors" / "difftaichi", "/tmp/dtrepo"]
    for r in roots:
        p = Path(r) / "examples" / name
        if p.exists():
            return str(p)
    return None


def libllvm_path() -> str | None:
    """A libLLVM for Mitsuba's LLVM variants (``$DRJIT_LIBLLVM_PATH``, else the newest system one)."""
    if os.environ.get("DRJIT_LIBLLVM_PATH"):
        return os.environ["DRJIT_LIBLLVM_PATH"]
    import glob

    cands = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libLLVM*.so*") + glob.glob("/usr/lib/llvm-*/lib/libLLVM*.so*")
                   + glob.glob("/opt/homebrew/opt/llvm/lib/libLLVM.dylib"))

    def version(p):
        import re
        m = re.search(r"(?:LLVM[-.]?|llvm-)(\d+)", p)
        return int(m.group(1)) if m else 0
    return max(cands, key=version) if cands else None


__all__ = ["ROOT", "taichi_python", "difftaichi_example", "libllvm_path"]
