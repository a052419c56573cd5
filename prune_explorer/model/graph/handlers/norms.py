"""Norms whose statistics span the channels (LayerNorm over channels, GroupNorm with several
groups, an earlier PrunedChannelNorm): a `channel_norm` member when one module owns it, else refused."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..channels import Layout
from . import handler
from .common import _computed, _key, _passed_on, _ref, _result, _wrap
from .shapes import _ORDERS


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
