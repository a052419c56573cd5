"""Transfer: the pretrained demo's quality — does a pretrained network fine-tuned on a new task lose
two thirds of its parameters without losing accuracy, and does Taylor choose better than l1 and random?

The setup is `prune-explorer demo --pretrained` (EfficientNet-Lite0 with its ImageNet weights,
Fashion-MNIST at 3x64x64, 1000 filters per iteration from the block-internal groups, one cosine
epoch per fine-tune; `prune_explorer.loop.pretrained_demo_config`) with two changes: all 10k test
images for validation (each accuracy ± ≈0.3 points, paired differences tighter) and 9 iterations,
past 1/3 of the baseline's parameters (iteration 7 on a dry run of the cuts alone) to ≈ 1/10. The
accuracy rule is off (threshold 1.0) so every curve reaches the same budgets. Methods (the registry
in benchmarks/_common.py): taylor, l1, random and Torch-Pruning's MagnitudePruner, each from the same
baseline, per seed (seed: training subset, initialisation, order).

Prints per seed: the curves (params, MACs, accuracy per point), each plan's per-layer widths, paired
differences (same images, ± 1 SE) at the smallest models and at each method's first model at or
below 1/3 of the baseline's parameters (a point fixed before looking at accuracies), and the goal's
verdict; each method's wall and CPU time per iteration (the teacher's share for the distilled ones,
issue 21) and, for each `X-distill` beside `X`, the paired difference at both points. Last line (over
the seeds run, their mean), about the package's default recipe (`default_recipe.DEFAULT_RECIPE`, one of
`_common.RECIPES`) at its first model at or below 1/3 of the params and 1/2 of the MACs — when
--methods runs it; otherwise per-layer Taylor's first model at or below 1/3 of the params:
`transfer: baseline A%, <default recipe> B% at P params (1/K of baseline), drop D points`.

    python benchmarks/transfer.py --workspace bench-workspace/transfer            # both seeds
    python benchmarks/transfer.py --workspace bench-workspace/transfer --seed 1   # one seed
    python benchmarks/transfer.py --workspace bench-workspace/transfer --report   # re-print
    python benchmarks/transfer.py --quick                                         # tiny: 32x32, 2 steps
    python benchmarks/transfer.py --cost                                          # measured cost, projected times

A `--workspace` with iterations already done is continued, not redone (one folder per seed and method).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import (DEFAULT_METHODS, GOAL_DROP, GOAL_SE, METHODS, RECIPES, REFERENCE, Summary, default_recipe, report,
                     run_curves)

from prune_explorer.loop import LoopConfig, pretrained_demo_config

SEEDS = (0, 1)
ITERATIONS = 9


def transfer_config(workspace: Path, seed: int, quick: bool = False, iterations: int = ITERATIONS,
                    val_images: int | None = None) -> LoopConfig:
    """The demo's recipe; the full validation set (or `val_images` of it) and 9 iterations (quick: the
    demo's tiny version, 2 steps). A seed's folder must be continued with the settings it was started with."""
    demo = dataclasses.replace(pretrained_demo_config(workspace, fast=quick), **RECIPES[REFERENCE])  # methods set theirs
    if quick:
        return dataclasses.replace(demo, iterations=2, threshold=1.0, seed=seed)
    return dataclasses.replace(demo, val_subset=val_images, iterations=iterations, threshold=1.0, seed=seed)


def verdict(summary: Summary) -> str:
    """Whether the goal holds on one seed: the drop at the goal's point, and Taylor against l1 and random there."""
    parts = [f"drop {100 * summary.drop:.2f} points at 1/{summary.ratio:.1f} "
             f"(within {100 * GOAL_DROP:.1f}: {'yes' if summary.drop <= GOAL_DROP else 'no'})"]
    for paired in summary.at_goal:
        if paired.a == REFERENCE and paired.b in ("l1", "random"):
            ahead = paired.difference > GOAL_SE * paired.se
            parts.append(f"{paired} (ahead by > {GOAL_SE:.0f} SE: {'yes' if ahead else 'no'})")
    return "goal: " + "; ".join(parts)


