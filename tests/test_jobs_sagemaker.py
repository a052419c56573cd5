"""SageMakerBackend end to end against a moto server on 127.0.0.1, through the real SDK v3 and boto3.

moto cannot run a job: it echoes the request and fixes the status at Completed. Tests move a
job's status in moto's in-process backend, and play the container's part by putting its
outputs (model.tar.gz, output.tar.gz, the checkpoint-synced trial) where SageMaker would.
StopTrainingJob is a 500 in moto, so the stop path uses botocore's Stubber on the client.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from prune_explorer.jobs.base import COMPLETED, FAILED, QUEUED, RUNNING, STOPPED, Job, new_id
from sagemaker_fakes import (REGION, ROLE, aws, backend, moto_job, put_job_outputs, s3_bytes,  # noqa: F401
                             tar_gz)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from prune_explorer.model.zoo import build_model
    from prune_explorer.model.store import save

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", num_classes=3).eval()
    directory = save(model, tmp_path_factory.mktemp("model") / "baseline")
    return directory, model


def make_job(workspace: Path, model: str, *, iteration: str = "it-1", parent: str | None = None, **hyper) -> Job:
    return Job(id=new_id(), backend="sagemaker", model=model, out_dir=str(workspace / "iterations" / iteration),
               iteration=iteration, parent=parent, hyperparameters=hyper or {"epochs": 2, "lr": 0.01})


def test_start_creates_a_training_job_with_every_config(aws, saved_model, tmp_path):
    model_dir, _ = saved_model
    sm = backend(aws, experiment_name=f"exp-{uuid.uuid4().hex[:8]}", instance_count=2)
    job = make_job(tmp_path, str(model_dir))
    sm.start(job)

    assert job.status == RUNNING and job.started is not None
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    assert described["HyperParameters"] == {"epochs": "2", "lr": "0.01"}  # the model comes as a channel
    spec = described["AlgorithmSpecification"]
    assert spec["TrainingImage"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313"
    assert "prune_explorer.jobs.sagemaker_entry" in spec["ContainerEntrypoint"][-1]
    assert described["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert described["ResourceConfig"]["InstanceCount"] == 2
    assert described["RoleArn"] == ROLE

    checkpoint = described["CheckpointConfig"]
    assert checkpoint == {"S3Uri": f"s3://{aws['bucket']}/prune-explorer/{job.backend_id}/checkpoints",
                          "LocalPath": "/opt/ml/checkpoints"}
    hook = described["DebugHookConfig"]
    assert hook["LocalPath"] == "/opt/ml/checkpoints/trial"
    assert hook["S3OutputPath"].startswith(f"s3://{aws['bucket']}/prune-explorer/{job.backend_id}/")
    (rule,) = described["DebugRuleConfigurations"]
    assert rule["RuleConfigurationName"] == "accuracy-drop"
    assert rule["RuleEvaluatorImage"].endswith("/sagemaker-debugger-rule-evaluator:latest")
    assert rule["RuleParameters"]["rule_to_invoke"] == "AccuracyDropSmdebugRule"
    assert rule["RuleParameters"]["threshold"] == "0.1"
    assert "previous_accuracy" not in rule["RuleParameters"]  # a baseline has no parent to compare with
    rules_source = Path(__import__("prune_explorer.loop.rules").loop.rules.__file__).read_bytes()
    assert s3_bytes(aws, rule["RuleParameters"]["source_s3_uri"]) == rules_source

    experiment = described["ExperimentConfig"]
    assert experiment["ExperimentName"] == sm.experiment_name
    assert experiment["TrialComponentDisplayName"] == job.id
    trial = aws["sagemaker"].describe_trial(TrialName=experiment["TrialName"])
    assert trial["ExperimentName"] == sm.experiment_name

    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert set(channels) == {"code", "model"}
    with tarfile.open(fileobj=io.BytesIO(s3_bytes(aws, channels["code"]))) as tar:
        names = set(tar.getnames())
    assert {"prune_explorer/jobs/train.py", "prune_explorer/jobs/sagemaker_entry.py", "prune_explorer/loop/rules.py",
            "requirements.txt"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    for filename in ("model.json", "model.safetensors"):
        assert s3_bytes(aws, channels["model"] + filename) == (model_dir / filename).read_bytes()


def test_a_job_with_its_own_script_ships_its_source_dir_and_names_its_entry_point(aws, saved_model, tmp_path):
    from prune_explorer.jobs.base import training_script

    source = tmp_path / "src"
    (source / "helpers").mkdir(parents=True)
    (source / "train.py").write_text("import helpers.util\n")
    (source / "helpers" / "util.py").write_text("X = 1\n")
    (source / "requirements.txt").write_text("timm>=1.0\n\n")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: main\n")
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, str(saved_model[0]))
    vars(job).update(training_script("train.py", source))
    sm.start(job)

    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    code = next(c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]
                if c["ChannelName"] == "code")
    assert described["HyperParameters"] == {"epochs": "2", "lr": "0.01", "sagemaker_program": "train.py",
                                            "sagemaker_submit_directory": code}  # as an SDK estimator sends
    with tarfile.open(fileobj=io.BytesIO(s3_bytes(aws, code))) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode().splitlines()
    assert {"train.py", "helpers/util.py", "prune_explorer/jobs/contract.py", "prune_explorer/jobs/train.py"} <= names
    assert not any(".git" in n or "__pycache__" in n for n in names)
    assert requirements[-1] == "timm>=1.0" and "smdebug>=1.0.34" in requirements  # ours, then the script's
    assert code != sm.upload_source()  # the package alone is another tarball

    (source / "prune_explorer").mkdir()
    shadowing = make_job(tmp_path, "resnet18")
    shadowing.entry_point, shadowing.source_dir = "train.py", str(source)
    with pytest.raises(ValueError, match="holds a folder 'prune_explorer'"):
        sm.start(shadowing)


def test_the_entry_point_is_found_inside_its_source_dir_or_refused_naming_it(tmp_path, monkeypatch):
    from prune_explorer.jobs.base import training_script

    source = tmp_path / "src"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "train.py").write_text("")
    (tmp_path / "elsewhere.py").write_text("")
    monkeypatch.chdir(tmp_path)
    expected = {"entry_point": "scripts/train.py", "source_dir": str(source)}
    assert training_script("scripts/train.py", "src") == expected
    assert training_script("src/scripts/train.py", "src") == expected  # the CLI's spelling: a path into it
    assert training_script(source / "scripts" / "train.py", source) == expected
    assert training_script("src/scripts/train.py", None) == {"entry_point": "train.py",
                                                              "source_dir": str(source / "scripts")}
    assert training_script(None, None) == {"entry_point": None, "source_dir": None}
    with pytest.raises(ValueError, match="not inside source_dir"):
        training_script(tmp_path / "elsewhere.py", "src")
    with pytest.raises(FileNotFoundError, match="no file missing.py in source_dir"):
        training_script("missing.py", "src")
    with pytest.raises(FileNotFoundError, match="source_dir 'nowhere'"):
        training_script("train.py", "nowhere")
    with pytest.raises(ValueError, match="needs entry_point"):
        training_script(None, "src")


def test_a_local_weights_file_travels_as_the_weights_channel(aws, tmp_path, monkeypatch):
    from prune_explorer.jobs.contract import JobSpec, resolve_locations

    weights = tmp_path / "resnet18-imagenet.pth"
    weights.write_bytes(b"state dict bytes")
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18", weights=str(weights), epochs=1)
    sm.start(job)
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    assert described["HyperParameters"] == {"weights": "resnet18-imagenet.pth", "epochs": "1", "model": "resnet18"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert s3_bytes(aws, channels["weights"] + "resnet18-imagenet.pth") == b"state dict bytes"
    # in the container: the job contract finds the file by name in the channel
    channel = tmp_path / "opt-ml" / "input" / "data" / "weights"
    channel.mkdir(parents=True)
    (channel / "resnet18-imagenet.pth").write_bytes(b"state dict bytes")
    monkeypatch.setenv("SM_CHANNEL_WEIGHTS", str(channel))
    monkeypatch.chdir(tmp_path / "opt-ml")
    spec = resolve_locations(JobSpec(model="resnet18", weights="resnet18-imagenet.pth"))
    assert spec.weights == str(channel / "resnet18-imagenet.pth")
    assert resolve_locations(JobSpec(model="resnet18", weights="IMAGENET1K_V1")).weights == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="'weights' is reserved"):
        backend(aws, inputs={"weights": "s3://bucket/w/"})


def test_a_distilled_job_carries_its_teacher_as_the_teacher_channel_and_learns_from_it(aws, saved_model, tmp_path,
                                                                                     monkeypatch):
    """Issue 21: the teacher's model files travel as the `teacher` channel (not a local path); the container
    finds them as SM_CHANNEL_TEACHER, distils from them and leaves them as they were."""
    from prune_explorer.jobs.distill import weights_digest
    from prune_explorer.model.store import load, save
    from prune_explorer.model.zoo import build_model
    from sagemaker_fakes import play_container

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.manual_seed(1)
    teacher_dir = save(build_model("mobilenet_v3_small", num_classes=10).eval(), tmp_path / "teacher")
    student_dir = save(load(teacher_dir), tmp_path / "student")
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path / "ws", str(student_dir), dataset="digits", epochs=1, subset=30, val_subset=20,
                   batch_size=10, max_steps=2, device="cpu", measure_latency=False, teacher=str(teacher_dir),
                   distill="baseline", distill_alpha=0.5)
    sm.start(job)
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    hyper = described["HyperParameters"]
    assert "teacher" not in hyper and (hyper["distill"], hyper["distill_alpha"]) == ("baseline", "0.5")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
    assert channels["teacher"] == sm.s3_uri(job.backend_id, "input", "teacher") + "/"
    for name in ("model.json", "model.safetensors"):
        assert s3_bytes(aws, channels["teacher"] + name) == (teacher_dir / name).read_bytes()

    played = play_container(aws, job.backend_id, tmp_path / "opt-ml", monkeypatch)
    assert played["exit_code"] == 0, played["metrics"]
    record = played["metrics"]["teacher"]
    assert record["model"] == str(tmp_path / "opt-ml" / "input" / "data" / "teacher")
    assert (record["distill"], record["alpha"], record["calls"]) == ("baseline", 0.5, 2)  # two steps, two batches
    assert record["weights_sha256_before"] == record["weights_sha256_after"] == weights_digest(load(teacher_dir))
    with pytest.raises(ValueError, match="'teacher' is reserved"):
        backend(aws, inputs={"teacher": "s3://bucket/t/"})
    missing = make_job(tmp_path / "ws", str(student_dir), teacher=str(tmp_path / "nowhere"), epochs=1)
    with pytest.raises(FileNotFoundError, match="nowhere: not a saved model directory"):
        sm.start(missing)


def test_source_is_uploaded_once_per_content(aws, tmp_path):
    sm = backend(aws, debugger=False)
    first = sm.upload_source()
    assert sm.upload_source() == first
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=aws["bucket"])["Contents"]]
    assert [k for k in keys if k.endswith("sourcedir.tar.gz")] == [first.split("/", 3)[3]]


def test_source_tarball_bytes_depend_on_the_content_only(tmp_path, monkeypatch):
    import time

    from prune_explorer.jobs.sagemaker import source_tarball

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    first = source_tarball(package, ["torch"])
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # a later second: gzip would stamp it
    assert source_tarball(package, ["torch"]) == first
    (package / "__init__.py").write_text("x = 2\n")
    assert source_tarball(package, ["torch"]) != first


def test_without_debugger_there_is_no_hook_but_still_a_checkpoint_and_the_rule_runs_in_the_job(aws, tmp_path):
    workspace = tmp_path
    parent_dir = workspace / "iterations" / "it-0"
    parent_dir.mkdir(parents=True)
    (parent_dir / "metrics.json").write_text(json.dumps({"best_accuracy": 0.9}))
    sm = backend(aws, debugger=False, rule_threshold=0.05)
    job = make_job(workspace, "resnet18", iteration="it-1", parent="it-0", epochs=1)
    sm.start(job)

    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    assert "DebugHookConfig" not in described
    assert "DebugRuleConfigurations" not in described
    assert "ExperimentConfig" not in described
    assert described["CheckpointConfig"]["S3Uri"].endswith(f"/{job.backend_id}/checkpoints")
    assert described["HyperParameters"] == {"epochs": "1", "model": "resnet18",
                                            "stop_rule_threshold": "0.05", "baseline_accuracy": "0.9"}
    channels = [c["ChannelName"] for c in described["InputDataConfig"]]
    assert channels == ["code"]


def test_the_debugger_rule_compares_with_the_parent_iteration(aws, saved_model, tmp_path):
    parent_dir = tmp_path / "iterations" / "it-0"
    parent_dir.mkdir(parents=True)
    (parent_dir / "metrics.json").write_text(json.dumps({"epochs": [{"val_accuracy": 0.7}, {"val_accuracy": 0.8}]}))
    sm = backend(aws)
    job = make_job(tmp_path, str(saved_model[0]), parent="it-0")
    sm.start(job)
    (rule,) = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)["DebugRuleConfigurations"]
    assert rule["RuleParameters"]["previous_accuracy"] == "0.8"
    assert "baseline_accuracy" not in aws["sagemaker"].describe_training_job(
        TrainingJobName=job.backend_id)["HyperParameters"]


def test_poll_follows_the_sagemaker_status(aws, tmp_path):
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    fake = moto_job(aws, job.backend_id)

    fake.training_job_status = "InProgress"
    assert sm.poll(job) == RUNNING and not job.done
    fake.training_job_status = "Stopping"
    assert sm.poll(job) == RUNNING
    fake.training_job_status = "Completed"
    assert sm.poll(job) == COMPLETED
    assert job.exit_code == 0 and job.ended is not None and job.message is None


def test_a_failed_job_carries_the_failure_reason(aws, tmp_path):
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    fake = moto_job(aws, job.backend_id)
    fake.training_job_status = "Failed"
    fake.failure_reason = "AlgorithmError: train.py exited with code 1: CUDA out of memory"

    assert sm.poll(job) == FAILED
    assert job.message == "AlgorithmError: train.py exited with code 1: CUDA out of memory"
    assert job.exit_code == 1


def test_a_job_stopped_on_sagemaker_reads_stopped(aws, tmp_path):
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    moto_job(aws, job.backend_id).training_job_status = "Stopped"
    assert sm.poll(job) == STOPPED and job.message == "stopped"


def test_cancel_calls_stop_training_job(aws, tmp_path):
    from botocore.stub import Stubber

    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    with Stubber(sm.sagemaker_client) as stub:
        stub.add_response("stop_training_job", {}, {"TrainingJobName": job.backend_id})
        sm.cancel(job)
        stub.assert_no_pending_responses()
    assert job.status == STOPPED and job.ended is not None
    assert job.message == "stopped by user"


def test_cancel_of_a_job_that_already_ended_is_not_an_error(aws, tmp_path):
    from botocore.stub import Stubber

    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    with Stubber(sm.sagemaker_client) as stub:
        stub.add_client_error("stop_training_job", "ValidationException", "The job status is Completed",
                              expected_params={"TrainingJobName": job.backend_id})
        sm.cancel(job)
    assert job.status == STOPPED


def test_poll_stops_the_job_when_the_accuracy_rule_finds_issues(aws, saved_model, tmp_path):
    from botocore.stub import Stubber

    sm = backend(aws)
    job = make_job(tmp_path, str(saved_model[0]))
    sm.start(job)
    fake = moto_job(aws, job.backend_id)
    fake.training_job_status = "InProgress"
    fake.debug_rule_evaluation_statuses = [{
        "RuleConfigurationName": "accuracy-drop", "RuleEvaluationStatus": "IssuesFound",
        "StatusDetails": "best accuracy 0.61 is 0.29 below 0.90"}]
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    described.pop("ResponseMetadata")
    assert described["DebugRuleEvaluationStatuses"][0]["RuleEvaluationStatus"] == "IssuesFound"

    with Stubber(sm.sagemaker_client) as stub:
        stub.add_response("describe_training_job", described, {"TrainingJobName": job.backend_id})
        stub.add_response("stop_training_job", {}, {"TrainingJobName": job.backend_id})
        assert sm.poll(job) == RUNNING
        stub.assert_no_pending_responses()
    assert "accuracy-drop" in job.message and "0.29 below" in job.message

    fake.training_job_status = "Stopped"
    assert sm.poll(job) == STOPPED
    assert "accuracy-drop" in job.message


# --- fetch: play the container's part, then download -------------------------------------------
def write_trial(directory: Path, steps: int = 2) -> dict[str, np.ndarray]:
    """A real smdebug trial (smdebug's own writer), as train.py leaves under /opt/ml/checkpoints/trial."""
    import prune_explorer.signals.smdebug_compat  # noqa: F401
    from smdebug.core.access_layer.utils import training_has_ended
    from smdebug.core.collection import Collection
    from smdebug.core.collection_manager import CollectionManager
    from smdebug.core.writer import FileWriter

    manager = CollectionManager()
    manager.add(Collection("all", include_regex=[".*"]))
    manager.export(str(directory), "worker_0_collections.json")
    values = {}
    for step in range(steps):
        value = np.arange(4, dtype=np.float32) + step
        writer = FileWriter(trial_dir=str(directory), step=step, worker="worker_0")
        writer.write_tensor(tdata=value, tname="features.0_output_0")
        writer.close()
        values[step] = value
    training_has_ended(str(directory))
    return values


def test_fetch_brings_back_model_metrics_and_trial(aws, saved_model, tmp_path):
    from smdebug.trials import create_trial

    from prune_explorer.model.store import load

    model_dir, model = saved_model
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, str(model_dir))
    sm.start(job)
    trial_values = write_trial(tmp_path / "container-trial")
    metrics = {"status": "completed", "best_accuracy": 0.75, "epochs": [{"val_accuracy": 0.75}]}
    put_job_outputs(aws, sm, job.backend_id, model_dir, metrics, tmp_path / "container-trial")

    out = sm.fetch(job)
    assert out == Path(job.out_dir)
    assert job.result == metrics
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.json", "model.safetensors", "trial"]
    fetched = load(out).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fetched(x), model(x), atol=1e-6)
    trial = create_trial(str(out / "trial"))
    assert trial.steps() == [0, 1]
    for step, value in trial_values.items():
        np.testing.assert_array_equal(trial.tensor("features.0_output_0").value(step), value)


