"""Property: on generated small nets, every random plan is either refused (ValueError) or exact.

Blocks cover what third-party code does: grouped convs, channels-last blocks (permute, LayerNorm,
Linear on the last axis, a per-channel gamma), channels-first LayerNorm2d and GroupNorm across
channels (all prunable: a norm across channels becomes a PrunedChannelNorm), channel shuffles,
chunks, conv/norm subclasses that call the functional op on their own parameters, a
shape-dependent branch (which fx cannot trace, so those nets go through torch.export), U-Net
steps (a strided conv, a transposed conv back, a skip concat), pixel shuffle and unshuffle, unbind
of a view's parts, slices and splits at unequal sizes held in module attributes (and split sizes
written as numbers, refused), convs on parameters of the root module, token-mixing Linears over
the flattened positions, and Linear features reshaped into a channel map. A second property runs
token MLPs on (B, T, F) inputs. Every conv and linear is in a group or listed with a reason.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import assert_nothing_silent
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.model.exactness import TOLERANCE, check, randomize_norms, reference_output

BLOCKS = ("conv", "bn", "relu", "residual", "concat", "depthwise", "se", "grouped", "channels_last", "shuffle",
          "chunk", "subclass", "shape_branch", "layer_norm_2d", "group_norm", "unet", "pixel_shuffle",
          "pixel_unshuffle", "unbind", "slice", "split", "literal_split", "root_param", "token_mix", "fc_map")
EVEN = ("grouped", "shuffle", "chunk", "group_norm", "unbind")


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


class UNetStep(nn.Module):
    """Down by a strided conv, up by a transposed conv (grouped when it can be), then the skip concat."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c, k, 3, stride=2, padding=1), nn.BatchNorm2d(k), nn.ReLU())
        self.up = nn.ConvTranspose2d(k, k, 2, stride=2, groups=2 if k % 2 == 0 else 1)
        self.bn = nn.BatchNorm2d(k)

    def forward(self, x):
        return torch.cat([x, self.bn(self.up(self.down(x)))], dim=1)


class PixelShuffleStep(nn.Module):
    """ESPCN's upsampling (conv to C r², pixel shuffle), then a strided conv back to the map's size."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.expand = nn.Conv2d(c, 4 * k, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.back = nn.Conv2d(k, c, 2, stride=2)

    def forward(self, x):
        return x + self.back(torch.relu(self.shuffle(self.expand(x))))


class PixelUnshuffleStep(nn.Module):
    def __init__(self, c: int, k: int):
        super().__init__()
        self.mix = nn.Conv2d(4 * c, k, 1)
        self.bn = nn.BatchNorm2d(4 * c)
        self.up = nn.ConvTranspose2d(k, c, 2, stride=2)

    def forward(self, x):
        return x + self.up(self.mix(self.bn(F.pixel_unshuffle(x, 2))))


class UnbindStep(nn.Module):
    """A view into two halves, unbound: each half goes its own way, channel i with channel i + C/2."""

    def __init__(self, c: int):
        super().__init__()
        self.gate = nn.Conv2d(c // 2, c // 2, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        a, b = x.view(n, 2, c // 2, h, w).unbind(1)
        return torch.cat([a * torch.sigmoid(self.gate(b)), b], dim=1)


class SliceStep(nn.Module):
    """GhostNet's module: a conv, a cheap depthwise copy, the concat sliced to `self.out` channels."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.out = c + k - 1
        self.primary = nn.Conv2d(c, (self.out + 1) // 2 + 1, 1)
        self.cheap = nn.Conv2d(self.primary.out_channels, self.primary.out_channels, 3, padding=1,
                               groups=self.primary.out_channels)

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, :self.out]


class SplitStep(nn.Module):
    """MixConv: channels split at unequal sizes (a module attribute), one kernel size per part."""

    def __init__(self, c: int):
        super().__init__()
        self.sizes = [c - c // 3, c // 3] if c >= 3 else [c]
        self.convs = nn.ModuleList(nn.Conv2d(n, n, 2 * i + 1, padding=i, groups=n) for i, n in enumerate(self.sizes))

    def forward(self, x):
        parts = torch.split(x, self.sizes, dim=1)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=1)


class LiteralSplit(nn.Module):
    """Split sizes written as numbers in the code: refused, naming the split."""

    def __init__(self, c: int):
        super().__init__()
        self.pre = nn.Conv2d(c, 6, 1)
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.pre(x), [4, 2], dim=1)
        return torch.cat([self.a(a), self.b(b)], dim=1)


class TokenMix(nn.Module):
    """MLP-Mixer's token mixing: the positions flattened, a Linear over them and back, channels passed through."""

    def __init__(self, c: int, k: int, positions: int = 36):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.mix1 = nn.Linear(positions, 2 * k)
        self.mix2 = nn.Linear(2 * k, positions)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2)         # (B, C, T)
        return x + self.mix2(F.gelu(self.mix1(tokens))).view(n, c, h, w)


