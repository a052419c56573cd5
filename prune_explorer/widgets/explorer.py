"""The Explorer panel: rank heatmap, per-layer editor, preview, apply/queue, jobs and history.

A thin view over the library: the plan it shows is `PrunePlan.from_counts` / `PrunePlan.lowest`
on the library's RankTable, Apply is `surgery.prune` + `Workspace.save_pruned` (into an iteration
the workspace reserved), Queue is `Workspace.submit` onto a `JobQueue`, the scatter is the
tracker's `history()`. Everything a test needs to check lives in traitlets.
Slow work (ranking, latency, sensitivity, re-basing) runs on background threads; failures land
in the `error` trait and the panel's error line, never as a traceback.
"""
from __future__ import annotations

import html
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import ipywidgets as W
import torch
from torch import nn
from traitlets import Bool, Dict, Float, Int, Unicode, observe, validate

from ..default_recipe import DEFAULT_RECIPE, RECIPE_ITERATIONS
from ..model.costs import CostModel
from ..model.export import export_model, onnxruntime_latency_ms
from ..model.graph import ChannelGraph
from ..model.measure import latency, paired_latency_ms
from ..model.plan import PrunePlan
from ..model.surgery import prune
from ..jobs.base import scripts_allowed
from ..masking import mask
from ..signals.ranking import rank
from ..workspace import Workspace
from .background import MODEL_LOCK, Background
from .coupling import CouplingView, describe, members, shapes_after
from .heatmap import RankHeatmap
from .jobs_panel import JobsPanel, script_fields
from .layer_table import LayerTable
from .lineage import LineageTree, comparison
from .preview import Preview
from .scatter import HistoryScatter
from .sensitivity import sensitivity_curve

WEIGHT_CRITERIA = ("l1", "l2")
VALIDATION_EXAMPLES = 256
TUNED = ("epochs", "lr", "batch_size", "distill")  # training arguments the panel has its own controls for
TEACHERS = ("none", "baseline", "parent")  # the fine-tune's teacher: plain, or distilled (jobs/distill.py)
EXPORT_FORMATS = ("onnx", "pt2")  # the Export button's choices (model.export.FORMATS)
# The preview also times each plan in ONNX Runtime: two dynamo exports (seconds, ≈ +430 MiB peak on
# resnet18), too much for a notebook on Binder's 2 GiB beside a training job; the app turns it on.
ONNXRUNTIME_LATENCY = False


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"


