"""The Explorer panel (ipywidgets 8 + bqplot + anywidget). The only part of prune_explorer that imports them.

`Explorer` imports torch and the model stack; `open_panel` imports only ipywidgets, shows at once and
builds the Explorer in the background. Both names load on first use.
"""
from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {"Explorer": "explorer", "open_panel": "opening", "OpeningPanel": "opening"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
