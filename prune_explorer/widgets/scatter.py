"""Cost vs accuracy, per tracked iteration: the accuracy right after its cut and after its fine-tune,
joined, with the Pareto frontier of the fine-tuned points.

The x axis is a toggle: params, MACs or measured latency (the history's `params`, `macs`,
`latency_ms`); the frontier is recomputed for the axis shown. Each iteration with a measured cut
accuracy gets a hollow mark below its fine-tuned dot and a line between them (the recovery); an
applied cut not yet fine-tuned shows its hollow mark alone. The plot is an anywidget SVG
(scatter.js) drawn from rows and ticks computed here — no bqplot, so the first view needs neither
it nor pandas — and the ticks are chosen so their labels never repeat (`ticks`). A click on a dot
re-bases on that iteration.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import anywidget
import ipywidgets as W
import numpy as np
from traitlets import Bool, Dict, Int, List, Unicode

from ..session.compare import number as _number  # torch-free

HERE = Path(__file__).parent
STATUS_COLOURS = {"completed": "#2ca02c", "running": "#1f77b4", "queued": "#777777", "failed": "#d62728",
                  "stopped": "#ff7f0e", "applied": "#9467bd"}
AXES = {"params": ("params", "parameters (count)", ""), "macs": ("MACs", "MACs (per image)", ""),
        "latency_ms": ("latency", "latency (ms)", "ms")}  # history column -> (name, axis label with unit, tick unit)
SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def pareto_frontier(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower cost and higher accuracy, by cost."""
    order = np.lexsort((-accuracy, cost))
    frontier, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            frontier.append(i)
            best = accuracy[i]
    return np.asarray(frontier, dtype=int)


def _nice(lo: float, hi: float, count: int) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) giving closest to `count` ticks in [lo, hi]."""
    power = 10.0 ** math.floor(math.log10((hi - lo) / max(count - 1, 1)))
    steps = [m * power * f for f in (0.1, 1.0, 10.0) for m in (1, 2, 2.5, 5)]
    within = lambda step: math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1  # noqa: E731
    return min(steps, key=lambda step: (abs(within(step) - count), -step))


def _label(value: float, decimals: int, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.{decimals}f}%"
    if unit == "ms":
        return f"{value:.{decimals}f}"
    scale, suffix = next(((s, p) for s, p in SI if abs(value) >= s), (1.0, ""))
    return f"{value / scale:.{decimals}f}{suffix}"


def ticks(lo: float, hi: float, unit: str = "", count: int = 5, log: bool = False) -> list[tuple[float, str]]:
    """About `count` round tick values in [lo, hi] and their labels, with just enough digits that no
    two labels are the same (9.5M 10.0M 10.5M 11.0M, not 10M 10M 11M). `unit`: "%" (fractions shown
    as percent), "ms", or "" (counts, with k/M/G). A log axis spanning more than a decade ticks at
    1-2-5 of each decade."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = (lo - abs(lo) * 0.05 - 1e-9, hi + abs(hi) * 0.05 + 1e-9)
    if log and lo > 0 and hi / lo > 10:
        values = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                  for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        step = min(b - a for a, b in zip(values, values[1:])) if len(values) > 1 else values[0] if values else 1.0
    else:
        step = _nice(lo, hi, count)
        first = math.ceil(lo / step - 1e-9)
        values = [v * step for v in range(first, int(math.floor(hi / step + 1e-9)) + 1)]
    if not values:
        return []
    shown = abs(step * (100 if unit == "%" else 1))
    if unit not in ("%", "ms"):
        shown /= next((s for s, _ in SI if max(abs(v) for v in values) >= s), 1.0)
    decimals = max(0, -math.floor(math.log10(shown) + 1e-9)) if shown > 0 else 0
    while True:
        labels = [_label(v, decimals, unit) for v in values]
        if len(set(labels)) == len(labels) or decimals > 9:
            return list(zip(values, labels))
        decimals += 1


def plotted(history: Iterable[dict[str, Any]] | None, axis: str = "params") -> list[dict[str, Any]]:
    """Rows that have the `axis` cost and an accuracy after the cut, after the fine-tune, or both."""
    rows = []
    for row in history or ():
        x, tuned, cut = _number(row.get(axis)), _number(row.get("accuracy")), _number(row.get("cut_accuracy"))
        if x is not None and (tuned is not None or cut is not None):
            rows.append({"iteration": str(row["iteration"]), "x": x, "y": tuned, "cut": cut,
                         "status": str(row.get("status") or "completed")})
    return rows