def distill_lines(summary: Summary) -> list[str]:
    """Issue 21's goal for distillation: each distilled method against the same method fine-tuned plainly,
    at 1/3 of the params and at 1/2 of the MACs, ahead by more than GOAL_SE standard errors or not."""
    lines = []
    for point, pairs in (("1/3 params", summary.at_goal), ("1/2 MACs", summary.at_macs_goal)):
        for p in pairs:
            if p.a + "-distill" == p.b or p.b + "-distill" == p.a:
                d, se = (p.difference, p.se) if p.a.endswith("-distill") else (-p.difference, p.se)
                distilled, plain = (p.a, p.b) if p.a.endswith("-distill") else (p.b, p.a)
                lines.append(f"distillation at {point}: {distilled} - {plain} {100 * d:+.2f} ± {100 * se:.2f} points "
                             f"(ahead by > {GOAL_SE:.0f} SE: {'yes' if d > GOAL_SE * se else 'no'})")
    return lines


def mean_line(summaries: list[Summary]) -> str:
    """The last line over several seeds: their mean baseline, the default recipe's accuracy, params and drop."""
    base = np.mean([float(s.baseline["accuracy"]) for s in summaries])
    goal = np.mean([float(s.goal["accuracy"]) for s in summaries])
    params = np.mean([float(s.goal["params"]) for s in summaries])
    ratio = np.mean([float(s.baseline["params"]) for s in summaries]) / params
    return (f"transfer: baseline {100 * base:.2f}%, {summaries[0].recipe} {100 * goal:.2f}% at {int(round(params)):,} "
            f"params (1/{ratio:.1f} of baseline), drop {100 * (base - goal):.2f} points")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="keep results here, one folder per seed (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="the demo's tiny version (32x32, a few hundred images)")
    parser.add_argument("--seed", type=int, default=None, help=f"one seed (default: {', '.join(map(str, SEEDS))})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help=f"iterations per method (default {ITERATIONS}; the first model at 1/3 of the params comes at about 7)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="validate on this many test images, the same ones for every method (default: all 10k)")
    parser.add_argument("--until-macs-goal", action="store_true",
                        help="end each filter-count curve at its first model at or below 1/2 of the baseline's MACs "
                             "(issue 13's comparison point) instead of running every iteration")
    parser.add_argument("--report", action="store_true", help="train nothing: print the seeds tracked in --workspace")
    parser.add_argument("--no-widths", action="store_true", help="leave out each plan's per-layer widths")
    parser.add_argument("--cost", action="store_true",
                        help="measure the demo's training and evaluation cost here and project the run times")
    args = parser.parse_args(argv)
    if args.cost:
        from transfer_cost import main as cost

        return cost()
    if args.report and not args.workspace:
        parser.error("--report needs --workspace")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="prune-transfer-")).resolve()
    if args.seed is not None:
        seeds = [args.seed]
    elif args.report:
        seeds = sorted(int(p.name.split("-", 1)[1]) for p in root.glob("seed-*") if p.is_dir())
    else:
        seeds = list(SEEDS)
    if not seeds:
        parser.error(f"--report: no seed-N folders in {root}")
    methods = [m for m in args.methods.split(",") if m]
    recipe = default_recipe() if default_recipe() in [REFERENCE, *methods] else None  # else Taylor's line at 1/3
    summaries = []
    for seed in seeds:
        folder = root / f"seed-{seed}"
        config = transfer_config(folder, seed, quick=args.quick, iterations=args.iterations, val_images=args.val_images)
        if not args.report:
            run_curves(config, folder, methods, to_macs_goal=args.until_macs_goal)
        print(f"== seed {seed}: {folder}")
        summary = report(folder, config, methods, widths=not args.no_widths, recipe=recipe)
        print(verdict(summary))
        for line in distill_lines(summary):
            print(line)
        print(f"seed {seed} " + summary.line("transfer"))
        summaries.append(summary)
    print(mean_line(summaries) if len(summaries) > 1 else summaries[0].line("transfer"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
