"""`PruningSession`: one base model ranked for the next cut, and what can be done with it.

It holds the model, its channel graph, the rank table, the cost model and (measured on first use)
a latency table; it plans (per layer counts, or for a filter count, a MACs or a latency target
through the loop step's `plan_cut`, the one plan builder), previews (params and MACs at once, latency by surgery),
prunes (the last plan's surgery kept, so Apply never runs it twice), applies into an iteration the
workspace reserves, evaluates the cut on a fixed validation slice, queues the fine-tune, exports,
and reads the tracked history. Methods are synchronous; the panel runs the slow ones on its workers.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..loop import cut, step
from ..loop.step import StepTarget, plan_cut
from ..model.costs import CostModel
from ..model.graph import ChannelGraph
from ..model.plan import PrunePlan
from ..model.surgery import prune
from ..signals.ranking import WEIGHT_CRITERIA, rank
from ..workspace import BASELINE, Workspace, view
from ..workspace.layout import export_name
from .messages import message
from .sensitivity import sensitivity_curve

# torch.fx tracing patches nn.Module.__call__ process-wide, so a forward pass on another thread
# (latency, sensitivity, evaluation) during a trace corrupts the trace. Every model-running call holds this.
MODEL_LOCK = threading.RLock()
SENSITIVITY_EXAMPLES = 256


@dataclass(frozen=True)
class Applied:
    """What one Apply saved: the iteration it reserved, where, and how the widths changed."""

    iteration: str
    model_dir: str
    filters_removed: int
    widths: dict[str, tuple[int, int]]
    params_before: int
    params_after: int
    macs_after: int
    plan: PrunePlan = field(repr=False, compare=False)
    model: nn.Module = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("plan", "model")}


def plan_key(plan: PrunePlan) -> tuple:
    """A plan as a hashable key (its channels per layer): the caches' key."""
    return tuple(sorted((str(layer), tuple(ix)) for layer, ix in plan.channels.items() if len(ix)))


