"""One handler per op family: how channel ids flow through it, and what it makes a member.

Each handler gets the `Analysis` and a `Call` and returns the result's layout (a `Layout`,
`OPAQUE`, a tuple for multi-output ops, or None for non-tensors). A handler that cannot be sure
refuses the channels it touches with a reason naming the op and its module; it never guesses.
"""
from __future__ import annotations

import math
import operator
from typing import Callable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .channels import OPAQUE, Layout

HANDLERS: dict[str, Callable] = {}


def handler(*names: str):
    def register(fn):
        for name in names:
            HANDLERS[name] = fn
        return fn
    return register


# --- helpers ----------------------------------------------------------------------------------------
def _ref(an, call, role: str):
    """The ParamRef for one tensor argument: a leaf module's own, or a functional op's parameter."""
    if call.module is not None:
        return call.params.get(role)
    return an.param(call.arg(role))


def _computed(an, call, role: str) -> bool:
    """A tensor argument that is computed in forward, not a parameter: the graph cannot slice it."""
    if call.module is not None:
        return False
    value = call.arg(role)
    return an.is_tensor(value) and an.param(value) is None


def _result(call):
    return call.result[0] if isinstance(call.result, (tuple, list)) else call.result


def _wrap(call, layout):
    """Multi-output norms (ATen's native_batch_norm) return (out, stats...): only `out` has channels."""
    if isinstance(call.result, (tuple, list)):
        return (layout,) + (OPAQUE,) * (len(call.result) - 1)
    return layout


def _same(an, call, x, what: str | None = None):
    """`x`'s layout when the result keeps its rank and its channel axes at the same widths."""
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(_result(call)) if layout is None else OPAQUE
    result = _result(call)
    ins, outs = an.shape(x), getattr(result, "shape", None)
    if outs is None or len(ins) != len(outs) or any(ins[a] != outs[a] for a in layout.axes):
        an.refuse(layout, f"{what or call.what} changes the channel axis")
        return OPAQUE
    an.link[call.node] = x
    return layout


def _key(an, owner: str, attr: str, kind: str) -> str:
    """Slice name: the module's name, or module.attr when the module holds more than one member."""
    if kind == "channel_param":
        return f"{owner}.{attr}" if owner else attr
    existing = an.members.get(owner)
    if existing is None or (existing.kind == kind and existing.params.get("weight", attr) == attr):
        return owner
    return f"{owner}.{attr}" if owner else attr


def _single(layout) -> bool:
    return isinstance(layout, Layout) and len(layout.axes) == 1


# --- elementwise and spatial --------------------------------------------------------------------
@handler("unary")
def unary(an, call):
    x = call.arg("input")
    others = [a for a in an.tensor_args(call) if a is not x]
    if not an.is_tensor(x) or others:
        return an.not_understood(call)
    return _wrap(call, _same(an, call, x))


