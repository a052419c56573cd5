"""The pruning session behind the panel, the CLI's `rank` and the loop's step: one base model's graph,
ranks and costs, and everything that can be done with them — plan for a filter count or a MACs /
latency target, preview, prune, apply, evaluate the cut, queue a fine-tune, export, read the history.

Nothing here imports a widget: every panel action is a session method a script or a test calls.
`PruningSession` (and torch) load on first use, so the panel's torch-free first view can import
this package's light modules (`compare`).
"""
from __future__ import annotations

__all__ = ["MODEL_LOCK", "Applied", "PruningSession"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'prune_explorer.session' has no attribute {name!r}")
    from . import session

    return getattr(session, name)
