"""Where the panel's parts sit: ranks and the preview side by side, the layer table below, then the
history scatter, the lineage and the jobs. Columns never grow past the panel (long names wrap or
scroll inside them), so a projector at 1280 px shows every part whole."""
from __future__ import annotations

from typing import Any

import ipywidgets as W

from .controls import ExportControls, FineTuneControls
from .coupling import CouplingView
from .coverage import NotPrunable
from .heatmap import RankHeatmap
from .jobs_panel import JobsPanel
from .layer_table import LayerTable
from .lineage import LineageTree
from .preview import Preview
from .scatter import HistoryScatter


def build(panel: Any, *, criterion: str, scheme: str, n_lowest: int, hyperparameters: dict[str, Any] | None,
          entry_point: str | None, source_dir: str | None, backend: Any, scripts: Any = True) -> list[W.Widget]:
    """Make the panel's parts (as attributes of `panel`) and return its rows."""
    panel.error_line, panel.status_line = W.HTML(), W.HTML()
    panel.error_line.add_class("pe-error")
    panel.status_line.add_class("pe-status")
    panel.heatmap = RankHeatmap()
    panel.table_editor = LayerTable(criterion, scheme, n_lowest)
    panel.preview_box = Preview()
    panel.finetune = FineTuneControls(hyperparameters, entry_point, source_dir,
                                      backend if isinstance(backend, str) else backend.name, scripts)
    panel.exporter = ExportControls()
    panel.jobs_panel = JobsPanel(panel.cancel)
    panel.scatter = HistoryScatter(panel.rebase)
    panel.lineage = LineageTree(panel.rebase, panel.compare)
    panel.coupling_view = CouplingView()
    panel.not_prunable = NotPrunable()
    actions = W.VBox([W.HTML("<b>Preview</b>"), panel.preview_box, panel.finetune, panel.exporter,
                      W.HTML("<b>Coupled modules</b>"), panel.coupling_view],
                     layout=W.Layout(width="40%", min_width="360px", overflow="hidden"))  # wide tables scroll inside
    ranks = W.VBox([W.HTML("<b>Filter ranks</b> <small>hover a cell for its filter; click a row to select its "
                           "layer</small>"), panel.heatmap], layout=W.Layout(width="60%"))
    history = W.HBox([
        W.VBox([W.HTML("<b>History</b>"), panel.scatter], layout=_column("40%", "hidden")),
        W.VBox([W.HTML("<b>Lineage</b> <small>click to base the next cut on it</small>"), panel.lineage],
               layout=_column("25%", "auto")),
        W.VBox([W.HTML("<b>Jobs</b>"), panel.jobs_panel], layout=_column("35%", "auto")),
    ])
    return [W.HTML("<h3 style='margin:4px 0'>prune_explorer</h3>"), panel.status_line, panel.error_line,
            W.HBox([ranks, actions]), W.HTML("<b>Layers</b>"), panel.table_editor, panel.not_prunable, history]


def _column(width: str, overflow: str) -> W.Layout:
    """A column of a row: its share of the width, never wider (min-width 0 lets a flex item shrink)."""
    return W.Layout(width=width, min_width="0", overflow=overflow)
