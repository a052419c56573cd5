"""Analysis never touches the user's model: every trace route (fx, a recorded forward, torch.export)
and every refusal leaves parameters, buffers, plain attributes (present or absent before), hooks,
the RNG state, the example inputs and the outputs exactly as they were; so do `prune` and what
costs or times a model (`count`, `measure`, `paired_latency_ms`, `CostModel`, `LatencyTable.measure`).

Each case keeps a deep copy made before anything ran (the twin) and compares the model with it
after `trace` and `prune`: the same structure, the same tensor types and values, then the same
outputs when both run for the first time.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prune_explorer.model.costs import CostModel
from prune_explorer.model.exactness import forward, random_plan
from prune_explorer.model.graph import ROUTES, ChannelGraph
from prune_explorer.model.latency import LatencyTable
from prune_explorer.model.measure import count, measure, paired_latency_ms
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from ultralytics_models import yolo


# --- models that change themselves when they run --------------------------------------------------
class CachesOnFirstForward(nn.Module):
    """A detection-head pattern: anchors cached on the first call (and on a new input size)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.anchors = None
        self.shape = None

    def forward(self, x):
        y = self.head(F.relu(self.conv(x)))
        if self.anchors is None:                        # fx stores its Proxy here, then refuses below
            self.anchors = torch.arange(x.shape[-1], dtype=x.dtype)
        if self.shape != x.shape:                       # Python control flow on a shape
            self.shape = x.shape
        return y + self.anchors


class CachesWithoutControlFlow(nn.Module):
    """fx traces this one: its attribute would hold a Proxy afterwards, and export a FakeTensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        self.last = self.conv(x)                         # absent before the first call
        self.calls = getattr(self, "calls", 0) + 1
        return self.head(F.relu(self.last))


class TrainingMode(nn.Module):
    """Batch norm in training mode updates its statistics; dropout draws from the RNG; the forward
    writes into its input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x.mul_(1.0)                                      # in place on the caller's tensor
        return self.head(self.drop(F.relu(self.bn(self.conv(x)))))


class Unrunnable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.cache = torch.zeros(2)

    def forward(self, x):
        self.cache = self.conv(x).mean()                 # runs, then fails in every route
        return x.view(7, -1)


# --- what "as it was" means ------------------------------------------------------------------------
def _state(value, depth: int = 0):
    """A structural picture of a value: tensors by type, dtype, shape and data; modules by their
    __dict__; containers item by item; other objects by type and __dict__."""
    if isinstance(value, torch.Tensor):
        return ("tensor", type(value).__name__, value.dtype, tuple(value.shape), value.detach().clone())
    if isinstance(value, nn.Module):
        return ("module", type(value).__name__, {k: _state(v, depth + 1) for k, v in vars(value).items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_state(v, depth + 1) for v in value])
    if isinstance(value, dict):
        return (type(value).__name__, {k: _state(v, depth + 1) for k, v in value.items()})
    if isinstance(value, (int, float, str, bool, type(None), torch.Size, torch.dtype, torch.device)):
        return value
    if callable(value):
        return ("callable", getattr(value, "__qualname__", type(value).__name__))
    if depth < 4 and hasattr(value, "__dict__"):
        return ("object", type(value).__name__, {k: _state(v, depth + 1) for k, v in vars(value).items()})
    return ("object", type(value).__name__)


def _same(a, b, where: str = "model") -> None:
    if isinstance(a, tuple) and a and a[0] == "tensor":
        assert isinstance(b, tuple) and b[0] == "tensor", where
        assert a[1:4] == b[1:4], f"{where}: {a[1:4]} != {b[1:4]}"
        assert torch.equal(a[4], b[4]), f"{where}: values changed"
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
        return
    if isinstance(a, (list, tuple)):
        assert isinstance(b, type(a)) and len(a) == len(b), f"{where}: {a!r:.200} != {b!r:.200}"
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
        return
    assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_untouched(model: nn.Module, twin: nn.Module, x) -> None:
    """`model` looks exactly like its twin (a deep copy made before anything ran), then both give
    the same outputs when they run for the first time."""
    _same(_state(model), _state(twin))
    with torch.no_grad():
        out, expected = forward(model, _fresh(x)), forward(twin, _fresh(x))
    _same(_state(out), _state(expected), "output")


def _fresh(x):
    return copy.deepcopy(x)


def _trace_and_prune(model: nn.Module, x, route: str | None, again: bool = True) -> None:
    graph = ChannelGraph.trace(model, x, route=route)
    removed = random_plan(graph, torch.Generator().manual_seed(0))
    prune(model, PrunePlan(removed), x, graph=graph)
    if again:
        prune(model, PrunePlan(removed), x)              # prune traces again itself