def test_fetch_marks_a_job_the_rule_stopped_as_stopped(aws, saved_model, tmp_path):
    model_dir, _ = saved_model
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, str(model_dir))
    sm.start(job)
    metrics = {"status": "stopped", "reason": "best accuracy 0.50 is 0.40 below 0.90", "best_accuracy": 0.5}
    put_job_outputs(aws, sm, job.backend_id, model_dir, metrics, None)
    assert sm.poll(job) == COMPLETED
    sm.fetch(job)
    assert job.status == STOPPED and job.message == metrics["reason"]


def test_fetch_with_nothing_uploaded_names_the_job(aws, tmp_path):
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    with pytest.raises(FileNotFoundError, match=job.id):
        sm.fetch(job)
    assert list(Path(job.out_dir).iterdir()) == []


def test_fetch_refuses_an_archive_that_escapes_and_leaves_no_partial_files(aws, saved_model, tmp_path):
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path, "resnet18")
    sm.start(job)
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    bucket, _, key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].partition("/")
    aws["s3"].put_object(Bucket=bucket, Key=key, Body=tar_gz({"model.json": b"{}", "../escaped.txt": b"x"}))
    with pytest.raises(ValueError, match="model.tar.gz"):
        sm.fetch(job)
    assert list(Path(job.out_dir).iterdir()) == []
    assert not (Path(job.out_dir).parent / "escaped.txt").exists()


