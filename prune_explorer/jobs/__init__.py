"""Fine-tuning jobs: the `Job` record, the `JobQueue`, the backends that run them (`BACKENDS`, the registry),
and the job contract every training script honours."""
from __future__ import annotations

from .backends import BACKENDS, BackendEntry, Option, make_backend
from .base import COMPLETED, FAILED, FINAL, QUEUED, RUNNING, STATUSES, STOPPED, Backend, Job, new_id
from .local import LocalBackend
from .queue import JobQueue, iteration_record

__all__ = [
    "BACKENDS", "Backend", "BackendEntry", "Job", "JobQueue", "LocalBackend", "Option", "iteration_record",
    "make_backend", "new_id",
    "QUEUED", "RUNNING", "COMPLETED", "FAILED", "STOPPED", "STATUSES", "FINAL",
]
