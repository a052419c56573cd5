"""Fine-tuning jobs on SageMaker, through SDK v3 (`sagemaker.core.resources.TrainingJob`).

v3's `ModelTrainer` has no Debugger hook, rules or experiment options, so this backend
creates the TrainingJob resource itself and ships its own source: a tarball of the
prune_explorer package whose entry (`prune_explorer.jobs.sagemaker_entry`) runs train.py, via
torchrun when the job spans several instances or GPUs. A job with an `entry_point` brings its
own script, as the SDK's estimators do: the job's `source_dir` goes into the same tarball (its
files at the top, beside `prune_explorer/`; its requirements.txt merged with ours), the entry
point travels as the `sagemaker_program` hyperparameter (with `sagemaker_submit_directory`, as the
estimator in the AWS example sent them), and the container runs it from /opt/ml/code.

S3 layout under `s3://<bucket>/<prefix>/`:

    source/<sha256>/sourcedir.tar.gz   the package (and the job's source dir), uploaded once per content
    source/<sha256>/rules.py           the accuracy-drop rule source (Debugger only)
    <job>/input/model/                 model.json + model.safetensors of the model to tune (the
                                       `model` channel: the job finds it as SM_CHANNEL_MODEL)
    <job>/input/weights/               a local --weights file (the `weights` channel, SM_CHANNEL_WEIGHTS)
    <job>/input/teacher/               the model a distilled job learns from (the `teacher` channel,
                                       SM_CHANNEL_TEACHER; its --teacher folder is not sent)
    <job>/output/                      SageMaker's model.tar.gz / output.tar.gz
    <job>/checkpoints/                 synced /opt/ml/checkpoints: trial/ and metrics.json

The trial always travels through the checkpoint sync, so it reaches S3 without Debugger
(closed to new customers); with Debugger on, the hook config points at the same folder.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .base import COMPLETED, FAILED, RUNNING, STOPPED, Job

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CODE_DIR = "/opt/ml/code"
CHECKPOINT_DIR = "/opt/ml/checkpoints"
TRIAL_SUBDIR = "trial"
MODEL_FILES = ("model.json", "model.safetensors")
DEFAULT_REQUIREMENTS = ("safetensors>=0.4", "smdebug>=1.0.34", "tqdm>=4.60")
PYTORCH_VERSION = "2.10.0"
PYTORCH_PY_VERSION = "py313"
# The AWS Deep Learning Container for PyTorch training; sagemaker.core.image_uris fills in the
# region's registry account and cpu/gpu from the instance type, e.g.
# 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313
PYTORCH_IMAGE_TEMPLATE = "{account}.dkr.ecr.{region}.amazonaws.com/pytorch-training:{version}-{device}-{py}"
ROLE_ENV = "PRUNE_EXPLORER_SAGEMAKER_ROLE"
BUCKET_ENV = "PRUNE_EXPLORER_SAGEMAKER_BUCKET"
RULE_CLASS = "AccuracyDropSmdebugRule"
RULE_NAME = "accuracy-drop"
RULE_INSTANCE_TYPE = "ml.t3.medium"

_STATUS = {
    "InProgress": RUNNING,
    "Stopping": RUNNING,
    "Completed": COMPLETED,
    "Failed": FAILED,
    "Stopped": STOPPED,
}
_NAME_OK = re.compile(r"[^a-zA-Z0-9-]+")


def pytorch_training_image(region: str, instance_type: str, version: str = PYTORCH_VERSION,
                           py_version: str = PYTORCH_PY_VERSION) -> str:
    """The AWS PyTorch training container for `region` (see PYTORCH_IMAGE_TEMPLATE)."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region, version=version, py_version=py_version,
                               instance_type=instance_type, image_scope="training")


