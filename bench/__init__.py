"""Benchmarks: each module has ``run(quick=False) -> dict`` (JSON-able) and runs as ``python -m bench.NAME``.

diffvc is imported first so that its OpenMP setting (see ``diffvc/__init__.py``) applies to the
whole benchmark process, diffvc and the plain-torch baselines alike."""

import diffvc  # noqa: F401