def test_bad_arguments_are_refused_with_the_field_named(aws, tmp_path):
    with pytest.raises(ValueError, match="instance_count"):
        backend(aws, instance_count=0)
    with pytest.raises(ValueError, match="not an s3:// URI"):
        backend(aws, inputs={"train": "/local/data"})
    sm = backend(aws, debugger=False)
    with pytest.raises(ValueError, match="hyperparameter 'note'"):
        sm.start(make_job(tmp_path, "resnet18", note="x" * 300))
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        sm.start(make_job(tmp_path, str(broken)))


def test_the_queue_can_build_the_backend_from_the_environment(aws, monkeypatch):
    from prune_explorer.jobs.queue import make_backend
    from prune_explorer.jobs.sagemaker import SageMakerBackend

    monkeypatch.delenv("PRUNE_EXPLORER_SAGEMAKER_ROLE", raising=False)
    monkeypatch.delenv("PRUNE_EXPLORER_SAGEMAKER_BUCKET", raising=False)
    with pytest.raises(ValueError, match="PRUNE_EXPLORER_SAGEMAKER_ROLE"):
        SageMakerBackend(bucket=aws["bucket"])
    monkeypatch.setenv("PRUNE_EXPLORER_SAGEMAKER_ROLE", ROLE)
    with pytest.raises(ValueError, match="PRUNE_EXPLORER_SAGEMAKER_BUCKET"):
        SageMakerBackend()
    monkeypatch.setenv("PRUNE_EXPLORER_SAGEMAKER_BUCKET", aws["bucket"])
    built = make_backend("sagemaker")
    assert isinstance(built, SageMakerBackend)
    assert (built.role_arn, built.bucket, built.region) == (ROLE, aws["bucket"], REGION)


