"""The Explorer panel: layout and wiring over a `session.PruningSession`.

It draws the first view — heatmap, layer table, scatter, lineage — from a view dict (the
workspace's view file, when `open_panel` opens an iteration: no torch imported yet), loads the
session behind it and enables Apply, the latency preview and Export once the model is ready (shown,
disabled until then). Every action is a session call; slow ones run on background workers and
report into `error` / `status`, never as a traceback. What a test checks lives in traitlets.
This module imports no torch: the session loads on first use.
"""
from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import ipywidgets as W
from traitlets import Bool, Dict, Float, Int, Unicode, observe, validate

from ..jobs.base import scripts_allowed
from ..masking import mask
from ..default_recipe import DEFAULT_RECIPE
from ..session.messages import message
from . import layout
from .actions import Actions
from .background import Background
from .history import HistoryLink
from .planning import Planner

# The preview also times each plan in ONNX Runtime: two dynamo exports (seconds, ≈ +430 MiB peak on
# resnet18), too much for a notebook on Binder's 2 GiB beside a training job; the app turns it on.
ONNXRUNTIME_LATENCY = False
SESSION_PARTS = ("model", "x", "graph", "table", "costs", "trial", "queue", "tracker", "workspace")


class Explorer(W.VBox):
    """`Explorer(model, trial=..., example_inputs=..., workspace=...)`, `Explorer.from_iteration(ws, name)`,
    or `open_panel(ws)` (the first view at once, the model behind it)."""

    counts = Dict(help="{layer: filters to cut} as the layer table shows it")
    plan_channels = Dict(help="{layer: channel indices} of the current plan")
    plan_summary = Dict(help="PrunePlan.summary() of the current plan")
    base_iteration = Unicode(None, allow_none=True)
    criterion = Unicode("taylor")
    scheme = Unicode("internal")
    n_lowest = Int(200)
    normalization = Unicode("auto", help="rank()'s normalize: l2, none, flops, or auto (the criterion's own)")
    fill_mode = Unicode("filters", help="what fill_lowest counts: 'filters' (n_lowest), 'macs' or 'latency' (keep_fraction)")
    keep_fraction = Float(0.5, help="fill_lowest in 'macs' / 'latency' mode: the fraction of the model's cost left")
    latency_runtime = Unicode("pytorch", help="where the model ships: 'pytorch' or 'onnxruntime' (the latency fill "
                                              "is measured there, and plans round to its channel block)")
    round_to = Int(0, help="every cut group keeps a multiple of this many channels (0: any width; ORT's block)")
    distill = Unicode("none", help="the queued fine-tune's teacher: none (plain), baseline or parent (distilled)")
    preview = Dict(help="params/macs/latency_ms _before and _after, filters_removed")
    applied = Dict(help="what the last Apply changed, and cut_accuracy: its accuracy right after the cut")
    sensitivity = Dict(help="{layer: [(fraction cut, accuracy)]}")
    last_job = Unicode(None, allow_none=True)
    history_size = Int(0, help="fine-tuned iterations on the scatter")
    selected_layer = Unicode(None, allow_none=True, help="the layer picked in the heatmap or the table")
    coupling = Dict(help="the selected layer's channel group: members, roles, tensor shapes before/after the plan")
    compared = Dict(help="the last comparison of two iterations (per-layer widths, params, MACs, accuracy)")
    exported = Dict(help="the last Export: iteration, path, format, bytes, max_abs_diff (ExportResult.as_dict())")
    ready = Bool(False, help="the model is loaded: Apply, the latency preview and Export work")
    first_view = Dict(help="open_panel: what started loading the model, and what was imported by then")
    error = Unicode("")
    status = Unicode("")
    busy = Bool(False)

    def __init__(self, model: Any = None, trial: Any = None, example_inputs: Any = None, *,
                 workspace: str | Path | None = None, criterion: str | None = None, scheme: str = "internal",
                 n_lowest: int = 200, normalization: str = "auto", validation: Any = None, backend: Any = "local",
                 tracker: Any = "mlflow", base_iteration: str | None = None, train_args: dict[str, Any] | None = None,
                 hyperparameters: dict[str, Any] | None = None, poll_interval: float = 1.0,
                 entry_point: str | None = None, source_dir: str | None = None,
                 onnxruntime_latency: bool | None = None, trust_code: Any = None, scripts: bool | str | Path = True,
                 check: Any = None, session: Any = None, view: dict[str, Any] | None = None,
                 history: list[dict[str, Any]] | None = None):
        if session is None and model is not None and example_inputs is None:
            raise ValueError("Explorer needs example_inputs (e.g. torch.zeros(1, 3, 32, 32)) to trace the model")
        criterion = criterion or DEFAULT_RECIPE["criterion"]  # the measured best recipe's (default_recipe.py)
        self.workers = Background(self._background_failed)  # one worker per kind; the controllers submit here
        self.lock, self.closed = threading.RLock(), threading.Event()
        self.session, self.history, self.pruned_model, self.shown_view, self.loading = None, None, None, None, None
        self.load_failed = False
        self._session_options = {"criterion": criterion, "validation": validation, "train_args": train_args,
                                 "normalization": None if normalization == "auto" else normalization}
        self.onnxruntime_latency = ONNXRUNTIME_LATENCY if onnxruntime_latency is None else bool(onnxruntime_latency)
        self.planner, self.actions = Planner(self), Actions(self)
        self.scripts = scripts_allowed(scripts)  # where the script fields may point (False: no fields; the app)
        self.history_link = HistoryLink(self, backend, tracker, poll_interval, check, scripts=self.scripts)
        super().__init__(layout.build(self, criterion=criterion, scheme=scheme, n_lowest=n_lowest, backend=backend,
                                      hyperparameters=hyperparameters, entry_point=entry_point, source_dir=source_dir,
                                      scripts=self.scripts))
        self.add_class("pe-explorer")
        self.criterion, self.scheme, self.n_lowest, self.normalization = criterion, scheme, n_lowest, normalization
        self.base_iteration = base_iteration
        self._wire()
        if view is not None:
            self.show_view(view)
        if history is not None:
            self.history_link.show(history)
        if session is None and model is not None:
            from ..session import PruningSession
            from ..workspace import Workspace

            space = Workspace(workspace, trust_code=trust_code) if workspace is not None else None
            session = PruningSession(model, example_inputs, trial=trial, workspace=space,
                                     iteration=base_iteration, **self._session_options)
        if session is not None:
            self.attach(session)

    @classmethod
    def from_iteration(cls, workspace: str | Path, iteration: str, **kwargs: Any) -> "Explorer":
        """Open on an iteration of the workspace: its saved model, its trial, its fine-tuning recipe
        and the training script of the job that made it (loaded before this returns); ranked by the
        criterion its lineage recorded unless `criterion=` is given, as `open_panel`."""
        from ..loop.recorded_recipe import ranking
        from ..workspace import Workspace
        from .opening import open_session

        kwargs = {**kwargs, **ranking(Workspace(workspace), iteration, kwargs)}
        session = open_session(workspace, iteration, kwargs)
        return cls(session=session, workspace=workspace, base_iteration=iteration, **kwargs)

    def _wire(self) -> None:
        t = self.table_editor
        t.on_counts(lambda counts: setattr(self, "counts", dict(counts)))
        t.criterion.observe(lambda c: setattr(self, "criterion", c["new"]), "value")
        t.scheme.observe(lambda c: setattr(self, "scheme", c["new"]), "value")
        t.n_lowest.observe(lambda c: setattr(self, "n_lowest", int(c["new"])), "value")
        for name in ("normalization", "fill_mode", "keep_fraction"):  # the panel's traits follow the controls
            W.link((getattr(t, name), "value"), (self, name))
        t.fill.on_click(lambda _: self.fill_lowest())
        t.clear.on_click(lambda _: self.set_counts({}))
        t.sensitivity_all.on_click(lambda _: self.compute_sensitivity())
        self.heatmap.on_select(self.select_layer)
        self.finetune.apply_button.on_click(lambda _: self.actions.pressed("apply"))
        self.finetune.queue_button.on_click(lambda _: self.actions.pressed("queue_finetune"))
        self.exporter.button.on_click(lambda _: self.guarded(self.export))
        W.link((self.finetune.teacher, "value"), (self, "distill"))
        W.link((self.finetune.runtime, "value"), (self, "latency_runtime"))
        self.observe(self.planner.runtime_changed, "latency_runtime")

    # --- the view and the session --------------------------------------------------------------
    def show_view(self, view: dict[str, Any]) -> None:
        """Draw heatmap and table from a view (unless they already show it)."""
        shown, self.shown_view = self.shown_view, view
        self.table_editor.set_choices(view.get("criteria", [view["criterion"]]), view.get("normalizations", []))
        self._showing_ranking(view["criterion"], view.get("normalization"))
        layers = [g["name"] for g in view["groups"]]
        if shown is None or shown["ranks"] != view["ranks"]:
            self.heatmap.show(view["ranks"], layers)
        if shown is None or shown["groups"] != view["groups"]:
            self.table_editor.show(view["groups"], self.compute_sensitivity, self.select_layer)
            self.not_prunable.show(view)
        elif shown["ranks"] != view["ranks"]:
            self._plan_changed()

    def attach(self, session: Any) -> None:
        """Work on `session`: show its ranks (unless the first view showed the same), keep the plan
        when the ranks are those the user was cutting, and enable what needs the model."""
        first, old, shown = self.session is None, self.session, self.shown_view
        view = session.view()
        same = shown is not None and shown["ranks"] == view["ranks"] and shown["groups"] == view["groups"]
        with self.lock:
            self.session, self.pruned_model, self.planner.previewed = session, None, None
        self.base_iteration = session.iteration
        self.show_view(view)
        self.error = session.problem
        if first:
            self.finetune.adopt(session.train_args)
            self.finetune.adopt_script(session.script)
        keep = self.selected_layer if self.selected_layer in self.table_editor.rows else None
        if not same:
            self.selected_layer, self.sensitivity, self.applied = None, {}, {}
            self.table_editor.set_counts({})
        self.select_layer(keep or next(iter(self.table_editor.rows), None))
        self._plan_changed()
        self.workers.submit("latency", self.planner.measure_base_latency, session)
        self.actions.prepare(session)
        self.ready, self.busy = True, False
        self.status = f"{len(view['groups'])} prunable groups, {len(view['ranks']['row'])} filters ranked by " \
                      f"{session.criterion}"
        if old is not None:
            old.close(jobs=False)
        if session.workspace is not None:
            self.workers.submit("view", session.write_view)
            if first:
                self.workers.submit("refresh", self.history_link.open_jobs)

    def _showing_ranking(self, criterion: str, normalization: str | None) -> None:
        """Show the criterion and normalisation the ranks are by, without re-ranking."""
        self._quiet_criterion = True
        try:
            self.criterion = self.table_editor.criterion.value = criterion
            self.normalization = self.table_editor.normalization.value = normalization or "auto"
        finally:
            self._quiet_criterion = False

    @observe("criterion", "normalization")
    def _ranking_changed(self, change) -> None:
        if getattr(self, "_quiet_criterion", True) or self.session is None:
            return
        self.workers.submit("rank", self.planner.rerank, self.criterion, latest_only=True)

    @observe("counts", "round_to")
    def _plan_changed(self, _change=None) -> None:
        self.planner.changed()

    @observe("preview", "applied", "coupling")
    def _show_part(self, change) -> None:
        {"preview": lambda numbers: self.preview_box.show(numbers, self.ready),
         "applied": self.preview_box.show_applied, "coupling": self.coupling_view.show}[change["name"]](change["new"])

    @observe("ready")
    def _enable(self, change) -> None:
        self.finetune.ready(change["new"])
        self.exporter.ready(change["new"])
        self.preview_box.show(self.preview, change["new"])

    # --- what the controls do (the session does the work) ---------------------------------------
    def fill_lowest(self, n: int | None = None, scheme: str | None = None, keep_macs: float | None = None,
                    keep_latency: float | None = None) -> None:
        self.planner.fill_lowest(n, scheme, keep_macs, keep_latency)

    def hyperparameters(self) -> dict[str, Any]:
        return self.finetune.hyperparameters(self.session.train_args if self.session else {})

    def training_script(self) -> dict[str, str | None]:
        return self.finetune.training_script()

    # --- housekeeping --------------------------------------------------------------------------
    def wait(self, timeout: float | None = 120) -> "Explorer":
        """Block until background work (loading, ranking, latency, refresh) is done; for tests and scripts."""
        if self.loading is not None:
            self.loading.start("wait")
        self.workers.wait(timeout)
        if self.load_failed:
            raise RuntimeError(f"the panel could not open: {self.error}")
        return self

    def close(self) -> None:
        self.closed.set()
        self.workers.shutdown()
        if self.session is not None:
            self.session.close()
        super().close()

    def guarded(self, action) -> None:
        """Run a control's action; a failure is the error line, not a traceback."""
        try:
            action()
            self.error = ""
        except Exception as exc:
            self.error = message(exc)

    def _background_failed(self, kind: str, exc: BaseException) -> None:
        self.error = f"{kind}: {message(exc)}"

    @validate("error", "status")
    def _masked(self, proposal) -> str:  # what the panel says never shows a credential (masking.py)
        return mask(proposal["value"])

    @observe("error")
    def _show_error(self, change) -> None:
        text = change["new"]
        self.error_line.value = (f"<div style='color:#b00020;white-space:pre-wrap'>⚠ {html.escape(text)}</div>"
                                 if text else "")

    @observe("status", "busy")
    def _show_status(self, _change) -> None:
        spinner = "⏳ " if self.busy else ""
        base = f" · base <code>{html.escape(self.base_iteration)}</code>" if self.base_iteration else ""
        self.status_line.value = f"<span>{spinner}{html.escape(self.status)}</span>{base}"


# the controls' actions, each its controller's method of the same name (plan, set_counts, apply, rebase…)
DELEGATED = {"planner": ("plan", "set_counts", "select_layer", "compute_sensitivity"),
             "actions": ("apply", "queue_finetune", "export"),
             "history_link": ("refresh", "rebase", "compare", "cancel")}
for _owner, _names in DELEGATED.items():
    for _name in _names:
        setattr(Explorer, _name, lambda self, *args, _o=_owner, _n=_name, **kw: getattr(getattr(self, _o), _n)(*args, **kw))
for _part in SESSION_PARTS:  # the session's model, graph, rank table, costs… as the panel's (None before it loads)
    setattr(Explorer, _part, property(lambda self, part=_part: getattr(self.session, part, None)))

