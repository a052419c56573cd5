"""The headless iterative pruning loop (`run`: LoopConfig, run_loop, the demo setups), one step of it
(`step`: rank → plan → prune → save → submit, which the panel runs part by part) and its
accuracy-drop stop rule (`rules`, also imported by every fine-tuning job and uploaded alone as the
SageMaker Debugger rule)."""
from __future__ import annotations

from .rules import ACCURACY_SCALAR, AccuracyDropRule, RuleResult, read_accuracies
from .run import (LOOP_CONFIG, RESULTS_CSV, RESULTS_PNG, SCHEMES, TARGET_SCOPES, LoopConfig, completed_iterations,
                  demo_config, format_history, is_s3, job_hyperparameters, loop_backend, loop_tracker, plot_history,
                  pretrained_demo_config, run_loop)
from .step import Ranked, Step, StepTarget, latency_table, plan_cut, prune_step, rank_iteration, submit

__all__ = [
    "ACCURACY_SCALAR", "AccuracyDropRule", "RuleResult", "read_accuracies",
    "LOOP_CONFIG", "RESULTS_CSV", "RESULTS_PNG", "SCHEMES", "TARGET_SCOPES", "LoopConfig", "completed_iterations",
    "demo_config", "format_history", "is_s3", "job_hyperparameters", "loop_backend", "loop_tracker", "plot_history",
    "pretrained_demo_config", "run_loop",
    "Ranked", "Step", "StepTarget", "latency_table", "plan_cut", "prune_step", "rank_iteration", "submit",
]
