"""prune_explorer: see and steer iterative structured pruning of CNNs.

The public names below import lazily, so `import prune_explorer` stays cheap and a notebook
only pays for the parts it uses. No public name is also a submodule's name. `job` is the job contract
(`jobs.contract`), under the name users' training scripts import it by: `from prune_explorer import job`.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # public name -> "module" (same attribute name) or ("module", "attribute")
    "ChannelGraph": "model.graph",
    "ChannelGroup": "model.graph",
    "Tap": "model.graph",
    "PrunePlan": "model.plan",
    "LayerKind": "model.kinds",
    "register_layer_kind": "model.kinds",
    "prune": "model.surgery",
    "count": "model.measure",
    "latency": "model.measure",
    "save": "model.store",
    "load": "model.store",
    "load_spec": "model.store",
    "register_model": "model.trust",
    "build_model": "model.zoo",
    "ModelCost": "model.measure",
    "load_dataset": "jobs.data",
    "fine_tune": ("jobs.train", "train"),
    "AccuracyDropRule": "loop.rules",
    "CaptureHook": "signals.capture",
    "open_trial": "signals.trials",
    "rank": "signals.ranking",
    "Tracker": "tracking",
    "MlflowTracker": "tracking",
    "make_tracker": "tracking",
    "JobQueue": "jobs",
}
_MODULES = {"job": "jobs.contract"}  # public name -> module: what users' scripts import as a module

__all__ = sorted(_EXPORTS) + sorted(_MODULES) + ["__version__"]


def lazy_exports(package: str, exports: dict[str, Any], modules: dict[str, str] | None = None):
    """`(__getattr__, __dir__)` for a package whose public names import on first use (PEP 562):
    `exports` maps a name to "module" (the same attribute) or ("module", "attribute"); `modules` maps
    a name to a module it stands for."""
    modules = modules or {}
    names = sorted(exports) + sorted(modules)  # __dir__ without an __all__

    def __getattr__(name: str):
        if name in modules:
            value = importlib.import_module(f"{package}.{modules[name]}")
        elif name in exports:
            where = exports[name]
            module, attribute = (where, name) if isinstance(where, str) else where
            value = getattr(importlib.import_module(f"{package}.{module}"), attribute)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return list(getattr(sys.modules[package], "__all__", names))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _MODULES)
