"""ChannelGraph: groups, kinds, taps and refusals on real torchvision models and tiny nets."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prune_explorer.model.exactness import TOLERANCE, check
from prune_explorer.model.graph import ChannelGraph, Tap
from prune_explorer.model.plan import PrunePlan


@pytest.fixture(scope="module")
def resnet18_graph():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    return model, ChannelGraph.trace(model, torch.randn(1, 3, 32, 32))


def test_resnet18_block_internal_group(resnet18_graph):
    _, graph = resnet18_graph
    g = graph.group("layer1.0.conv1")
    assert g.kind == "internal" and g.prunable and g.reason is None
    assert g.producers == ("layer1.0.conv1", "layer1.0.bn1")
    assert g.consumers == ("layer1.0.conv2",)
    assert g.taps == (Tap("layer1.0.relu", 0),)
    assert g.size == 64 and g.name == "layer1.0.conv1"
    assert graph.group("layer1.0.bn1") is g


def test_resnet18_residual_stream_merges_stem_and_blocks(resnet18_graph):
    _, graph = resnet18_graph
    stem = graph.group("conv1")
    assert stem.kind == "residual" and stem.prunable
    assert graph.group("layer1.0.conv2") is stem and graph.group("layer1.1.bn2") is stem
    assert stem.taps == (Tap("relu", 0), Tap("layer1.0.relu", 1), Tap("layer1.1.relu", 1))
    stage2 = graph.group("layer2.0.downsample.0")
    assert stage2.name == "layer2.0.conv2"
    assert set(stage2.consumers) == {"layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"}
    last = graph.group("layer4.1.conv2")
    assert "fc" in last.consumers and Tap("layer4.1.relu", 1) in last.taps


def test_resnet18_output_group_and_counts(resnet18_graph):
    _, graph = resnet18_graph
    out = graph.group("fc")
    assert out.kind == "output" and not out.prunable and "output" in out.reason
    assert len(graph.prunable()) == 12
    assert len(graph.prunable("internal")) == 8
    assert len(graph.prunable("residual")) == 4
    assert [g.id for g in graph.groups] == list(range(len(graph.groups)))


def test_taps_observe_the_groups_channels_at_runtime(resnet18_graph):
    model, graph = resnet18_graph
    modules = dict(model.named_modules())
    seen: dict[tuple[str, int], int] = {}
    calls: dict[str, int] = {}

    def hook(name):
        def record(_m, _args, out):
            seen[(name, calls.get(name, 0))] = out.shape[1]
            calls[name] = calls.get(name, 0) + 1
        return record

    wanted = {t.module for g in graph.groups for t in g.taps}
    handles = [modules[n].register_forward_hook(hook(n)) for n in wanted]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    for g in graph.groups:
        assert g.taps, g.name
        for tap in g.taps:
            assert seen[(tap.module, tap.call)] == g.size, (g.name, tap)


def test_group_lookup_errors_name_the_layer(resnet18_graph):
    _, graph = resnet18_graph
    with pytest.raises(ValueError, match="layer9.conv"):
        graph.group("layer9.conv")
    with pytest.raises(ValueError, match="99"):
        graph.group(99)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.b(x))


def test_channel_shuffle_couples_the_channels_it_interleaves():
    graph = ChannelGraph.trace(Shuffle(), torch.randn(1, 3, 8, 8))
    g = graph.group("a")
    assert g.prunable and g.size == 4            # view(n, 2, c/2) -> transpose: channel i goes with i + 4
    assert graph.slices["b"].in_channel.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert graph.group("b").prunable


class FixedShuffle(Shuffle):
    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, c, h, w)   # widths written as numbers
        return self.head(self.b(x))


def test_channel_shuffle_with_written_widths_is_refused_with_the_node_named():
    g = ChannelGraph.trace(FixedShuffle(), torch.randn(1, 3, 8, 8)).group("a")
    assert not g.prunable and "view" in g.reason and "would not follow" in g.reason


class Mixed(nn.Module):
    """Channel mean, a grouped conv, an unknown leaf module and a concat in one net."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.left = nn.Conv2d(8, 4, 1)
        self.right = nn.Conv2d(8, 6, 1)
        self.norm = nn.GroupNorm(2, 10)
        self.meaned = nn.Conv2d(3, 5, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.grouped(s)
        z = torch.cat([self.left(y), self.right(y)], dim=1)
        m = self.meaned(x).mean(dim=1, keepdim=True)
        return self.head(self.norm(z)) + m


def test_refusal_reasons_name_module_or_node():
    model, x = Mixed(), torch.randn(1, 3, 8, 8)
    graph = ChannelGraph.trace(model, x)
    stem = graph.group("stem")                      # feeds a grouped conv: the same count out of each half
    assert stem.prunable and stem.blocks == ((0, 1, 2, 3), (4, 5, 6, 7)) and "'grouped'" in stem.rule
    with pytest.raises(ValueError, match=r"layer 'stem': grouped convolution 'grouped' \(groups=2\) needs the same"):
        PrunePlan({"stem": [0, 1, 4]}).resolve(graph)
    assert PrunePlan({"stem": [0, 5]}).resolve(graph) == {stem.id: [0, 5]}
    # GroupNorm(2, 10) over the concat: its groups mix both convs' channels, and still prune exactly
    assert graph.group("left").prunable and graph.group("right").prunable and graph.slices["norm"].kind == "channel_norm"
    assert "mean" in graph.group("meaned").reason
    assert check(model, x, graph=graph).max_diff <= TOLERANCE


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.dw = nn.Conv2d(10, 10, 3, groups=10)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(self.dw(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def test_concat_keeps_offsets_and_depthwise_ties():
    graph = ChannelGraph.trace(Concat(), torch.randn(1, 3, 8, 8))
    a, b = graph.group("a"), graph.group("b")
    assert a.prunable and b.prunable and a.id != b.id
    assert graph.slices["c"].inputs == ((a.id, 4), (b.id, 6))
    assert graph.slices["dw"].out == ((a.id, 4), (b.id, 6))
    assert "dw" in a.producers and "bn" in b.producers
    with pytest.raises(ValueError, match="several channel groups"):
        graph.group("bn")


def test_se_multiply_merges_gate_and_features():
    model = torchvision.models.mobilenet_v3_small(weights=None)
    graph = ChannelGraph.trace(model, torch.randn(1, 3, 64, 64))
    gate = graph.group("features.1.block.1.fc2")
    assert gate is graph.group("features.1.block.0.0")
    assert gate.kind == "internal" and gate.prunable
    assert "features.1.block.1.fc1" in gate.consumers


def test_a_model_no_route_can_run_raises_a_clear_error_naming_each_route():
    class Broken(nn.Module):
        def forward(self, x):
            return x.view(7, -1)           # 48 elements: no route can run it

    with pytest.raises(ValueError, match="Broken") as err:
        ChannelGraph.trace(Broken(), torch.randn(1, 3, 4, 4))
    assert all(route in str(err.value) for route in ("torch.fx", "a recorded forward", "torch.export"))


def test_data_dependent_python_is_recorded():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x if x.sum() > 0 else -x)

    graph = ChannelGraph.trace(DataDependent(), torch.randn(1, 3, 4, 4))
    assert graph.route == "record" and graph.group("conv").kind == "output"


def test_tracing_leaves_the_model_as_it_was_even_with_tensor_constants():
    from prune_explorer import PrunePlan, prune

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.conv(x) * torch.tensor(2.0))  # fx keeps this as `_tensor_constant0`

    model = Scaled().eval()
    before = dict(vars(model))
    x = torch.randn(2, 3, 8, 8)
    graph = ChannelGraph.trace(model, x)
    assert vars(model).keys() == before.keys()
    assert graph.group("conv").prunable and graph.group("conv").size == 8
    small = prune(model, PrunePlan({"conv": [1, 5]}), x, graph=graph)
    with torch.no_grad():
        keep = [c for c in range(8) if c not in (1, 5)]
        expected = model.head.bias[None, :, None, None] + torch.einsum(
            "oc,bchw->bohw", model.head.weight[:, keep, 0, 0], 2.0 * model.conv(x)[:, keep])
        assert torch.allclose(small(x), expected, atol=1e-5)
    assert not any(k.startswith("_tensor_constant") for k in vars(small))


class Opaque(nn.Module):
    def forward(self, x):
        return x.flip(1)


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.odd = Opaque()
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.b(self.odd(self.a(x))))


