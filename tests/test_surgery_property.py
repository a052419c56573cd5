"""Property: on generated small CNNs, every random plan is either refused (ValueError) or exact."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from test_surgery_exact import TOLERANCE, randomize_norms, reference_output

BLOCKS = ("conv", "bn", "relu", "residual", "concat", "depthwise", "se", "grouped")


class Generated(nn.Module):
    """A chain of blocks on one feature map, then a flatten->linear or pool->linear head."""

    def __init__(self, blocks: list[tuple[str, int]], head: str, width: int = 4, size: int = 6):
        super().__init__()
        self.kinds = [kind for kind, _ in blocks]
        self.body = nn.ModuleList()
        c = width
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        for kind, k in blocks:
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
            else:
                block, c = nn.Conv2d(c, 2 * k, 3, padding=1, groups=2) if c % 2 == 0 else nn.Identity(), (2 * k if c % 2 == 0 else c)
            self.body.append(block)
        self.head_kind = head
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
            else:
                x = block(x)
        return self.fc(torch.flatten(self.pool(x), 1))


nets = st.tuples(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.integers(2, 6)), min_size=1, max_size=6),
    st.sampled_from(["pool", "flatten"]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets, seed=st.integers(0, 2**16), data=st.data())
def test_random_plan_is_refused_or_exact(net, seed, data):
    blocks, head = net
    torch.manual_seed(seed)
    model = Generated(blocks, head).eval()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    x = torch.randn(2, 3, 6, 6)
    graph = ChannelGraph.trace(model, x)
    channels: dict[int, list[int]] = {}
    for group in data.draw(st.lists(st.sampled_from(graph.groups), max_size=4, unique_by=lambda g: g.id)):
        channels[group.id] = data.draw(st.lists(st.integers(-1, group.size), max_size=group.size + 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        removed = PrunePlan(channels).resolve(graph)
    except ValueError as err:
        bad = [g for g, ix in channels.items() if ix and (
            not graph.groups[g].prunable or len(set(ix)) != len(ix)
            or any(not 0 <= i < graph.groups[g].size for i in ix) or len(ix) >= graph.groups[g].size)]
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
