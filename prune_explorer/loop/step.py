"""One pruning step: rank → plan → prune → save → (cut accuracy) → submit, on an iteration of a workspace.

The loop runs it K times; the panel (and the session object behind it) runs its parts one at a
time — rank an iteration, plan a cut for a filter count or a MACs / latency target, prune, save,
queue — and builds its plan with the same `plan_cut`, so a plan in the panel is the plan the loop
would cut. The workspace only gives names, folders and writes; this module holds the ML stack.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..jobs.base import Job
from ..signals.ranking import WEIGHT_CRITERIA
from ..workspace import BASELINE, Iteration, Workspace
from ..workspace.layout import trial_dir

if TYPE_CHECKING:
    from ..jobs.queue import JobQueue
    from ..model.plan import PrunePlan

TARGET_UNITS = ("macs", "latency_ms", "latency_ratio")


@dataclass(frozen=True)
class Ranked:
    """An iteration's model ranked for the next cut."""

    model: Any
    example_inputs: Any
    graph: Any
    table: Any


@dataclass(frozen=True)
class StepTarget:
    """What one prune step cuts the parent down to, in `unit` ("macs", "latency_ms", or "latency_ratio":
    measured in `runtime`, relative to the parent): `fraction`
    of the parent's cost, or — towards an overall `final` value `steps` iterations away — the same
    ratio at every step, so the last one lands on it."""

    unit: str
    fraction: float | None = None
    final: float | None = None
    steps: int = 1
    runtime: str | None = None  # unit "latency_ratio": the runtime the cut is measured in (model/runtime_budget.py)

    def value(self, before: float) -> float:
        if self.final is None:
            return before * self.fraction
        return before * (self.final / before) ** (1.0 / max(self.steps, 1))


@dataclass(frozen=True)
class Step:
    """What one rank → plan → prune → save → submit step did; `job` is None when it stopped first (`reason`)."""

    name: str | None
    job: Job | None
    plan: Any
    params: int
    reason: str | None = None


def needs_trial(criterion: str | None, criterion_fn: Callable | None = None) -> bool:
    """Whether ranking by this criterion reads a trial (every criterion but the weight norms)."""
    return criterion_fn is not None or criterion not in WEIGHT_CRITERIA


def rank_iteration(workspace: Workspace, name: str, criterion: str = "taylor", criterion_fn: Callable | None = None,
                   capture: str = "compact", image_size: int | None = None, dataset: str | None = None,
                   normalization: str | None = None) -> Ranked:
    """Load an iteration's model, trace it and rank its filters (from its trial unless l1/l2);
    `normalization` as `rank`'s `normalize` (None: the criterion's own)."""
    from ..model import store
    from ..signals.ranking import rank
    from ..signals.trials import open_trial

    directory = workspace.iteration_dir(name)
    model = store.load(directory, trust_code=workspace.trust_code).eval()
    x = workspace.example_inputs(name, model, image_size=image_size, dataset=dataset)
    graph = workspace.trace(model, x)  # keeping the workspace's `outputs`
    trial = None
    if capture != "none" and needs_trial(criterion, criterion_fn):
        trial = open_trial(trial_dir(directory), model=model, example_inputs=x, graph=graph)
    table = rank(model, x, trial=trial, criterion=criterion_fn or criterion, graph=graph, normalize=normalization)
    return Ranked(model, x, graph, table)


def plan_cut(table: Any, graph: Any, *, scheme: str, n: int | None = None, target: StepTarget | None = None,
             costs: Any = None, latency: Any = None, round_to: int | None = None, model: Any = None,
             example_inputs: Any = None) -> "PrunePlan":
    """The plan of a step: the lowest `n` filters, or the lowest-ranked filters until `target` of the
    model's MACs, predicted latency (`latency`: a LatencyTable) or latency measured in a runtime
    ("latency_ratio": `model` and `example_inputs` cut and timed there) is left (`costs`: the model's
    CostModel); every touched group keeps a multiple of `round_to` channels. The one plan builder of
    the loop, the panel and the CLI."""
    from ..model.plan import PrunePlan

    if target is None:
        return PrunePlan.lowest(table, graph, n=n, scheme=scheme, round_to=round_to)
    if target.unit not in TARGET_UNITS:
        raise ValueError(f"target unit must be one of {TARGET_UNITS}, got {target.unit!r}")
    if costs is None:
        raise ValueError("a MACs or latency target needs the model's costs (model.costs.CostModel)")
    if target.unit == "macs":
        return PrunePlan.lowest(table, graph, scheme=scheme, costs=costs, round_to=round_to,
                                target_macs=target.value(costs.before.macs))
    if target.unit == "latency_ratio":  # measured in the deployment runtime, relative to the parent
        from ..model.runtime_budget import plan_to_latency

        if model is None or example_inputs is None:
            raise ValueError("a latency_ratio target needs the model and its example inputs (it times cuts)")
        return plan_to_latency(table, graph, model, example_inputs, target.value(1.0),
                               runtime=target.runtime or "onnxruntime", scheme=scheme, round_to=round_to, costs=costs)
    if latency is None:
        raise ValueError("a latency target needs a latency table (loop.step.latency_table())")
    return PrunePlan.lowest(table, graph, scheme=scheme, costs=costs, latency=latency, round_to=round_to,
                            target_latency_ms=target.value(latency.predict(costs)))


