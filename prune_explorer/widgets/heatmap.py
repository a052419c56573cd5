"""Rank heatmap: one row per prunable channel group, one column per filter, colour = normalised rank.

A bqplot `HeatMap` draws the whole matrix as one image, so resnet50's ~26k filters redraw in
well under a second (a `GridHeatMap` needs two SVG nodes per cell). Filters the plan cuts are a
Scatter overlay on top; its tooltip names the layer, filter and score.
"""
from __future__ import annotations

import bqplot as bq
import ipywidgets as W
import numpy as np
import pandas as pd

ROW_PX = 14


def rank_matrix(table: pd.DataFrame, layers: list[str], order: str) -> tuple[np.ndarray, np.ndarray]:
    """(colour matrix rows × max width, NaN padded; filter index at each cell, -1 where padded)."""
    width = int(table.groupby("layer")["filter"].count().max()) if len(table) else 1
    colour = np.full((max(len(layers), 1), width), np.nan)
    filters = np.full(colour.shape, -1, dtype=np.int64)
    by_layer = {name: rows for name, rows in table.groupby("layer", sort=False)}
    for r, name in enumerate(layers):
        rows = by_layer.get(name)
        if rows is None:
            continue
        rows = rows.sort_values(["normalized", "filter"], kind="stable") if order == "sorted" else rows.sort_values("filter")
        colour[r, :len(rows)] = rows["normalized"].to_numpy(dtype=float)
        filters[r, :len(rows)] = rows["filter"].to_numpy()
    return colour, filters


class RankHeatmap(W.VBox):
    """The heatmap plus its sorted/natural order toggle."""

    def __init__(self):
        self.order = W.ToggleButtons(options=["sorted", "natural"], value="sorted",
                                     tooltips=["each row lowest rank first", "filter index order"])
        self.order.add_class("pe-heatmap-order")
        self._x = bq.LinearScale()
        self._y = bq.LinearScale(reverse=True)
        self._c = bq.ColorScale(scheme="viridis")
        self.map = bq.HeatMap(x=np.arange(2), y=np.arange(2), color=np.full((2, 2), np.nan),
                              scales={"x": self._x, "y": self._y, "color": self._c}, null_color="#f3f3f3")
        self.cut = bq.Scatter(x=[], y=[], scales={"x": self._x, "y": self._y}, marker="square",
                              colors=["#e4002b"], default_size=16, stroke=None, display_names=False,
                              tooltip=bq.Tooltip(fields=["name"], labels=["cut"]))
        axes = [bq.Axis(scale=self._x, label="filter (sorted by rank)"),
                bq.Axis(scale=self._y, side="left", label="group")]
        self.figure = bq.Figure(marks=[self.map, self.cut], axes=axes, padding_y=0, padding_x=0,
                                fig_margin=dict(top=10, bottom=40, left=50, right=10),
                                layout=W.Layout(width="100%", height="300px"))
        self.figure.add_class("pe-heatmap")
        self._filters = np.full((1, 1), -1)
        self._layers: list[str] = []
        self._channels: dict[str, list[int]] = {}
        self._scores: dict[tuple[str, int], float] = {}
        self._table: pd.DataFrame | None = None
        super().__init__([self.order, self.figure])
        self.order.observe(lambda _: self._draw(), "value")

    def show(self, table: pd.DataFrame, layers: list[str]) -> None:
        """Draw a new RankTable; the cut overlay is cleared until the next `mark`."""
        self._table, self._layers, self._channels = table, list(layers), {}
        self._draw()

    def _draw(self) -> None:
        if self._table is None:
            return
        colour, self._filters = rank_matrix(self._table, self._layers, self.order.value)
        self.figure.axes[0].label = "filter (sorted by rank)" if self.order.value == "sorted" else "filter index"
        self.figure.layout.height = f"{max(160, ROW_PX * len(self._layers) + 60)}px"
        with self.map.hold_sync():
            self.map.x = np.arange(colour.shape[1])
            self.map.y = np.arange(colour.shape[0])
            self.map.color = colour
        self._scores = {}
        self._mark_cut(self._channels)

    def mark(self, channels: dict[str, list[int]]) -> None:
        """Overlay the filters a plan removes ({layer: indices})."""
        self._channels = channels
        self._mark_cut(channels)

    def _mark_cut(self, channels: dict[str, list[int]]) -> None:
        xs, ys, names = [], [], []
        rows = {name: r for r, name in enumerate(self._layers)}
        scores = self._score_lookup()
        for layer, indices in channels.items():
            r = rows.get(layer)
            if r is None or not len(indices):
                continue
            column_of = {int(f): c for c, f in enumerate(self._filters[r]) if f >= 0}
            for f in indices:
                xs.append(column_of[int(f)])
                ys.append(r)
                names.append(f"{layer} filter {int(f)}, score {scores.get((layer, int(f)), float('nan')):.3g}")
        with self.cut.hold_sync():
            self.cut.x = np.asarray(xs, dtype=float)
            self.cut.y = np.asarray(ys, dtype=float)
            self.cut.names = names
        self.cut.default_size = max(4, min(16, int(2400 / max(self._filters.shape[1], 1))))

    def _score_lookup(self) -> dict[tuple[str, int], float]:
        if not self._scores and self._table is not None:
            t = self._table
            self._scores = dict(zip(zip(t["layer"].tolist(), t["filter"].astype(int).tolist()), t["score"].tolist()))
        return self._scores
