"""The exactness contract as code (DESIGN.md): the reference a pruned model must equal, and the
random plans the tests and `benchmarks/zoo.py` check it with.

Reference: the original model with the removed channels forced to zero at every consumer's input
(a forward pre-hook on each consumer module, along that consumer's channel axis).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .graph import ChannelGraph
from .kinds import KINDS, recorded_kind

TOLERANCE = 1e-4


@dataclass
class Checked:
    graph: ChannelGraph
    removed: dict[int, list[int]]
    pruned: nn.Module
    max_diff: float
    input_unchanged: bool


# torchvision models over ~1 GB of float32 weights: left out of the zoo sweep in CI
LARGE_TORCHVISION = ("regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32")


def torchvision_example(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision classification model (random init, seed 0) and a small input it accepts."""
    import torchvision

    kwargs: dict = {"weights": None}
    size = 64
    if name.startswith("vit_"):
        kwargs["image_size"] = size = 32
    elif name == "maxvit_t":      # its block partitions need 224
        size = 224
    elif name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=False)
        size = 80 if name == "inception_v3" else 64
    torch.manual_seed(0)
    return torchvision.models.get_model(name, **kwargs), torch.randn(1, 3, size, size)


def randomize_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Random norm statistics and affine (every module whose layer kind `normalizes`: batch, layer and
    group norms), so a wrong slice cannot hide behind identity norms."""
    with torch.no_grad():
        for mod in model.modules():
            kind = recorded_kind(mod)
            if kind is None or not kind.normalizes:
                continue
            mean, var = getattr(mod, "running_mean", None), getattr(mod, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(torch.randn(mean.shape, generator=gen) * 0.5)
                var.copy_(torch.rand(var.shape, generator=gen) + 0.5)
            for t in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
                if isinstance(t, torch.Tensor):
                    t.copy_(torch.randn(t.shape, generator=gen))


def randomize_channel_params(model: nn.Module, graph: ChannelGraph, gen: torch.Generator) -> None:
    """Random per-channel multipliers the graph slices (ConvNeXt's layer_scale starts at 1e-6, which
    would scale any error in its block below the tolerance)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for sl in graph.slices.values():
            if KINDS[sl.kind].multiplies and sl.module in modules:
                t = getattr(modules[sl.module], sl.params["tensor"])
                t.copy_(torch.randn(t.shape, generator=gen))


def check(model: nn.Module, x: Any, seed: int = 0, graph: ChannelGraph | None = None) -> Checked:
    """Random norms, a random plan on every prunable group, prune, and the largest difference from
    the reference (eval mode; the model's norms are randomised in place)."""
    from .plan import PrunePlan
    from .surgery import prune

    gen = torch.Generator().manual_seed(seed)
    randomize_norms(model, gen)
    model.eval()
    graph = graph or ChannelGraph.trace(model, x)
    randomize_channel_params(model, graph, gen)
    removed = random_plan(graph, gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, PrunePlan(removed), x, graph=graph).eval()
    after = model.state_dict()
    unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    expected = reference_output(model, graph, removed, x)
    with torch.no_grad():
        actual = pruned(x)
    if actual.shape != expected.shape:
        raise AssertionError(f"pruned output has shape {tuple(actual.shape)}, the reference {tuple(expected.shape)}")
    return Checked(graph, removed, pruned, float((actual - expected).abs().max()), unchanged)


def random_plan(graph: ChannelGraph, gen: torch.Generator) -> dict[int, list[int]]:
    """A random, never-empty subset of the channels of every prunable group (grouped convs: the same
    number out of each of their groups)."""
    plan = {}
    for group in graph.prunable():
        if group.blocks:
            smallest = min(len(b) for b in group.blocks)
            if smallest < 2:
                continue
            k = int(torch.randint(1, smallest, (1,), generator=gen))
            plan[group.id] = sorted(b[i] for b in group.blocks
                                    for i in torch.randperm(len(b), generator=gen)[:k].tolist())
            continue
        if group.size < 2:
            continue
        k = int(torch.randint(1, group.size, (1,), generator=gen))
        plan[group.id] = sorted(torch.randperm(group.size, generator=gen)[:k].tolist())
    for keep in getattr(graph, "keep", ()):     # a part the code splits or slices off keeps a channel
        while keep.emptied(plan):
            g, channels = next(iter(keep.channels.items()))
            plan[g].remove(channels[0])
            if not plan[g]:
                del plan[g]
    return plan


def consumer_zero_positions(graph: ChannelGraph, removed: dict[int, list[int]]) -> dict[str, tuple[int, torch.Tensor]]:
    """Input axis and positions of each consumer (conv/linear) that carry removed channels."""
    positions = {}
    for sl in graph.slices.values():
        if sl.in_group is None or not sl.module:      # the root's own: `_root_weights`
            continue
        index = sl.positions("in", removed)
        if index.size:
            positions[sl.module] = (sl.in_axis, torch.from_numpy(index))
    return positions


def reference_output(model: nn.Module, graph: ChannelGraph, removed: dict[int, list[int]], x: Any) -> Any:
    """The original model with removed channels forced to zero at every consumer's input."""
    modules = dict(model.named_modules())

    def zeroing(axis, index):
        def hook(_module, args):
            y = args[0].clone()
            y.index_fill_(axis, index, 0)
            return (y, *args[1:])
        return hook

    handles = [modules[name].register_forward_pre_hook(zeroing(axis, ix))
               for name, (axis, ix) in consumer_zero_positions(graph, removed).items()]
    try:
        with torch.no_grad():
            weights = _root_weights(model, graph, removed)
            return torch.func.functional_call(model, weights, (x,)) if weights else model(x)
    finally:
        for h in handles:
            h.remove()


def _root_weights(model: nn.Module, graph: ChannelGraph, removed: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """A conv or linear on a parameter of the root module runs in the model's own forward, where no
    pre-hook sees its input: its removed inputs are zeroed in its weight instead (the same thing for
    a conv or linear), passed in without touching the model."""
    weights = {}
    for sl in graph.slices.values():
        if sl.module or sl.in_group is None:
            continue
        index = sl.positions("in", removed)
        if index.size:
            attr = sl.params["weight"]
            weights[attr] = KINDS[sl.kind].zero_inputs(getattr(model, attr).detach(), torch.from_numpy(index), sl)
    return weights


def conv_filters(graph: ChannelGraph) -> tuple[int, int]:
    """(prunable, all) conv filters: output channels of every convolution (any `groups`), counted
    once per conv; prunable when its channel group is prunable and can lose at least one channel."""
    prunable = total = 0
    for sl in graph.slices.values():
        if not KINDS[sl.kind].conv_filters or sl.out_group is None:
            continue
        for g in sl.out_group.tolist():
            total += 1
            if g >= 0 and graph.groups[g].prunable and _can_lose_one(graph.groups[g]):
                prunable += 1
    return prunable, total


def _can_lose_one(group) -> bool:
    if group.blocks:
        return min(len(b) for b in group.blocks) >= 2
    return group.size >= 2
