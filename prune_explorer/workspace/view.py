"""The panel's first view on disk: what it draws before torch is imported.

Importing torch and torchvision, loading a model and reading its trial take seconds after a kernel
starts; the heatmap, the layer table, the scatter and the lineage need none of it. Each time an
iteration is ranked the session writes `iterations/<name>/view.json` (groups with their widths and
per-group costs, every filter's rank, the model's totals, the layers in no channel group), and each
time the history is read it writes `history.json` (the tracked rows and their lineage). The panel
draws both at once and loads torch behind them. A view is used only while it still describes the
files it was made from (`fingerprint`) and was ranked as asked; anything else reads as no view.
This module imports only the standard library.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

VIEW_FILE = "view.json"        # in iterations/<name>/
HISTORY_FILE = "history.json"  # in WORKSPACE/
FORMAT = 1


def fingerprint(directory: Path) -> dict[str, list[int]]:
    """Size and mtime of the files a view is made from (the model's weights, its job's metrics)."""
    found = {}
    for name in ("model.safetensors", "model.json", "metrics.json"):
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
    return space.write_file(f"iterations/{name}/{VIEW_FILE}",
                            lambda path: Path(path).write_text(json.dumps(record, separators=(",", ":"))))


def read_view(space: Any, name: str, criterion: str | None = None,
              normalization: str | None = None) -> dict[str, Any] | None:
    """Iteration `name`'s view, or None when there is none, it is stale (its model or metrics
    changed since) or it was ranked by another criterion / normalisation than asked."""
    directory = space.iteration_dir(name)
    try:
        record = json.loads((directory / VIEW_FILE).read_text())
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
    return space.write_file(HISTORY_FILE, lambda path: Path(path).write_text(
        json.dumps({"format": FORMAT, "rows": rows}, separators=(",", ":"))))


def read_history(space: Any) -> list[dict[str, Any]] | None:
    """The last history the workspace saw (None when never written)."""
    try:
        record = json.loads((space.root / HISTORY_FILE).read_text())
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
