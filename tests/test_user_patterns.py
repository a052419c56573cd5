"""Model code as users write it, from families no other test names, built from the patterns the
graph must reach: mixed-kernel (MixConv) splits, U-Net decoders, super-resolution with
PixelShuffle, an MLP-Mixer, a gMLP, Ghost modules sliced to their width, Res2Net's split
loop, a generator from Linear features, a space-to-depth stem, convs on the root's own
parameters, CSP halves sliced by attribute, and a two-stream block unbound from a view.

Goal (issue 20): at least 90 % of these models fully prunable — every channel group prunable but
the one that carries the model output and those whose width the input fixes (a token MLP's
positions) — and every random plan exact; nothing silent.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_nothing_silent
from prune_explorer.model.exactness import TOLERANCE, check


class MixedConv2d(nn.ModuleDict):
    """timm's mixed-kernel depthwise conv: channels split at unequal sizes, one kernel size each."""

    def __init__(self, channels: int, kernels=(3, 5, 7)):
        super().__init__()
        splits = [channels // len(kernels)] * len(kernels)
        splits[0] += channels - sum(splits)
        self.splits = splits
        for i, (k, c) in enumerate(zip(kernels, splits)):
            self[str(i)] = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)

    def forward(self, x):
        x_split = torch.split(x, self.splits, 1)
        return torch.cat([conv(x_split[i]) for i, conv in enumerate(self.values())], 1)


class MixBlock(nn.Module):
    def __init__(self, c: int, expand: int = 3):
        super().__init__()
        hidden = c * expand
        self.pw = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
        self.mix = MixedConv2d(hidden)
        self.bn = nn.BatchNorm2d(hidden)
        self.se_reduce, self.se_expand = nn.Conv2d(hidden, 4, 1), nn.Conv2d(4, hidden, 1)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = F.silu(self.bn(self.mix(self.pw(x))))
        y = y * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return x + self.project(y)


class MixNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(MixBlock(16), MixBlock(16))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """The milesial U-Net, two levels deep: skip concats and transposed-conv decoders."""

    def __init__(self, classes: int = 2, base: int = 8):
        super().__init__()
        self.inc = DoubleConv(3, base)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(base, 2 * base))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(2 * base, 4 * base))
        self.up1, self.up2 = Up(4 * base, 2 * base), Up(2 * base, base)
        self.outc = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        return self.outc(self.up2(self.up1(self.down2(x2), x2), x1))


class ESPCN(nn.Module):
    """Shi et al. 2016: feature maps in LR space, a sub-pixel convolution (PixelShuffle) at the end."""

    def __init__(self, scale: int = 2):
        super().__init__()
        self.feature = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.Tanh(), nn.Conv2d(32, 16, 3, padding=1),
                                     nn.Tanh())
        self.sub_pixel = nn.Sequential(nn.Conv2d(16, 8 * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.out(torch.relu(self.sub_pixel(self.feature(x))))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self, classes: int = 5, dim: int = 16, patch: int = 4, size: int = 16):
        super().__init__()
        tokens = (size // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, 12, 32) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


class SpatialGatingUnit(nn.Module):
    """gMLP: half the channels gate the other half after a Linear across the positions."""

    def __init__(self, dim: int, tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim // 2)
        self.proj = nn.Linear(tokens, tokens)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(1, 2)).transpose(1, 2)
        return u * v


class GMLP(nn.Module):
    """A gMLP over (B, T, F) sequences (sensor windows, tabular tokens): no image stem."""

    def __init__(self, features: int = 6, tokens: int = 10, dim: int = 16, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.sgu = SpatialGatingUnit(4 * dim, tokens)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.down(self.sgu(F.gelu(self.up(self.norm(x)))))
        return self.head(x.mean(1))


class GhostModule(nn.Module):
    """GhostNet: a primary conv, cheap depthwise copies, the concat sliced to `out_chs`."""

    def __init__(self, cin: int, out_chs: int, relu: bool = True):
        super().__init__()
        self.out_chs = out_chs
        init = math.ceil(out_chs / 2)
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init),
                                          nn.ReLU() if relu else nn.Identity())
        self.cheap_operation = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False),
                                             nn.BatchNorm2d(init), nn.ReLU() if relu else nn.Identity())

    def forward(self, x):
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, :self.out_chs, :, :]


class GhostNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.ghost1, self.ghost2 = GhostModule(12, 23), GhostModule(23, 12, relu=False)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.ghost2(self.ghost1(x)))


