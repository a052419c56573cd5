"""PrunePlan: validation (every refusal names the layer) and the RankTable builders."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan


@pytest.fixture(scope="module")
def graph():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    return ChannelGraph.trace(model, torch.randn(1, 3, 32, 32))


def rank_table(graph, seed=0, groups=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups or graph.prunable():
        scores = rng.random(g.size)
        for f in range(g.size):
            rows.append(dict(layer=g.name, filter=f, score=scores[f], normalized=scores[f] / np.linalg.norm(scores),
                             group=g.id, criterion="l1", steps=1))
    return pd.DataFrame(rows)


def test_resolve_maps_layers_and_ids_to_sorted_groups(graph):
    g = graph.group("layer1.0.conv1")
    plan = PrunePlan({"layer1.0.bn1": [5, 1, 3], "conv1": [2]})
    assert plan.resolve(graph) == {graph.group("conv1").id: [2], g.id: [1, 3, 5]}
    assert PrunePlan({g.id: [7]}).resolve(graph) == {g.id: [7]}
    assert PrunePlan({"layer1.0.conv1": [4, 2], "layer1.0.bn1": [2, 4]}).resolve(graph) == {g.id: [2, 4]}
    summary = PrunePlan({"layer1.0.conv1": [4, 2], 3: [1]}).summary()
    assert json.loads(json.dumps(summary)) == {"layer1.0.conv1": 2, "3": 1}


@pytest.mark.parametrize("channels, message", [
    ({"layer9.conv1": [0]}, "layer9.conv1"),
    ({"layer1.0.conv1": list(range(64))}, "layer1.0.conv1.*empty"),
    ({"layer1.0.conv1": [3, 3]}, "layer1.0.conv1.*duplicate"),
    ({"layer1.0.conv1": [64]}, "layer1.0.conv1.*out of range"),
    ({"layer1.0.conv1": [-1]}, "layer1.0.conv1.*out of range"),
    ({"fc": [0]}, "fc.*not prunable.*output"),
    ({"layer1.0.conv1": [1], "layer1.0.bn1": [2]}, "layer1.0.bn1.*layer1.0.conv1|layer1.0.conv1.*layer1.0.bn1"),
    ({"layer1.0.conv1": [1.5]}, "layer1.0.conv1.*integers"),
])
def test_refusals_name_the_layer(graph, channels, message):
    with pytest.raises(ValueError, match=message):
        PrunePlan(channels).resolve(graph)


def test_lowest_takes_global_lowest_and_respects_min_keep(graph):
    table = rank_table(graph)
    plan = PrunePlan.lowest(table, graph, n=200)
    resolved = plan.resolve(graph)
    assert sum(len(ix) for ix in resolved.values()) == 200
    chosen = {(g, f) for g, ix in resolved.items() for f in ix}
    cut = table.sort_values("normalized").head(200)
    assert chosen == set(zip(cut["group"], cut["filter"]))

    small = graph.group("layer1.0.conv1")
    table2 = table.copy()
    table2.loc[table2["group"] == small.id, "normalized"] = -1.0
    resolved = PrunePlan.lowest(table2, graph, n=100, min_keep=10).resolve(graph)
    assert len(resolved[small.id]) == small.size - 10
    assert sum(len(ix) for ix in resolved.values()) == 100


def test_lowest_internal_scheme_and_round_to(graph):
    table = rank_table(graph, seed=1)
    resolved = PrunePlan.lowest(table, graph, n=150, scheme="internal").resolve(graph)
    assert resolved and all(graph.groups[g].kind == "internal" for g in resolved)
    resolved = PrunePlan.lowest(table, graph, n=150, round_to=8).resolve(graph)
    assert 0 < sum(len(ix) for ix in resolved.values()) <= 150
    assert all((graph.groups[g].size - len(ix)) % 8 == 0 for g, ix in resolved.items())
    with pytest.raises(ValueError, match="scheme"):
        PrunePlan.lowest(table, graph, scheme="blocks")


def test_ties_keep_filter_order(graph):
    g = graph.group("layer2.0.conv1")
    table = rank_table(graph, groups=[g])
    table["normalized"] = 0.5
    plan = PrunePlan.lowest(table, graph, n=5)
    assert plan.resolve(graph) == {g.id: [0, 1, 2, 3, 4]}
    assert PrunePlan.from_counts(table, graph, {"layer2.0.bn1": 3}).resolve(graph) == {g.id: [0, 1, 2]}


def test_from_counts_removes_k_lowest_per_layer(graph):
    table = rank_table(graph, seed=2)
    plan = PrunePlan.from_counts(table, graph, {"layer1.0.conv1": 10, "layer3.1.conv1": 4})
    resolved = plan.resolve(graph)
    for layer, k in {"layer1.0.conv1": 10, "layer3.1.conv1": 4}.items():
        g = graph.group(layer)
        rows = table[table["group"] == g.id].sort_values("normalized")
        assert resolved[g.id] == sorted(rows["filter"].head(k))
    assert plan.summary() == {"layer1.0.conv1": 10, "layer3.1.conv1": 4}
    rounded = PrunePlan.from_counts(table, graph, {"layer1.0.conv1": 10}, round_to=8).resolve(graph)
    assert (64 - len(rounded[graph.group("layer1.0.conv1").id])) % 8 == 0
    with pytest.raises(ValueError, match="layer1.0.conv1.*empty"):
        PrunePlan.from_counts(table, graph, {"layer1.0.conv1": 64})
    with pytest.raises(ValueError, match="nope"):
        PrunePlan.from_counts(table, graph, {"nope": 1})


def test_module_called_for_two_groups_is_ambiguous(graph):
    with pytest.raises(ValueError, match="layer1.0.relu.*several channel groups"):
        PrunePlan({"layer1.0.relu": [1]}).resolve(graph)


def test_a_count_or_other_non_list_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"layer 'conv1': expected a list of channel indices to remove, got 5; .*"
                                         r"from_counts\(table, graph, \{'conv1': 5\}\)"):
        PrunePlan({"conv1": 5})
    with pytest.raises(ValueError, match=r"group 3: expected a list of channel indices to remove, got 'ab'"):
        PrunePlan({3: "ab"})
    with pytest.raises(ValueError, match="maps layer names"):
        PrunePlan([("conv1", [1])])
