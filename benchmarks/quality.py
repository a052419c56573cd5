"""Quality: params-vs-accuracy curves at one per-iteration budget, for four ways of choosing filters.

taylor, l1 and random go through `run_loop` (same baseline, same fine-tuning jobs); Torch-Pruning's
MagnitudePruner (global L2 group magnitude) removes the same number of channels per iteration and
its models are fine-tuned by the same train.py jobs. The accuracy rule is off (threshold 1.0) so
every curve reaches the same budgets. Default: the `make demo` setup (resnet18, Fashion-MNIST 10k
train images, the 10k test images for validation, 200 filters per iteration) for 9 iterations
(the demo stops at 5): past 1/3 of the baseline's parameters and on to the ≈ 1/16 where the AWS
example's chart ends. A `--workspace` with iterations already done is continued, not redone;
`--quick` runs a small digits version; `--report` re-prints a finished run.
The smallest models are re-evaluated on the same images to give each pairwise difference a
standard error, so an ordering can be told from noise.

Last line: `quality: baseline A%, taylor B% at P params (1/K of baseline), drop D points`, for the
first Taylor model at or below 1/3 of the baseline's parameters (the goal's point).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from prune_explorer.loop import LoopConfig, completed_iterations, demo_config, run_loop

METHODS = ("taylor", "l1", "random", "tp-magnitude")


def random_scores(seed: int = 0):
    rng = np.random.default_rng(seed)

    def random(group, model, trial) -> np.ndarray:
        return rng.random(group.size)

    return random


def _share_baseline(workspace: Path, baseline: Path) -> None:
    from prune_explorer.workspace import Workspace

    Workspace(workspace).copy_baseline(baseline)


def torch_pruning_curve(config: LoopConfig, workspace: Path) -> pd.DataFrame:
    """Same budgets as the loop, channels chosen by torch_pruning.pruner.MagnitudePruner."""
    import torch
    import torch_pruning as tp

    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.jobs import COMPLETED
    from prune_explorer.tracking import MlflowTracker
    from prune_explorer.workspace import Workspace

    space = Workspace(workspace)
    tracker = MlflowTracker(workspace)
    queue = space.queue(tracker=tracker)
    previous, names = workspace / "iterations" / "baseline", ["baseline"]
    if tracker.run_id("baseline") is None:
        tracker.record("baseline", params=_metrics(previous)["params"],
                       best_accuracy=_metrics(previous)["best_accuracy"], model_dir=str(previous))
    done = completed_iterations(workspace)
    if done:  # continue an earlier run's curve
        names += done
        previous = workspace / "iterations" / done[-1]
    for _ in range(config.iterations):
        model = store.load(previous).eval()
        x = space.example_inputs(previous.name, model, image_size=config.image_size, dataset=config.dataset)
        before = sum(g.size for g in ChannelGraph.trace(model, x).prunable())
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
            pruning_ratio=min(0.9, config.per_iteration / before), ignored_layers=last)
        pruner.step()
        removed = before - sum(g.size for g in ChannelGraph.trace(model, x).prunable())
        name = space.reserve_iteration()
        space.save_pruned(name, model, {"torch_pruning": removed}, parent=names[-1], criterion="tp-magnitude")
        job = queue.wait(space.submit(queue, name, parent=names[-1], plan={"torch_pruning": removed},
                                      criterion="tp-magnitude", hyperparameters=config.hyperparameters(config.epochs)).id)
        if job.status != COMPLETED:
            print(f"tp-magnitude {name}: {job.status}: {job.message}", file=sys.stderr)
            break
        previous = space.iteration_dir(name)
        names.append(name)
    queue.close()
    history = tracker.history()
    return history[history["iteration"].isin(names)].reset_index(drop=True)


def _metrics(directory: Path) -> dict:
    from prune_explorer.jobs.queue import read_metrics

    return read_metrics(directory)


def correct_per_example(model_dir: str | Path, config: LoopConfig) -> np.ndarray:
    """1/0 per validation image for a saved model: the same images every method is scored on."""
    import torch
    from torch.utils.data import DataLoader

    from prune_explorer.model import store
    from prune_explorer.data import load_dataset
    from prune_explorer.train import first_conv_in_channels

    model = store.load(model_dir).eval()
    _, val, _, _ = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, subset=config.subset,
                                val_subset=config.val_subset, seed=config.seed,
                                channels=first_conv_in_channels(model), download=False)
    hits = []
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=500):
            hits.append((model(x).argmax(1) == y).numpy())
    return np.concatenate(hits).astype(np.float64)


def paired_differences(smallest: dict[str, pd.Series], config: LoopConfig) -> list[str]:
    """Accuracy differences between methods' smallest models on the same images, with one standard
    error of the paired difference: whether an ordering is more than noise."""
    hits = {m: correct_per_example(r["model_dir"], config) for m, r in smallest.items()}
    for m, r in smallest.items():  # the re-evaluation must reproduce the tracked accuracy
        assert abs(hits[m].mean() - float(r["accuracy"])) < 1e-9, (m, hits[m].mean(), r["accuracy"])
    lines = []
    names = list(hits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = hits[a] - hits[b]
            se = d.std(ddof=1) / np.sqrt(len(d))
            lines.append(f"{a} - {b} {100 * d.mean():+.2f} ± {100 * se:.2f} points")
    return lines


def tracked_curve(workspace: Path) -> pd.DataFrame:
    from prune_explorer.tracking import MlflowTracker

    history = MlflowTracker(workspace).history()
    return history[history["status"] == "completed"].sort_values("iteration").reset_index(drop=True)


def quick_config(workspace: Path) -> LoopConfig:
    """Digits at their native 8x8: minutes on a busy 2-core machine, the same loop as the demo."""
    return LoopConfig(workspace=str(workspace), dataset="digits", model="resnet18", per_iteration=200,
                      iterations=3, epochs=2, baseline_epochs=8, batch_size=32, lr=0.01)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="keep results here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="digits instead of the demo's Fashion-MNIST subset")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=None, help="another seed: subset draw, initialisation, order")
    parser.add_argument("--iterations", type=int, default=None,
                        help="prune iterations per curve (default: 9 on the demo setup, 1800 of its 1920 "
                             "block-internal filters, past the 1/16 of the baseline where the AWS example's chart "
                             "ends); a --workspace that has some already is continued")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: print the curves already tracked in --workspace")
    args = parser.parse_args(argv)
    if args.report and not args.workspace:
        parser.error("--report needs --workspace")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="prune-quality-")).resolve()
    base = quick_config(root / "taylor") if args.quick else demo_config(root / "taylor")
    # Past 1/3 of the baseline's parameters (the goal's point) and on to where the criteria differ by
    # more than the noise: at 1/3 on this setup even a random choice within layers recovers fully.
    iterations = args.iterations or (4 if args.quick else 9)
    base = dataclasses.replace(base, threshold=1.0, iterations=iterations)
    if args.seed is not None:
        base = dataclasses.replace(base, seed=args.seed)
    requested = [m for m in args.methods.split(",") if m]
    methods = ["taylor"] + [m for m in requested if m != "taylor"]  # taylor's run trains the shared baseline

    if not args.report:
        baseline = root / "taylor" / "iterations" / "baseline"  # trained by the taylor run, shared by all
        for method in methods:
            workspace = root / method
            if method != "taylor":
                _share_baseline(workspace, baseline)
            config = dataclasses.replace(base, criterion=method, workspace=str(workspace),
                                         iterations=iterations - len(completed_iterations(workspace)))
            if config.iterations <= 0:
                continue
            if method == "random":
                run_loop(config, progress=True, criterion_fn=random_scores(base.seed))
            elif method == "tp-magnitude":
                torch_pruning_curve(config, workspace)
            else:
                run_loop(config, progress=True)
    curves = {m: tracked_curve(root / m) for m in methods}

    table = pd.concat(
        [c.assign(method=m)[["method", "iteration", "filters_removed", "params", "accuracy"]]
         for m, c in curves.items()], ignore_index=True)
    table = table[(table["method"] == "taylor") | (table["iteration"] != "baseline")]
    print(table.to_string(index=False))
    taylor = curves["taylor"]
    first = taylor.iloc[0]
    # The goal's point, fixed before looking at accuracies: the first Taylor model at <= 1/3 of the baseline.
    third = taylor[taylor["params"] <= float(first["params"]) / 3]
    goal = third.iloc[0] if len(third) else taylor.iloc[-1]
    smallest = {m: c.iloc[-1] for m, c in curves.items()}
    print("at the smallest model: " + ", ".join(
        f"{m} {100 * r['accuracy']:.2f}% ({int(r['params']):,} params)" for m, r in smallest.items()))
    print(f"paired on the same {base.val_subset or 'validation'} images (± 1 SE): "
          + ", ".join(paired_differences(smallest, base)))
    ratio = float(first["params"]) / float(goal["params"])
    drop = 100 * (float(first["accuracy"]) - float(goal["accuracy"]))
    print(f"quality: baseline {100 * first['accuracy']:.2f}%, taylor {100 * goal['accuracy']:.2f}% at "
          f"{int(goal['params']):,} params (1/{ratio:.1f} of baseline), drop {drop:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
