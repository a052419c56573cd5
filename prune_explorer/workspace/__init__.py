"""The workspace on disk (WORKSPACE/: iterations, jobs, exports, the loop's results).

`layout` names everything on disk and writes atomically (standard library only: every stage asks
it); `workspace.Workspace` builds names, lineage, the baseline and writes on it. The names below
load on first use, so the layout imports nothing above it.
"""
from __future__ import annotations

from .. import lazy_exports
from .layout import BASELINE, LATENCY_TABLE, PRUNED, Layout

_EXPORTS = {"Iteration": "workspace", "Workspace": "workspace"}

__all__ = ["BASELINE", "LATENCY_TABLE", "PRUNED", "Layout"] + sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