class FeatureMap(nn.Module):
    """Pooled features through a Linear, viewed as a channel map (`self.c` channels) that gates the input."""

    def __init__(self, c: int, positions: int = 36):
        super().__init__()
        self.c = c
        self.fc = nn.Linear(c, c * positions)

    def forward(self, x):
        n, _, h, w = x.shape
        return x * torch.sigmoid(self.fc(x.mean((2, 3))).view(n, self.c, h, w))


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
            if kind in EVEN and c % 2:
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
            elif kind == "unet":
                block, c = UNetStep(c, k), c + k
            elif kind == "pixel_shuffle":
                block = PixelShuffleStep(c, k)
            elif kind == "pixel_unshuffle":
                block = PixelUnshuffleStep(c, k)
            elif kind == "unbind":
                block = UnbindStep(c)
            elif kind == "slice":
                block = SliceStep(c, k)
                c = block.out
            elif kind == "split":
                block = SplitStep(c)
            elif kind == "literal_split":
                block, c = LiteralSplit(c), 6
            elif kind == "root_param":
                block = nn.Identity()
                self.register_parameter(f"w{len(self.body)}", nn.Parameter(torch.randn(k, c, 3, 3) * 0.3))
                c = k
            elif kind == "token_mix":
                block = TokenMix(c, k)
            elif kind == "fc_map":
                block = FeatureMap(c)
            else:
                block = ShapeBranch(c)
            self.kinds.append(kind)
            self.body.append(block)
        self.pool = nn.AdaptiveAvgPool2d(1 if head == "pool" else 2)
        self.fc = nn.Linear(c * (1 if head == "pool" else 4), 3)

    def forward(self, x):
        x = self.stem(x)
        for i, (kind, block) in enumerate(zip(self.kinds, self.body)):
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
            elif kind == "root_param":
                x = F.relu(F.conv2d(x, getattr(self, f"w{i}"), padding=1))
            else:
                x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


nets = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.integers(2, 6)), min_size=1, max_size=6),
    st.sampled_from(["pool", "flatten"]),
)


def empties_a_part(graph, channels: dict[int, list[int]]) -> bool:
    return any(keep.emptied({g: ix for g, ix in channels.items() if not breaks_a_rule(graph.groups[g], ix)})
               for keep in graph.keep)


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
    assert graph.route == ("export" if "shape_branch" in model.kinds else "fx")
    assert all(g.prunable or g.reason for g in graph.groups)
    assert not any("normalises across the channels" in (g.reason or "") for g in graph.groups)
    assert_nothing_silent(model, graph)
    if "literal_split" in model.kinds:     # split sizes written as numbers: refused, naming the op
        assert any("split" in (g.reason or "") and "[4, 2]" in g.reason for g in graph.groups)
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
        assert bad or empties_a_part(graph, channels), f"refused a valid plan: {err}"
        assert any(graph.groups[g].name in str(err) for g in bad or channels)
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


class TokenMLP(nn.Module):
    """A token MLP on (B, T, F) inputs: Linears on the last dim, LayerNorm, a residual stream, a
    token-mixing Linear over T (channels passed through), pooled over T into the head."""

    def __init__(self, layers: list[tuple[str, int]], features: int = 5, tokens: int = 7):
        super().__init__()
        self.kinds = [kind for kind, _ in layers]
        self.inp = nn.Linear(features, 6)
        self.body = nn.ModuleList()
        for kind, k in layers:
            if kind == "mlp":
                self.body.append(nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 2 * k), nn.GELU(), nn.Linear(2 * k, 6)))
            elif kind == "token":
                self.body.append(nn.Sequential(nn.Linear(tokens, k), nn.GELU(), nn.Linear(k, tokens)))
            else:
                self.body.append(nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.inp(x)
        for kind, block in zip(self.kinds, self.body):
            if kind == "token":
                x = x + block(x.transpose(1, 2)).transpose(1, 2)
            elif kind == "mlp":
                x = x + block(x)
            else:
                x = F.relu(block(x))
        return self.head(x.mean(1))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(st.tuples(st.sampled_from(["mlp", "token", "linear"]), st.integers(2, 5)), min_size=1,
                       max_size=4), seed=st.integers(0, 2**16))
def test_token_mlps_on_b_t_f_inputs_prune_exactly(layers, seed):
    torch.manual_seed(seed)
    model = TokenMLP(layers).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 7, 5)
    result = check(model, x, seed=seed)
    assert result.max_diff <= TOLERANCE and result.input_unchanged
    assert_nothing_silent(model, result.graph)
    hidden = [g for g in result.graph.prunable() if g.name in {f"body.{i}.1" for i, k in enumerate(model.kinds)
                                                               if k == "mlp"} | {f"body.{i}.0" for i, k in
                                                                                 enumerate(model.kinds) if k == "token"}]
    assert len(hidden) == sum(k in ("mlp", "token") for k in model.kinds)     # every hidden width prunes
    assert result.graph.group("inp").prunable                                  # and the residual stream