def test_nothing_silent_every_op_not_understood_refuses_naming_op_or_module():
    graph = ChannelGraph.trace(WithOpaque(), torch.randn(1, 3, 4, 4))
    assert "node flip (flip) in module odd (Opaque) is not understood" in graph.group("a").reason
    assert graph.group("b").prunable
    leaf = ChannelGraph.trace(WithOpaque(), torch.randn(1, 3, 4, 4), leaf_modules=(Opaque,))
    assert "module odd (Opaque) is not understood" in leaf.group("a").reason
    assert all(g.prunable or g.reason for g in graph.groups + leaf.groups)


class GRN(nn.Module):
    """ConvNeXt V2's global response normalisation (channels last)."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.up = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.grn = GRN(4 * c)
        self.down = nn.Linear(4 * c, c)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.down(self.grn(self.act(self.up(self.dw(x).permute(0, 2, 3, 1)))))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_grn_mixes_the_hidden_channels_and_is_refused_naming_the_reduction():
    graph = ChannelGraph.trace(ConvNeXtV2Block(), torch.randn(1, 3, 4, 4))
    hidden = graph.group("up")
    assert not hidden.prunable and "reduces over the channel axis" in hidden.reason and "grn" in hidden.reason
    stream = graph.group("stem")             # no LayerNorm here: the residual stream itself prunes
    assert stream.prunable and "dw" in stream.producers and "up" in stream.consumers


class WidthFromShape(nn.Module):
    """MaxViT's attention: its output is reshaped to the width read from its input's shape, so the
    stream it reads and the heads it writes must not be cut apart."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 8)
        self.keep = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        b, h, w, d = x.shape
        heads = self.qkv(self.norm(x)).reshape(b, h, w, 2, 4).transpose(3, 4)
        x = x + self.proj(heads.reshape(b, h, w, d))
        return self.keep(x.permute(0, 3, 1, 2))


def test_a_reshape_to_a_width_read_from_another_tensor_refuses_both():
    model, x = WidthFromShape().eval(), torch.randn(1, 3, 4, 4)
    graph = ChannelGraph.trace(model, x)
    stream, heads = graph.group("stem"), graph.group("qkv")
    assert not stream.prunable and "takes the size of dim 3 from the channels of" in stream.reason
    assert not heads.prunable
    assert check(model, x, graph=graph).max_diff <= TOLERANCE
