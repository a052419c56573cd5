"""Record one real forward on real tensors: the route for any model that runs.

fx needs code without Python control flow on tensors, torch.export code without data-dependent
shapes; detectors (NMS, per-image loops) and YOLO heads (anchors cached on shape changes) have
both. Here the model simply runs once, on a private copy, while a `TorchFunctionMode` writes
each torch call into an fx graph *as fx would have written it*: `F.conv2d` and `torch.cat` as
functions, `x.view(...)` as a method, `x[:, :k]` as `operator.getitem`, torch.nn's own modules
(and `RECORDED_LEAVES`, e.g. torchvision's `MultiScaleRoIAlign`) as one `call_module` each. So
the walk (`analysis.py`) and the op registry (`ops.py`) read it like the fx graph, but for one
difference: every size is a number, so a reshape whose channel width is written as a number
is refused (as under torch.export) — only `-1` and `flatten` are known to follow a pruned width.

Module scopes come from forward pre/post hooks on the copy (`nn_module_stack`, as export writes
it). A `TorchDispatchMode` watches for ATen ops that run outside any recorded call (a C++
extension calling ATen directly); they are recorded with their ATen spelling, so an op the
registry does not know still refuses the channels it touches. Tensor values read into Python
(`item`, `bool`, `tolist`) refuse the channels they read and are remembered: the recorded path
may depend on them (`routes.py` re-records with another input to find out).
"""
from __future__ import annotations

import operator
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from .outputs import leaves as output_leaves
from .ops import OWN_LEAVES, RECORDED_LEAVES, VALUE_READ_METHODS as VALUE_READS
from .tracing import ParamRef, Traced

# Tensor methods whose Python spelling differs from the registry's (dunders, properties)
_METHOD_NAMES = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub", "__rsub__": "sub",
    "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_", "__truediv__": "div",
    "__rtruediv__": "div", "__rdiv__": "div", "__div__": "div", "__itruediv__": "div_", "__neg__": "neg",
    "__abs__": "abs", "__pow__": "pow", "__matmul__": "matmul", "__rmatmul__": "matmul", "data": "detach",
}
_FUNCTION_METHODS = {"__getitem__": operator.getitem, "__setitem__": operator.setitem}


@dataclass
class Recorded:
    """A recording: the graph as `Traced`, and what it says about the path it took."""

    traced: Traced
    value_reads: list[str] = field(default_factory=list)     # where values were read into Python ("op in module")


def is_leaf(module: nn.Module, leaf_types: tuple[type, ...]) -> bool:
    """fx's rule (torch.nn's own modules but containers), the package's own leaves, the user's
    `leaf_modules`, and the recorded route's own leaves (`RECORDED_LEAVES`)."""
    if isinstance(module, OWN_LEAVES + RECORDED_LEAVES) or (leaf_types and isinstance(module, leaf_types)):
        return True
    name = type(module).__module__
    return (name.startswith("torch.nn") or name.startswith("torch.ao.nn")) and not isinstance(module, nn.Sequential)


def record(model: nn.Module, args: tuple, kwargs: dict, leaf_types: tuple[type, ...] = ()) -> Recorded:
    """Run `model(*args, **kwargs)` once (no grad, its own RNG state) and record it.

    `model` must be the caller's private copy: its forward really runs, and hooks are added.
    """
    recorder = _Recorder(model, leaf_types)
    args, kwargs = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, (args, kwargs))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        recorder.inputs(args, kwargs)
        handles = recorder.hook(model)
        try:
            with _DispatchWatcher(recorder), _FunctionRecorder(recorder):
                out = model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        recorder.output(out)
    return Recorded(recorder.traced, recorder.value_reads)


