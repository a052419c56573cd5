"""The Explorer panel (ipywidgets 8 + anywidget). The only part of prune_explorer that imports them.

Neither `Explorer` nor `open_panel` imports torch: `open_panel` draws the first view from the
workspace's view files at once and loads the model stack (a `session.PruningSession`) behind it.
Both names load on first use.
"""
from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {"Explorer": "explorer", "open_panel": "opening"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
