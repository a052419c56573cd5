"""What the quality benchmarks (quality.py, transfer.py) share: the methods, one curve per method from
one shared baseline, the same-images re-evaluation with paired standard errors, each plan's per-layer
widths, and the report that ends in the goal's line.

A method is a function `run(config)` that trains its params-vs-accuracy curve into
`config.workspace` (a workspace holding a copy of the shared baseline), with `config.iterations`
steps of `config.per_iteration` filters (or, for the MACs-budget methods, equal steps that end at
GOAL_MACS_FRACTION of the baseline's MACs); register one with `@method("name")` and pass `--methods name,...`
to either benchmark (`default=False`: run only when named, so the default set stays the one the
recorded results used; `budget=True`: a MACs-budget method, whose curve ends at GOAL_MACS_FRACTION of the
baseline's MACs in as many steps as the reference took to get there). Curves are read back from the workspace's MLflow store,
so a benchmark continues an interrupted run and `--report` re-prints a finished one.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from prune_explorer.loop import LoopConfig, completed_iterations, job_hyperparameters, run_loop, submit
from prune_explorer.workspace import BASELINE, Workspace

Method = Callable[[LoopConfig], None]
METHODS: dict[str, Method] = {}  # name -> run(config), in the order the report prints them
DEFAULT_METHODS: list[str] = []  # what --methods runs when not given
BUDGET_METHODS: set[str] = set()  # the MACs-budget methods: their steps come from the reference's curve
REFERENCE = "taylor"  # its run trains the baseline every other method copies; the report's reference
GOAL_FRACTION = 1 / 3  # the goal's point: each method's first model at or below this share of the baseline's params
GOAL_MACS_FRACTION = 1 / 2  # issue 13's point: each method's first model at or below this share of the baseline's MACs
GOAL_DROP = 0.005  # issue 13's goal: within 0.5 point of the baseline ...
GOAL_SE = 2.0  # ... and ahead of per-layer Taylor and random by more than 2 standard errors


# The recipes issue 21 compares, as the LoopConfig settings that make them: the package's default recipe
# (`prune_explorer.default_recipe.DEFAULT_RECIPE`) must be one of these, and the report's last line is about it.
RECIPES: dict[str, dict] = {
    "taylor": dict(criterion="taylor", target_macs=None, target_scope="iteration", distill=None),
    "taylor-distill": dict(criterion="taylor", target_macs=None, target_scope="iteration", distill="baseline"),
    "taylor-global-macs": dict(criterion="taylor_global", target_macs=GOAL_MACS_FRACTION, target_scope="overall",
                               distill=None),
    "taylor-global-macs-distill": dict(criterion="taylor_global", target_macs=GOAL_MACS_FRACTION,
                                       target_scope="overall", distill="baseline"),
}


def default_recipe() -> str:
    """The benchmark method whose settings are the package's default recipe (`default_recipe.DEFAULT_RECIPE`)."""
    from prune_explorer.default_recipe import DEFAULT_RECIPE

    found = [name for name, settings in RECIPES.items() if settings == DEFAULT_RECIPE]
    if not found:
        raise SystemExit(f"the package's default recipe {DEFAULT_RECIPE} is none of the benchmark's {list(RECIPES)}")
    return found[0]


def method(name: str, default: bool = True, budget: bool = False) -> Callable[[Method], Method]:
    """Register `run(config)` as a benchmark method under `name` (in the default set unless `default=False`;
    `budget=True`: it cuts to a MACs target in `config.iterations` steps, see `run_curves`)."""
    def register(run: Method) -> Method:
        METHODS[name] = run
        if default:
            DEFAULT_METHODS.append(name)
        if budget:
            BUDGET_METHODS.add(name)
        return run
    return register


def random_scores(seed: int = 0):
    """A ranking criterion that scores every filter at random (from `seed`)."""
    rng = np.random.default_rng(seed)

    def random(group, model, trial) -> np.ndarray:
        return rng.random(group.size)

    return random


@method("taylor")
def _taylor(config: LoopConfig) -> None:
    run_loop(dataclasses.replace(config, criterion="taylor"))


