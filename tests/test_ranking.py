"""rank(): RankTable shape and order, criteria against direct computation, refusals, and the CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from prune_explorer.signals.capture import CaptureHook
from prune_explorer.cli import main
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.signals.ranking import COLUMNS, rank
from prune_explorer.signals.trials import open_trial

from aws_naming import TinyResNet, write_aws_trial


def _setup(seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return TinyResNet(), torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)


def _capture(model, x, y, path, steps=2):
    with CaptureHook(model, path, example_inputs=x[:1], save_every=1) as hook:
        for _ in range(steps):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()


def test_rank_table_columns_order_and_per_group_l2_normalisation():
    model, x, _ = _setup()
    graph = ChannelGraph.trace(model, x[:1])
    table = rank(model, x[:1], criterion="l2")
    assert list(table.columns) == COLUMNS
    prunable = graph.prunable()
    assert len(table) == sum(g.size for g in prunable)
    assert table.sort_values(["group", "filter"], kind="stable").index.equals(table.index)
    for group in prunable:
        rows = table[table.group == group.id]
        assert (rows.layer == group.name).all() and list(rows["filter"]) == list(range(group.size))
        assert np.isclose(np.linalg.norm(rows.normalized), 1.0)
    raw = rank(model, x[:1], criterion="l2", normalize=False)
    assert np.array_equal(raw.normalized, raw.score)


def test_weight_criteria_sum_over_the_groups_producer_convs():
    model, x, _ = _setup()
    table = rank(model, x[:1], criterion="l1")
    residual = table[table.layer == "layer1.1.conv2"]        # layer1.1.conv2 + downsample conv
    w = [model.layer1[1].conv2.weight, model.layer1[1].downsample[0].weight]
    expected = sum(t.detach().abs().reshape(16, -1).sum(1).double() for t in w).numpy()
    np.testing.assert_allclose(residual.score, expected, rtol=1e-6)
    assert (table.steps == 0).all()


def test_taylor_from_a_compact_trial_matches_direct_computation(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=2)
    trial = open_trial(tmp_path, model, x[:1])
    acts = {}

    def keep(module, inputs, output):
        if "a" not in acts:                               # call 0 of the reused ReLU: the internal group
            acts["a"] = output.detach().clone()
            output.register_hook(lambda g: acts.__setitem__("g", g.clone()))

    handle = model.layer1[0].relu.register_forward_hook(keep)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    handle.remove()

    table = rank(model, x[:1], trial=trial, criterion="taylor")
    rows = table[table.layer == "layer1.0.conv1"]
    expected = (acts["a"] * acts["g"]).mean((2, 3)).abs().mean(0).double().numpy()
    np.testing.assert_allclose(rows.score, expected, rtol=1e-5)
    assert (rows.steps == 2).all() and (rows.criterion == "taylor").all()
    apoz = rank(model, x[:1], trial=trial, criterion="apoz")
    zero_fraction = (acts["a"] == 0).double().mean((2, 3)).mean(0).numpy()
    np.testing.assert_allclose(apoz[apoz.layer == "layer1.0.conv1"].score, 1 - zero_fraction)
    from_path = rank(model, x[:1], trial=str(tmp_path), criterion="taylor")
    np.testing.assert_allclose(from_path.score, table.score)


def test_taylor_and_taylor_aws_order_the_aws_trial_as_the_example_did(tmp_path):
    model, x, y = _setup(1)
    write_aws_trial(model, str(tmp_path), [(x, y)] * 2)
    trial = open_trial(tmp_path, model, x[:1])
    table = rank(model, x[:1], trial=trial, criterion="taylor_aws")
    acts = {}

    def keep(module, inputs, output):
        if "a" not in acts:
            acts["a"] = output.detach().clone()
            output.register_hook(lambda g: acts.__setitem__("g", g.clone()))

    handle = model.layer1[1].relu.register_forward_hook(keep)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    handle.remove()
    example = np.abs((acts["a"] * acts["g"]).mean((0, 2, 3)).double().numpy())   # the example's formula
    rows = table[table.layer == "layer1.1.conv1"]
    np.testing.assert_allclose(rows.normalized, example / np.linalg.norm(example), rtol=1e-5)


def test_stock_trial_ranks_by_weights_and_activations_but_refuses_taylor(tmp_path):
    import smdebug.pytorch as smd
    from smdebug.core.save_config import SaveConfig

    model, x, y = _setup(2)
    hook = smd.Hook(out_dir=str(tmp_path / "t"), include_regex=[r".*relu_output.*", r".*conv.*weight"],
                    save_config=SaveConfig(save_interval=1))
    hook.register_module(model)
    for _ in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    hook.close()
    trial = open_trial(tmp_path / "t", model, x[:1])
    for criterion in ("l1", "mean_activation", "apoz"):
        table = rank(model, x[:1], trial=trial, criterion=criterion)
        assert table.score.notna().all() and len(table) > 0
    with pytest.raises(ValueError, match="no gradients of module outputs.*CaptureHook"):
        rank(model, x[:1], trial=trial, criterion="taylor")
    with pytest.raises(ValueError, match="unknown criterion"):
        rank(model, x[:1], trial=trial, criterion="magic")


def test_cli_rank_writes_the_table_and_prints_a_summary(tmp_path, capsys):
    from prune_explorer.model.zoo import build_model

    model = build_model("resnet18", num_classes=3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with CaptureHook(model, tmp_path / "trial", save_every=1) as hook:
        hook.step()
        nn.functional.cross_entropy(model(x), y).backward()
    out = tmp_path / "rank.csv"
    assert main(["rank", str(tmp_path / "trial"), "--criterion", "mean_activation", "--csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS and (table.criterion == "mean_activation").all()
    printed = capsys.readouterr().out
    assert "layer2.0.conv1" in printed and "median" in printed

    assert main(["rank", str(tmp_path / "trial"), "--criterion", "taylor_global", "--normalization", "flops",
                 "--input-size", "3,32,32", "--csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert (table.criterion == "taylor_global").all() and (table.normalization == "flops").all()
    assert "criterion taylor_global, normalisation flops" in capsys.readouterr().out
    assert main(["rank", str(tmp_path / "trial"), "--criterion", "taylor_global", "--no-normalize"]) == 0
    assert "normalisation none" in capsys.readouterr().out

    # --target-macs prints the one-step budget plan: its cuts add up and it lands at the fraction
    assert main(["rank", str(tmp_path / "trial"), "--criterion", "taylor_global", "--input-size", "3,32,32",
                 "--target-macs", "0.7"]) == 0
    printed = capsys.readouterr().out
    plan_line = next(line for line in printed.splitlines() if line.startswith("plan to 0.7 of "))
    total = int(plan_line.split(": ")[1].split(" filters")[0])
    cuts = [int(line.rsplit("-", 1)[1]) for line in printed.splitlines() if line.startswith("  ") and ": -" in line]
    assert total == sum(cuts) > 0
    assert 65.0 < float(plan_line.rsplit("(", 1)[1].rstrip("%)")) <= 70.0
    assert main(["rank", str(tmp_path / "trial"), "--target-macs", "0.01", "--input-size", "3,32,32"]) == 2
    err = capsys.readouterr().err
    assert "target_macs" in err and "cannot be reached" in err

    assert main(["rank", str(tmp_path / "trial"), "--model", "resnet18", "--num-classes", "5"]) == 2
    assert "does not match the model" in capsys.readouterr().err


def test_cli_rank_finds_the_pruned_model_saved_beside_its_trial(tmp_path, capsys):
    """train.py writes OUT/trial next to OUT/model.json; the trial's base arch alone has the wrong widths."""
    from prune_explorer.model.zoo import build_model
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.store import save
    from prune_explorer.model.surgery import prune

    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    base = build_model("resnet18", num_classes=3).eval()
    small = prune(base, PrunePlan({"layer3.0.conv1": list(range(13))}), x[:1])
    save(small, tmp_path)
    with CaptureHook(small, tmp_path / "trial", save_every=1) as hook:
        hook.step()
        nn.functional.cross_entropy(small(x), y).backward()
    out = tmp_path / "rank.csv"
    assert main(["rank", str(tmp_path / "trial"), "--csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert (table.layer == "layer3.0.conv1").sum() == 256 - 13


class WithUnusedHead(nn.Module):
    """A second head built but never called (an auxiliary classifier left over from training)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_cli_rank_lists_the_layers_no_group_holds_with_the_reason(tmp_path, capsys):
    from prune_explorer.model.zoo import build_model

    model = build_model(f"{__name__}:WithUnusedHead")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with CaptureHook(model, tmp_path / "trial", save_every=1) as hook:
        hook.step()
        nn.functional.cross_entropy(model(x), y).backward()
    assert main(["rank", str(tmp_path / "trial"), "--criterion", "l1", "--trust-model-code", __name__]) == 0
    printed = capsys.readouterr().out
    assert "not in any channel group (1 conv/linear layers):\n  aux: not called in the forward pass" in printed
