"""Benchmarks: each module has ``run(quick=False) -> dict`` (JSON-able) and runs as ``python -m bench.NAME``."""
