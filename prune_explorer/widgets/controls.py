"""The panel's action controls: Apply and Queue, the fine-tune's settings, Export.

The fine-tune controls are the training arguments the panel sets itself (epochs, learning rate,
batch size), where the job runs (backend) and which script runs it (empty: prune_explorer.jobs.train,
else the user's own); everything else a job gets is the recipe inherited from the base iteration.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as W

from ..default_recipe import DEFAULT_RECIPE
from ..jobs.backends import BACKENDS  # the backend list is the registry's (a backend registered later shows too)

TUNED = ("epochs", "lr", "batch_size", "distill")  # training arguments the panel has its own controls for
TEACHERS = ("none", "baseline", "parent")  # the fine-tune's teacher: plain, or distilled (jobs/distill.py)
RUNTIMES = ("pytorch", "onnxruntime")  # where the model ships: the latency fill is measured there (model/runtimes.py)
DEFAULTS = {"epochs": 1, "lr": 1e-3, "batch_size": 64, "distill": DEFAULT_RECIPE["distill"]}
EXPORT_FORMATS = ("onnx", "pt2")  # the Export button's choices (model.export.FORMATS)
WAITING = "waiting for the model to load"


class FineTuneControls(W.VBox):
    """Apply / Queue buttons and the settings of the queued fine-tune."""

    def __init__(self, hyperparameters: dict[str, Any] | None, entry_point: str | None, source_dir: str | None,
                 backend: str, scripts: bool | Path = True):
        self._given = dict(hyperparameters or {})
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="scissors")
        self.apply_button.add_class("pe-apply")
        self.queue_button = W.Button(description="Queue fine-tune", button_style="success", icon="play")
        self.queue_button.add_class("pe-queue")
        small = W.Layout(width="160px")
        self.epochs = W.BoundedIntText(value=1, min=1, max=1000, description="epochs", layout=small)
        self.lr = W.BoundedFloatText(value=1e-3, min=1e-7, max=10.0, step=1e-4, description="lr", layout=small)
        self.batch_size = W.BoundedIntText(value=64, min=1, max=65536, description="batch", layout=small)
        self.teacher = W.Dropdown(options=TEACHERS, value="none", description="teacher", layout=W.Layout(width="200px"),
                                  tooltip="distil each fine-tune from the baseline or the parent (frozen)")
        self.runtime = W.Dropdown(options=RUNTIMES, value="pytorch", description="ships to", layout=small,
                                  tooltip="the runtime the model is for: latency fill measured there, widths "
                                          "rounded to its channel block")
        for field, name in ((self.epochs, "epochs"), (self.lr, "lr"), (self.batch_size, "batch"),
                            (self.teacher, "teacher"), (self.runtime, "runtime")):
            field.add_class(f"pe-{name}")
        self.adopt({})
        self.entry_point = W.Text(value=str(entry_point or ""), placeholder="prune_explorer.jobs.train",
                                  description="script", layout=W.Layout(width="220px"))
        self.source_dir = W.Text(value=str(source_dir or ""), placeholder="(the script's folder)",
                                 description="source dir", layout=W.Layout(width="220px"))
        self.backend = W.Dropdown(options=sorted({*BACKENDS, backend}), value=backend, description="backend",
                                  layout=W.Layout(width="200px"))
        self.ready(False)
        fields = [script_fields(self.entry_point, self.source_dir, scripts)] if scripts is not False else []
        super().__init__([_row(self.apply_button, self.queue_button), _row(self.epochs, self.lr),
                          _row(self.batch_size, self.backend), _row(self.teacher, self.runtime), *fields])

    def adopt(self, train_args: dict[str, Any]) -> None:
        """Epochs, lr, batch and teacher from the inherited recipe, unless given to the panel."""
        values = {**DEFAULTS, **{k: v for k, v in train_args.items() if k in TUNED}, **self._given}
        self.epochs.value, self.lr.value = int(values["epochs"]), float(values["lr"])
        self.batch_size.value = int(values["batch_size"])
        self.teacher.value = values["distill"] or "none"

    def adopt_script(self, script: dict[str, str | None]) -> None:
        """The base iteration's training script, where the fields are still empty."""
        for field, key in ((self.entry_point, "entry_point"), (self.source_dir, "source_dir")):
            if not field.value and script.get(key):
                field.value = str(script[key])

    def hyperparameters(self, train_args: dict[str, Any]) -> dict[str, Any]:
        """The queued job's training arguments: the inherited recipe, these controls, the teacher (a name:
        `loop.step.submit` turns it into the job's --teacher folder)."""
        args = {k: v for k, v in train_args.items() if k != "distill"}
        if self.teacher.value != "none":
            args["distill"] = self.teacher.value
        else:
            args = {k: v for k, v in args.items() if k not in ("distill_alpha", "distill_temperature")}
        return {**args, "epochs": self.epochs.value, "lr": self.lr.value, "batch_size": self.batch_size.value}

    def training_script(self) -> dict[str, str | None]:
        """The script fields as `JobQueue.submit` takes them (empty fields: prune_explorer.jobs.train)."""
        return {"entry_point": self.entry_point.value.strip() or None,
                "source_dir": self.source_dir.value.strip() or None}

    def ready(self, ready: bool) -> None:
        """Enabled once the model is loaded; shown (disabled, saying why) before."""
        for button, what in ((self.apply_button, "cut the plan out of the model and save it as an iteration"),
                             (self.queue_button, "fine-tune the applied model (applies the plan first)")):
            button.disabled = not ready
            button.tooltip = what if ready else WAITING


