"""Every torchvision classification model: trace, a random plan on every prunable group, the
exactness contract, and the share of prunable conv filters. Prints one row per model.

Share of prunable conv filters = (output channels of convolutions whose channel group is
prunable and can lose at least one channel) / (output channels of all convolutions, any
`groups`), each conv counted once (`prune_explorer.model.exactness.conv_filters`).
Status: `exact` (max |pruned - reference| <= 1e-4), `INEXACT`, or the error.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torchvision

from prune_explorer.model.exactness import TOLERANCE, check, conv_filters

# over ~1 GB of float32 weights: skipped in CI (tests/test_zoo.py) and by default here
LARGE = ("regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32")


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model at a small input (ViTs built for 32x32 images, Inception at its minimum 80)."""
    kwargs: dict = {"weights": None}
    size = 64
    if name.startswith("vit_"):
        kwargs["image_size"] = 32
        size = 32
    if name == "maxvit_t":   # its block partitions need 224
        size = 224
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=False)
        size = 80 if name == "inception_v3" else 64
    torch.manual_seed(0)
    return torchvision.models.get_model(name, **kwargs), torch.randn(1, 3, size, size)


def sweep(name: str) -> dict:
    start = time.perf_counter()
    model, x = build(name)
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
        names = [n for n in names if n not in LARGE]
    print(f"{'model':24} {'conv filters prunable':>22} {'filters':>8} {'groups':>9} {'route':>6} {'s':>5}  status")
    exact = 0
    for name in names:
        row = sweep(name)
        exact += row["status"] == "exact"
        share = f"{100 * row['share']:.1f} %" if "share" in row else "-"
        print(f"{row['model']:24} {share:>22} {row.get('filters', '-'):>8} {row.get('groups', '-'):>9} "
              f"{row.get('route', '-'):>6} {row['seconds']:5.1f}  {row['status']}", flush=True)
    print(f"zoo: {exact} of {len(names)} models exact")
    sys.exit(0 if exact == len(names) else 1)


if __name__ == "__main__":
    main()
