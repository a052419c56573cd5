"""Channel groups of a CNN: which channels must be removed together, and which cannot be removed.

The model is traced once with torch.fx; shapes are propagated on the `meta` device (no real
compute). Every tensor's dim 1 is described by a *layout*: an ordered list of channel groups
(concatenation keeps offsets) and, after a flatten, the number of features per channel.
Operations the tracer does not understand never guess: they mark the groups they touch as not
prunable, with a reason naming the node or module.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.fx.node import map_aggregate
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


@dataclass(frozen=True)
class Tap:
    """Where a group's tensor can be observed with a forward hook."""

    module: str
    call: int


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together (a producer's outputs and everything they feed)."""

    id: int
    layers: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    prunable: bool
    reason: str | None
    kind: str
    taps: tuple[Tap, ...]
    name: str


@dataclass(frozen=True)
class ModuleSlices:
    """How one module's parameters map onto channel groups; what surgery slices.

    `out`/`inputs` are ordered (group id, size) segments along the weight's dim 0 / dim 1;
    `in_factor` is the features per channel of a linear fed by a flatten.
    """

    module: str
    kind: str  # "conv" | "depthwise" | "grouped" (never sliced) | "linear" | "norm"
    out: tuple[tuple[int, int], ...] | None
    inputs: tuple[tuple[int, int], ...] | None
    in_factor: int = 1
    out_factor: int = 1


# --- layouts --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    segments: tuple[int, ...]  # atom ids in channel order
    factor: int = 1


class _Opaque:
    """A tensor whose dim 1 the graph cannot relate to channel groups."""

    def __repr__(self) -> str:
        return "OPAQUE"


OPAQUE = _Opaque()

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
)
_PASS_MODULES = _ACTIVATIONS + (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d,
    nn.ReplicationPad2d, nn.ConstantPad2d,
)

_ACTIVATION_FUNCS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.silu, F.gelu,
    F.hardswish, F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu,
    F.selu, F.mish, F.softplus,
}
_PASS_FUNCS = _ACTIVATION_FUNCS | {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
    torch.clamp, torch.clip, torch.neg, operator.neg, torch.abs, torch.exp,
}
try:  # torchvision wraps stochastic_depth for fx; per-sample (or identity in eval), so channel-wise
    from torchvision.ops import stochastic_depth as _stochastic_depth

    _PASS_FUNCS.add(_stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "detach",
    "float", "half", "double", "to", "clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_",
    "neg", "abs", "exp", "hardtanh_",
}
_RESIDUAL_FUNCS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_RESIDUAL_METHODS = {"add", "add_", "sub", "sub_"}
_MERGE_FUNCS = _RESIDUAL_FUNCS | {
    operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div,
    torch.maximum, torch.minimum,
}
_MERGE_METHODS = _RESIDUAL_METHODS | {"mul", "mul_", "div", "div_", "maximum", "minimum"}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_METADATA_METHODS = {"size", "dim", "numel"}


