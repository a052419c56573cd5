"""Iteration history in SageMaker Experiments, for SageMaker Studio users.

Mapping: experiment = project, trial = iteration, one trial component per job (or per
record without a job). What `Tracker.record` (tracking/base.py) takes becomes trial-component
parameters, per-epoch accuracy becomes the `accuracy` metric (BatchPutMetrics, one step
per epoch), model and trial locations become output artifacts. `history()` reads it all
back into the same DataFrame as `MlflowTracker.history()`. MLflow stays the default tracker;
AWS now points experiment tracking to its managed MLflow, this adapter is for Studio's
Experiments pages.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any, Iterable, Mapping

import pandas as pd

from ..masking import mask
from .base import decoded, history_frame, number

MAX_NAME = 120
MAX_STRING_PARAMETER = 2500
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,119}$")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9]+")
_PRIMARY_STATUS = {"queued": "InProgress", "running": "InProgress", "completed": "Completed",
                   "failed": "Failed", "stopped": "Stopped", "cancelled": "Stopped"}
_NUMBER_FIELDS = ("filters_removed", "params", "macs", "latency_ms", "best_accuracy")
_STRING_FIELDS = ("iteration", "parent", "criterion", "status", "job_id", "backend", "script")
_ARTIFACT_FIELDS = ("model_dir", "trial_dir")
_RECORD_PARAMETERS = _STRING_FIELDS + _NUMBER_FIELDS + ("plan_summary", "accuracies")  # the rest: hyperparameters


def resource_name(*parts: str) -> str:
    """A valid Experiments name from free text: alphanumerics joined by '-', at most 120 chars."""
    name = "-".join(p for p in (_NOT_NAME.sub("-", str(part)).strip("-") for part in parts) if p)
    name = re.sub("-+", "-", name)
    if not name:
        raise ValueError(f"cannot build a SageMaker Experiments name from {parts!r}")
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11].rstrip('-')}-{digest}"
    return name


def trial_name(experiment: str, iteration: str) -> str:
    """Trial names are unique per account and region, so they carry the experiment name."""
    return resource_name(experiment, iteration)


def _error(exc: Exception) -> tuple[str, str]:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return "", ""
    error = exc.response.get("Error", {})
    return error.get("Code", ""), error.get("Message", "").lower()


def _missing(exc: Exception) -> bool:
    code, message = _error(exc)
    return code in {"ResourceNotFound", "ValidationException"} and ("not" in message or "find" in message)


def _already_exists(exc: Exception) -> bool:
    code, message = _error(exc)
    return code in {"ValidationException", "ResourceInUse"} and "already exists" in message


def ensure_trial(experiment: str, trial: str, *, session: Any = None, region: str | None = None) -> None:
    """Create the experiment and its trial unless they exist (a job's ExperimentConfig needs both).

    The experiment is created first and "already exists" accepted, as SDK v2 did; the trial is
    looked up first, since it holds the iteration's components.
    """
    from botocore.exceptions import ClientError
    from sagemaker.core.resources import Experiment, Trial

    try:
        Experiment.create(experiment_name=experiment, session=session, region=region)
    except ClientError as exc:
        if not _already_exists(exc):
            raise
    try:
        Trial.get(trial_name=trial, session=session, region=region)
    except ClientError as exc:
        if not _missing(exc):
            raise
        Trial.create(trial_name=trial, experiment_name=experiment, session=session, region=region)


def _given(value: Any) -> Any:
    from sagemaker.core.utils.utils import Unassigned

    return None if isinstance(value, Unassigned) else value


class SageMakerExperimentsTracker:
    """Records iterations as SageMaker Experiments trials; implements the `tracking.base.Tracker` protocol."""

    def __init__(self, experiment_name: str, *, boto_session: Any = None, region: str | None = None):
        import boto3

        if not _NAME.match(experiment_name or ""):
            raise ValueError(
                f"experiment_name {experiment_name!r}: SageMaker allows 1-120 letters, digits and '-'")
        self.experiment_name = experiment_name
        self.boto_session = boto_session or boto3.Session(region_name=region)
        self.region = region or self.boto_session.region_name

    def _where(self) -> dict[str, Any]:
        return {"session": self.boto_session, "region": self.region}

    def record(
        self,
        iteration: str,
        *,
        parent: str | None = None,
        plan_summary: Mapping[str, Any] | None = None,
        criterion: str | None = None,
        filters_removed: int | None = None,
        params: int | None = None,
        macs: int | None = None,
        latency_ms: float | None = None,
        accuracies: Iterable[float] | None = None,
        best_accuracy: float | None = None,
        status: str = "completed",
        model_dir: str | None = None,
        trial_dir: str | None = None,
        job_id: str | None = None,
        backend: str | None = None,
        started: float | None = None,
        script: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> str:
        """Create or update the trial component of this iteration's job; return its name (the run id).

        `started` (epoch seconds, e.g. when its job started) becomes the component's start time; default now.
        """
        from botocore.exceptions import ClientError
        from sagemaker.core import shapes
        from sagemaker.core.resources import TrialComponent

        iteration = str(iteration)
        if not iteration:
            raise ValueError("record: iteration must be a non-empty id")
        accuracies = [a for a in (number(a, "accuracies") for a in accuracies or []) if a is not None]
        if best_accuracy is None and accuracies:
            best_accuracy = max(accuracies)
        numbers = {f: number(v, f) for f, v in dict(filters_removed=filters_removed, params=params, macs=macs,
                                                     latency_ms=latency_ms, best_accuracy=best_accuracy).items()}
        values = dict(iteration=iteration, parent=parent, criterion=criterion, status=status, job_id=job_id,
                      backend=backend, script=script, **numbers)
        parameters = _parameters(values, plan_summary, accuracies, shapes, hyperparameters)
        artifacts = {f: shapes.TrialComponentArtifact(value=mask(str(v)))
                     for f, v in (("model_dir", model_dir), ("trial_dir", trial_dir)) if v}
        optional = {"output_artifacts": artifacts} if artifacts else {}
        trial = trial_name(self.experiment_name, iteration)
        ensure_trial(self.experiment_name, trial, **self._where())
        name = resource_name(trial, job_id or "record")
        state = shapes.TrialComponentStatus(primary_status=_PRIMARY_STATUS.get(status, "InProgress"), message=status)
        now = datetime.datetime.now(datetime.timezone.utc)
        start = now if started is None else datetime.datetime.fromtimestamp(float(started), datetime.timezone.utc)
        try:
            component = TrialComponent.get(trial_component_name=name, **self._where())
        except ClientError as exc:
            if not _missing(exc):
                raise
            component = TrialComponent.create(
                trial_component_name=name, display_name=f"{iteration} {job_id or ''}".strip(), status=state,
                start_time=start, parameters=parameters, **optional, **self._where())
            component.associate_trail(trial_name=trial, **self._where())
        else:
            component.update(status=state, parameters=parameters, **optional,
                             **({"start_time": start} if started is not None else {}))
        if status in {"completed", "failed", "stopped", "cancelled"}:
            component.update(end_time=now)
        if accuracies:
            component.batch_put_metrics(metric_data=[
                shapes.RawMetricData(metric_name="accuracy", timestamp=now, step=step, value=value)
                for step, value in enumerate(accuracies, 1)], **self._where())
        return name

    def _components(self, iteration: str | None = None) -> list[Any]:
        """This tracker's trial components of the experiment (or of one iteration), oldest first.

        Components without our `iteration` parameter, such as the `<job>-aws-training-job`
        component SageMaker adds to a job's trial, are left out.
        """
        from botocore.exceptions import ClientError
        from sagemaker.core.resources import Trial, TrialComponent

        try:
            if iteration is None:
                trials = [t.trial_name for t in Trial.get_all(experiment_name=self.experiment_name, **self._where())]
            else:
                trials = [trial_name(self.experiment_name, str(iteration))]
            components = [
                TrialComponent.get(trial_component_name=summary.trial_component_name, **self._where())
                for trial in trials
                for summary in TrialComponent.get_all(trial_name=trial, **self._where())
            ]
        except ClientError as exc:
            if not _missing(exc):  # no experiment or trial yet: nothing recorded
                raise
            return []
        ours = [c for c in components if "iteration" in (_given(c.parameters) or {})]
        return sorted(ours, key=_started)

    def history(self) -> pd.DataFrame:
        """One row per iteration (its latest job), oldest first, with tracking.Tracker.history's columns."""
        rows: dict[str, dict[str, Any]] = {}
        for component in self._components():
            row = _row(component)
            rows.pop(row["iteration"], None)
            rows[row["iteration"]] = row
        return history_frame(rows.values())

    def run_id(self, iteration: str) -> str | None:
        """The trial component history shows for the iteration (its latest job), None when not recorded."""
        components = self._components(iteration)
        return _given(components[-1].trial_component_name) if components else None

    def update_status(self, iteration: str, status: str) -> None:
        """Change the status of the iteration's latest job (e.g. 'stopped' when the rule fired)."""
        from sagemaker.core import shapes

        components = self._components(iteration)
        if not components:
            raise KeyError(f"no tracked iteration {iteration!r} in experiment {self.experiment_name}")
        latest = components[-1]
        parameters = dict(_given(latest.parameters) or {})
        parameters["status"] = shapes.TrialComponentParameterValue(string_value=str(status))
        latest.update(parameters=parameters, status=shapes.TrialComponentStatus(
            primary_status=_PRIMARY_STATUS.get(status, "InProgress"), message=status))

    def hyperparameters(self, iteration: str) -> dict[str, Any]:
        """The hyperparameters recorded with the iteration's latest job (its parameters beyond the record's own)."""
        components = self._components(iteration)
        if not components:
            raise KeyError(f"no tracked iteration {iteration!r} in experiment {self.experiment_name}")
        out = {}
        for field, parameter in (_given(components[-1].parameters) or {}).items():
            if field not in _RECORD_PARAMETERS:
                number = _given(parameter.number_value)
                out[field] = number if number is not None else decoded(_given(parameter.string_value))
        return out

    def accuracies(self, iteration: str) -> list[float]:
        """Accuracy per epoch of the iteration's latest job, in step order."""
        components = self._components(iteration)
        if not components:
            raise KeyError(f"no tracked iteration {iteration!r} in experiment {self.experiment_name}")
        parameter = (_given(components[-1].parameters) or {}).get("accuracies")
        text = _given(parameter.string_value) if parameter is not None else None
        return [float(a) for a in json.loads(text)] if text else []


def _started(component: Any) -> datetime.datetime:
    moment = _given(component.start_time) or _given(component.creation_time)
    if moment is None:
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _parameters(values: Mapping[str, Any], plan_summary: Mapping[str, Any] | None,
                accuracies: list[float], shapes: Any, hyperparameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    clash = sorted(set(hyperparameters or {}) & set(_RECORD_PARAMETERS))
    if clash:
        raise ValueError(f"record: hyperparameter(s) {', '.join(clash)} would overwrite the record's own fields")
    out = {}
    for field, value in (hyperparameters or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[field] = shapes.TrialComponentParameterValue(number_value=float(value))
        elif value is not None:
            text = mask(value if isinstance(value, str) else json.dumps(value))
            out[field] = shapes.TrialComponentParameterValue(string_value=text[:MAX_STRING_PARAMETER])
    for field in _STRING_FIELDS:
        if values[field] is not None:
            out[field] = shapes.TrialComponentParameterValue(string_value=mask(str(values[field])))
    for field in _NUMBER_FIELDS:
        if values[field] is not None:
            out[field] = shapes.TrialComponentParameterValue(number_value=float(values[field]))
    for field, value in (("plan_summary", plan_summary), ("accuracies", accuracies or None)):
        if value is None:
            continue
        text = json.dumps(value, sort_keys=True)
        if len(text) > MAX_STRING_PARAMETER:
            raise ValueError(f"{field}: {len(text)} characters as JSON, SageMaker parameters hold {MAX_STRING_PARAMETER}")
        out[field] = shapes.TrialComponentParameterValue(string_value=text)
    return out


def _row(component: Any) -> dict[str, Any]:
    parameters = _given(component.parameters) or {}

    def value(field: str) -> Any:
        parameter = parameters.get(field)
        if parameter is None:
            return None
        number = _given(parameter.number_value)
        return number if number is not None else _given(parameter.string_value)

    artifacts = _given(component.output_artifacts) or {}
    row = {field: value(field) for field in ("iteration", "parent", "status", "criterion",
                                             "latency_ms", "job_id", "backend", "script")}
    for field in ("filters_removed", "params", "macs"):
        number = value(field)
        row[field] = None if number is None else int(number)
    row["accuracy"] = value("best_accuracy")
    for field in _ARTIFACT_FIELDS:
        row[field] = _given(artifacts[field].value) if field in artifacts else None
    started = _started(component)
    row["started"] = pd.Timestamp(started).tz_convert("UTC").tz_localize(None)
    row["run_id"] = _given(component.trial_component_name)
    return row
