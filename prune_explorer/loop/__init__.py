"""The headless iterative pruning loop (`run`: LoopConfig, run_loop, the demo setups) and its
accuracy-drop stop rule (`rules`).

The names import lazily: a fine-tuning job imports `loop.rules` for its in-job stop rule, and
must not pay for the loop (pandas, the workspace, the queue) to get it.
"""
from __future__ import annotations

import importlib

_EXPORTS = {  # public name -> submodule
    **dict.fromkeys((
        "LoopConfig", "LOOP_BACKENDS", "LOOP_CONFIG", "RESULTS_CSV", "RESULTS_PNG", "SCHEMES", "TARGET_SCOPES",
        "completed_iterations", "demo_config", "format_history", "is_s3", "job_hyperparameters", "loop_tracker",
        "plot_history", "pretrained_demo_config", "run_loop", "sagemaker_backend"), "run"),
    **dict.fromkeys(("ACCURACY_SCALAR", "AccuracyDropRule", "RuleResult",
                     "read_accuracies"), "rules"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
