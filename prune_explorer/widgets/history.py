"""The panel's link to what was tracked: jobs, history (scatter and lineage), re-basing, compare.

The tracker (MLflow & co.) and the job queue open on the "refresh" worker after the model, so they
never delay the first view; until then the scatter and the lineage show the workspace's history view.
Applied cuts whose fine-tune is not tracked yet show their accuracy right after the cut on the
scatter from here (`mark_cut`) until the tracked row carries it.
"""
from __future__ import annotations

import threading
from typing import Any

from ..session.messages import message
from ..workspace.view import history_records


class HistoryLink:
    def __init__(self, panel: Any, backend: Any, tracker: Any, poll_interval: float, check: Any = None,
                 **queue_options: Any):
        self.panel = panel
        self._options = (backend, tracker, poll_interval, check)
        self._queue_options = queue_options  # e.g. scripts: where the queue lets user scripts come from
        self.rows: list[dict[str, Any]] = []                 # the tracked rows last shown
        self.marks: dict[str, dict[str, Any]] = {}           # iteration -> an applied cut's row, until tracked

    def open_jobs(self) -> None:
        """The tracker and the queue of the session's workspace, then the history and the poll thread."""
        panel, (backend, tracker, interval, check) = self.panel, self._options
        session = panel.session
        session.open_jobs(backend, tracker, **self._queue_options)
        if panel.closed.is_set():  # closed while the tracker was loading
            session.queue.close()
            return
        self._follow(session.queue)
        panel.finetune.backend.observe(self._backend_changed, "value")
        self.refresh()
        threading.Thread(target=self._poll, args=(interval,), name="explorer-poll", daemon=True).start()
        if check is not None:
            check(session.workspace.root)

    def _follow(self, queue) -> None:
        queue.on_change(lambda job: self.panel.workers.submit("refresh", self.refresh, latest_only=True))

    def _backend_changed(self, change) -> None:
        try:
            self._follow(self.panel.session.use_backend(change["new"]))
            self.panel.error = ""
        except Exception as exc:
            self.panel.error = f"backend {change['new']}: {message(exc)}"

    def refresh(self) -> None:
        """Re-read jobs and the tracked history into the jobs list, the scatter and the lineage."""
        panel, session = self.panel, self.panel.session
        if session is None or session.queue is None:
            return
        with panel.lock:
            history = session.history()
            panel.history = history
            panel.jobs_panel.show(session.queue.jobs(), session.tracker, self._run_ids(history))
            self.show(history_records(history))

    def show(self, rows: list[dict[str, Any]]) -> None:
        """Draw tracked rows (with the applied cuts not tracked yet) on the scatter and the lineage."""
        panel = self.panel
        self.rows = list(rows)
        tracked = {str(r["iteration"]): r for r in self.rows}
        for name in [n for n, r in tracked.items() if r.get("cut_accuracy") is not None]:
            self.marks.pop(name, None)
        shown = [{**r, "cut_accuracy": self.marks[r["iteration"]]["cut_accuracy"]}
                 if r["iteration"] in self.marks and r.get("cut_accuracy") is None else r for r in self.rows]
        shown += [mark for name, mark in self.marks.items() if name not in tracked]
        panel.scatter.show(shown, panel.base_iteration)
        panel.lineage.show(self.rows, panel.base_iteration)
        panel.history_size = len(panel.scatter.names)

    def mark_cut(self, applied: Any, accuracy: float) -> None:
        """An applied cut's accuracy right after the cut, on the scatter until its fine-tune is tracked."""
        self.marks[applied.iteration] = {"iteration": applied.iteration, "parent": self.panel.base_iteration,
                                         "status": "applied", "params": applied.params_after,
                                         "macs": applied.macs_after, "cut_accuracy": accuracy, "accuracy": None}
        self.show(self.rows)

    @staticmethod
    def _run_ids(history) -> dict[str, str]:
        if history is None or history.empty or "run_id" not in history:
            return {}
        return {str(i): str(r) for i, r in zip(history["iteration"], history["run_id"]) if isinstance(r, str) and r}

    def _poll(self, interval: float) -> None:
        panel = self.panel
        while not panel.closed.wait(interval):
            try:
                queue = panel.session.queue
                if queue is not None and any(not j.done for j in queue.jobs()):
                    panel.jobs_panel.show(queue.jobs(), panel.session.tracker, self._run_ids(panel.history))
            except Exception as exc:
                panel.error = f"jobs: {message(exc)}"

    def cancel(self, job_id: str) -> None:
        try:
            self.panel.session.queue.cancel(job_id)
        except Exception as exc:
            self.panel.error = f"cancel {job_id}: {message(exc)}"
        self.refresh()

    def compare(self, a: str | None, b: str | None) -> None:
        """Put two tracked iterations side by side: per-layer widths (their model.json), params, MACs, accuracy."""
        panel = self.panel
        try:
            if panel.session is None:
                raise ValueError("compare: the model is still loading")
            panel.compared = panel.session.compare(a, b, panel.history)
            panel.lineage.show_comparison(panel.compared)
        except (ValueError, FileNotFoundError) as exc:
            panel.compared = {}
            panel.lineage.show_comparison(None, message(exc))

    def rebase(self, iteration: str) -> None:
        """Make a tracked iteration the base: load its model and trial and re-rank (in the background)."""
        self.panel.workers.submit("rank", self._rebase, iteration)

    def _rebase(self, iteration: str) -> None:
        panel = self.panel
        panel.busy, panel.status = True, f"loading {iteration}…"
        try:
            old = panel.session
            if old.pending is not None:  # applied, never queued: no fine-tune will come for its mark
                self.marks.pop(old.pending.iteration, None)
            panel.attach(old.rebase(iteration))
            self.refresh()
            panel.status = f"based on {iteration}: " + panel.status
        finally:
            panel.busy = False
