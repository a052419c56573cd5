"""Two iterations side by side: per-layer widths read from their model.json (no weights loaded), and
the params, MACs and accuracy the tracker recorded for each."""
from __future__ import annotations

import math
from typing import Any


def layer_widths(spec: dict[str, Any]) -> dict[str, int]:
    """{module: output width} of every conv / linear / norm layer a model.json records."""
    widths = {}
    for name, record in spec.get("modules", {}).items():
        for key in ("out_channels", "out_features", "num_features", "num_channels"):
            if key in record:
                widths[name] = int(record[key])
                break
    return widths


def number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def comparison(a: str, b: str, specs: dict[str, dict], history) -> dict[str, Any]:
    """Per-layer widths and the tracked numbers of iterations `a` and `b` (JSON-able)."""
    wa, wb = layer_widths(specs[a]), layer_widths(specs[b])
    layers = [{"layer": name, "a": wa.get(name), "b": wb.get(name)} for name in dict.fromkeys([*wa, *wb])]
    rows = {str(r["iteration"]): r for r in history.to_dict("records")} if history is not None else {}
    totals = {key: {"a": number(rows.get(a, {}).get(key)), "b": number(rows.get(b, {}).get(key))}
              for key in ("params", "macs", "cut_accuracy", "accuracy")}
    return {"a": a, "b": b, "layers": layers, "totals": totals,
            "changed": sum(1 for row in layers if row["a"] != row["b"])}
