"""Iteration history in MLflow: one run per pruning iteration, read back as one DataFrame.

Default store: `sqlite:///WORKSPACE/mlflow.db` with artifacts under WORKSPACE/mlartifacts, no
server. Any MLflow tracking URI works too (an `http://` server, a SageMaker managed MLflow ARN
with the `sagemaker-mlflow` plugin installed). The client is created once per tracker because
opening a sqlite store runs schema checks. Implements the `tracking.base.Tracker` protocol.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..masking import mask
from .base import decoded, history_frame, number

ITERATION_TAG = "prune_explorer.iteration"
STATUS_TAG = "prune_explorer.status"
PARENT_TAG = "prune_explorer.parent"

_RECORD_PARAMS = ("parent", "criterion", "model_dir", "trial_dir", "job_id", "backend", "script", "iteration")
_RUN_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
def _quiet_mlflow() -> None:
    """No telemetry, no progress bars, no INFO lines about creating tables, no run links printed."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # MLflow prints "View run … at: <tracking URI>" on every finished run, user:token@ included, from the
    # queue's worker thread into a notebook's output; the panel says where a run is, masked
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    import mlflow  # noqa: F401  (configures its loggers on import; quieten them afterwards)

    for name in ("mlflow", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _schema_template() -> Path | None:
    """An empty MLflow sqlite store with the current schema, built once per MLflow version and user.

    Creating a store runs every alembic migration (seconds, tens of seconds on a busy machine);
    copying this file is instant. None when no cache directory is writable.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prune_explorer"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / "store.db"
            MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()
            os.replace(built, template)
    except OSError:
        return None
    return template


def _seed_sqlite_store(target: Path) -> None:
    """Give a new workspace a ready store by copying the schema template (atomically)."""
    if target.exists():
        return
    template = _schema_template()
    if template is None:
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(template, tmp)
        try:
            os.link(tmp, target)  # never replaces a store another process just created
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)


class MlflowTracker:
    """Records each pruning iteration as an MLflow run and returns the history as a DataFrame."""

    def __init__(self, workspace: str | Path | None = None, tracking_uri: str | None = None,
                 experiment: str = "prune-explorer"):
        if workspace is None and tracking_uri is None:
            raise ValueError("MlflowTracker needs a workspace (for the default sqlite store) or a tracking_uri")
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        artifacts = None
        if workspace is not None:
            workspace = Path(workspace).resolve()
            workspace.mkdir(parents=True, exist_ok=True)
            artifacts = (workspace / "mlartifacts").as_uri()
        self.workspace = workspace
        if tracking_uri is None:
            _seed_sqlite_store(workspace / "mlflow.db")
        self.tracking_uri = tracking_uri or f"sqlite:///{workspace / 'mlflow.db'}"
        self.experiment = experiment
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._lock = threading.RLock()
        self.experiment_id = self._experiment_id(experiment, artifacts if tracking_uri is None else None)

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # created meanwhile by another process
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def record(self, iteration: str, *, parent: str | None = None, plan_summary: dict | None = None,
               criterion: str | None = None, filters_removed: int | None = None,
               params: float | None = None, macs: float | None = None, latency_ms: float | None = None,
               accuracies: Iterable[float] = (), best_accuracy: float | None = None,
               status: str = "completed", model_dir: str | None = None, trial_dir: str | None = None,
               job_id: str | None = None, backend: str | None = None, started: float | None = None,
               script: str | None = None, hyperparameters: dict[str, Any] | None = None) -> str:
        """Log one iteration as a run (replacing an earlier run of the same iteration); returns the run id.

        `started` (epoch seconds, e.g. when its job started) becomes the run's start time; default now.
        """
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        iteration = str(iteration)
        if not iteration:
            raise ValueError("record: iteration must be a non-empty id")
        accuracies = [number(a, 'accuracies') for a in accuracies]
        if best_accuracy is None and any(a is not None for a in accuracies):
            best_accuracy = max(a for a in accuracies if a is not None)
        values = {"params": params, "macs": macs, "latency_ms": latency_ms, "best_accuracy": best_accuracy,
                  "filters_removed": filters_removed}
        numbers = {key: number(value, key) for key, value in values.items()}
        strings = dict(parent=parent, criterion=criterion, model_dir=model_dir, trial_dir=trial_dir,
                       job_id=job_id, backend=backend, script=script)  # _RECORD_PARAMS, with "iteration"
        now = get_current_time_millis()
        metrics = [Metric(key, value, now, 0) for key, value in numbers.items() if value is not None]
        metrics += [Metric("accuracy", a, now, step) for step, a in enumerate(accuracies, 1) if a is not None]
        clash = sorted(set(hyperparameters or {}) & (set(strings) | {"iteration"}))
        if clash:
            raise ValueError(f"record: hyperparameter(s) {', '.join(clash)} would overwrite the record's own fields")
        run_params = [Param(k, mask(str(v))) for k, v in strings.items() if v is not None]  # no credential in a run
        run_params.append(Param("iteration", iteration))
        run_params += [Param(k, mask(v if isinstance(v, str) else json.dumps(v)))
                       for k, v in (hyperparameters or {}).items() if v is not None]
        tags = [RunTag(ITERATION_TAG, iteration), RunTag(STATUS_TAG, str(status)),
                RunTag(PARENT_TAG, parent or "")]
        with self._lock:
            for old in self._runs(iteration):
                self._client.delete_run(old.info.run_id)
            start_ms = int(started * 1000) if started is not None else None
            run = self._client.create_run(self.experiment_id, start_time=start_ms, run_name=iteration)
            run_id = run.info.run_id
            self._client.log_batch(run_id, metrics=metrics, params=run_params, tags=tags)
            if plan_summary:
                self._client.log_dict(run_id, dict(plan_summary), "plan.json")
            self._client.set_terminated(run_id, _RUN_STATUS.get(str(status), "FINISHED"))
        return run_id

    def update_status(self, iteration: str, status: str) -> None:
        """Change the status of a recorded iteration (e.g. 'stopped' when the accuracy rule fired)."""
        with self._lock:
            runs = self._runs(str(iteration))
            if not runs:
                raise KeyError(f"no tracked iteration {iteration!r} in experiment {self.experiment!r}")
            for run in runs:
                self._client.set_tag(run.info.run_id, STATUS_TAG, str(status))
                self._client.update_run(run.info.run_id, status=_RUN_STATUS.get(str(status), "FINISHED"))

    def run_id(self, iteration: str) -> str | None:
        runs = self._runs(str(iteration))
        return runs[-1].info.run_id if runs else None

    def _runs(self, iteration: str) -> list:
        with self._lock:
            quoted = iteration.replace("'", "\\'")
            return self._client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{ITERATION_TAG}` = '{quoted}'",
                order_by=["attributes.start_time ASC"],
            )

    def history(self) -> pd.DataFrame:
        """One row per iteration, oldest first (one search over the experiment)."""
        with self._lock:
            runs = self._client.search_runs(
                [self.experiment_id], max_results=50_000, order_by=["attributes.start_time ASC"],
            )
        rows: dict[str, dict[str, Any]] = {}
        for run in runs:
            data = run.data
            iteration = data.tags.get(ITERATION_TAG)
            if iteration is None:
                continue
            rows.pop(iteration, None)
            rows[iteration] = {
                "iteration": iteration,
                "parent": data.tags.get(PARENT_TAG) or None,
                "status": data.tags.get(STATUS_TAG),
                "criterion": data.params.get("criterion"),
                "filters_removed": data.metrics.get("filters_removed"),
                "params": data.metrics.get("params"),
                "macs": data.metrics.get("macs"),
                "latency_ms": data.metrics.get("latency_ms"),
                "accuracy": data.metrics.get("best_accuracy"),
                "model_dir": data.params.get("model_dir"),
                "trial_dir": data.params.get("trial_dir"),
                "job_id": data.params.get("job_id"),
                "backend": data.params.get("backend"),
                "started": pd.Timestamp(run.info.start_time, unit="ms"),
                "run_id": run.info.run_id,
                "script": data.params.get("script"),
            }
        return history_frame(rows.values())

    def hyperparameters(self, iteration: str) -> dict[str, Any]:
        """The hyperparameters recorded with an iteration: its run's params beyond the record's own fields."""
        runs = self._runs(str(iteration))
        if not runs:
            raise KeyError(f"no tracked iteration {iteration!r}")
        return {k: decoded(v) for k, v in runs[-1].data.params.items() if k not in _RECORD_PARAMS}

    def accuracies(self, iteration: str) -> list[float]:
        """Accuracy per epoch of one iteration, in step order."""
        run_id = self.run_id(iteration)
        if run_id is None:
            raise KeyError(f"no tracked iteration {iteration!r}")
        with self._lock:
            history = self._client.get_metric_history(run_id, "accuracy")
        return [m.value for m in sorted(history, key=lambda m: m.step)]
