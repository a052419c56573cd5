"""Lineage: the tree of iterations (parent → children) from the tracked history, and a two-way compare.

Each node is a button (click: re-base on it); the current base is marked. Compare puts two
iterations side by side: per-layer widths read from their model.json (no weights loaded), and the
params, MACs and accuracy the tracker recorded.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable

import ipywidgets as W

from ..session.compare import number as _number  # torch-free
from .jobs_panel import COLOURS


def records(history) -> list[dict[str, Any]]:
    """History rows as dicts (a tracker's DataFrame, or the rows of the workspace's history view)."""
    if history is None:
        return []
    return history.to_dict("records") if hasattr(history, "to_dict") else list(history)


def _parent(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def tree(history) -> list[tuple[str, int, str]]:
    """(iteration, depth, prefix) in depth-first order; roots are rows whose parent is not in the history."""
    rows = records(history)
    parents = {str(r["iteration"]): _parent(r.get("parent")) for r in rows}
    children: dict[str | None, list[str]] = {}
    for name in (str(r["iteration"]) for r in rows):
        parent = parents[name] if parents[name] in parents else None
        children.setdefault(parent, []).append(name)
    shown: list[tuple[str, int, str]] = []

    def walk(name: str, depth: int, lead: str, last: bool) -> None:
        shown.append((name, depth, lead + ("" if depth == 0 else ("└─ " if last else "├─ "))))
        kids = sorted(children.get(name, []))
        for i, kid in enumerate(kids):
            walk(kid, depth + 1, lead + ("" if depth == 0 else ("   " if last else "│  ")), i == len(kids) - 1)

    for root in sorted(children.get(None, [])):
        walk(root, 0, "", True)
    return shown


def _human(value: float | None) -> str:
    if value is None:
        return "–"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.3g}"


def comparison_html(result: dict[str, Any]) -> str:
    a, b = html.escape(result["a"]), html.escape(result["b"])
    head = f"<tr><th></th><th>{a}</th><th>{b}</th><th>change</th></tr>"

    def change(x, y, percent=True):
        if x is None or y is None:
            return ""
        if percent and x:
            return f"{100.0 * (y - x) / x:+.1f}%"
        return f"{y - x:+.3f}" if not percent else f"{y - x:+g}"

    totals = []
    for key, label in (("params", "params"), ("macs", "MACs"), ("cut_accuracy", "accuracy after the cut"),
                       ("accuracy", "accuracy fine-tuned")):
        if key not in result["totals"]:
            continue
        x, y = result["totals"][key]["a"], result["totals"][key]["b"]
        shown = (lambda v: "–" if v is None else f"{v:.3f}") if "accuracy" in key else _human
        totals.append(f"<tr class='pe-compare-total' data-key='{key}'><td><b>{label}</b></td><td>{shown(x)}</td>"
                      f"<td>{shown(y)}</td><td>{change(x, y, 'accuracy' not in key)}</td></tr>")
    layers = []
    for row in result["layers"]:
        x, y = row["a"], row["b"]
        differs = x != y
        layers.append(f"<tr class='pe-compare-layer{' pe-compare-changed' if differs else ''}' "
                      f"data-layer='{html.escape(row['layer'])}'><td style='word-break:break-all'>"
                      f"<code>{html.escape(row['layer'])}</code></td>"
                      f"<td>{'–' if x is None else x}</td><td>{'–' if y is None else y}</td>"
                      f"<td>{change(x, y, False) if differs else ''}</td></tr>")
    return (f"<div>{result['changed']} of {len(result['layers'])} layers differ in width</div>"
            f"<div class='pe-compare-scroll' style='max-height:260px;max-width:100%;overflow:auto'>"
            f"<table style='font-size:12px;width:100%;table-layout:fixed;border-collapse:collapse'>"
            f"<colgroup><col style='width:46%'><col><col><col></colgroup>{head}{''.join(totals)}"
            f"{''.join(layers)}</table></div>")


class LineageTree(W.VBox):
    """The iteration tree; `on_pick(iteration)` on a node click, `on_compare(a, b)` from the compare row."""

    def __init__(self, on_pick: Callable[[str], None], on_compare: Callable[[str, str], None]):
        self._on_pick = on_pick
        self.nodes: dict[str, W.Button] = {}
        self.nodes_box = W.VBox(layout=W.Layout(max_height="300px", overflow="auto"))
        self.nodes_box.add_class("pe-lineage-nodes")
        self.compare_a = W.Dropdown(description="compare", layout=W.Layout(width="190px"))
        self.compare_a.add_class("pe-compare-a")
        self.compare_b = W.Dropdown(description="with", layout=W.Layout(width="170px"))
        self.compare_b.add_class("pe-compare-b")
        self.compare_button = W.Button(description="compare", icon="columns", layout=W.Layout(width="100px"))
        self.compare_button.add_class("pe-compare")
        self.compare_button.on_click(lambda _: on_compare(self.compare_a.value, self.compare_b.value))
        self.result = W.HTML()
        self.result.add_class("pe-compare-result")
        super().__init__([self.nodes_box, W.HBox([self.compare_a, self.compare_b, self.compare_button],
                                                 layout=W.Layout(flex_flow="row wrap")), self.result])
        self.add_class("pe-lineage")

    def show(self, history, base: str | None) -> None:
        rows = {str(r["iteration"]): r for r in records(history)}
        shown = []
        for name, depth, prefix in tree(history):
            row = rows[name]
            accuracy, params = _number(row.get("accuracy")), _number(row.get("params"))
            status = str(row.get("status") or "")
            label = (f"{prefix}{'● ' if name == base else ''}{name}  {_human(params)} · "
                     f"{'–' if accuracy is None else f'{accuracy:.3f}'}  {status}")
            button = self.nodes.get(name)
            if button is None:
                button = self.nodes[name] = W.Button(layout=W.Layout(width="auto", height="24px"))
                button.add_class("pe-lineage-node")
                button.on_click(lambda _, n=name: self._on_pick(n))
            button.description = label
            button.tooltip = f"{name}: click to base the next cut on it"
            button.style.button_color = "#ffe9a8" if name == base else None
            button.style.text_color = COLOURS.get(status, "#000")
            (button.add_class if name == base else button.remove_class)("pe-lineage-base")
            shown.append(button)
        self.nodes_box.children = shown or [W.HTML("<i>no tracked iterations yet</i>")]
        options = [name for name, _, _ in tree(history)]
        for dropdown, default in ((self.compare_a, options[0] if options else None),
                                  (self.compare_b, options[-1] if options else None)):
            keep = dropdown.value if dropdown.value in options else default
            dropdown.options = options
            dropdown.value = keep

    def show_comparison(self, result: dict[str, Any] | None, error: str = "") -> None:
        self.result.value = (f"<div style='color:#b00020'>{html.escape(error)}</div>" if error
                             else comparison_html(result) if result else "")
