"""The one contract every iteration tracker keeps (tracking/base.py), run against each tracker in
TRACKERS: MLflow on a sqlite store, SageMaker Experiments on the moto server. Each sits behind a
real JobQueue that runs real local jobs (sklearn digits, one epoch, 8 px)."""
from __future__ import annotations

import uuid

import pandas as pd
import pytest

from prune_explorer.jobs import JobQueue
from prune_explorer.tracking import HISTORY_COLUMNS, TRACKERS, Tracker, make_tracker

REGION = "us-east-1"
QUICK = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, image_size=8,
             capture="compact", measure_latency=False, seed=0)


@pytest.fixture(scope="module", params=sorted(TRACKERS))
def new_tracker(request, tmp_path_factory):
    """Makes (workspace, fresh tracker) of one kind; Experiments gets its own experiment each time."""
    kind = request.param
    options = {}
    if kind == "sagemaker-experiments":
        import boto3

        request.getfixturevalue("moto_server")
        options = {"region": REGION, "boto_session": boto3.Session(region_name=REGION)}

    def make():
        workspace = tmp_path_factory.mktemp(kind)
        experiment = f"pe-{uuid.uuid4().hex[:10]}" if kind == "sagemaker-experiments" else None
        return workspace, make_tracker(kind, workspace, experiment=experiment, **options)

    return make


@pytest.fixture(scope="module")
def behind_queue(new_tracker):
    """A completed baseline job and a failed pruned-iteration job, run and recorded by a JobQueue."""
    workspace, tracker = new_tracker()
    with JobQueue(workspace, tracker=tracker, poll_interval=0.1) as queue:
        good = queue.submit("resnet18", iteration="baseline", hyperparameters=QUICK)
        bad = queue.submit(workspace / "no-such-model", iteration="iter-001", parent="baseline",
                           plan={"layer1.0.conv1": 3}, criterion="l1", hyperparameters=QUICK)
        good, bad = queue.wait(good.id, timeout=300), queue.wait(bad.id, timeout=300)
    return tracker, good, bad


def _started(job) -> pd.Timestamp:
    return pd.Timestamp(job.started, unit="s")


def test_the_tracker_is_a_tracker(behind_queue):
    tracker, _, _ = behind_queue
    assert isinstance(tracker, Tracker)


def test_a_completed_job_is_one_row_with_the_jobs_numbers(behind_queue):
    tracker, good, _ = behind_queue
    assert good.status == "completed", good.message
    history = tracker.history()
    assert list(history.columns) == HISTORY_COLUMNS
    row = history.set_index("iteration").loc["baseline"]
    assert row["status"] == "completed" and pd.isna(row["parent"]) and pd.isna(row["criterion"])
    assert row["params"] == good.result["params"] and row["macs"] == good.result["macs"]
    assert row["accuracy"] == pytest.approx(good.result["best_accuracy"])
    assert (row["job_id"], row["backend"]) == (good.id, "local")
    assert row["model_dir"] == good.out_dir and row["trial_dir"] == good.result["trial"]
    assert abs(row["started"] - _started(good)) < pd.Timedelta(milliseconds=2)  # the job's start, not the record's
    assert tracker.accuracies("baseline") == pytest.approx([e["val_accuracy"] for e in good.result["epochs"]])
    assert tracker.run_id("baseline") == row["run_id"]
    assert row["script"] == good.result["script"] == "prune_explorer.jobs.train"  # the script that ran the job


def test_a_failed_job_is_a_failed_row_with_its_plan_and_parent(behind_queue):
    tracker, _, bad = behind_queue
    assert bad.status == "failed"
    row = tracker.history().set_index("iteration").loc["iter-001"]
    assert row["status"] == "failed" and row["parent"] == "baseline" and row["criterion"] == "l1"
    assert row["filters_removed"] == 3 and pd.isna(row["params"]) and pd.isna(row["accuracy"])
    assert row["job_id"] == bad.id and tracker.accuracies("iter-001") == []


