"""Rank heatmap: one row per prunable channel group (named), one column per filter, colour = normalised rank.

bqplot's image HeatMap has no per-cell hover, and its SVG GridHeatMap takes seconds at resnet50's
~26k filters, so the heatmap is an anywidget canvas (heatmap.js): the kernel sends the matrix once
as binary arrays (normalised rank, filter index, score, rank in layer, cut mask) and the browser
draws it, the colour scale, each row's cut line and the hover text from them — hover never waits
on the kernel. A plan change sends only the cut mask and cut lines. Clicking a row (or its name)
sets `selected`.
"""
from __future__ import annotations

from pathlib import Path

import anywidget
import ipywidgets as W
import numpy as np
from traitlets import Bytes, Float, Int, List, Unicode

HERE = Path(__file__).parent
ORDERS = ("sorted", "natural")


class RankMatrix:
    """Filter ranks laid out as rows (layers) × columns (filters) in one display order.

    `ranks` holds the rank table as columns (a view's `ranks`): `row` (index into `layers`, -1 for a
    layer not shown), `filter`, `score`, `normalized`. Cell (r, c) holds the filter at position c of
    layer r: by rank (lowest first, ties by filter index) for "sorted", by filter index for
    "natural". `rank` is the filter's position in its layer's sorted order, 1 = the first to cut;
    `cell[layer][filter]` is its flat cell index.
    """

    def __init__(self, ranks: dict, layers: list[str], order: str):
        if order not in ORDERS:
            raise ValueError(f"heatmap order: {order!r} is not one of {', '.join(ORDERS)}")
        self.layers = list(layers)
        row = np.asarray(ranks["row"], dtype=np.int64)
        keep = (row >= 0) & (row < len(self.layers))
        row = row[keep]
        filt = np.asarray(ranks["filter"], dtype=np.int64)[keep]
        norm = np.asarray(ranks["normalized"], dtype=float)[keep]
        score = np.asarray(ranks["score"], dtype=float)[keep]
        self.widths = np.bincount(row, minlength=len(self.layers)).astype(np.int64)
        self.columns = int(self.widths.max()) if len(self.widths) and self.widths.max() > 0 else 1
        starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]])
        by_rank = np.lexsort((filt, norm, row))
        rank = np.empty(len(row), dtype=np.int64)
        rank[by_rank] = np.arange(len(row)) - starts[row[by_rank]] + 1
        placed = by_rank if order == "sorted" else np.lexsort((filt, row))
        column = np.empty(len(row), dtype=np.int64)
        column[placed] = np.arange(len(row)) - starts[row[placed]]
        flat = row * self.columns + column
        shape = (max(len(self.layers), 1), self.columns)
        self.normalized = np.full(shape, np.nan, dtype=np.float32)
        self.scores = np.full(shape, np.nan, dtype=np.float32)
        self.filters = np.full(shape, -1, dtype=np.int32)
        self.ranks = np.zeros(shape, dtype=np.int32)
        self.normalized.flat[flat] = norm
        self.scores.flat[flat] = score
        self.filters.flat[flat] = filt
        self.ranks.flat[flat] = rank
        self.cell: dict[str, np.ndarray] = {}
        self.rank_of: dict[str, np.ndarray] = {}
        for r, name in enumerate(self.layers):
            mine = row == r
            size = int(filt[mine].max()) + 1 if mine.any() else 0
            self.cell[name] = np.full(size, -1, dtype=np.int64)
            self.cell[name][filt[mine]] = flat[mine]
            self.rank_of[name] = np.zeros(size, dtype=np.int64)
            self.rank_of[name][filt[mine]] = rank[mine]

    def cut_mask(self, channels: dict[str, list[int]]) -> tuple[np.ndarray, list[int]]:
        """(uint8 mask of the cells a plan cuts, per row the sorted position its cut ends at)."""
        mask = np.zeros(self.normalized.size, dtype=np.uint8)
        lines = [0] * len(self.layers)
        for r, name in enumerate(self.layers):
            indices = np.asarray(channels.get(name, ()), dtype=np.int64)
            if not len(indices):
                continue
            mask[self.cell[name][indices]] = 1
            lines[r] = int(self.rank_of[name][indices].max())
        return mask, lines


