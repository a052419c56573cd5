"""The Explorer panel (ipywidgets 8 + bqplot + anywidget). The only part of prune_explorer that imports them.

`Explorer` imports torch and the model stack; `open_panel` imports only ipywidgets, shows at once and
builds the Explorer in the background. Both names load on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Explorer": "explorer", "open_panel": "opening", "OpeningPanel": "opening"}

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