def _is_depthwise(conv: _ConvNd) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _meta(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.empty(t.shape, dtype=t.dtype, device="meta")


def _meta_call(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run one leaf module on meta tensors: shapes only, no compute."""
    if isinstance(mod, _ConvNd) and not mod.transposed:
        return mod._conv_forward(args[0], _meta(mod.weight), _meta(mod.bias))
    if isinstance(mod, nn.Linear):
        return F.linear(args[0], _meta(mod.weight), _meta(mod.bias))
    if isinstance(mod, (_BatchNorm,) + _PASS_MODULES) and not isinstance(mod, _POOL_LIKE):
        return args[0]
    state = {k: _meta(v) for k, v in (*mod.named_parameters(), *mod.named_buffers())}
    if not state:
        return mod(*args, **kwargs)
    return functional_call(mod, state, args, kwargs)


_POOL_LIKE = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d,
)


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...] = ()):
        super().__init__()
        self._leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def _symbolic_trace(model: nn.Module, leaf_types: tuple[type, ...]) -> tuple[torch.fx.Graph, dict[str, Any]]:
    """The fx graph and the tensor constants it refers to by name.

    No GraphModule: its code generation would never run. fx stores tensors created in `forward`
    (`torch.tensor(2.0)`) as `_tensor_constant*` attributes of the traced module; they are taken
    back off `model` here, so tracing leaves the user's model as it was.
    """
    tracer = _Tracer(leaf_types)
    before = set(vars(model))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; the message is what the user needs
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}: {exc}. "
            "Pass the offending module types as leaf_modules=(...)"
        ) from exc
    finally:
        constants = {k: vars(model).pop(k) for k in set(vars(model)) - before}
    return graph, constants


# --- the analysis ---------------------------------------------------------------------------------

@dataclass
class _Atom:
    size: int
    reasons: list[str] = field(default_factory=list)
    residual: bool = False
    output: bool = False
    producers: list[str] = field(default_factory=list)


class _Analysis(torch.fx.Interpreter):
    """Walks the fx graph once, propagating meta tensors and channel layouts side by side."""

    def __init__(self, graph: torch.fx.Graph, model: nn.Module, constants: dict[str, Any]):
        super().__init__(model, garbage_collect_values=False, graph=graph)
        self.constants = constants
        self.modules = dict(model.named_modules())
        self.atoms: list[_Atom] = []
        self.parent: list[int] = []
        self.layout: dict[torch.fx.Node, Any] = {}
        self.shape: dict[torch.fx.Node, torch.Size] = {}
        self.module_atom: dict[str, int] = {}
        self.out_layout: dict[str, _Layout] = {}     # dim 0 of weights / norm affine
        self.in_layout: dict[str, _Layout] = {}      # dim 1 of conv/linear weights
        self.kind: dict[str, str] = {}
        self.calls: dict[torch.fx.Node, int] = {}
        self.call_count: dict[str, int] = {}
        self.members: dict[str, set[int]] = {}       # module -> atoms its input/output carries

    # union-find ------------------------------------------------------------------------------
    def new_atom(self, size: int, reason: str | None = None) -> int:
        self.atoms.append(_Atom(size, [reason] if reason else []))
        self.parent.append(len(self.parent))
        return len(self.atoms) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def refuse(self, layout: Any, reason: str) -> None:
        if isinstance(layout, _Layout):
            for a in layout.segments:
                self.atoms[a].reasons.append(reason)

    def unify(self, a: _Layout, b: _Layout, where: str) -> bool:
        sizes_a = [self.atoms[s].size for s in a.segments]
        sizes_b = [self.atoms[s].size for s in b.segments]
        if a.factor != b.factor or sizes_a != sizes_b:
            reason = f"{where} combines tensors whose channels do not line up"
            self.refuse(a, reason)
            self.refuse(b, reason)
            return False
        for x, y in zip(a.segments, b.segments):
            self.union(x, y)
        return True

    # interpreter hooks -----------------------------------------------------------------------
    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shape[n] = result.shape
        self.layout[n] = self.visit(n, result)
        return result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        return _meta_call(self.fetch_attr(target), args, kwargs)

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:
        value = self.constants[target] if target in self.constants else super().get_attr(target, args, kwargs)
        return _meta(value) if isinstance(value, torch.Tensor) else value

    # helpers ---------------------------------------------------------------------------------
    def tensor_args(self, n: torch.fx.Node) -> list[torch.fx.Node]:
        found: list[torch.fx.Node] = []
        map_aggregate((n.args, n.kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Node) else None)
        return [a for a in found if a in self.shape]

    def not_understood(self, n: torch.fx.Node, what: str, result: Any) -> Any:
        for a in self.tensor_args(n):
            self.refuse(self.layout.get(a), f"{what} is not understood")
        return OPAQUE if isinstance(result, torch.Tensor) else None

    def passthrough(self, n: torch.fx.Node, src: Any, result: Any, what: str) -> Any:
        if not isinstance(src, torch.fx.Node) or src not in self.shape:
            return self.not_understood(n, what, result)
        layout = self.layout.get(src)
        ins, outs = self.shape[src], getattr(result, "shape", None)
        if outs is None or len(ins) < 2 or len(outs) < 2 or ins[1] != outs[1]:
            return self.not_understood(n, what, result)
        return layout

    # dispatch --------------------------------------------------------------------------------
    def visit(self, n: torch.fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            if isinstance(result, torch.Tensor) and result.dim() >= 2:
                return _Layout((self.new_atom(result.shape[1], "carries the model input"),))
            return OPAQUE if isinstance(result, torch.Tensor) else None
        if n.op == "get_attr":
            return OPAQUE if isinstance(result, torch.Tensor) else None
        if n.op == "output":
            def mark(a):
                if isinstance(a, torch.fx.Node) and isinstance(self.layout.get(a), _Layout):
                    for s in self.layout[a].segments:
                        self.atoms[s].output = True
            map_aggregate(n.args, mark)
            return None
        if n.op == "call_module":
            index = self.call_count.get(n.target, 0)
            self.call_count[n.target] = index + 1
            self.calls[n] = index
            layout = self.visit_module(n, self.modules[n.target], result)
            members = self.members.setdefault(n.target, set())
            for a in self.tensor_args(n):
                if isinstance(self.layout.get(a), _Layout):
                    members.update(self.layout[a].segments)
            if isinstance(layout, _Layout):
                members.update(layout.segments)
            return layout
        return self.visit_function(n, result)

    def visit_module(self, n: torch.fx.Node, mod: nn.Module, result: Any) -> Any:
        name = n.target
        what = f"module {name} ({type(mod).__name__})"
        src = n.args[0] if n.args else None
        src_layout = self.layout.get(src) if isinstance(src, torch.fx.Node) else None
        if isinstance(mod, _ConvNd) and not mod.transposed:
            return self.visit_conv(name, mod, src_layout, what)
        if isinstance(mod, nn.Linear):
            return self.visit_linear(n, name, mod, src, src_layout, what, result)
        if isinstance(mod, _BatchNorm):
            layout = self.passthrough(n, src, result, what)
            if isinstance(layout, _Layout):
                self.record(self.out_layout, name, layout, what)
                self.kind[name] = "norm"
            return layout
        if isinstance(mod, nn.PReLU) and mod.num_parameters != 1:
            return self.not_understood(n, f"{what} with per-channel slopes", result)
        if isinstance(mod, _PASS_MODULES) or isinstance(mod, nn.PReLU):
            return self.passthrough(n, src, result, what)
        if isinstance(mod, nn.Flatten):
            return self.reshape(n, src, result, what)
        return self.not_understood(n, what, result)

    def record(self, table: dict[str, _Layout], name: str, layout: _Layout, what: str) -> None:
        if name in table:
            self.unify(table[name], layout, f"{what} (called twice)")
        else:
            table[name] = layout

    def producer_atom(self, name: str, size: int, reason: str | None = None) -> int:
        if name not in self.module_atom:
            self.module_atom[name] = self.new_atom(size, reason)
            self.atoms[self.module_atom[name]].producers.append(name)
        return self.module_atom[name]

    def visit_conv(self, name: str, conv: _ConvNd, src_layout: Any, what: str) -> Any:
        if _is_depthwise(conv):
            if not isinstance(src_layout, _Layout):
                return OPAQUE
            self.record(self.out_layout, name, src_layout, what)
            self.kind[name] = "depthwise"
            return src_layout
        if conv.groups != 1:
            reason = f"{what} is a grouped convolution (groups={conv.groups})"
            self.refuse(src_layout, reason)
            if isinstance(src_layout, _Layout):
                self.record(self.in_layout, name, src_layout, what)
            atom = self.producer_atom(name, conv.out_channels, reason)
            self.out_layout.setdefault(name, _Layout((atom,)))
            self.kind[name] = "grouped"
            return _Layout((atom,))
        if isinstance(src_layout, _Layout):
            self.record(self.in_layout, name, src_layout, what)
        atom = self.producer_atom(name, conv.out_channels)
        self.out_layout.setdefault(name, _Layout((atom,)))
        self.kind[name] = "conv"
        return _Layout((atom,))

    def visit_linear(self, n, name, lin: nn.Linear, src, src_layout, what, result) -> Any:
        if src not in self.shape or len(self.shape[src]) != 2:
            reason = f"{what} is applied to the last dim of a {len(self.shape.get(src, ()))}-d tensor"
            self.refuse(src_layout, reason)
            return OPAQUE
        if isinstance(src_layout, _Layout):
            width = sum(self.atoms[a].size for a in src_layout.segments) * src_layout.factor
            if width == lin.in_features:
                self.record(self.in_layout, name, src_layout, what)
            else:
                self.refuse(src_layout, f"{what} in_features do not match the channels feeding it")
        atom = self.producer_atom(name, lin.out_features)
        self.out_layout.setdefault(name, _Layout((atom,)))
        self.kind[name] = "linear"
        return _Layout((atom,))

    def reshape(self, n: torch.fx.Node, src: Any, result: Any, what: str) -> Any:
        if not isinstance(src, torch.fx.Node) or src not in self.shape or not isinstance(result, torch.Tensor):
            return self.not_understood(n, what, result)
        ins, outs = self.shape[src], result.shape
        layout = self.layout.get(src)
        if len(ins) >= 2 and len(outs) >= 2 and ins[:2] == outs[:2]:
            return layout
        if len(ins) >= 2 and len(outs) == 2 and outs[0] == ins[0] and outs[1] == math.prod(ins[1:]):
            if isinstance(layout, _Layout):
                return _Layout(layout.segments, layout.factor * math.prod(ins[2:]))
            return layout
        return self.not_understood(n, f"{what} (reshapes the channel dim {tuple(ins)} -> {tuple(outs)})", result)

    def visit_function(self, n: torch.fx.Node, result: Any) -> Any:
        target = n.target
        is_method = n.op == "call_method"
        label = target if is_method else getattr(target, "__name__", str(target))
        what = f"node {n.name} ({label})"
        src = n.args[0] if n.args else None
        if (is_method and target in _METADATA_METHODS) or target is getattr:
            return None
        if (not is_method and target in _PASS_FUNCS) or (is_method and target in _PASS_METHODS):
            if not isinstance(result, torch.Tensor):
                return self.not_understood(n, what, result)
            return self.passthrough(n, src, result, what)
        if (not is_method and target in _MERGE_FUNCS) or (is_method and target in _MERGE_METHODS):
            residual = target in (_RESIDUAL_METHODS if is_method else _RESIDUAL_FUNCS)
            return self.merge(n, result, residual, what)
        if (not is_method and target in _RESHAPE_FUNCS) or (is_method and target in _RESHAPE_METHODS):
            return self.reshape(n, src, result, what)
        if (not is_method and target in _REDUCE_FUNCS) or (is_method and target in _REDUCE_METHODS):
            return self.reduce(n, src, result, what)
        if not is_method and target is torch.cat:
            return self.cat(n, result, what)
        if target is operator.getitem and not isinstance(result, torch.Tensor) and not self.tensor_args(n):
            return None
        return self.not_understood(n, what, result)

    def merge(self, n: torch.fx.Node, result: Any, residual: bool, what: str) -> Any:
        if not isinstance(result, torch.Tensor) or result.dim() < 2:
            return self.not_understood(n, what, result)
        nd = result.dim()
        channel_layouts: list[_Layout] = []
        opaque = False
        for a in self.tensor_args(n):
            shape = self.shape[a]
            axis = len(shape) - (nd - 1)
            if axis < 0 or shape[axis] == 1:
                continue  # broadcast over channels
            layout = self.layout.get(a)
            if isinstance(layout, _Layout) and axis == 1:
                channel_layouts.append(layout)
            else:
                opaque = True
        if opaque:
            for layout in channel_layouts:
                self.refuse(layout, f"{what} mixes the channels with a tensor the graph cannot follow")
            return OPAQUE
        if not channel_layouts:
            return OPAQUE
        first = channel_layouts[0]
        for other in channel_layouts[1:]:
            if not self.unify(first, other, what):
                return OPAQUE
            if residual:
                for s in first.segments:
                    self.atoms[s].residual = True
        return first

    def reduce(self, n: torch.fx.Node, src: Any, result: Any, what: str) -> Any:
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        if src not in self.shape or dims is None or not isinstance(result, torch.Tensor):
            return self.not_understood(n, what, result)
        nd = len(self.shape[src])
        dims = [dims] if isinstance(dims, int) else list(dims)
        if any(not isinstance(d, int) for d in dims):
            return self.not_understood(n, what, result)
        if {d % nd for d in dims} & {0, 1} or result.dim() < 2:
            return self.not_understood(n, f"{what} (reduces over the channel or batch dim)", result)
        return self.layout.get(src)

    def cat(self, n: torch.fx.Node, result: Any, what: str) -> Any:
        tensors = n.kwargs.get("tensors", n.args[0] if n.args else ())
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
        if not isinstance(result, torch.Tensor) or result.dim() < 2 or not isinstance(dim, int):
            return self.not_understood(n, what, result)
        layouts = [self.layout.get(t) for t in tensors]
        if not all(isinstance(x, _Layout) for x in layouts):
            return self.not_understood(n, f"{what} (concatenates a tensor the graph cannot follow)", result)
        if dim % result.dim() != 1:
            for other in layouts[1:]:
                if not self.unify(layouts[0], other, what):
                    return OPAQUE
            return layouts[0]
        if len({x.factor for x in layouts}) != 1:
            return self.not_understood(n, f"{what} (concatenates flattened tensors of different sizes)", result)
        return _Layout(tuple(s for x in layouts for s in x.segments), layouts[0].factor)


# --- the public graph -----------------------------------------------------------------------------

class ChannelGraph:
    """Channel groups of one model, and how each module's parameters map onto them."""

    def __init__(self, groups: list[ChannelGroup], slices: dict[str, ModuleSlices], by_layer: dict[str, int],
                 ambiguous: dict[str, tuple[int, ...]]):
        self.groups = groups
        self.slices = slices
        self._by_layer = by_layer
        self._ambiguous = ambiguous

    def __repr__(self) -> str:
        return f"ChannelGraph({len(self.groups)} groups, {len(self.prunable())} prunable)"

    @classmethod
    def trace(cls, model: nn.Module, example_inputs: Any, leaf_modules: Iterable[type] = ()) -> "ChannelGraph":
        """Trace `model` once (fx + meta shapes) and find its channel groups."""
        graph, constants = _symbolic_trace(model, tuple(leaf_modules))
        inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        meta_inputs = [_meta(x) if isinstance(x, torch.Tensor) else x for x in inputs]
        analysis = _Analysis(graph, model, constants)
        with torch.no_grad():
            analysis.run(*meta_inputs)
        return _build(analysis, model)

    def group(self, layer_or_id: str | int) -> ChannelGroup:
        """The group a member layer name (or group id) names; ValueError otherwise."""
        if isinstance(layer_or_id, (int,)) and not isinstance(layer_or_id, bool):
            if 0 <= layer_or_id < len(self.groups):
                return self.groups[layer_or_id]
            raise ValueError(f"no channel group with id {layer_or_id} (the graph has {len(self.groups)})")
        if layer_or_id in self._by_layer:
            return self.groups[self._by_layer[layer_or_id]]
        if layer_or_id in self._ambiguous:
            names = ", ".join(self.groups[g].name for g in self._ambiguous[layer_or_id])
            raise ValueError(f"layer {layer_or_id!r} spans several channel groups ({names}); name one of those")
        raise ValueError(f"unknown layer {layer_or_id!r}: it is not a member of any channel group")

    def prunable(self, kind: str | None = None) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable and (kind is None or g.kind == kind)]


def _build(an: _Analysis, model: nn.Module) -> ChannelGraph:
    order = {name: i for i, name in enumerate(an.modules)}
    roots: dict[int, list[int]] = {}
    for a in range(len(an.atoms)):
        roots.setdefault(an.find(a), []).append(a)
    with_producer = [r for r, atoms in roots.items() if any(an.atoms[a].producers for a in atoms)]

    def first_producer(root: int) -> int:
        return min(order[p] for a in roots[root] for p in an.atoms[a].producers)

    with_producer.sort(key=first_producer)
    gid = {r: i for i, r in enumerate(with_producer)}

    def segments(layout: _Layout | None):
        if layout is None:
            return None
        return tuple((gid.get(an.find(a), -1), an.atoms[a].size) for a in layout.segments)

    slices: dict[str, ModuleSlices] = {}
    producers: dict[int, set[str]] = {i: set() for i in gid.values()}
    consumers: dict[int, set[str]] = {i: set() for i in gid.values()}
    for name, kind in an.kind.items():
        out = segments(an.out_layout.get(name))
        layout_in = an.in_layout.get(name)
        inputs = segments(layout_in)
        out_layout = an.out_layout.get(name)
        slices[name] = ModuleSlices(name, kind, out, inputs, layout_in.factor if layout_in else 1,
                                    out_layout.factor if out_layout else 1)
        for g, _ in out or ():
            if g >= 0:
                producers[g].add(name)
        for g, _ in inputs or ():
            if g >= 0:
                consumers[g].add(name)

    taps = _taps(an, gid)
    members: dict[int, set[str]] = {i: set() for i in gid.values()}
    by_layer: dict[str, int] = {}
    ambiguous: dict[str, tuple[int, ...]] = {}
    for name, atoms in an.members.items():
        gs = sorted({gid[an.find(a)] for a in atoms if an.find(a) in gid})
        for g in gs:
            members[g].add(name)
    for name, sl in slices.items():
        out_groups = sorted({g for g, _ in sl.out or () if g >= 0})
        if sl.kind in ("conv", "linear", "grouped") and out_groups:
            by_layer[name] = out_groups[0]
        elif len(out_groups) == 1:
            by_layer.setdefault(name, out_groups[0])
        elif out_groups:
            ambiguous[name] = tuple(out_groups)
    for name, atoms in an.members.items():
        if name in by_layer or name in ambiguous:
            continue
        out_groups = sorted({gid[an.find(a)] for a in atoms if an.find(a) in gid})
        if len(out_groups) == 1:
            by_layer[name] = out_groups[0]
        elif out_groups:
            ambiguous[name] = tuple(out_groups)

    groups: list[ChannelGroup] = []
    for root in with_producer:
        g = gid[root]
        atoms = [an.atoms[a] for a in roots[root]]
        reasons = list(dict.fromkeys(r for a in atoms for r in a.reasons))
        output = any(a.output for a in atoms)
        if output:
            reasons.insert(0, "carries the model output")
        kind = "output" if output else "residual" if any(a.residual for a in atoms) else "internal"
        producer_names = sorted(producers[g], key=order.__getitem__)
        named = [p for p in producer_names if slices[p].kind in ("conv", "linear", "grouped")] or producer_names
        groups.append(ChannelGroup(
            id=g,
            layers=tuple(sorted(members[g] | producers[g] | consumers[g], key=order.__getitem__)),
            producers=tuple(producer_names),
            consumers=tuple(sorted(consumers[g], key=order.__getitem__)),
            size=atoms[0].size,
            prunable=not reasons,
            reason="; ".join(reasons[:3]) if reasons else None,
            kind=kind,
            taps=taps.get(g, ()),
            name=named[0] if named else f"group{g}",
        ))
    return ChannelGraph(groups, slices, by_layer, ambiguous)


def _taps(an: _Analysis, gid: dict[int, int]) -> dict[int, tuple[Tap, ...]]:
    """For each path from a group's producers to its consumers, the last activation on it
    (else the last module) whose output carries exactly that group."""

    def single_group(node: torch.fx.Node) -> int | None:
        layout = an.layout.get(node)
        if isinstance(layout, _Layout) and len(layout.segments) == 1:
            return gid.get(an.find(layout.segments[0]))
        return None

    def walk_back(node: Any) -> torch.fx.Node | None:
        last_module = None
        while isinstance(node, torch.fx.Node):
            g = single_group(node)
            if g is None:
                return last_module
            if node.op == "call_module":
                mod = an.modules[node.target]
                if isinstance(mod, _ACTIVATIONS):
                    return node
                if last_module is None:
                    last_module = node
                if not isinstance(mod, _PASS_MODULES + (_BatchNorm, nn.Flatten)):
                    return last_module
            elif node.op == "call_function" and node.target in _PASS_FUNCS | _RESHAPE_FUNCS:
                pass
            elif node.op == "call_method" and node.target in _PASS_METHODS | _RESHAPE_METHODS:
                pass
            else:
                return last_module
            node = node.args[0] if node.args else None
        return last_module

    nodes = list(an.graph.nodes)
    found: dict[int, dict[torch.fx.Node, None]] = {}
    last_output: dict[int, torch.fx.Node] = {}
    for node in nodes:
        if node.op != "call_module":
            continue
        g = single_group(node)
        if g is not None:
            last_output[g] = node
        if an.kind.get(node.target) in ("conv", "linear", "depthwise", "grouped"):
            tap = walk_back(node.args[0] if node.args else None)
            if tap is not None and single_group(tap) is not None:
                found.setdefault(single_group(tap), {})[tap] = None
    for g, node in last_output.items():
        found.setdefault(g, {node: None})
    return {g: tuple(Tap(n.target, an.calls[n]) for n in chosen) for g, chosen in found.items()}
