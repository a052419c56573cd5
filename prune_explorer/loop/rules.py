"""The accuracy-drop stop rule of the iterative pruning loop.

The loop stops when a fine-tuned, smaller model is more than `threshold` (absolute accuracy
points, 0.10 = ten points) worse than the previous iteration. By default the rule compares the
*best accuracy so far* of the running job, because the job keeps its best epoch as its output
model: a job is only judged a failure when even its best epoch is too far down. `mode="latest"`
compares the latest evaluation instead, as the AWS example's rule did.

This file is self-contained (standard library, plus smdebug for the `Rule` subclass), so it can be
uploaded as a SageMaker Debugger custom rule: source `prune_explorer/loop/rules.py`, class
`AccuracyDropSmdebugRule`, rule parameters `previous_accuracy` and `threshold` (and optionally
`mode`, `tensor_name`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

ACCURACY_SCALAR = "val_accuracy"
MODES = ("best", "latest")


class RuleResult(NamedTuple):
    """Whether the rule fired, and a sentence saying why (or why not). Test `.fired`, not the tuple.

    A NamedTuple, not a dataclass: Debugger's rule container may load this file without
    registering it in sys.modules, which dataclasses need.
    """

    fired: bool
    reason: str
    accuracy: float | None = None
    previous_accuracy: float | None = None


class AccuracyDropRule:
    """Fires when the running accuracy falls more than `threshold` below the previous iteration's."""

    def __init__(self, threshold: float = 0.10, mode: str = "best"):
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be an accuracy drop between 0 and 1, got {threshold}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.threshold = threshold
        self.mode = mode

    def __repr__(self) -> str:
        return f"AccuracyDropRule(threshold={self.threshold}, mode={self.mode!r})"

    def evaluate(self, previous_accuracy: float | None, accuracies: Sequence[float]) -> RuleResult:
        """Judge the accuracies seen so far (in evaluation order) against the previous iteration's."""
        values = [float(a) for a in accuracies]
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"accuracies must be fractions in [0, 1], got {value}")
        if previous_accuracy is None:
            return RuleResult(False, "no previous accuracy to compare with (baseline iteration)")
        previous = float(previous_accuracy)
        if not values:
            return RuleResult(False, "no accuracy evaluated yet", None, previous)
        current = max(values) if self.mode == "best" else values[-1]
        drop = previous - current
        label = "best accuracy so far" if self.mode == "best" else "latest accuracy"
        if drop > self.threshold:
            return RuleResult(
                True,
                f"{label} {current:.4f} is {drop:.4f} below the previous iteration's {previous:.4f} "
                f"(threshold {self.threshold:.4f})",
                current,
                previous,
            )
        return RuleResult(
            False,
            f"{label} {current:.4f} is within {self.threshold:.4f} of the previous iteration's {previous:.4f}",
            current,
            previous,
        )

    def evaluate_trial(self, trial_dir: str | os.PathLike, previous_accuracy: float | None) -> RuleResult:
        """Evaluate the accuracies a training job recorded: scalars in its trial, else its metrics.json."""
        return self.evaluate(previous_accuracy, read_accuracies(trial_dir))


def read_accuracies(trial_dir: str | os.PathLike) -> list[float]:
    """Accuracy per evaluation, in step order, from a job's trial (or the metrics.json next to it)."""
    path = str(trial_dir)
    values = _trial_accuracies(path) if _has_trial(path) else None
    if values:
        return values
    for candidate in _metrics_candidates(path):
        if candidate.is_file():
            try:
                metrics = json.loads(candidate.read_text())
                return [float(epoch["val_accuracy"]) for epoch in metrics.get("epochs", [])]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{candidate}: cannot read per-epoch val_accuracy ({exc})") from exc
    if values is not None:
        return values
    raise FileNotFoundError(
        f"{path}: no smdebug trial with scalar/{ACCURACY_SCALAR} and no metrics.json found there or beside it"
    )


def _has_trial(path: str) -> bool:
    return path.startswith("s3://") or (Path(path) / "collections").is_dir()


def _metrics_candidates(path: str) -> Iterable[Path]:
    if path.startswith("s3://"):
        return []
    root = Path(path)
    return [root / "metrics.json", root.parent / "metrics.json"]


def _trial_accuracies(path: str, tensor_name: str | None = None) -> list[float]:
    from smdebug.trials import create_trial

    trial = create_trial(path)
    name = tensor_name or f"scalar/{ACCURACY_SCALAR}"
    if name not in trial.tensor_names():
        return []
    tensor = trial.tensor(name)
    return [_scalar(tensor.value(step)) for step in sorted(tensor.steps())]


def _scalar(value) -> float:
    import numpy as np

    return float(np.asarray(value).reshape(-1)[0])


try:  # in the package: smdebug's INFO lines go to the project's logger (not in Debugger's rule container)
    from ..signals.smdebug_compat import route_logging as _route_smdebug_logging
except ImportError:
    pass
else:
    _route_smdebug_logging()

try:
    from smdebug.rules.rule import Rule as _SmdebugRule
except ImportError:  # smdebug is optional for the plain rule
    _SmdebugRule = None

if _SmdebugRule is not None:

    class AccuracyDropSmdebugRule(_SmdebugRule):
        """SageMaker Debugger custom rule: `AccuracyDropRule` over the job's accuracy scalar.

        Rule parameters arrive as strings: previous_accuracy, threshold (default 0.10),
        mode ("best" | "latest"), tensor_name (default "scalar/val_accuracy").
        """

        def __init__(
            self,
            base_trial,
            previous_accuracy=None,
            threshold=0.10,
            mode="best",
            tensor_name=f"scalar/{ACCURACY_SCALAR}",
            action_str="",
        ):
            super().__init__(base_trial, action_str=action_str)
            self.previous_accuracy = _optional_float(previous_accuracy)
            self.rule = AccuracyDropRule(float(threshold), str(mode))
            self.tensor_name = str(tensor_name)
            self.accuracies: dict[int, float] = {}
            self.last_result: RuleResult | None = None

        def invoke_at_step(self, step):
            if self.tensor_name not in self.base_trial.tensor_names():
                return False
            tensor = self.base_trial.tensor(self.tensor_name)
            if step not in tensor.steps():
                return False
            self.accuracies[step] = _scalar(tensor.value(step))
            ordered = [self.accuracies[s] for s in sorted(self.accuracies)]
            self.last_result = self.rule.evaluate(self.previous_accuracy, ordered)
            self.logger.info(f"{self.rule_name} step {step}: {self.last_result.reason}")
            return self.last_result.fired


def _optional_float(value) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return float(value)