class Explorer(W.VBox):
    """Open with `Explorer(model, trial=..., example_inputs=..., workspace=...)` or `Explorer.from_iteration(...)`."""

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
    round_to = Int(0, help="every cut group keeps a multiple of this many channels (0: any width); set from "
                           "latency_runtime: ORT's channel block (16 with AVX-512, 8 with AVX2), none for PyTorch")
    preview = Dict(help="params/macs/latency_ms _before and _after, filters_removed")
    applied = Dict(help="what the last Apply changed")
    sensitivity = Dict(help="{layer: [(fraction cut, accuracy)]}")
    last_job = Unicode(None, allow_none=True)
    history_size = Int(0, help="iterations on the scatter")
    selected_layer = Unicode(None, allow_none=True, help="the layer picked in the heatmap or the table")
    coupling = Dict(help="the selected layer's channel group: members, roles, tensor shapes before/after the plan")
    compared = Dict(help="the last comparison of two iterations (per-layer widths, params, MACs, accuracy)")
    exported = Dict(help="the last Export: iteration, path, format, bytes, max_abs_diff (ExportResult.as_dict())")
    error = Unicode("")
    status = Unicode("")
    busy = Bool(False)
    distill = Unicode("none", help="the queued fine-tune's teacher: none (plain), baseline or parent (distilled)")

    def __init__(self, model: nn.Module, trial: Any = None, example_inputs: Any = None, *,
                 workspace: str | Path | None = None, criterion: str | None = None, scheme: str = "internal",
                 n_lowest: int = 200, validation: Any = None, backend: Any = "local", tracker: Any = "mlflow",
                 base_iteration: str | None = None, train_args: dict[str, Any] | None = None,
                 hyperparameters: dict[str, Any] | None = None, poll_interval: float = 1.0,
                 entry_point: str | None = None, source_dir: str | None = None,
                 onnxruntime_latency: bool | None = None, trust_code: Any = None,
                 scripts: bool | str | Path = True):
        if example_inputs is None:
            raise ValueError("Explorer needs example_inputs (e.g. torch.zeros(1, 3, 32, 32)) to trace the model")
        criterion = criterion or DEFAULT_RECIPE["criterion"]  # the measured best recipe's (default_recipe.DEFAULT_RECIPE)
        self._bg = Background(self._background_failed)
        self._lock = threading.RLock()
        self.workspace = Workspace(workspace, trust_code=trust_code) if workspace is not None else None
        self.scripts = scripts_allowed(scripts)  # where the script fields may point (False: no fields; the app)
        self.train_args = dict(train_args or {})
        self._validation_source = validation
        self._validation: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pruned_model: nn.Module | None = None
        self._pending: dict[str, Any] | None = None
        self._previewed: tuple[dict[str, int], nn.Module] | None = None  # (counts, the pruned model they give)
        self._surgery: tuple[tuple, nn.Module] | None = None  # (plan key, the preview's pruned model): Apply reuses it
        self._cuts_of, self._cuts, self._rows_of = None, {}, {}  # per-layer plans of one RankTable
        self.history = None
        self.queue = None
        self.tracker = None
        self._closed = threading.Event()
        self.onnxruntime_latency = ONNXRUNTIME_LATENCY if onnxruntime_latency is None else bool(onnxruntime_latency)
        self._ort_ms: dict[tuple, tuple[float, float]] = {}  # plan key -> ONNX Runtime (before, after) ms
        self._ort_base: tuple[nn.Module, Path] | None = None  # the base model's .onnx, exported once per base
        self._ort_dir: str | None = None

        self.error_line = W.HTML()
        self.error_line.add_class("pe-error")
        self.status_line = W.HTML()
        self.status_line.add_class("pe-status")
        self.heatmap = RankHeatmap()
        self.table_editor = LayerTable(criterion, scheme, n_lowest)
        self.preview_box = Preview()
        self.apply_button = W.Button(description="Apply", button_style="primary", icon="scissors")
        self.apply_button.add_class("pe-apply")
        self.queue_button = W.Button(description="Queue fine-tune", button_style="success", icon="play")
        self.queue_button.add_class("pe-queue")
        hp = {"epochs": 1, "lr": 1e-3, "batch_size": 64,
              **{k: v for k, v in self.train_args.items() if k in TUNED}, **(hyperparameters or {})}
        self.epochs = W.BoundedIntText(value=int(hp["epochs"]), min=1, max=1000, description="epochs",
                                       layout=W.Layout(width="160px"))
        self.lr = W.BoundedFloatText(value=float(hp["lr"]), min=1e-7, max=10.0, step=1e-4, description="lr",
                                     layout=W.Layout(width="160px"))
        self.batch_size = W.BoundedIntText(value=int(hp["batch_size"]), min=1, max=65536, description="batch",
                                           layout=W.Layout(width="160px"))
        self.distill = hp.get("distill") or DEFAULT_RECIPE["distill"] or "none"
        self.teacher_choice = W.Dropdown(options=TEACHERS, value=self.distill, description="teacher",
                                         tooltip="distil each fine-tune from the baseline or the parent (frozen)",
                                         layout=W.Layout(width="200px"))
        self.teacher_choice.add_class("pe-teacher")
        W.link((self.teacher_choice, "value"), (self, "distill"))
        self.runtime_choice = W.Dropdown(options=("pytorch", "onnxruntime"), value="pytorch", description="ships to",
                                         tooltip="the runtime the model is for: latency fill measured there, widths "
                                                 "rounded to its channel block", layout=W.Layout(width="220px"))
        self.runtime_choice.add_class("pe-runtime")
        W.link((self.runtime_choice, "value"), (self, "latency_runtime"))
        # the training script of each queued job: empty = prune_explorer.jobs.train, else the user's own
        self.entry_point = W.Text(value=str(entry_point or ""), placeholder="prune_explorer.jobs.train",
                                  description="script", layout=W.Layout(width="240px"))
        self.source_dir = W.Text(value=str(source_dir or ""), placeholder="(the script's folder)",
                                 description="source dir", layout=W.Layout(width="240px"))
        backend_name = backend if isinstance(backend, str) else backend.name
        self.backend_choice = W.Dropdown(options=sorted({"local", "sagemaker", backend_name}), value=backend_name,
                                         description="backend",
                                         layout=W.Layout(width="200px"))
        self.jobs_panel = JobsPanel(self.cancel)
        self.scatter = HistoryScatter(self.rebase)
        self.lineage = LineageTree(self.rebase, self.compare)
        self.coupling_view = CouplingView()
        self.export_format = W.ToggleButtons(options=EXPORT_FORMATS, value=EXPORT_FORMATS[0],
                                             tooltips=["ONNX (ONNX Runtime)", "torch.export program (.pt2)"],
                                             style={"button_width": "56px"})
        self.export_format.add_class("pe-export-format")
        self.export_button = W.Button(description="Export", icon="download",
                                      tooltip="the applied model (else the base) as a file that runs without prune_explorer")
        self.export_button.add_class("pe-export")
        self.export_line = W.HTML()
        self.export_line.add_class("pe-exported")
        actions = W.VBox([
            W.HTML("<b>Preview</b>"), self.preview_box,
            W.HBox([self.apply_button, self.queue_button]),
            W.HBox([self.epochs, self.lr]), W.HBox([self.batch_size, self.backend_choice]),
            W.HBox([self.teacher_choice, self.runtime_choice]),
            *([script_fields(self.entry_point, self.source_dir, self.scripts)] if self.scripts is not False else []),
            W.HBox([self.export_format, self.export_button]), self.export_line,
            W.HTML("<b>Coupled modules</b>"), self.coupling_view,
        ], layout=W.Layout(width="40%", min_width="360px"))
        super().__init__([
            W.HTML("<h3 style='margin:4px 0'>prune_explorer</h3>"),
            self.status_line, self.error_line,
            W.HBox([W.VBox([W.HTML("<b>Filter ranks</b> <small>hover a cell for its filter; click a row to "
                                   "select its layer</small>"), self.heatmap], layout=W.Layout(width="60%")), actions]),
            W.HTML("<b>Layers</b>"), self.table_editor,
            W.HBox([W.VBox([W.HTML("<b>History</b>"), self.scatter], layout=W.Layout(width="40%")),
                    W.VBox([W.HTML("<b>Lineage</b> <small>click to base the next cut on it</small>"), self.lineage],
                           layout=W.Layout(width="25%")),
                    W.VBox([W.HTML("<b>Jobs</b>"), self.jobs_panel], layout=W.Layout(width="35%"))]),
        ])
        self.add_class("pe-explorer")

        self.criterion, self.scheme, self.n_lowest = criterion, scheme, n_lowest
        self.base_iteration = base_iteration
        self._wire()
        if DEFAULT_RECIPE["target_macs"] is not None:  # the fill cuts one of the recipe's equal steps to its MACs target
            self.fill_mode = "macs"
            self.keep_fraction = round(DEFAULT_RECIPE["target_macs"] ** (1.0 / RECIPE_ITERATIONS), 3)
        self._load(model, trial, example_inputs)
        if self.workspace is not None:  # MLflow & co. load off the main thread: the panel shows first
            self._bg.submit("refresh", self._open_workspace, backend, tracker, poll_interval)

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def from_iteration(cls, workspace: str | Path, iteration: str, **kwargs: Any) -> "Explorer":
        """Open on an iteration of the workspace: its saved model, its trial, its fine-tuning recipe
        and the training script of the job that made it."""
        space = Workspace(workspace, trust_code=kwargs.get("trust_code"))
        model, x, trial, args = space.open_iteration(iteration)
        for key, value in space.training_script(iteration).items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("train_args", args)
        kwargs.setdefault("example_inputs", x)
        return cls(model, trial=trial, workspace=workspace, base_iteration=iteration, **kwargs)

    def _wire(self) -> None:
        t = self.table_editor
        t.on_counts(self._counts_from_table)
        t.criterion.observe(lambda c: setattr(self, "criterion", c["new"]), "value")
        t.scheme.observe(lambda c: setattr(self, "scheme", c["new"]), "value")
        t.n_lowest.observe(lambda c: setattr(self, "n_lowest", int(c["new"])), "value")
        for name in ("normalization", "fill_mode", "keep_fraction"):  # the panel's traits follow the controls
            W.link((getattr(t, name), "value"), (self, name))
        t.fill.on_click(lambda _: self.fill_lowest())
        t.clear.on_click(lambda _: self.set_counts({}))
        t.sensitivity_all.on_click(lambda _: self.compute_sensitivity())
        self.heatmap.on_select(self.select_layer)
        self.apply_button.on_click(lambda _: self._guarded(self.apply))
        self.queue_button.on_click(lambda _: self._guarded(self.queue_finetune))
        self.export_button.on_click(lambda _: self._guarded(self.export))

    def _load(self, model: nn.Module, trial: Any, example_inputs: Any) -> None:
        """Trace, open the trial and rank; a bad trial falls back to weight ranks with an error shown."""
        model.eval()
        with MODEL_LOCK:
            graph = ChannelGraph.trace(model, example_inputs)
            opened, problem = None, ""
            if trial is not None:
                try:
                    opened = trial if hasattr(trial, "group_stats") else _open(trial, model, graph)
                except Exception as exc:  # any reader failure is a message in the panel
                    problem = f"trial {trial}: {_message(exc)}"
            criterion = self.criterion
            if opened is None and criterion not in WEIGHT_CRITERIA:
                if not problem:
                    problem = f"criterion {criterion!r} needs a trial; none was given"
                criterion = "l1"
                problem += "; ranking by l1 weight norms instead"
            table = rank(model, example_inputs, trial=opened, criterion=criterion, graph=graph,
                         normalize=self._normalize())
            costs = CostModel(model, example_inputs, graph)
        with self._lock:
            self.model, self.x, self.graph, self.trial, self.table = model, example_inputs, graph, opened, table
            self.costs = costs
            self.pruned_model, self._pending, self._previewed = None, None, None
            self._latency_table = None  # the latency fill's table, measured on this model when first asked
            self._ort_ms, self._surgery = {}, None
        self._showing_criterion(criterion)
        self.error = problem
        layers = [g.name for g in graph.prunable()]
        self.heatmap.show(table, layers)
        self.table_editor.show(graph.prunable(), self.costs.per_group(), self.compute_sensitivity, self.select_layer)
        keep = self.selected_layer if self.selected_layer in layers else None
        self.selected_layer = None
        self.sensitivity = {}
        self.applied = {}
        self.table_editor.set_counts({})
        self._plan_changed()
        self._bg.submit("latency", self._measure_base_latency, model, example_inputs)
        self.select_layer(keep or (layers[0] if layers else None))
        self.status = f"{len(layers)} prunable groups, {len(table)} filters ranked by {criterion}"

    def _showing_criterion(self, criterion: str) -> None:
        self._quiet_criterion = True
        try:
            self.criterion = criterion
            self.table_editor.criterion.value = criterion
        finally:
            self._quiet_criterion = False

    def _open_workspace(self, backend: Any, tracker: Any, poll_interval: float) -> None:
        from ..tracking import make_tracker

        self.tracker = make_tracker(tracker, self.workspace.root)
        self.queue = self._make_queue(backend)
        if self._closed.is_set():  # closed while the tracker was loading
            self.queue.close()
            return
        self.backend_choice.observe(self._backend_changed, "value")
        self.refresh()
        self._poller = threading.Thread(target=self._poll, args=(poll_interval,), name="explorer-poll", daemon=True)
        self._poller.start()

    def _make_queue(self, backend: Any):
        queue = self.workspace.queue(backend, self.tracker, scripts=self.scripts)
        queue.on_change(lambda job: self._bg.submit("refresh", self.refresh, latest_only=True))
        return queue

    def _backend_changed(self, change) -> None:
        try:
            old, self.queue = self.queue, self._make_queue(change["new"])
            old.close()
            self.error = ""
        except Exception as exc:
            self.error = f"backend {change['new']}: {_message(exc)}"

    # --- plan ----------------------------------------------------------------------------------
    def set_counts(self, counts: dict[str, int]) -> None:
        """Set how many filters to cut per layer (the same as moving the sliders)."""
        unknown = [k for k in counts if k not in self.table_editor.rows]
        if unknown:
            self.error = f"layer {unknown[0]!r} is not a prunable group of this model"
            return
        self.table_editor.set_counts(counts)

    def fill_lowest(self, n: int | None = None, scheme: str | None = None, keep_macs: float | None = None,
                    keep_latency: float | None = None) -> None:
        """Counts from `PrunePlan.lowest`: the global lowest-N filters, or (fill_mode 'macs' / 'latency',
        or `keep_macs` / `keep_latency` given) the lowest-ranked filters until `keep_fraction` of the
        model's MACs or predicted latency is left. The latency table is measured on first use (on the
        background "budget" worker; `wait()` waits for it)."""
        t = self.table_editor
        for mode, value in (("filters", n), ("macs", keep_macs), ("latency", keep_latency)):
            if value is not None:
                t.fill_mode.value = mode
                (t.n_lowest if mode == "filters" else t.keep_fraction).value = value
        if scheme is not None:
            t.scheme.value = scheme
        if self.fill_mode == "latency" and self.latency_runtime != "pytorch":
            self.status = f"measuring cuts in {self.latency_runtime} until the model keeps {self.keep_fraction:g} of its latency…"
            self._bg.submit("budget", self._measured_fill, self.model, self.keep_fraction, latest_only=True)
            return
        if self.fill_mode == "latency" and self._latency_table is None:
            self.status = "measuring a per-layer latency table of this model (once)…"
            self._bg.submit("budget", self._measure_latency_table_then_fill, self.model, latest_only=True)
            return
        try:
            round_to = self.round_to if self.round_to > 1 else None
            if self.fill_mode == "filters":
                plan = PrunePlan.lowest(self.table, self.graph, n=self.n_lowest, scheme=self.scheme, round_to=round_to)
            elif self.fill_mode == "macs":
                plan = PrunePlan.lowest(self.table, self.graph, scheme=self.scheme, costs=self.costs, round_to=round_to,
                                        target_macs=self.keep_fraction * self.costs.before.macs)
            else:
                latency = self._latency_table
                plan = PrunePlan.lowest(self.table, self.graph, scheme=self.scheme, costs=self.costs, latency=latency,
                                        round_to=round_to,
                                        target_latency_ms=self.keep_fraction * latency.predict(self.costs))
        except ValueError as exc:
            self.error = _message(exc)
            return
        t.set_counts({layer: len(ix) for layer, ix in plan.channels.items()})

    def _measured_fill(self, model: nn.Module, fraction: float) -> None:
        """The latency fill in a deployment runtime: cut models measured there (model/runtime_budget.py)."""
        from ..model.runtime_budget import plan_to_latency

        with MODEL_LOCK:
            try:
                plan = plan_to_latency(self.table, self.graph, model, self.x, fraction, runtime=self.latency_runtime,
                                       scheme=self.scheme, round_to=self.round_to or None, costs=self.costs)
            except ValueError as exc:
                self.error = _message(exc)
                return
        if model is self.model:
            self.status = (f"{self.latency_runtime}: {plan.budget['reached']:.3f} of the latency measured, "
                           f"{len(plan.budget['measurements'])} cuts timed")
            self.table_editor.set_counts({layer: len(ix) for layer, ix in plan.channels.items()})

    def _measure_latency_table_then_fill(self, model: nn.Module) -> None:
        from ..model.latency import LatencyTable

        with MODEL_LOCK:
            table = LatencyTable.measure(model, self.x, self.graph, self.costs)
        if model is self.model:  # not re-based meanwhile
            self._latency_table = table
            self.status = f"latency table measured: {table.predict(self.costs):.2f} ms predicted for this model"
            self.fill_lowest()

    def plan(self) -> PrunePlan:
        """`PrunePlan.from_counts(table, graph, counts)`, asked one layer at a time and cached: each
        layer's cut depends only on its own rows, so a slider move re-plans one layer, not the model."""
        channels = {}
        for layer, k in self.counts.items():
            cut = self._layer_cut(layer, int(k))
            if cut:
                channels[layer] = cut
        return PrunePlan(channels, layers=self.counts)

    def _layer_cut(self, layer: str, k: int) -> list[int]:
        table = self.table
        if self._cuts_of is not table:
            self._cuts_of, self._cuts = table, {}
            self._rows_of = {int(g): rows for g, rows in table.groupby("group", sort=False)}
        round_to = self.round_to if self.round_to > 1 else None
        key = (layer, k, round_to)
        if key not in self._cuts:
            rows = self._rows_of.get(self.graph.group(layer).id, table.iloc[:0])
            self._cuts[key] = PrunePlan.from_counts(rows, self.graph, {layer: k}, round_to=round_to).channels.get(layer, [])
        return self._cuts[key]

    def _counts_from_table(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)

    @observe("latency_runtime")
    def _runtime_changed(self, change) -> None:
        """A model for ONNX Runtime keeps widths in multiples of ORT's block (model/runtimes.py); PyTorch any."""
        from ..model.runtimes import get_runtime

        block = get_runtime(change["new"]).block_size()
        self.round_to = block if block > 1 else 0

    @observe("round_to")
    def _rounding_changed(self, _change=None) -> None:
        if hasattr(self, "table") and self.counts:  # the same counts, rounded anew
            self._plan_changed()

    @observe("counts")
    def _plan_changed(self, _change=None) -> None:
        try:
            plan = self.plan()
            removed = {gid: len(ix) for gid, ix in plan.resolve(self.graph).items()}
        except ValueError as exc:
            self.error = f"plan refused: {_message(exc)}"
            return
        if self.error.startswith("plan refused"):
            self.error = ""
        cost = self.costs.cost(removed)
        self.plan_channels = {k: list(v) for k, v in plan.channels.items()}
        self.plan_summary = plan.summary()
        numbers = dict(self.preview)
        numbers.update(params_before=self.costs.before.params, params_after=cost.params,
                       macs_before=self.costs.before.macs, macs_after=cost.macs,
                       filters_removed=sum(removed.values()), latency_ms_after=None)
        key = _plan_key(plan)
        if self.onnxruntime_latency:  # a plan seen before shows its ONNX Runtime numbers at once
            ort = self._ort_ms.get(key) or (numbers.get("ort_latency_ms_before"), None)
            if not removed:
                ort = (ort[0], ort[0])
            if ort[0] is None and not removed:  # nothing timed yet and nothing to time: no row
                numbers.pop("ort_latency_ms_before", None)
                numbers.pop("ort_latency_ms_after", None)
            else:
                numbers.update(ort_latency_ms_before=ort[0], ort_latency_ms_after=ort[1])
        self.preview = numbers
        self.heatmap.mark(self.plan_channels)
        if not removed:
            self._previewed = (dict(self.counts), self.model)
            self._show_coupling()
            self.preview = {**self.preview, "latency_ms_after": self.preview.get("latency_ms_before")}
            return
        self._show_coupling()
        self._bg.submit("latency", self._measure_latency, plan, dict(self.counts), key, latest_only=True)

    @observe("preview")
    def _show_preview(self, change) -> None:
        self.preview_box.show(change["new"])

    @observe("applied")
    def _show_applied(self, change) -> None:
        self.preview_box.show_applied(change["new"])

    @observe("coupling")
    def _coupling_changed(self, change) -> None:
        self.coupling_view.show(change["new"])

    def _measure_base_latency(self, model, x) -> None:
        with MODEL_LOCK:
            ms = latency(model, x, warmup=5, repeats=7)
        self.preview = {**self.preview, "latency_ms_before": ms,
                        **({"latency_ms_after": ms} if not self.counts else {})}

    def _measure_latency(self, plan: PrunePlan, counts: dict[str, int], key: tuple) -> None:
        """Prune for the plan (the coupling view's shapes after come from this model), then time the base
        model and the pruned one in alternation, so both numbers see the same machine load."""
        model = self.model
        with MODEL_LOCK:
            pruned = prune(model, plan, self.x, graph=self.graph)
        if model is self.model:
            self._surgery = (key, pruned)
        if counts != self.counts:
            return
        self._previewed = (counts, pruned)
        self._show_coupling()
        with MODEL_LOCK:
            before, after = paired_latency_ms([self.model, pruned], self.x, warmup=3, repeats=7)
        if counts == self.counts:
            self.preview = {**self.preview, "latency_ms_before": before, "latency_ms_after": after}
        if self.onnxruntime_latency and key not in self._ort_ms:
            self._bg.submit("ort-latency", self._measure_ort_latency, pruned, counts, key, latest_only=True)

    def _measure_ort_latency(self, pruned: nn.Module, counts: dict[str, int], key: tuple) -> None:
        """ONNX Runtime CPU ms of the base model and the plan's pruned one, timed in turn; cached per plan.
        Each export takes seconds, so a plan the sliders have left is dropped between the steps."""
        model, x = self.model, self.x
        with MODEL_LOCK:
            if counts != self.counts:
                return
            base = self._ort_base_file(model, x)
            if counts != self.counts or model is not self.model:
                return
            before, after = onnxruntime_latency_ms([base, pruned], x, warmup=3, repeats=7)
        if model is not self.model:
            return
        self._ort_ms[key] = (before, after)
        if counts == self.counts:
            self.preview = {**self.preview, "ort_latency_ms_before": before, "ort_latency_ms_after": after}

    def _ort_base_file(self, model: nn.Module, x: Any) -> Path:
        """The base model as a fixed-batch .onnx in the panel's temp folder, exported once per base model."""
        if self._ort_base is not None and self._ort_base[0] is model:
            return self._ort_base[1]
        if self._ort_dir is None:
            self._ort_dir = tempfile.mkdtemp(prefix="prune-explorer-ort-")
        path = Path(self._ort_dir) / f"base-{id(model):x}.onnx"
        export_model(model, path, example_inputs=x, dynamic_batch=False)
        if self._ort_base is not None:
            self._ort_base[1].unlink(missing_ok=True)
        self._ort_base = (model, path)
        return path

    # --- selection and coupling ----------------------------------------------------------------
    def select_layer(self, layer: str | None) -> None:
        """Select a layer (a heatmap row click or a table name click): highlighted in both, its
        channel group's members shown in the coupling view."""
        if layer is not None and layer not in self.table_editor.rows:
            self.error = f"layer {layer!r} is not a prunable group of this model"
            return
        self.selected_layer = layer
        self.heatmap.select(layer)
        self.table_editor.select(layer)
        self._show_coupling()

    def _show_coupling(self) -> None:
        layer = self.selected_layer
        if layer is None or not hasattr(self, "graph"):
            self.coupling = {}
            return
        group = self.graph.group(layer)
        found = members(self.model, group)
        previewed = self._previewed
        after = None
        if previewed is not None and previewed[0] == self.counts:
            after = shapes_after(previewed[1], [m.module for m in found])
        removed = int(self.counts.get(layer, 0))
        self.coupling = describe(group, found, after, removed)

    @observe("criterion")
    def _criterion_changed(self, change) -> None:
        if getattr(self, "_quiet_criterion", True) or not hasattr(self, "table"):
            return
        self._bg.submit("rank", self._rerank, change["new"], latest_only=True)

    @observe("normalization")
    def _normalization_changed(self, change) -> None:
        if hasattr(self, "table"):
            self._bg.submit("rank", self._rerank, self.criterion, latest_only=True)

    def _normalize(self) -> str | None:
        return None if self.normalization == "auto" else self.normalization

    def _rerank(self, criterion: str) -> None:
        if self.trial is None and criterion not in WEIGHT_CRITERIA:
            self.error = f"criterion {criterion!r} needs a trial (captured activations and gradients); none is open"
            return
        self.busy, self.status = True, f"ranking by {criterion}…"
        try:
            with MODEL_LOCK:
                table = rank(self.model, self.x, trial=self.trial, criterion=criterion, graph=self.graph,
                             normalize=self._normalize())
            counts = dict(self.counts)
            self.table = table
            self.heatmap.show(table, [g.name for g in self.graph.prunable()])
            self.counts = {}
            self.counts = counts
            self.error = ""
            self.status = f"{len(table)} filters ranked by {criterion} ({table['normalization'].iloc[0]})" \
                if len(table) else f"no filters ranked by {criterion}"
        finally:
            self.busy = False

    # --- sensitivity ---------------------------------------------------------------------------
    def compute_sensitivity(self, layer: str | None = None) -> None:
        """Accuracy vs fraction cut of one layer (or every layer) alone, on a small validation subset."""
        layers = [layer] if layer else list(self.table_editor.rows)
        for name in layers:
            self._bg.submit("sensitivity", self._sensitivity_of, name, self.model, self.x, self.graph, self.table)

    def _sensitivity_of(self, layer, model, x, graph, table) -> None:
        images, labels = self._validation_set()
        with MODEL_LOCK:
            points = sensitivity_curve(model, x, graph, table, layer, images, labels)
        if model is not self.model:
            return
        self.sensitivity = {**self.sensitivity, layer: points}
        self.table_editor.set_sensitivity(layer, points)

    def _validation_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._validation is None:
            self._validation = _validation_tensors(self._validation_source, self.train_args)
        return self._validation

    # --- apply / queue -------------------------------------------------------------------------
    def apply(self) -> nn.Module:
        """Run the surgery for the current plan and save the smaller model as a workspace iteration
        (reserved by the workspace; applying again before queueing replaces it)."""
        plan = self.plan()
        removed = plan.resolve(self.graph)
        if not removed:
            raise ValueError("the plan cuts no filters: move a layer's slider or fill the lowest N first")
        surgery = self._surgery
        if surgery is not None and surgery[0] == _plan_key(plan):
            pruned = surgery[1]  # the preview already ran this plan's surgery (and the model lock may be busy)
        else:
            with MODEL_LOCK:
                pruned = prune(self.model, plan, self.x, graph=self.graph)
        workspace = self.workspace or Workspace(Path.cwd() / "workspace")
        iteration = self._pending["iteration"] if self._pending else workspace.reserve_iteration()
        model_dir = workspace.save_pruned(iteration, pruned, plan, parent=self.base_iteration, criterion=self.criterion)
        before = {g.name: g.size for g in self.graph.groups}
        widths = {self.graph.groups[gid].name: (before[self.graph.groups[gid].name],
                                                self.graph.groups[gid].size - len(ix)) for gid, ix in removed.items()}
        self.pruned_model = pruned
        self._pending = {"iteration": iteration, "plan": plan.summary()}
        params_after = sum(p.numel() for p in pruned.parameters())
        self.applied = {"iteration": iteration, "model_dir": str(model_dir),
                        "filters_removed": sum(len(ix) for ix in removed.values()), "widths": widths,
                        "params_before": self.costs.before.params, "params_after": params_after}
        self.status = f"applied: {iteration} saved, {self.applied['filters_removed']} filters removed"
        return pruned

    def hyperparameters(self) -> dict[str, Any]:
        """The queued job's training arguments: the inherited recipe, the panel's controls, its teacher."""
        args = {k: v for k, v in self.train_args.items() if k != "distill"}
        if self.distill != "none":  # Workspace.submit turns it into the job's --teacher
            args["distill"] = self.distill
        else:
            args = {k: v for k, v in args.items() if k not in ("distill_alpha", "distill_temperature")}
        return {**args, "epochs": self.epochs.value, "lr": self.lr.value, "batch_size": self.batch_size.value}

    def training_script(self) -> dict[str, str | None]:
        """The script fields as `JobQueue.submit` takes them (empty fields: prune_explorer.jobs.train)."""
        return {"entry_point": self.entry_point.value.strip() or None,
                "source_dir": self.source_dir.value.strip() or None}

    def queue_finetune(self):
        """Send the applied model to the chosen backend (applying the current plan first if needed)."""
        if self.queue is None:
            raise ValueError("no workspace: open the Explorer with workspace=... to queue fine-tuning jobs")
        if self._pending is None:
            self.apply()
        pending = self._pending
        job = self.workspace.submit(self.queue, pending["iteration"], parent=self.base_iteration, plan=pending["plan"],
                                    criterion=self.criterion, hyperparameters=self.hyperparameters(),
                                    **self.training_script())
        self._pending = None
        self.last_job = job.id
        self.status = f"queued {job.id} on {job.backend} → {job.iteration}"
        self.refresh()
        return job

    # --- export --------------------------------------------------------------------------------
    def export(self, fmt: str | None = None):
        """Export the applied model (else the base) to WORKSPACE/exports/<iteration>.<fmt> on the
        "export" worker (the dynamo exporter takes seconds); `exported` and the export line show the file."""
        fmt = fmt or self.export_format.value
        if self.pruned_model is not None and self.applied:
            model, name = self.pruned_model, self.applied["iteration"]
        else:
            model, name = self.model, self.base_iteration or "base"
        path = (self.workspace or Workspace(Path.cwd() / "workspace")).export_path(name, fmt)
        self.exported = {}
        self._export_shows(f"⏳ exporting {name} as {fmt}…")
        return self._bg.submit("export", self._export, model, name, path, fmt, self.x)

    def _export(self, model: nn.Module, name: str, path: Path, fmt: str, x: Any) -> None:
        try:
            with MODEL_LOCK:
                result = export_model(model, path, format=fmt, example_inputs=x)
        except Exception as exc:
            self._export_shows(f"export of {name} failed: {_message(exc)}", failed=True)
            raise
        self.exported = {"iteration": name, **result.as_dict()}
        self._export_shows(f"exported {name}: <code class='pe-export-path' data-path='{html.escape(str(path))}'>"
                           f"{html.escape(str(path))}</code> ({result.bytes / 1e6:.1f} MB, {result.format} via "
                           f"{result.exporter}, max |file − PyTorch| {result.max_abs_diff:.1e})", escaped=True)

    def _export_shows(self, text: str, failed: bool = False, escaped: bool = False) -> None:
        body = text if escaped else html.escape(text)
        self.export_line.value = f"<div style='color:{'#b00020' if failed else 'inherit'}'>{body}</div>"

    def cancel(self, job_id: str) -> None:
        try:
            self.queue.cancel(job_id)
        except Exception as exc:
            self.error = f"cancel {job_id}: {_message(exc)}"
        self.refresh()

    # --- jobs and history ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read jobs and the tracked history into the jobs list and the scatter."""
        if self.queue is None:
            return
        with self._lock:
            history = self.tracker.history()
            self.history = history
            self.jobs_panel.show(self.queue.jobs(), self.tracker, self._run_ids())
            self.scatter.show(history, self.base_iteration)
            self.lineage.show(history, self.base_iteration)
            self.history_size = len(self.scatter.rows)

    def _run_ids(self) -> dict[str, str]:
        history = self.history
        if history is None or history.empty or "run_id" not in history:
            return {}
        return {str(i): str(r) for i, r in zip(history["iteration"], history["run_id"]) if isinstance(r, str) and r}

    def _poll(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                if self.queue is not None and any(not j.done for j in self.queue.jobs()):
                    self.jobs_panel.show(self.queue.jobs(), self.tracker, self._run_ids())
            except Exception as exc:
                self.error = f"jobs: {_message(exc)}"

    def compare(self, a: str | None, b: str | None) -> None:
        """Put two tracked iterations side by side: per-layer widths (their model.json), params, MACs, accuracy."""
        try:
            if not a or not b:
                raise ValueError("compare: pick two iterations")
            from ..model.store import load_spec

            specs = {}
            for name in dict.fromkeys([a, b]):
                if self.workspace is None or not self.workspace.has_model(name):
                    raise ValueError(f"compare: iteration {name!r} has no saved model in the workspace")
                specs[name] = load_spec(self.workspace.iteration_dir(name))
            self.compared = comparison(a, b, specs, self.history)
            self.lineage.show_comparison(self.compared)
        except (ValueError, FileNotFoundError) as exc:
            self.compared = {}
            self.lineage.show_comparison(None, _message(exc))

    def rebase(self, iteration: str) -> None:
        """Make a tracked iteration the base: load its model and trial and re-rank (in the background)."""
        self._bg.submit("rank", self._rebase, iteration)

    def _rebase(self, iteration: str) -> None:
        self.busy, self.status = True, f"loading {iteration}…"
        try:
            model, x, trial, args = self.workspace.open_iteration(iteration)
            self.train_args = {**args, **{k: v for k, v in self.train_args.items() if k not in args}} if args else self.train_args
            self.base_iteration = iteration
            self._load(model, trial, x)
            self.refresh()
            self.status = f"based on {iteration}: " + self.status
        finally:
            self.busy = False

    # --- housekeeping --------------------------------------------------------------------------
    def wait(self, timeout: float | None = 120) -> "Explorer":
        """Block until background work (ranking, latency, sensitivity, refresh) is done; for tests and scripts."""
        self._bg.wait(timeout)
        return self

    def close(self) -> None:
        self._closed.set()
        self._bg.shutdown()
        if self._ort_dir is not None:
            shutil.rmtree(self._ort_dir, ignore_errors=True)
        if self.queue is not None:
            self.queue.close()
        super().close()

    def _guarded(self, action) -> None:
        try:
            action()
            self.error = ""
        except Exception as exc:
            self.error = _message(exc)

    def _background_failed(self, kind: str, exc: BaseException) -> None:
        self.error = f"{kind}: {_message(exc)}"

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


def _plan_key(plan: PrunePlan) -> tuple:
    """A plan as a hashable key (its channels per layer): the ONNX Runtime cache's key."""
    return tuple(sorted((layer, tuple(ix)) for layer, ix in plan.channels.items() if len(ix)))


def _open(trial: Any, model: nn.Module, graph: ChannelGraph):
    from ..signals.trials import open_trial

    path = str(trial)
    if not path.startswith("s3://") and not Path(path).exists():
        raise FileNotFoundError(f"no such trial directory: {path}")
    return open_trial(path, model=model, graph=graph)


def _validation_tensors(source: Any, train_args: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return source[0][:VALIDATION_EXAMPLES], source[1][:VALIDATION_EXAMPLES]
    if source is None:
        if not train_args.get("dataset"):
            raise ValueError("sensitivity needs validation data: pass validation=(images, labels) or "
                             "train_args={'dataset': ...}")
        from ..jobs.data import load_dataset

        _, source, _, _ = load_dataset(train_args["dataset"], train_args.get("data_dir"),
                                       image_size=train_args.get("image_size"), val_subset=VALIDATION_EXAMPLES,
                                       subset=VALIDATION_EXAMPLES, download=False)
    n = min(len(source), VALIDATION_EXAMPLES)
    pairs = [source[i] for i in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])