@method("l1")
def _l1(config: LoopConfig) -> None:
    run_loop(dataclasses.replace(config, criterion="l1"))


@method("random")
def _random(config: LoopConfig) -> None:
    run_loop(dataclasses.replace(config, criterion="random"), criterion_fn=random_scores(config.seed))


@method("taylor-global", default=False)
def _taylor_global(config: LoopConfig) -> None:
    """Molchanov 2019: squared gate Taylor terms compared across layers without per-layer normalisation."""
    run_loop(dataclasses.replace(config, criterion="taylor_global"))


@method("taylor-flops", default=False)
def _taylor_flops(config: LoopConfig) -> None:
    """taylor_global per MAC one channel costs (the 2017 paper's FLOPs regulariser as a ratio)."""
    run_loop(dataclasses.replace(config, criterion="taylor_flops"))


@method("taylor-macs", default=False, budget=True)
def _taylor_macs(config: LoopConfig) -> None:
    """Today's Taylor (per-layer l2), cutting to GOAL_MACS_FRACTION of the baseline's MACs in equal steps."""
    run_loop(dataclasses.replace(config, criterion="taylor", target_macs=GOAL_MACS_FRACTION, target_scope="overall"))


@method("taylor-global-macs", default=False, budget=True)
def _taylor_global_macs(config: LoopConfig) -> None:
    """taylor_global cutting to GOAL_MACS_FRACTION of the baseline's MACs in equal steps: budgets in compute,
    not filters."""
    run_loop(dataclasses.replace(config, **RECIPES["taylor-global-macs"]))


@method("taylor-distill", default=False)
def _taylor_distill(config: LoopConfig) -> None:
    """Per-layer Taylor, each fine-tune distilled from the baseline (alpha, T: the job contract's defaults).
    The shared baseline recorded plain fine-tunes (loop/recorded_recipe.py): a teacher starts a marked branch."""
    run_loop(dataclasses.replace(config, **RECIPES["taylor-distill"], new_recipe=True))


@method("taylor-global-macs-distill", default=False, budget=True)
def _taylor_global_macs_distill(config: LoopConfig) -> None:
    """taylor-global-macs, each fine-tune distilled from the baseline (a marked branch, as taylor-distill)."""
    run_loop(dataclasses.replace(config, **RECIPES["taylor-global-macs-distill"], new_recipe=True))


@method("tp-magnitude")
def torch_pruning_curve(config: LoopConfig) -> None:
    """Torch-Pruning's MagnitudePruner (global L2 group magnitude, its own choice of groups, residual
    streams included) removes `per_iteration` channels per step; its models are fine-tuned by the
    same jobs as the loop's (the parent's data recipe, the same hyperparameters)."""
    import torch
    import torch_pruning as tp

    from prune_explorer.jobs import COMPLETED
    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.tracking import MlflowTracker

    space = Workspace(config.workspace)
    tracker = MlflowTracker(config.workspace)
    queue = space.queue(tracker=tracker)
    try:
        space.ensure_baseline(queue, config.model, config.hyperparameters(config.baseline_epochs, baseline=True),
                              **config.script)  # the copied baseline, checked and tracked once
        previous = space.start_point("latest")
        for _ in range(config.iterations):
            model = store.load(previous.directory).eval()
            x = space.example_inputs(previous.name, model, image_size=config.image_size, dataset=config.dataset)
            before = sum(g.size for g in ChannelGraph.trace(model, x).prunable())
            last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
            pruner = tp.pruner.MagnitudePruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
                pruning_ratio=min(0.9, config.per_iteration / before), ignored_layers=last)
            pruner.step()
            removed = before - sum(g.size for g in ChannelGraph.trace(model, x).prunable())
            name = space.reserve_iteration()
            plan = {"torch_pruning": removed}
            space.save_pruned(name, model, plan, parent=previous.name, criterion="tp-magnitude")
            hyperparameters = job_hyperparameters(dataclasses.replace(config, threshold=1.0), space, previous)
            job = queue.wait(submit(space, queue, name, parent=previous.name, plan=plan, criterion="tp-magnitude",
                                     hyperparameters=hyperparameters, **config.script).id)
            if job.status != COMPLETED:
                print(f"tp-magnitude {name}: {job.status}: {job.message}", file=sys.stderr)
                break
            previous = space.iteration(name)
    finally:
        queue.close()


