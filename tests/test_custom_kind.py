"""A layer type of the user's own, registered from outside the package as one class and one call
(`register_layer_kind`), is traced as one op, pruned exactly, costed, ranked, saved and loaded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.model import kinds
from prune_explorer.model.costs import CostModel
from prune_explorer.model.exactness import TOLERANCE, check
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.kinds import register_layer_kind, unregister_layer_kind
from prune_explorer.model.latency import LatencyTable
from prune_explorer.model.measure import count
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.store import load, save
from prune_explorer.model.surgery import prune
from prune_explorer.model.zoo import build_model
from prune_explorer.signals.ranking import rank


class GainConv2d(nn.Conv2d):
    """A conv whose kernel is scaled per filter in forward (as NF-Nets' scaled convolutions do):
    the weight it convolves with is computed, so the graph cannot slice it without being told."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain.view(-1, 1, 1, 1), self.bias, self.stride, self.padding)


class ScaledLinear(nn.Module):
    """Not a Linear subclass: its own weight, bias and per-output scale, on the last dim."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.bias = nn.Parameter(torch.randn(out_features))
        self.scale = nn.Parameter(torch.rand(out_features) + 0.5)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale[:, None], self.bias)


class GainConvKind(kinds.Conv):
    name = "gain_conv"
    module_types = (GainConv2d,)
    sliced_roles = ("weight", "bias", "gain")


class ScaledLinearKind(kinds.Linear):
    name = "scaled_linear"
    module_types = (ScaledLinear,)
    sliced_roles = ("weight", "bias", "scale")

    def expected_shapes(self, module):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,),
                "scale": (module.out_features,)}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gain = GainConv2d(8, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.mlp = ScaledLinear(12, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.gain(F.relu(self.stem(x)))))
        tokens = y.flatten(2).transpose(1, 2)                      # (B, T, 12): the ScaledLinear on the last dim
        return self.head(F.relu(self.mlp(tokens)).mean(1))


@pytest.fixture
def registered():
    register_layer_kind(GainConvKind)
    register_layer_kind(ScaledLinearKind())
    yield
    unregister_layer_kind("gain_conv")
    unregister_layer_kind("scaled_linear")


def test_unregistered_the_layers_are_refused_and_listed_with_the_reason():
    graph = ChannelGraph.trace(Net().eval(), torch.randn(2, 3, 6, 6))
    assert "not one module's parameter" in graph.unassigned["mlp"]
    assert not graph.group("stem").prunable and "gain" in graph.group("stem").reason


def test_a_registered_kind_prunes_exactly_costs_ranks_saves_and_loads(registered, tmp_path):
    model, x = build_model(f"{__name__}:Net").eval(), torch.randn(2, 3, 6, 6)
    result = check(model, x)
    graph = result.graph
    assert result.max_diff <= TOLERANCE and result.input_unchanged
    assert graph.slices["gain"].kind == "gain_conv" and graph.slices["mlp"].kind == "scaled_linear"
    assert graph.group("gain").prunable and graph.group("mlp").prunable and graph.group("stem").prunable
    assert not graph.unassigned
    pruned = result.pruned
    kept_gain = graph.group("gain").size - len(result.removed[graph.group("gain").id])
    assert pruned.gain.out_channels == kept_gain == pruned.gain.gain.numel() == pruned.bn.num_features
    assert pruned.mlp.scale.numel() == pruned.mlp.weight.shape[0] == pruned.mlp.out_features

    removed = {g: len(ix) for g, ix in result.removed.items()}
    predicted = CostModel(model, x, graph).cost(removed)
    measured = count(pruned, x)
    assert (predicted.params, predicted.macs) == (measured.params, measured.macs)

    table = rank(model, x, criterion="l1", graph=graph)
    gain = graph.group("gain")
    norms = (model.gain.weight.detach().abs().flatten(1).sum(1)).double().numpy()
    assert table[table["group"] == gain.id]["score"].tolist() == pytest.approx(norms.tolist())

    latency = LatencyTable.measure(model, x, graph, fractions=(0.5, 1.0), warmup=0, repeats=1)
    assert {"gain", "mlp"} <= set(latency.layers)          # timed at the kind's widths and channel axis

    save(pruned, tmp_path / "m")
    loaded = load(tmp_path / "m", trust_code=[__name__])
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert type(loaded.gain) is GainConv2d and loaded.mlp.out_features == pruned.mlp.out_features


def test_a_saved_custom_kind_needs_registering_before_load(registered, tmp_path):
    model, x = build_model(f"{__name__}:Net").eval(), torch.randn(2, 3, 6, 6)
    graph = ChannelGraph.trace(model, x)
    save(prune(model, PrunePlan({"gain": [0, 3]}), x, graph=graph), tmp_path / "m")
    unregister_layer_kind("gain_conv")
    with pytest.raises(ValueError, match="'gain_conv'.*register_layer_kind"):
        load(tmp_path / "m", trust_code=[__name__])


def test_registration_is_checked():
    class Nameless(kinds.Conv):
        module_types = (GainConv2d,)

    with pytest.raises(ValueError, match="built-in kind"):
        register_layer_kind(Nameless)                  # inherits "conv"
    with pytest.raises(ValueError, match="module_types"):
        register_layer_kind(type("K", (kinds.Linear,), {"name": "k", "module_types": ()}))
    with pytest.raises(ValueError, match="op is 'pool'"):
        register_layer_kind(type("K", (kinds.Linear,), {"name": "k", "module_types": (ScaledLinear,), "op": "pool"}))
