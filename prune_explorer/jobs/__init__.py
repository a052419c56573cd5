"""Fine-tuning jobs: the `Job` record, the `JobQueue`, and the backends that run them."""
from __future__ import annotations

from .base import COMPLETED, FAILED, FINAL, QUEUED, RUNNING, STATUSES, STOPPED, Backend, Job, new_id
from .local import LocalBackend
from .queue import JobQueue, iteration_record

__all__ = [
    "Backend", "Job", "JobQueue", "LocalBackend", "iteration_record", "new_id",
    "QUEUED", "RUNNING", "COMPLETED", "FAILED", "STOPPED", "STATUSES", "FINAL",
]
