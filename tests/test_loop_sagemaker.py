"""`prune-explorer run --backend sagemaker --tracker sagemaker-experiments` against the moto server.

moto records a training job but runs nothing. `ContainerRunner` plays SageMaker's part: each new
job starts InProgress, its container runs here from what the job carries (the uploaded source
tarball, the model channel, the hyperparameters; `prune_explorer.jobs.sagemaker_entry` → train.py),
its outputs go where SageMaker puts them (model.tar.gz, output.tar.gz, the checkpoint sync), and
then the job completes. Everything else is the real CLI, SDK v3, boto3 and S3.
"""
from __future__ import annotations

import io
import json
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/prune-explorer-loop"
pytestmark = pytest.mark.slow


def _tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(path, arcname=path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


class ContainerRunner:
    """Runs each InProgress moto training job's container on this machine, then completes the job."""

    def __init__(self, root: Path):
        import boto3
        from moto.backends import get_backend

        self.root = root
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.s3 = boto3.client("s3", region_name=REGION)
        account = boto3.client("sts", region_name=REGION).get_caller_identity()["Account"]
        self.jobs = get_backend("sagemaker")[account][REGION].training_jobs
        self.ran: list[str] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sagemaker-stand-in", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for name, fake in list(self.jobs.items()):
                if fake.training_job_status != "InProgress" or name in self.ran:
                    continue
                self.ran.append(name)
                try:
                    code = self.run_container(name)
                    fake.training_job_status = "Completed" if code == 0 else "Failed"
                except BaseException as exc:  # surfaced by the test
                    self.errors.append(exc)
                    fake.failure_reason = f"stand-in container: {exc}"
                    fake.training_job_status = "Failed"

    def download(self, uri: str, target: Path) -> None:
        bucket, prefix = _split(uri)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix):].lstrip("/") or obj["Key"].rsplit("/", 1)[-1]  # a file channel
                local = target / rest
                local.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, obj["Key"], str(local))

    def upload(self, folder: Path, uri: str) -> None:
        bucket, prefix = _split(uri)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")

    def run_container(self, name: str) -> int:
        from prune_explorer.jobs.sagemaker_entry import main

        described = self.sagemaker.describe_training_job(TrainingJobName=name)
        root = self.root / name
        channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in described["InputDataConfig"]}
        for channel, uri in channels.items():
            self.download(uri, root / "input" / "data" / channel)
        code = root / "code"
        with tarfile.open(root / "input" / "data" / "code" / "sourcedir.tar.gz") as tar:
            tar.extractall(code, filter="data")  # the package as the job shipped it
        hyper = dict(described["HyperParameters"])
        if "model" in channels:
            hyper["model"] = str(root / "input" / "data" / "model")  # /opt/ml/input/data/model in a container
        (root / "input" / "config").mkdir(parents=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyper))
        for folder in ("model", "output/data", "checkpoints"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        status = main(root=root, code_dir=code)
        output = described["ModelArtifacts"]["S3ModelArtifacts"]
        bucket, key = _split(output)
        self.s3.put_object(Bucket=bucket, Key=key, Body=_tar_gz(root / "model"))
        self.s3.put_object(Bucket=bucket, Key=key.replace("model.tar.gz", "output.tar.gz"),
                           Body=_tar_gz(root / "output" / "data"))
        self.upload(root / "checkpoints", described["CheckpointConfig"]["S3Uri"])
        return status


@pytest.fixture
def container_runner(moto_server, tmp_path, monkeypatch):
    from moto.sagemaker.models import FakeTrainingJob

    created = FakeTrainingJob.__init__

    def in_progress(self, *args, **kwargs):  # moto completes a job at creation; SageMaker starts it
        created(self, *args, **kwargs)
        self.training_job_status = "InProgress"

    monkeypatch.setattr(FakeTrainingJob, "__init__", in_progress)
    # The SDK's Session asks STS at a fixed public address (not AWS_ENDPOINT_URL) for the account
    # behind its default bucket: point that one lookup at the moto server too.
    monkeypatch.setattr("sagemaker.core.helper.session_helper.sts_regional_endpoint", lambda region: moto_server)
    runner = ContainerRunner(tmp_path / "containers")
    runner.thread.start()
    yield runner
    runner.stop.set()
    runner.thread.join(timeout=600)


def test_the_cli_loop_runs_sagemaker_jobs_and_reads_its_history_back_from_experiments(container_runner, tmp_path, capsys):
    import boto3

    from prune_explorer.cli import main
    from prune_explorer.tracking.sagemaker_experiments import SageMakerExperimentsTracker, trial_name

    experiment = f"pe-loop-{uuid.uuid4().hex[:8]}"
    workspace = tmp_path / "ws"
    code = main(["run", "--workspace", str(workspace), "--backend", "sagemaker", "--tracker", "sagemaker-experiments",
                 "--experiment", experiment, "--role", ROLE, "--region", REGION, "--instance-type", "ml.m5.large",
                 "--dataset", "digits", "--image-size", "8", "--subset", "120", "--val-subset", "60",
                 "--batch-size", "30", "--baseline-epochs", "1", "--epochs", "1", "--iterations", "2",
                 "--per-iteration", "48", "--threshold", "0.9", "--quiet"])
    out = capsys.readouterr()
    assert not container_runner.errors, container_runner.errors
    assert code == 0, out.err
    assert "stopped: completed 2 iterations" in out.out

    # three SageMaker training jobs: the baseline and two iterations, each iteration carrying the rule
    client = boto3.client("sagemaker", region_name=REGION)
    described = {d["ExperimentConfig"]["TrialName"]: d for d in
                 (client.describe_training_job(TrainingJobName=name) for name in container_runner.ran)}
    assert set(described) == {trial_name(experiment, i) for i in ("baseline", "iter-001", "iter-002")}
    history = SageMakerExperimentsTracker(experiment, region=REGION).history()
    assert history["iteration"].tolist() == ["baseline", "iter-001", "iter-002"]
    assert history["parent"].tolist()[1:] == ["baseline", "iter-001"]
    assert history["status"].tolist() == ["completed"] * 3 and history["backend"].tolist() == ["sagemaker"] * 3
    assert history["params"].is_monotonic_decreasing and history["filters_removed"].tolist()[1:] == [48, 48]
    accuracy = dict(zip(history["iteration"], history["accuracy"]))
    for iteration, parent in (("iter-001", "baseline"), ("iter-002", "iter-001")):
        job = described[trial_name(experiment, iteration)]
        assert job["ResourceConfig"] == {**job["ResourceConfig"], "InstanceType": "ml.m5.large", "InstanceCount": 1}
        assert job["ExperimentConfig"]["ExperimentName"] == experiment
        assert job["HyperParameters"]["stop_rule_threshold"] == "0.9"        # the rule inside the job
        assert float(job["HyperParameters"]["baseline_accuracy"]) == pytest.approx(accuracy[parent])
        (rule,) = job["DebugRuleConfigurations"]                             # and as a Debugger rule
        assert rule["RuleParameters"]["threshold"] == "0.9"
        assert float(rule["RuleParameters"]["previous_accuracy"]) == pytest.approx(accuracy[parent])
        assert job["OutputDataConfig"]["S3OutputPath"].startswith("s3://sagemaker-us-east-1-123456789012/")  # session's bucket
        row = history.set_index("iteration").loc[iteration]
        assert row["job_id"] and job["TrainingJobName"].endswith(row["job_id"][-6:])
        assert (workspace / "iterations" / iteration / "model.json").is_file()  # fetched back
        assert (workspace / "iterations" / iteration / "trial" / "collections").is_dir()

    assert main(["history", "--workspace", str(workspace), "--tracker", "sagemaker-experiments",
                 "--experiment", experiment, "--region", REGION]) == 0
    printed = capsys.readouterr().out
    assert all(i in printed for i in ("baseline", "iter-001", "iter-002"))
