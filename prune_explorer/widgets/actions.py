"""What the panel does with a plan: Apply (and the accuracy right after the cut), Queue, Export.

Apply saves the pruned model at once and evaluates it on the fixed validation slice on the "cut"
worker, so the controls never wait for it; the number lands in `applied["cut_accuracy"]`, the
preview and the scatter (a hollow mark below where the fine-tuned dot will be). Queue waits for that
number first, so it is on record in the iteration before the job can finish and be tracked.
"""
from __future__ import annotations

from typing import Any

from ..session.messages import message
from .planning import LOADING

CUT_WAIT_S = 120  # Queue waits at most this long for the accuracy after the cut


class Actions:
    def __init__(self, panel: Any):
        self.panel = panel
        self.cut_future = None
        self.applies = 0  # how many Applies this panel made (the page tells a new one from the last)

    def _session(self, what: str):
        if self.panel.session is None:
            raise ValueError(f"{what}: {LOADING}")
        return self.panel.session

    def prepare(self, session) -> None:
        """Read the validation slice ahead (on the "cut" worker), so Apply's number needs only the forward passes."""
        def read():
            try:
                session.validation()
            except (ValueError, OSError):  # said at Apply, where the number would be
                pass
        self.panel.workers.submit("cut", read)

    def apply(self):
        """Run the surgery for the current plan and save the smaller model as a workspace iteration
        (reserved by the workspace; applying again before queueing replaces it); returns the model.
        Its accuracy right after the cut follows on the "cut" worker."""
        session, applied = self._apply()
        self.cut_future = self.panel.workers.submit("cut", self._evaluate_cut, session, applied)
        return applied.model

    def _apply(self):
        panel, session = self.panel, self._session("apply")
        applied = session.apply(panel.plan())
        self.applies += 1
        panel.pruned_model = applied.model
        panel.applied = {**applied.as_dict(), "cut_accuracy": None, "applies": self.applies}
        panel.status = f"applied: {applied.iteration} saved, {applied.filters_removed} filters removed"
        return session, applied

    def pressed(self, name: str) -> None:
        """A button's action ("apply" or "queue_finetune") on the "cut" worker, in the order pressed: the
        controls never wait for surgery, saving or the evaluation, and Queue runs after the Apply before it."""
        self.panel.status = {"apply": "applying the plan…", "queue_finetune": "queueing the fine-tune…"}[name]
        self.panel.workers.submit("cut", self.panel.guarded, getattr(self, name))

    def _evaluate_cut(self, session, applied) -> None:
        panel = self.panel
        try:
            record = session.evaluate_cut(applied)
        except ValueError as exc:  # no validation data: said where the number would be, not an error
            if panel.applied.get("iteration") == applied.iteration:
                panel.applied = {**panel.applied, "cut_note": f"accuracy after the cut not measured: {exc}"}
            return
        if panel.applied.get("iteration") != applied.iteration or session.pending is not applied:
            return  # applied again meanwhile: the newer evaluation follows on this worker
        panel.applied = {**panel.applied, "cut_accuracy": record["accuracy"], "cut_examples": record["examples"]}
        panel.history_link.mark_cut(applied, record["accuracy"])

    def queue_finetune(self):
        """Send the applied model to the chosen backend (applying the current plan first if needed)."""
        panel, session = self.panel, self._session("queue")
        if session.queue is None:
            raise ValueError("no job queue: open the Explorer with workspace=... to queue fine-tuning jobs")
        if session.pending is None:  # apply and measure here: the number is on record before the job can finish
            self._evaluate_cut(*self._apply())
        elif self.cut_future is not None and not self.cut_future.done():
            if self.cut_future.cancel():  # still queued (behind this very task, when pressed): measure it here
                self._evaluate_cut(session, session.pending)
            else:  # measuring on the "cut" worker while this was called from elsewhere
                self.cut_future.exception(timeout=CUT_WAIT_S)
        job = session.submit(panel.hyperparameters(), **panel.training_script())
        panel.last_job = job.id
        panel.status = f"queued {job.id} on {job.backend} → {job.iteration}"
        panel.refresh()
        return job

    def export(self, fmt: str | None = None):
        """Export the applied model (else the base) to WORKSPACE/exports/ on the "export" worker (the dynamo
        exporter takes seconds; `PruningSession.export` names the file); `exported` and the export line show it."""
        panel, session = self.panel, self._session("export")
        fmt = fmt or panel.exporter.format.value
        if session.workspace is None:
            raise ValueError("export: no workspace (open the Explorer with workspace=...)")
        _, iteration, name = session.export_source()
        session.workspace.export_path(name, fmt)  # a bad format or name is refused here, at once
        panel.exported = {}
        panel.exporter.shows(f"⏳ exporting {name} as {fmt}…")
        return panel.workers.submit("export", self._export, session, iteration, name, fmt)

    def _export(self, session, iteration: str, name: str, fmt: str) -> None:
        try:
            result = session.export(fmt)
        except Exception as exc:
            self.panel.exporter.shows(f"export of {name} failed: {message(exc)}", failed=True)
            raise
        self.panel.exported = {"iteration": iteration, **result.as_dict()}
        self.panel.exporter.exported(name, result)