def latency_table(workspace: Workspace, image_size: int | None = None, dataset: str | None = None,
                  progress: bool = False):
    """The per-layer latency table of the workspace's baseline model (measured on first use on this
    machine, then read from the workspace's latency table file); it serves every iteration pruned from it."""
    from ..model import store
    from ..model.latency import LatencyTable

    path = workspace.latency_table_path
    if path.is_file():
        return LatencyTable.load(path)
    if not workspace.has_model(BASELINE):
        raise FileNotFoundError(f"{workspace.iteration_dir(BASELINE)}: a latency table is measured on the baseline, "
                                "which is not trained yet")
    model = store.load(workspace.iteration_dir(BASELINE), trust_code=workspace.trust_code).eval()
    x = workspace.example_inputs(BASELINE, model, image_size=image_size, dataset=dataset)
    table = LatencyTable.measure(model, x, workspace.trace(model, x), progress=progress)
    table.save(path)   # a temp file beside it, then a rename
    return table


def submit(workspace: Workspace, queue: "JobQueue", name: str, *, parent: str | None, plan: Any,
           criterion: str | None, hyperparameters: dict[str, Any], **submit_options: Any) -> Job:
    """Queue the fine-tuning of iteration `name`'s pruned model (saved by `Workspace.save_pruned`); its
    outputs land in the iteration's folder; a `distill` hyperparameter ("baseline" | "parent") becomes the
    job's `teacher` folder (`Workspace.teacher_dir`). Further keyword arguments go to `JobQueue.submit`."""
    pruned = workspace.pruned_dir(name)
    if not workspace.has_model(name, pruned=True):
        raise FileNotFoundError(f"{pruned}: no pruned model saved for {name} (apply a plan first)")
    if hyperparameters.get("distill") is not None:  # the teacher's folder, for this job
        hyperparameters = {**hyperparameters, "teacher": str(workspace.teacher_dir(hyperparameters["distill"], parent))}
    return queue.submit(pruned, out_dir=workspace.iteration_dir(name), parent=parent, plan=plan, criterion=criterion,
                        hyperparameters=hyperparameters, iteration=name, **submit_options)


def prune_step(workspace: Workspace, queue: "JobQueue", parent: Iteration, *, criterion: str, per_iteration: int,
               scheme: str, hyperparameters: dict[str, Any], min_params: int = 0,
               criterion_fn: Callable | None = None, capture: str = "compact",
               image_size: int | None = None, dataset: str | None = None, normalization: str | None = None,
               target: StepTarget | None = None, latency: Any = None, round_to: int | None = None,
               **submit_options: Any) -> Step:
    """Rank `parent`, plan its lowest `per_iteration` filters — or, with `target`, as many as bring it
    to the target's MACs or latency (`latency`: a LatencyTable; unit "latency_ratio": measured in the
    target's runtime), every touched group keeping a multiple of `round_to` — prune, and, unless nothing is left
    to cut, the target cannot be reached or the result falls below `min_params` (then nothing is
    written), save, measure the accuracy right after the cut (`cut.record_cut`) and submit."""
    from ..model.costs import CostModel
    from ..model.measure import count
    from ..model.surgery import prune
    from .cut import record_cut

    ranked = rank_iteration(workspace, parent.name, criterion, criterion_fn, capture, image_size, dataset,
                            normalization)
    costs = CostModel(ranked.model, ranked.example_inputs, ranked.graph) if target is not None else None
    try:
        plan = plan_cut(ranked.table, ranked.graph, scheme=scheme, n=per_iteration, target=target, costs=costs,
                        latency=latency, round_to=round_to, model=ranked.model, example_inputs=ranked.example_inputs)
    except ValueError as exc:
        if target is None:
            raise
        return Step(None, None, None, 0, f"pruning {parent.name}: {exc}")
    if len(plan) == 0:
        why = "at the target already" if target is not None else "every group at its minimum"
        return Step(None, None, None, 0, f"nothing left to prune in {parent.name} ({why})")
    pruned = prune(ranked.model, plan, ranked.example_inputs, graph=ranked.graph)
    params = int(count(pruned, ranked.example_inputs).params)
    if params < min_params:
        return Step(None, None, plan, params, f"pruning {parent.name} further would leave {params:,} params, "
                                              f"below the floor of {min_params:,}")
    name = workspace.reserve_iteration()
    try:
        workspace.save_pruned(name, pruned, plan, parent=parent.name, criterion=criterion)
    except BaseException:  # e.g. a full disk: the save left nothing, and the reserved name goes too
        shutil.rmtree(workspace.iteration_dir(name), ignore_errors=True)
        raise
    record_cut(workspace, name, pruned, hyperparameters)  # the accuracy right after the cut, for the tracker
    job = submit(workspace, queue, name, parent=parent.name, plan=plan, criterion=criterion,
                 hyperparameters=hyperparameters, **submit_options)
    return Step(name, job, plan, params)