class ScatterCanvas(anywidget.AnyWidget):
    """The browser half (scatter.js); every trait is what it draws."""

    _esm = HERE / "scatter.js"
    _css = HERE / "scatter.css"
    points = List().tag(sync=True)       # [{iteration, x, y, cut, status}]: y after the fine-tune, cut right after the cut
    frontier = List(Int()).tag(sync=True)  # indices into points, by cost
    base = Unicode("").tag(sync=True)     # the iteration the next cut starts from (ringed)
    x_domain = List().tag(sync=True)
    y_domain = List().tag(sync=True)
    x_log = Bool(True).tag(sync=True)
    x_ticks = List().tag(sync=True)       # [[value, label]]
    y_ticks = List().tag(sync=True)
    x_label = Unicode("").tag(sync=True)
    y_label = Unicode("").tag(sync=True)
    colours = Dict(STATUS_COLOURS).tag(sync=True)
    picked = Unicode("").tag(sync=True)   # the iteration whose dot was clicked (reset after handling)


class HistoryScatter(W.VBox):
    def __init__(self, on_pick: Callable[[str], None]):
        self._on_pick = on_pick
        self.rows: list[dict[str, Any]] = []
        self._history: list[dict[str, Any]] = []
        self._base: str | None = None
        self.axis = W.ToggleButtons(options=[("params", "params"), ("MACs", "macs"), ("latency", "latency_ms")],
                                    value="params", style={"button_width": "90px"},
                                    tooltips=["parameters", "multiply-accumulates per example", "latency measured by the job"])
        self.axis.add_class("pe-scatter-axis")
        self.canvas = ScatterCanvas(layout=W.Layout(width="100%", height="320px"))
        self.canvas.add_class("pe-scatter")
        self.canvas.observe(self._clicked, "picked")
        self.summary = W.HTML()
        self.summary.add_class("pe-history-count")
        legend = W.HTML("<small><span style='color:#555'>● after its fine-tune &nbsp; ○ right after the cut "
                        "(no fine-tuning) &nbsp; │ what the fine-tune recovered &nbsp; ◯ base · dashed: Pareto "
                        "frontier</span></small>")
        super().__init__([self.axis, self.canvas, legend, self.summary])
        self.axis.observe(lambda _: self.show(self._history, self._base), "value")

    def show(self, history: Iterable[dict[str, Any]] | None, base: str | None) -> None:
        """Plot history rows (dicts) against the chosen axis (kept, so the toggle redraws without the tracker)."""
        self._history, self._base = list(history or ()), base
        axis = self.axis.value
        name, label, unit = AXES[axis]
        rows = self.rows = plotted(self._history, axis)
        xs = np.asarray([r["x"] for r in rows], dtype=float)
        tuned = [i for i, r in enumerate(rows) if r["y"] is not None]
        front = pareto_frontier(xs[tuned], np.asarray([rows[i]["y"] for i in tuned])) if tuned else []
        ys = [v for r in rows for v in (r["y"], r["cut"]) if v is not None]
        x_lo, x_hi = (float(xs.min()), float(xs.max())) if len(xs) else (1.0, 10.0)
        y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        x_lo, x_hi = _padded(x_lo, x_hi, log=True)
        y_lo, y_hi = _padded(y_lo, y_hi, log=False)
        c = self.canvas
        with c.hold_sync():
            c.points, c.frontier, c.base = rows, [int(tuned[i]) for i in front], base or ""
            c.x_domain, c.y_domain, c.x_log = [x_lo, x_hi], [y_lo, y_hi], x_lo > 0
            c.x_ticks = [list(t) for t in ticks(x_lo, x_hi, unit, log=x_lo > 0)]
            c.y_ticks = [list(t) for t in ticks(y_lo, y_hi, "%")]
            c.x_label, c.y_label = label, "validation accuracy (%)"
        plural = "" if len(tuned) == 1 else "s"
        self.summary.value = (f"<span data-count='{len(tuned)}' data-axis='{axis}' data-cut='"
                              f"{sum(r['cut'] is not None for r in rows)}'>{len(tuned)} iteration{plural} plotted by "
                              f"{name}, {len(front)} on the Pareto frontier</span>")

    @property
    def x(self) -> list[float]:
        return [r["x"] for r in self.rows if r["y"] is not None]

    @property
    def y(self) -> list[float]:
        return [r["y"] for r in self.rows if r["y"] is not None]

    @property
    def names(self) -> list[str]:
        return [r["iteration"] for r in self.rows if r["y"] is not None]

    def _clicked(self, change) -> None:
        if change["new"]:
            self.canvas.picked = ""
            if any(r["iteration"] == change["new"] for r in self.rows):
                self._on_pick(change["new"])


def _padded(lo: float, hi: float, log: bool) -> tuple[float, float]:
    """The plotted range: beyond the data each side (multiplicative on a log axis), so no mark sits on an axis."""
    if log and lo > 0:
        if hi <= lo:
            return lo / 1.1, hi * 1.1
        pad = (hi / lo) ** 0.05
        return lo / pad, hi * pad
    span = hi - lo if hi > lo else max(abs(hi), 1e-3) * 0.1
    return lo - 0.08 * span, hi + 0.08 * span
