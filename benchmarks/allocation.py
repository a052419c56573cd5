"""Allocation vs choice: does a criterion win by how many filters it cuts per layer, or by which?

Takes a finished `quality.py` workspace. From its shared baseline (model and trial), cuts in one
shot the per-layer counts that taylor's and l1's curves reached at one iteration (the
"allocation"), choosing the filters within each layer by taylor, l1 or random (the "choice"), and
fine-tunes each of the 2 x 3 models with the demo recipe for `--epochs` epochs. All six are scored
on the same validation images; differences come with one standard error.

Last line: `allocation: choice spread A points, allocation spread B points (at iteration N)`:
the largest accuracy difference between choices at a fixed allocation, and between allocations
at a fixed choice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from prune_explorer.loop import demo_config

CHOICES = ("taylor", "l1", "random")
ALLOCATIONS = ("taylor", "l1")


def internal_widths(model_dir: Path, x) -> dict[str, int]:
    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph

    graph = ChannelGraph.trace(store.load(model_dir).eval(), x)
    return {g.name: g.size for g in graph.prunable("internal")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True, help="a quality.py workspace with taylor/ and l1/ curves")
    parser.add_argument("--iteration", default="iter-006", help="whose per-layer counts to cut (default iter-006)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after the one-shot cut")
    parser.add_argument("--out", default=None, help="where the six models go (default WORKSPACE/allocation)")
    args = parser.parse_args(argv)

    import torch

    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.signals.ranking import rank
    from prune_explorer.model.surgery import prune
    from prune_explorer.jobs.train import train

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import correct_per_example

    root = Path(args.workspace).resolve()
    out = Path(args.out or root / "allocation").resolve()
    baseline = root / "taylor" / "iterations" / "baseline"
    config = demo_config(out)
    base = store.load(baseline).eval()
    x = torch.zeros(1, 3, config.image_size, config.image_size)
    graph = ChannelGraph.trace(base, x)
    sizes = {g.name: g.size for g in graph.prunable("internal")}
    allocations = {}
    for method in ALLOCATIONS:
        widths = internal_widths(root / method / "iterations" / args.iteration, x)
        allocations[method] = {name: sizes[name] - widths[name] for name in sizes if widths[name] < sizes[name]}
        print(f"{method}'s widths at {args.iteration}: {list(widths.values())}", flush=True)
    tables = {c: rank(base, x, trial=str(baseline / "trial"), criterion=c, graph=graph) for c in ("taylor", "l1")}
    tables["random"] = tables["l1"].assign(normalized=np.random.default_rng(config.seed).random(len(tables["l1"])))

    hits, params = {}, {}
    for allocation, counts in allocations.items():
        for choice in CHOICES:
            key = (allocation, choice)
            directory = out / f"allocation-{allocation}_choice-{choice}"
            store.save(prune(base, PrunePlan.from_counts(tables[choice], graph, counts), x, graph=graph),
                       directory / "pruned")
            hyperparameters = config.hyperparameters(args.epochs)
            hyperparameters.update(model=str(directory / "pruned"), out_dir=str(directory), capture="none",
                                   measure_latency=False)
            metrics = train(hyperparameters)
            hits[key] = correct_per_example(directory, config)
            params[key] = metrics["params"]
            print(f"allocation {allocation:6} choice {choice:6}: {100 * hits[key].mean():.2f}% "
                  f"({params[key]:,} params)", flush=True)

    def spread(pairs) -> tuple[float, float]:
        best = max(pairs, key=lambda p: abs(hits[p[0]].mean() - hits[p[1]].mean()))
        d = hits[best[0]] - hits[best[1]]
        return 100 * abs(d.mean()), 100 * d.std(ddof=1) / np.sqrt(len(d))

    by_choice = [((a, c1), (a, c2)) for a in ALLOCATIONS for i, c1 in enumerate(CHOICES) for c2 in CHOICES[i + 1:]]
    by_allocation = [(("taylor", c), ("l1", c)) for c in CHOICES]
    (choice, choice_se), (alloc, alloc_se) = spread(by_choice), spread(by_allocation)
    print(f"allocation: choice spread {choice:.2f} ± {choice_se:.2f} points, allocation spread {alloc:.2f} ± "
          f"{alloc_se:.2f} points (at {args.iteration}, {args.epochs} epochs after a one-shot cut)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
