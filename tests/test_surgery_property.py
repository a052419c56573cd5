"""Property: on generated small nets, every random plan is either refused (ValueError) or exact.

Blocks cover what third-party code does: grouped convs, channels-last blocks (permute, LayerNorm,
Linear on the last axis, a per-channel gamma), channels-first LayerNorm2d and GroupNorm across
channels (all prunable: a norm across channels becomes a PrunedChannelNorm), channel shuffles,
chunks, conv/norm subclasses that call the functional op on their own parameters, and a
shape-dependent branch (which fx cannot trace, so those nets go through a recorded forward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.model.exactness import TOLERANCE, randomize_norms, reference_output

BLOCKS = ("conv", "bn", "relu", "residual", "concat", "depthwise", "se", "grouped", "channels_last", "shuffle",
          "chunk", "subclass", "shape_branch", "layer_norm_2d", "group_norm")


class FunctionalConv(nn.Conv2d):
    """Like EfficientNet-Lite's Conv2dStaticSamePadding: a Conv2d subclass calling F.conv2d itself."""

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class FunctionalNorm(nn.BatchNorm2d):
    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt norm: channels first, permuted inside its forward."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, permute, LayerNorm, Linear x4, GELU, Linear, gamma, permute."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.randn(c))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(self.act(self.up(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ShapeBranch(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export specialises it."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        if x.shape[-1] > 4:
            return F.relu(self.conv(x))
        return self.conv(x)


def shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class Generated(nn.Module):
    """A chain of blocks on one feature map, then a flatten->linear or pool->linear head."""

    def __init__(self, blocks: list[tuple[str, int]], head: str, width: int = 4):
        super().__init__()
        self.kinds = []
        self.body = nn.ModuleList()
        c = width
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        for kind, k in blocks:
            if kind in ("grouped", "shuffle", "chunk", "group_norm") and c % 2:
                kind = "conv"
            if kind == "conv":
                block, c = nn.Conv2d(c, k, 3, padding=1), k
            elif kind == "bn":
                block = nn.BatchNorm2d(c)
            elif kind == "relu":
                block = nn.ReLU()
            elif kind == "residual":
                block = nn.Sequential(nn.Conv2d(c, k, 1), nn.BatchNorm2d(k), nn.ReLU(), nn.Conv2d(k, c, 3, padding=1))
            elif kind == "concat":
                block, c = nn.Conv2d(c, k, 1), c + k
            elif kind == "depthwise":
                block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c))
            elif kind == "se":
                block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, k, 1), nn.ReLU(), nn.Conv2d(k, c, 1))
            elif kind == "grouped":
                block, c = nn.Conv2d(c, 2 * k, 3, padding=1, groups=2), 2 * k
            elif kind == "channels_last":
                block = ChannelsLast(c)
            elif kind in ("shuffle", "chunk"):
                block = nn.Conv2d(c // 2, c // 2, 1)
            elif kind == "layer_norm_2d":
                block = LayerNorm2d(c)
            elif kind == "group_norm":
                block = nn.GroupNorm(2, c)
            elif kind == "subclass":
                block, c = nn.Sequential(FunctionalConv(c, k, 3), FunctionalNorm(k)), k
            else:
                block = ShapeBranch(c)
            self.kinds.append(kind)
            self.body.append(block)
        self.pool = nn.AdaptiveAvgPool2d(1 if head == "pool" else 2)
        self.fc = nn.Linear(c * (1 if head == "pool" else 4), 3)

    def forward(self, x):
        x = self.stem(x)
        for kind, block in zip(self.kinds, self.body):
            if kind == "residual":
                x = x + block(x)
            elif kind == "concat":
                x = torch.cat([x, block(x)], dim=1)
            elif kind == "se":
                x = x * torch.sigmoid(block(x))
            elif kind == "shuffle":
                a, b = x.chunk(2, dim=1)
                x = shuffle(torch.cat([a, block(b)], dim=1))
            elif kind == "chunk":
                a, b = torch.chunk(x, 2, dim=1)
                x = torch.cat([block(a), b], dim=1)
            else:
                x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


nets = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.integers(2, 6)), min_size=1, max_size=6),
    st.sampled_from(["pool", "flatten"]),
)


def breaks_a_rule(group, indices: list[int]) -> bool:
    if not indices:
        return False
    if not group.prunable or len(set(indices)) != len(indices) or len(indices) >= group.size:
        return True
    if any(not 0 <= i < group.size for i in indices):
        return True
    if group.blocks:
        counts = {len(set(indices) & set(b)) for b in group.blocks}
        return len(counts) > 1
    return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets, seed=st.integers(0, 2**16), data=st.data())
def test_random_plan_is_refused_or_exact(net, seed, data):
    blocks, head = net
    torch.manual_seed(seed)
    model = Generated(blocks, head).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 3, 6, 6)
    graph = ChannelGraph.trace(model, x)
    assert graph.route == ("record" if "shape_branch" in model.kinds else "fx")
    assert all(g.prunable or g.reason for g in graph.groups)
    assert not any("normalises across the channels" in (g.reason or "") for g in graph.groups)
    channels: dict[int, list[int]] = {}
    for group in data.draw(st.lists(st.sampled_from(graph.groups), max_size=4, unique_by=lambda g: g.id)):
        if group.blocks and data.draw(st.booleans()):   # often a plan that keeps the grouped conv's rule
            k = data.draw(st.integers(0, min(len(b) for b in group.blocks)))
            channels[group.id] = [i for b in group.blocks for i in b[:k]]
        else:
            channels[group.id] = data.draw(st.lists(st.integers(-1, group.size), max_size=group.size + 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        removed = PrunePlan(channels).resolve(graph)
    except ValueError as err:
        bad = [g for g, ix in channels.items() if breaks_a_rule(graph.groups[g], ix)]
        assert bad, f"refused a valid plan: {err}"
        assert any(graph.groups[g].name in str(err) for g in bad)
        return
    pruned = prune(model, PrunePlan(channels), x, graph=graph)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        actual = pruned(x)
    expected = reference_output(model, graph, removed, x)
    assert (actual - expected).abs().max().item() <= TOLERANCE
    removed_total = sum(len(ix) for ix in removed.values())
    if removed_total:
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
