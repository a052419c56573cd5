"""measure: parameter and MAC counts through torch's flop counter, median latency."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prune_explorer.model.measure import ModelCost, count, latency, measure, paired_latency_ms
from prune_explorer.model.zoo import build_model


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


def hand_macs(batch: int) -> int:
    conv1 = 4 * 8 * 8 * (3 * 3 * 3)          # out channels x out pixels x (in x k x k)
    conv2 = 6 * 4 * 4 * (4 * 3 * 3)
    linear = 96 * 5
    return batch * (conv1 + conv2 + linear)


def test_count_tiny_net_matches_hand_computed_macs_and_params():
    net = tiny_net()
    cost = count(net, torch.randn(2, 3, 8, 8))
    assert cost.macs == hand_macs(batch=2)
    assert cost.params == sum(p.numel() for p in net.parameters())
    assert cost.params == (3 * 4 * 9 + 4) + (4 + 4) + (4 * 6 * 9) + (96 * 5 + 5)


def test_count_resnet18_params_and_narrowing_lowers_macs():
    model = build_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    full = count(model, x)
    assert full.params == sum(p.numel() for p in model.parameters())

    block = model.layer1[0]
    keep = 40
    old_conv1, old_conv2 = block.conv1, block.conv2
    block.conv1 = nn.Conv2d(64, keep, 3, padding=1, bias=False)
    block.bn1 = nn.BatchNorm2d(keep)
    block.conv2 = nn.Conv2d(keep, 64, 3, padding=1, bias=False)
    narrowed = count(model, x)

    removed = 64 - keep
    out_pixels = 8 * 8  # 32 px input: stem stride 2 + max-pool stride 2
    expected_drop = removed * out_pixels * 64 * 9 * 2  # conv1 outputs and conv2 inputs
    assert full.macs - narrowed.macs == expected_drop
    assert full.params - narrowed.params == (
        old_conv1.weight.numel() - block.conv1.weight.numel()
        + old_conv2.weight.numel() - block.conv2.weight.numel()
        + 2 * removed
    )


def test_count_shared_parameter_counted_once():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    cost = count(net, torch.randn(3, 4))
    assert cost.params == 4 * 4 + 4
    assert cost.macs == 2 * 3 * 4 * 4


def test_count_keeps_training_mode_and_weights_untouched():
    net = tiny_net().train()
    bn = net[1]
    before = bn.running_mean.clone()
    count(net, torch.randn(2, 3, 8, 8) + 5)
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in net.parameters())


def test_count_accepts_tuple_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(5, 2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    cost = count(TwoInputs(), (torch.randn(1, 3), torch.randn(1, 5)))
    assert cost.macs == 3 * 2 + 5 * 2


def test_latency_is_positive_float_and_restores_mode():
    net = tiny_net().train()
    ms = latency(net, torch.randn(2, 3, 8, 8), warmup=1, repeats=3)
    assert isinstance(ms, float) and ms > 0 and math.isfinite(ms)
    assert net.training


def test_latency_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        latency(tiny_net(), torch.randn(1, 3, 8, 8), repeats=0)


def test_measure_combines_count_and_latency():
    net = tiny_net()
    x1, x4 = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 8, 8)
    cost = measure(net, x1, latency_inputs=x4, warmup=0, repeats=2)
    assert isinstance(cost, ModelCost)
    assert cost.macs == hand_macs(batch=1)
    assert cost.latency_ms is not None and cost.latency_ms > 0
    assert measure(net, x1, latency=False).latency_ms is None
    assert set(cost.as_dict()) == {"params", "macs", "latency_ms"}


def test_paired_latency_gives_one_median_per_model_and_restores_modes():
    small, large = tiny_net().train(), tiny_net().eval()
    times = paired_latency_ms([small, large], torch.randn(2, 3, 8, 8), warmup=1, repeats=3)
    assert len(times) == 2 and all(isinstance(t, float) and t > 0 for t in times)
    assert small.training and not large.training
