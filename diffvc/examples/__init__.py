"""Runnable inverse problems, one module each, registered for ``diffvc run NAME``.

An example module defines ``DESCRIPTION`` (a one-line string literal) and
``run(cfg: RunConfig) -> dict`` which writes its images/animation, a curve plot and
``metrics.json`` into ``cfg.out`` and returns the metrics. Register it in :data:`EXAMPLES`
(name -> module); ``diffvc list`` reads each description from the module's source. An example
that renders through the pipeline may declare ``RENDERERS = ("raster", "pathtrace", ...)``: the
renderers ``diffvc run NAME --renderer R`` accepts (``cfg.renderer``; default ``"raster"``). An
example that splits its work over processes (``diffvc run NAME --nproc N``, or ``torchrun``)
declares ``SHARDS`` (what it shards, e.g. ``"camera views"``), takes its share with
:func:`diffvc.optim.distributed.shard` and writes outputs on rank 0 only. Every run checkpoints its
optimisation in ``out/checkpoints``, so ``diffvc run NAME --resume OUT`` can continue it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

EXAMPLES: dict[str, str] = {
    # name: module (its DESCRIPTION is the one-line description)
    "silhouettes": "diffvc.examples.silhouettes",
    "dmtet": "diffvc.examples.dmtet",
    "bounce": "diffvc.examples.bounce",
    "billiards": "diffvc.examples.billiards",
    "inverse_rendering": "diffvc.examples.inverse_rendering",
    "mass_spring": "diffvc.examples.mass_spring",
    "sysid": "diffvc.examples.sysid",
    "sysid_noise": "diffvc.examples.sysid_noise",
    "tomography": "diffvc.examples.tomography",
    "topopt": "diffvc.examples.topopt",
    "spline_fit": "diffvc.examples.spline_fit",
    "shape_encoder": "diffvc.examples.shape_encoder",
    "splat": "diffvc.examples.splat",
    "smoke": "diffvc.examples.smoke",
    "cloth": "diffvc.examples.cloth",
    "diffmpm": "diffvc.examples.diffmpm",
    "cartpole": "diffvc.examples.cartpole",
    "quasistatic": "diffvc.examples.quasistatic",
    "learned_dynamics": "diffvc.examples.learned_dynamics",
    "nerf": "diffvc.examples.nerf",
    "sdf_from_views": "diffvc.examples.sdf_from_views",
}


def description(name: str) -> str:
    """The ``DESCRIPTION`` string of example ``name``, read from its module's source without
    importing it (so ``diffvc list`` stays fast)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(EXAMPLES[name])
    if spec is None or spec.origin is None:
        raise KeyError(name)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DESCRIPTION" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise ValueError(f"example module {EXAMPLES[name]} defines no DESCRIPTION string")


@dataclass
class RunConfig:
    """Options shared by every example (the ``diffvc run`` flags)."""

    out: Path
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    iters: int | None = None
    progress: bool = True
    renderer: str = "raster"
    checkpoint_every: int = 10      # iterations between checkpoints (diffvc.optim.run_context)
    resume: bool = False            # continue from the checkpoints in out/checkpoints

    def iterations(self, full: int, quick: int) -> int:
        """``--iters`` if given, else the example's quick or full default."""
        if self.iters is not None:
            return self.iters
        return quick if self.quick else full


def single_threaded(run):
    """Decorator for an example's ``run(cfg)`` whose tensors are too small for torch's intra-op
    threads (on a shared 2-core CPU they stall): run with one torch thread, restore afterwards."""
    import functools

    @functools.wraps(run)
    def wrapper(cfg):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run(cfg)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def load(name: str):
    """Import the example module registered as ``name``."""
    if name not in EXAMPLES:
        raise KeyError(name)
    return importlib.import_module(EXAMPLES[name])


def run_example(name: str, cfg: RunConfig) -> dict:
    """Run example ``name`` with ``cfg``; returns its metrics (also written to ``cfg.out``)."""
    import torch

    cfg.out = Path(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    from ..optim import distributed, run_context

    torch.manual_seed(cfg.seed)
    module = load(name)
    supported = tuple(getattr(module, "RENDERERS", ("raster",)))
    if cfg.renderer not in supported:
        raise ValueError(f"renderer: example {name!r} renders with {list(supported)}, not {cfg.renderer!r}")
    if distributed.world_size() > 1 and not getattr(module, "SHARDS", None):
        raise ValueError(f"nproc: example {name!r} does not split its work over processes")
    ck = cfg.out / "checkpoints" if distributed.rank() == 0 else cfg.out / "checkpoints" / f"rank{distributed.rank()}"
    with run_context(ck, every=cfg.checkpoint_every, resume=cfg.resume):
        return module.run(cfg)
