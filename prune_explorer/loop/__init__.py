"""The headless iterative pruning loop (`run`: LoopConfig, run_loop, the demo setups), what it checks
before any work (`checks`), the recipe each workspace lineage records and a continued run takes
(`recorded_recipe`; the defaults of a new run are `prune_explorer.default_recipe`), and its
accuracy-drop stop rule (`rules`, also imported by every fine-tuning job and uploaded alone as the
SageMaker Debugger rule)."""
from __future__ import annotations

from . import checks, recorded_recipe
from .rules import ACCURACY_SCALAR, AccuracyDropRule, RuleResult, read_accuracies
from .run import (LOOP_BACKENDS, LOOP_CONFIG, RESULTS_CSV, RESULTS_PNG, SCHEMES, TARGET_SCOPES, LoopConfig,
                  completed_iterations, demo_config, describe_recipe, format_history, is_s3, job_hyperparameters,
                  loop_tracker, plot_history, pretrained_demo_config, run_loop, sagemaker_backend, summary)

__all__ = [
    "ACCURACY_SCALAR", "AccuracyDropRule", "RuleResult", "read_accuracies", "checks", "recorded_recipe",
    "LOOP_BACKENDS", "LOOP_CONFIG", "RESULTS_CSV", "RESULTS_PNG", "SCHEMES", "TARGET_SCOPES", "LoopConfig",
    "completed_iterations", "demo_config", "describe_recipe", "format_history", "is_s3", "job_hyperparameters",
    "loop_tracker", "plot_history", "pretrained_demo_config", "run_loop", "sagemaker_backend", "summary",
]
