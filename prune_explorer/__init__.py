"""prune_explorer: see and steer iterative structured pruning of CNNs.

The public names below import lazily, so `import prune_explorer` stays cheap and a notebook
only pays for the parts it uses.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ChannelGraph": "model.graph",
    "ChannelGroup": "model.graph",
    "Tap": "model.graph",
    "PrunePlan": "model.plan",
    "prune": "model.surgery",
    "count": "model.measure",
    "latency": "model.measure",
    "save": "model.store",
    "load": "model.store",
    "load_spec": "model.store",
    "build_model": "model.zoo",
    "ModelCost": "model.measure",
    "load_dataset": "data",
    "train": "train",
    "AccuracyDropRule": "rules",
    "CaptureHook": "signals.capture",
    "open_trial": "signals.trials",
    "rank": "signals.ranking",
    "Tracker": "tracking",
    "JobQueue": "jobs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prune_explorer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
