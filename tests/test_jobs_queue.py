"""JobQueue under concurrent use: a slow backend never blocks submit/jobs, cancel goes through the
job's own backend, and two queues on one workspace finish and track a job once."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from prune_explorer.jobs import COMPLETED, QUEUED, RUNNING, STOPPED, Job, JobQueue

from test_jobs_local import LONG, QUICK, _pid_alive, _wait_for


class BlockingBackend:
    """Starts at once; every poll blocks until the test releases it (a SageMaker call taking seconds)."""

    name = "blocking"

    def __init__(self):
        self.polling = threading.Event()
        self.cancelling = threading.Event()
        self.release = threading.Event()
        self.polls = 0

    def start(self, job: Job) -> None:
        job.status, job.started, job.backend_id = RUNNING, time.time(), f"blocked-{job.id}"

    def poll(self, job: Job) -> str:
        self.polls += 1
        self.polling.set()
        if not self.release.wait(timeout=120):
            raise TimeoutError("the test never released the poll")
        job.status, job.ended, job.exit_code = COMPLETED, time.time(), 0
        return job.status

    def cancel(self, job: Job) -> None:
        self.cancelling.set()
        if not self.release.wait(timeout=120):  # a grace period, a slow StopTrainingJob
            raise TimeoutError("the test never released the cancel")
        job.status = STOPPED

    def fetch(self, job: Job):
        return job.out_dir


def _in_thread(action):
    """Run `action` on a thread; returns (thread, box) with the result in box once it finishes."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", action()), daemon=True)
    thread.start()
    return thread, box


def test_submit_and_jobs_answer_while_a_backend_poll_blocks(tmp_path):
    backend = BlockingBackend()
    queue = JobQueue(tmp_path, backend=backend, tracker=False, poll_interval=0.01)
    try:
        first = queue.submit("resnet18", iteration="iter-001")
        assert backend.polling.wait(timeout=30), "the worker never polled"
        thread, box = _in_thread(lambda: (queue.submit("resnet18", iteration="iter-002"), queue.jobs()))
        thread.join(timeout=10)
        assert not thread.is_alive(), "submit()/jobs() waited for the blocked poll"
        assert not backend.release.is_set()  # the poll is still blocked, and they answered
        second, jobs = box["result"]
        assert second.status == QUEUED and [j.id for j in jobs] == [first.id, second.id]
        assert queue.get(first.id).status == RUNNING
    finally:
        backend.release.set()
    assert queue.wait(first.id, timeout=30).status == COMPLETED
    assert queue.wait(second.id, timeout=30).status == COMPLETED
    queue.close()


class SlowStop(BlockingBackend):
    """Polls answer at once (still running); only the cancel blocks."""

    name = "slow-stop"

    def poll(self, job: Job) -> str:
        self.polls += 1
        self.polling.set()
        return job.status


def test_submit_and_jobs_answer_while_a_cancel_waits_on_the_backend(tmp_path):
    backend = SlowStop()
    queue = JobQueue(tmp_path, backend=backend, tracker=False, poll_interval=0.01)
    try:
        running = queue.submit("resnet18", iteration="iter-001")
        assert backend.polling.wait(timeout=30)
        cancel, _ = _in_thread(lambda: queue.cancel(running.id))
        assert backend.cancelling.wait(timeout=30), "the cancel never reached the backend"
        thread, box = _in_thread(lambda: (queue.submit("resnet18", iteration="iter-002"), queue.jobs()))
        thread.join(timeout=10)
        assert not thread.is_alive(), "submit()/jobs() waited for the backend's cancel"
        assert queue.get(running.id).status == RUNNING  # not stopped before the backend stopped it
    finally:
        backend.release.set()
    cancel.join(timeout=30)
    assert queue.get(running.id).status == STOPPED
    queue.close()


def test_a_running_local_job_is_cancelled_through_its_own_backend_from_another_backends_queue(tmp_path):
    local = JobQueue(tmp_path, tracker=False)
    job = local.submit("resnet18", hyperparameters=LONG)
    _wait_for(lambda: local.get(job.id).status == RUNNING, what="the job to start")
    local.close()
    pid = int(local.get(job.id).backend_id)

    try:
        other = JobQueue(tmp_path, backend=BlockingBackend(), tracker=False)
        assert other.get(job.id).status == RUNNING
        other.cancel(job.id)
        assert other.get(job.id).status == STOPPED
        _wait_for(lambda: not _pid_alive(pid), timeout=15, what="the local process to end")
        assert Job.load(tmp_path / "jobs" / f"{job.id}.json").status == STOPPED
    finally:  # never leave a 100000-epoch job behind, whatever failed
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_cancel_is_refused_when_the_jobs_backend_cannot_be_made_and_the_record_stays_running(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNE_EXPLORER_SAGEMAKER_ROLE", raising=False)
    monkeypatch.delenv("PRUNE_EXPLORER_SAGEMAKER_BUCKET", raising=False)
    running = Job(id="job-on-sagemaker", backend="sagemaker", model="resnet18", status=RUNNING,
                  out_dir=str(tmp_path / "iterations" / "iter-001"), backend_id="prune-explorer-job-on-sagemaker",
                  started=time.time())
    running.save(tmp_path / "jobs")
    queue = JobQueue(tmp_path, tracker=False)
    with pytest.raises(ValueError, match=r"job-on-sagemaker runs on the 'sagemaker' backend.*ROLE"):
        queue.cancel(running.id)
    assert queue.get(running.id).status == RUNNING
    assert Job.load(tmp_path / "jobs" / f"{running.id}.json").status == RUNNING


def test_a_queued_job_cancelled_while_no_worker_runs_is_never_started(tmp_path):
    queue = JobQueue(tmp_path, tracker=False)
    queue.close()
    waiting = queue.submit("resnet18", hyperparameters=QUICK)
    assert not queue.working  # a closed queue starts nothing
    queue.cancel(waiting.id)
    again = JobQueue(tmp_path, tracker=False)
    again.refresh()  # one full tick: it would start a startable job now
    assert again.get(waiting.id).status == STOPPED and again.get(waiting.id).started is None
    assert not again.working
    again.close()


def test_two_queues_on_one_workspace_finish_and_track_a_job_once(tmp_path):
    from mlflow.entities import ViewType

    from prune_explorer.tracking import MlflowTracker

    tracker = MlflowTracker(tmp_path)
    first = JobQueue(tmp_path, tracker=tracker, poll_interval=0.05)
    job = first.submit("resnet18", iteration="baseline", hyperparameters=QUICK)
    _wait_for(lambda: first.get(job.id).status == RUNNING, what="the job to start")
    second = JobQueue(tmp_path, tracker=MlflowTracker(tmp_path), poll_interval=0.05)  # adopts it, polls it too
    assert second.working
    done = first.wait(job.id, timeout=300)
    second.wait(job.id, timeout=120)  # whichever queue finished it has recorded it
    assert done.status == COMPLETED and second.get(job.id).status == COMPLETED
    runs = tracker._client.search_runs([tracker.experiment_id], run_view_type=ViewType.ALL)
    assert [r.data.tags["prune_explorer.iteration"] for r in runs] == ["baseline"]  # recorded once, never replaced
    first.close()
    second.close()
