"""Lazy submodule exports for a package (PEP 562), shared by :mod:`diffvc.physics` and
:mod:`diffvc.render`.

``from diffvc.physics import FEMModel`` works as an eager import would, but the submodule (and the
Warp kernels it loads) is imported on the first access only, so a command that uses one solver or
one renderer does not pay for all of them.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, namespace: dict, lazy: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """Returns ``(__getattr__, __dir__)`` for the package ``package`` whose module globals are
    ``namespace``. ``lazy`` maps a submodule name (relative to the package) to the names it exports;
    a submodule itself is reachable as an attribute too (``diffvc.render.volume``). A resolved name
    is cached in ``namespace``, so ``__getattr__`` runs once per name."""
    names = {name: module for module, exported in lazy.items() for name in exported}

    def __getattr__(name: str):
        if name in lazy:  # a submodule, as it would be after an eager package import
            return importlib.import_module(f".{name}", package)
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(names) | set(lazy))

    return __getattr__, __dir__