def test_each_finished_job_is_one_row_oldest_first(behind_queue):
    tracker, good, bad = behind_queue
    history = tracker.history()
    assert history["iteration"].tolist() == ["baseline", "iter-001"]
    assert history["job_id"].tolist() == [good.id, bad.id] and history["started"].is_monotonic_increasing


def test_a_distilled_jobs_teacher_alpha_and_temperature_are_recorded_hyperparameters(new_tracker):
    """Issue 21: the distillation a job used (from its metrics.json), recorded as the store's parameters."""
    workspace, tracker = new_tracker()
    with JobQueue(workspace, tracker=tracker, poll_interval=0.1) as queue:
        base = queue.wait(queue.submit("resnet18", iteration="baseline", hyperparameters=QUICK).id, timeout=300)
        assert base.status == "completed", base.message
        child = queue.submit(base.out_dir, out_dir=workspace / "iter-001", iteration="iter-001", parent="baseline",
                             plan={"layer1.0.conv1": 0}, criterion="taylor",
                             hyperparameters=dict(QUICK, teacher=base.out_dir, distill="baseline",
                                                  distill_temperature=2.0))
        child = queue.wait(child.id, timeout=300)
    assert child.status == "completed", child.message
    assert tracker.hyperparameters("iter-001") == {"distill": "baseline", "distill_alpha": 0.9,
                                                   "distill_temperature": 2.0, "teacher": base.out_dir}
    assert tracker.hyperparameters("baseline") == {}
    with pytest.raises(KeyError):
        tracker.hyperparameters("iter-404")


def test_update_status_changes_the_row_and_an_unknown_iteration_is_refused(new_tracker):
    _, tracker = new_tracker()
    tracker.record("iter-004", parent="iter-003", accuracies=[0.6, 0.7], status="completed", job_id="job-a",
                   backend="local", started=1_700_000_000.0, script="src/train.py")
    tracker.update_status("iter-004", "stopped")
    assert tracker.history()["status"].tolist() == ["stopped"]
    assert tracker.history()["script"].tolist() == ["src/train.py"]
    assert tracker.accuracies("iter-004") == pytest.approx([0.6, 0.7])
    with pytest.raises(KeyError, match="iter-999"):
        tracker.update_status("iter-999", "stopped")


def test_a_later_job_of_an_iteration_replaces_its_row(new_tracker):
    _, tracker = new_tracker()
    tracker.record("iter-002", status="failed", job_id="job-d", backend="local", started=1_700_000_000.0)
    run = tracker.record("iter-002", status="completed", accuracies=[0.9], params=1000, job_id="job-e",
                         backend="local", started=1_700_000_100.0)
    history = tracker.history()
    assert history["job_id"].tolist() == ["job-e"] and history["status"].tolist() == ["completed"]
    assert history["run_id"].tolist() == [run] and tracker.run_id("iter-002") == run
    assert history["accuracy"].iloc[0] == pytest.approx(0.9) and history["params"].iloc[0] == 1000


def test_an_empty_tracker_has_the_columns_and_knows_no_iteration(new_tracker):
    _, tracker = new_tracker()
    history = tracker.history()
    assert history.empty and list(history.columns) == HISTORY_COLUMNS
    assert str(history["params"].dtype) == "Int64" and history["accuracy"].dtype == "float64"
    assert tracker.run_id("nothing-here") is None
    with pytest.raises(KeyError, match="nothing-here"):
        tracker.accuracies("nothing-here")


def test_bad_input_is_refused_naming_the_field_and_nothing_is_recorded(new_tracker):
    _, tracker = new_tracker()
    with pytest.raises(ValueError, match="iteration"):
        tracker.record("", params=1)
    with pytest.raises(ValueError, match="latency_ms"):
        tracker.record("iter-001", latency_ms="fast")
    with pytest.raises(ValueError, match="accuracies"):
        tracker.record("iter-001", accuracies=["high"])
    assert tracker.history().empty


def test_an_unknown_tracker_or_option_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown 'wandb'.*mlflow, sagemaker-experiments"):
        make_tracker("wandb", tmp_path)
    with pytest.raises(ValueError, match="'mlflow' does not take region"):
        make_tracker("mlflow", tmp_path, region="us-east-1")
