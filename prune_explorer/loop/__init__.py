"""The headless iterative pruning loop (`run`: LoopConfig, run_loop, the demo setups) and its
accuracy-drop stop rule (`rules`, also imported by every fine-tuning job and uploaded alone as the
SageMaker Debugger rule)."""
from __future__ import annotations

from .rules import ACCURACY_SCALAR, AccuracyDropRule, RuleResult, read_accuracies
from .run import (DEFAULT_RECIPE, LOOP_BACKENDS, RECIPE_ITERATIONS, LOOP_CONFIG, RESULTS_CSV, RESULTS_PNG, SCHEMES, TARGET_SCOPES,
                  LoopConfig, completed_iterations, demo_config, describe_recipe, format_history, is_s3,
                  job_hyperparameters, loop_tracker, plot_history, pretrained_demo_config, run_loop, sagemaker_backend)

__all__ = [
    "ACCURACY_SCALAR", "AccuracyDropRule", "RuleResult", "read_accuracies",
    "DEFAULT_RECIPE", "LOOP_BACKENDS", "RECIPE_ITERATIONS", "LOOP_CONFIG", "RESULTS_CSV", "RESULTS_PNG", "SCHEMES", "TARGET_SCOPES", "LoopConfig",
    "completed_iterations", "demo_config", "describe_recipe", "format_history", "is_s3", "job_hyperparameters", "loop_tracker",
    "plot_history", "pretrained_demo_config", "run_loop", "sagemaker_backend",
]
