"""prune_explorer: see and steer iterative structured pruning of CNNs.

The public names below import lazily, so `import prune_explorer` stays cheap and a notebook
only pays for the parts it uses. No public name is also a submodule's name. `job` is the job contract
(`jobs.contract`), under the name users' training scripts import it by: `from prune_explorer import job`.
"""
from __future__ import annotations

import importlib

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


def __getattr__(name: str):
    if name in _MODULES:
        value = importlib.import_module(f"{__name__}.{_MODULES[name]}")
        globals()[name] = value
        return value
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'prune_explorer' has no attribute {name!r}")
    module, attribute = (where, name) if isinstance(where, str) else where
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__():
    return __all__