@handler("spatial")
def spatial(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    if isinstance(layout, Layout) and layout.axes != (1,):
        an.refuse(layout, f"{call.what} pools or resizes a tensor whose channels are not on dim 1")
        return an.opaque_like(call.result)
    return _wrap(call, _same(an, call, x))


@handler("metadata")
def metadata(an, call):
    return None


@handler("softmax")
def softmax(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    dim = call.arg("dim")
    if isinstance(layout, Layout) and isinstance(dim, int) and dim % an.shape(x).__len__() in layout.axes:
        an.refuse(layout, f"{call.what} normalises across the channels")
        return OPAQUE
    return _same(an, call, x)


@handler("attention")
def attention(an, call):
    """Its inputs are refused, and its output is a group of its own, refused with the reason."""
    reason = f"{call.what} is attention: its widths are not prunable (attention heads are out of scope)"
    an.not_understood(call, reason)
    result = _result(call)
    if not isinstance(result, torch.Tensor) or result.dim() < 2:
        return an.opaque_like(call.result)
    out = Layout((result.dim() - 1,), an.channels.new(result.shape[-1], producer=call.module or call.what,
                                                      reason=reason))
    return _wrap(call, out)


# --- convolution, linear, norms ----------------------------------------------------------------
@handler("conv")
def conv(an, call):
    if call.arg("transposed", False):
        return conv_transpose(an, call)
    x = call.arg("input")
    weight, bias = _ref(an, call, "weight"), _ref(an, call, "bias")
    if weight is None or _computed(an, call, "bias") or (bias is not None and bias.module != weight.module):
        return an.not_understood(call, f"{call.what} uses a weight or bias that is not one module's parameter")
    groups = int(call.arg("groups", 1) or 1)
    layout = an.layout_of(x)
    if isinstance(layout, Layout) and (layout.axes != (1,) or layout.factor != 1):
        an.refuse(layout, f"{call.what} convolves a tensor whose channels are not on dim 1")
        layout = OPAQUE
    out_ch, per_group = int(weight.tensor.shape[0]), int(weight.tensor.shape[1])
    owner = weight.module
    params = {"weight": weight.attr, "bias": bias.attr if bias else None}
    inp = layout.ids if isinstance(layout, Layout) else None
    if groups == 1:
        name = _key(an, owner, weight.attr, "conv")
        out = an.produce(name, out_ch)
        an.member(name, owner, "conv", params, out=out, inp=inp, what=call.what)
        return Layout((1,), out)
    module = an.modules.get(owner)
    if per_group == 1 and out_ch == groups:
        if inp is None:
            return OPAQUE
        settable = isinstance(module, _ConvNd) and module.groups == groups and getattr(module, weight.attr) is weight.tensor
        if not settable:
            an.refuse(layout, f"{call.what} is a depthwise convolution whose groups is not an attribute of "
                              f"module {owner!r} that surgery can change")
        name = _key(an, owner, weight.attr, "depthwise")
        an.member(name, owner, "depthwise", params, out=inp, what=call.what)
        return Layout((1,), inp)
    name = _key(an, owner, weight.attr, "grouped")
    out = an.produce(name, out_ch)
    rule = (f"grouped convolution {owner!r} (groups={groups}) needs the same number of channels removed "
            f"from each of its {groups} groups")
    if inp is not None:
        an.channels.balance(inp, groups, rule)
    an.channels.balance(out, groups, rule)
    an.member(name, owner, "grouped", params, out=out, inp=inp, groups=groups, what=call.what)
    return Layout((1,), out)


@handler("conv_transpose")
def conv_transpose(an, call):
    return an.not_understood(call, f"{call.what} is a transposed convolution (not supported)")


@handler("linear")
def linear(an, call):
    x = call.arg("input")
    weight, bias = _ref(an, call, "weight"), _ref(an, call, "bias")
    if weight is None or _computed(an, call, "bias") or (bias is not None and bias.module != weight.module):
        return an.not_understood(call, f"{call.what} uses a weight or bias that is not one module's parameter")
    layout = an.layout_of(x)
    last = len(an.shape(x)) - 1
    out_f, in_f = int(weight.tensor.shape[0]), int(weight.tensor.shape[1])
    if isinstance(layout, Layout) and layout.axes != (last,):
        if last in layout.axes:
            an.refuse(layout, f"{call.what} mixes a split channel axis")
            layout = OPAQUE
        else:  # the weight acts on another axis: channels pass through where they are
            return _same(an, call, x)
    inp, factor = None, 1
    if isinstance(layout, Layout):
        if layout.width == in_f:
            inp, factor = layout.ids, layout.factor
        else:
            an.refuse(layout, f"{call.what} in_features do not match the channels feeding it")
    owner = weight.module
    name = _key(an, owner, weight.attr, "linear")
    out = an.produce(name, out_f)
    an.member(name, owner, "linear", {"weight": weight.attr, "bias": bias.attr if bias else None},
              out=out, inp=inp, in_factor=factor, in_axis=last, what=call.what)
    return Layout((call.result.dim() - 1,), out)


_NORM_ROLES = ("weight", "bias", "running_mean", "running_var")


@handler("batch_norm", "instance_norm")
def batch_norm(an, call):
    x = call.arg("input")
    if any(_computed(an, call, r) for r in _NORM_ROLES):
        return an.not_understood(call, f"{call.what} takes statistics or affine that are not parameters or buffers")
    layout = an.layout_of(x)
    if isinstance(layout, Layout) and (layout.axes != (1,) or layout.factor != 1):
        an.refuse(layout, f"{call.what} normalises a tensor whose channels are not on dim 1")
        return _wrap(call, OPAQUE)
    refs = {r: ref for r in _NORM_ROLES if (ref := _ref(an, call, r)) is not None}
    if refs and isinstance(layout, Layout):
        owners = {ref.module for ref in refs.values()}
        if len(owners) > 1:
            return an.not_understood(call, f"{call.what} takes its tensors from several modules {sorted(owners)}")
        owner = owners.pop()
        first = next(iter(refs.values())).attr
        name = _key(an, owner, first, "batch_norm")
        an.member(name, owner, "batch_norm", {r: ref.attr for r, ref in refs.items()}, out=layout.ids, what=call.what)
    return _passed_on(an, call, x, layout)


def _passed_on(an, call, x, layout):
    """A norm whose output carries its input's channels where they were."""
    if isinstance(layout, Layout):
        an.link[call.node] = x
        return _wrap(call, layout)
    return _wrap(call, an.opaque_like(_result(call)))


@handler("layer_norm")
def layer_norm(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    shape = call.arg("normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    nd = len(an.shape(x))
    if not isinstance(layout, Layout) or not set(layout.axes) & set(range(nd - k, nd)):
        return _passed_on(an, call, x, layout)
    if k != 1 or layout.axes != (nd - 1,) or layout.factor != 1:
        an.refuse(layout, f"{call.what} normalises across the channels together with other dims")
        return _wrap(call, layout)
    _channel_norm(an, call, layout, nn.LayerNorm, axis=nd - 1, groups=1, spatial=False, width=an.shape(x)[-1])
    return _passed_on(an, call, x, layout)


@handler("group_norm")
def group_norm(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    groups = int(call.arg("num_groups", 1))
    if not isinstance(layout, Layout):
        return _wrap(call, an.opaque_like(_result(call)))
    width = an.shape(x)[1]
    if layout.axes != (1,) or layout.factor != 1:
        an.refuse(layout, f"{call.what} normalises a tensor whose channels are not on dim 1")
        return _wrap(call, layout)
    if groups != width:
        _channel_norm(an, call, layout, nn.GroupNorm, axis=1, groups=groups, spatial=True, width=width)
        return _passed_on(an, call, x, layout)
    weight, bias = _ref(an, call, "weight"), _ref(an, call, "bias")
    owner = (weight or bias).module if (weight or bias) else None
    if owner is not None:
        if not isinstance(an.modules.get(owner), torch.nn.GroupNorm):
            an.refuse(layout, f"{call.what} takes num_groups from code, not from a module surgery can resize")
            return _wrap(call, layout)
        params = {"weight": weight.attr if weight else None, "bias": bias.attr if bias else None}
        an.member(_key(an, owner, (weight or bias).attr, "group_norm"), owner, "group_norm", params,
                  out=layout.ids, what=call.what)
    an.link[call.node] = x
    return _wrap(call, layout)


@handler("prelu")
def prelu(an, call):
    x = call.arg("input")
    weight = _ref(an, call, "weight")
    layout = an.layout_of(x)
    if weight is None:
        return an.not_understood(call)
    if weight.tensor.numel() > 1:
        if not (isinstance(layout, Layout) and layout.axes == (1,) and layout.factor == 1):
            return an.not_understood(call)
        an.member(_key(an, weight.module, weight.attr, "channel_param"), weight.module, "channel_param",
                  {"tensor": weight.attr}, out=layout.ids, what=call.what)
    return _same(an, call, x)


@handler("channel_norm")
def pruned_channel_norm(an, call):
    """A norm pruning made before (`PrunedChannelNorm`, a leaf): cut again, it stays one."""
    x = call.arg("input")
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return _passed_on(an, call, x, layout)
    module = an.modules[call.module]
    nd = len(an.shape(x))
    axis = module.axis % nd
    if layout.axes != (axis,) or layout.factor != 1:
        an.refuse(layout, f"{call.what} normalises across channels that are not on its axis {module.axis}")
        return _wrap(call, layout)
    _channel_norm(an, call, layout, type(module), axis=axis, groups=module.num_groups, spatial=module.spatial,
                  width=module.full_width)
    return _passed_on(an, call, x, layout)


def _channel_norm(an, call, layout, module_type, *, axis: int, groups: int, spatial: bool, width: int) -> None:
    """A norm whose statistics span the channels: a member of kind "channel_norm" (surgery makes it a
    `PrunedChannelNorm`) when its tensors are one module's and that module's forward is this norm
    alone; refused otherwise, naming why."""
    across = f"{call.what} normalises across the channels"
    if any(_computed(an, call, r) for r in ("weight", "bias")):
        an.refuse(layout, f"{across} with a weight or bias computed in forward")
        return
    refs = [ref for r in ("weight", "bias") if (ref := _ref(an, call, r)) is not None]
    owner = call.module or (refs[0].module if refs else None)
    if owner is None or any(ref.module != owner for ref in refs):
        an.refuse(layout, f"{across} outside one module surgery could replace")
        return
    module = an.modules.get(owner)
    if not isinstance(module, module_type):
        an.refuse(layout, f"{across} with the parameters of module {owner!r} ({type(module).__name__}), "
                          f"not a {module_type.__name__} surgery can replace")
        return
    own = {attr for attr in ("weight", "bias") if getattr(module, attr, None) is not None}
    if {ref.attr for ref in refs} != own or any(ref.tensor is not getattr(module, ref.attr) for ref in refs):
        an.refuse(layout, f"{across} with tensors other than module {owner!r}'s own weight and bias")
        return
    nd = len(an.shape(call.arg("input")))
    extra = {"axis": axis - nd if not spatial else axis, "num_groups": groups, "spatial": spatial,
             "full_width": width}
    params = {attr: (attr if attr in own else None) for attr in ("weight", "bias")}
    name = _key(an, owner, "weight", "channel_norm")
    if call.module is not None:
        if type(module).forward is not module_type.forward:
            an.refuse(layout, f"{across}, and {type(module).__name__} overrides forward: trace it through "
                              "(leave it out of leaf_modules) so the graph can check its code")
            return
        an.member(name, owner, "channel_norm", params, out=layout.ids, inp=layout.ids, in_axis=axis, extra=extra,
                  what=call.what)
        return
    member = an.member(name, owner, "channel_norm", params, out=layout.ids, inp=layout.ids, in_axis=axis,
                       extra=extra, what=call.what)
    an.deferred.append(lambda an: _norm_is_the_module(an, call, layout, member, across))


_IDENTITY = ("contiguous", "clone", "alias", "detach", "lift_fresh_copy")


def _norm_is_the_module(an, call, layout, member, across: str) -> None:
    """The norm's module does nothing in forward but this norm and axis moves that undo each other
    (LayerNorm2d: permute, layer_norm, permute back): then the module's input carries the channels
    on `member.in_axis`, and the module can be replaced by the pruned norm."""
    owner = member.module
    scoped = an.scope_nodes(owner)
    inside = set(scoped)

    def step(node):
        """('move', order) / ('same', None) / None for a node inside the module."""
        c = an._call(node, an.values.get(node))
        if c is None:
            return None
        if c.handler in _ORDERS:
            return "move", _ORDERS[c.handler](c, len(an.shape(c.arg("input"))))
        if c.handler == "metadata" or not isinstance(an.values.get(node), torch.Tensor):
            return "same", None
        if c.handler == "getitem" and c.arg("index") == 0 and isinstance(an.values.get(c.arg("input")), tuple):
            return "same", None                      # (out, mean, rstd)[0] of ATen's native norms
        target = getattr(node.target, "__name__", node.target) if node.op != "call_method" else node.target
        packet = getattr(getattr(node.target, "overloadpacket", None), "__name__", target)
        if c.handler == "unary" and packet in _IDENTITY:
            return "same", None
        return None

    def fail(why: str) -> None:
        an.refuse(layout, f"{across} inside module {owner!r} ({type(an.modules[owner]).__name__}), whose forward "
                          f"{why}, so it cannot be replaced by a pruned norm")

    chain, before, node = [], [], call.arg("input")
    while node in inside:                            # back to the module's input
        kind = step(node)
        if kind is None:
            return fail(f"also runs {node.name}")
        chain.append(node)
        before.insert(0, kind)
        node = an._call(node, an.values[node]).arg("input")
    module_input = node
    after, node = [], call.node
    outputs = an.traced.module_outputs
    while not any(name == owner for name, _ in outputs.get(node, ())):   # on to the module's output
        users = [u for u in node.users if u in inside and isinstance(an.values.get(u), torch.Tensor)]
        if len(users) != 1:
            return fail("uses the norm's result more than once" if users else "does not return the norm's result")
        node = users[0]
        kind = step(node)
        if kind is None:
            return fail(f"also runs {node.name}")
        chain.append(node)
        after.append(kind)
    norms = ("layer_norm", "group_norm")
    others = [n for n in scoped if n not in chain and isinstance(an.values.get(n), torch.Tensor) and step(n) is None
              and getattr(an._call(n, an.values[n]), "handler", None) not in norms]
    if others:                                       # e.g. an in-place op on the input
        return fail(f"also runs {others[0].name}")
    order = list(range(len(an.shape(module_input))))
    for kind, o in before + after:
        if kind == "move":
            order = [order[i] for i in o]
    entry = an.layout_of(module_input)
    if order != sorted(order) or not isinstance(entry, Layout) or len(entry.axes) != 1 or \
            not np.array_equal(entry.ids, layout.ids):
        return fail("moves the channel axis without moving it back")
    member.in_axis = entry.axis
    if not member.extra["spatial"]:
        member.extra["axis"] = entry.axis - len(an.shape(module_input))
    elif entry.axis != 1:
        return fail("normalises groups of channels that are not on dim 1")


# --- merging tensors ------------------------------------------------------------------------------
def _param_dim(an, node, axis: int, offset: int):
    """(ParamRef, dim of the parameter) when `node` is a parameter (or a view of one) whose dim at
    result axis `axis` is the channel dim, else None."""
    view = an.param_views.get(node)
    if view is None:
        return None
    ref, dims = view
    own = axis - offset
    if own < 0 or own >= len(dims) or dims[own] is None:
        return None
    return ref, dims[own]


def merge(an, call, residual: bool):
    result = call.result
    if not isinstance(result, torch.Tensor):
        return an.not_understood(call)
    nd = result.dim()
    operands = [a for a in an.tensor_args(call)]
    layouts = [(a, an.layout_of(a), nd - len(an.shape(a))) for a in operands if isinstance(an.layout_of(a), Layout)]
    if not layouts:
        return OPAQUE
    first_node, first, first_off = layouts[0]
    axes = tuple(ax + first_off for ax in first.axes)
    if len(axes) != 1:
        return an.not_understood(call, f"{call.what} combines a tensor mid channel shuffle")
    axis = axes[0]
    width = result.shape[axis]
    coupled = 0
    for node in operands:
        shape, offset = an.shape(node), nd - len(an.shape(node))
        size = shape[axis - offset] if axis - offset >= 0 else 1
        layout = an.layout_of(node)
        if size == 1 and width != 1:
            if isinstance(layout, Layout) and tuple(ax + offset for ax in layout.axes) != axes:
                an.refuse(layout, f"{call.what} broadcasts these channels over other channels")
            continue
        if isinstance(layout, Layout):
            if tuple(ax + offset for ax in layout.axes) != axes or layout.factor != first.factor \
                    or layout.ids.shape != first.ids.shape:
                reason = f"{call.what} combines tensors whose channels do not line up"
                an.refuse(layout, reason)
                an.refuse(first, reason)
                return OPAQUE
            if node is not first_node:
                an.channels.couple(first.ids, layout.ids)
                coupled += 1
            continue
        found = _param_dim(an, node, axis, offset)
        if found is not None and first.factor == 1:
            ref, dim = found
            an.member(_key(an, ref.module, ref.attr, "channel_param"), ref.module, "channel_param",
                      {"tensor": ref.attr}, out=first.ids, param_dim=dim, what=call.what)
            continue
        an.refuse(first, f"{call.what} mixes the channels with a tensor the graph cannot follow")
        return OPAQUE
    if residual and coupled:
        an.channels.residual.append(first.ids.reshape(-1))
    if first_off:
        return first.moved(axes)
    return first


@handler("merge")
def merge_plain(an, call):
    return merge(an, call, residual=False)


@handler("residual")
def merge_residual(an, call):
    return merge(an, call, residual=True)


# --- concatenation and splitting ----------------------------------------------------------------
@handler("cat")
def cat(an, call):
    tensors = call.arg("tensors") or ()
    result = call.result
    dim = call.arg("dim", 0) or 0
    if not isinstance(result, torch.Tensor) or not isinstance(dim, int):
        return an.not_understood(call)
    dim %= result.dim()
    layouts = [an.layout_of(t) for t in tensors]
    if not all(_single(x) for x in layouts):
        return an.not_understood(call, f"{call.what} (concatenates a tensor the graph cannot follow)")
    if len({x.axes for x in layouts}) != 1:
        return an.not_understood(call, f"{call.what} (concatenates tensors with channels on different axes)")
    if layouts[0].axes == (dim,):
        if len({x.factor for x in layouts}) != 1:
            return an.not_understood(call, f"{call.what} (concatenates flattened tensors of different sizes)")
        return Layout((dim,), np.concatenate([x.ids for x in layouts]), layouts[0].factor)
    for other in layouts[1:]:
        if other.ids.shape != layouts[0].ids.shape or other.factor != layouts[0].factor:
            return an.not_understood(call, f"{call.what} combines tensors whose channels do not line up")
        an.channels.couple(layouts[0].ids, other.ids)
    return layouts[0]


@handler("chunk", "split")
def chunk(an, call):
    x = call.arg("input")
    result = call.result
    if not an.is_tensor(x) or not isinstance(result, (tuple, list)):
        return an.not_understood(call)
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(result)
    dim = call.arg("dim", 0) or 0
    dim %= len(an.shape(x))
    if dim not in layout.axes:
        return tuple(layout if isinstance(r, torch.Tensor) else None for r in result)
    sizes = [r.shape[dim] for r in result]
    if call.handler != "chunk" or len(layout.axes) != 1 or layout.factor != 1 or len(set(sizes)) != 1:
        return an.not_understood(call, f"{call.what} splits the channels at fixed sizes (a pruned model "
                                       "would split them at the same sizes)")
    pieces = np.split(layout.ids, len(sizes))
    an.channels.split_evenly(pieces)
    return tuple(Layout(layout.axes, p) for p in pieces)


@handler("getitem")
def getitem(an, call):
    src, index = call.arg("input"), call.arg("index")
    value = an.values.get(src) if isinstance(src, torch.fx.Node) else None
    if isinstance(value, (tuple, list)):
        layouts = an.layout_of(src)
        if isinstance(layouts, tuple) and isinstance(index, int):
            return layouts[index]
        return an.opaque_like(call.result)
    if not isinstance(value, torch.Tensor):
        return None
    return _index(an, call, src, index)


def _index(an, call, src, index):
    layout = an.layout_of(src)
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    shape = an.shape(src)
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, torch.fx.Node) for i in items):
        return an.not_understood(call, f"{call.what} indexes with a tensor")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(shape) - (len(items) - 1 - sum(i is None for i in items))
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
    mapping: dict[int, int] = {}
    i_in = i_out = 0
    for item in items:
        if item is None:
            i_out += 1
            continue
        if isinstance(item, int):
            if i_in in layout.axes:
                return an.not_understood(call, f"{call.what} picks single channels")
            i_in += 1
            continue
        if isinstance(item, slice):
            full = item.start in (None, 0) and item.step in (None, 1) and (item.stop is None or item.stop >= shape[i_in])
            if i_in in layout.axes and not full:
                return an.not_understood(call, f"{call.what} slices the channel axis")
            mapping[i_in] = i_out
            i_in += 1
            i_out += 1
            continue
        return an.not_understood(call)
    for rest in range(i_in, len(shape)):
        mapping[rest] = i_out
        i_out += 1
    an.link[call.node] = src
    return layout.moved(tuple(mapping[a] for a in layout.axes))


@handler("slice")
def aten_slice(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    dim = call.arg("dim", 0) % len(an.shape(x))
    if "index" in call.args:  # select
        if dim in layout.axes:
            return an.not_understood(call, f"{call.what} picks single channels")
        return layout.moved(tuple(a - (a > dim) for a in layout.axes))
    if dim in layout.axes and call.result.shape[dim] != an.shape(x)[dim]:
        return an.not_understood(call, f"{call.what} slices the channel axis")
    return layout


# --- moving and reshaping axes ----------------------------------------------------------------------
def _permuted(layout: Layout, order: list[int]) -> Layout:
    """`order[new] = old`: where each old axis goes; the ids array follows when two axes swap."""
    new = [order.index(a) for a in layout.axes]
    ids = layout.ids
    if len(new) == 2 and new[0] > new[1]:
        ids, new = ids.T, [new[1], new[0]]
    return Layout(tuple(new), ids, layout.factor)


def _permute_order(call, nd: int) -> list[int]:
    return [int(d) % nd for d in call.arg("dims")]


def _transpose_order(call, nd: int) -> list[int]:
    a, b = int(call.arg("dim0")) % nd, int(call.arg("dim1")) % nd
    order = list(range(nd))
    order[a], order[b] = order[b], order[a]
    return order


def _movedim_order(call, nd: int) -> list[int]:
    src, dst = call.arg("source"), call.arg("destination")
    src = [s % nd for s in ([src] if isinstance(src, int) else src)]
    dst = [d % nd for d in ([dst] if isinstance(dst, int) else dst)]
    order: list[int | None] = [None] * nd
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(a for a in range(nd) if a not in src)
    return [o if o is not None else next(rest) for o in order]


_ORDERS = {"permute": _permute_order, "transpose": _transpose_order, "movedim": _movedim_order}


@handler(*_ORDERS)
def move_axes(an, call):
    """permute / transpose / movedim: the channel axis goes where the op sends it."""
    x = call.arg("input")
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    an.link[call.node] = x
    return _permuted(layout, _ORDERS[call.handler](call, len(an.shape(x))))


@handler("expand")
def expand(an, call):
    return _same(an, call, call.arg("input"))


def _sizes_given(call) -> tuple | None:
    """The target sizes of view/reshape as written in the code (fx only), else None."""
    target = call.node.target
    if call.node.op == "call_method" and target in ("view", "reshape"):
        return tuple(call.arg("shape"))
    if target is torch.reshape:
        shape = call.arg("shape")
        return tuple(shape) if isinstance(shape, (tuple, list)) else None
    return None


def _fixed(sizes: tuple | None, dims: list[int]) -> bool:
    """Some of `dims` is written as a literal size (a pruned model would keep it)."""
    if sizes is None or len(sizes) <= max(dims):
        return False
    return any(isinstance(sizes[d], int) and sizes[d] != -1 for d in dims)


def _channel_width_read(an, size) -> tuple[torch.fx.Node, Layout] | None:
    """A size written as `t.shape[i]` / `t.size(i)` (fx) where dim i of `t` is its channel axis: the
    tensor whose width it reads, and that tensor's channels."""
    if not isinstance(size, torch.fx.Node):
        return None
    source, dim = None, None
    if size.op == "call_function" and size.target is operator.getitem and len(size.args) == 2:
        shape, dim = size.args
        if isinstance(shape, torch.fx.Node) and shape.op == "call_function" and shape.target is getattr \
                and shape.args[1:] == ("shape",):
            source = shape.args[0]
        elif isinstance(shape, torch.fx.Node) and shape.op == "call_method" and shape.target == "size" \
                and len(shape.args) == 1 and not shape.kwargs:
            source = shape.args[0]
    elif size.op == "call_method" and size.target == "size" and len(size.args) == 2:
        source, dim = size.args
    if not an.is_tensor(source) or not isinstance(dim, int):
        return None
    layout = an.layout_of(source)
    if not isinstance(layout, Layout) or len(layout.axes) != 1 or layout.factor != 1 or \
            dim % len(an.shape(source)) != layout.axes[0]:
        return None
    return source, layout


def _sizes_follow_their_channels(an, call, sizes, out) -> None:
    """A reshape given another tensor's width (`reshape(B, G, P, D)` with `D = x.shape[-1]`): the
    pruned model computes that size from the pruned tensor, so the dim must carry those same
    channels, in any order; otherwise both sides are refused."""
    for d, size in enumerate(sizes or ()):
        read = _channel_width_read(an, size)
        if read is None:
            continue
        source, width = read
        here = out if isinstance(out, Layout) and out.axes == (d,) and out.factor == 1 else None
        if here is not None and np.array_equal(np.sort(here.ids, axis=None), np.sort(width.ids, axis=None)):
            continue                                 # the same channels (a shuffle may reorder them)
        reason = (f"{call.what} takes the size of dim {d} from the channels of {source.name}, but that dim "
                  "does not carry them: pruning one would not follow the other")
        an.refuse(width, reason)
        if isinstance(out, Layout):
            an.refuse(out, reason)


@handler("reshape")
def reshape(an, call):
    out = _reshape(an, call)
    if an.traced.route == "fx":
        _sizes_follow_their_channels(an, call, _sizes_given(call), out)
    return out


def _reshape(an, call):
    x = call.arg("input")
    result = call.result
    layout = an.layout_of(x)
    if not isinstance(layout, Layout) or not isinstance(result, torch.Tensor):
        return an.opaque_like(result)
    ins, outs = list(an.shape(x)), list(result.shape)
    sizes = _sizes_given(call)
    # torch.export writes every size as a number: whether the code computed it is lost
    packet = getattr(getattr(call.node.target, "overloadpacket", None), "__name__", "")
    fixed_everywhere = an.traced.route == "export" and packet in ("view", "reshape", "_unsafe_view") and ins != outs
    a = layout.axes[0]
    outer = math.prod(ins[:a])
    if len(layout.axes) == 2:
        size, inner = ins[a] * ins[a + 1], math.prod(ins[a + 2:])
        for b in range(len(outs)):
            if math.prod(outs[:b]) == outer and outs[b] == size and math.prod(outs[b + 1:]) == inner:
                if fixed_everywhere or _fixed(sizes, [b]):
                    break
                an.link[call.node] = x
                return Layout((b,), layout.ids.reshape(-1))
        if ins == outs:
            return layout
        return an.not_understood(call, f"{call.what} reshapes a split channel axis")
    size, inner = ins[a], math.prod(ins[a + 1:])
    for b in range(len(outs)):
        if math.prod(outs[:b]) != outer:
            continue
        rest = math.prod(outs[b + 1:])
        if outs[b] == size and rest == inner:
            if ins != outs and (fixed_everywhere or _fixed(sizes, [b])):
                break
            an.link[call.node] = x
            return layout.moved((b,))
        if outs[b] % size == 0 and outs[b] > size and rest * (outs[b] // size) == inner:
            if fixed_everywhere or _fixed(sizes, [b]):
                break
            an.link[call.node] = x
            return Layout((b,), layout.ids, layout.factor * (outs[b] // size))
        if b + 1 < len(outs) and outs[b] * outs[b + 1] == size and outs[b] > 1 and outs[b + 1] > 1 \
                and math.prod(outs[b + 2:]) == inner and layout.factor == 1:
            return _split_view(an, call, x, layout, b, outs, sizes)
    return an.not_understood(call, f"{call.what} (reshapes the channel dim {tuple(ins)} -> {tuple(outs)})")


def _split_view(an, call, x, layout, b, outs, sizes):
    """view(n, g, C/g, ...): the pruned model computes the free dim from its width again, so every
    channel along the written (fixed) dim goes with the others at the same free index."""
    if sizes is None or len(sizes) <= b + 1:
        return an.not_understood(call, f"{call.what} splits the channel axis with sizes the graph cannot read")
    fixed = [isinstance(sizes[d], int) and sizes[d] != -1 for d in (b, b + 1)]
    if fixed.count(True) != 1:
        return an.not_understood(call, f"{call.what} splits the channel axis into sizes that would not follow "
                                       "a pruned width")
    grid = layout.ids.reshape(outs[b], outs[b + 1])
    lines = grid if fixed[0] else grid.T        # lines along the fixed dim, indexed by the free one
    for line in lines[1:]:
        an.channels.couple(lines[0], line)
    an.link[call.node] = x
    return Layout((b, b + 1), grid)


@handler("channel_shuffle")
def channel_shuffle(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    groups = int(call.arg("groups"))
    if not (isinstance(layout, Layout) and layout.axes == (1,) and layout.factor == 1):
        return an.opaque_like(call.result)
    grid = layout.ids.reshape(groups, -1)
    for row in grid[1:]:
        an.channels.couple(grid[0], row)
    return Layout((1,), grid.T.reshape(-1))


@handler("reduce")
def reduce(an, call):
    x = call.arg("input")
    layout = an.layout_of(x)
    result = call.result
    if not isinstance(result, torch.Tensor) or not an.is_tensor(x):
        return an.not_understood(call)
    if not isinstance(layout, Layout):
        return OPAQUE
    nd = len(an.shape(x))
    dims = call.arg("dim")
    if dims is None or (isinstance(dims, (tuple, list)) and not dims):
        return an.not_understood(call, f"{call.what} (reduces over every dim, the channel axis too)")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(not isinstance(d, int) for d in dims):
        return an.not_understood(call)
    dims = [d % nd for d in dims]
    if set(dims) & set(layout.axes):
        return an.not_understood(call, f"{call.what} (reduces over the channel axis)")
    keep = result.dim() == nd
    an.link[call.node] = x
    if keep:
        return layout
    return layout.moved(tuple(a - sum(d < a for d in dims) for a in layout.axes))
