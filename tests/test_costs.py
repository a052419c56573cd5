"""The panel's cost model equals prune + count on every kind of group the graph makes prunable."""
from __future__ import annotations

import pytest
import torch
import torchvision

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.measure import count
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.model.costs import CostModel
from prune_explorer.model.exactness import random_plan

MODELS = {
    "resnet18": ({"num_classes": 10}, 32),
    "resnext50_32x4d": ({"num_classes": 10}, 32),       # grouped convs
    "convnext_tiny": ({"num_classes": 10}, 32),         # streams through pruned LayerNorms, channels-last Linears, layer_scale
    "regnet_y_400mf": ({"num_classes": 10}, 32),        # grouped convs + SE
    "shufflenet_v2_x0_5": ({"num_classes": 10}, 64),    # shuffles and chunks
}


def _traced(name: str):
    """A seeded, untrained zoo model, an example, its channel graph and its cost model."""
    kwargs, size = MODELS[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    graph = ChannelGraph.trace(model, x)
    return model, x, graph, CostModel(model, x, graph)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cost_model_equals_prune_and_count(name):
    model, x, graph, costs = _traced(name)
    removed = random_plan(graph, torch.Generator().manual_seed(1))
    if name.startswith("shufflenet"):   # a shuffle repeats some channels unequally: the model estimates those
        removed = {g: ix for g, ix in removed.items()
                   if all(sl.out_group is None or (sl.out_group == g).sum() in (0, graph.groups[g].size)
                          for sl in graph.slices.values())}
    assert removed
    expected = count(prune(model, PrunePlan(removed), x, graph=graph), x)
    actual = costs.cost({g: len(ix) for g, ix in removed.items()})
    assert (actual.params, actual.macs) == (expected.params, expected.macs)
    assert costs.cost({}) == costs.before


def test_cost_model_equals_prune_and_count_through_a_group_norm():
    """A GroupNorm with several groups becomes a PrunedChannelNorm: its affine shrinks, nothing else."""
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 12, 3), nn.GroupNorm(3, 12), nn.ReLU(), nn.Conv2d(12, 4, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph = ChannelGraph.trace(model, x)
    costs = CostModel(model, x, graph)
    removed = {graph.group("0").id: [0, 1, 2, 7]}
    expected = count(prune(model, PrunePlan(removed), x, graph=graph), x)
    actual = costs.cost({g: len(ix) for g, ix in removed.items()})
    assert (actual.params, actual.macs) == (expected.params, expected.macs)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_changes_one_group_at_a_time_add_up_to_the_cost_of_the_plan(name):
    """`change` (what a MACs budget asks after every filter) re-costs only the members a group
    passes through; step by step it must land where `cost` of the whole plan does."""
    model, x, graph, costs = _traced(name)
    removed = {g: len(ix) for g, ix in random_plan(graph, torch.Generator().manual_seed(2)).items()}
    params, macs, so_far = costs.before.params, costs.before.macs, {}
    for g, k in removed.items():
        for _ in range(k):
            step = costs.change(so_far, g, 1)
            params, macs = params + step.params, macs + step.macs
            so_far[g] = so_far.get(g, 0) + 1
    assert (params, macs) == (costs.cost(removed).params, costs.cost(removed).macs)
    one = costs.channel_macs()
    internal = graph.group("layer1.0.conv1")
    assert one[internal.id] == costs.before.macs - costs.cost({internal.id: 1}).macs > 0


def test_cost_model_equals_prune_and_count_on_user_patterns_given_the_channels():
    """Splits, slices, token mixing, convs on the root's parameters, pixel shuffles, transposed
    convs: given the channels (not just how many), the cost is exact even where a layer holds only
    some channels of a group (a split's part, a slice)."""
    from test_user_patterns import MODELS as PATTERNS

    for name in ("mixnet", "cspnet", "ghostnet", "mlp_mixer", "gmlp", "functional", "espcn", "unet", "res2net"):
        cls, shape = PATTERNS[name]
        torch.manual_seed(0)
        model, x = cls().eval(), torch.randn(*shape)
        graph = ChannelGraph.trace(model, x)
        removed = random_plan(graph, torch.Generator().manual_seed(3))
        expected = count(prune(model, PrunePlan(removed), x, graph=graph), x)
        actual = CostModel(model, x, graph).cost(removed)
        assert (actual.params, actual.macs) == (expected.params, expected.macs), name
