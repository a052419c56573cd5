"""Turn a model into a graph of operators with shapes: torch.fx first, torch.export where fx fails.

fx (≈ 10 ms on resnet18) keeps torch.nn's own modules as leaves and traces through everything
else, so a third-party Conv2d subclass that calls `F.conv2d(x, self.weight)` shows up as that
functional call on that module's parameter. Shapes come from running the fx graph on the meta
device. Where fx cannot trace (Python control flow on shapes), torch.export (≈ 0.3 s) gives an
ATen graph specialised on the example inputs, with every parameter lifted under its name and
every node's module scope recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .ops import OWN_LEAVES, PASS_MODULES


@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer, named by the module that owns it."""

    module: str
    attr: str
    tensor: torch.Tensor

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


@dataclass
class Traced:
    """What the analysis walks: nodes in order, with values, parameters and module scopes."""

    graph: torch.fx.Graph
    route: str                                       # "fx" | "export"
    params: dict[torch.fx.Node, ParamRef] = field(default_factory=dict)
    module_outputs: dict[torch.fx.Node, list[tuple[str, int]]] = field(default_factory=dict)
    leaf_calls: dict[torch.fx.Node, int] = field(default_factory=dict)


def _meta(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.empty(t.shape, dtype=t.dtype, device="meta")


_POOL_LIKE = tuple(t for t in PASS_MODULES if t.__module__.startswith("torch.nn.modules.pooling")
                   or t.__module__.startswith("torch.nn.modules.upsampling")
                   or t.__module__.startswith("torch.nn.modules.padding"))


def _meta_call(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run one leaf module on meta tensors: shapes only, no compute."""
    if isinstance(mod, _ConvNd) and not mod.transposed:
        return mod._conv_forward(args[0], _meta(mod.weight), _meta(mod.bias))
    if isinstance(mod, nn.Linear):
        return F.linear(args[0], _meta(mod.weight), _meta(mod.bias))
    if isinstance(mod, (_BatchNorm,) + PASS_MODULES + OWN_LEAVES) and not isinstance(mod, _POOL_LIKE):
        return args[0]
    state = {k: _meta(v) for k, v in (*mod.named_parameters(), *mod.named_buffers())}
    if not state:
        return mod(*args, **kwargs)
    return functional_call(mod, state, args, kwargs)


class _Tracer(torch.fx.Tracer):
    """fx tracer that counts module calls (as forward hooks see them) and keeps their outputs."""

    def __init__(self, leaf_types: tuple[type, ...] = ()):
        super().__init__()
        self._leaf_types = leaf_types
        self.calls: dict[str, int] = {}
        self.module_outputs: dict[torch.fx.Node, list[tuple[str, int]]] = {}
        self.leaf_calls: dict[torch.fx.Node, int] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, OWN_LEAVES) or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def iter(self, obj: torch.fx.Proxy):
        """Iterating a split at sizes the code lists (`zip(convs, x.split(self.sizes, 1))`): as many
        parts as sizes. fx only unpacks a proxy into names; anything else it cannot count."""
        node = obj.node
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections",
                                                                           node.kwargs.get("split_size"))
        if node.target in (torch.split, "split") and isinstance(sizes, (list, tuple)):
            return iter([obj[i] for i in range(len(sizes))])
        return super().iter(obj)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(m)
        index = self.calls.get(name, 0)
        self.calls[name] = index + 1
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, torch.fx.Proxy):
            self.module_outputs.setdefault(out.node, []).append((name, index))
            if out.node.op == "call_module":
                self.leaf_calls[out.node] = index
        return out


def trace_fx(model: nn.Module, leaf_types: tuple[type, ...]) -> tuple[Traced, dict[str, Any]]:
    """The fx graph and the tensor constants it refers to by name.

    No GraphModule: its code generation would never run. fx stores tensors created in `forward`
    (`torch.tensor(2.0)`) as `_tensor_constant*` attributes of the traced module; they are taken
    back off `model` here, so tracing leaves the user's model as it was.
    """
    tracer = _Tracer(leaf_types)
    before = set(vars(model))
    try:
        graph = tracer.trace(model)
    finally:
        constants = {k: vars(model).pop(k) for k in set(vars(model)) - before}
    traced = Traced(graph, "fx", module_outputs=tracer.module_outputs, leaf_calls=tracer.leaf_calls)
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for node in graph.nodes:
        if node.op == "get_attr" and node.target in named:
            module, _, attr = node.target.rpartition(".")
            traced.params[node] = ParamRef(module, attr, named[node.target])
    return traced, constants


class MetaRun(torch.fx.Interpreter):
    """Interpret an fx graph on meta tensors, handing every node's value to `visit`."""

    def __init__(self, graph: torch.fx.Graph, model: nn.Module, constants: dict[str, Any],
                 visit: Callable[[torch.fx.Node, Any], None]):
        super().__init__(model, garbage_collect_values=False, graph=graph)
        self.constants = constants
        self._visit = visit

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self._visit(n, result)
        return result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        return _meta_call(self.fetch_attr(target), args, kwargs)

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:
        value = self.constants[target] if target in self.constants else super().get_attr(target, args, kwargs)
        return _meta(value) if isinstance(value, torch.Tensor) else value


def run_fx(model: nn.Module, traced: Traced, constants: dict[str, Any], inputs: tuple,
           visit: Callable[[torch.fx.Node, Any], None]) -> None:
    meta_inputs = [_meta(x) if isinstance(x, torch.Tensor) else x for x in inputs]
    with torch.no_grad():
        MetaRun(traced.graph, model, constants, visit).run(*meta_inputs)


def trace_export(model: nn.Module, inputs: tuple) -> Traced:
    """torch.export's ATen graph; module calls recovered from each node's `nn_module_stack`."""
    program = torch.export.export(model, tuple(inputs), strict=False)
    graph = program.graph
    signature = program.graph_signature
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    traced = Traced(graph, "export")
    for node in graph.nodes:
        if node.op == "placeholder" and node.name in lifted and lifted[node.name] in named:
            module, _, attr = lifted[node.name].rpartition(".")
            traced.params[node] = ParamRef(module, attr, named[lifted[node.name]])
    scopes = {node: _scopes(node) for node in graph.nodes}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        mine = scopes[node]
        users = list(node.users)
        for key, call in mine.items():
            if any(u.op == "output" or key not in scopes[u] for u in users):
                traced.module_outputs.setdefault(node, []).append(call)
        if node in traced.module_outputs:  # innermost module first, as fx reports them
            traced.module_outputs[node].sort(key=lambda c: -c[0].count("."))
    return traced


def _scopes(node: torch.fx.Node) -> dict[str, tuple[str, int]]:
    stack = node.meta.get("nn_module_stack") or {}
    found = {}
    for key, (path, _type) in stack.items():
        name = _clean_path(path)
        if not name:
            continue
        call = int(key.rsplit("@", 1)[1]) if "@" in key else 0
        found[key] = (name, call)
    return found


def _clean_path(path: str) -> str:
    """export writes module paths as attribute chains (`L['self'].layer1[0]`) or dotted names."""
    if "L['self']" in path or "[" in path:
        path = path.replace("L['self']", "").replace("['", ".").replace("']", "").replace("[", ".").replace("]", "")
    return path.strip(".")
