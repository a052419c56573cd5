"""Jobs list: status (coloured), per-epoch progress, a log tail without library noise, cancel, and the
tracker run each finished job was recorded as.

Progress comes from what the job itself reports: while it runs, the job contract's epoch lines
(`JobContext.report` prints `epoch k/N name=value … (s)`, `JobContext.progress` prints
`epoch k/N: b/B batches`); once it finished, metrics.json's `epochs` (the Job's `result`).
"""
from __future__ import annotations

import html
import re
from typing import Any, Callable

import ipywidgets as W

from ..masking import mask

COLOURS = {"queued": "#777", "running": "#1f77b4", "completed": "#2ca02c", "failed": "#d62728", "stopped": "#ff7f0e"}
TAIL_LINES = 6

EPOCH = re.compile(r"epoch (\d+)/(\d+)((?: [A-Za-z_][\w.]*=\S+)*) \((\d+(?:\.\d+)?)s\)\s*$")
BATCHES = re.compile(r"epoch (\d+)/(\d+): (\d+)/(\d+) batches\s*$")
NOISE = (  # lines a library printed, not the job: smdebug's logger (raw and routed), Python warnings
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d+ [^\]]* (DEBUG|INFO|WARNING) [\w.]+\.py:\d+\]"),
    re.compile(r"^\[smdebug (DEBUG|INFO) "),
    re.compile(r"^\S+\.py:\d+: \w*Warning: "),
    re.compile(r"^\s*warnings\.warn\("),
)


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def epochs_from_log(text: str) -> list[dict[str, Any]]:
    """The epochs a job reported in its log: [{epoch, epochs, <name>: value, seconds}]."""
    found = []
    for line in text.splitlines():
        match = EPOCH.search(line)
        if match:
            numbers = dict(pair.split("=", 1) for pair in match.group(3).split())
            found.append({"epoch": int(match.group(1)), "epochs": int(match.group(2)),
                          **{k: _value(v) for k, v in numbers.items()}, "seconds": float(match.group(4))})
    return found


def progress(job, log_text: str) -> dict[str, Any]:
    """{epoch, epochs, fraction, val_accuracy}: the finished job's metrics, else the log's latest epoch/batch."""
    planned = int((job.hyperparameters or {}).get("epochs") or 0)
    epochs = list((job.result or {}).get("epochs") or []) or epochs_from_log(log_text)
    done = len(epochs)
    total = max(planned, done, max((e.get("epochs", 0) for e in epochs), default=0))
    fraction = done / total if total else 0.0
    for line in reversed(log_text.splitlines()):
        match = BATCHES.search(line)
        if match and int(match.group(1)) == done + 1:
            fraction = (done + int(match.group(3)) / max(int(match.group(4)), 1)) / max(total, 1)
            break
    if job.done and job.status == "completed":
        fraction = 1.0
    accuracy = epochs[-1].get("val_accuracy") if epochs else None
    return {"epoch": done, "epochs": total, "fraction": min(fraction, 1.0),
            "val_accuracy": accuracy if isinstance(accuracy, (int, float)) else None}


def clean_tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines the job itself printed: no library log lines, warnings or batch counters."""
    kept, skip_source = [], False
    for line in text.splitlines():
        if skip_source:  # the source line Python prints under a warning
            skip_source = False
            if line.startswith("  "):
                continue
        if any(p.search(line) for p in NOISE):
            skip_source = bool(NOISE[2].search(line))
            continue
        if BATCHES.search(line) or not line.strip():
            continue
        kept.append(line)
    return "\n".join(kept[-lines:])


def recorded_as(tracker: Any, run_id: str | None) -> str:
    """Where the tracker keeps this job's iteration: an MLflow run or a SageMaker Experiments trial component."""
    if not run_id:
        return ""
    if hasattr(tracker, "tracking_uri"):  # a server's URI may carry user:token@: masked
        return (f"MLflow run <code class='pe-job-run'>{html.escape(run_id)}</code> in experiment "
                f"{html.escape(str(getattr(tracker, 'experiment', '')))} ({html.escape(mask(str(tracker.tracking_uri)))})")
    experiment = getattr(tracker, "experiment_name", None) or getattr(tracker, "experiment", "")
    return (f"SageMaker Experiments trial component <code class='pe-job-run'>{html.escape(run_id)}</code> "
            f"in experiment {html.escape(str(experiment))}")


