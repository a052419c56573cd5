"""Iteration history: the `Tracker` protocol and its stores, MLflow (default) and SageMaker Experiments.

`make_tracker(kind, workspace, ...)` builds one by name (`TRACKERS`), so the CLI, the loop and the
panel choose a store with a string.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from .base import HISTORY_COLUMNS, Tracker, history_frame
from .mlflow_tracker import MlflowTracker

DEFAULT_EXPERIMENT = "prune-explorer"


def _mlflow(workspace: str | Path | None, *, tracking_uri: str | None = None, experiment: str | None = None) -> Tracker:
    return MlflowTracker(workspace, tracking_uri=tracking_uri, experiment=experiment or DEFAULT_EXPERIMENT)


def _sagemaker_experiments(workspace: str | Path | None, *, experiment: str | None = None, region: str | None = None,
                           boto_session: Any = None) -> Tracker:
    from .sagemaker_experiments import SageMakerExperimentsTracker

    return SageMakerExperimentsTracker(experiment or DEFAULT_EXPERIMENT, boto_session=boto_session, region=region)


TRACKERS: dict[str, Callable[..., Tracker]] = {
    "mlflow": _mlflow,
    "sagemaker-experiments": _sagemaker_experiments,
}


def make_tracker(kind: "str | Tracker", workspace: str | Path | None = None, **options: Any) -> Tracker:
    """A tracker by name ("mlflow": `tracking_uri`, `experiment`; "sagemaker-experiments": `experiment`,
    `region`, `boto_session`); a Tracker instance is returned as is. Options left None are not passed;
    one the tracker does not take is refused by name."""
    if not isinstance(kind, str):
        return kind
    if kind not in TRACKERS:
        raise ValueError(f"tracker: unknown {kind!r}; choose from {', '.join(TRACKERS)}")
    factory = TRACKERS[kind]
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(inspect.signature(factory).parameters))
    if foreign:
        raise ValueError(f"tracker {kind!r} does not take {', '.join(foreign)}")
    return factory(workspace, **given)


__all__ = ["DEFAULT_EXPERIMENT", "HISTORY_COLUMNS", "MlflowTracker", "TRACKERS", "Tracker", "history_frame",
           "make_tracker"]
