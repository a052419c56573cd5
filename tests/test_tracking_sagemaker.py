"""SageMakerExperimentsTracker against a moto server on 127.0.0.1, through sagemaker-core and boto3: the
Experiments resources it makes (the shared contract is tests/test_tracker_contract.py)."""
from __future__ import annotations

import uuid

import pandas as pd
import pytest

REGION = "us-east-1"


@pytest.fixture
def tracker(moto_server):
    import boto3

    from prune_explorer.tracking.sagemaker_experiments import SageMakerExperimentsTracker

    return SageMakerExperimentsTracker(f"prune-{uuid.uuid4().hex[:8]}",
                                       boto_session=boto3.Session(region_name=REGION))


def record_two_iterations(tracker):
    first = tracker.record(
        "baseline", criterion=None, params=11_181_642, macs=1_820_000_000, latency_ms=12.5,
        accuracies=[0.80, 0.86, 0.85], status="completed", model_dir="/ws/iterations/baseline",
        trial_dir="s3://bucket/prune-explorer/job-a/checkpoints/trial", job_id="job-a", backend="sagemaker")
    second = tracker.record(
        "it-1", parent="baseline", plan_summary={"layer1.0.conv1": 12, "layer2.0.conv1": 20},
        criterion="taylor", filters_removed=32, params=9_930_000, macs=1_500_000_000, latency_ms=10.0,
        accuracies=[0.83, 0.84], status="completed", model_dir="/ws/iterations/it-1",
        trial_dir="/ws/iterations/it-1/trial", job_id="job-b", backend="sagemaker")
    return first, second


def test_two_iterations_come_back_as_history(tracker):
    from prune_explorer.tracking import HISTORY_COLUMNS

    first, second = record_two_iterations(tracker)
    history = tracker.history()

    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert history["iteration"].tolist() == ["baseline", "it-1"]
    assert history["run_id"].tolist() == [first, second]
    base, child = history.iloc[0], history.iloc[1]
    assert pd.isna(base["parent"]) and child["parent"] == "baseline"
    assert child["criterion"] == "taylor" and pd.isna(base["criterion"])
    assert base["accuracy"] == pytest.approx(0.86) and child["accuracy"] == pytest.approx(0.84)
    assert base["params"] == 11_181_642 and child["params"] == 9_930_000
    assert child["macs"] == 1_500_000_000 and child["filters_removed"] == 32
    assert pd.isna(base["filters_removed"])
    assert child["latency_ms"] == pytest.approx(10.0)
    assert base["trial_dir"] == "s3://bucket/prune-explorer/job-a/checkpoints/trial"
    assert child["model_dir"] == "/ws/iterations/it-1"
    assert history["job_id"].tolist() == ["job-a", "job-b"]
    assert history["backend"].tolist() == ["sagemaker", "sagemaker"]
    assert history["status"].tolist() == ["completed", "completed"]
    assert history["started"].is_monotonic_increasing
    assert str(history["params"].dtype) == "Int64" and history["accuracy"].dtype == "float64"
    assert tracker.accuracies("baseline") == pytest.approx([0.80, 0.86, 0.85])


def test_records_are_experiments_trials_and_components_in_sagemaker(tracker):
    import boto3

    from prune_explorer.tracking.sagemaker_experiments import trial_name

    _, component = record_two_iterations(tracker)
    client = boto3.client("sagemaker", region_name=REGION)
    trials = client.list_trials(ExperimentName=tracker.experiment_name)["TrialSummaries"]
    assert sorted(t["TrialName"] for t in trials) == sorted(
        trial_name(tracker.experiment_name, i) for i in ("baseline", "it-1"))
    listed = client.list_trial_components(TrialName=trial_name(tracker.experiment_name, "it-1"))
    assert [c["TrialComponentName"] for c in listed["TrialComponentSummaries"]] == [component]

    described = client.describe_trial_component(TrialComponentName=component)
    assert described["Parameters"]["criterion"] == {"StringValue": "taylor"}
    assert described["Parameters"]["filters_removed"] == {"NumberValue": 32.0}
    assert described["Parameters"]["plan_summary"]["StringValue"] == '{"layer1.0.conv1": 12, "layer2.0.conv1": 20}'
    assert described["Status"]["PrimaryStatus"] == "Completed"
    (accuracy,) = described["Metrics"]
    assert accuracy["MetricName"] == "accuracy"
    assert accuracy["Count"] == 2 and accuracy["Max"] == pytest.approx(0.84) and accuracy["Last"] == pytest.approx(0.84)


def test_components_sagemaker_adds_to_the_trial_are_not_iterations(tracker):
    import boto3

    from prune_explorer.tracking.sagemaker_experiments import trial_name

    record_two_iterations(tracker)
    client = boto3.client("sagemaker", region_name=REGION)
    client.create_trial_component(TrialComponentName="job-b-aws-training-job",
                                  Parameters={"epochs": {"StringValue": "2"}})
    client.associate_trial_component(TrialComponentName="job-b-aws-training-job",
                                     TrialName=trial_name(tracker.experiment_name, "it-1"))
    history = tracker.history()
    assert history["iteration"].tolist() == ["baseline", "it-1"]
    assert history["job_id"].tolist() == ["job-a", "job-b"]


def test_recording_the_same_job_again_updates_it(tracker):
    tracker.record("it-1", parent="baseline", status="running", job_id="job-c", backend="sagemaker")
    running = tracker.history()
    assert running["status"].tolist() == ["running"] and pd.isna(running["accuracy"].iloc[0])

    name = tracker.record("it-1", parent="baseline", status="completed", accuracies=[0.5, 0.7],
                          params=1000, job_id="job-c", backend="sagemaker")
    done = tracker.history()
    assert len(done) == 1 and done["run_id"].iloc[0] == name
    assert done["status"].iloc[0] == "completed" and done["accuracy"].iloc[0] == pytest.approx(0.7)

    tracker.update_status("it-1", "stopped")
    assert tracker.history()["status"].tolist() == ["stopped"]


def test_bad_input_is_refused_with_the_field_named(tracker, moto_server):
    from prune_explorer.tracking.sagemaker_experiments import SageMakerExperimentsTracker

    with pytest.raises(ValueError, match="experiment_name"):
        SageMakerExperimentsTracker("no spaces_allowed", region=REGION)
    with pytest.raises(ValueError, match="plan_summary"):
        tracker.record("it-9", plan_summary={f"layer{i}.conv": i for i in range(400)})
    assert tracker.history().empty


def test_names_stay_valid_and_distinct():
    from prune_explorer.tracking.sagemaker_experiments import resource_name, trial_name

    long = trial_name("project", "iteration_" + "x" * 200)
    assert len(long) <= 120 and long.replace("-", "").isalnum()
    assert trial_name("project", "it_1") == "project-it-1"
    assert trial_name("project", "a" * 200) != trial_name("project", "a" * 201)
    with pytest.raises(ValueError):
        resource_name("__", "")
