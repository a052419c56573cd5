"""Graph reach (issue 20): transposed convs, pixel (un)shuffle, unbind, slices and splits whose
widths live in module attributes (and refused where they are numbers in the code), root-owned
parameters, Linear on the last dim of (B, T, F) inputs — each pinned down on a small net."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.model.exactness import TOLERANCE, check, reference_output
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.store import load, save
from prune_explorer.model.surgery import prune
from prune_explorer.model.zoo import build_model
from prune_explorer.signals.ranking import rank


class Transposed(nn.Module):
    def __init__(self, dims: int, groups: int):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        up = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        self.a = conv(3, 8, 1)
        self.up = up(8, 8 if groups == 8 else 6, 2, stride=2, groups=groups)
        self.b = conv(self.up.out_channels, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.up(F.relu(self.a(x)))))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_transposed_convs_of_any_groups_prune_exactly(dims, groups):
    torch.manual_seed(dims * 10 + groups)
    model, x = Transposed(dims, groups).eval(), torch.randn(2, 3, *([4] * dims))
    result = check(model, x)
    assert result.max_diff <= TOLERANCE
    graph = result.graph
    kind = {1: "conv_transpose", 2: "conv_transpose", 8: "depthwise_transpose"}[groups]
    assert graph.slices["up"].kind == kind and graph.group("a").prunable
    if groups == 8:
        assert graph.group("up") is graph.group("a")          # depthwise: in and out tied
    else:
        assert graph.group("up").prunable and graph.group("up").size == 6
        assert bool(graph.group("up").blocks) == (groups == 2)
    up = result.pruned.up
    assert up.weight.shape == (up.in_channels, up.out_channels // up.groups, *up.kernel_size)


def test_l1_ranks_a_transposed_convs_filters_along_its_output_dim():
    model, x = Transposed(2, 1).eval(), torch.randn(1, 3, 4, 4)
    graph = ChannelGraph.trace(model, x)
    table = rank(model, x, criterion="l1", graph=graph)
    rows = table[table.group == graph.group("up").id]
    expected = model.up.weight.detach().abs().sum((0, 2, 3)).double().numpy()      # dim 1 is the output
    assert rows.score.tolist() == pytest.approx(expected.tolist())


class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)          # 3 channels after the shuffle, 4 filters each
        self.shuffle = nn.PixelShuffle(2)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.b(self.shuffle(self.a(x)))


def test_pixel_shuffle_ties_each_output_channel_to_its_block_of_r_squared_filters():
    model, x = PixelShuffleNet().eval(), torch.randn(1, 3, 4, 4)
    graph = ChannelGraph.trace(model, x)
    group = graph.group("a")
    assert group.prunable and group.size == 3
    assert graph.slices["a"].out_channel.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    pruned = prune(model, PrunePlan({"a": [1]}), x, graph=graph)
    assert pruned.a.out_channels == 8 and pruned.b.in_channels == 2
    with torch.no_grad():
        assert (pruned(x) - reference_output(model, graph, {group.id: [1]}, x)).abs().max() <= TOLERANCE
    assert graph.group("a").taps[0].module == "shuffle"      # one channel per position after it


class SliceByAttribute(nn.Module):
    def __init__(self, literal: bool = False, stride: int = 4):
        super().__init__()
        self.literal = literal
        self.k, self.tail = 4, 2
        self.stride = stride                   # an unrelated attribute that happens to equal a bound
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(4, 2, 1)
        self.c = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.a(x)
        head = y[:, :4] if self.literal else y[:, :self.k]
        return self.b(head) + self.c(y[:, -self.tail:])


def test_a_slice_bound_held_in_an_attribute_follows_the_pruned_width():
    model, x = SliceByAttribute().eval(), torch.randn(1, 3, 4, 4)
    graph = ChannelGraph.trace(model, x)
    assert graph.group("a").prunable and graph.slices["k"].kind == "size"
    pruned = prune(model, PrunePlan({"a": [0, 2, 5]}), x, graph=graph)
    assert (pruned.k, pruned.tail, model.k, model.tail) == (2, 1, 4, 2)
    assert pruned.b.in_channels == 2 and pruned.c.in_channels == 1
    with torch.no_grad():
        expected = reference_output(model, graph, {graph.group("a").id: [0, 2, 5]}, x)
        assert (pruned(x) - expected).abs().max() <= TOLERANCE
    with pytest.raises(ValueError, match="removes every channel of"):
        PrunePlan({"a": [4, 5]}).resolve(graph)             # the `y[:, -self.tail:]` part would be empty


def test_a_bound_written_as_a_number_is_refused_even_when_an_attribute_holds_the_same_number():
    graph = ChannelGraph.trace(SliceByAttribute(literal=True).eval(), torch.randn(1, 3, 4, 4))
    group = graph.group("a")
    assert not group.prunable and "writes the width 4 in the code" in group.reason and "getitem" in group.reason
    assert "k" not in graph.slices and "stride" not in graph.slices         # both hold 4: neither is rewritten


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = [5, 3]
        self.a = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        left, right = torch.split(self.a(x), self.sizes, dim=1)
        return self.head(torch.cat([self.left(left), self.right(right)], dim=1))


def test_split_sizes_held_in_an_attribute_are_rewritten_saved_and_loaded(tmp_path):
    model, x = build_model(f"{__name__}:SplitNet").eval(), torch.randn(1, 3, 4, 4)
    graph = ChannelGraph.trace(model, x)
    assert graph.group("a").prunable and graph.slices["sizes"].kind == "split_sizes"
    pruned = prune(model, PrunePlan({"a": [0, 1, 6]}), x, graph=graph)
    assert pruned.sizes == [3, 2] and model.sizes == [5, 3] and type(pruned.sizes) is list
    save(pruned, tmp_path / "m")
    loaded = load(tmp_path / "m", trust_code=[__name__])
    assert loaded.sizes == [3, 2]
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


class LiteralSplit(SplitNet):
    def forward(self, x):
        left, right = torch.split(self.a(x), [5, 3], dim=1)
        return self.head(torch.cat([self.left(left), self.right(right)], dim=1))


def test_split_sizes_written_as_numbers_are_refused_naming_the_split():
    group = ChannelGraph.trace(LiteralSplit().eval(), torch.randn(1, 3, 4, 4)).group("a")
    assert not group.prunable and "split" in group.reason and "[5, 3] in the code" in group.reason


class ChannelUnbind(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        r, g = self.a(x).unbind(1)
        return r * g


def test_unbind_over_the_channels_is_refused_naming_it():
    group = ChannelGraph.trace(ChannelUnbind().eval(), torch.randn(1, 3, 4, 4)).group("a")
    assert not group.prunable and "unbind" in group.reason and "one tensor per channel" in group.reason


class RootConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(F.conv2d(x, self.w, padding=1)))


def test_a_conv_on_a_parameter_of_the_root_is_a_group_named_by_the_parameter():
    model, x = RootConv().eval(), torch.randn(1, 3, 4, 4)
    result = check(model, x)
    group = result.graph.group("w")
    assert group.prunable and group.name == "w" and "w" in group.producers and not result.graph.unassigned
    assert result.max_diff <= TOLERANCE and result.pruned.w.shape[0] == 6 - len(result.removed[group.id])


class TokenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 16), nn.Linear(16, 8), nn.Linear(8, 2)

    def forward(self, x):                           # x: (B, T, F)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))).mean(1))


def test_linears_on_b_t_f_inputs_are_channel_groups():
    result = check(TokenMLP().eval(), torch.randn(2, 7, 5))
    graph = result.graph
    assert graph.group("fc1").prunable and graph.group("fc2").prunable and not graph.unassigned
    assert graph.slices["fc1"].in_group is None and graph.slices["fc2"].in_axis == 2
    assert result.max_diff <= TOLERANCE