def test_job_names_are_valid_for_sagemaker():
    from prune_explorer.jobs.sagemaker import training_job_name

    name = training_job_name("prune_explorer", "job 20260101/x" + "y" * 80)
    assert len(name) <= 63
    assert all(c.isalnum() or c == "-" for c in name)
    assert name.startswith("prune-explorer-job-20260101-x")
    assert training_job_name("p", "a" * 100) != training_job_name("p", "a" * 99)


def test_local_moto_endpoint_serves_the_backend_without_aws_credentials(tmp_path):
    import boto3

    from prune_explorer.jobs.sagemaker import SageMakerBackend, local_moto_endpoint

    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}
    with local_moto_endpoint() as aws:
        assert aws["endpoint"].startswith("http://127.0.0.1:")
        assert os.environ["AWS_ENDPOINT_URL"] == aws["endpoint"]
        sm = SageMakerBackend(aws["role_arn"], aws["bucket"], region=aws["region"], debugger=False)
        job = make_job(tmp_path, "resnet18")
        sm.start(job)
        described = boto3.client("sagemaker", region_name=aws["region"]).describe_training_job(
            TrainingJobName=job.backend_id)
        assert described["TrainingJobName"] == job.backend_id
    assert {k: os.environ.get(k) for k in before} == before


# --- what runs inside the container -------------------------------------------------------------
def test_entry_runs_one_process_or_torchrun_across_hosts_and_gpus():
    from prune_explorer.jobs.sagemaker_entry import train_command

    hyper = {"lr": "0.01", "epochs": "2"}
    single = train_command(hyper, {"hosts": ["algo-1"], "current_host": "algo-1"}, gpus=1, python="py")
    assert single == ["py", "-m", "prune_explorer.jobs.train", "--epochs", "2", "--lr", "0.01"]

    multi = train_command(hyper, {"hosts": ["algo-1", "algo-2"], "current_host": "algo-2"}, gpus=4, python="py")
    assert multi[:3] == ["py", "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=4", "--node_rank=1", "--master_addr=algo-1"} <= set(multi)
    assert multi[-6:] == ["-m", "prune_explorer.jobs.train", "--epochs", "2", "--lr", "0.01"]

    gpus = train_command(hyper, {}, gpus=2, python="py")
    assert "--nnodes=1" in gpus and "--nproc_per_node=2" in gpus

    # the user's script (SAGEMAKER_PROGRAM), run from /opt/ml/code, alone or under torchrun
    own = train_command(hyper, {}, gpus=0, python="py", program="scripts/train.py")
    assert own == ["py", "scripts/train.py", "--epochs", "2", "--lr", "0.01"]
    own_multi = train_command(hyper, {"hosts": ["algo-1", "algo-2"], "current_host": "algo-1"}, gpus=2,
                              python="py", program="train.py")
    assert own_multi[:3] == ["py", "-m", "torch.distributed.run"] and "--nnodes=2" in own_multi
    assert own_multi[-5:] == ["train.py", "--epochs", "2", "--lr", "0.01"]


