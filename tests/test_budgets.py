"""Budgets: `PrunePlan.lowest(target_macs=...)` / `target_latency_ms=...` cut the lowest-ranked
filters until the model fits, to within one filter's cost, or say why they cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from prune_explorer.model.costs import CostModel
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.latency import LatencyTable
from prune_explorer.model.measure import count
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.ranking import rank

MODELS = {"resnet18": 32, "resnext50_32x4d": 32}   # resnext: grouped convs keep their per-group rule


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    torch.manual_seed(0)
    model = torchvision.models.get_model(request.param, weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, MODELS[request.param], MODELS[request.param])
    graph = ChannelGraph.trace(model, x)
    costs = CostModel(model, x, graph)
    table = rank(model, x, criterion="l1", graph=graph)
    return request.param, model, x, graph, costs, table


def _largest_step(costs, graph, scheme="all") -> int:
    """The most MACs one removal step can save: one filter (one per conv group of a grouped conv's
    group) of the unpruned model, where every channel is at its dearest."""
    return max(-costs.change({}, g.id, max(1, len(g.blocks))).macs
               for g in graph.prunable("internal" if scheme == "internal" else None))


@pytest.mark.parametrize("fraction, scheme", [(0.5, "all"), (0.8, "internal"), (0.3, "all")])
def test_a_macs_target_is_met_within_one_filters_cost(setup, fraction, scheme):
    name, model, x, graph, costs, table = setup
    target = fraction * costs.before.macs
    plan = PrunePlan.lowest(table, graph, target_macs=target, costs=costs, scheme=scheme)
    pruned = prune(model, plan, x, graph=graph)            # refuses a plan that breaks a grouped conv's rule
    measured = count(pruned, x).macs
    assert measured <= target
    assert target - measured < _largest_step(costs, graph, scheme)
    assert plan.budget["reached"] == measured and plan.budget["unit"] == "macs"
    assert 0 < target - measured + 1 <= plan.budget["last_step"] + 1
    if name.startswith("resnext"):
        grouped = [g for g in graph.prunable() if g.blocks and g.id in plan.resolve(graph)]
        assert grouped, "the budget should cut grouped convs' groups too"
        for g in grouped:
            cut = set(plan.resolve(graph)[g.id])
            assert len({len(cut & set(b)) for b in g.blocks}) == 1


def test_the_lowest_ranked_filters_go_first_under_a_budget(setup):
    _, model, x, graph, costs, table = setup
    small = PrunePlan.lowest(table, graph, target_macs=0.9 * costs.before.macs, costs=costs).resolve(graph)
    large = PrunePlan.lowest(table, graph, target_macs=0.6 * costs.before.macs, costs=costs).resolve(graph)
    assert all(set(ix) <= set(large.get(g, ())) for g, ix in small.items())


def test_a_target_out_of_reach_names_the_limit(setup):
    _, model, x, graph, costs, table = setup
    with pytest.raises(ValueError, match=r"target_macs: .*cannot be reached.*scheme 'internal'.*min_keep=4.*of"):
        PrunePlan.lowest(table, graph, target_macs=0.05 * costs.before.macs, costs=costs, scheme="internal",
                         min_keep=4)
    with pytest.raises(ValueError, match="number of MACs"):
        PrunePlan.lowest(table, graph, target_macs=0.5, costs=costs)
    with pytest.raises(ValueError, match="needs costs="):
        PrunePlan.lowest(table, graph, target_macs=1e6)
    with pytest.raises(ValueError, match="one of n, target_macs"):
        PrunePlan.lowest(table, graph, n=10, target_macs=1e6, costs=costs)
    assert len(PrunePlan.lowest(table, graph, target_macs=2 * costs.before.macs, costs=costs)) == 0


def test_count_budget_keeps_its_default_of_200(setup):
    _, model, x, graph, costs, table = setup
    plan = PrunePlan.lowest(table, graph)
    assert len(plan) == 200 and plan.budget == {"unit": "filters", "target": 200, "reached": 200}


@pytest.fixture(scope="module")
def latency_setup():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = ChannelGraph.trace(model, x)
    costs = CostModel(model, x, graph)
    table = LatencyTable.measure(model, x, graph, costs, fractions=(0.25, 0.5, 1.0), warmup=1, repeats=3)
    return model, x, graph, costs, table


def test_latency_table_predicts_the_measured_whole_and_falls_with_every_cut(latency_setup):
    model, x, graph, costs, table = latency_setup
    assert table.predict(costs) == pytest.approx(table.meta["measured_total_ms"])
    timed = {sl.module for sl in graph.slices.values() if sl.kind in ("conv", "batch_norm", "linear")}
    assert {layer.module for layer in table.layers.values()} <= timed and len(table.layers) >= 40
    g = graph.group("layer2.0.conv1").id
    series = [table.predict(costs, {g: k}) for k in (0, 32, 64, 96)]
    assert series == sorted(series, reverse=True)
    assert table.change(costs, {g: 32}, g, 32) == pytest.approx(series[2] - series[1])


def test_a_latency_target_is_met_within_one_filters_predicted_cost(latency_setup, tmp_path):
    model, x, graph, costs, table = latency_setup
    ranks = rank(model, x, criterion="l2", graph=graph)
    # halfway to the fastest this table allows (what is reachable depends on the machine's load)
    fastest = table.predict(costs, {g.id: g.size - 8 for g in graph.prunable()})
    target = (table.predict(costs) + fastest) / 2
    plan = PrunePlan.lowest(ranks, graph, target_latency_ms=target, costs=costs, latency=table, min_keep=8)
    removed = {g: len(ix) for g, ix in plan.resolve(graph).items()}
    predicted = table.predict(costs, removed)
    assert predicted == pytest.approx(plan.budget["reached"]) and predicted <= target
    assert target - predicted <= plan.budget["last_step"]
    # measured on the base, the table serves the pruned model too (module names stay)
    table.save(tmp_path / "latency.json")
    again = LatencyTable.load(tmp_path / "latency.json")
    pruned = prune(model, plan, x, graph=graph)
    child = CostModel(pruned, x, ChannelGraph.trace(pruned, x))
    assert again.predict(child) == pytest.approx(predicted)
    with pytest.raises(ValueError, match="target_latency_ms: .*cannot be reached"):
        PrunePlan.lowest(ranks, graph, target_latency_ms=1e-6, costs=costs, latency=table)


def test_a_latency_table_refuses_a_wider_model_and_a_broken_file(latency_setup, tmp_path):
    model, x, graph, costs, table = latency_setup
    wide = torchvision.models.resnet18(weights=None, num_classes=100).eval()     # fc: 100 outputs, not 10
    wide_costs = CostModel(wide, x, ChannelGraph.trace(wide, x))
    with pytest.raises(ValueError, match=r"layer 'fc' is 100x512 wide but the table was measured up to 10x512"):
        table.predict(wide_costs)
    (tmp_path / "bad.json").write_text('{"format": 1, "rest_ms": 1.0}')
    with pytest.raises(ValueError, match="bad.json: latency table lacks field"):
        LatencyTable.load(tmp_path / "bad.json")
    assert np.isfinite(table.rest_ms)
