"""The exactness contract as code (DESIGN.md): the reference a pruned model must equal, and the
random plans the tests and `benchmarks/zoo.py` check it with.

Reference: the original model with the removed channels forced to zero at every consumer's input
(a forward pre-hook on each consumer module, along that consumer's channel axis). Outputs are
compared leaf by leaf (a tensor, a tuple, a dict, a detector's list of dicts); for a detector
also its raw head outputs before NMS (class logits, box regressions: `detection_heads`), so a
difference shows where it starts even when the post-processed detections would hide it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .graph import ChannelGraph, kept_outputs
from .inputs import call, split_inputs
from .kinds import KINDS, recorded_kind

TOLERANCE = 1e-4


@dataclass
class Checked:
    graph: ChannelGraph
    removed: dict[int, list[int]]
    pruned: nn.Module
    max_diff: float
    input_unchanged: bool
    diffs: dict[str, float] = field(default_factory=dict)   # per observed head module, and "output"


# torchvision models over ~1 GB of float32 weights: left out of the zoo sweep in CI
LARGE_TORCHVISION = ("regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32")


def torchvision_example(name: str) -> tuple[nn.Module, Any]:
    """A torchvision model (random init, seed 0) and a small input it accepts: classification and
    segmentation take a 1x3xHxW tensor, detectors a list of one 3xHxW image (one argument; see
    `detection_example`)."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return detection_example(name)
    kwargs: dict = {"weights": None}
    size = 64
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        kwargs["weights_backbone"] = None
    elif name.startswith("vit_"):
        kwargs["image_size"] = size = 32
    elif name == "maxvit_t":      # its block partitions need 224
        size = 224
    elif name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=False)
        size = 80 if name == "inception_v3" else 64
    torch.manual_seed(0)
    return torchvision.models.get_model(name, **kwargs), torch.randn(1, 3, size, size)


DETECTION_SIZE = 128    # the side torchvision's detection transform resizes to (SSD keeps its own)


def detection_example(name: str, size: int = DETECTION_SIZE, dtype: torch.dtype = torch.float64,
                      frozen_backbone: bool = False) -> tuple[nn.Module, list[torch.Tensor]]:
    """A torchvision detector with no weights (eval) and `[image]`: its transform resizes to `size`,
    a score threshold of 1e-3 keeps boxes from random weights, at most 20 detections per image (1
    where a keypoint or mask head runs per box). float64 by default: decoded boxes are pixel coordinates, where float32's rounding alone comes
    near the contract's 1e-4; in float64 only a wrong slice shows.

    Weights are drawn again at unit gain (std 1/sqrt(fan in)), head biases at N(0, 1): torchvision's
    default init shrinks activations layer by layer (and starts the heads at std 0.01 with a prior
    bias), so deep features become constant across positions and thousands of anchors tie on their
    score to the last bit; which of tied boxes NMS keeps would then be float noise, not pruning.

    `frozen_backbone`: the backbone's batch norms become `FrozenBatchNorm2d` (same statistics), as
    torchvision builds the backbone of a detector with pretrained weights (`weights_backbone`) —
    without downloading any.
    """
    import torchvision

    kwargs: dict = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):
        kwargs.update(min_size=size, max_size=size)
    if "rcnn" in name:    # keypoint/mask heads run a 512-channel conv stack per box: few boxes
        kwargs.update(box_score_thresh=1e-3, box_detections_per_img=20 if name.startswith("faster") else 1,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    else:
        kwargs.update(score_thresh=1e-3, detections_per_img=20)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs).eval()
    if frozen_backbone:
        _freeze_batch_norms(model.backbone)
    heads = tuple(m for name, m in model.named_modules() if name in detection_heads(model))
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight.normal_(0.0, layer.weight[0].numel() ** -0.5)
        for head in heads:
            for layer in head.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is not None:
                    layer.bias.normal_(0.0, 1.0)
    return model.to(dtype), [torch.rand(3, size, size, dtype=dtype)]