class _Recorder:
    def __init__(self, model: nn.Module, leaf_types: tuple[type, ...]):
        self.graph = torch.fx.Graph()
        self.traced = Traced(self.graph, "record")
        self.leaf_types = leaf_types
        self.nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()   # tensor -> the node of its latest value
        self.named: dict[int, tuple[str, torch.Tensor]] = {}
        for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
            self.named.setdefault(id(t), (name, t))
        self.stack: list[tuple[str, str, type]] = []     # (key, module name, type) of the modules running
        self.calls: dict[str, int] = {}
        self.actions: list[Any] = []                     # per module call: what its post-hook undoes
        self.busy = 0                                    # > 0: inside a recorded call or a leaf, or bookkeeping
        self.value_reads: list[str] = []
        self._constants = 0

    # --- nodes ------------------------------------------------------------------------------------
    def _create(self, op: str, target: Any, args: tuple, kwargs: dict, value: Any, name: str | None = None):
        node = self.graph.create_node(op, target, args, kwargs, name=name)
        node.meta["val"] = value
        node.meta["nn_module_stack"] = {key: (path, cls) for key, path, cls in self.stack}
        return node

    def node_of(self, t: torch.Tensor) -> torch.fx.Node:
        """The node of a tensor's latest value; parameters, buffers and unseen tensors get one on first use."""
        found = self.nodes.get(t)
        if found is not None:
            return found
        named = self.named.get(id(t))
        if named is not None and named[1] is t:
            node = self._create("placeholder", named[0].replace(".", "_"), (), {}, _meta(t))
            module, _, attr = named[0].rpartition(".")
            self.traced.params[node] = ParamRef(module, attr, t)
        else:        # a tensor made outside the recording (a constant cached on the module, a default argument)
            self._constants += 1
            node = self._create("get_attr", f"_recorded_constant_{self._constants}", (), {}, _meta(t))
        self.nodes[t] = node
        return node

    def _args(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.node_of(value)
        if isinstance(value, (tuple, list)):
            return type(value)(self._args(v) for v in value) if type(value) in (tuple, list) else \
                tuple(self._args(v) for v in value)
        if isinstance(value, dict):
            return {k: self._args(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self._args(value.start), self._args(value.stop), self._args(value.step))
        return value

    def _result(self, node: torch.fx.Node, out: Any) -> None:
        """Give the op's tensors (and each tensor of a tuple or list) their node."""
        if isinstance(out, torch.Tensor):
            self.nodes[out] = node
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    self.nodes[item] = self._create("call_function", operator.getitem, (node, i), {}, _meta(item))

    def inputs(self, args: tuple, kwargs: dict) -> None:
        leaves, _ = tree_flatten((args, kwargs))
        for i, t in enumerate(x for x in leaves if isinstance(x, torch.Tensor)):
            if t not in self.nodes:
                self.nodes[t] = self._create("placeholder", f"input_{i}", (), {}, _meta(t))

    def output(self, out: Any) -> None:
        found = [(path, t) for path, t in output_leaves(out) if isinstance(t, torch.Tensor)]
        self.busy += 1
        self.traced.output_paths = [path for path, _ in found]
        self.graph.output([self.node_of(t) for _, t in found])

    # --- torch calls ------------------------------------------------------------------------------
    def function(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> Any:
        op, target, label = _spelling(func)
        if label == "__iter__" and args and isinstance(args[0], torch.Tensor):
            items = list(out)
            source = self.node_of(args[0])
            for i, item in enumerate(items):
                if isinstance(item, torch.Tensor):
                    self.nodes[item] = self._create("call_function", operator.getitem, (source, i), {}, _meta(item))
            return iter(items)
        if label in VALUE_READS:
            if args and isinstance(args[0], torch.Tensor):
                self.value_reads.append(f"{label} in {self.where()}")
                self._create(op, target, self._args(tuple(args)), self._args(kwargs), out if _plain(out) else None)
            return out
        if not _carries_tensors(out):
            if target is operator.setitem and args and isinstance(args[0], torch.Tensor):
                node = self._create(op, target, self._args(tuple(args)), self._args(kwargs), _meta(args[0]))
                self.nodes[args[0]] = node
            return out
        node = self._create(op, target, self._args(tuple(args)), self._args(kwargs), _meta_tree(out))
        self._result(node, out)
        return out

    def aten(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """An ATen op no recorded call ran: code the function mode cannot see (a C++ extension)."""
        if not _carries_tensors(out) and not any(isinstance(a, torch.Tensor) for a in tree_flatten((args, kwargs))[0]):
            return
        node = self._create("call_function", func, self._args(tuple(args)), self._args(kwargs), _meta_tree(out))
        self._result(node, out)

    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        _, path, cls = self.stack[-1]
        return f"module {path} ({cls.__name__})"

    # --- module calls -----------------------------------------------------------------------------
    def hook(self, model: nn.Module) -> list:
        handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            leaf = is_leaf(module, self.leaf_types)
            handles.append(module.register_forward_pre_hook(self._pre(name, leaf), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post(name), with_kwargs=True, always_call=True))
        return handles

    def _pre(self, name: str, leaf: bool):
        def pre(module, args, kwargs):
            if self.busy:
                self.actions.append(None)
                return None
            self.busy += 1
            try:
                index = self.calls.get(name, 0)
                self.calls[name] = index + 1
                if leaf:
                    self.actions.append(("leaf", name, index, self._args(tuple(args)), self._args(dict(kwargs))))
                    return None          # busy stays raised until the leaf returns
                self.stack.append((f"{name}@{index}", name, type(module)))
                self.actions.append(("scope", name, index))
            except BaseException:
                self.busy -= 1
                raise
            self.busy -= 1
            return None
        return pre

    def _post(self, name: str):
        def post(module, args, kwargs, out):
            action = self.actions.pop()
            if action is None:
                return None
            if action[0] == "leaf":
                _, _, index, node_args, node_kwargs = action
                node = self._create("call_module", name, node_args, node_kwargs, _meta_tree(out))
                self.traced.leaf_calls[node] = index
                self._result(node, out)
                self.busy -= 1
            else:
                self.stack.pop()
                index = action[2]
            if isinstance(out, torch.Tensor) and out in self.nodes:
                self.traced.module_outputs.setdefault(self.nodes[out], []).append((name, index))
            return None
        return post


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.recorder
        if rec.busy:
            return func(*args, **kwargs)
        rec.busy += 1
        try:
            out = func(*args, **kwargs)
            return rec.function(func, args, kwargs, out)
        finally:
            rec.busy -= 1


class _DispatchWatcher(TorchDispatchMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rec = self.recorder
        if not rec.busy:
            rec.busy += 1
            try:
                rec.aten(func, args, kwargs, out)
            finally:
                rec.busy -= 1
        return out


def _spelling(func: Callable) -> tuple[str, Any, str]:
    """(fx op, target, label) for a callable the function mode saw, spelled as fx spells it."""
    if isinstance(func, types.MethodWrapperType) and func.__name__ == "__get__":    # a property: x.data, x.T
        name = getattr(func.__self__, "__name__", "property")
        return "call_method", _METHOD_NAMES.get(name, name), name
    name = getattr(func, "__name__", None)
    if name is not None and (getattr(torch.Tensor, name, None) is func or getattr(torch._C.TensorBase, name, None) is func):
        if name in _FUNCTION_METHODS:
            return "call_function", _FUNCTION_METHODS[name], name
        return "call_method", _METHOD_NAMES.get(name, name), name
    return "call_function", func, name or str(func)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def _meta_tree(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return _meta(out)
    if isinstance(out, (tuple, list)):
        return tuple(_meta_tree(o) for o in out)
    return out if _plain(out) else None


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.Size))


def _carries_tensors(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out)
