"""The headless iterative pruning loop (`run`: LoopConfig, run_loop, the demo setups), one step of it
(`step`: rank → plan → prune → save → submit, which the panel runs part by part), the checks before
a run (`checks`), the recipe each workspace lineage records and a continued run takes
(`recorded_recipe`; the defaults of a new run are `prune_explorer.default_recipe`), what a run shows
(`history`) and its accuracy-drop stop rule (`rules`, also imported by every fine-tuning job and uploaded alone as the
SageMaker Debugger rule). The names below load on first use: the panel asks for the step without
the loop's pandas and the rule's smdebug."""
from __future__ import annotations

from .. import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ACCURACY_SCALAR", "AccuracyDropRule", "RuleResult", "read_accuracies"), "rules"),
    **dict.fromkeys(("DEFAULT_RECIPE", "LOOP_CONFIG", "RECIPE_ITERATIONS", "RESULTS_CSV", "RESULTS_PNG", "SCHEMES",
                     "TARGET_SCOPES", "LoopConfig", "completed_iterations", "demo_config", "describe_recipe", "is_s3",
                     "job_hyperparameters", "loop_backend", "loop_tracker", "pretrained_demo_config", "run_loop",
                     "summary"), "run"),
    **dict.fromkeys(("format_history", "plot_history", "read_history", "write_csv"), "history"),
    **dict.fromkeys(("Ranked", "Step", "StepTarget", "latency_table", "plan_cut", "prune_step", "rank_iteration",
                     "submit"), "step"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, {m: m for m in ("checks", "recorded_recipe", "history")})
