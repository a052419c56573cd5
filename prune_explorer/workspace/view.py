"""The panel's first view on disk: what it draws before torch is imported.

Importing torch and torchvision, loading a model and reading its trial take seconds after a kernel
starts; the heatmap, the layer table, the scatter and the lineage need none of it. Each time an
iteration is ranked (a `PruningSession`, the end of a headless run) its view is written (`build`:
groups with their widths and per-group costs, every filter's rank, the model's totals, the layers
in no channel group) into the iteration's view file, and each time the history is read the
workspace's history view (the tracked rows and their lineage); the file names are the layout's
(`Layout.view_path`, `Layout.history_view_path`). The panel draws both at once and loads torch
behind them. A view is used only while it still describes the files it was made from
(`fingerprint`) and was ranked as asked; anything else reads as no view. This module imports only
the standard library (`build` reads the objects it is handed, and the ranking's names on use).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .layout import METRICS, MODEL_SPEC, MODEL_WEIGHTS, write_text

FORMAT = 1


def build(graph: Any, costs: Any, table: Any, *, asked: dict[str, Any], criterion: str,
          normalization: str | None, problem: str = "", example_inputs: Any = None) -> dict[str, Any]:
    """What the panel draws, JSON-able, from a ranked model (its ChannelGraph, CostModel and RankTable):
    the prunable groups with their widths and the params / MACs their channels pass through, every
    filter's rank, the totals, the groups that cannot be pruned and the layers in no group, each with
    the reason. `asked`: the criterion and normalisation asked for, before any fallback."""
    from ..signals.ranking import CRITERIA, NORMALIZATIONS

    groups, carried = graph.prunable(), costs.per_group()
    row_of = {g.id: r for r, g in enumerate(groups)}
    unassigned = getattr(graph, "unassigned", None)  # conv/linear layers in no group -> why
    return {
        "asked": dict(asked), "criterion": criterion, "normalization": normalization,
        "scored_as": str(table["normalization"].iloc[0]) if len(table) else None, "problem": problem,
        "input_shape": list(example_inputs.shape[1:]) if hasattr(example_inputs, "shape") else None,
        "before": {"params": costs.before.params, "macs": costs.before.macs},
        "groups": [{"id": g.id, "name": g.name, "kind": g.kind, "size": g.size,
                    "params": carried[g.id].params if g.id in carried else 0,
                    "macs": carried[g.id].macs if g.id in carried else 0} for g in groups],
        "ranks": {"row": [row_of.get(int(g), -1) for g in table["group"]],
                  "filter": table["filter"].astype(int).tolist(),
                  "score": table["score"].astype(float).tolist(),
                  "normalized": table["normalized"].astype(float).tolist()},
        "not_prunable": [[g.name, g.reason or ""] for g in graph.groups if not g.prunable],
        "unassigned": None if unassigned is None else [[k, v] for k, v in dict(unassigned).items()],
        "criteria": sorted(CRITERIA), "normalizations": list(NORMALIZATIONS),
    }


def fingerprint(directory: Path) -> dict[str, list[int]]:
    """Size and mtime of the files a view is made from (the model's weights, its job's metrics)."""
    found = {}
    for name in (MODEL_WEIGHTS, MODEL_SPEC, METRICS):
        try:
            stat = (directory / name).stat()
        except FileNotFoundError:
            continue
        found[name] = [stat.st_size, stat.st_mtime_ns]
    return found


def write_view(space: Any, name: str, data: dict[str, Any]) -> Path:
    """Write iteration `name`'s view (atomic), stamped with the fingerprint of its files."""
    record = {**data, "format": FORMAT, "iteration": name,
              "fingerprint": fingerprint(space.iteration_dir(name))}
    return write_text(space.view_path(name), json.dumps(record, separators=(",", ":")))


def read_view(space: Any, name: str, criterion: str | None = None,
              normalization: str | None = None) -> dict[str, Any] | None:
    """Iteration `name`'s view, or None when there is none, it is stale (its model or metrics
    changed since) or it was ranked by another criterion / normalisation than asked."""
    directory = space.iteration_dir(name)
    try:
        record = json.loads(space.view_path(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if record.get("format") != FORMAT or record.get("fingerprint") != fingerprint(directory):
        return None
    if criterion is not None and record.get("asked", {}).get("criterion") != criterion:
        return None
    if record.get("asked", {}).get("normalization") != normalization:
        return None
    return record


def history_records(history: Any) -> list[dict[str, Any]]:
    """A tracker's history DataFrame as JSON-able rows (NaN and NA as None, times as ISO text)."""
    if history is None:
        return []
    rows = []
    for row in history.to_dict("records"):
        rows.append({key: _plain(value) for key, value in row.items()})
    return rows


def write_history(space: Any, history: Any) -> Path:
    rows = history_records(history)
    return write_text(space.history_view_path, json.dumps({"format": FORMAT, "rows": rows}, separators=(",", ":")))


def read_history(space: Any) -> list[dict[str, Any]] | None:
    """The last history the workspace saw (None when never written)."""
    try:
        record = json.loads(space.history_view_path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record.get("rows") if record.get("format") == FORMAT else None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "isoformat"):  # a Timestamp or datetime; NaT is not equal to itself
        return None if value != value else value.isoformat()
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return None if str(value) == "<NA>" else str(value)
