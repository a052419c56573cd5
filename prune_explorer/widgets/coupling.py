"""Coupling view: which modules a cut of one layer changes, and how each one's tensors change shape.

A channel group's members come from the channel graph (producers, consumers, every member layer);
the shapes after come from the real pruned model (the surgery the preview runs anyway), so what
this view says is what Apply will do — no second set of slicing rules to drift from surgery's.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

NORM_TYPES = ("BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "SyncBatchNorm")
ROLE_ORDER = {"producer": 0, "residual partner": 1, "norm": 2, "consumer": 3, "per-channel": 4}


@dataclass(frozen=True)
class Member:
    """One module of a channel group: how it relates to the group and its tensors' shapes now."""

    module: str
    roles: tuple[str, ...]
    kind: str                                   # the module's class name
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (tensor name, shape), parameters then norm buffers


def tensor_shapes(module: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The module's own parameters' shapes, and a norm's running statistics when it has no affine."""
    own = [(name, tuple(p.shape)) for name, p in module.named_parameters(recurse=False)]
    if not own:
        own = [(name, tuple(b.shape)) for name, b in module.named_buffers(recurse=False) if b.dim() > 0]
    return tuple(own)


def _roles(name: str, kind: str, group: Any) -> tuple[str, ...]:
    if kind.startswith(NORM_TYPES):  # a norm's affine channels count among producers; it is the group's norm
        return ("norm",)
    roles = []
    if name in group.producers:
        residual_partner = group.kind == "residual" and name != group.name
        roles.append("residual partner" if residual_partner else "producer")
    if name in group.consumers:
        roles.append("consumer")
    if not roles:
        roles.append("per-channel")
    return tuple(roles)


def members(model: Any, group: Any) -> list[Member]:
    """Every module of `group` that holds tensors, with its roles and their shapes now, producers first."""
    modules = dict(model.named_modules())
    found = []
    for name in dict.fromkeys([*group.producers, *group.layers, *group.consumers]):
        module = modules.get(name)
        if module is None:
            continue
        shapes = tensor_shapes(module)
        if not shapes:  # activations, pooling: channels pass through, nothing to slice
            continue
        kind = type(module).__name__
        found.append(Member(name, _roles(name, kind, group), kind, shapes))
    return sorted(found, key=lambda m: ROLE_ORDER[m.roles[0]])


def shapes_after(pruned: Any, names: list[str]) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """The same modules' tensor shapes in a pruned model."""
    modules = dict(pruned.named_modules())
    return {name: tensor_shapes(modules[name]) for name in names if name in modules}


def describe(group: Any, found: list[Member], after: dict | None, removed: int) -> dict[str, Any]:
    """The JSON-able coupling summary the panel keeps in its `coupling` trait."""
    rows = []
    for m in found:
        now = dict(m.shapes)
        then = dict(after[m.module]) if after is not None and m.module in after else None
        rows.append({"module": m.module, "roles": list(m.roles), "type": m.kind,
                     "before": {k: list(v) for k, v in now.items()},
                     "after": None if then is None else {k: list(v) for k, v in then.items()}})
    return {"layer": group.name, "group": group.id, "kind": group.kind, "size": group.size, "removed": removed,
            "prunable": group.prunable, "reason": group.reason, "members": rows}


def _same_shapes(shapes: dict[str, list[int]]) -> list[tuple[list[str], list[int]]]:
    """Tensors of one shape on one line (a norm's weight/bias)."""
    lines: list[tuple[list[str], list[int]]] = []
    for name, shape in shapes.items():
        for names, seen in lines:
            if seen == shape:
                names.append(name)
                break
        else:
            lines.append(([name], shape))
    return lines


def _shape(shape: list[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "scalar"


class CouplingView(W.VBox):
    """Renders the panel's `coupling` dict as a table: role, module, type, shapes before → after."""

    def __init__(self):
        self.title = W.HTML("<i>select a layer (click its heatmap row or its name in the table)</i>")
        self.table = W.HTML(layout=W.Layout(width="100%"))  # as wide as its column: the table wraps inside
        self.table.add_class("pe-coupling-table")
        super().__init__([self.title, self.table])
        self.add_class("pe-coupling")

    def show(self, coupling: dict[str, Any]) -> None:
        if not coupling:
            self.table.value = ""
            return
        removed = coupling["removed"]
        cutting = (f"cutting <b class='pe-coupling-removed'>{removed}</b> of {coupling['size']} channels changes"
                   if removed else f"no cut planned; a cut of its {coupling['size']} channels would change")
        self.title.value = (f"<b><code>{html.escape(coupling['layer'])}</code></b> — group {coupling['group']} "
                            f"({html.escape(coupling['kind'])}): {cutting} {len(coupling['members'])} modules")
        body = []
        for row in coupling["members"]:
            cells = []
            for tensors, before in _same_shapes(row["before"]):
                after = (row["after"] or {}).get(tensors[0])
                if row["after"] is None and removed:
                    change = "<span class='pe-coupling-pending'>…</span>"
                elif after is None or after == before:
                    change = "="
                else:
                    change = f"<b>{_shape(after)}</b>"
                cells.append(f"{html.escape('/'.join(tensors))} {_shape(before)} → {change}")
            changed = row["after"] is not None and row["after"] != row["before"]
            body.append(f"<tr class='pe-coupling-member{' pe-coupling-changed' if changed else ''}' "
                        f"data-module='{html.escape(row['module'])}'>"
                        f"<td>{html.escape(' + '.join(row['roles']))}</td><td><code>{html.escape(row['module'])}</code></td>"
                        f"<td>{html.escape(row['type'])}</td><td>{'; '.join(cells)}</td></tr>")
        self.table.value = ("<div style='max-height:240px;overflow:auto'><table style='font-size:11px;line-height:1.3;"
                            "width:100%;table-layout:fixed;overflow-wrap:anywhere'><colgroup><col style='width:18%'>"
                            "<col style='width:26%'><col style='width:18%'><col></colgroup><tr><th>role</th>"
                            f"<th>module</th><th>type</th><th>shape before → after</th></tr>{''.join(body)}</table></div>")