class HeatmapCanvas(anywidget.AnyWidget):
    """The browser half (heatmap.js); every trait is what it draws."""

    _esm = HERE / "heatmap.js"
    _css = HERE / "heatmap.css"
    layers = List(Unicode()).tag(sync=True)
    widths = List(Int()).tag(sync=True)
    columns = Int(1).tag(sync=True)
    order = Unicode("sorted").tag(sync=True)
    vmin = Float(0.0).tag(sync=True)
    vmax = Float(1.0).tag(sync=True)
    matrix = Bytes(b"").tag(sync=True)    # float32 normalised rank per cell, NaN where a row is shorter
    filters = Bytes(b"").tag(sync=True)   # int32 filter index per cell
    scores = Bytes(b"").tag(sync=True)    # float32 criterion score per cell
    ranks = Bytes(b"").tag(sync=True)     # int32 rank in its layer, 1 = cut first
    cut = Bytes(b"").tag(sync=True)       # uint8, 1 where the plan cuts the filter
    cutline = List(Int()).tag(sync=True)  # per row: sorted position where its cut ends (0: none)
    selected = Unicode("").tag(sync=True)  # the layer whose row was clicked (or selected in the table)


class RankHeatmap(W.VBox):
    """The heatmap plus its sorted/natural order toggle; `show` a RankTable, `mark` a plan's channels."""

    def __init__(self):
        self.order = W.ToggleButtons(options=list(ORDERS), value="sorted",
                                     tooltips=["each row lowest rank first", "filter index order"])
        self.order.add_class("pe-heatmap-order")
        self.canvas = HeatmapCanvas(layout=W.Layout(width="100%"))
        self.canvas.add_class("pe-heatmap")
        self.matrix: RankMatrix | None = None
        self._table = None
        self._layers: list[str] = []
        self._channels: dict[str, list[int]] = {}
        super().__init__([self.order, self.canvas])
        self.order.observe(lambda _: self._draw(), "value")

    def show(self, ranks: dict, layers: list[str]) -> None:
        """Draw new ranks (a view's `ranks` columns); the cut is cleared until the next `mark`."""
        self._table, self._layers, self._channels = ranks, list(layers), {}
        self._draw()

    def mark(self, channels: dict[str, list[int]]) -> None:
        """Show the filters a plan removes ({layer: indices}) and each row's cut line."""
        self._channels = channels
        if self.matrix is None:
            return
        mask, lines = self.matrix.cut_mask(channels)
        with self.canvas.hold_sync():
            self.canvas.cut = mask.tobytes()
            self.canvas.cutline = lines

    def on_drawn(self, callback) -> None:
        """`callback()` once a browser has painted the ranks (heatmap.js reports its first draw)."""
        self.canvas.on_msg(lambda _widget, content, _buffers: content.get("event") == "drawn" and callback())

    def on_select(self, callback) -> None:
        """`callback(layer)` when a row is clicked."""
        self.canvas.observe(lambda change: change["new"] and callback(change["new"]), "selected")

    def select(self, layer: str | None) -> None:
        self.canvas.selected = layer or ""

    def _draw(self) -> None:
        if self._table is None:
            return
        m = self.matrix = RankMatrix(self._table, self._layers, self.order.value)
        mask, lines = m.cut_mask(self._channels)
        finite = m.normalized[np.isfinite(m.normalized)]
        c = self.canvas
        with c.hold_sync():
            c.layers, c.widths, c.columns, c.order = m.layers, m.widths.tolist(), m.columns, self.order.value
            c.vmin = float(finite.min()) if finite.size else 0.0
            c.vmax = float(finite.max()) if finite.size else 1.0
            c.matrix, c.filters = m.normalized.tobytes(), m.filters.tobytes()
            c.scores, c.ranks = m.scores.tobytes(), m.ranks.tobytes()
            c.cut, c.cutline = mask.tobytes(), lines
