"""Per-layer editor: one row per prunable channel group with a cut count and what it carries.

Modelled on Sparsify's per-layer rows: name, kind, width, how many filters to cut (slider and
number), what is left, the params and MACs the group's channels pass through, and a sensitivity
sparkline computed on demand. The rows are one anywidget (layer_table.js) drawn from the groups and
the counts: a row of ten ipywidgets costs some thirty widget models, and resnet50's 37 rows
over a thousand — seconds before the first view shows. Global controls sit above the rows:
criterion, how scores of different layers compare (normalisation), scheme, and the fill, by a
count of filters (lowest N) or by MACs or latency (cut the lowest-ranked filters until a fraction
of the model's MACs or predicted latency is left).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import anywidget
import ipywidgets as W

from ..default_recipe import DEFAULT_RECIPE, RECIPE_ITERATIONS
from traitlets import Dict, List, Unicode

HERE = Path(__file__).parent
DEFAULT_NORMALIZATION = "auto"  # the normalisation selector's "the criterion's own"


class RowsCanvas(anywidget.AnyWidget):
    """The rows' browser half (layer_table.js); the browser sets `counts` and `selected`, and sends
    {"event": "sensitivity", "layer": name} for a row's sensitivity button."""

    _esm = HERE / "layer_table.js"
    _css = HERE / "layer_table.css"
    rows = List().tag(sync=True)        # [{name, kind, size, params, macs}]
    counts = Dict().tag(sync=True)      # {name: filters to cut}
    selected = Unicode("").tag(sync=True)
    curves = Dict().tag(sync=True)      # {name: [[fraction cut, accuracy], ...]}


