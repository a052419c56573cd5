"""SageMaker against a moto server on 127.0.0.1: the fixtures and the container's part, shared by tests.

moto records a training job but never runs it (its status is Completed at once). Tests move the
status in moto's in-process backend, and play the container: `play_container` unpacks what the
job was given (the code tarball, every input channel, its hyperparameters and entry point) into a
folder laid out like /opt/ml, runs the real container entry (`sagemaker_entry.main`) there, and
uploads the outputs where SageMaker would (model.tar.gz, output.tar.gz, the checkpoint sync).
"""
from __future__ import annotations

import io
import json
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REGION = "us-east-1"
TRANSFER_THREADS = 8
ROLE = "arn:aws:iam::123456789012:role/prune-explorer-test"


@pytest.fixture
def aws(moto_server):
    import boto3

    session = boto3.Session(region_name=REGION)
    bucket = f"pe-{uuid.uuid4().hex[:12]}"
    session.client("s3").create_bucket(Bucket=bucket)
    account = session.client("sts").get_caller_identity()["Account"]
    return {"session": session, "bucket": bucket, "account": account,
            "s3": session.client("s3"), "sagemaker": session.client("sagemaker")}


def backend(aws, **options):
    from prune_explorer.jobs.sagemaker import SageMakerBackend

    return SageMakerBackend(ROLE, aws["bucket"], region=REGION, boto_session=aws["session"], **options)


def moto_job(aws, name: str):
    from moto.backends import get_backend

    return get_backend("sagemaker")[aws["account"]][REGION].training_jobs[name]


def s3_bytes(aws, uri: str) -> bytes:
    bucket, _, key = uri[5:].partition("/")
    return aws["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()


def upload_folder(aws, folder: Path, uri: str) -> str:
    """Every file under `folder` to the s3:// prefix `uri` (as `aws s3 sync` would); returns `uri`."""
    bucket, _, prefix = uri[5:].partition("/")

    def put(path: Path) -> None:
        key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
        aws["s3"].put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(put, sorted(p for p in folder.rglob("*") if p.is_file())))
    return uri


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=0) as tar:  # gzip as SageMaker's, stored: fast
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put_job_outputs(aws, sm, name: str, model_dir: Path, metrics: dict, trial_dir: Path | None) -> None:
    described = aws["sagemaker"].describe_training_job(TrainingJobName=name)
    bucket, _, model_key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].partition("/")
    files = {f: (model_dir / f).read_bytes() for f in ("model.json", "model.safetensors")}
    files["metrics.json"] = json.dumps(metrics).encode()
    aws["s3"].put_object(Bucket=bucket, Key=model_key, Body=tar_gz(files))
    aws["s3"].put_object(Bucket=bucket, Key=model_key.replace("model.tar.gz", "output.tar.gz"),
                         Body=tar_gz({"metrics.json": json.dumps(metrics).encode()}))
    if trial_dir is not None:
        checkpoint = described["CheckpointConfig"]["S3Uri"]
        upload_folder(aws, trial_dir, checkpoint.rstrip("/") + "/trial")


def _download_channel(aws, uri: str, target: Path) -> None:
    bucket, _, prefix = uri[5:].partition("/")
    pages = aws["s3"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys, f"channel {uri} is empty"

    def get(key: str) -> None:
        rest = key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]  # S3Prefix naming one object: its name
        local = target / rest
        local.parent.mkdir(parents=True, exist_ok=True)
        aws["s3"].download_file(bucket, key, str(local))

    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(get, keys))


def play_container(aws, name: str, root: Path, monkeypatch) -> dict:
    """Run training job `name` as its container would, under `root` (an /opt/ml layout), then upload
    its outputs as SageMaker does. Returns {"exit_code", "code_dir", "requirements", "metrics"}."""
    from prune_explorer.jobs.sagemaker_entry import main

    described = aws["sagemaker"].describe_training_job(TrainingJobName=name)
    for folder in ("input/config", "model", "output/data", "checkpoints"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for channel in described["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        _download_channel(aws, uri, root / "input" / "data" / channel["ChannelName"])
    # the job's ContainerEntrypoint: unpack the code channel into /opt/ml/code, run the entry from there
    code_dir = root / "code"
    with tarfile.open(root / "input" / "data" / "code" / "sourcedir.tar.gz") as tar:
        tar.extractall(code_dir, filter="data")
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(described["HyperParameters"]))
    (root / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    # The training image installs requirements.txt; the test's environment has them all already.
    requirements = (code_dir / "requirements.txt").read_text().splitlines()
    (code_dir / "requirements.txt").unlink()
    # moto drops the job's Environment; the entry point travels as the sagemaker_program hyperparameter
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    monkeypatch.setenv("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    code = main(root=root, code_dir=code_dir)
    written = root / "model" / "metrics.json"
    metrics = json.loads(written.read_text()) if written.is_file() else {}
    if code == 0:
        bucket, _, model_key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].partition("/")
        model_files = {p.name: p.read_bytes() for p in (root / "model").iterdir() if p.is_file()}
        aws["s3"].put_object(Bucket=bucket, Key=model_key, Body=tar_gz(model_files))
        output_files = {p.name: p.read_bytes() for p in (root / "output" / "data").iterdir() if p.is_file()}
        aws["s3"].put_object(Bucket=bucket, Key=model_key.replace("model.tar.gz", "output.tar.gz"),
                             Body=tar_gz(output_files))
        upload_folder(aws, root / "checkpoints", described["CheckpointConfig"]["S3Uri"])
    return {"exit_code": code, "code_dir": code_dir, "requirements": requirements, "metrics": metrics}