def run_curves(base: LoopConfig, root: Path, methods: list[str], to_macs_goal: bool = False) -> dict[str, Path]:
    """Each method's curve in root/<method>, all from the baseline the reference method trains; a
    workspace with iterations already done is continued up to `base.iterations`, not redone.

    A MACs-budget method takes as many steps as the reference took to its first model at or below
    GOAL_MACS_FRACTION of the baseline's MACs (`base.iterations` if it never got there), so both reach
    the comparison point after the same number of fine-tunes. `to_macs_goal`: the other curves stop
    at their first model at or below that point (one iteration per call, checked on the tracked
    MACs), since the MACs comparison needs nothing smaller; a cost rule, blind to accuracies."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    ordered = [REFERENCE] + [m for m in methods if m != REFERENCE]
    baseline = root / REFERENCE / "iterations" / BASELINE
    for name in ordered:
        workspace = root / name
        if name != REFERENCE:
            Workspace(workspace).copy_baseline(baseline)
        run = METHODS[name]
        if name in BUDGET_METHODS:
            steps = macs_goal_iterations(root / REFERENCE) or base.iterations
            left = steps - len(completed_iterations(workspace))
            if left > 0:
                run(dataclasses.replace(base, criterion=name, workspace=str(workspace), iterations=left))
            continue
        done = len(completed_iterations(workspace))
        while done < base.iterations and not (to_macs_goal and macs_goal_iterations(workspace)):
            step = 1 if to_macs_goal else base.iterations - done
            run(dataclasses.replace(base, criterion=name, workspace=str(workspace), iterations=step))
            now = len(completed_iterations(workspace))
            if now == done:  # the method stopped (a failed job or a floor); its messages say why
                break
            done = now
    return {name: root / name for name in ordered}


def macs_goal_iterations(workspace: Path) -> int | None:
    """How many iterations a curve took to its first model at or below GOAL_MACS_FRACTION of its
    baseline's MACs; None if it has not got there."""
    macs = tracked_curve(workspace)["macs"].astype(float).tolist()
    return next((i for i, m in enumerate(macs) if m <= GOAL_MACS_FRACTION * macs[0]), None) if macs else None


def tracked_curve(workspace: Path) -> pd.DataFrame:
    """The completed iterations tracked in a workspace, baseline first."""
    from prune_explorer.tracking import MlflowTracker

    history = MlflowTracker(workspace).history()
    return history[history["status"] == "completed"].sort_values("iteration").reset_index(drop=True)


_CORRECT: dict[tuple, np.ndarray] = {}  # (model dir, validation set) -> correct_per_example's answer


def correct_per_example(model_dir: str | Path, config: LoopConfig) -> np.ndarray:
    """1/0 per validation image for a saved model, fed as its job fed it (metrics.json data_recipe):
    the same images every method is scored on. Each model is evaluated once per process (a report
    pairs the same model at several points)."""
    key = (str(Path(model_dir).resolve()), config.dataset, config.data_dir, config.image_size, config.subset,
           config.val_subset, config.seed)
    if key not in _CORRECT:
        _CORRECT[key] = _evaluate(model_dir, config)
    return _CORRECT[key]


def _evaluate(model_dir: str | Path, config: LoopConfig) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader

    from prune_explorer.jobs.data import load_dataset
    from prune_explorer.jobs.train import first_conv_in_channels
    from prune_explorer.model import store
    from prune_explorer.workspace.layout import read_metrics

    model = store.load(model_dir).eval()
    normalize = read_metrics(model_dir).data_recipe.get("normalize")
    _, val, _, _ = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, subset=config.subset,
                                val_subset=config.val_subset, seed=config.seed, normalize=normalize,
                                channels=None if normalize else first_conv_in_channels(model), download=False)
    hits = []
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=500):
            hits.append((model(x).argmax(1) == y).numpy())
    return np.concatenate(hits).astype(np.float64)


