"""The Explorer panel (ipywidgets 8 + anywidget). The only part of prune_explorer that imports them.

Neither `Explorer` nor `open_panel` imports torch: `open_panel` draws the first view from the
workspace's view files at once and loads the model stack (a `session.PruningSession`) behind it.
Both names load on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Explorer": "explorer", "open_panel": "opening"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prune_explorer.widgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
