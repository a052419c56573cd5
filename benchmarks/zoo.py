"""Every torchvision classification model: trace, a random plan on every prunable group, the
exactness contract, and the share of prunable conv filters. Prints one row per model.

Share of prunable conv filters = (output channels of convolutions whose channel group is
prunable and can lose at least one channel) / (output channels of all convolutions, any
`groups`), each conv counted once (`prune_explorer.model.exactness.conv_filters`).
Status: `exact` (max |pruned - reference| <= 1e-4), `INEXACT`, or the error. `no group`: conv and
linear layers in no channel group (`graph.unassigned`, each with its reason).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torchvision

from prune_explorer.model.exactness import LARGE_TORCHVISION, TOLERANCE, check, conv_filters, torchvision_example

def sweep(name: str) -> dict:
    start = time.perf_counter()
    model, x = torchvision_example(name)
    try:
        result = check(model, x)
    except Exception as exc:  # a row per model, whatever happens
        return {"model": name, "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                "seconds": time.perf_counter() - start}
    prunable, total = conv_filters(result.graph)
    groups = result.graph.groups
    return {
        "model": name,
        "status": "exact" if result.max_diff <= TOLERANCE and result.input_unchanged else f"INEXACT {result.max_diff:.2e}",
        "share": prunable / total if total else 0.0,
        "filters": total,
        "groups": f"{len(result.graph.prunable())}/{len(groups)}",
        "route": result.graph.route,
        "unassigned": len(result.graph.unassigned),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="include the models over ~1 GB")
    parser.add_argument("models", nargs="*", help="only these (default: every classification model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    if not args.all:
        names = [n for n in names if n not in LARGE_TORCHVISION]
    print(f"{'model':24} {'conv filters prunable':>22} {'filters':>8} {'groups':>9} {'route':>6} {'no group':>8} "
          f"{'s':>5}  status")
    exact = 0
    for name in names:
        row = sweep(name)
        exact += row["status"] == "exact"
        share = f"{100 * row['share']:.1f} %" if "share" in row else "-"
        print(f"{row['model']:24} {share:>22} {row.get('filters', '-'):>8} {row.get('groups', '-'):>9} "
              f"{row.get('route', '-'):>6} {row.get('unassigned', '-'):>8} {row['seconds']:5.1f}  {row['status']}",
              flush=True)
    print(f"zoo: {exact} of {len(names)} models exact")
    sys.exit(0 if exact == len(names) else 1)


if __name__ == "__main__":
    main()