class Bottle2neck(nn.Module):
    """Res2Net: the width split into `scale` parts of `self.width`, each conv fed the previous output."""

    def __init__(self, planes: int = 8, width: int = 4, scale: int = 4):
        super().__init__()
        self.width, self.nums = width, scale - 1
        self.conv1 = nn.Conv2d(planes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        self.conv3 = nn.Conv2d(width * scale, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        for i in range(self.nums):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = F.relu(self.bns[i](self.convs[i](sp)))
            out = sp if i == 0 else torch.cat((out, sp), 1)
        out = torch.cat((out, spx[self.nums]), 1)
        return F.relu(self.bn3(self.conv3(out)) + x)


class Res2Net(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer = nn.Sequential(Bottle2neck(), Bottle2neck())
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.layer(self.stem(x)).mean((2, 3)))


class Generator(nn.Module):
    """A GAN generator: latent -> Linear -> channel map (`self.channels` x 4 x 4) -> transposed convs."""

    def __init__(self, latent: int = 8, channels: int = 16):
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(latent, channels * 16)
        self.bn0 = nn.BatchNorm2d(channels)
        self.up = nn.Sequential(nn.ConvTranspose2d(channels, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.up(F.relu(self.bn0(self.fc(z).view(z.shape[0], self.channels, 4, 4))))


class SpaceToDepthNet(nn.Module):
    """A space-to-depth stem (PixelUnshuffle), as TResNet and some SR/detection nets use."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.s2d = nn.PixelUnshuffle(2)
        self.conv = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.refine = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.PixelUnshuffle(2), nn.Conv2d(16, 16, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.refine(self.conv(self.s2d(x))).mean((2, 3)))


class FunctionalNet(nn.Module):
    """A network written functionally: its convs are parameters of the model itself."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.zeros(8))
        self.w2 = nn.Parameter(torch.randn(16, 8, 3, 3) * 0.2)
        self.w_fc = nn.Parameter(torch.randn(classes, 16) * 0.2)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.relu(F.conv2d(x, self.w2, stride=2, padding=1))
        return F.linear(x.mean((2, 3)), self.w_fc)


class CSPBlock(nn.Module):
    """Cross-stage partial: half the channels (`self.half`) skip the block, the rest go through it."""

    def __init__(self, c: int):
        super().__init__()
        self.half = c // 2
        self.body = nn.Sequential(nn.Conv2d(c - self.half, c - self.half, 3, padding=1), nn.BatchNorm2d(c - self.half),
                                  nn.ReLU())
        self.fuse = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.fuse(torch.cat([x[:, :self.half], self.body(x[:, self.half:])], dim=1))


class CSPNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.blocks = nn.Sequential(CSPBlock(12), nn.ReLU(), CSPBlock(12))
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class TwoStream(nn.Module):
    """Two streams packed in one tensor (`view(B, 2, C/2, ...)`), unbound, gated, summed."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        y = self.stem(x)
        n, c, h, w = y.shape
        a, b = y.view(n, 2, c // 2, h, w).unbind(1)
        return self.fc((a * torch.sigmoid(self.gate(b)) + b).mean((2, 3)))


MODELS = {
    "mixnet": (MixNet, (2, 3, 16, 16)),
    "unet": (UNet, (1, 3, 16, 16)),
    "espcn": (ESPCN, (1, 3, 8, 8)),
    "mlp_mixer": (MLPMixer, (2, 3, 16, 16)),
    "gmlp": (GMLP, (2, 10, 6)),
    "ghostnet": (GhostNet, (2, 3, 8, 8)),
    "res2net": (Res2Net, (2, 3, 8, 8)),
    "generator": (Generator, (2, 8)),
    "space_to_depth": (SpaceToDepthNet, (2, 3, 8, 8)),
    "functional": (FunctionalNet, (2, 3, 8, 8)),
    "cspnet": (CSPNet, (2, 3, 8, 8)),
    "two_stream": (TwoStream, (2, 3, 8, 8)),
}
TASK_FIXED = ("carries the model output", "onto the positions")   # widths the task, not the model, sets


def fully_prunable(graph) -> bool:
    return all(g.prunable or any(g.reason.startswith(r) or r in g.reason for r in TASK_FIXED) for g in graph.groups)


@pytest.mark.parametrize("name", MODELS)
def test_user_written_model_prunes_exactly(name):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(*shape)
    result = check(model, x)
    assert result.removed and result.input_unchanged
    assert result.max_diff <= TOLERANCE, result.max_diff
    graph = result.graph
    assert all(g.prunable or g.reason for g in graph.groups)
    assert_nothing_silent(model, graph)
    with torch.no_grad():
        assert result.pruned(x).shape == model(x).shape


def test_at_least_90_percent_of_them_are_fully_prunable():
    full = []
    for name, (cls, shape) in MODELS.items():
        torch.manual_seed(0)
        full.append(fully_prunable(check(cls().eval(), torch.randn(*shape)).graph))
    assert sum(full) / len(full) >= 0.9, dict(zip(MODELS, full))
