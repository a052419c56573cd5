"""What a fine-tuning job is, independent of where it runs.

A `Job` is plain data, saved as `WORKSPACE/jobs/<id>.json` (atomic write) so a queue survives a
kernel or process restart. A `Backend` knows how to start, poll, cancel and fetch one job.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..masking import mask
from ..workspace.layout import Metrics, train_log, write_json

QUEUED, RUNNING, COMPLETED, FAILED, STOPPED = "queued", "running", "completed", "failed", "stopped"
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, STOPPED)
FINAL = frozenset({COMPLETED, FAILED, STOPPED})


def new_id(prefix: str = "job") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class Job:
    """One fine-tuning job: the model to train, how, where, and what came of it."""

    id: str
    backend: str                                # "local" | "sagemaker"
    model: str                                  # torchvision arch name or a saved model directory
    out_dir: str                                # WORKSPACE/iterations/<iteration>/ : results land here
    parent: str | None = None                   # parent iteration id (None for the baseline)
    iteration: str | None = None                # iteration id this job produces
    plan: dict[str, Any] = field(default_factory=dict)         # PrunePlan.summary()
    criterion: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # train.py arguments
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    message: str | None = None                  # why it failed or was stopped
    backend_id: str | None = None               # pid, SageMaker training job name, ...
    result: dict[str, Any] = field(default_factory=dict)       # metrics.json once completed
    entry_point: str | None = None              # the user's training script, relative to source_dir (None: train.py)
    source_dir: str | None = None               # folder shipped with it (absolute); SageMaker runs it from /opt/ml/code

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def log_path(self) -> Path:
        return train_log(self.out_dir)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the job's log, credentials masked (it goes into messages, records and the panel)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return mask("\n".join(text.splitlines()[-lines:]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def metrics(self) -> Metrics:
        """The job's metrics.json (its `result`), read by field."""
        return Metrics(self.result or {})

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `<directory>/<id>.json` atomically (temp file + rename)."""
        # a message quoting a log or an error keeps no credential
        return write_json(record_path(directory, self.id), {**self.to_json(), "message": mask(self.message)},
                          sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Job":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a job record ({exc})") from exc


def record_path(directory: str | os.PathLike, job_id: str) -> Path:
    """Where job `job_id`'s record lives in a jobs folder."""
    return Path(directory) / f"{job_id}.json"


def record_paths(directory: str | os.PathLike) -> list[Path]:
    """Every job record in a jobs folder, by file name."""
    return sorted(Path(directory).glob("*.json"))


def read_records(directory: str | os.PathLike) -> list[Job]:
    """The readable job records of a jobs folder (one removed or half-known meanwhile is passed over)."""
    found = []
    for path in record_paths(directory):
        try:
            found.append(Job.load(path))
        except (FileNotFoundError, ValueError):
            continue
    return found


def training_script(entry_point: str | os.PathLike | None,
                    source_dir: str | os.PathLike | None) -> dict[str, str | None]:
    """Job fields for a user's training script: `{"entry_point": path inside source_dir, "source_dir": absolute}`.

    As the SageMaker SDK's estimators take them: `entry_point="train.py", source_dir="src/"`; an
    entry point given as a path into the source dir ("src/train.py") or alone (its folder is then
    the source dir) works too. The script must honour the job contract (`prune_explorer.jobs.contract`).
    """
    if entry_point is None:
        if source_dir is not None:
            raise ValueError(f"source_dir={str(source_dir)!r} needs entry_point= (the script to run in it)")
        return {"entry_point": None, "source_dir": None}
    script = Path(entry_point)
    if source_dir is None:
        if not script.is_file():
            raise FileNotFoundError(f"entry_point {str(entry_point)!r}: no such file (and no source_dir given)")
        root, script = script.resolve().parent, Path(script.name)
    else:
        root = Path(source_dir).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"source_dir {str(source_dir)!r}: no such folder")
        if script.is_absolute() or (not (root / script).is_file() and script.is_file()):
            if not script.resolve().is_relative_to(root):  # "src/train.py" with source_dir "src" is inside
                raise ValueError(f"entry_point {str(entry_point)!r} is not inside source_dir {str(root)!r}")
            script = script.resolve().relative_to(root)
    if not (root / script).is_file():
        raise FileNotFoundError(f"entry_point {str(entry_point)!r}: no file {script} in source_dir {root}")
    if script.suffix != ".py":
        raise ValueError(f"entry_point {str(entry_point)!r}: expected a Python script (.py)")
    return {"entry_point": script.as_posix(), "source_dir": str(root)}


def scripts_allowed(scripts: bool | str | os.PathLike | None) -> bool | Path:
    """Where user training scripts may come from: True anywhere, False (or None) nowhere, else a folder."""
    if isinstance(scripts, bool):
        return scripts
    if scripts is None:
        return False
    root = Path(scripts).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"scripts folder {str(scripts)!r}: no such folder (where training scripts may come from)")
    return root


def check_script(entry_point: str | None, source_dir: str | None, allowed: bool | Path) -> None:
    """Refuse a job's own training script unless `allowed` lets it run (ValueError naming the script).

    The script and its source dir (which goes on the import path) must both lie inside an allowed
    folder, symlinks resolved.
    """
    if not entry_point or allowed is True:
        return
    root = Path(source_dir or ".").resolve()
    script = (root / entry_point).resolve()
    if allowed is False:
        raise ValueError(f"training script {str(script)!r}: user scripts are off here, so jobs run only "
                         "prune_explorer.jobs.train (the app: launch it with --allow-scripts DIR to run scripts "
                         "from DIR)")
    for path in (root, script):
        if not path.is_relative_to(allowed):
            raise ValueError(f"training script {str(script)!r} (source dir {str(root)!r}) is outside {str(allowed)!r}, "
                             "the only folder scripts may run from here")


TRUST_ARGUMENT = "trust_model_code"  # the job contract's option (`--trust-model-code a,b`)


def with_trust(hyperparameters: dict[str, Any], trust: tuple[str, ...]) -> dict[str, Any]:
    """A job's arguments with `trust` (module names, comma-separated) in place of any a record carried."""
    out = {k: v for k, v in hyperparameters.items() if k.replace("-", "_") != TRUST_ARGUMENT}
    if trust:
        out[TRUST_ARGUMENT] = ",".join(trust)
    return out


class Backend(Protocol):
    """Where jobs run. Every call returns quickly; none blocks for the job's duration."""

    name: str

    def start(self, job: Job) -> None:
        """Launch the job; set job.backend_id, job.status=RUNNING, job.started."""

    def poll(self, job: Job) -> str:
        """Refresh job.status (and exit_code/message/ended when final) and return it."""

    def cancel(self, job: Job) -> None:
        """Stop the job; its status becomes STOPPED."""

    def fetch(self, job: Job) -> Path:
        """Make the job's results (model.json, model.safetensors, metrics.json, trial/) present in job.out_dir."""