def _freeze_batch_norms(module: nn.Module) -> None:
    """Every BatchNorm2d under `module` replaced by a FrozenBatchNorm2d holding its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict({k: v for k, v in child.state_dict().items() if k != "num_batches_tracked"})
            setattr(module, name, frozen)
        else:
            _freeze_batch_norms(child)


def detection_heads(model: nn.Module) -> list[str]:
    """The modules whose outputs are a torchvision detector's raw predictions before NMS: RPN and
    RoI predictors, RetinaNet/FCOS/SSD heads (empty for other models)."""
    try:
        from torchvision.models.detection import fcos, faster_rcnn, keypoint_rcnn, mask_rcnn, retinanet, rpn, ssd, ssdlite
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return []
    kinds = (rpn.RPNHead, faster_rcnn.FastRCNNPredictor, keypoint_rcnn.KeypointRCNNPredictor,
             mask_rcnn.MaskRCNNPredictor, retinanet.RetinaNetHead, fcos.FCOSHead, ssd.SSDHead, ssdlite.SSDLiteHead)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


@contextlib.contextmanager
def observing(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, list]]:
    """Record the outputs of the named modules (every call, in order) while the block runs."""
    modules = dict(model.named_modules())
    seen: dict[str, list] = {name: [] for name in names}
    handles = [modules[name].register_forward_hook(lambda _m, _a, out, name=name: seen[name].append(out))
               for name in seen]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def forward(model: nn.Module, x: Any) -> Any:
    """`model` on example inputs as the package reads them (`model/inputs.py`)."""
    return call(model, x)


def difference(actual: Any, expected: Any, what: str = "output") -> float:
    """Largest |actual - expected| over the tensors of two outputs of the same structure;
    AssertionError naming the leaf when the structure or a shape differs."""
    a, a_spec = tree_flatten(actual)
    b, b_spec = tree_flatten(expected)
    if a_spec != b_spec:
        raise AssertionError(f"pruned {what} has another structure than the reference's")
    worst = 0.0
    for i, (u, v) in enumerate(zip(a, b)):
        if not isinstance(u, torch.Tensor):
            if u != v:
                raise AssertionError(f"pruned {what} differs from the reference at leaf {i}: {u!r} != {v!r}")
            continue
        if u.shape != v.shape:
            raise AssertionError(f"pruned {what} leaf {i} has shape {tuple(u.shape)}, the reference {tuple(v.shape)}")
        if u.numel():
            worst = max(worst, float((u.double() - v.double()).abs().max()))
    return worst


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


def check(model: nn.Module, x: Any, seed: int = 0, graph: ChannelGraph | None = None,
          outputs: Any = None) -> Checked:
    """Random norms, a random plan on every prunable group, prune, and the largest difference from
    the reference over every kept output (`outputs`, as `ChannelGraph.trace` takes it, else the
    graph's; None: all) and every detector head's raw output (eval mode; the model's norms are
    randomised in place)."""
    from .plan import PrunePlan
    from .surgery import prune

    gen = torch.Generator().manual_seed(seed)
    randomize_norms(model, gen)
    model.eval()
    graph = graph or ChannelGraph.trace(model, x, outputs=outputs)
    outputs = graph.outputs if outputs is None else outputs
    randomize_channel_params(model, graph, gen)
    removed = random_plan(graph, gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, PrunePlan(removed), x, graph=graph).eval()
    after = model.state_dict()
    unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    heads = detection_heads(model)
    with observing(model, heads) as expected_heads:
        expected = reference_output(model, graph, removed, x)
    with observing(pruned, heads) as actual_heads, torch.no_grad():
        actual = forward(pruned, x)
    diffs = {name: difference(actual_heads[name], expected_heads[name], f"head {name}") for name in heads}
    diffs["output"] = difference(kept_outputs(actual, outputs), kept_outputs(expected, outputs))
    return Checked(graph, removed, pruned, max(diffs.values()), unchanged, diffs)


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
    ops = {(site.function, site.index): (site.axis, torch.from_numpy(ix))
           for site in getattr(graph, "zeroed_inputs", ()) if (ix := site.positions(removed)).size}
    try:
        with torch.no_grad(), _ZeroingOps(ops) if ops else contextlib.nullcontext():
            weights = _root_weights(model, graph, removed)
            if not weights:
                return forward(model, x)
            args, kwargs = split_inputs(x)
            return torch.func.functional_call(model, weights, args, kwargs)
    finally:
        for h in handles:
            h.remove()


class _ZeroingOps(TorchFunctionMode):
    """The removed channels zeroed at the input of ops that are not layers (`graph.zeroed_inputs`:
    no pre-hook reaches them), each found by its call order in the forward."""

    def __init__(self, sites: dict[tuple[Any, int], tuple[int, torch.Tensor]]):
        super().__init__()
        self.sites = sites
        self.functions = {fn for fn, _ in sites}
        self.calls: dict[Any, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.functions:
            index = self.calls.get(func, 0)
            self.calls[func] = index + 1
            site = self.sites.get((func, index))
            if site is not None:
                axis, positions = site
                args = (args[0].clone().index_fill_(axis, positions, 0), *args[1:])
        return func(*args, **kwargs)


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


def conv_filters(graph: ChannelGraph, within: str | tuple[str, ...] | None = None) -> tuple[int, int]:
    """(prunable, all) conv filters: output channels of every convolution (any `groups`), counted
    once per conv; prunable when its channel group is prunable and can lose at least one channel.
    `within`: only convs whose module name starts with one of these prefixes (e.g. "backbone")."""
    prefixes = (within,) if isinstance(within, str) else within
    prunable = total = 0
    for sl in graph.slices.values():
        if not KINDS[sl.kind].conv_filters or sl.out_group is None:
            continue
        if prefixes and not any(sl.module == p or sl.module.startswith(p + ".") for p in prefixes):
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