class JobRow(W.VBox):
    def __init__(self, job_id: str, on_cancel: Callable[[str], None]):
        self.job_id = job_id
        self.head = W.HTML()
        self.cancel = W.Button(description="cancel", button_style="warning", layout=W.Layout(width="80px"))
        self.cancel.add_class("pe-job-cancel")
        self.cancel.on_click(lambda _: on_cancel(job_id))
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="160px"))
        self.bar.add_class("pe-job-bar")
        self.epochs = W.HTML()
        self.epochs.add_class("pe-job-progress")
        self.record = W.HTML()
        self.record.add_class("pe-job-record")
        self.log_view = W.HTML()
        self.log_view.add_class("pe-job-log")
        self.progress: dict[str, Any] = {}
        super().__init__([W.HBox([self.head, self.cancel]), W.HBox([self.bar, self.epochs]), self.record,
                          self.log_view])
        self.add_class("pe-job")

    def show(self, job, tracker: Any = None, run_id: str | None = None) -> None:
        colour = COLOURS.get(job.status, "#000")
        message = f" — {html.escape(mask(job.message))}" if job.message else ""
        accuracy = (job.result or {}).get("best_accuracy")
        acc = f", accuracy {accuracy:.3f}" if isinstance(accuracy, (int, float)) else ""
        self.head.value = (f"<code>{html.escape(job.id)}</code> → <code>{html.escape(str(job.iteration))}</code> "
                           f"<b class='pe-job-status' data-status='{job.status}' style='color:{colour}'>{job.status}</b>"
                           f" on {html.escape(job.backend)}{acc}{message}")
        self.cancel.disabled = job.done
        self.cancel.layout.display = "none" if job.done else None
        try:
            text = job.log_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        self.progress = progress(job, text)
        p = self.progress
        self.bar.value = p["fraction"]
        self.bar.bar_style = {"completed": "success", "failed": "danger", "stopped": "warning"}.get(job.status, "info")
        acc_text = f", val accuracy {p['val_accuracy']:.3f}" if p["val_accuracy"] is not None else ""
        self.epochs.value = (f"<span data-epoch='{p['epoch']}' data-epochs='{p['epochs']}'>epoch {p['epoch']}/"
                             f"{p['epochs'] or '?'}{acc_text}</span>")
        self.record.value = f"<small>recorded as {recorded_as(tracker, run_id)}</small>" if run_id else ""
        tail = mask(clean_tail(text))
        self.log_view.value = (f"<pre style='font-size:11px;margin:0;max-height:7em;overflow:auto'>{html.escape(tail)}</pre>"
                               if tail else "")


class JobsPanel(W.VBox):
    def __init__(self, on_cancel: Callable[[str], None]):
        self._on_cancel = on_cancel
        self.rows: dict[str, JobRow] = {}
        self.empty = W.HTML("<i>no jobs yet</i>")
        super().__init__([self.empty])
        self.add_class("pe-jobs")

    def show(self, jobs, tracker: Any = None, run_ids: dict[str, str] | None = None) -> None:
        """Update every job's row; `run_ids` maps an iteration to its tracker run."""
        run_ids = run_ids or {}
        for job in jobs:
            row = self.rows.get(job.id)
            if row is None:
                row = self.rows[job.id] = JobRow(job.id, self._on_cancel)
            row.show(job, tracker, run_ids.get(str(job.iteration)) if job.done else None)
        ordered = [self.rows[j.id] for j in reversed(list(jobs)) if j.id in self.rows]
        if [r.job_id for r in ordered] != [getattr(c, "job_id", None) for c in self.children]:
            self.children = ordered or [self.empty]


def script_fields(entry_point: W.Text, source_dir: W.Text, allowed: Any) -> W.Box:
    """The training-script fields of the panel (shown only where scripts may run; `allowed`: True or a folder)."""
    entry_point.add_class("pe-script")
    source_dir.add_class("pe-source-dir")
    if allowed is True:
        return W.HBox([entry_point, source_dir])
    note = W.HTML(f"<small>scripts run only from <code>{html.escape(str(allowed))}</code></small>")
    note.add_class("pe-scripts-folder")
    return W.VBox([W.HBox([entry_point, source_dir]), note])
