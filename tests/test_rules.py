"""The accuracy-drop rule: plain evaluation, from a job's trial or metrics.json, and as an smdebug Rule."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prune_explorer.loop.rules import AccuracyDropRule, read_accuracies


def test_fires_only_beyond_the_threshold():
    rule = AccuracyDropRule(threshold=0.10)
    fired = rule.evaluate(0.90, [0.70, 0.75])
    assert fired.fired and fired.accuracy == 0.75 and "0.7500" in fired.reason and "0.9000" in fired.reason
    assert not rule.evaluate(0.90, [0.70, 0.85]).fired
    assert not rule.evaluate(0.90, [0.81]).fired


def test_best_mode_keeps_a_good_epoch_latest_mode_does_not():
    accuracies = [0.88, 0.60]
    assert not AccuracyDropRule(0.10, mode="best").evaluate(0.90, accuracies).fired
    assert AccuracyDropRule(0.10, mode="latest").evaluate(0.90, accuracies).fired


def test_nothing_to_compare_never_fires():
    rule = AccuracyDropRule(0.05)
    assert not rule.evaluate(None, [0.1]).fired
    result = rule.evaluate(0.9, [])
    assert not result.fired and "no accuracy" in result.reason


@pytest.mark.parametrize("kwargs", [{"threshold": -0.1}, {"threshold": 2}, {"mode": "median"}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        AccuracyDropRule(**kwargs)


def test_accuracy_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="92"):
        AccuracyDropRule().evaluate(0.9, [92.0])


def test_evaluate_trial_falls_back_to_metrics_json(tmp_path):
    (tmp_path / "trial").mkdir()
    epochs = [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate([0.5, 0.55])]
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": epochs}))
    assert read_accuracies(tmp_path / "trial") == [0.5, 0.55]
    assert AccuracyDropRule(0.1).evaluate_trial(tmp_path / "trial", 0.8).fired
    assert not AccuracyDropRule(0.1).evaluate_trial(tmp_path / "trial", 0.6).fired


def test_evaluate_trial_without_records_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        read_accuracies(tmp_path / "empty")


# --- real smdebug trials ---------------------------------------------------------------------
def write_trial(path, accuracies: list[float], steps_per_epoch: int = 3):
    """A real trial written by CaptureHook: training steps plus one accuracy scalar per epoch."""
    from prune_explorer.signals.capture import CaptureHook

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    hook = CaptureHook(model, path, taps=[("1", 0)], mode="compact", save_every=2)
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1])
    for accuracy in accuracies:
        for _ in range(steps_per_epoch):
            hook.step()
            nn.functional.cross_entropy(model(x), y).backward()
        hook.save_scalar("val_accuracy", accuracy)
    hook.close()
    return path


def test_evaluate_trial_reads_the_accuracy_scalars(tmp_path):
    trial = write_trial(tmp_path / "trial", [0.7, 0.8, 0.75])
    assert read_accuracies(trial) == pytest.approx([0.7, 0.8, 0.75])
    assert AccuracyDropRule(0.05).evaluate_trial(trial, 0.9).fired
    assert not AccuracyDropRule(0.15).evaluate_trial(trial, 0.9).fired


def run_smdebug_rule(trial_path, previous_accuracy, threshold, mode="best"):
    from smdebug.rules.rule_invoker import invoke_rule
    from smdebug.trials import create_trial

    from prune_explorer.loop.rules import AccuracyDropSmdebugRule

    trial = create_trial(str(trial_path))
    # parameters arrive as strings from a SageMaker rule configuration
    rule = AccuracyDropSmdebugRule(trial, previous_accuracy=str(previous_accuracy), threshold=str(threshold), mode=mode)
    invoke_rule(rule, start_step=0, end_step=trial.steps()[-1] + 1, raise_eval_cond=True)
    return rule


def test_smdebug_rule_fires_when_accuracy_drops(tmp_path):
    from smdebug.exceptions import RuleEvaluationConditionMet

    trial = write_trial(tmp_path / "trial", [0.85, 0.62, 0.60])
    with pytest.raises(RuleEvaluationConditionMet) as info:
        run_smdebug_rule(trial, previous_accuracy=0.9, threshold=0.1, mode="latest")
    assert info.value.step == 5  # the second epoch's scalar, after 2 x 3 steps


def test_smdebug_rule_stays_quiet_when_accuracy_holds(tmp_path):
    trial = write_trial(tmp_path / "trial", [0.85, 0.62, 0.88])
    rule = run_smdebug_rule(trial, previous_accuracy=0.9, threshold=0.1)
    assert rule.accuracies == pytest.approx({2: 0.85, 5: 0.62, 8: 0.88})
    assert not rule.last_result.fired


def test_rules_file_stands_alone_as_a_sagemaker_custom_rule():
    """Debugger's rule container loads the uploaded file by itself, without this package."""
    import importlib.util

    import prune_explorer.loop.rules as packaged

    spec = importlib.util.spec_from_file_location("uploaded_rule", packaged.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from smdebug.rules.rule import Rule

    assert issubclass(module.AccuracyDropSmdebugRule, Rule)