def rule_evaluator_image(region: str) -> str:
    """Debugger's image for custom rules: the built-in rules registry, `rule-evaluator` repository."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("debugger", region).replace(
        "sagemaker-debugger-rules:", "sagemaker-debugger-rule-evaluator:")


def training_job_name(prefix: str, job_id: str) -> str:
    """A valid SageMaker job name (alphanumerics and '-', at most 63 characters)."""
    name = _NAME_OK.sub("-", f"{prefix}-{job_id}").strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def hyperparameter_strings(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker takes only strings, at most 100 pairs of at most 256 characters each."""
    if len(hyperparameters) > 100:
        raise ValueError(f"hyperparameters: {len(hyperparameters)} given, SageMaker allows 100")
    out = {}
    for key, value in hyperparameters.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(str(key)) > 256 or len(text) > 256:
            raise ValueError(f"hyperparameter {key!r}: key and value must be at most 256 characters")
        out[str(key)] = text
    return out


def source_tarball(package_dir: Path, requirements: Sequence[str], user_dir: Path | None = None) -> bytes:
    """gzip tar of the package (no caches) plus requirements.txt, reproducible for equal content.

    `user_dir` (a job's source dir) adds its files at the top level, as /opt/ml/code holds them for
    an SDK estimator; its requirements.txt lines follow ours in the one requirements.txt.
    """
    if not (package_dir / "__init__.py").is_file():
        raise ValueError(f"{package_dir}: not a Python package (no __init__.py)")
    requirements = list(requirements)
    user_files: list[tuple[str, Path]] = []
    if user_dir is not None:
        user_dir = Path(user_dir)
        if (user_dir / package_dir.name).exists():
            raise ValueError(f"source_dir {user_dir}: holds a folder {package_dir.name!r}, which would hide the "
                             "installed package in the container; move it out of the source dir")
        for path in _source_files(user_dir):
            relative = path.relative_to(user_dir).as_posix()
            if relative == "requirements.txt":
                requirements += [line for line in path.read_text().splitlines() if line.strip()]
            else:
                user_files.append((relative, path))
    buffer = io.BytesIO()
    # gzip stamps the time into its header unless told otherwise: mtime=0 keeps equal content equal bytes
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _source_files(package_dir):
            _add_bytes(tar, f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}", path.read_bytes())
        for relative, path in user_files:
            _add_bytes(tar, relative, path.read_bytes())
        _add_bytes(tar, "requirements.txt", "".join(f"{r}\n" for r in requirements).encode())
    return buffer.getvalue()


_SKIPPED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def _source_files(root: Path) -> list[Path]:
    """Files to ship from `root`, sorted: no caches, compiled files or VCS folders."""
    return [path for path in sorted(root.rglob("*"))
            if path.is_file() and not _SKIPPED_DIRS.intersection(path.relative_to(root).parts)
            and path.suffix not in {".pyc", ".pyo"}]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def entrypoint(code_channel: str = "code") -> list[str]:
    """Container command: unpack the source, then hand over to prune_explorer.jobs.sagemaker_entry."""
    return [
        "/bin/sh", "-c",
        f"mkdir -p {CODE_DIR} && tar -xzf /opt/ml/input/data/{code_channel}/sourcedir.tar.gz -C {CODE_DIR}"
        f" && cd {CODE_DIR} && exec python3 -m prune_explorer.jobs.sagemaker_entry",
    ]