class PruningSession:
    """`PruningSession(model, example_inputs, trial=..., workspace=...)` or `PruningSession.open(workspace, iteration)`.

    A trial that cannot be read, or a criterion that needs one when there is none, ranks by l1
    weight norms instead; `problem` says why (the panel shows it). `graph`: the model's channel graph
    when already traced (a trial's), else traced here keeping `outputs` (default: the workspace's).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, trial: Any = None, criterion: str = "taylor",
                 normalization: str | None = None, workspace: str | Path | Workspace | None = None,
                 iteration: str | None = None, train_args: dict[str, Any] | None = None, validation: Any = None,
                 script: dict[str, str | None] | None = None, queue: Any = None, tracker: Any = None,
                 graph: Any = None, outputs: Any = None):
        if example_inputs is None:
            raise ValueError("a pruning session needs example_inputs (e.g. torch.zeros(1, 3, 32, 32)) to trace the model")
        self.workspace = workspace if isinstance(workspace, Workspace) or workspace is None else Workspace(workspace)
        self.iteration = iteration
        self.train_args = dict(train_args or {})
        self.script = dict(script or {"entry_point": None, "source_dir": None})
        self.queue, self.tracker = queue, tracker
        self._validation_source = validation
        self._validation: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.model, self.x = model.eval(), example_inputs
        self.asked = {"criterion": criterion, "normalization": normalization}  # before any fallback
        with MODEL_LOCK:
            if graph is None:  # the outputs kept: given, else the workspace's (model/graph/outputs.py)
                outputs = outputs if outputs is not None else getattr(self.workspace, "outputs", None)
                graph = ChannelGraph.trace(model, example_inputs, outputs=outputs)
            self.graph = graph
            self.trial, self.problem = self._open_trial(trial)
            self.costs = CostModel(model, example_inputs, self.graph)
        if self.trial is None and criterion not in WEIGHT_CRITERIA:
            self.problem = (self.problem or f"criterion {criterion!r} needs a trial; none was given") + \
                "; ranking by l1 weight norms instead"
            criterion = "l1"
        self._cuts_of, self._cuts, self._rows_of = None, {}, {}  # per-layer plans of one rank table
        self._surgery: tuple[tuple, nn.Module] | None = None      # the last plan's pruned model
        self._latency_table = None
        self._ort: dict[tuple, tuple[float, float]] = {}           # plan key -> ONNX Runtime (before, after) ms
        self._ort_base: tuple[Path, str] | None = None
        self.pending: Applied | None = None                        # applied, not yet queued
        self.last_applied: Applied | None = None                   # what Export ships (queued or not)
        self.criterion, self.normalization = criterion, normalization
        self.table = self._ranked(criterion, normalization)
        self._index(self.table)

    @classmethod
    def open(cls, workspace: str | Path | Workspace, iteration: str = "latest", **kwargs: Any) -> "PruningSession":
        """A session on an iteration of the workspace ("latest": the newest completed one, as the panel
        opens): its saved model, trial, fine-tuning recipe and the training script of the job that made it.
        Ranked as the panel and a continued run rank it: by the criterion its lineage records, else the
        default recipe's."""
        from ..default_recipe import DEFAULT_RECIPE
        from ..loop.recorded_recipe import ranking

        space = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        iteration = space.start_point(iteration).name if iteration == "latest" else iteration
        kwargs.update(ranking(space, iteration, kwargs))
        if not kwargs.get("criterion"):
            kwargs["criterion"] = DEFAULT_RECIPE["criterion"]
        model, x, trial, args = space.open_iteration(iteration)
        kwargs.setdefault("train_args", args)
        kwargs.setdefault("script", space.training_script(iteration))
        return cls(model, x, trial=trial, workspace=space, iteration=iteration, **kwargs)

    def rebase(self, iteration: str) -> "PruningSession":
        """A session on another iteration of the same workspace, keeping this one's criterion,
        normalisation, queue and tracker (its recipe first, then this session's other arguments)."""
        if self.workspace is None:
            raise ValueError("rebase: this session has no workspace to open an iteration from")
        args = self.workspace.fine_tune_recipe(iteration)
        train_args = {**args, **{k: v for k, v in self.train_args.items() if k not in args}} if args else self.train_args
        return PruningSession.open(self.workspace, iteration, criterion=self.criterion,
                                   normalization=self.normalization, train_args=train_args,
                                   validation=self._validation_source, queue=self.queue, tracker=self.tracker)

    def _open_trial(self, trial: Any) -> tuple[Any, str]:
        if trial is None or hasattr(trial, "group_stats"):
            return trial, ""
        try:
            from ..signals.trials import open_trial

            path = str(trial)
            if not path.startswith("s3://") and not Path(path).exists():
                raise FileNotFoundError(f"no such trial directory: {path}")
            return open_trial(path, model=self.model, graph=self.graph), ""
        except Exception as exc:  # any reader failure is a message, and weight ranks instead
            return None, f"trial {trial}: {message(exc)}"

    # --- ranks -----------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """The prunable groups' names, in graph order (the heatmap's rows, the table's rows)."""
        return [g.name for g in self.graph.prunable()]

    def rank(self, criterion: str | None = None, normalization: str | None = "keep"):
        """Re-rank by `criterion` and `normalization` (None: the criterion's own; "keep": as now)."""
        criterion = criterion or self.criterion
        normalization = self.normalization if normalization == "keep" else normalization
        if self.trial is None and criterion not in WEIGHT_CRITERIA:
            raise ValueError(f"criterion {criterion!r} needs a trial (captured activations and gradients); none is open")
        table = self._ranked(criterion, normalization)
        self._index(table)
        self.table, self.criterion, self.normalization = table, criterion, normalization
        return table

    def _ranked(self, criterion: str, normalization: str | None):
        with MODEL_LOCK:
            return rank(self.model, self.x, trial=self.trial, criterion=criterion, graph=self.graph,
                        normalize=normalization)

    # --- plans -----------------------------------------------------------------------------------
    def plan(self, counts: dict[str, int], round_to: int | None = None) -> PrunePlan:
        """`PrunePlan.from_counts(table, graph, counts, round_to=)`, asked one layer at a time and cached:
        each layer's cut depends only on its own rows, so a slider move re-plans one layer, not the model."""
        table = self.table
        channels = {}
        for layer, k in counts.items():
            picked = self._layer_cut(table, layer, int(k), round_to if round_to and round_to > 1 else None)
            if picked:
                channels[layer] = picked
        return PrunePlan(channels, layers=counts)

    def _layer_cut(self, table, layer: str, k: int, round_to: int | None = None) -> list[int]:
        """`from_counts`'s cut of one layer: its k lowest filters (from each group's order, sorted once per
        table, so a slider move costs a slice); grouped-conv blocks, rounding and refusals go through from_counts."""
        if self._cuts_of is not table:
            self._index(table)
        key = (layer, k, round_to)
        if key not in self._cuts:
            group = self.graph.group(layer)
            order = self._order.get(group.id)
            if round_to is None and 0 < k < group.size and not group.blocks and order is not None and len(order) >= k:
                self._cuts[key] = sorted(int(f) for f in order[:k])
            else:
                rows = self._rows_of.get(group.id, table.iloc[:0])
                self._cuts[key] = PrunePlan.from_counts(rows, self.graph, {layer: k},
                                                        round_to=round_to).channels.get(layer, [])
        return self._cuts[key]

    def _index(self, table) -> None:
        """Each group's rows and filter order of `table` (once per table: at open and after a re-rank)."""
        PrunePlan.from_counts(table, self.graph, {})  # checks the table against the graph
        ordered = table.sort_values(["normalized", "group", "filter"], kind="stable")
        rows_of = {int(g): rows for g, rows in table.groupby("group", sort=False)}
        order = {int(g): f.to_numpy() for g, f in ordered.groupby("group", sort=False)["filter"]}
        self._rows_of, self._order, self._cuts, self._cuts_of = rows_of, order, {}, table

    def plan_for(self, *, filters: int | None = None, macs: float | None = None, latency: float | None = None,
                 scheme: str = "internal", round_to: int | None = None, runtime: str | None = None) -> PrunePlan:
        """The plan the loop's step would cut (`loop.step.plan_cut`): the lowest `filters`, or the
        lowest-ranked filters until the fraction `macs` of the MACs or `latency` of the latency is left —
        predicted by the latency table, or with a `runtime` other than "pytorch" measured there on cut
        models; every touched group keeps a multiple of `round_to` channels."""
        given = [name for name, value in (("filters", filters), ("macs", macs), ("latency", latency))
                 if value is not None]
        if len(given) != 1:
            raise ValueError(f"plan_for: give one of filters, macs or latency, got {given or 'none'}")
        round_to = round_to if round_to and round_to > 1 else None
        if filters is not None:
            return plan_cut(self.table, self.graph, scheme=scheme, n=int(filters), round_to=round_to)
        measured = latency is not None and runtime not in (None, "pytorch")
        target = (StepTarget("macs", fraction=macs) if macs is not None else
                  StepTarget("latency_ratio", fraction=latency, runtime=runtime) if measured else
                  StepTarget("latency_ms", fraction=latency))
        with MODEL_LOCK if measured else contextlib.nullcontext():  # a measured fill runs the model
            return plan_cut(self.table, self.graph, scheme=scheme, target=target, costs=self.costs, round_to=round_to,
                            latency=self.latency_table() if target.unit == "latency_ms" else None,
                            model=self.model, example_inputs=self.x)

    def latency_table(self):
        """The per-layer latency table a latency target plans with: for an iteration of a workspace the
        workspace's (measured once on its baseline, the loop's too), else measured on this model once."""
        if self._latency_table is None:
            from ..model.latency import LatencyTable

            with MODEL_LOCK:
                if self.iteration is not None and self.workspace is not None and self.workspace.has_model(BASELINE):
                    self._latency_table = step.latency_table(self.workspace)
                else:
                    self._latency_table = LatencyTable.measure(self.model, self.x, self.graph, self.costs)
        return self._latency_table

    @property
    def has_latency_table(self) -> bool:
        return self._latency_table is not None

    def preview(self, plan: PrunePlan) -> dict[str, Any]:
        """Params and MACs before and after `plan` (from widths, no surgery) and the filters it cuts;
        ValueError naming the layer for a plan the graph refuses."""
        removed = {gid: len(ix) for gid, ix in plan.resolve(self.graph).items()}
        after = self.costs.cost(removed)
        return {"params_before": self.costs.before.params, "params_after": after.params,
                "macs_before": self.costs.before.macs, "macs_after": after.macs,
                "filters_removed": sum(removed.values())}

    # --- surgery and latency -----------------------------------------------------------------
    def pruned(self, plan: PrunePlan) -> nn.Module:
        """The pruned model of `plan` (the last plan's surgery is kept and reused)."""
        key, done = plan_key(plan), self._surgery
        if done is not None and done[0] == key:
            return done[1]
        with MODEL_LOCK:  # a worker may be pruning this very plan: wait for it rather than prune twice
            done = self._surgery
            if done is not None and done[0] == key:
                return done[1]
            model = prune(self.model, plan, self.x, graph=self.graph) if key else self.model
            self._surgery = (key, model)
        return model

    def surgery_of(self, plan: PrunePlan) -> nn.Module | None:
        """The kept pruned model when it is `plan`'s, else None (no surgery run)."""
        done = self._surgery
        return done[1] if done is not None and done[0] == plan_key(plan) else None

    def base_latency(self) -> float:
        from ..model.measure import median_latency_ms

        with MODEL_LOCK:
            return median_latency_ms(self.model, self.x, warmup=5, repeats=7)

    def latency(self, pruned: nn.Module, wanted: Callable[[], bool] = lambda: True,
                repeats: int = 7) -> tuple[float, float] | None:
        """PyTorch CPU ms of the base model and `pruned`: medians of `repeats` rounds, each timing both in
        turn (they see the same load). The lock is let go between rounds, so Apply's evaluation never
        waits a whole measurement; None once `wanted()` turns false (the sliders moved on)."""
        import statistics

        from ..model.measure import paired_latency_ms

        rounds = []
        for i in range(repeats):
            if not wanted():
                return None
            with MODEL_LOCK:
                rounds.append(paired_latency_ms([self.model, pruned], self.x, warmup=3 if i == 0 else 0, repeats=1))
        return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)

    def onnxruntime_latency(self, plan: PrunePlan, pruned: nn.Module,
                            wanted: Callable[[], bool] = lambda: True) -> tuple[float, float] | None:
        """ONNX Runtime CPU ms of the base model and `pruned`, timed in turn and cached per plan; the
        base is exported once into a temp folder, the pruned module in memory. None when `wanted()`
        turned false between the steps (each export takes seconds)."""
        from ..model.export import onnxruntime_latency_ms

        key = plan_key(plan)
        if key in self._ort:
            return self._ort[key]
        with MODEL_LOCK:
            if not wanted():
                return None
            base = self._ort_base_file()
            if not wanted():
                return None
            self._ort[key] = tuple(onnxruntime_latency_ms([base, pruned], self.x, warmup=3, repeats=7))
        return self._ort[key]

    def cached_onnxruntime_latency(self, plan: PrunePlan) -> tuple[float, float] | None:
        return self._ort.get(plan_key(plan))

    def _ort_base_file(self) -> Path:
        from ..model.export import export_model

        if self._ort_base is None:
            folder = tempfile.mkdtemp(prefix="prune-explorer-ort-")
            path = Path(folder) / "base.onnx"
            export_model(self.model, path, example_inputs=self.x, dynamic_batch=False)
            self._ort_base = (path, folder)
        return self._ort_base[0]

    # --- apply, evaluate, queue ------------------------------------------------------------------
    def apply(self, plan: PrunePlan) -> Applied:
        """Prune for `plan` and save the smaller model as the job input of an iteration the workspace
        reserves (applying again before queueing replaces it)."""
        removed = plan.resolve(self.graph)
        if not removed:
            raise ValueError("the plan cuts no filters: move a layer's slider or fill the lowest N first")
        if self.workspace is None:
            raise ValueError("no workspace: open with workspace=... to apply (the pruned model is saved as an "
                             "iteration of it)")
        model = self.pruned(plan)
        iteration = self.pending.iteration if self.pending else self.workspace.reserve_iteration()
        with MODEL_LOCK:  # saving builds the base on "meta": never beside a worker's torch.export (fake tensors)
            model_dir = self.workspace.save_pruned(iteration, model, plan, parent=self.iteration,
                                                   criterion=self.criterion)
        groups = self.graph.groups
        widths = {groups[gid].name: (groups[gid].size, groups[gid].size - len(ix)) for gid, ix in removed.items()}
        after = self.costs.cost({gid: len(ix) for gid, ix in removed.items()})
        self.pending = Applied(iteration, str(model_dir), sum(len(ix) for ix in removed.values()), widths,
                               self.costs.before.params, sum(p.numel() for p in model.parameters()), after.macs,
                               plan, model)
        self.last_applied = self.pending
        return self.pending

    def validation(self, n: int = cut.CUT_EXAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed validation slice (the first `n` images the fine-tune validates on, fed as it feeds
        them), or the `validation=(images, labels)` this session was given."""
        if n not in self._validation:
            source = self._validation_source
            if isinstance(source, (tuple, list)) and len(source) == 2:
                self._validation[n] = (source[0][:n], source[1][:n])
            else:
                self._validation[n] = cut.validation_slice(self.train_args, n, self.model).tensors
        return self._validation[n]

    def evaluate_cut(self, applied: Applied) -> dict[str, Any]:
        """The applied model's accuracy right after the cut (no fine-tuning) on the validation slice,
        recorded in its iteration (the tracker reads it when the fine-tune lands)."""
        images, labels = self.validation()
        with MODEL_LOCK:
            record = cut.measured(applied.model, images, labels,
                                  cut.describe(self.train_args, len(labels), self._validation_source is not None))
        if self.pending is applied:  # not replaced meanwhile by a newer Apply
            self.workspace.write_cut_accuracy(applied.iteration, **record)
        return record

    def submit(self, hyperparameters: dict[str, Any], entry_point: str | None = None,
               source_dir: str | None = None):
        """Queue the fine-tune of the applied model (`apply` first) on the session's queue."""
        if self.queue is None:
            raise ValueError("no job queue: open with a workspace (and open_jobs) to queue fine-tuning jobs")
        if self.pending is None:
            raise ValueError("nothing applied to fine-tune: apply a plan first")
        pending = self.pending
        job = step.submit(self.workspace, self.queue, pending.iteration, parent=self.iteration,
                          plan=pending.plan.summary(), criterion=self.criterion, hyperparameters=hyperparameters,
                          entry_point=entry_point, source_dir=source_dir)
        self.pending = None
        return job

    def open_jobs(self, backend: Any = "local", tracker: Any = "mlflow", **queue_options: Any) -> None:
        """The tracker and the job queue of the session's workspace (MLflow & co. load here, not at open);
        `queue_options` go to `Workspace.queue` (e.g. `scripts`: where user training scripts may come from)."""
        if self.workspace is None:
            raise ValueError("no workspace: jobs and history live in a workspace")
        from ..tracking import make_tracker

        self._queue_options = queue_options
        if self.tracker is None:
            self.tracker = make_tracker(tracker, self.workspace.root)
        if self.queue is None:
            self.queue = self.workspace.queue(backend, self.tracker, **queue_options)

    def use_backend(self, backend: Any):
        """Send later jobs to `backend` (a new queue over the same job records)."""
        old, self.queue = self.queue, self.workspace.queue(backend, self.tracker,
                                                           **getattr(self, "_queue_options", {}))
        if old is not None:
            old.close()
        return self.queue

    def history(self):
        """The tracked history (one row per iteration), also kept as the workspace's history view."""
        history = self.tracker.history()
        view.write_history(self.workspace, history)
        return history

    # --- the first view ----------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """What the panel draws, JSON-able (`workspace.view.build` on this session's graph, costs and ranks)."""
        return view.build(self.graph, self.costs, self.table, asked=self.asked, criterion=self.criterion,
                          normalization=self.normalization, problem=self.problem, example_inputs=self.x)

    def write_view(self) -> None:
        """Keep this iteration's first view in the workspace (only for a session opened on an iteration)."""
        if self.workspace is not None and self.iteration is not None and self.workspace.has_model(self.iteration):
            view.write_view(self.workspace, self.iteration, self.view())

    # --- export, sensitivity, compare ------------------------------------------------------------
    def export(self, fmt: str):
        """Export the applied model to WORKSPACE/exports/<iteration>-pruned.<fmt> (else the base, to
        <iteration>.<fmt>) → ExportResult."""
        from ..model.export import export_model

        model, _, name = self.export_source()
        path = self._require_workspace("export").export_path(name, fmt)
        with MODEL_LOCK:
            return export_model(model, path, format=fmt, example_inputs=self.x)

    def export_source(self) -> tuple[nn.Module, str, str]:
        """What Export ships, its iteration and its file's name: the applied model (not fine-tuned: named
        `<iteration>-pruned`), else the base model."""
        if self.last_applied is not None:
            iteration = self.last_applied.iteration
            return self.last_applied.model, iteration, export_name(iteration, pruned=True)
        iteration = self.iteration or "base"
        return self.model, iteration, export_name(iteration)

    def sensitivity(self, layer: str) -> list[tuple[float, float]]:
        """Accuracy vs fraction cut of `layer` alone (no fine-tuning) on the first validation images."""
        images, labels = self.validation(SENSITIVITY_EXAMPLES)
        with MODEL_LOCK:
            return sensitivity_curve(self.model, self.x, self.graph, self.table, layer, images, labels)

    def compare(self, a: str | None, b: str | None, history=None) -> dict[str, Any]:
        """Two iterations side by side: per-layer widths (their model.json), params, MACs, accuracy."""
        from ..model.store import load_spec
        from .compare import comparison

        if not a or not b:
            raise ValueError("compare: pick two iterations")
        space = self._require_workspace("compare")
        specs = {}
        for name in dict.fromkeys([a, b]):
            if not space.has_model(name):
                raise ValueError(f"compare: iteration {name!r} has no saved model in the workspace")
            specs[name] = load_spec(space.iteration_dir(name))
        return comparison(a, b, specs, history)

    def _require_workspace(self, what: str) -> Workspace:
        if self.workspace is None:
            raise ValueError(f"{what}: no workspace (open with workspace=...)")
        return self.workspace

    def close(self, jobs: bool = True) -> None:
        """Remove the temp files; with `jobs`, close the job queue too (a rebased session shares it)."""
        if jobs and self.queue is not None:
            self.queue.close()
        if self._ort_base is not None:
            shutil.rmtree(self._ort_base[1], ignore_errors=True)
            self._ort_base = None