class LayerTable(W.VBox):
    """Rows plus global controls. `on_counts(callback)` gets {layer: count} when any row changes."""

    def __init__(self, criterion: str, scheme: str, n_lowest: int):
        self.criterion = W.Dropdown(options=[criterion], value=criterion, description="criterion")
        self.criterion.add_class("pe-criterion")
        self.scheme = W.ToggleButtons(options=["internal", "all"], value=scheme,
                                      tooltips=["block-internal groups only (the AWS example)", "every prunable group"])
        self.scheme.add_class("pe-scheme")
        self.n_lowest = W.BoundedIntText(value=n_lowest, min=0, max=10**7, description="lowest N",
                                         layout=W.Layout(width="180px"))
        self.n_lowest.add_class("pe-n-lowest")
        self.normalization = W.Dropdown(options=[("criterion's own", DEFAULT_NORMALIZATION)],
                                        value=DEFAULT_NORMALIZATION, description="normalise",
                                        layout=W.Layout(width="220px"))
        self.normalization.add_class("pe-normalization")
        self.fill_mode = W.ToggleButtons(options=[("N filters", "filters"), ("MACs", "macs"), ("latency", "latency")],
                                         value="filters",
                                         tooltips=["cut the lowest N filters", "cut the lowest-ranked filters until "
                                                   "the model keeps this fraction of its MACs", "... of its latency, "
                                                   "predicted by a per-layer table measured once on this model"],
                                         style={"button_width": "80px"})
        self.fill_mode.add_class("pe-fill-mode")
        self.keep_fraction = W.BoundedFloatText(value=0.5, min=0.01, max=0.99, step=0.05, description="keep",
                                                layout=W.Layout(width="160px", display="none"))
        self.keep_fraction.add_class("pe-keep-fraction")
        self.fill_mode.observe(self._show_fill_mode, "value")
        self.fill = W.Button(description="fill lowest N", button_style="info")
        self.fill.add_class("pe-fill")
        if DEFAULT_RECIPE["target_macs"] is not None:  # the fill cuts one of the default recipe's equal MACs steps
            self.keep_fraction.value = round(DEFAULT_RECIPE["target_macs"] ** (1.0 / RECIPE_ITERATIONS), 3)
            self.fill_mode.value = "macs"
        self.clear = W.Button(description="clear")
        self.clear.add_class("pe-clear")
        self.sensitivity_all = W.Button(description="sensitivity (all)")
        self.sensitivity_all.add_class("pe-sensitivity-all")
        controls = W.HBox([self.criterion, self.normalization, self.scheme, self.fill_mode, self.n_lowest,
                           self.keep_fraction, self.fill, self.clear, self.sensitivity_all],
                          layout=W.Layout(flex_flow="row wrap"))
        self.canvas = RowsCanvas(layout=W.Layout(width="100%"))
        self.canvas.add_class("pe-layer-rows")
        self.canvas.observe(lambda _: self._notify(), "counts")
        self.rows: dict[str, dict[str, Any]] = {}
        self.selected: str | None = None
        self._callbacks: list[Callable[[dict[str, int]], None]] = []
        self._on_sensitivity: Callable[[str], None] = lambda layer: None
        self._on_select: Callable[[str], None] = lambda layer: None
        self.canvas.observe(self._picked, "selected")
        self.canvas.on_msg(self._message)
        super().__init__([controls, self.canvas])
        self.add_class("pe-layer-table")

    def set_choices(self, criteria: Sequence[str], normalizations: Sequence[str]) -> None:
        """The criteria and normalisations to offer (the ranking registries' names, from the view)."""
        self.criterion.options = sorted(set(criteria) | {self.criterion.value})
        keep = self.normalization.value
        self.normalization.options = [("criterion's own", DEFAULT_NORMALIZATION)] + [(n, n) for n in normalizations]
        self.normalization.value = keep if keep in (DEFAULT_NORMALIZATION, *normalizations) else DEFAULT_NORMALIZATION

    def show(self, groups: Sequence[dict[str, Any]], on_sensitivity: Callable[[str], None],
             on_select: Callable[[str], None] = lambda layer: None) -> None:
        """One row per group ({name, kind, size, params, macs}: a view's `groups`); counts start at 0."""
        self.rows = {g["name"]: dict(g) for g in groups}
        self.selected, self._on_sensitivity, self._on_select = None, on_sensitivity, on_select
        with self.canvas.hold_sync():
            self.canvas.rows = [{k: g[k] for k in ("name", "kind", "size", "params", "macs")} for g in groups]
            self.canvas.counts, self.canvas.selected, self.canvas.curves = {}, "", {}

    def _show_fill_mode(self, change) -> None:
        by_cost = change["new"] != "filters"
        self.n_lowest.layout.display = "none" if by_cost else None
        self.keep_fraction.layout.display = None if by_cost else "none"
        self.fill.description = f"fill to {change['new']}" if by_cost else "fill lowest N"

    def on_counts(self, callback: Callable[[dict[str, int]], None]) -> None:
        self._callbacks.append(callback)

    def counts(self) -> dict[str, int]:
        """{layer: filters to cut} of the rows that cut any (values the browser sent are clamped to the row)."""
        found = {}
        for layer, value in self.canvas.counts.items():
            row = self.rows.get(layer)
            if row is not None and int(value) > 0:
                found[layer] = min(int(value), row["size"] - 1)
        return found

    def set_counts(self, counts: dict[str, int]) -> None:
        """Move every row at once (one message to the browser) and notify once."""
        self.canvas.counts = {layer: int(counts.get(layer, 0)) for layer in self.rows if int(counts.get(layer, 0))}
        self._notify()

    def select(self, layer: str | None) -> None:
        """Highlight one row (the layer the heatmap or the table picked); None clears it."""
        self.selected = layer if layer in self.rows else None
        self.canvas.selected = self.selected or ""

    def set_sensitivity(self, layer: str, points) -> None:
        if layer in self.rows:
            self.canvas.curves = {**self.canvas.curves, layer: [list(p) for p in points]}

    def _picked(self, change) -> None:
        if change["new"] and change["new"] != self.selected:
            self._on_select(change["new"])

    def _message(self, _widget, content, _buffers) -> None:
        if content.get("event") == "sensitivity" and content.get("layer") in self.rows:
            self._on_sensitivity(content["layer"])

    def _notify(self) -> None:
        counts = self.counts()
        for callback in self._callbacks:
            callback(counts)
