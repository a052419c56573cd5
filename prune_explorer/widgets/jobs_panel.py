"""Jobs list: live status, log tail and cancel for each fine-tuning job in the workspace."""
from __future__ import annotations

import html
from typing import Callable

import ipywidgets as W

COLOURS = {"queued": "#777", "running": "#1f77b4", "completed": "#2ca02c", "failed": "#d62728", "stopped": "#ff7f0e"}


class JobRow(W.VBox):
    def __init__(self, job_id: str, on_cancel: Callable[[str], None]):
        self.job_id = job_id
        self.head = W.HTML()
        self.cancel = W.Button(description="cancel", button_style="warning", layout=W.Layout(width="80px"))
        self.cancel.add_class("pe-job-cancel")
        self.cancel.on_click(lambda _: on_cancel(job_id))
        self.log_view = W.HTML()
        self.log_view.add_class("pe-job-log")
        super().__init__([W.HBox([self.head, self.cancel]), self.log_view])
        self.add_class("pe-job")

    def show(self, job) -> None:
        colour = COLOURS.get(job.status, "#000")
        message = f" — {html.escape(job.message)}" if job.message else ""
        accuracy = (job.result or {}).get("best_accuracy")
        acc = f", accuracy {accuracy:.3f}" if isinstance(accuracy, (int, float)) else ""
        self.head.value = (f"<code>{html.escape(job.id)}</code> → <code>{html.escape(str(job.iteration))}</code> "
                           f"<b class='pe-job-status' data-status='{job.status}' style='color:{colour}'>{job.status}</b>"
                           f" on {html.escape(job.backend)}{acc}{message}")
        self.cancel.disabled = job.done
        self.cancel.layout.display = "none" if job.done else None
        tail = job.log_tail(6)
        self.log_view.value = f"<pre style='font-size:11px;margin:0;max-height:7em;overflow:auto'>{html.escape(tail)}</pre>" if tail else ""


class JobsPanel(W.VBox):
    def __init__(self, on_cancel: Callable[[str], None]):
        self._on_cancel = on_cancel
        self.rows: dict[str, JobRow] = {}
        self.empty = W.HTML("<i>no jobs yet</i>")
        super().__init__([self.empty])
        self.add_class("pe-jobs")

    def show(self, jobs) -> None:
        for job in jobs:
            row = self.rows.get(job.id)
            if row is None:
                row = self.rows[job.id] = JobRow(job.id, self._on_cancel)
            row.show(job)
        ordered = [self.rows[j.id] for j in reversed(list(jobs)) if j.id in self.rows]
        if [r.job_id for r in ordered] != [getattr(c, "job_id", None) for c in self.children]:
            self.children = ordered or [self.empty]
