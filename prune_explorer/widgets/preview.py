"""Before → after numbers for the plan on the table: params and MACs at once, latency a bit later."""
from __future__ import annotations

import html

import ipywidgets as W


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "…"
    if unit == "ms":
        return f"{value:.2f} ms"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{suffix}"
    return f"{value:,.0f}"


def _ratio(before, after) -> str:
    if not before or after is None:
        return ""
    return f"{100.0 * (after - before) / before:+.1f}%"


class Preview(W.VBox):
    """Renders the explorer's `preview` dict; `.table` is the HTML a test or screenshot reads."""

    def __init__(self):
        self.table = W.HTML()
        self.table.add_class("pe-preview")
        self.changes = W.HTML()
        self.changes.add_class("pe-applied")
        super().__init__([self.table, self.changes])

    def show(self, numbers: dict, ready: bool = True) -> None:
        rows = [("params", "params", ""), ("MACs", "macs", ""), ("PyTorch CPU", "latency_ms", "ms")]
        if "ort_latency_ms_before" in numbers:  # when the explorer times ONNX Runtime too
            rows.append(("ONNX Runtime CPU", "ort_latency_ms", "ms"))
        waiting = "<td colspan='3' class='pe-waiting'><i>once the model has loaded</i></td>"
        body = "".join(
            f"<tr data-key='{key}'><td>{label}</td>" + (waiting if not ready else
                                                         f"<td>{_fmt(numbers.get(key + '_before'), unit)}</td>"
                                                         f"<td>{_fmt(numbers.get(key + '_after'), unit)}</td>"
                                                         f"<td>{_ratio(numbers.get(key + '_before'), numbers.get(key + '_after'))}</td>")
            + "</tr>" for label, key, unit in rows
        )
        removed = numbers.get("filters_removed", 0)
        self.table.value = (f"<table class='pe-preview-table'><tr><th></th><th>before</th><th>after</th><th></th></tr>"
                            f"{body}</table><div>filters to cut: <b class='pe-removed'>{removed}</b></div>")

    def show_applied(self, applied: dict) -> None:
        """What Apply saved, and its accuracy right after the cut once the "cut" worker measured it."""
        if not applied:
            self.changes.value = ""
            return
        layers = "".join(f"<li><code>{html.escape(k)}</code>: {v[0]} → {v[1]}</li>" for k, v in applied["widths"].items())
        if applied.get("cut_accuracy") is not None:
            cut = (f"accuracy right after the cut (no fine-tuning, {applied.get('cut_examples', '?')} validation "
                   f"images): <b class='pe-cut-accuracy' data-value='{applied['cut_accuracy']}'>"
                   f"{100 * applied['cut_accuracy']:.1f}%</b>")
        elif applied.get("cut_note"):
            cut = f"<span class='pe-cut-note'>{html.escape(applied['cut_note'])}</span>"
        else:
            cut = "<span class='pe-cut-pending'>⏳ measuring the accuracy right after the cut…</span>"
        self.changes.value = (f"<div class='pe-applied-line' data-applies='{applied.get('applies', 0)}'>applied: "
                              f"{applied['filters_removed']} filters removed, "
                              f"params {_fmt(applied['params_before'])} → {_fmt(applied['params_after'])}, "
                              f"saved to <code style='word-break:break-all'>{html.escape(applied['model_dir'])}</code>"
                              f"</div><div>{cut}</div><ul>{layers}</ul>")
