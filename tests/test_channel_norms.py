"""Norms across channels (LayerNorm over the channel axis, LayerNorm2d, GroupNorm with several
groups) prune exactly: the pruned norm (`PrunedChannelNorm`) still counts the removed channels, as
zeros, in its statistics; norms whose module does more than normalise stay refused with the reason."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.model.exactness import TOLERANCE, check, reference_output
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.norms import PrunedChannelNorm
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune


class LayerNorm2d(nn.LayerNorm):
    """torchvision's (and timm's) channels-first LayerNorm: permutes inside its forward."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ScaledLayerNorm2d(LayerNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


class ChannelsFirstByHand(nn.Module):
    """The original ConvNeXt repository's channels-first LayerNorm: mean and variance written out."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(c)), nn.Parameter(torch.randn(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + self.bias[:, None, None]


class Stream(nn.Module):
    """A residual stream normalised across its channels by `norm`, read by a 1x1 conv branch."""

    def __init__(self, norm: nn.Module, c: int = 8, channels_last: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.norm = norm
        self.branch = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, 3)
        self.channels_last = channels_last

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if self.channels_last else self.norm(x)
        x = x + self.branch(y)
        return self.head(x.mean((2, 3)))


class ShapeBranch(Stream):
    """Python control flow on a shape: fx cannot trace it, so the graph comes from torch.export."""

    def forward(self, x):
        if x.shape[-1] > 4:
            x = F.relu(self.stem(x))
        else:
            x = self.stem(x)
        return self.head((x + self.branch(self.norm(x))).mean((2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    return model.eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
NORMS = {
    "layer_norm_channels_last": lambda: Stream(nn.LayerNorm(8), channels_last=True),
    "layer_norm_2d": lambda: Stream(LayerNorm2d(8)),
    "group_norm_4_groups": lambda: Stream(nn.GroupNorm(4, 8)),
    "group_norm_1_group": lambda: Stream(nn.GroupNorm(1, 8)),
}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norm_across_channels_prunes_exactly(name):
    model = _randomised(NORMS[name]())
    result = check(model, X)
    assert result.max_diff <= TOLERANCE and result.input_unchanged
    stream = result.graph.group("stem")
    assert stream.prunable and result.graph.slices["norm"].kind == "channel_norm"
    assert stream.id in result.removed
    pruned = result.pruned.norm
    assert isinstance(pruned, PrunedChannelNorm) and pruned.full_width == 8
    assert pruned.num_channels == 8 - len(result.removed[stream.id]) == pruned.weight.shape[0]


def test_a_plain_narrower_norm_would_not_be_exact_which_is_why_the_pruned_norm_counts_zeros():
    """Cutting the norm's weight and bias and normalising over the kept channels only differs from
    the contract's reference; the pruned model's norm does not."""
    model = _randomised(Stream(nn.LayerNorm(8), channels_last=True))
    graph = ChannelGraph.trace(model, X)
    removed = {graph.group("stem").id: [0, 3, 4]}
    pruned = prune(model, PrunePlan(removed), X, graph=graph)
    expected = reference_output(model, graph, removed, X)
    keep = [1, 2, 5, 6, 7]
    narrower = nn.LayerNorm(5)
    with torch.no_grad():
        narrower.weight.copy_(model.norm.weight[keep]), narrower.bias.copy_(model.norm.bias[keep])
        plain = prune(model, PrunePlan(removed), X, graph=graph)
        plain.norm = narrower
        assert (plain(X) - expected).abs().max() > 1e-2
        assert (pruned(X) - expected).abs().max() <= TOLERANCE


def test_layer_norm_2d_is_cut_on_its_own_input_axis():
    model = _randomised(Stream(LayerNorm2d(8)))
    graph = ChannelGraph.trace(model, X)
    member = graph.slices["norm"]
    assert member.in_axis == 1 and member.extra["axis"] == -3      # NCHW at the module, last axis inside
    pruned = prune(model, PrunePlan({"stem": [1, 6]}), X, graph=graph)
    assert pruned.norm.axis == -3 and pruned.norm.num_channels == 6


def test_group_norm_loses_different_numbers_from_each_of_its_groups_exactly():
    model = _randomised(Stream(nn.GroupNorm(4, 8)))
    graph = ChannelGraph.trace(model, X)
    stream = graph.group("stem")
    assert not stream.blocks                    # no equal-count rule: the zeros keep each group's count
    removed = {stream.id: [0, 1, 2, 5]}         # groups of 2: both of group 0, one of 1 and of 2, none of 3
    pruned = prune(model, PrunePlan(removed), X, graph=graph)
    assert pruned.norm.kept == (3, 4, 6, 7)
    with torch.no_grad():
        assert (pruned(X) - reference_output(model, graph, removed, X)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(NORMS))
def test_a_pruned_model_prunes_again_exactly(name):
    once = check(_randomised(NORMS[name]()), X).pruned
    again = check(once, X, seed=1)
    assert again.graph.slices["norm"].kind == "channel_norm" and again.max_diff <= TOLERANCE
    assert again.pruned.norm.full_width == 8
    assert again.pruned.norm.num_channels < once.norm.num_channels


@pytest.mark.parametrize("route", ["record", "export"])
@pytest.mark.parametrize("norm", [LayerNorm2d(8), nn.GroupNorm(2, 8)], ids=["layer_norm_2d", "group_norm"])
def test_recorded_and_exported_routes_prune_the_norm_and_the_pruned_norm_again(norm, route):
    model = _randomised(ShapeBranch(norm))
    assert ChannelGraph.trace(model, X).route == "record"        # fx cannot take the branch
    first = check(model, X, graph=ChannelGraph.trace(model, X, route=route))
    assert first.graph.route == route and first.graph.group("stem").prunable
    assert first.max_diff <= TOLERANCE
    again = ChannelGraph.trace(first.pruned, X, route=route)     # its PrunedChannelNorm is one call, as fx's leaf
    second = check(first.pruned, X, seed=2, graph=again)
    assert second.graph.route == route and second.graph.group("stem").prunable
    assert second.max_diff <= TOLERANCE


@pytest.mark.parametrize(("norm", "channels_last", "reason"), [
    (ScaledLayerNorm2d(8), False, "whose forward also runs"),
    (ChannelsFirstByHand(8), False, "reduces over the channel axis"),
    (nn.LayerNorm([8, 6, 6]), False, "normalises across the channels together with other dims"),
], ids=["subclass_with_more_in_forward", "written_out_by_hand", "over_channels_and_space"])
def test_norms_that_are_not_one_replaceable_norm_stay_refused_with_the_reason(norm, channels_last, reason):
    model = _randomised(Stream(norm, channels_last=channels_last))
    stream = ChannelGraph.trace(model, X).group("stem")
    assert not stream.prunable and reason in stream.reason and "norm" in stream.reason


def test_the_pruned_norm_keeps_the_original_hooks_and_training_flag():
    model = _randomised(Stream(LayerNorm2d(8)))
    seen = []
    model.norm.register_forward_hook(lambda _m, _a, out: seen.append(out.shape[1]))
    model.train()
    pruned = prune(model, PrunePlan({"stem": [0, 1, 2]}), X)
    assert pruned.norm.training and isinstance(pruned.norm, PrunedChannelNorm)
    seen.clear()                # fx ran the hook on its proxies while tracing through LayerNorm2d
    pruned(X)
    assert seen == [5]
    model(X)
    assert seen == [5, 8]


def test_pruned_norm_trains_only_its_kept_affine():
    model = _randomised(Stream(nn.GroupNorm(4, 8)))
    pruned = prune(model, PrunePlan({"stem": [0, 7]}), X).train()
    pruned(X).sum().backward()
    assert pruned.norm.weight.grad.shape == (6,) and pruned.norm.weight.grad.abs().sum() > 0
    assert model.norm.weight.grad is None


# --- an L2 norm over the channels (SSD's L2Norm) ------------------------------------------------------
class L2Normed(nn.Module):
    """SSD's L2Norm written in the forward: a learned per-channel scale times `F.normalize` over the
    channels; a second `F.normalize` over the width normalises each channel on its own."""

    def __init__(self, p=2.0, dim=1):
        super().__init__()
        self.p, self.dim = p, dim
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(8) + 1)
        self.head, self.side = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        scaled = self.scale.view(1, -1, 1, 1) * F.normalize(y, p=self.p, dim=self.dim)
        return self.head(scaled) + self.side(F.normalize(y, dim=-1))


@pytest.mark.parametrize("p", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("route", ["fx", "record"])
def test_an_l2_norm_over_the_channels_prunes_exactly_with_no_module_to_replace(route, p):
    """Removed channels as zeros add nothing to a p-norm: the pruned model's norm over the kept
    channels equals the reference's, whose removed channels are zeroed at the op's input."""
    model, x = L2Normed(p).eval(), torch.randn(2, 3, 6, 6)
    graph = ChannelGraph.trace(model, x, route=route)
    assert graph.group("conv").prunable and {"head", "side"} <= set(graph.group("conv").consumers)
    assert [(site.index, site.axis) for site in graph.zeroed_inputs] == [(0, 1)]   # the first call, not the second
    result = check(model, x, graph=graph)
    assert result.removed[graph.group("conv").id] and result.max_diff <= TOLERANCE
    assert result.pruned.scale.numel() == 8 - len(result.removed[graph.group("conv").id])
    graph.zeroed_inputs = []                       # a reference that does not zero the op's input differs
    assert check(model, x, graph=graph).max_diff > 1e-2


@pytest.mark.parametrize(("model", "route", "reason"), [
    (L2Normed(p=-1.0), None, "p=-1.0"),
    (L2Normed(dim=(1, 2)), None, "together with other dims"),
    (L2Normed(), "export", "reduces over the channel axis"),   # export spells it out as a norm, an expand, a div
])
def test_norms_over_the_channels_that_removed_channels_would_change_stay_refused(model, route, reason):
    graph = ChannelGraph.trace(model.eval(), torch.randn(2, 3, 6, 6), route=route)
    assert not graph.group("conv").prunable and reason in graph.group("conv").reason
