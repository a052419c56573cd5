"""Run a fine-tuning job as a separate Python process on this machine.

Each job is `python -m prune_explorer.jobs.train ... --out-dir OUT` — or, for a job with an
`entry_point`, `python SOURCE_DIR/ENTRY_POINT ...` (the user's script, with SOURCE_DIR on the
import path and run from the queue's working directory) — in its own session (process group), so
cancelling kills the whole tree and a crash never takes the caller down. Output goes to
OUT/train.log.

After a kernel/process restart the new queue *adopts* jobs still marked running: while their pid
is alive (and still the same train process) they stay running; once gone, the job is `completed`
when OUT/metrics.json was written after it started (exit code unknown), otherwise `failed` with a
message saying the process vanished.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..workspace.layout import Metrics, metrics_path, read_metrics
from .base import COMPLETED, FAILED, RUNNING, STOPPED, Job

TRAIN_MODULE = "prune_explorer.jobs.train"
EXIT_STOPPED = 3  # prune_explorer.jobs.contract: the job's own stop rule fired
LOG_TAIL_LINES = 20


def train_arguments(job: Job) -> list[str]:
    """`--key value` pairs for train.py from the job's model, out_dir and hyperparameters.

    Every train.py option takes a value (as SageMaker hyperparameters do): booleans become
    true/false, dicts and lists JSON, None is left out.
    """
    args = ["--model", str(job.model), "--out-dir", str(job.out_dir)]
    for key, value in job.hyperparameters.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            text = json.dumps(value)
        else:
            text = str(value)
        args += ["--" + str(key).replace("_", "-"), text]
    return args


def _process_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and is not a zombie, and (where /proc exists) its command line has `marker`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        if ") Z" in (proc / "stat").read_text():
            return False
        return marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


class LocalBackend:
    """Jobs as child processes of this Python process (see module docstring for restarts)."""

    name = "local"

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None,
                 cancel_grace_s: float = 5.0):
        self.python = python
        self.env = env
        self.cancel_grace_s = cancel_grace_s
        self._procs: dict[str, subprocess.Popen] = {}

    def command(self, job: Job) -> list[str]:
        if job.entry_point:
            return [self.python, str(Path(job.source_dir or ".") / job.entry_point), *train_arguments(job)]
        return [self.python, "-m", TRAIN_MODULE, *train_arguments(job)]

    def _environment(self, job: Job) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        package_root = str(Path(__file__).resolve().parents[2])
        paths = (package_root, job.source_dir if job.entry_point else None, env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONFAULTHANDLER", "1")  # a hard crash (abort, segfault) leaves its Python stack in the log
        return env

    def start(self, job: Job) -> None:
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "wb") as log:
            proc = subprocess.Popen(
                self.command(job), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._environment(job), start_new_session=True,
            )
        self._procs[job.id] = proc
        job.backend_id = str(proc.pid)
        job.status = RUNNING
        job.started = time.time()
        job.ended = job.exit_code = job.message = None

    def poll(self, job: Job) -> str:
        if job.status != RUNNING:
            return job.status
        proc = self._procs.get(job.id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return RUNNING
            del self._procs[job.id]
            self._finish(job, code)
            return job.status
        return self._poll_adopted(job)

    def _poll_adopted(self, job: Job) -> str:
        pid = int(job.backend_id or 0)
        if pid and _process_alive(pid, str(job.out_dir)):
            return RUNNING
        metrics = _read_status(job.out_dir, since=job.started or 0)
        if metrics is None:
            job.status = FAILED
            job.ended = time.time()
            job.message = (f"process {pid} is gone (the Python process that ran the queue exited) and "
                           f"{metrics_path(job.out_dir)} was not written\n{job.log_tail(LOG_TAIL_LINES)}").rstrip()
            return job.status
        self._settle(job, None, metrics)
        if job.status == COMPLETED:
            job.message = f"process {pid} finished while no queue watched it; exit code unknown"
        return job.status

    def _finish(self, job: Job, code: int) -> None:
        job.exit_code = code
        if job.status == STOPPED:
            job.ended = job.ended or time.time()
            return
        self._settle(job, code, _read_status(job.out_dir, since=job.started or 0))

    def _settle(self, job: Job, code: int | None, metrics: Metrics | None) -> None:
        """Job status from the exit code and what the job wrote in its metrics (status, reason)."""
        job.ended = time.time()
        state = metrics.status if metrics is not None else None
        if state == COMPLETED and code in (0, None):
            job.status = COMPLETED
            return
        if state == STOPPED and code in (EXIT_STOPPED, None):
            job.status = STOPPED
            job.message = f"stop rule fired: {metrics.reason}"
            return
        job.status = FAILED
        why = "exit code unknown" if code is None else f"exit code {code}"
        if code is not None and code < 0:  # ended by a signal: say which (SIGKILL: killed, or out of memory)
            why = f"killed by {_signal_name(-code)} ({why})"
        if state == FAILED and metrics.reason:
            why += f" ({metrics.reason})"
        elif metrics is None:
            why += f"; no {metrics_path(job.out_dir)} written"
        job.message = f"{why}; last lines of {job.log_path}:\n{job.log_tail(LOG_TAIL_LINES)}".rstrip()

    def cancel(self, job: Job) -> None:
        pid = int(job.backend_id or 0)
        was_running = job.status == RUNNING
        job.status = STOPPED
        job.message = "cancelled" if was_running else "cancelled before it started"
        job.ended = time.time()
        if not (was_running and pid):
            return
        proc = self._procs.pop(job.id, None)
        if proc is None and not _process_alive(pid, str(job.out_dir)):
            return
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            if proc is None and not _process_alive(pid, str(job.out_dir)):
                break
            time.sleep(0.05)
        else:
            _signal_group(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=self.cancel_grace_s)
        if proc is not None:
            job.exit_code = proc.returncode

    def fetch(self, job: Job) -> Path:
        return Path(job.out_dir)


def _read_status(out_dir: str | os.PathLike, since: float) -> Metrics | None:
    """The job's metrics when they were written after `since`; None when absent, older or unreadable."""
    try:
        if metrics_path(out_dir).stat().st_mtime < since:
            return None
        return read_metrics(out_dir, missing_ok=False)
    except (OSError, ValueError):
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
