"""What the panel cannot cut, and why: channel groups the graph marked not prunable, and the
convolutions and linears that are in no channel group at all (the graph's `unassigned`), each with
its reason — so nothing a user expected to prune vanishes from the table without a word."""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as W


class NotPrunable(W.VBox):
    """A folded list: a toggle naming the counts, the reasons below it."""

    def __init__(self):
        self.toggle = W.ToggleButton(value=False, description="not prunable", icon="chevron-down",
                                     layout=W.Layout(width="auto", height="26px"))
        self.toggle.add_class("pe-not-prunable-toggle")
        self.body = W.HTML()
        self.body.add_class("pe-not-prunable")
        self.toggle.observe(lambda change: self._fold(), "value")
        self._html = ""
        super().__init__([self.toggle, self.body])

    def show(self, view: dict[str, Any]) -> None:
        groups = view.get("not_prunable") or []
        layers = view.get("unassigned")
        rows = [f"<tr data-kind='group'><td><code>{html.escape(name)}</code></td><td>group not prunable</td>"
                f"<td>{html.escape(reason)}</td></tr>" for name, reason in groups]
        rows += [f"<tr data-kind='unassigned'><td><code>{html.escape(name)}</code></td><td>in no channel group</td>"
                 f"<td>{html.escape(reason)}</td></tr>" for name, reason in layers or []]
        counted = _count(len(groups), "group") + " not prunable" + (
            f", {_count(len(layers), 'conv/linear layer')} in no group" if layers is not None else "")
        note = "" if layers is not None else ("<div><small>this graph does not report layers outside its channel "
                                              "groups</small></div>")
        self._html = (f"<div style='max-height:200px;overflow:auto'><table style='font-size:12px'>{''.join(rows)}"
                      f"</table></div>{note}")
        self.toggle.description = counted
        self.toggle.tooltip = "show why each of them cannot be cut"
        self._fold()

    def _fold(self) -> None:
        self.body.value = self._html if self.toggle.value else ""
        self.toggle.icon = "chevron-up" if self.toggle.value else "chevron-down"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
