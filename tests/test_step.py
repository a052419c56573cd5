"""The step module (`loop.step`): its plan builder is the one the loop, the panel and the CLI use — a
filter count, a MACs target and a latency target each give `PrunePlan.lowest`'s plan — and a target
it cannot build says why. The whole step on a workspace is in test_workspace.py."""
from __future__ import annotations

import pytest
import torch
import torchvision

from prune_explorer.loop.step import StepTarget, needs_trial, plan_cut
from prune_explorer.model.costs import CostModel
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.latency import LatencyTable
from prune_explorer.model.plan import PrunePlan
from prune_explorer.signals.ranking import rank


@pytest.fixture(scope="module")
def ranked():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = ChannelGraph.trace(model, x)
    return model, x, graph, CostModel(model, x, graph), rank(model, x, criterion="l1", graph=graph)


@pytest.mark.parametrize("scheme", ["all", "internal"])
def test_a_filter_count_and_a_macs_target_plan_as_prune_plan_lowest_does(ranked, scheme):
    _, _, graph, costs, table = ranked
    by_count = plan_cut(table, graph, scheme=scheme, n=150)
    assert by_count.channels == PrunePlan.lowest(table, graph, n=150, scheme=scheme).channels
    assert sum(map(len, by_count.channels.values())) == 150
    by_macs = plan_cut(table, graph, scheme=scheme, target=StepTarget("macs", fraction=0.6), costs=costs)
    expected = PrunePlan.lowest(table, graph, scheme=scheme, costs=costs, target_macs=0.6 * costs.before.macs)
    assert by_macs.channels == expected.channels and by_macs.budget == expected.budget
    assert costs.cost({g: len(ix) for g, ix in by_macs.resolve(graph).items()}).macs <= 0.6 * costs.before.macs


def test_a_latency_target_plans_to_the_tables_prediction(ranked):
    model, x, graph, costs, table = ranked
    latency = LatencyTable.measure(model, x, graph, costs)
    # halfway to the fastest this table allows (what is reachable depends on the machine's load)
    fastest = latency.predict(costs, {g.id: g.size - 1 for g in graph.prunable()})
    fraction = (1 + fastest / latency.predict(costs)) / 2
    plan = plan_cut(table, graph, scheme="all", target=StepTarget("latency_ms", fraction=fraction), costs=costs,
                    latency=latency)
    expected = PrunePlan.lowest(table, graph, scheme="all", costs=costs, latency=latency,
                                target_latency_ms=fraction * latency.predict(costs))
    assert plan.channels == expected.channels and plan.budget["unit"] == "latency_ms"
    with pytest.raises(ValueError, match="latency table"):
        plan_cut(table, graph, scheme="all", target=StepTarget("latency_ms", fraction=fraction), costs=costs)


def test_a_target_without_costs_or_with_an_unknown_unit_is_refused(ranked):
    _, _, graph, costs, table = ranked
    with pytest.raises(ValueError, match="needs the model's costs"):
        plan_cut(table, graph, scheme="all", target=StepTarget("macs", fraction=0.5))
    with pytest.raises(ValueError, match="'params'"):
        plan_cut(table, graph, scheme="all", target=StepTarget("params", fraction=0.5), costs=costs)


def test_an_overall_target_takes_the_same_ratio_at_every_step_and_lands_on_it():
    target, cost = 100.0, 1000.0
    for steps in (3, 2, 1):
        cost = StepTarget("macs", final=target, steps=steps).value(cost)
    assert cost == pytest.approx(target)
    assert StepTarget("macs", fraction=0.25).value(80.0) == 20.0


def test_only_the_weight_norms_rank_without_a_trial():
    assert not needs_trial("l1") and not needs_trial("l2")
    assert needs_trial("taylor") and needs_trial("l1", criterion_fn=lambda *a: None)
