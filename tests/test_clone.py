"""`prune` copies the model with `clone.clone` (deepcopy's result, less Python): the input is never
changed, the copy shares nothing mutable with it, and whatever clone cannot copy plainly goes to
`copy.deepcopy` with the same memo."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn

from prune_explorer.model import clone as clone_module
from prune_explorer.model.clone import clone
from prune_explorer.model.exactness import random_plan, torchvision_example
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.model.zoo import BASE_ATTR, base_spec, build_model

# one of each family the zoo sweep covers: plain, depthwise + SE, shuffle, channels-last + LayerNorm,
# grouped, transformer
MODELS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "convnext_tiny", "regnet_y_400mf", "vit_b_16")


def _tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    return {id(t): t for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}


@pytest.mark.parametrize("name", MODELS)
def test_prune_leaves_its_input_alone_and_the_copy_trains_on_its_own(name):
    torch.manual_seed(0)
    model, x = torchvision_example(name)
    model.eval()
    graph = ChannelGraph.trace(model, x)
    removed = random_plan(graph, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = {id(m): type(m) for m in model.modules()}
    pruned = prune(model, PrunePlan(removed), x, graph=graph)

    assert {id(m): type(m) for m in model.modules()} == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not {id(m) for m in pruned.modules()} & modules_before.keys()
    originals = _tensors(model)
    assert not _tensors(pruned).keys() & originals.keys()
    assert not {t.untyped_storage().data_ptr() for t in _tensors(pruned).values()} & \
        {t.untyped_storage().data_ptr() for t in originals.values()}

    pruned.train()
    assert not model.training                       # the flags are the copy's own
    optimiser = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(x).square().mean().backward()
    optimiser.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_clone_equals_deepcopy_on_torchvision_models_without_falling_back():
    fell_back = []
    deepcopy = copy.deepcopy

    def spy(x, memo=None):
        if isinstance(x, nn.Module):
            fell_back.append(type(x).__name__)
        return deepcopy(x, memo)

    for name in ("resnet18", "convnext_tiny", "mobilenet_v3_small", "regnet_y_400mf"):
        model = torchvision.models.get_model(name, weights=None)
        memo = {id(t): t.detach().clone() for t in _tensors(model).values()}
        clone_module.copy.deepcopy = spy
        try:
            fast = clone(model, dict(memo))
        finally:
            clone_module.copy.deepcopy = deepcopy
        slow = copy.deepcopy(model, dict(memo))
        assert repr(fast) == repr(slow)
        for a, b in zip(fast.modules(), slow.modules(), strict=True):
            assert type(a) is type(b) and vars(a).keys() == vars(b).keys()
            assert {k: v for k, v in vars(a).items() if k not in ("_parameters", "_buffers", "_modules")} == \
                {k: v for k, v in vars(b).items() if k not in ("_parameters", "_buffers", "_modules")}
    assert fell_back == []


class Bag:
    """Not plain data: clone hands its owner to deepcopy."""

    def __init__(self):
        self.items = [1, 2]


class Holder(nn.Module):
    def __init__(self, shared: nn.Module):
        super().__init__()
        self.a, self.b = shared, shared            # one module under two names
        self.bag = Bag()
        self.scale = functools.partial(torch.mul, other=2.0)
        self.sizes = [3, [4]]
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.scale(self.b(self.a(x))))


def test_what_is_not_plain_goes_to_deepcopy_and_shared_modules_stay_shared():
    model = Holder(nn.Linear(4, 4))
    seen = []
    model.head.register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
    copied = clone(model, {id(t): t.detach().clone() for t in _tensors(model).values()})
    assert copied.a is copied.b and copied.a is not model.a
    assert copied.bag is not model.bag and copied.bag.items == [1, 2] and copied.bag.items is not model.bag.items
    assert copied.sizes == [3, [4]] and copied.sizes[1] is not model.sizes[1]
    copied(torch.randn(1, 4))
    assert seen == [torch.Size([1, 2])]              # hooks come along
    copied.sizes[1].append(5)
    assert model.sizes == [3, [4]]


def test_the_base_architecture_tag_comes_along_and_is_the_copy_own():
    model = build_model("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = prune(model, PrunePlan({"layer1.0.conv1": [0, 1]}), x)
    assert base_spec(pruned) == base_spec(model) == {"arch": "resnet18", "kwargs": {"num_classes": 10}}
    getattr(pruned, BASE_ATTR)["kwargs"]["num_classes"] = 3
    assert base_spec(model)["kwargs"] == {"num_classes": 10}
