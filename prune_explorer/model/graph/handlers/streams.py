"""Concatenation, splitting and indexing along the channel axis."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx

from ..channels import Layout
from . import handler
from .common import _single


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
