"""Walk a traced graph once, following channel ids through every op (handlers in the `handlers` package).

What it collects: each tensor's `Layout`, the *members* (tensors that surgery slices: a conv's
weight and bias, a norm's affine and statistics, a per-channel parameter) with the channel ids
along their dims, and the couplings and refusals in `Channels`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.node import map_aggregate

from .channels import OPAQUE, Channels, Layout
from ..kinds import leaf_types
from .ops import OWN_LEAVES, aten_op, bind, function_op, module_op
from .tracing import ParamRef, Traced, _scopes


@dataclass
class Member:
    """Tensors of one module that are cut together: what `ModuleSlices` becomes."""

    name: str
    module: str
    kind: str
    params: dict[str, str | None]
    out: np.ndarray | None = None
    inp: np.ndarray | None = None
    out_factor: int = 1
    in_factor: int = 1
    in_axis: int = 1
    groups: int = 1
    param_dim: int = 0
    extra: dict = field(default_factory=dict)   # kind-specific facts surgery needs (a norm's axis, groups)


@dataclass
class Call:
    """One op as the handlers see it: bound arguments, result, and how to name it."""

    node: torch.fx.Node
    handler: str
    args: dict[str, Any]
    result: Any
    describe: Any                        # str, or a callable giving it (only refusals need the text)
    module: str | None = None            # call_module target (leaf torch.nn module)
    params: dict[str, ParamRef | None] = field(default_factory=dict)   # a leaf module's own tensors
    constants: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None              # a registered layer kind's module: the member's kind

    @property
    def what(self) -> str:
        if callable(self.describe):
            self.describe = self.describe()
        return self.describe

    def arg(self, name: str, default: Any = None) -> Any:
        if name in self.constants:
            return self.constants[name]
        return self.args.get(name, default)


class Analysis:
    def __init__(self, model: nn.Module, traced: Traced):
        self.model = model
        self.traced = traced
        self.modules = dict(model.named_modules())
        self.channels = Channels()
        self.values: dict[torch.fx.Node, Any] = {}
        self.layout: dict[torch.fx.Node, Any] = {}
        self.members: dict[str, Member] = {}
        self.touched: dict[str, dict[int, np.ndarray]] = {}  # module -> channel ids its input/output carry
        self.link: dict[torch.fx.Node, torch.fx.Node] = {}  # node -> the input whose channels it passes on
        self.consumer_inputs: list[torch.fx.Node] = []      # inputs of convs/linears, in graph order
        self._tensor_args: dict[torch.fx.Node, list[torch.fx.Node]] = {}
        self.deferred: list[Any] = []      # checks that need the whole walk: callables run by finish()
        self.sizes: list[Any] = []         # widths written in the code (`sizes.SizeQuestion`), answered by finish()
        self.secondary: dict[torch.fx.Node, Layout] = {}   # a Linear's features on the last dim while the
        #   channels it passes through sit on another axis (a token MLP): followed into the next Linear only
        self.notes: dict[str, str] = {}    # module -> the first refusal of a call in it (graph.unassigned)
        self.refused_layers: dict[str, str] = {}   # conv/linear calls refused before they made a member
        self.input_end = 0                 # channel ids below this carry the model's inputs
        self.parts_written: set[torch.fx.Node] = set()   # views `(B, n, C / n, ...)` with n written
        self._leaves = OWN_LEAVES + leaf_types()
        self._leaf_inputs: dict[tuple[str, int], torch.fx.Node] = {}   # export: own leaves' inputs
        # parameters and their views (unsqueeze, view, [:, None]): result dim -> parameter dim (or None)
        self.param_views: dict[torch.fx.Node, tuple[ParamRef, tuple[int | None, ...]]] = {
            node: (ref, tuple(range(ref.tensor.dim()))) for node, ref in traced.params.items()}
        from . import handlers

        self.handlers = handlers.HANDLERS

    # --- values ---------------------------------------------------------------------------------
    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, torch.fx.Node) and isinstance(self.values.get(x), torch.Tensor)

    def shape(self, x: torch.fx.Node) -> torch.Size:
        return self.values[x].shape

    def layout_of(self, x: Any) -> Any:
        if not isinstance(x, torch.fx.Node):
            return None
        return self.layout.get(x)

    def param(self, x: Any) -> ParamRef | None:
        return self.traced.params.get(x) if isinstance(x, torch.fx.Node) else None

    def tensor_args(self, call: Call) -> list[torch.fx.Node]:
        node = call.node
        if node not in self._tensor_args:
            found: list[torch.fx.Node] = []
            map_aggregate((node.args, node.kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Node) else None)
            self._tensor_args[node] = [a for a in found if self.is_tensor(a)]
        return self._tensor_args[node]

    # --- what handlers call ---------------------------------------------------------------------
    def refuse(self, layout: Any, reason: str) -> None:
        self.channels.refuse(layout, reason)

    def not_understood(self, call: Call, reason: str | None = None) -> Any:
        text = reason or f"{call.what} is not understood"
        for a in self.tensor_args(call):
            self.refuse(self.layout.get(a), text)
            self.refuse(self.secondary.get(a), text)
            if (ref := self.param(a)) is not None:
                self.note(ref.module or ref.attr, text)
        self.note(call.module, text)
        scopes = _scopes(call.node)
        if scopes:
            self.note(list(scopes.values())[-1][0], text)
        if call.handler in ("conv", "conv_transpose", "linear"):
            ref = self.param(call.arg("weight")) if call.module is None else None
            key = call.module or (ref.module or ref.attr if ref is not None else None) or \
                (list(scopes.values())[-1][0] if scopes else call.what)
            self.refused_layers.setdefault(key, text)
        return self.opaque_like(call.result)

    def note(self, module: str | None, reason: str) -> None:
        """The first reason a call in `module` was refused: what `graph.unassigned` says of its layers."""
        if module is not None:
            self.notes.setdefault(module, reason)

    def is_input(self, layout: Any) -> bool:
        """The layout carries only the model's inputs (whose channel axis the graph guessed as dim 1)."""
        return isinstance(layout, Layout) and layout.ids.size > 0 and int(layout.ids.max()) < self.input_end

    def opaque_like(self, result: Any) -> Any:
        if isinstance(result, torch.Tensor):
            return OPAQUE
        if isinstance(result, (tuple, list)):
            return tuple(self.opaque_like(r) for r in result)
        return None

    def produce(self, name: str, size: int) -> np.ndarray:
        """Channel ids of a member's output (one atom per member, however often it is called)."""
        member = self.members.get(name)
        if member is not None and member.out is not None and member.out.size == size:
            return member.out
        return self.channels.new(size, producer=name)

    def member(self, name: str, module: str, kind: str, params: dict, *, out=None, inp=None, out_factor=1,
               in_factor=1, in_axis=1, groups=1, param_dim=0, extra=None, what: str = "") -> Member:
        """Record (or, on a second call, couple) the channels along one member's dims."""
        found = self.members.get(name)
        if found is None:
            found = Member(name, module, kind, dict(params), out, inp, out_factor, in_factor, in_axis, groups, param_dim,
                           dict(extra or {}))
            self.members[name] = found
            return found
        for attr, new, factor_attr, factor in (("out", out, "out_factor", out_factor), ("inp", inp, "in_factor", in_factor)):
            old = getattr(found, attr)
            if new is None:
                continue
            if old is None:
                setattr(found, attr, new)
                setattr(found, factor_attr, factor)
            elif old.shape == new.shape and getattr(found, factor_attr) == factor:
                self.channels.couple(old, new)
            else:
                reason = f"{what} is called on tensors whose channels do not line up"
                self.channels.reasons.append((old, reason))
                self.channels.reasons.append((new, reason))
        return found

    def touch(self, module: str | None, layout: Any) -> None:
        if isinstance(layout, tuple):
            for part in layout:
                self.touch(module, part)
            return
        if module is not None and isinstance(layout, Layout):
            seen = self.touched.setdefault(module, {})
            seen.setdefault(id(layout.ids), layout.ids if layout.ids.ndim == 1 else layout.ids.reshape(-1))

    def scope_nodes(self, module: str) -> list[torch.fx.Node]:
        """Op nodes that run inside `module`'s forward (any call of it), in graph order."""
        if not hasattr(self, "_scope_index"):
            index: dict[str, list[torch.fx.Node]] = {}
            for node in self.traced.graph.nodes:
                if node.op in ("call_function", "call_method", "call_module"):
                    for name in {name for name, _ in _scopes(node).values()}:
                        index.setdefault(name, []).append(node)
            self._scope_index = index
        return self._scope_index.get(module, [])

    def finish(self) -> None:
        """Checks that need the whole graph walked (what a module's forward does around an op), and
        the widths written in the code (which module attribute holds each)."""
        for check in self.deferred:
            check(self)
        self.deferred.clear()
        if self.sizes:
            self.finish_sizes()

    # --- the walk ---------------------------------------------------------------------------------
    def visit(self, n: torch.fx.Node, result: Any) -> None:
        self.values[n] = result
        self.layout[n] = self._visit(n, result)

    def _own_leaf(self, n: torch.fx.Node) -> tuple[str, int] | None:
        """torch.export traces into every module: the scope of one of this package's own leaf
        modules (outermost), which is handled as one call like fx's leaf."""
        for name, call in _scopes(n).values():
            if isinstance(self.modules.get(name), self._leaves):
                return name, call
        return None

    def _visit_own_leaf(self, n: torch.fx.Node, result: Any, key: tuple[str, int]) -> Any:
        name, call_index = key
        for a in self.tensor_args(Call(n, "", {}, result, "")):
            if self._own_leaf(a) != key and a not in self.traced.params and key not in self._leaf_inputs:
                self._leaf_inputs[key] = a
        if (name, call_index) not in self.traced.module_outputs.get(n, ()):
            return self.opaque_like(result)   # inside the module: its output says it all
        mod = self.modules[name]
        op = module_op(mod)
        params = {role: (ParamRef(name, attr, getattr(mod, attr)) if attr else None) for role, attr in op.params(mod).items()}
        call = Call(n, op.handler, {"input": self._leaf_inputs.get(key)}, result, f"module {name} ({type(mod).__name__})",
                    module=name, params=params, constants=op.constants(mod), kind=op.kind)
        out = self.handlers[call.handler](self, call)
        self.touch(name, out)
        return out

    def _visit(self, n: torch.fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            if n in self.traced.params:
                return OPAQUE
            if isinstance(result, torch.Tensor) and result.dim() >= 2:
                layout = Layout((1,), self.channels.new(result.shape[1], reason="carries the model input"))
                self.input_end = self.channels.total
                return layout
            return self.opaque_like(result)
        if n.op == "get_attr":
            return self.opaque_like(result)
        if n.op == "output":
            def mark(a):
                layout = self.layout.get(a) if isinstance(a, torch.fx.Node) else None
                if isinstance(layout, Layout):
                    self.channels.output.append(layout.ids.reshape(-1))
            map_aggregate(n.args, mark)
            return None
        if self.traced.route == "export" and (leaf := self._own_leaf(n)) is not None:
            return self._visit_own_leaf(n, result, leaf)
        call = self._call(n, result)
        if call is None:
            if n.op == "call_module":
                what = f"module {n.target} ({type(self.modules[n.target]).__name__})"
            else:
                label = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
                what = self._describe(n, str(label))
            return self.not_understood(Call(n, "", {}, result, what))
        if self._param_view(call):
            return OPAQUE
        if call.handler in ("conv", "conv_transpose", "linear") and self.is_tensor(call.arg("input")):
            self.consumer_inputs.append(call.arg("input"))
        self._secondary(call)
        out = self.handlers[call.handler](self, call)
        if call.module is not None:
            for a in self.tensor_args(call):
                self.touch(call.module, self.layout.get(a))
            self.touch(call.module, out)
        return out

    def _secondary(self, call: Call) -> None:
        """A Linear's features written beside the channels it passes through go on through
        elementwise ops into the next Linear; anything else that reads them refuses them."""
        for a in self.tensor_args(call):
            features = self.secondary.get(a)
            if features is None:
                continue
            if call.handler == "unary" and len(self.tensor_args(call)) == 1 and \
                    isinstance(call.result, torch.Tensor) and call.result.shape == self.shape(a):
                self.secondary[call.node] = features
            elif call.handler in ("permute", "transpose", "movedim"):
                self.refuse(features, f"{call.what} moves the features a Linear wrote on the last dim onto the "
                                      "positions: their number is the positions' (a token-mixing MLP's output)")
            elif not (call.handler == "linear" and a is call.arg("input")):
                self.refuse(features, f"{call.what} reads the features a Linear wrote on the last dim while the "
                                      "channels it passed through sit on another dim (the graph follows such "
                                      "features through elementwise ops into the next Linear only)")

    def finish_sizes(self) -> None:
        """Answer the widths the walk found written in the code (one more fx trace, of a copy)."""
        from .sizes import answer

        answer(self)

    _VIEW_HANDLERS = ("unary", "reshape", "expand", "getitem")

    def _param_view(self, call: Call) -> bool:
        """A view of a parameter that keeps its non-singleton dims in order (`gamma[:, None, None]`)."""
        if call.handler not in self._VIEW_HANDLERS or call.module is not None:
            return False
        inputs = self.tensor_args(call)
        if len(inputs) != 1 or inputs[0] not in self.param_views or not isinstance(call.result, torch.Tensor):
            return False
        ref, dims = self.param_views[inputs[0]]
        src = [(size, d) for size, d in zip(self.shape(inputs[0]), dims) if size != 1]
        out = [i for i, size in enumerate(call.result.shape) if size != 1]
        if [size for size, _ in src] != [call.result.shape[i] for i in out]:
            return False
        mapping: list[int | None] = [None] * call.result.dim()
        for i, (_, d) in zip(out, src):
            mapping[i] = d
        self.param_views[call.node] = (ref, tuple(mapping))
        return True

    def _call(self, n: torch.fx.Node, result: Any) -> Call | None:
        if n.op == "call_module":
            mod = self.modules[n.target]
            op = module_op(mod)
            what = f"module {n.target} ({type(mod).__name__})"
            if op is None:
                return None
            params = {role: (ParamRef(n.target, attr, getattr(mod, attr)) if attr else None)
                      for role, attr in op.params(mod).items()}
            args = bind(("input",), n.args, n.kwargs)
            return Call(n, op.handler, args, result, what, module=n.target, params=params, constants=op.constants(mod),
                        kind=op.kind)
        if n.op == "call_method":
            found = self._method(n.target)
            label = str(n.target)
        else:
            found = function_op(n.target) or aten_op(n.target)
            label = getattr(n.target, "__name__", str(n.target))
        if found is None:
            return None
        handler, names = found
        return Call(n, handler, bind(names, n.args, n.kwargs), result, lambda: self._describe(n, label))

    @staticmethod
    def _method(name: str):
        from .ops import METHODS

        return METHODS.get(name)

    def _describe(self, n: torch.fx.Node, label: str) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        scope = ""
        if stack:
            path, cls = list(stack.values())[-1]
            from .tracing import _clean_path

            path = _clean_path(path)
            name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            scope = f" in module {path} ({name.rsplit('.', 1)[-1]})" if path else ""
        return f"node {n.name} ({label}){scope}"
