"""Per-layer editor: one row per prunable channel group with a cut count and what it carries.

Modelled on Sparsify's per-layer rows: name, kind, width, how many filters to cut, what is
left, the params and MACs the group's modules carry, and a sensitivity sparkline computed on
demand. Global controls sit above the rows: criterion, how scores of different layers compare
(normalisation), scheme, and the fill, by a count of filters (lowest N) or by MACs or latency
(cut the lowest-ranked filters until a fraction of the model's MACs or predicted latency is left).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ipywidgets as W

DEFAULT_NORMALIZATION = "auto"  # the normalisation selector's "the criterion's own"


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def sparkline(points: Sequence[tuple[float, float]]) -> W.HTML:
    """A tiny accuracy-vs-fraction-cut curve (inline SVG; each point's title gives its numbers)."""
    width, height = 110, 28
    xy = [(2 + (width - 4) * min(max(x, 0.0), 1.0), height - 2 - (height - 4) * min(max(y, 0.0), 1.0))
          for x, y in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='#1f77b4'><title>cut {p[0]:.0%}: accuracy "
                   f"{p[1]:.3f}</title></circle>" for (x, y), p in zip(xy, points))
    box = W.HTML(f"<svg class='pe-sparkline' width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"
                 f"<polyline points='{line}' fill='none' stroke='#1f77b4' stroke-width='1.5'/>{dots}</svg>",
                 layout=W.Layout(width="110px", height="28px"))
    box.add_class("pe-sparkline")
    return box


class LayerRow(W.HBox):
    def __init__(self, layer: str, kind: str, size: int, carried: dict[str, int], on_sensitivity: Callable[[str], None],
                 on_select: Callable[[str], None] = lambda layer: None):
        self.layer, self.size = layer, size
        self.slider = W.IntSlider(value=0, min=0, max=max(size - 1, 0), continuous_update=False,
                                  readout=False, layout=W.Layout(width="160px"))
        self.slider.add_class("pe-count-slider")
        self.count = W.BoundedIntText(value=0, min=0, max=max(size - 1, 0), layout=W.Layout(width="70px"))
        self.count.add_class("pe-count")
        W.link((self.slider, "value"), (self.count, "value"))
        self.remaining = W.HTML(f"{size}", layout=W.Layout(width="60px"))
        self.curve_box = W.Box(layout=W.Layout(width="116px", height="30px"))
        probe = W.Button(icon="line-chart", tooltip=f"sensitivity of {layer}", layout=W.Layout(width="34px"))
        probe.add_class("pe-sensitivity")
        probe.on_click(lambda _: on_sensitivity(layer))
        self.name = W.Button(description=layer, tooltip=f"select {layer}: its coupled modules show beside the preview",
                             layout=W.Layout(width="210px"))
        self.name.style.font_family = "monospace"
        self.name.add_class("pe-layer-name")
        self.name.on_click(lambda _: on_select(layer))
        cells = [
            self.name,
            W.HTML(kind, layout=W.Layout(width="70px")),
            W.HTML(str(size), layout=W.Layout(width="50px")),
            self.slider, self.count, self.remaining,
            W.HTML(_human(carried.get("params", 0)), layout=W.Layout(width="70px")),
            W.HTML(_human(carried.get("macs", 0)), layout=W.Layout(width="70px")),
            probe, self.curve_box,
        ]
        super().__init__(cells)
        self.add_class("pe-layer-row")
        self.count.observe(self._show_remaining, "value")

    def _show_remaining(self, change) -> None:
        self.remaining.value = str(self.size - change["new"])


class LayerTable(W.VBox):
    """Rows plus global controls. `on_counts(callback)` gets {layer: count} when any row changes."""

    HEADER = ("layer", "kind", "width", "cut", "", "left", "params", "MACs", "", "sensitivity")

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
        self.clear = W.Button(description="clear")
        self.clear.add_class("pe-clear")
        self.sensitivity_all = W.Button(description="sensitivity (all)")
        self.sensitivity_all.add_class("pe-sensitivity-all")
        controls = W.HBox([self.criterion, self.normalization, self.scheme, self.fill_mode, self.n_lowest,
                           self.keep_fraction, self.fill, self.clear, self.sensitivity_all],
                          layout=W.Layout(flex_flow="row wrap"))
        widths = ("210px", "70px", "50px", "160px", "70px", "60px", "70px", "70px", "34px", "116px")
        header = W.HBox([W.HTML(f"<b>{h}</b>", layout=W.Layout(width=w)) for h, w in zip(self.HEADER, widths)])
        self.rows_box = W.VBox(layout=W.Layout(max_height="420px", overflow="auto"))
        self.rows: dict[str, LayerRow] = {}
        self.selected: str | None = None
        self._callbacks: list[Callable[[dict[str, int]], None]] = []
        self._quiet = False
        super().__init__([controls, header, self.rows_box])
        self.add_class("pe-layer-table")

    def set_choices(self, criteria: Sequence[str], normalizations: Sequence[str]) -> None:
        """The criteria and normalisations to offer (the ranking registries' names, from the view)."""
        self.criterion.options = sorted(set(criteria) | {self.criterion.value})
        keep = self.normalization.value
        self.normalization.options = [("criterion's own", DEFAULT_NORMALIZATION)] + [(n, n) for n in normalizations]
        self.normalization.value = keep if keep in (DEFAULT_NORMALIZATION, *normalizations) else DEFAULT_NORMALIZATION

    def show(self, groups: Sequence[dict[str, Any]], on_sensitivity: Callable[[str], None],
             on_select: Callable[[str], None] = lambda layer: None) -> None:
        """One row per group ({name, kind, size, params, macs}: a view's `groups`)."""
        self.rows = {g["name"]: LayerRow(g["name"], g["kind"], g["size"], g, on_sensitivity, on_select) for g in groups}
        self.selected = None
        for row in self.rows.values():
            row.count.observe(self._changed, "value")
        self.rows_box.children = list(self.rows.values())

    def _show_fill_mode(self, change) -> None:
        by_cost = change["new"] != "filters"
        self.n_lowest.layout.display = "none" if by_cost else None
        self.keep_fraction.layout.display = None if by_cost else "none"
        self.fill.description = f"fill to {change['new']}" if by_cost else "fill lowest N"

    def on_counts(self, callback: Callable[[dict[str, int]], None]) -> None:
        self._callbacks.append(callback)

    def counts(self) -> dict[str, int]:
        return {layer: row.count.value for layer, row in self.rows.items() if row.count.value}

    def set_counts(self, counts: dict[str, int]) -> None:
        """Move every row at once and notify once."""
        self._quiet = True
        try:
            for layer, row in self.rows.items():
                value = int(counts.get(layer, 0))
                row.count.value = value
        finally:
            self._quiet = False
        self._notify()

    def select(self, layer: str | None) -> None:
        """Highlight one row (the layer the heatmap or the table picked); None clears it."""
        for name, row in self.rows.items():  # unmark first: the page never shows two selected rows
            if name != layer:
                row.remove_class("pe-selected")
                row.name.button_style = ""
        if layer in self.rows:
            self.rows[layer].add_class("pe-selected")
            self.rows[layer].name.button_style = "warning"
        self.selected = layer if layer in self.rows else None

    def set_sensitivity(self, layer: str, points) -> None:
        row = self.rows.get(layer)
        if row is not None:
            row.curve_box.children = [sparkline(points)]

    def _changed(self, _change) -> None:
        if not self._quiet:
            self._notify()

    def _notify(self) -> None:
        counts = self.counts()
        for callback in self._callbacks:
            callback(counts)