@dataclass(frozen=True)
class Paired:
    """a − b in accuracy on the same images, with one standard error of the paired difference."""

    a: str
    b: str
    difference: float
    se: float

    def __str__(self) -> str:
        return f"{self.a} - {self.b} {100 * self.difference:+.2f} ± {100 * self.se:.2f} points"


def paired_differences(models: dict[str, pd.Series], config: LoopConfig) -> list[Paired]:
    """Every pair of the given models (one tracked row each) re-evaluated on the same validation images;
    the re-evaluation must reproduce each tracked accuracy."""
    hits = {m: correct_per_example(r["model_dir"], config) for m, r in models.items()}
    for m, r in models.items():
        if abs(hits[m].mean() - float(r["accuracy"])) > 1e-9:
            raise RuntimeError(f"{m} {r['iteration']}: re-evaluated {hits[m].mean():.6f}, tracked {r['accuracy']:.6f} "
                               f"({r['model_dir']}): not the images it was scored on")
    names = list(hits)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = hits[a] - hits[b]
            out.append(Paired(a, b, float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))))
    return out


def goal_row(curve: pd.DataFrame, baseline_params: float, fraction: float = GOAL_FRACTION,
             column: str = "params") -> tuple[pd.Series, bool]:
    """A curve's first model at or below `fraction` of the baseline's `column` (params, or macs; a point
    fixed before looking at accuracies), and whether it got there (else its smallest model)."""
    below = curve[curve[column].astype(float) <= baseline_params * fraction]
    return (below.iloc[0], True) if len(below) else (curve.iloc[-1], False)


def plan_widths(workspace: Path, config: LoopConfig) -> tuple[list[str], dict[str, list[int]]]:
    """Channels left in each prunable group of every completed model of a workspace (the widths each
    plan left), with the baseline's group names in model order."""
    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph

    space = Workspace(workspace)
    rows: dict[str, dict[str, int]] = {}
    for name in [BASELINE, *space.completed_iterations()]:
        model = store.load(space.iteration_dir(name)).eval()
        x = space.example_inputs(name, model, image_size=config.image_size, dataset=config.dataset)
        rows[name] = {g.name: g.size for g in ChannelGraph.trace(model, x).prunable()}
    groups = list(rows[BASELINE])
    return groups, {name: [sizes.get(g, 0) for g in groups] for name, sizes in rows.items()}


@dataclass
class Summary:
    """What a report measured: the reference method at the goal's point against the baseline, and the
    paired differences there and at the smallest models."""

    baseline: pd.Series
    goal: pd.Series
    at_goal: list[Paired]
    at_smallest: list[Paired]
    at_macs_goal: list[Paired] = dataclasses.field(default_factory=list)
    recipe: str = REFERENCE  # the method the goal's row belongs to (the last line names it)

    @property
    def ratio(self) -> float:
        return float(self.baseline["params"]) / float(self.goal["params"])

    @property
    def drop(self) -> float:
        return float(self.baseline["accuracy"]) - float(self.goal["accuracy"])

    def line(self, label: str) -> str:
        return (f"{label}: baseline {100 * self.baseline['accuracy']:.2f}%, {self.recipe} "
                f"{100 * self.goal['accuracy']:.2f}% at {int(self.goal['params']):,} params "
                f"(1/{self.ratio:.1f} of baseline), drop {100 * self.drop:.2f} points")


def both_goals_row(curve: pd.DataFrame, baseline: pd.Series) -> tuple[pd.Series, bool]:
    """A curve's first model at or below GOAL_FRACTION of the baseline's params and GOAL_MACS_FRACTION of its
    MACs (issue 21's point for the default recipe), and whether it got there (else its smallest model)."""
    below = curve[(curve["params"].astype(float) <= GOAL_FRACTION * float(baseline["params"]))
                  & (curve["macs"].astype(float) <= GOAL_MACS_FRACTION * float(baseline["macs"]))]
    return (below.iloc[0], True) if len(below) else (curve.iloc[-1], False)


@dataclass(frozen=True)
class JobCost:
    """What one method's fine-tuning jobs cost: per-iteration means of the job's wall time, its process's
    CPU time over its epochs, and of that the teacher's forwards (0 without a teacher)."""

    jobs: int
    wall_s: float
    cpu_s: float
    teacher_cpu_s: float

    @property
    def teacher_ratio(self) -> float:
        """The job's CPU time over the same job without its teacher's forwards."""
        return self.cpu_s / max(self.cpu_s - self.teacher_cpu_s, 1e-9)


