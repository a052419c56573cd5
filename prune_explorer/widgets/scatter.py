"""Cost vs accuracy, one point per tracked iteration, with the Pareto frontier.

The x axis is a toggle: params, MACs or measured latency (the tracker's `params`, `macs`,
`latency_ms` columns); the frontier is recomputed for the axis shown, since a model that is
dominated on params may be on the frontier for MACs. Clicking a point asks the explorer to re-base
on that iteration.
"""
from __future__ import annotations

from typing import Callable

import bqplot as bq
import ipywidgets as W
import numpy as np
import pandas as pd

STATUS_COLOURS = {"completed": "#2ca02c", "running": "#1f77b4", "queued": "#777777", "failed": "#d62728",
                  "stopped": "#ff7f0e"}


AXES = {"params": ("params", ",.0f", ".2s"), "macs": ("MACs", ",.0f", ".2s"),
        "latency_ms": ("latency (ms)", ".2f", ".3r")}  # tracker column -> (label, tooltip format, tick format)


def pareto_frontier(params: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher accuracy, by cost."""
    order = np.lexsort((-accuracy, params))
    frontier, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            frontier.append(i)
            best = accuracy[i]
    return np.asarray(frontier, dtype=int)


def plotted(history: pd.DataFrame, axis: str = "params") -> pd.DataFrame:
    """History rows that have both the `axis` cost and an accuracy."""
    if history is None or history.empty or axis not in history.columns:
        return pd.DataFrame(columns=["iteration", axis, "accuracy", "status"])
    rows = history.dropna(subset=[axis, "accuracy"])
    return rows.reset_index(drop=True)


class HistoryScatter(W.VBox):
    def __init__(self, on_pick: Callable[[str], None]):
        self._on_pick = on_pick
        self.rows = plotted(None)
        self._history: pd.DataFrame | None = None
        self._base: str | None = None
        self.axis = W.ToggleButtons(options=[(label, key) for key, (label, _, _) in AXES.items()], value="params",
                                    tooltips=["parameters", "multiply-accumulates per example",
                                              "latency measured by the job"],
                                    style={"button_width": "90px"})
        self.axis.add_class("pe-scatter-axis")
        self._x = bq.LogScale()
        self._y = bq.LinearScale()
        self._c = bq.OrdinalColorScale(domain=list(STATUS_COLOURS), colors=list(STATUS_COLOURS.values()))
        self.points = bq.Scatter(x=[], y=[], color=[], names=[], display_names=False,
                                 scales={"x": self._x, "y": self._y, "color": self._c}, default_size=90,
                                 stroke="black", interactions={"click": "select"},
                                 tooltip=bq.Tooltip(fields=["name", "x", "y"], labels=["iteration", "params", "accuracy"],
                                                    formats=["", ",.0f", ".3f"]))
        self.points.on_element_click(self._clicked)
        self.frontier = bq.Lines(x=[], y=[], scales={"x": self._x, "y": self._y}, colors=["#999"],
                                 line_style="dashed", interpolation="step-after")
        self.base = bq.Scatter(x=[], y=[], scales={"x": self._x, "y": self._y}, marker="circle",
                               colors=["#e4002b"], fill=False, stroke="#e4002b", stroke_width=3, default_size=260)
        self._x_axis = bq.Axis(scale=self._x, label="params", tick_format=".2s")
        axes = [self._x_axis,
                bq.Axis(scale=self._y, label="accuracy", side="left", tick_format=".1%", label_offset="50px")]
        self.figure = bq.Figure(marks=[self.frontier, self.points, self.base], axes=axes,
                                title="iterations (click one to base the next decision on it)",
                                layout=W.Layout(width="100%", height="320px"))
        self.figure.add_class("pe-scatter")
        self.summary = W.HTML()
        self.summary.add_class("pe-history-count")
        super().__init__([self.axis, self.figure, self.summary])
        self.axis.observe(lambda _: self.show(self._history, self._base), "value")

    def show(self, history: pd.DataFrame, base: str | None) -> None:
        """Plot `history` against the chosen axis (kept, so the toggle redraws without the tracker)."""
        self._history, self._base = history, base
        axis = self.axis.value
        label, tooltip_format, tick_format = AXES[axis]
        rows = plotted(history, axis)
        self.rows = rows
        self._x_axis.label, self._x_axis.tick_format = label, tick_format
        self.points.tooltip.labels = ["iteration", label, "accuracy"]
        self.points.tooltip.formats = ["", tooltip_format, ".3f"]
        x = rows[axis].to_numpy(dtype=float)
        y = rows["accuracy"].to_numpy(dtype=float)
        front = pareto_frontier(x, y) if len(rows) else np.asarray([], dtype=int)
        with self.points.hold_sync():
            self.points.x, self.points.y = x, y
            self.points.color = rows["status"].fillna("completed").astype(str).tolist()
            self.points.names = rows["iteration"].astype(str).tolist()
        with self.frontier.hold_sync():
            self.frontier.x, self.frontier.y = x[front], y[front]
        self.summary.value = (f"<span data-count='{len(rows)}' data-axis='{axis}'>{len(rows)} iterations plotted "
                              f"by {label}, {len(front)} on the Pareto frontier</span>")
        chosen = rows[rows["iteration"] == base]
        with self.base.hold_sync():
            self.base.x = chosen[axis].to_numpy(dtype=float)
            self.base.y = chosen["accuracy"].to_numpy(dtype=float)

    def _clicked(self, _mark, event) -> None:
        index = (event or {}).get("data", {}).get("index")
        if index is not None and 0 <= int(index) < len(self.rows):
            self._on_pick(str(self.rows["iteration"].iloc[int(index)]))
