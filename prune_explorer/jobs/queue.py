"""A queue of fine-tuning jobs that runs them in the background, one (or a few) at a time.

State lives on disk (`WORKSPACE/jobs/<id>.json`, atomic writes), so a new `JobQueue` on the same
workspace finds queued, running and finished jobs again after a kernel restart; how a local job
whose process vanished meanwhile is settled is described in `jobs/local.py` (completed when its
metrics.json landed, failed otherwise — never silently re-run). Finished jobs are recorded in the
tracker: completed, failed, and stopped by train.py's own rule; cancelled ones are not iterations.

Locking: the queue's lock guards only its in-memory state (the Job objects callers hold) and is
never held across backend calls, downloads or tracker writes, so `submit()` and `jobs()` answer
while a poll or an upload takes seconds. Backends work on a copy of a Job; the result is applied
under the lock. A job's transitions (start, finish, cancel) hold that job's own file lock
(`jobs/.locks/<id>`) and re-read its record first, so two queues on one workspace — two processes,
or a panel and `prune-explorer run` — never both start, finish or track the same job, and a
cancel never races a start or a finish.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..model.trust import trusted_modules
from ..workspace.layout import Layout, file_lock, read_cut_accuracy, read_metrics, trial_dir
from .backends import make_backend
from .base import (COMPLETED, FAILED, QUEUED, RUNNING, STOPPED, Backend, Job, check_script, new_id, record_path,
                   record_paths, scripts_allowed, training_script, with_trust)

log = logging.getLogger(__name__)

JobCallback = Callable[[Job], None]


def plan_summary(plan: Any) -> dict[str, Any]:
    if plan is None:
        return {}
    if hasattr(plan, "summary"):
        return dict(plan.summary())
    return dict(plan)


def filters_removed(summary: dict[str, Any]) -> int:
    """Total channels a plan summary removes ({layer: n_removed} or a nested 'layers' mapping)."""
    for key in ("filters_removed", "removed", "total"):
        if isinstance(summary.get(key), int):
            return int(summary[key])
    layers = summary.get("layers", summary)
    if not isinstance(layers, dict):
        return 0
    total = 0
    for value in layers.values():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            total += value
        elif isinstance(value, (list, tuple)):
            total += len(value)
    return total


def iteration_record(job: Job) -> dict[str, Any]:
    """Keyword arguments for `Tracker.record` describing one finished job."""
    result = job.metrics
    trial = result.trial or (str(trial_dir(job.out_dir)) if result else None)
    return dict(
        iteration=job.iteration or Path(job.out_dir).name,
        parent=job.parent,
        plan_summary=job.plan,
        criterion=job.criterion,
        filters_removed=filters_removed(job.plan),
        **result.cost(),
        accuracies=result.accuracies,
        best_accuracy=result.best_accuracy,
        status=job.status,
        model_dir=str(job.out_dir),
        trial_dir=trial,
        job_id=job.id,
        backend=job.backend,
        started=job.started,
        script=job.entry_point or result.script,
        cut_accuracy=read_cut_accuracy(job.out_dir),  # measured when the step saved the pruned model
        hyperparameters=tracked_hyperparameters(job),
    )


TRACKED_HYPERPARAMETERS = ("distill", "distill_alpha", "distill_temperature", "teacher")


def tracked_hyperparameters(job: Job) -> dict[str, Any]:
    """What the trackers record of a job's settings: its distillation (which teacher, alpha, T) — the
    values the job used (metrics.json `teacher`) once it has run, else what it was given."""
    given = {k: job.hyperparameters[k] for k in TRACKED_HYPERPARAMETERS if job.hyperparameters.get(k) is not None}
    used = job.metrics.teacher
    if used:
        given.update(distill=used.get("distill") or given.get("distill"), distill_alpha=used.get("alpha"),
                     distill_temperature=used.get("temperature"), teacher=used.get("model"))
    return {k: v for k, v in given.items() if v is not None}


class JobQueue:
    """Submit jobs without blocking; a worker thread starts, polls and finishes them.

    `on_change` callbacks run with the changed Job, from the worker thread (or from the caller's
    thread for submit/cancel/refresh). `tracker=None` records into `MlflowTracker(workspace)`;
    `False` records nothing; any `tracking.Tracker` works.

    What jobs may run is this queue's to say, never a job record's (records are files anyone with
    the workspace can edit): `trust_code` (module names, `model/trust.py`) goes to every job it
    starts as the `trust_model_code` argument, replacing whatever a record says; `scripts` is where
    a job's own training script may come from — True: anywhere (the default: your code), False: no
    user scripts (only prune_explorer.jobs.train), a folder: scripts under it only (the served app).
    """

    def __init__(self, workspace: str | Path, backend: "str | Backend" = "local", max_parallel: int = 1,
                 tracker: Any = None, poll_interval: float = 0.5, *, trust_code: Any = None,
                 scripts: bool | str | Path = True):
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.workspace = Path(workspace)
        self.jobs_dir = Layout(self.workspace).jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.backend = make_backend(backend)
        self.max_parallel = max_parallel
        self.poll_interval = poll_interval
        self.trust_code = trusted_modules(trust_code)
        self.scripts = scripts_allowed(scripts)
        self._tracker = tracker
        self._backends: dict[str, Backend] = {self.backend.name: self.backend}
        self._jobs: dict[str, Job] = {}
        self._stamps: dict[str, int] = {}  # job id -> mtime_ns of the record as this queue last saw it
        self._finishing: set[str] = set()  # finished here, still being recorded: wait() waits for them
        self._callbacks: list[JobCallback] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._ticking = threading.Lock()  # one tick at a time (worker or refresh), so max_parallel holds
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._load()
        self._ensure_worker()

    # --- public -----------------------------------------------------------------------------
    def submit(self, model: str | Path, out_dir: str | Path | None = None, parent: str | None = None,
               plan: Any = None, criterion: str | None = None,
               hyperparameters: dict[str, Any] | None = None, iteration: str | None = None,
               entry_point: str | Path | None = None, source_dir: str | Path | None = None) -> Job:
        """Queue a job and return at once; the worker starts it when a slot is free.

        `entry_point` / `source_dir`: the user's own training script (honouring `prune_explorer.jobs.contract`)
        instead of `prune_explorer.jobs.train`, e.g. `entry_point="train.py", source_dir="src/"`.
        """
        script = training_script(entry_point, source_dir)
        check_script(script["entry_point"], script["source_dir"], self.scripts)
        if out_dir is None:
            out_dir = Layout(self.workspace).iteration_dir(iteration or new_id("it"))
        out_dir = Path(out_dir).resolve()
        job = Job(
            id=new_id("job"), backend=self.backend.name, model=str(model), out_dir=str(out_dir),
            parent=parent, iteration=iteration or out_dir.name, plan=plan_summary(plan),
            criterion=criterion, hyperparameters=dict(hyperparameters or {}), **script,
        )
        with self._lock:
            self._save(job)
            self._jobs[job.id] = job
            self._ensure_worker()
        self._notify([job])
        self._wake.set()
        return job

    def jobs(self) -> list[Job]:
        """Every job known in this workspace, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.created, j.id))

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"no job {job_id!r} in {self.jobs_dir}") from None

    def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job (its status becomes 'stopped'); finished jobs stay as they are.

        A running job is stopped through the backend it runs on (made from its name when it is not
        this queue's); when that backend cannot be made, ValueError says so and the record is left
        as it is — never 'stopped' while the job runs.
        """
        job = self.get(job_id)
        with self._job_lock(job_id):
            current = self._on_disk(job_id) or copy.copy(job)
            if not current.done:
                if current.status == QUEUED:
                    current.status, current.message, current.ended = STOPPED, "cancelled before it started", time.time()
                else:
                    self._backend_for(current).cancel(current)  # raises before anything is changed
                    current.status = STOPPED
            self._apply(job, current, save=True)
        self._notify([job])
        self._wake.set()
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is completed, failed or stopped (and recorded in the tracker);
        TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._changed:
                job = self.get(job_id)
                if job.done and job.id not in self._finishing:
                    return job
                if self._worker is None and not self._closed:
                    self._ensure_worker()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
                self._changed.wait(timeout=min(1.0, remaining) if remaining is not None else 1.0)
            if not self._ours(job):
                self._load()  # a queue of its own backend settles it: read its record

    def refresh(self) -> list[Job]:
        """Pick up jobs other processes wrote or changed, poll running ones now, and return all jobs.

        Changed records update the Job objects in place (callers' references stay live) and reach
        the `on_change` callbacks.
        """
        self._notify(self._load())
        self._tick()
        return self.jobs()

    def on_change(self, callback: JobCallback) -> None:
        self._callbacks.append(callback)

    def close(self) -> None:
        """Stop the worker thread; running jobs keep running and a later queue adopts them."""
        self._closed = True
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10)

    def __enter__(self) -> "JobQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def working(self) -> bool:
        """Whether the worker thread is alive (it ends when nothing of this backend is queued or running)."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    @property
    def tracker(self):
        """The tracker finished jobs are recorded in (created on first use), or None when disabled."""
        if self._tracker is None:
            from ..tracking import MlflowTracker

            made = MlflowTracker(self.workspace)  # opening the store takes a while: not under the lock
            with self._lock:
                if self._tracker is None:
                    self._tracker = made
        return None if self._tracker is False else self._tracker

    # --- records ----------------------------------------------------------------------------
    def _load(self) -> list[Job]:
        """Read new job records and those changed on disk since this queue last wrote or read them; returns them."""
        with self._lock:
            seen = dict(self._stamps)
        found: list[tuple[int, Job]] = []
        for path in record_paths(self.jobs_dir):
            try:
                stamp = path.stat().st_mtime_ns
                if seen.get(path.stem) == stamp:
                    continue
                found.append((stamp, Job.load(path)))
            except FileNotFoundError:
                continue
            except ValueError as exc:
                log.warning("skipping %s", exc)
        changed: list[Job] = []
        with self._lock:
            for stamp, loaded in found:
                if self._stamps.get(loaded.id, -1) >= stamp:
                    continue  # this queue wrote it again meanwhile
                self._stamps[loaded.id] = stamp
                if loaded.id in self._jobs:
                    vars(self._jobs[loaded.id]).update(vars(loaded))
                else:
                    self._jobs[loaded.id] = loaded
                changed.append(self._jobs[loaded.id])
            if changed:
                self._changed.notify_all()
        return changed

    def _on_disk(self, job_id: str) -> Job | None:
        """The job's record as the last writer (any queue, any process) left it; call under its job lock."""
        path = record_path(self.jobs_dir, job_id)
        try:
            stamp = path.stat().st_mtime_ns
            loaded = Job.load(path)
        except (FileNotFoundError, ValueError):
            return None
        with self._lock:
            self._stamps[job_id] = max(stamp, self._stamps.get(job_id, -1))
        return loaded

    def _apply(self, job: Job, state: Job, save: bool = False) -> None:
        """Make the shared Job object equal to `state` (a backend's working copy or a record read from disk)."""
        with self._lock:
            vars(job).update(vars(state))
            if save:
                self._save(job)
            self._changed.notify_all()

    def _save(self, job: Job) -> None:
        path = job.save(self.jobs_dir)
        self._stamps[job.id] = path.stat().st_mtime_ns

    @contextmanager
    def _job_lock(self, job_id: str) -> Iterator[None]:
        """This job's lock, across threads and processes: held through a start, a finish or a cancel."""
        with file_lock(Layout(self.workspace).locks_dir / job_id):
            yield

    def _ours(self, job: Job) -> bool:
        return job.backend == self.backend.name

    def _backend_for(self, job: Job) -> Backend:
        """The backend a job runs on: this queue's, or one made from the job's backend name."""
        with self._lock:
            if job.backend in self._backends:
                return self._backends[job.backend]
        try:
            backend = make_backend(job.backend)
        except Exception as exc:
            raise ValueError(
                f"job {job.id} runs on the {job.backend!r} backend, not on this queue's {self.backend.name!r}, and "
                f"no {job.backend!r} backend could be made to stop it ({exc}); cancel it from a "
                f"JobQueue(backend=...) for {job.backend!r}") from exc
        with self._lock:
            return self._backends.setdefault(job.backend, backend)

    # --- the worker -------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._closed or (self._worker is not None and self._worker.is_alive()):
                return
            if not self._pending():
                return
            self._worker = threading.Thread(target=self._run, name="prune-explorer-jobs", daemon=True)
            self._worker.start()

    def _pending(self) -> bool:
        return any(self._ours(j) and j.status in (QUEUED, RUNNING) for j in self._jobs.values())

    def _run(self) -> None:
        while not self._closed:
            try:
                self._tick()
            except Exception:  # the worker must outlive one bad tick
                log.exception("job queue tick failed")
            with self._lock:
                if not self._pending():
                    self._worker = None
                    return
            self._wake.wait(self.poll_interval)
            self._wake.clear()
        with self._lock:
            self._worker = None

    def _tick(self) -> None:
        """Poll running jobs, finish those that ended, start queued ones in free slots, record the finished."""
        with self._ticking:
            with self._lock:
                running = [(j, copy.copy(j)) for j in self._jobs.values() if self._ours(j) and j.status == RUNNING]
            changed: list[Job] = []
            finished: list[Job] = []
            for job, work in running:
                try:
                    status = self.backend.poll(work)
                except Exception as exc:  # one unreachable job must not stop the others
                    log.warning("could not poll job %s: %s", job.id, exc)
                    continue
                if status != RUNNING:
                    (finished if self._finish(job, work) else changed).append(job)
                elif work.message != job.message:  # e.g. a rule verdict while the job stops
                    with self._job_lock(job.id):
                        if job.status == RUNNING:
                            self._apply(job, work, save=True)
                            changed.append(job)
            with self._lock:
                slots = self.max_parallel - sum(1 for j in self._jobs.values() if self._ours(j) and j.status == RUNNING)
                queued = [j for j in self.jobs() if self._ours(j) and j.status == QUEUED]
            for job in queued:
                if slots <= 0:
                    break
                if self._start(job):
                    changed.append(job)
                    slots -= job.status == RUNNING
        for job in finished:
            self._track(job)
        self._notify(changed + finished)

    def _start(self, job: Job) -> bool:
        """Start a queued job unless another queue got to it first (then adopt its record); True when it changed."""
        with self._job_lock(job.id):
            current = self._on_disk(job.id)
            if current is None:
                return False
            if current.status != QUEUED:
                self._apply(job, current)
                return True
            try:
                check_script(current.entry_point, current.source_dir, self.scripts)
                current.hyperparameters = with_trust(current.hyperparameters, self.trust_code)
                self.backend.start(current)
            except Exception as exc:
                current.status = FAILED
                current.ended = time.time()
                current.message = f"could not start on {self.backend.name}: {exc}"
            self._apply(job, current, save=True)
        return True

    def _finish(self, job: Job, work: Job) -> bool:
        """Collect and save a job that ended, unless it was settled meanwhile (a cancel, another queue);
        True when this queue finished it (and must record it)."""
        with self._job_lock(job.id):
            current = self._on_disk(job.id)
            if current is not None and (current.status != RUNNING or current.backend_id != work.backend_id):
                self._apply(job, current)
                return False
            self._collect(work)
            with self._lock:
                self._apply(job, work, save=True)
                self._finishing.add(job.id)
        return True

    def _collect(self, job: Job) -> None:
        """Fetch results of a job that produced a model (completed, or stopped by its own rule)."""
        if job.status not in (COMPLETED, STOPPED):
            return
        try:
            self.backend.fetch(job)
            job.result = read_metrics(job.out_dir)
        except Exception as exc:
            job.status = FAILED
            job.message = f"could not fetch results of {job.id}: {exc}"

    def _track(self, job: Job) -> None:
        try:
            if job.status == STOPPED and not job.result:
                return  # cancelled: not an iteration
            tracker = self.tracker
            if tracker is not None:
                tracker.record(**iteration_record(job))
        except Exception as exc:
            log.warning("could not record job %s in the tracker: %s", job.id, exc)
        finally:
            with self._lock:
                self._finishing.discard(job.id)
                self._changed.notify_all()

    def _notify(self, jobs: list[Job]) -> None:
        for job in jobs:
            for callback in list(self._callbacks):
                try:
                    callback(job)
                except Exception:
                    log.exception("on_change callback failed for job %s", job.id)
