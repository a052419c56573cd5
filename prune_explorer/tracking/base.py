"""What every iteration tracker does: the contract the queue, the loop and the panel rely on.

One tracked run per pruning iteration; recording an iteration again (a later job of it) replaces
what `history()` shows for it. `history()` is one DataFrame with HISTORY_COLUMNS whatever the
store. The contract test suite (tests/test_tracker_contract.py) runs against every tracker in
`TRACKERS`, each behind a real JobQueue.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Protocol, runtime_checkable

import pandas as pd

HISTORY_COLUMNS = [
    "iteration", "parent", "status", "criterion", "filters_removed", "params", "macs", "latency_ms",
    "accuracy", "model_dir", "trial_dir", "job_id", "backend", "started", "run_id", "script",
]


def history_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The history DataFrame every tracker returns: HISTORY_COLUMNS with stable dtypes."""
    frame = pd.DataFrame(list(rows), columns=HISTORY_COLUMNS)
    for column in ("filters_removed", "params", "macs"):
        frame[column] = frame[column].astype("Int64")
    for column in ("latency_ms", "accuracy"):
        frame[column] = frame[column].astype("float64")
    frame["started"] = pd.to_datetime(frame["started"])
    return frame.reset_index(drop=True)


def decoded(text: Any) -> Any:
    """A parameter read back from a store that keeps text: its JSON value when it parses, else the text."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def number(value: Any, field: str) -> float | None:
    """A record's numeric field as a float (NaN as None); ValueError naming the field otherwise."""
    if value is None:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"record: {field} must be a number, got {value!r}") from None
    return None if math.isnan(result) else result


@runtime_checkable
class Tracker(Protocol):
    """Iteration history: where finished jobs are recorded and the panel's scatter reads from."""

    def record(self, iteration: str, *, parent: str | None = None, plan_summary: dict | None = None,
               criterion: str | None = None, filters_removed: int | None = None,
               params: float | None = None, macs: float | None = None, latency_ms: float | None = None,
               accuracies: Iterable[float] = (), best_accuracy: float | None = None,
               status: str = "completed", model_dir: str | None = None, trial_dir: str | None = None,
               job_id: str | None = None, backend: str | None = None, started: float | None = None,
               script: str | None = None, hyperparameters: dict[str, Any] | None = None) -> str:
        """Record one iteration (replacing what history shows for it); returns its run id.
        `started` (epoch seconds, e.g. its job's start) is the run's start; default now. `script` is
        the training script that ran the job (a user's entry point, or "prune_explorer.jobs.train").
        `hyperparameters`: the job's settings worth comparing across runs (the queue sends the
        distillation's, `jobs.queue.TRACKED_HYPERPARAMETERS`), recorded as the store's parameters."""

    def hyperparameters(self, iteration: str) -> dict[str, Any]:
        """The hyperparameters recorded with the iteration (its latest record); KeyError when not recorded."""

    def update_status(self, iteration: str, status: str) -> None:
        """Change a recorded iteration's status (e.g. 'stopped' by the rule); KeyError when not recorded."""

    def run_id(self, iteration: str) -> str | None:
        """The run id history shows for the iteration, None when it is not recorded."""

    def history(self) -> pd.DataFrame:
        """One row per iteration (its latest record), oldest first, HISTORY_COLUMNS."""

    def accuracies(self, iteration: str) -> list[float]:
        """Accuracy per epoch of the iteration, in epoch order; KeyError when not recorded."""
