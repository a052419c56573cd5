"""Activations, pooling, softmax, attention, elementwise merges and reductions."""
from __future__ import annotations

import torch

from ..channels import OPAQUE, Layout
from . import handler
from .common import _key, _result, _same, _wrap


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


@handler("expand")
def expand(an, call):
    return _same(an, call, call.arg("input"))


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
