"""Issue 21: `prune-explorer run`, `demo --pretrained`, the panel and the README start from one recipe,
`default_recipe.DEFAULT_RECIPE`, and it is one of those benchmarks/transfer.py measured (its `RECIPES`)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from prune_explorer.cli import build_parser, loop_config
from prune_explorer.loop import pretrained_demo_config
from prune_explorer.default_recipe import DEFAULT_RECIPE, RECIPE_ITERATIONS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def recipe_of(config) -> dict:
    return {k: getattr(config, k) for k in DEFAULT_RECIPE}


def test_the_default_recipe_is_one_the_transfer_benchmark_measured():
    from _common import RECIPES, default_recipe

    assert DEFAULT_RECIPE in RECIPES.values() and RECIPES[default_recipe()] == DEFAULT_RECIPE


def test_run_and_demo_pretrained_default_to_the_recipe_and_a_filter_count_replaces_its_budget():
    parser = build_parser()
    assert recipe_of(loop_config(parser.parse_args(["run"]))) == DEFAULT_RECIPE
    pretrained = pretrained_demo_config("ws")
    assert recipe_of(pretrained) == DEFAULT_RECIPE and pretrained.iterations == RECIPE_ITERATIONS
    counted = loop_config(parser.parse_args(["run", "--per-iteration", "100"]))
    assert (counted.per_iteration, counted.target_macs) == (100, None)  # the user's budget, not the recipe's
    plain = loop_config(parser.parse_args(["run", "--distill", "none", "--criterion", "l1"]))
    assert (plain.distill, plain.criterion) == (None, "l1")


def test_the_panel_starts_from_the_recipe(tmp_path):
    from torch import nn

    from prune_explorer.model.zoo import build_model
    from prune_explorer.signals.capture import CaptureHook
    from prune_explorer.widgets import Explorer

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    with CaptureHook(model, tmp_path / "trial", mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        for _ in range(2):  # a real trial, so a trial criterion is what the panel ranks by
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
    e = Explorer(model.eval(), trial=tmp_path / "trial", example_inputs=x[:1]).wait()
    try:
        assert e.criterion == DEFAULT_RECIPE["criterion"] == e.table_editor.criterion.value
        assert e.distill == (DEFAULT_RECIPE["distill"] or "none") == e.finetune.teacher.value
        if DEFAULT_RECIPE["target_macs"] is None:
            assert e.fill_mode == "filters"
        else:  # one of the recipe's equal steps to its MACs target
            assert e.fill_mode == "macs" and e.keep_fraction == pytest.approx(
                DEFAULT_RECIPE["target_macs"] ** (1 / RECIPE_ITERATIONS), abs=1e-3)
    finally:
        e.close()


def test_the_readme_states_the_default_recipe_with_its_measured_line():
    from _common import default_recipe

    readme = (ROOT / "README.md").read_text()
    line = re.search(r"transfer: baseline [\d.]+%, (\S+) [\d.]+% at [\d,]+ params \(1/[\d.]+ of baseline\), "
                     r"drop -?[\d.]+ points", readme)
    assert line and line.group(1) == default_recipe(), line and line.group(0)