def job_costs(workspace: Path) -> JobCost | None:
    """The completed fine-tuning jobs of a method's workspace (the copied baseline excluded)."""
    from prune_explorer.jobs import COMPLETED

    space = Workspace(workspace)
    walls, cpus, teachers = [], [], []
    for name in space.completed_iterations():
        done = [j for j in space.jobs_of(name) if j.status == COMPLETED and j.started and j.ended]
        if not done:
            continue
        job = done[-1]
        result = job.result or {}
        walls.append(job.ended - job.started)
        cpus.append(sum(float(e.get("cpu_seconds") or 0.0) for e in result.get("epochs", [])))
        teachers.append(float((result.get("teacher") or {}).get("cpu_seconds") or 0.0))
    if not walls:
        return None
    return JobCost(len(walls), float(np.mean(walls)), float(np.mean(cpus)), float(np.mean(teachers)))


def cost_line(root: Path, methods: list[str]) -> str:
    """Wall and CPU time per iteration of each method, and the teacher's share where there is one."""
    parts = []
    for m in methods:
        cost = job_costs(root / m)
        if cost is None:
            continue
        teacher = (f"; teacher {cost.teacher_cpu_s:.1f} s CPU, {cost.teacher_ratio:.2f}x the job without it"
                   if cost.teacher_cpu_s else "")
        parts.append(f"{m} {cost.wall_s:.0f} s (CPU {cost.cpu_s:.0f} s over its epochs{teacher}; {cost.jobs} jobs)")
    return "wall time per iteration (mean): " + ", ".join(parts)


def report(root: Path, config: LoopConfig, methods: list[str], widths: bool = True,
           recipe: str | None = None) -> Summary:
    """Print the curves (params and MACs on each point), each plan's widths, the paired comparisons at
    the smallest models and at each method's goal point, and each method's time per iteration; return
    the summary of the goal's line: the reference's first model at or below 1/3 of the params, or, with
    `recipe`, that method's first model at or below both 1/3 of the params and 1/2 of the MACs."""
    curves = {m: tracked_curve(root / m) for m in [REFERENCE] + [m for m in methods if m != REFERENCE]}
    table = pd.concat([c.assign(method=m)[["method", "iteration", "filters_removed", "params", "macs", "accuracy"]]
                       for m, c in curves.items()], ignore_index=True)
    table = table[(table["method"] == REFERENCE) | (table["iteration"] != BASELINE)]
    print(table.to_string(index=False))
    if widths:
        for m in curves:
            groups, rows = plan_widths(root / m, config)
            if m == REFERENCE:
                print(f"widths: channels left per prunable group ({', '.join(groups)})")
            for name, sizes in rows.items():
                if m == REFERENCE or name != BASELINE:
                    print(f"  {m} {name} [{', '.join(map(str, sizes))}]")
    baseline = curves[REFERENCE].iloc[0]
    images = config.val_subset or "validation"
    smallest = {m: c.iloc[-1] for m, c in curves.items()}
    print("at the smallest model: " + ", ".join(
        f"{m} {100 * r['accuracy']:.2f}% ({int(r['params']):,} params)" for m, r in smallest.items()))
    at_smallest = paired_differences(smallest, config)
    print(f"paired on the same {images} images (± 1 SE): " + ", ".join(map(str, at_smallest)))
    goals = {m: goal_row(c, float(baseline["params"])) for m, c in curves.items()}
    print(f"at each method's first model <= 1/{1 / GOAL_FRACTION:.0f} of the baseline's params: " + ", ".join(
        f"{m} {r['iteration']} {100 * r['accuracy']:.2f}% ({int(r['params']):,} params"
        f"{'' if reached else ', never that small: its smallest'})" for m, (r, reached) in goals.items()))
    at_goal = paired_differences({m: r for m, (r, _) in goals.items()}, config)
    print(f"paired on the same {images} images (± 1 SE): " + ", ".join(map(str, at_goal)))
    macs_goals = {m: goal_row(c, float(baseline["macs"]), GOAL_MACS_FRACTION, "macs") for m, c in curves.items()}
    print(f"at each method's first model <= 1/{1 / GOAL_MACS_FRACTION:.0f} of the baseline's MACs: " + ", ".join(
        f"{m} {r['iteration']} {100 * r['accuracy']:.2f}% ({int(r['macs']):,} MACs"
        f"{'' if reached else ', never that small: its smallest'})" for m, (r, reached) in macs_goals.items()))
    at_macs_goal = paired_differences({m: r for m, (r, _) in macs_goals.items()}, config)
    print(f"paired on the same {images} images (± 1 SE): " + ", ".join(map(str, at_macs_goal)))
    for line in macs_goal_lines(baseline, macs_goals, at_macs_goal):
        print(line)
    both = {m: both_goals_row(c, baseline) for m, c in curves.items()}
    print(f"at each method's first model <= 1/{1 / GOAL_FRACTION:.0f} of the params and <= "
          f"1/{1 / GOAL_MACS_FRACTION:.0f} of the MACs: " + ", ".join(
              f"{m} {r['iteration']} {100 * r['accuracy']:.2f}% ({int(r['params']):,} params, {int(r['macs']):,} MACs"
              f"{'' if reached else ', never both: its smallest'})" for m, (r, reached) in both.items()))
    at_both = paired_differences({m: r for m, (r, _) in both.items()}, config)
    print(f"paired on the same {images} images (± 1 SE): " + ", ".join(map(str, at_both)))
    print(cost_line(root, list(curves)))
    if recipe is None:
        return Summary(baseline, goals[REFERENCE][0], at_goal, at_smallest, at_macs_goal)
    if recipe not in curves:
        raise SystemExit(f"the default recipe {recipe!r} has no curve here: add it to --methods")
    row, reached = both_goals_row(curves[recipe], baseline)
    print(f"default recipe {recipe}: {row['iteration']} {100 * row['accuracy']:.2f}% at {int(row['params']):,} params, "
          f"{int(row['macs']):,} MACs (first model <= 1/{1 / GOAL_FRACTION:.0f} of the params and <= "
          f"1/{1 / GOAL_MACS_FRACTION:.0f} of the MACs{'' if reached else ': never both, its smallest'})")
    return Summary(baseline, row, at_goal, at_smallest, at_macs_goal, recipe=recipe)