def _cost_and_time(model: nn.Module, x, graph=None) -> None:
    """Everything that runs the model to cost or time it: count, measure, paired latency, the cost
    model and the latency table (which also times each layer alone)."""
    graph = graph or ChannelGraph.trace(model, x)
    count(model, x)
    measure(model, x, warmup=0, repeats=1)
    paired_latency_ms([model, model], x, warmup=0, repeats=1)
    costs = CostModel(model, x, graph)
    LatencyTable.measure(model, x, graph, costs=costs, fractions=(0.5, 1.0), warmup=0, repeats=1)
    LatencyTable.measure(model, x, graph, fractions=(1.0,), warmup=0, repeats=1)   # its own cost model


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("route", (None,) + ROUTES + ("costs",))
@pytest.mark.parametrize("build", [CachesWithoutControlFlow, TrainingMode], ids=["caches_in_forward", "training_mode"])
def test_every_route_leaves_the_model_its_inputs_and_the_rng_as_they_were(build, route):
    """... and so do costs, latency and measurement ("costs")."""
    torch.manual_seed(0)
    model = build()
    if build is not TrainingMode:
        model.eval()
    twin = copy.deepcopy(model)
    x = X.clone()
    rng = torch.get_rng_state()
    if route == "costs":
        _cost_and_time(model, x)
    else:
        _trace_and_prune(model, x, route)
    assert torch.equal(x, X), "the example input was written to"
    assert torch.equal(torch.get_rng_state(), rng), "tracing drew from the global RNG"
    if build is TrainingMode:
        assert model.training and model.bn.training          # its modes as they were
        model.eval(), twin.eval()
    _assert_untouched(model, twin, X)


@pytest.mark.parametrize("route", [None, "record", "export"])
def test_a_cache_filled_on_the_first_forward_stays_empty(route):
    model = CachesOnFirstForward().eval()
    twin = copy.deepcopy(model)
    graph = ChannelGraph.trace(model, X, route=route)
    assert graph.route == (route or "record") and graph.group("conv").prunable
    assert model.shape is None and model.anchors is None
    _trace_and_prune(model, X, route)
    _cost_and_time(model, X, graph)
    _assert_untouched(model, twin, X)


def test_fx_refusing_a_cache_leaves_no_proxy_behind():
    model = CachesOnFirstForward().eval()
    twin = copy.deepcopy(model)
    with pytest.raises(ValueError, match="cannot trace"):
        ChannelGraph.trace(model, X, route="fx")
    _assert_untouched(model, twin, X)


@pytest.mark.parametrize("route", (None,) + ROUTES)
def test_a_model_every_route_refuses_is_left_as_it_was(route):
    model = Unrunnable().eval()
    twin = copy.deepcopy(model)
    with pytest.raises(ValueError, match="cannot trace Unrunnable"):
        ChannelGraph.trace(model, X, route=route)
    _same(_state(model), _state(twin))


class Refusals(nn.Module):
    """Ops the graph refuses (attention, a channel slice, a literal width, softmax over channels,
    a transposed conv), each on a stream of its own, and a cache written on every call."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 8, 1) for _ in range(5))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x):
        a, b, c, d, e = (conv(x) for conv in self.convs)
        tokens = a.flatten(2).transpose(1, 2)
        self.seen = self.attn(tokens, tokens, tokens)[0]
        return (self.seen.mean(1), b[:, :4].mean((2, 3)), c.view(c.shape[0], 8, -1).mean(-1),
                d.softmax(1).mean((2, 3)), self.up(e).mean((2, 3)))


@pytest.mark.parametrize("route", ROUTES)
def test_a_model_full_of_refusals_is_left_as_it_was(route):
    model = Refusals().eval()
    twin = copy.deepcopy(model)
    graph = ChannelGraph.trace(model, X, route=route)
    assert all(g.prunable or g.reason for g in graph.groups) and not all(g.prunable for g in graph.groups)
    for group in graph.groups:
        if not group.prunable:
            with pytest.raises(ValueError):
                prune(model, PrunePlan({group.id: [0]}), X, graph=graph)
    _trace_and_prune(model, X, route, again=False)
    _assert_untouched(model, twin, X)


def test_refused_plans_leave_the_model_as_it_was():
    model = CachesOnFirstForward().eval()
    twin = copy.deepcopy(model)
    graph = ChannelGraph.trace(model, X)
    bad_plans = [{"nowhere": [0]}, {"head": [0]}, {"conv": list(range(8))}, {"conv": [99]}]
    for channels in bad_plans:
        with pytest.raises(ValueError):
            prune(model, PrunePlan(channels), X, graph=graph)
    _assert_untouched(model, twin, X)


def test_hooks_on_the_users_model_never_run_during_analysis_costing_or_timing():
    model = CachesWithoutControlFlow().eval()
    seen = []
    model.conv.register_forward_hook(lambda *a: seen.append("conv"))
    model.register_forward_pre_hook(lambda *a: seen.append("model"))
    for route in ROUTES:
        graph = ChannelGraph.trace(model, X, route=route)
        prune(model, PrunePlan(random_plan(graph, torch.Generator().manual_seed(0))), X, graph=graph)
    _cost_and_time(model, X)
    assert seen == []
    with torch.no_grad():
        model(X)
    assert seen == ["model", "conv"]


@pytest.mark.parametrize("route", [None, "costs", pytest.param("export", marks=pytest.mark.slow)])
def test_a_never_run_yolov8n_is_left_as_it_was(route):
    """The issue's case: torch.export on the live model left FakeTensors in Detect's anchors/strides;
    costing and timing ran the model itself, filling them ("costs": now on a private copy too)."""
    model = yolo("yolov8n")
    detect = model.model[-1]
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    if route == "costs":
        _cost_and_time(model, x, ChannelGraph.trace(model, x, outputs="!1.feats"))
    else:
        _trace_and_prune(model, x, route, again=route is None)   # None: the recorded forward, and prune's own trace
    assert type(detect.anchors) is torch.Tensor and detect.anchors.numel() == 0 and detect.shape is None
    _assert_untouched(model, twin, x)