class ExportControls(W.VBox):
    """Export: the format, the button, and the line that shows the file or the failure."""

    def __init__(self):
        self.format = W.ToggleButtons(options=EXPORT_FORMATS, value=EXPORT_FORMATS[0],
                                      tooltips=["ONNX (ONNX Runtime)", "torch.export program (.pt2)"],
                                      style={"button_width": "56px"})
        self.format.add_class("pe-export-format")
        self.button = W.Button(description="Export", icon="download")
        self.button.add_class("pe-export")
        self.line = W.HTML()
        self.line.add_class("pe-exported")
        self.ready(False)
        super().__init__([_row(self.format, self.button), self.line])

    def ready(self, ready: bool) -> None:
        self.button.disabled = not ready
        self.button.tooltip = ("the applied model (else the base) as a file that runs without prune_explorer"
                               if ready else WAITING)

    def shows(self, text: str, failed: bool = False, escaped: bool = False) -> None:
        body = text if escaped else html.escape(text)
        self.line.value = f"<div style='color:{'#b00020' if failed else 'inherit'}'>{body}</div>"

    def exported(self, name: str, result: Any) -> None:
        path = html.escape(str(result.path))
        self.shows(f"exported {html.escape(name)}: <code class='pe-export-path' data-path='{path}'>{path}</code> "
                   f"({result.bytes / 1e6:.1f} MB, {result.format} via {result.exporter}, max |file − PyTorch| "
                   f"{result.max_abs_diff:.1e})", escaped=True)


def _row(*widgets: W.Widget) -> W.HBox:
    """Controls side by side, wrapping onto the next line where the column is narrow (never cut off)."""
    return W.HBox(list(widgets), layout=W.Layout(flex_flow="row wrap"))


def script_fields(entry_point: W.Text, source_dir: W.Text, allowed: Any) -> W.Box:
    """The training-script fields of the panel (shown only where scripts may run; `allowed`: True or a folder)."""
    entry_point.add_class("pe-script")
    source_dir.add_class("pe-source-dir")
    if allowed is True:
        return _row(entry_point, source_dir)
    note = W.HTML(f"<small>scripts run only from <code>{html.escape(str(allowed))}</code></small>")
    note.add_class("pe-scripts-folder")
    return W.VBox([_row(entry_point, source_dir), note])
