"""Quality: params-vs-accuracy curves at one per-iteration budget, for four ways of choosing filters.

taylor, l1 and random go through `run_loop` (same baseline, same fine-tuning jobs); Torch-Pruning's
MagnitudePruner (global L2 group magnitude) removes the same number of channels per iteration and
its models are fine-tuned by the same train.py jobs (the methods: benchmarks/_common.py; issue 13's
`--methods taylor,taylor-global,taylor-flops,taylor-macs,taylor-global-macs` adds the global
criteria and the MACs-budget curves, compared again at each method's first model at or below 1/2 of
the baseline's MACs; `--until-macs-goal` ends the filter-count curves there). The
accuracy rule is off (threshold 1.0) so every curve reaches the same budgets. Default: the
`make demo` setup (resnet18, Fashion-MNIST 10k train images, the 10k test images for validation,
200 filters per iteration) for 9 iterations (the demo stops at 5): past 1/3 of the baseline's
parameters and on to the ≈ 1/16 where the AWS example's chart ends. A `--workspace` with
iterations already done is continued, not redone; `--quick` runs a small digits version;
`--report` re-prints a finished run. The smallest models, and each method's first model at or
below 1/3 of the baseline's parameters, are re-evaluated on the same images to give each pairwise
difference a standard error, so an ordering can be told from noise.

Last line: `quality: baseline A%, taylor B% at P params (1/K of baseline), drop D points`, for the
first Taylor model at or below 1/3 of the baseline's parameters (the goal's point).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_METHODS, METHODS, report, run_curves

from prune_explorer.loop import LoopConfig, demo_config


def quick_config(workspace: Path) -> LoopConfig:
    """Digits at their native 8x8: minutes on a busy 2-core machine, the same loop as the demo."""
    return LoopConfig(workspace=str(workspace), dataset="digits", model="resnet18", per_iteration=200,
                      iterations=3, epochs=2, baseline_epochs=8, batch_size=32, lr=0.01)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=None, help="keep results here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="digits instead of the demo's Fashion-MNIST subset")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--seed", type=int, default=None, help="another seed: subset draw, initialisation, order")
    parser.add_argument("--iterations", type=int, default=None,
                        help="prune iterations per curve (default: 9 on the demo setup, 1800 of its 1920 "
                             "block-internal filters, past the 1/16 of the baseline where the AWS example's chart "
                             "ends); a --workspace that has some already is continued")
    parser.add_argument("--until-macs-goal", action="store_true",
                        help="end each filter-count curve at its first model at or below 1/2 of the baseline's MACs "
                             "(issue 13's comparison point) instead of running every iteration")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: print the curves already tracked in --workspace")
    args = parser.parse_args(argv)
    if args.report and not args.workspace:
        parser.error("--report needs --workspace")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="prune-quality-")).resolve()
    base = quick_config(root) if args.quick else demo_config(root)
    # Past 1/3 of the baseline's parameters (the goal's point) and on to where the criteria differ by
    # more than the noise: at 1/3 on this setup even a random choice within layers recovers fully.
    base = dataclasses.replace(base, threshold=1.0, iterations=args.iterations or (4 if args.quick else 9))
    if args.seed is not None:
        base = dataclasses.replace(base, seed=args.seed)
    methods = [m for m in args.methods.split(",") if m]
    if not args.report:
        run_curves(base, root, methods, to_macs_goal=args.until_macs_goal)
    print(report(root, base, methods).line("quality"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
