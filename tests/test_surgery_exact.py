"""Exactness contract: pruned(x) == original(x) with the removed channels zeroed at every consumer."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.exactness import TOLERANCE, check as exactness_check
from prune_explorer.model.surgery import prune



def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_consistent_shapes(model: nn.Module) -> None:
    """Module attributes agree with the (sliced) tensors they hold."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            assert mod.weight.shape[0] == mod.out_channels, name
            assert mod.weight.shape[1] * mod.groups == mod.in_channels, name
        elif isinstance(mod, nn.Linear):
            assert tuple(mod.weight.shape) == (mod.out_features, mod.in_features), name
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            assert mod.running_mean.shape[0] == mod.num_features, name


def check_exact(model: nn.Module, x: torch.Tensor, seed: int = 0, graph: ChannelGraph | None = None):
    """Prune every prunable group at random and assert the exactness contract; returns the graph."""
    result = exactness_check(model, x, seed=seed, graph=graph)
    assert result.removed, "no prunable group to test"
    graph, pruned, removed = result.graph, result.pruned, result.removed
    assert result.input_unchanged, "input model changed"
    assert n_params(pruned) < n_params(model)
    assert_consistent_shapes(pruned)
    new_modules = dict(pruned.named_modules())
    for gid, ix in removed.items():
        group = graph.groups[gid]
        first = next((s for s in graph.slices.values() if gid in s.out_touches and s.kind in ("conv", "linear")
                      and s.out_group.size == group.size), None)
        if first is not None:
            assert getattr(new_modules[first.module], first.params["weight"]).shape[0] == group.size - len(ix), first
    assert result.max_diff <= TOLERANCE, result.max_diff
    return graph


ZOO = {
    "resnet18": {},
    "resnet50": {},
    "vgg11_bn": {"num_classes": 10},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "densenet121": {},
    "efficientnet_b0": {},
    "squeezenet1_1": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "regnet_y_400mf": {},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_torchvision_model_prunes_exactly(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **ZOO[name])
    x = torch.randn(1, 3, 64, 64)
    graph = check_exact(model, x)
    assert all(g.kind != "output" or not g.prunable for g in graph.groups)


def test_shufflenet_shuffles_and_chunks_prune_exactly():
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x1_0(weights=None)
    x = torch.randn(1, 3, 64, 64)
    graph = check_exact(model, x)
    stage = graph.group("stage4.0.branch1.2")     # both branches of a stride-2 block, tied by the shuffle
    assert stage is graph.group("stage4.0.branch2.5") and stage.prunable
    assert stage.size == 29 and graph.group("stage4.0.branch2.0").size == 232
    assert graph.group("stage2.0.branch1.2").size == 7   # chunks balanced by merging channel classes
    # each stride-1 block ties the passed-on half to the new branch (the shuffle), doubling how often
    # a channel recurs; after stage 3's eight blocks one channel is all that is left
    tied = graph.group("stage3.0.branch1.2")
    assert not tied.prunable and "tie all its 1276 channels into one" in tied.reason


def test_linear_after_flatten_sliced_by_spatial_blocks():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    x = torch.randn(2, 3, 6, 6)
    graph = check_exact(model, x, seed=3)
    assert graph.slices["4"].in_factor == 16


def test_round_to_refuses_counts_that_are_not_multiples():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    graph = ChannelGraph.trace(model, x)
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        prune(model, PrunePlan({"layer1.0.conv1": [0, 1, 2]}), x, graph=graph, round_to=8)
    pruned = prune(model, PrunePlan({"layer1.0.conv1": list(range(8))}), x, graph=graph, round_to=8)
    assert pruned.layer1[0].conv1.out_channels == 56


def test_pruned_model_trains_and_keeps_requires_grad():
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    model.conv1.weight.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    pruned = prune(model, PrunePlan({"conv1": [0, 5], "layer2.0.conv1": [1]}), x)
    assert not pruned.conv1.weight.requires_grad
    assert pruned.layer2[0].conv1.weight.requires_grad
    pruned.train()
    pruned(x).sum().backward()
    assert pruned.fc.weight.grad is not None
    assert pruned.layer1[0].conv1.weight.shape[1] == 62


def test_resnext_grouped_convs_prune_exactly_keeping_groups():
    model = torchvision.models.resnext50_32x4d(weights=None, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    graph = check_exact(model, x)
    inner = graph.group("layer1.0.conv1")                 # feeds conv2, groups=32
    assert inner.prunable and len(inner.blocks) == 32 and "layer1.0.conv2" in inner.rule
    with pytest.raises(ValueError, match=r"layer 'layer1\.0\.conv1': grouped convolution 'layer1\.0\.conv2'"):
        PrunePlan({"layer1.0.conv1": [0]}).resolve(graph)


def test_convnext_streams_and_hidden_widths_prune_exactly():
    """Its residual streams pass LayerNorm2d (stem, downsampling, head) and channels-last LayerNorms
    (every block): cut, each becomes a PrunedChannelNorm that still counts the removed channels."""
    from prune_explorer.model.exactness import conv_filters
    from prune_explorer.model.norms import PrunedChannelNorm

    model = torchvision.models.convnext_tiny(weights=None, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    result = exactness_check(model, x)
    assert result.max_diff <= TOLERANCE and result.input_unchanged
    graph = result.graph
    hidden = graph.group("features.1.0.block.3")          # Linear(C, 4C) on the last axis -> GELU -> Linear
    assert hidden.prunable and hidden.size == 384 and hidden.consumers == ("features.1.0.block.5",)
    stream = graph.group("features.0.0")                  # stem conv -> LayerNorm2d -> every block of stage 1
    assert stream.prunable and stream.kind == "residual" and stream is graph.group("features.1.0.block.0")
    assert {"features.0.1", "features.1.0.block.2", "features.2.0"} <= set(stream.consumers)
    assert graph.slices["features.0.1"].kind == graph.slices["features.1.0.block.2"].kind == "channel_norm"
    assert "features.1.0.layer_scale" in graph.slices and graph.slices["features.1.0.layer_scale"].kind == "channel_param"
    assert conv_filters(graph)[0] == conv_filters(graph)[1]
    pruned = dict(result.pruned.named_modules())
    assert isinstance(pruned["features.0.1"], PrunedChannelNorm) and pruned["features.0.1"].axis == -3
    assert isinstance(pruned["features.1.0.block.2"], PrunedChannelNorm) and pruned["features.1.0.block.2"].axis == -1
    assert_consistent_shapes(result.pruned)
    again = exactness_check(result.pruned, x, seed=1)     # the next iteration prunes the pruned norms again
    assert again.max_diff <= TOLERANCE and again.graph.group("features.0.0").prunable


def test_vit_mlp_widths_prune_exactly_and_attention_is_refused():
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    graph = check_exact(model, x)
    mlp = graph.group("encoder.layers.encoder_layer_0.mlp.0")
    assert mlp.prunable and mlp.size == 3072 and len(graph.prunable()) == 12
    attention = graph.group("encoder.layers.encoder_layer_0.self_attention")
    assert not attention.prunable and "attention heads are out of scope" in attention.reason


def test_channels_last_stream_without_layer_norm_prunes_exactly():
    from test_graph import ConvNeXtV2Block

    graph = check_exact(ConvNeXtV2Block(c=6), torch.randn(2, 3, 5, 5))
    assert graph.group("stem").prunable and not graph.group("up").prunable
