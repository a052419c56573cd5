"""Capture and ranking on the operator-level graph's new groups: channels-last Linear widths
(ConvNeXt) and grouped convolutions (ResNeXt) get taps, a compact trial, and a rank per channel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import rank


@pytest.mark.parametrize("name", ["convnext_tiny", "resnext50_32x4d"])
def test_compact_trial_ranks_every_prunable_group(tmp_path, name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    graph = ChannelGraph.trace(model.eval(), x)
    assert graph.prunable()
    model.train()
    with CaptureHook(model, tmp_path / "trial", mode="compact", save_every=2, graph=graph) as hook:
        for _ in range(2):
            hook.step()
            torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    model.eval()
    table = rank(model, x, trial=str(tmp_path / "trial"), criterion="taylor", graph=graph)
    assert sorted(set(table["group"])) == sorted(g.id for g in graph.prunable())
    for g in graph.prunable():
        rows = table[table["group"] == g.id]
        assert len(rows) == g.size and np.isfinite(rows["score"]).all() and (rows["score"] > 0).any(), g.name
    if name == "convnext_tiny":  # the hidden width of each block is observed on the last axis
        hidden = graph.group("features.1.0.block.3")
        assert hidden.taps and hidden.taps[0].axis == 3
    plan = PrunePlan.lowest(table, graph, n=64)
    assert len(plan.resolve(graph)) and sum(len(ix) for ix in plan.resolve(graph).values()) <= 64
    assert prune(model, plan, x, graph=graph)(x).shape == (2, 4)


def test_channels_last_compact_taylor_equals_direct_statistics(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    graph = ChannelGraph.trace(model.eval(), x)
    hidden = graph.group("features.1.0.block.3")
    tap = hidden.taps[0]
    act = dict(model.named_modules())[tap.module]
    seen = {}

    def keep(_module, _args, out):
        seen["a"] = out
        out.register_hook(lambda grad: seen.update(g=grad))

    act.register_forward_hook(keep)
    model.train()
    with CaptureHook(model, tmp_path / "t", mode="compact", save_every=1, graph=graph) as hook:
        hook.step()
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    a, g = seen["a"].detach().double(), seen["g"].double()
    direct = (a * g).mean(dim=(1, 2)).abs().sum(0) / 2     # per example mean over h, w on the last axis
    table = rank(model.eval(), x, trial=str(tmp_path / "t"), criterion="taylor", graph=graph, normalize=False)
    scores = table[table["group"] == hidden.id].sort_values("filter")["score"].to_numpy()
    assert np.allclose(scores, direct.numpy(), rtol=1e-6)
