"""JobQueue + LocalBackend with real `python -m prune_explorer.jobs.train` processes on sklearn digits."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from prune_explorer.jobs import COMPLETED, FAILED, QUEUED, RUNNING, STOPPED, Job, JobQueue

QUICK = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, capture="none",
             measure_latency=False, seed=0)
LONG = dict(QUICK, epochs=100_000)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return ") Z" not in open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_crashing_job_fails_with_its_log_tail_the_next_job_runs_and_all_survive_a_restart(tmp_path):
    queue = JobQueue(tmp_path, tracker=None)
    seen: list[tuple[str, str]] = []
    queue.on_change(lambda job: seen.append((job.id, job.status)))
    bad = queue.submit(tmp_path / "no-such-model", hyperparameters=QUICK)
    good = queue.submit("resnet18", hyperparameters=QUICK, iteration="baseline")
    assert queue.get(good.id).status == QUEUED  # submit never blocks

    good = queue.wait(good.id, timeout=300)
    bad = queue.get(bad.id)
    assert bad.status == FAILED and bad.exit_code not in (None, 0)
    assert "no-such-model" in bad.message and "train.log" in bad.message
    assert bad.log_tail(3) in bad.message and "File " in bad.log_tail(3)  # the log's tail: traceback frames
    assert good.status == COMPLETED and good.exit_code == 0
    assert len(good.result["epochs"]) == 1 and good.result["params"] > 1_000_000
    assert (tmp_path / "iterations" / "baseline" / "model.safetensors").is_file()
    assert "epoch 1/1" in good.log_tail(50)
    assert [s for i, s in seen if i == bad.id] == [QUEUED, RUNNING, FAILED]
    assert [s for i, s in seen if i == good.id] == [QUEUED, RUNNING, COMPLETED]
    assert [j.id for j in queue.jobs()] == [bad.id, good.id]

    history = queue.tracker.history().set_index("iteration")
    assert history.loc["baseline", "status"] == "completed"
    assert history.loc["baseline", "params"] == good.result["params"]
    assert history.loc["baseline", "accuracy"] == pytest.approx(good.result["best_accuracy"])
    assert history.loc[bad.iteration, "status"] == "failed"

    # restart: a job queued while no worker runs is found and run by a new queue; old ones keep their state
    queue.close()
    pending = queue.submit(tmp_path / "iterations" / "baseline", hyperparameters=QUICK, parent="baseline")
    assert not queue.working  # a closed queue starts no worker
    assert queue.get(pending.id).status == QUEUED
    again = JobQueue(tmp_path, tracker=None)
    assert [j.id for j in again.jobs()] == [bad.id, good.id, pending.id]
    assert again.get(good.id).result == good.result and again.get(bad.id).status == FAILED
    assert again.wait(pending.id, timeout=300).status == COMPLETED
    rows = again.tracker.history()
    assert rows["iteration"].tolist() == [bad.iteration, "baseline", pending.iteration]
    assert rows.iloc[-1]["parent"] == "baseline"
    again.close()


def test_a_hard_crash_leaves_the_python_stack_in_the_log(tmp_path):
    """A job that aborts (a C++ terminate, a segfault) prints no traceback of its own: its log still
    says where it was."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "crash.py").write_text("import os\n\n\ndef load_weights():\n    os.abort()\n\n\nload_weights()\n")
    queue = JobQueue(tmp_path / "ws", tracker=False)
    job = queue.wait(queue.submit("resnet18", hyperparameters=QUICK, entry_point="crash.py", source_dir=src).id,
                     timeout=120)
    assert job.status == FAILED and job.exit_code == -6
    log = job.log_tail(20)
    assert "Fatal Python error: Aborted" in log and "load_weights" in log and "crash.py" in log
    queue.close()


def test_cancel_a_queued_and_a_running_job(tmp_path):
    queue = JobQueue(tmp_path, tracker=False)
    running = queue.submit("resnet18", hyperparameters=LONG)
    waiting = queue.submit("resnet18", hyperparameters=QUICK)
    _wait_for(lambda: queue.get(running.id).status == RUNNING, what="first job to start")
    pid = int(queue.get(running.id).backend_id)
    assert _pid_alive(pid)

    queue.cancel(waiting.id)
    assert queue.get(waiting.id).status == STOPPED and queue.get(waiting.id).backend_id is None
    queue.cancel(running.id)
    job = queue.get(running.id)
    assert job.status == STOPPED and job.exit_code is not None and job.exit_code < 0
    assert not _pid_alive(pid)
    queue.refresh()  # a full tick, with the slot free: a startable job would start now
    assert queue.get(waiting.id).status == STOPPED and queue.get(waiting.id).started is None
    assert Job.load(tmp_path / "jobs" / f"{waiting.id}.json").status == STOPPED
    queue.close()


def test_a_running_job_is_adopted_or_failed_after_a_restart(tmp_path):
    first = JobQueue(tmp_path, tracker=False)
    live = first.submit("resnet18", hyperparameters=LONG)
    _wait_for(lambda: first.get(live.id).status == RUNNING, what="job to start")
    first.close()  # the "kernel" goes away; its job process lives on in its own session
    pid = int(first.get(live.id).backend_id)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = Job(id="job-orphan", backend="local", model="resnet18", out_dir=str(tmp_path / "iterations" / "o"),
                 status=RUNNING, backend_id=str(gone.pid), started=time.time())
    orphan.save(tmp_path / "jobs")

    second = JobQueue(tmp_path, tracker=False)
    second.refresh()
    assert second.get(live.id).status == RUNNING and _pid_alive(pid)  # adopted, still running
    failed = second.get("job-orphan")
    assert failed.status == FAILED and "is gone" in failed.message

    second.cancel(live.id)  # cancelling an adopted job kills its process group
    assert second.get(live.id).status == STOPPED
    _wait_for(lambda: not _pid_alive(pid), timeout=10, what="adopted process to end")
    second.close()

    # the first queue (a panel still open) learns of the other process's cancel on refresh, in place
    held = first.get(live.id)
    assert held.status == RUNNING
    seen: list[tuple[str, str]] = []
    first.on_change(lambda job: seen.append((job.id, job.status)))
    first.refresh()
    assert held.status == STOPPED and held.message == "cancelled" and first.get(live.id) is held
    assert (live.id, STOPPED) in seen and ("job-orphan", FAILED) in seen
    first.refresh()  # nothing changed since: no callbacks
    assert len(seen) == 2


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        JobQueue(tmp_path, backend="nowhere")
    with pytest.raises(ValueError, match="max_parallel"):
        JobQueue(tmp_path, max_parallel=0)
    queue = JobQueue(tmp_path, tracker=False)
    with pytest.raises(KeyError, match="job-missing"):
        queue.get("job-missing")
    (tmp_path / "jobs" / "job-broken.json").write_text("{not json")
    assert queue.refresh() == []  # a corrupt record is skipped (with a warning), not fatal


def test_hyperparameters_become_arguments_that_train_py_parses(tmp_path):
    from prune_explorer.jobs.local import train_arguments
    from prune_explorer.jobs.train import parse_args

    job = Job(id="job-x", backend="local", model="resnet18", out_dir=str(tmp_path / "out"),
              hyperparameters=dict(QUICK, model_kwargs={"num_classes": 10}, lr=0.05, data_dir=None))
    config = parse_args(train_arguments(job))
    assert config.measure_latency is False and config.model_kwargs == {"num_classes": 10}
    assert (config.dataset, config.subset, config.val_subset, config.lr) == ("digits", 60, 40, 0.05)
    assert config.out_dir == str(tmp_path / "out") and config.data_dir is None
