"""Runnable inverse problems, one module each, registered for ``diffvc run NAME``.

An example module defines ``DESCRIPTION`` (one line) and ``run(cfg: RunConfig) -> dict`` which
writes its images/animation, a curve plot and ``metrics.json`` into ``cfg.out`` and returns the
metrics. Register it in :data:`EXAMPLES` (name -> module) so ``diffvc list`` can show it without
importing every example.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

EXAMPLES: dict[str, tuple[str, str]] = {
    # name: (module, one-line description)
    "silhouettes": ("diffvc.examples.silhouettes", "recover a non-convex shape from 20 silhouette views (icosphere + large steps)"),
    "dmtet": ("diffvc.examples.dmtet", "DMTet: recover a non-convex shape's SDF on a tet grid from a point cloud"),
    "bounce": ("diffvc.examples.bounce", "particle bouncing off ground and wall: optimise v0 to hit a target"),
    "billiards": ("diffvc.examples.billiards", "billiards: choose the cue ball velocity so the last ball of a row stops at a target"),
    "inverse_rendering": ("diffvc.examples.inverse_rendering", "Cornell box: recover wall colours, light radiance and a box position by path tracing"),
    "mass_spring": ("diffvc.examples.mass_spring", "spring robot walker: optimise a closed-loop neural controller to walk far"),
    "sysid": ("diffvc.examples.sysid", "physical parameters from video alone: box mass & friction, soft body stiffness & damping"),
    "sysid_noise": ("diffvc.examples.sysid_noise", "sysid with 1% Gaussian pixel noise in the target videos"),
}


@dataclass
class RunConfig:
    """Options shared by every example (the ``diffvc run`` flags)."""

    out: Path
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    iters: int | None = None
    progress: bool = True

    def iterations(self, full: int, quick: int) -> int:
        """``--iters`` if given, else the example's quick or full default."""
        if self.iters is not None:
            return self.iters
        return quick if self.quick else full


def load(name: str):
    """Import the example module registered as ``name``."""
    if name not in EXAMPLES:
        raise KeyError(name)
    return importlib.import_module(EXAMPLES[name][0])


def run_example(name: str, cfg: RunConfig) -> dict:
    """Run example ``name`` with ``cfg``; returns its metrics (also written to ``cfg.out``)."""
    import torch

    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return load(name).run(cfg)
