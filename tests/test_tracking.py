"""MlflowTracker against a real MLflow sqlite store: what MLflow itself holds (the shared contract is
tests/test_tracker_contract.py)."""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from prune_explorer.tracking import HISTORY_COLUMNS, MlflowTracker


def _record_two(tracker: MlflowTracker) -> tuple[str, str]:
    base = tracker.record(
        "baseline", params=11_000_000, macs=500_000, latency_ms=3.5, accuracies=[0.61, 0.83, 0.79],
        status="completed", model_dir="/ws/iterations/baseline", trial_dir="/ws/iterations/baseline/trial",
        job_id="job-a", backend="local", started=1_699_999_000.0,
    )
    child = tracker.record(
        "iter-001", parent="baseline", plan_summary={"layer1.0.conv1": 7, "conv1": 3}, criterion="taylor",
        filters_removed=10, params=9_000_000, macs=400_000, latency_ms=2.5, accuracies=[0.8],
        status="completed", model_dir="/ws/iterations/iter-001", job_id="job-b", backend="local",
        started=1_700_000_000.5,
    )
    return base, child


def test_history_rows_and_columns_come_from_the_sqlite_store(tmp_path):
    tracker = MlflowTracker(tmp_path)
    base_run, child_run = _record_two(tracker)
    assert (tmp_path / "mlflow.db").is_file()

    history = tracker.history()
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["iteration"].tolist() == ["baseline", "iter-001"]
    assert history["run_id"].tolist() == [base_run, child_run]
    base, child = history.iloc[0], history.iloc[1]
    assert pd.isna(base["parent"]) and child["parent"] == "baseline"
    assert base["accuracy"] == pytest.approx(0.83)  # best of the epochs, not the last
    assert child["accuracy"] == pytest.approx(0.8)
    assert child["params"] == 9_000_000 and child["macs"] == 400_000 and child["filters_removed"] == 10
    assert child["criterion"] == "taylor" and child["backend"] == "local" and child["job_id"] == "job-b"
    assert base["trial_dir"] == "/ws/iterations/baseline/trial"
    assert child["started"] == pd.Timestamp(1_700_000_000_500, unit="ms")  # the job's start, not the record's

    # what MLflow itself holds: params, per-epoch metric with steps, tags, the plan artifact
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(child_run)
    assert run.data.params["parent"] == "baseline" and run.data.params["criterion"] == "taylor"
    assert run.data.tags["prune_explorer.status"] == "completed"
    steps = [(m.step, m.value) for m in client.get_metric_history(base_run, "accuracy")]
    assert sorted(steps) == [(1, 0.61), (2, 0.83), (3, 0.79)]
    assert tracker.accuracies("baseline") == [0.61, 0.83, 0.79]
    plan = (tmp_path / "mlartifacts").rglob("plan.json")
    assert any('"layer1.0.conv1": 7' in p.read_text() for p in plan)


def test_history_survives_a_new_tracker_and_update_status(tmp_path):
    _record_two(MlflowTracker(tmp_path))
    again = MlflowTracker(tmp_path)
    again.update_status("iter-001", "stopped")
    history = MlflowTracker(tmp_path).history()
    assert history.set_index("iteration")["status"].to_dict() == {"baseline": "completed", "iter-001": "stopped"}
    with pytest.raises(KeyError, match="iter-999"):
        again.update_status("iter-999", "stopped")


def test_experiments_are_separate_and_an_explicit_uri_is_used(tmp_path):
    seeded = tmp_path / "seed"
    MlflowTracker(seeded)  # a store with the schema already in place (creating one from scratch is slow)
    store = tmp_path / "elsewhere.db"
    (seeded / "mlflow.db").rename(store)
    uri = f"sqlite:///{store}"
    MlflowTracker(tracking_uri=uri, experiment="a").record("baseline", params=10)
    MlflowTracker(tracking_uri=uri, experiment="b").record("other", params=20)
    assert MlflowTracker(tracking_uri=uri, experiment="a").history()["iteration"].tolist() == ["baseline"]
    assert not (seeded / "mlflow.db").exists()
    with sqlite3.connect(store) as db:
        names = {name for (name,) in db.execute("select name from experiments")}
    assert {"a", "b"} <= names


def test_a_tracker_needs_a_workspace_or_a_uri():
    with pytest.raises(ValueError, match="workspace"):
        MlflowTracker()
