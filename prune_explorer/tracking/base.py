"""What every iteration tracker does: the contract the queue, the loop and the panel rely on.

One tracked run per pruning iteration; recording an iteration again (a later job of it) replaces
what `history()` shows for it. `history()` is one DataFrame with HISTORY_COLUMNS whatever the
store. The contract test suite (tests/test_tracker_contract.py) runs against every tracker in
`TRACKERS`, each behind a real JobQueue.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import pandas as pd

from ..workspace.layout import best_accuracy as best_of

HISTORY_COLUMNS = [
    "iteration", "parent", "status", "criterion", "filters_removed", "params", "macs", "latency_ms",
    "accuracy", "model_dir", "trial_dir", "job_id", "backend", "started", "run_id", "script",
    "cut_accuracy",
]


def history_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The history DataFrame every tracker returns: HISTORY_COLUMNS with stable dtypes."""
    frame = pd.DataFrame(list(rows), columns=HISTORY_COLUMNS)
    for column in ("filters_removed", "params", "macs"):
        frame[column] = frame[column].astype("Int64")
    for column in ("latency_ms", "accuracy", "cut_accuracy"):
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


NUMBER_FIELDS = ("filters_removed", "params", "macs", "latency_ms", "best_accuracy", "cut_accuracy")
TEXT_FIELDS = ("parent", "criterion", "model_dir", "trial_dir", "job_id", "backend", "script")


@dataclass
class IterationRecord:
    """One iteration as `Tracker.record` takes it (its keyword arguments, the one list of them), checked:
    a non-empty iteration, numbers refused by field name, the best accuracy else the max over epochs.
    `started` (epoch seconds, e.g. its job's start) is the run's start; default now. `script` is the
    training script that ran the job (a user's entry point, or "prune_explorer.jobs.train").
    `cut_accuracy`: the pruned model's accuracy right after the cut, before fine-tuning (history column
    `cut_accuracy`; `accuracy` is the fine-tuned best). `hyperparameters`: the job's settings worth
    comparing across runs (the queue sends the distillation's, `jobs.queue.TRACKED_HYPERPARAMETERS`),
    recorded as the store's parameters; one named like a field of the record is refused."""

    iteration: str
    parent: str | None = None
    plan_summary: Mapping[str, Any] | None = None
    criterion: str | None = None
    filters_removed: int | None = None
    params: float | None = None
    macs: float | None = None
    latency_ms: float | None = None
    accuracies: Iterable[float | None] = ()
    best_accuracy: float | None = None
    status: str = "completed"
    model_dir: str | None = None
    trial_dir: str | None = None
    job_id: str | None = None
    backend: str | None = None
    started: float | None = None
    script: str | None = None
    cut_accuracy: float | None = None
    hyperparameters: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.iteration = str(self.iteration)
        if not self.iteration:
            raise ValueError("record: iteration must be a non-empty id")
        self.accuracies = [number(a, "accuracies") for a in self.accuracies or ()]
        self.best_accuracy = best_of(self.best_accuracy, self.accuracies)
        for field in NUMBER_FIELDS:
            setattr(self, field, number(getattr(self, field), field))
        self.hyperparameters = {k: v for k, v in dict(self.hyperparameters or {}).items() if v is not None}
        clash = sorted(set(self.hyperparameters) & RECORD_FIELDS)
        if clash:
            raise ValueError(f"record: hyperparameter(s) {', '.join(clash)} would overwrite the record's own fields")

    @property
    def numbers(self) -> dict[str, float | None]:
        return {field: getattr(self, field) for field in NUMBER_FIELDS}

    @property
    def texts(self) -> dict[str, str | None]:
        return {field: getattr(self, field) for field in TEXT_FIELDS}


RECORD_FIELDS = frozenset(f.name for f in fields(IterationRecord)) - {"hyperparameters"}


@runtime_checkable
class Tracker(Protocol):
    """Iteration history: where finished jobs are recorded and the panel's scatter reads from."""

    def record(self, iteration: str, **fields: Any) -> str:
        """Record one iteration (replacing what history shows for it); returns its run id. `fields`:
        those of `IterationRecord` (an unknown one is a TypeError)."""

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