def test_entry_exports_sagemaker_locations(tmp_path):
    from prune_explorer.jobs.sagemaker_entry import sm_environment

    for channel in ("train", "test", "model"):
        (tmp_path / "input" / "data" / channel).mkdir(parents=True)
    env = sm_environment(tmp_path, {"hosts": ["algo-1", "algo-2"], "current_host": "algo-1"}, gpus=0)
    assert env["SM_CHANNEL_TRAIN"] == str(tmp_path / "input" / "data" / "train")
    assert env["SM_CHANNEL_TEST"] == str(tmp_path / "input" / "data" / "test")
    assert env["SM_MODEL_DIR"] == str(tmp_path / "model")
    assert env["SM_OUTPUT_DATA_DIR"] == str(tmp_path / "output" / "data")
    assert env["SM_CHECKPOINT_DIR"] == str(tmp_path / "checkpoints")
    assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"]


def test_entry_leaves_the_failure_reason_for_sagemaker(tmp_path):
    from prune_explorer.jobs.sagemaker_entry import run

    failure = tmp_path / "output" / "failure"
    code = run([sys.executable, "-c", "print('loading'); raise SystemExit('bad layer conv1')"], {}, failure)
    assert code == 1
    assert "exited with code 1" in failure.read_text() and "bad layer conv1" in failure.read_text()

    assert run([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "other") == 0
    assert not (tmp_path / "other").exists()


def test_entry_refuses_a_program_that_is_not_in_the_code(tmp_path):
    from prune_explorer.jobs.sagemaker_entry import main

    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "code").mkdir()
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"sagemaker_program": "trian.py"}))
    assert main(root=tmp_path, code_dir=tmp_path / "code") == 2
    assert "entry point trian.py: no such file in" in (tmp_path / "output" / "failure").read_text()


