"""The default recipe: how `prune-explorer run`, `demo --pretrained` and the panel prune a new workspace
unless told otherwise.

The best recipe measured on the pretrained demo (BENCHMARKS.md, "Recipe", issue 21: two seeds, paired
on the same images): rank by taylor_global and cut to 1/2 of the baseline's MACs in equal steps, with
plain fine-tunes. It was ahead of per-layer Taylor at 1000 filters a step by 1.8 / 2.5 points at 1/2
of the MACs, and of the same recipe distilled from the baseline (alpha 0.9, T 4) by 0.5 / 1.8.
`benchmarks/_common.py` RECIPES holds every recipe compared; the default must be one of them
(tests/test_recipe_defaults.py). A plain module (stdlib imports only), so the panel reads it without loading
the loop. The keys are LoopConfig fields; LoopConfig's own defaults stay the plain library ones.

Not to be confused with the recipe a workspace records (`loop/recorded_recipe.py`): these values fill
the settings a run does not give, and they are never counted as given, so on a workspace with a
recorded recipe the record decides them — a new default never changes an old lineage's recipe.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

DEFAULT_RECIPE: dict[str, Any] = dict(criterion="taylor_global", target_macs=0.5, target_scope="overall", distill=None)
RECIPE_ITERATIONS = 7  # the pretrained demo's iterations: a MACs target in the recipe is reached in this many steps
BUDGETS = ("per_iteration", "target_macs", "target_latency")  # any one given replaces the recipe's budget


def unset_defaults(given: Collection[str]) -> dict[str, Any]:
    """The default recipe's values of the LoopConfig settings not in `given`: its criterion and teacher,
    and its MACs target (with its scope, unless given) when the run gives no budget of its own."""
    values = {k: v for k, v in DEFAULT_RECIPE.items() if k not in given and k not in ("target_macs", "target_scope")}
    if DEFAULT_RECIPE["target_macs"] is not None and not set(BUDGETS) & set(given):
        values["target_macs"] = DEFAULT_RECIPE["target_macs"]
        if "target_scope" not in given:
            values["target_scope"] = DEFAULT_RECIPE["target_scope"]
    return values
