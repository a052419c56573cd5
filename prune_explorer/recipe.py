"""The default recipe: how `prune-explorer run`, `demo --pretrained` and the panel prune unless told otherwise.

The best recipe measured on the pretrained demo (BENCHMARKS.md, "Recipe", issue 21: two seeds, paired
on the same images): rank by taylor_global and cut to 1/2 of the baseline's MACs in equal steps, with
plain fine-tunes. It was ahead of per-layer Taylor at 1000 filters a step by 1.8 / 2.5 points at 1/2
of the MACs, and of the same recipe distilled from the baseline (alpha 0.9, T 4) by 0.5 / 1.8.
`benchmarks/_common.py` RECIPES holds every recipe compared; the default must be one of them
(tests/test_recipe_defaults.py). A plain module (no imports), so the panel reads it without loading
the loop. The keys are LoopConfig fields; LoopConfig's own defaults stay the plain library ones.
"""
from __future__ import annotations

from typing import Any

DEFAULT_RECIPE: dict[str, Any] = dict(criterion="taylor_global", target_macs=0.5, target_scope="overall", distill=None)
RECIPE_ITERATIONS = 7  # the pretrained demo's iterations: a MACs target in the recipe is reached in this many steps
BUDGETS = ("per_iteration", "target_macs", "target_latency")


def recipe_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """The default recipe's settings for a run given `given` (LoopConfig fields): its criterion and teacher
    unless given, and its budget unless a filter count or another target is. They are defaults, not given
    settings: on a workspace with a recorded recipe the record decides (loop/recipe.py)."""
    found = {k: DEFAULT_RECIPE[k] for k in ("criterion", "distill") if k not in given}
    if not any(k in given for k in BUDGETS) and DEFAULT_RECIPE["target_macs"] is not None:
        found["target_macs"] = DEFAULT_RECIPE["target_macs"]
        if "target_scope" not in given:
            found["target_scope"] = DEFAULT_RECIPE["target_scope"]
    return found