@pytest.mark.slow
def test_entry_trains_in_a_container_layout_and_fetch_returns_its_outputs(aws, tmp_path):
    """The container's whole path on CPU: entry → train.py → outputs SageMaker would upload → fetch."""
    from smdebug.trials import create_trial

    from prune_explorer.jobs.sagemaker_entry import main
    from prune_explorer.model.store import load

    root = tmp_path / "opt-ml"
    (root / "input" / "config").mkdir(parents=True)
    for folder in ("model", "output/data", "checkpoints"):
        (root / folder).mkdir(parents=True)
    sm = backend(aws, debugger=False)
    job = make_job(tmp_path / "ws", "mobilenet_v3_small", dataset="digits", epochs=1, subset=30,
                   val_subset=20, batch_size=10, max_steps=2, device="cpu", workers=0)
    sm.start(job)
    hyper = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)["HyperParameters"]
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))

    (tmp_path / "no-requirements").mkdir()
    assert main(root=root, code_dir=tmp_path / "no-requirements") == 0
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    put_job_outputs(aws, sm, job.backend_id, root / "model", metrics, root / "checkpoints" / "trial")

    out = sm.fetch(job)
    assert job.result["status"] == "completed" and job.result["best_accuracy"] == metrics["best_accuracy"]
    assert load(out)(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    assert create_trial(str(out / "trial")).tensor_names()


def test_the_job_queue_runs_a_sagemaker_job_from_queued_to_tracked(aws, saved_model, tmp_path):
    """JobQueue + SageMakerBackend: submit returns at once, the worker creates the job, polls it
    while it runs, downloads its outputs when it completes and records the iteration in MLflow."""
    from prune_explorer.jobs import JobQueue
    from prune_explorer.model.store import load
    from prune_explorer.tracking import MlflowTracker

    model_dir, model = saved_model
    sm = backend(aws, debugger=False)
    seen: list[str] = []

    def on_change(job: Job) -> None:
        seen.append(job.status)
        if job.status == RUNNING and job.backend_id and len(seen) == 2:
            moto_job(aws, job.backend_id).training_job_status = "InProgress"  # moto says Completed at once

    polls: list[str] = []
    poll = sm.poll
    sm.poll = lambda job: polls.append(poll(job)) or polls[-1]  # count the worker's polls
    queue = JobQueue(tmp_path, backend=sm, tracker=MlflowTracker(tmp_path), poll_interval=0.1)
    queue.on_change(on_change)
    job = queue.submit(model_dir, parent="baseline", iteration="iter-001", plan={"features.0": [0, 1]},
                       criterion="taylor", hyperparameters={"epochs": 1, "lr": 0.01})
    assert job.status == QUEUED
    deadline = time.monotonic() + 60
    while len(polls) < 3 and time.monotonic() < deadline:  # several polls while SageMaker says InProgress
        time.sleep(0.05)
    assert polls[:3] == [RUNNING] * 3
    assert queue.get(job.id).status == RUNNING
    described = aws["sagemaker"].describe_training_job(TrainingJobName=job.backend_id)
    assert described["TrainingJobStatus"] == "InProgress"
    assert described["HyperParameters"]["lr"] == "0.01"

    metrics = {"status": "completed", "best_accuracy": 0.75, "params": 1234, "macs": 5678,
               "epochs": [{"epoch": 1, "val_accuracy": 0.75}]}
    put_job_outputs(aws, sm, job.backend_id, model_dir, metrics, None)
    moto_job(aws, job.backend_id).training_job_status = "Completed"
    done = queue.wait(job.id, timeout=60)
    queue.close()

    assert done.status == COMPLETED and done.result == metrics and seen == [QUEUED, RUNNING, COMPLETED]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load(done.out_dir).eval()(x), model(x), atol=1e-6)
    row = MlflowTracker(tmp_path).history().set_index("iteration").loc["iter-001"]
    assert row["status"] == "completed" and row["accuracy"] == pytest.approx(0.75)
    assert row["parent"] == "baseline" and row["params"] == 1234 and row["filters_removed"] == 2
    assert Job.load(tmp_path / "jobs" / f"{job.id}.json").status == COMPLETED  # on disk for a restart