def macs_goal_lines(baseline: pd.Series, rows: dict[str, tuple[pd.Series, bool]], pairs: list[Paired]) -> list[str]:
    """Issue 13's goal per method at its first model <= 1/2 of the baseline's MACs (`goal_row`'s row and
    whether it got there): within GOAL_DROP of the baseline, and ahead of per-layer Taylor and of
    random by more than GOAL_SE standard errors."""
    signed = {(p.a, p.b): (p.difference, p.se) for p in pairs}
    signed.update({(p.b, p.a): (-p.difference, p.se) for p in pairs})
    lines = []
    for m, (row, reached) in rows.items():
        if m in (REFERENCE, "random"):
            continue
        if not reached:  # nothing to judge at a point the curve never got to
            share = float(row["macs"]) / float(baseline["macs"])
            lines.append(f"goal at 1/{1 / GOAL_MACS_FRACTION:.0f} MACs, {m}: not met, never that small "
                         f"(its smallest model, {row['iteration']}, keeps {share:.2f} of the baseline's MACs)")
            continue
        drop = float(baseline["accuracy"]) - float(row["accuracy"])
        parts = [f"drop {100 * drop:.2f} points (within {100 * GOAL_DROP:.1f}: {'yes' if drop <= GOAL_DROP else 'no'})"]
        for other in (REFERENCE, "random"):
            if (m, other) in signed:
                d, se = signed[(m, other)]
                parts.append(f"vs {other} {100 * d:+.2f} ± {100 * se:.2f} (ahead by > {GOAL_SE:.0f} SE: "
                             f"{'yes' if d > GOAL_SE * se else 'no'})")
        lines.append(f"goal at 1/{1 / GOAL_MACS_FRACTION:.0f} MACs, {m}: " + "; ".join(parts))
    return lines
