"""The Explorer panel (ipywidgets 8 + bqplot). The only part of prune_explorer that imports them."""
from __future__ import annotations

from .explorer import Explorer

__all__ = ["Explorer"]
