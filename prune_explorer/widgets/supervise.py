"""`prune-explorer app`'s process tree: Voila (`widgets/serve.py`) in a session of its own, stopped
whole on SIGTERM / SIGINT / SIGHUP.

Voila starts a kernel per page (each in its own session, jupyter_client's default) and a kernel
starts fine-tuning jobs (each in its own session too, jobs/local.py), so killing Voila alone left
kernels and a training job running (issue 22). On SIGTERM, SIGINT or SIGHUP `supervise` cancels the
workspace's running jobs that descend from Voila (through the job queue: killed, their records
"stopped"), asks Voila to shut down (it stops its kernels), then kills whatever of its process tree
is left after a grace period. Imports neither ipywidgets nor torch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 10.0


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def supervise(cmd: list[str], env: dict[str, str], workspace: Path, grace_s: float = GRACE_S) -> int:
    """Run the app server until it exits (its exit code) or a stop signal arrives (128 + the signal),
    then stop its whole process tree: jobs, kernels, Voila."""
    def raise_stop(signum, frame):
        raise _Stop(signum)

    previous = {s: signal.signal(s, raise_stop) for s in STOP_SIGNALS}
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        return proc.wait()
    except _Stop as stop:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C does not cut the shutdown short
        print(f"prune-explorer app: {signal.Signals(stop.signum).name}: stopping the app, its kernels and jobs",
              file=sys.stderr)
        if proc is not None:
            stop_tree(proc, workspace, grace_s)
        return 128 + stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_tree(proc: subprocess.Popen, workspace: Path, grace_s: float = GRACE_S) -> list[int]:
    """Stop `proc` and every process under it; returns the pids that were still running."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    _cancel_jobs(workspace, {p.pid for p in tree})
    _signal(proc.pid, signal.SIGTERM, group=True)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    alive = [p for p in tree if _running(p)]
    for p in alive:
        _signal(p.pid, signal.SIGTERM, group=_leads_group(p))
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        _signal(p.pid, signal.SIGKILL, group=_leads_group(p))
    psutil.wait_procs(still, timeout=grace_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return [p.pid for p in alive]


def _cancel_jobs(workspace: Path, pids: set[int]) -> None:
    """Cancel the workspace's running local jobs started under the app (their records say 'stopped')."""
    from ..jobs.base import RUNNING, read_records
    from ..jobs.queue import JobQueue
    from ..workspace.layout import Layout

    jobs_dir = Layout(workspace).jobs_dir
    if not jobs_dir.is_dir():
        return
    ours = []
    for job in read_records(jobs_dir):
        if job.status == RUNNING and job.backend == "local" and job.backend_id and int(job.backend_id) in pids:
            ours.append(job.id)
    if not ours:
        return
    queue = JobQueue(workspace, tracker=False)
    try:
        for job_id in ours:
            queue.cancel(job_id)
            print(f"prune-explorer app: cancelled job {job_id}", file=sys.stderr)
    finally:
        queue.close()


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _leads_group(process) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