def _given(value: Any) -> Any:
    """sagemaker-core marks absent fields with Unassigned(); map those to None."""
    from sagemaker.core.utils.utils import Unassigned

    return None if isinstance(value, Unassigned) else value


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class SageMakerBackend:
    """Runs jobs as SageMaker training jobs; every call returns at once (no waiting on AWS)."""

    name = "sagemaker"

    def __init__(
        self,
        role_arn: str | None = None,
        bucket: str | None = None,
        *,
        prefix: str = "prune-explorer",
        instance_type: str = "ml.g4dn.xlarge",
        instance_count: int = 1,
        image_uri: str | None = None,
        region: str | None = None,
        boto_session: Any = None,
        debugger: bool = True,
        rule_threshold: float = 0.10,
        experiment_name: str | None = None,
        package_dir: str | os.PathLike = PACKAGE_DIR,
        inputs: Mapping[str, str] | None = None,
        requirements: Sequence[str] = DEFAULT_REQUIREMENTS,
        volume_size_gb: int = 30,
        max_runtime_s: int = 24 * 3600,
        environment: Mapping[str, str] | None = None,
    ):
        """`role_arn`/`bucket` default to $PRUNE_EXPLORER_SAGEMAKER_ROLE/$PRUNE_EXPLORER_SAGEMAKER_BUCKET
        (so `JobQueue(backend="sagemaker")` works). `inputs` maps extra channel names (e.g. "train",
        "test") to s3:// URIs; train.py sees them as SM_CHANNEL_<NAME>. `experiment_name=None`
        sends no ExperimentConfig."""
        import boto3

        role_arn = role_arn or os.environ.get(ROLE_ENV)
        bucket = bucket or os.environ.get(BUCKET_ENV)
        if not role_arn:
            raise ValueError(f"role_arn: none given and ${ROLE_ENV} is not set (an IAM role SageMaker can assume)")
        if not bucket:
            raise ValueError(f"bucket: none given and ${BUCKET_ENV} is not set (the S3 bucket for code and results)")

        if instance_count < 1:
            raise ValueError(f"instance_count: must be at least 1, got {instance_count}")
        for channel, uri in (inputs or {}).items():
            _split_s3(uri)
            if channel in {"code", "model", "weights", "teacher"}:
                raise ValueError(f"inputs: channel name {channel!r} is reserved")
        self.boto_session = boto_session or boto3.Session(region_name=region)
        self.region = region or self.boto_session.region_name
        if not self.region:
            raise ValueError("region: none given and the boto3 session has no default region")
        self.role_arn, self.bucket, self.prefix = role_arn, bucket, prefix.strip("/")
        self.instance_type, self.instance_count = instance_type, instance_count
        self.image_uri = image_uri or pytorch_training_image(self.region, instance_type)
        self.debugger, self.rule_threshold = debugger, rule_threshold
        self.experiment_name = experiment_name
        self.package_dir = Path(package_dir)
        self.inputs = dict(inputs or {})
        self.requirements = tuple(requirements)
        self.volume_size_gb, self.max_runtime_s = volume_size_gb, max_runtime_s
        self.environment = dict(environment or {})
        self.s3 = self.boto_session.client("s3", region_name=self.region)

    @property
    def sagemaker_client(self) -> Any:
        """The boto3 client sagemaker-core uses for this session (one per session and region)."""
        from sagemaker.core.resources import Base

        return Base.get_sagemaker_client(session=self.boto_session, region_name=self.region)

    # -- S3 locations --------------------------------------------------------------------
    def s3_uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, self.prefix, *parts])

    def checkpoint_uri(self, job_name: str) -> str:
        return self.s3_uri(job_name, "checkpoints")

    # -- Backend protocol ----------------------------------------------------------------
    def start(self, job: Job) -> None:
        from sagemaker.core.resources import TrainingJob

        name = training_job_name(self.prefix, job.id)
        spec = self.training_job_spec(job, name)
        if self.experiment_name:
            from ..tracking.sagemaker_experiments import ensure_trial

            trial = spec["experiment_config"].trial_name
            ensure_trial(self.experiment_name, trial, session=self.boto_session, region=self.region)
        TrainingJob.create(training_job_name=name, session=self.boto_session, region=self.region, **spec)
        job.backend_id = name
        job.status = RUNNING
        job.started = time.time()
        log.info("started SageMaker training job %s", name)

    def training_job_spec(self, job: Job, name: str) -> dict[str, Any]:
        """Upload what the job needs and return the TrainingJob.create arguments (all but the name)."""
        from sagemaker.core import shapes

        code_uri = self.upload_source(job.source_dir if job.entry_point else None)
        hyperparameters = dict(job.hyperparameters)
        channels = {"code": code_uri, **self.inputs}
        model_uri = self.upload_model(job.model, name)
        if model_uri:
            channels["model"] = model_uri  # the job reads it from SM_CHANNEL_MODEL (prune_explorer.jobs.contract)
        else:
            hyperparameters.setdefault("model", job.model)
        teacher = hyperparameters.pop("teacher", None)
        if teacher is not None:  # a distilled job: the teacher's model files, found as SM_CHANNEL_TEACHER
            channels["teacher"] = self.upload_model(teacher, name, channel="teacher")
            if channels["teacher"] is None:
                raise FileNotFoundError(f"teacher {teacher}: not a saved model directory or an s3:// prefix")
        weights = self.upload_weights(hyperparameters.get("weights"), name)
        if weights:  # a local pretrained-weights file: the `weights` channel, named by its file name
            channels["weights"], hyperparameters["weights"] = weights
        if job.entry_point:  # what an SDK estimator sends; the container entry reads and strips them
            hyperparameters.update(sagemaker_program=job.entry_point, sagemaker_submit_directory=code_uri)
        previous = parent_accuracy(job)
        if not self.debugger and previous is not None:
            hyperparameters.setdefault("stop_rule_threshold", self.rule_threshold)
            hyperparameters.setdefault("baseline_accuracy", previous)
        spec: dict[str, Any] = dict(
            role_arn=self.role_arn,
            hyper_parameters=hyperparameter_strings(hyperparameters),
            algorithm_specification=shapes.AlgorithmSpecification(
                training_image=self.image_uri, training_input_mode="File", container_entrypoint=entrypoint()),
            input_data_config=[_channel(shapes, n, uri) for n, uri in channels.items()],
            output_data_config=shapes.OutputDataConfig(s3_output_path=self.s3_uri(name, "output")),
            resource_config=shapes.ResourceConfig(
                instance_type=self.instance_type, instance_count=self.instance_count,
                volume_size_in_gb=self.volume_size_gb),
            stopping_condition=shapes.StoppingCondition(max_runtime_in_seconds=self.max_runtime_s),
            checkpoint_config=shapes.CheckpointConfig(s3_uri=self.checkpoint_uri(name), local_path=CHECKPOINT_DIR),
            environment={"PYTHONPATH": CODE_DIR, "PYTHONUNBUFFERED": "1",
                         "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", **self.environment},
            tags=[{"key": "prune-explorer:job", "value": job.id}],
        )
        if self.debugger:
            spec["debug_hook_config"] = shapes.DebugHookConfig(
                local_path=f"{CHECKPOINT_DIR}/{TRIAL_SUBDIR}", s3_output_path=self.s3_uri(name, "debug-output"))
            spec["debug_rule_configurations"] = [self.rule_configuration(previous, shapes)]
        if self.experiment_name:
            from ..tracking.sagemaker_experiments import trial_name

            spec["experiment_config"] = shapes.ExperimentConfig(
                experiment_name=self.experiment_name,
                trial_name=trial_name(self.experiment_name, job.iteration or job.id),
                trial_component_display_name=job.id)
        return spec

    def rule_configuration(self, previous_accuracy: float | None, shapes: Any) -> Any:
        """The accuracy-drop rule as a Debugger custom rule (loop/rules.py, class AccuracyDropSmdebugRule)."""
        rules_py = self.package_dir / "loop" / "rules.py"
        if not rules_py.is_file():
            raise FileNotFoundError(f"{rules_py}: the accuracy-drop rule source is missing (needed with debugger=True)")
        data = rules_py.read_bytes()
        key = f"{self.prefix}/source/{hashlib.sha256(data).hexdigest()[:16]}/rules.py"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        parameters = {
            "source_s3_uri": f"s3://{self.bucket}/{key}",
            "rule_to_invoke": RULE_CLASS,
            "threshold": str(self.rule_threshold),
        }
        if previous_accuracy is not None:
            parameters["previous_accuracy"] = str(previous_accuracy)
        return shapes.DebugRuleConfiguration(
            rule_configuration_name=RULE_NAME,
            rule_evaluator_image=rule_evaluator_image(self.region),
            instance_type=RULE_INSTANCE_TYPE,
            volume_size_in_gb=10,
            rule_parameters=parameters)

    def upload_source(self, user_dir: str | os.PathLike | None = None) -> str:
        """Upload the package tarball (with a job's source dir) once per content; return the `code` channel URI."""
        data = source_tarball(self.package_dir, self.requirements, Path(user_dir) if user_dir else None)
        prefix = f"{self.prefix}/source/{hashlib.sha256(data).hexdigest()[:16]}"
        key = f"{prefix}/sourcedir.tar.gz"
        if not _exists(self.s3, self.bucket, key):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{prefix}/sourcedir.tar.gz"

    def upload_model(self, model: str, job_name: str, channel: str = "model") -> str | None:
        """A saved model directory goes to S3 as the `model` channel (or `channel`: the teacher); an
        s3:// prefix is used as is."""
        if model.startswith("s3://"):
            return model
        directory = Path(model)
        if not directory.is_dir():
            return None
        missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a saved model, missing {', '.join(missing)}")
        for filename in MODEL_FILES:
            self.s3.upload_file(str(directory / filename), self.bucket,
                                f"{self.prefix}/{job_name}/input/{channel}/{filename}")
        return self.s3_uri(job_name, "input", channel) + "/"

    def upload_weights(self, weights: Any, job_name: str) -> tuple[str, str] | None:
        """A local weights file goes to S3 as the `weights` channel: (channel URI, file name), else None
        (a torchvision enum name, which the container downloads, or no weights)."""
        if not isinstance(weights, str) or not Path(weights).is_file():
            return None
        path = Path(weights)
        self.s3.upload_file(str(path), self.bucket, f"{self.prefix}/{job_name}/input/weights/{path.name}")
        return self.s3_uri(job_name, "input", "weights") + "/", path.name

    def poll(self, job: Job) -> str:
        from sagemaker.core.resources import TrainingJob

        if not job.backend_id or job.done:
            return job.status
        described = TrainingJob.get(training_job_name=job.backend_id, session=self.boto_session, region=self.region)
        sm_status = _given(described.training_job_status)
        status = _STATUS.get(sm_status)
        if status is None:
            raise ValueError(f"training job {job.backend_id}: unknown SageMaker status {sm_status!r}")
        fired = self._fired_rule(described)
        if status == RUNNING and fired and sm_status != "Stopping":
            self._stop(job.backend_id)
            job.message = f"stopped: {fired}"
            return job.status
        if status in {COMPLETED, FAILED, STOPPED}:
            end = _given(described.training_end_time)
            job.ended = end.timestamp() if end else time.time()
            if status == FAILED:
                job.message = _given(described.failure_reason) or "SageMaker reported Failed without a reason"
                job.exit_code = 1
            elif status == STOPPED:
                job.message = job.message or (f"stopped: {fired}" if fired else "stopped")
            else:
                job.exit_code = 0
        job.status = status
        return status

    @staticmethod
    def _fired_rule(described: Any) -> str | None:
        """The accuracy-drop rule's verdict when it found issues (the AWS example's stop signal)."""
        for evaluation in _given(described.debug_rule_evaluation_statuses) or []:
            if (_given(evaluation.rule_configuration_name) == RULE_NAME
                    and _given(evaluation.rule_evaluation_status) == "IssuesFound"):
                details = _given(evaluation.status_details)
                return f"rule {RULE_NAME} found issues" + (f" ({details})" if details else "")
        return None

    def cancel(self, job: Job) -> None:
        if job.backend_id and not job.done:
            self._stop(job.backend_id)
        job.status = STOPPED
        job.ended = time.time()
        job.message = job.message or "stopped by user"

    def _stop(self, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.sagemaker_client.stop_training_job(TrainingJobName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationException":
                raise
            log.info("training job %s had already ended: %s", name, exc)

    def fetch(self, job: Job) -> Path:
        """Download and unpack model.tar.gz, output.tar.gz and the checkpoint folder (trial, metrics).

        A job that train.py ended early through the accuracy-drop rule completes on SageMaker
        (so its model is uploaded); its metrics.json says "stopped", and so does the job then.
        """
        if not job.backend_id:
            raise ValueError(f"job {job.id}: never started on SageMaker, nothing to fetch")
        from sagemaker.core.resources import TrainingJob

        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = job.backend_id
        described = TrainingJob.get(training_job_name=name, session=self.boto_session, region=self.region)
        artifacts = _given(described.model_artifacts)
        model_uri = _given(artifacts.s3_model_artifacts) if artifacts else None
        bucket, model_key = _split_s3(model_uri or self.s3_uri(name, "output", name, "output", "model.tar.gz"))
        output = model_key.rsplit("/", 1)[0]
        with tempfile.TemporaryDirectory(dir=out, prefix=".fetch-") as tmp:
            staging = Path(tmp)
            found = False
            for archive in ("model.tar.gz", "output.tar.gz"):
                local = staging / archive
                if _download(self.s3, bucket, f"{output}/{archive}", local):
                    _extract(local, staging / "files")
                    local.unlink()
                    found = True
            checkpoint = f"{self.prefix}/{name}/checkpoints/"
            found |= _download_prefix(self.s3, self.bucket, checkpoint, staging / "files")
            if not found:
                raise FileNotFoundError(
                    f"job {job.id}: nothing in s3://{bucket}/{output}/ or s3://{self.bucket}/{checkpoint}")
            _move_into(staging / "files", out)
        metrics = out / "metrics.json"
        if metrics.is_file():
            try:
                job.result = json.loads(metrics.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metrics}: not valid JSON ({exc})") from exc
            if job.result.get("status") == STOPPED:
                job.status = STOPPED
                job.message = job.result.get("reason") or "stopped by the accuracy-drop rule"
        return out


def _channel(shapes: Any, name: str, uri: str) -> Any:
    return shapes.Channel(channel_name=name, input_mode="File", data_source=shapes.DataSource(
        s3_data_source=shapes.S3DataSource(
            s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")))


def parent_accuracy(job: Job) -> float | None:
    """The parent iteration's best accuracy from WORKSPACE/iterations/<parent>/metrics.json, if known.

    The stop rule compares against it: as the Debugger rule's `previous_accuracy`, or without
    Debugger as train.py's `--baseline-accuracy` with `--stop-rule-threshold`.
    """
    if not job.parent:
        return None
    metrics = Path(job.out_dir).parent / job.parent / "metrics.json"
    try:
        data = json.loads(metrics.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    best = data.get("best_accuracy")
    if best is None:
        seen = [e.get("val_accuracy") for e in data.get("epochs") or [] if isinstance(e, dict)]
        best = max((a for a in seen if a is not None), default=None)
    return None if best is None else float(best)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def _download(s3: Any, bucket: str, key: str, target: Path) -> bool:
    if not _exists(s3, bucket, key):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(target))
    return True


def _download_prefix(s3: Any, bucket: str, prefix: str, target: Path) -> bool:
    """Download every object under `prefix` (a trial can be thousands of event files)."""
    from tqdm.auto import tqdm

    keys = [obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if obj["Key"][len(prefix):] and not obj["Key"].endswith("/")]
    root = target.resolve()
    for key in tqdm(keys, desc=f"s3://{bucket}/{prefix}", unit="file", disable=len(keys) < 50):
        local = (target / key[len(prefix):]).resolve()
        if not local.is_relative_to(root):
            raise ValueError(f"s3://{bucket}/{key}: key escapes the download folder")
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(local))
    return bool(keys)


def _extract(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{archive.name}: cannot be unpacked ({exc})") from exc


def _move_into(source: Path, target: Path) -> None:
    """Move each fetched file or folder into place with one rename, so no half-written file shows."""
    if not source.is_dir():
        return
    for item in source.iterdir():
        destination = target / item.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(item, destination)


@contextlib.contextmanager
def local_moto_endpoint(region: str = "us-east-1", bucket: str | None = "prune-explorer-demo") -> Iterator[dict[str, str]]:
    """A stand-in AWS on 127.0.0.1 (moto server) so a notebook can walk through the SageMaker
    backend with no AWS account: jobs are recorded, never run, and nothing leaves this machine.

    Yields {"endpoint", "region", "bucket", "role_arn"}; environment variables are restored on exit.
    """
    import socket

    import boto3
    from moto.server import ThreadedMotoServer
    from sagemaker.core.utils.utils import SageMakerClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region, "AWS_REGION": region, "SAGEMAKER_VALIDATE_ROLE": "false",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    SageMakerClient.reset()
    log.warning("using a local moto server at %s as AWS: no credentials needed, no job really runs", endpoint)
    try:
        if bucket:
            boto3.Session(region_name=region).client("s3").create_bucket(Bucket=bucket)
        yield {"endpoint": endpoint, "region": region, "bucket": bucket or "",
               "role_arn": "arn:aws:iam::123456789012:role/prune-explorer-demo"}
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        SageMakerClient.reset()
