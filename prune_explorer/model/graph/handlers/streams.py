"""Concatenation, splitting, slicing, unbinding and indexing along the channel axis."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx

from ..channels import Layout
from . import handler
from ..sizes import SizeQuestion, ask
from .common import _single, _size_found, _size_refused


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
    """chunk: the pruned model chunks its width equally again, so every part must lose as many
    channels. split at sizes written in the code: each part is pruned on its own when the sizes are
    a module attribute (`split(x, self.sizes, 1)`; surgery sets it, `graph/sizes.py`); sizes
    written as numbers are refused."""
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
    if len(layout.axes) != 1 or layout.factor != 1:
        return an.not_understood(call, f"{call.what} splits a channel axis the graph holds as several dims")
    pieces = np.split(layout.ids, np.cumsum(sizes)[:-1])
    parts = tuple(Layout(layout.axes, p) for p in pieces)
    if call.handler == "chunk":
        if len(set(sizes)) != 1:
            return an.not_understood(call, f"{call.what} chunks {sum(sizes)} channels into unequal parts (a pruned "
                                           "model would chunk them otherwise)")
        an.channels.split_evenly(pieces)
        return parts
    key = next((k for k in ("split_size", "split_sizes", "split_size_or_sections") if k in call.args), None)
    given = call.args.get(key)
    path = _path(call.node, key, given)
    if path is None or not (type(given) is int or isinstance(given, (list, tuple)) and
                            all(type(g) is int for g in given)):
        return an.not_understood(call, f"{call.what} splits the channels at sizes computed in forward")
    for i, p in enumerate(pieces):
        an.channels.keep_one(p, f"part {i} of {call.what}")
    everything = layout.ids
    if type(given) is int:                       # equal parts of `given` channels
        if len(set(sizes)) != 1:
            return an.not_understood(call, f"{call.what} splits the channels into parts of {given} with a remainder")
        an.channels.split_evenly(pieces)
        ask(an, SizeQuestion(call.node, path, given, call.what,
                             _split_found(everything, sizes, "int"), _size_refused(everything)))
    else:
        ask(an, SizeQuestion(call.node, path, tuple(given), call.what,
                             _split_found(everything, sizes, "list"), _size_refused(everything)))
    return parts


def _split_found(ids, sizes: list[int], form: str):
    def found(an, module: str, attr: str, multiplier: int) -> None:
        name = f"{module}.{attr}" if module else attr
        an.member(name, module, "split_sizes", {}, out=ids, extra={"attr": attr, "parts": list(sizes), "form": form},
                  what=f"attribute {name}")
    return found


def _path(node, key: str | None, value) -> tuple | None:
    """Where an argument bound as `key` sits in the node: positional index or keyword."""
    if key is None:
        return None
    if key in node.kwargs:
        return ("kwargs", key)
    for i, arg in enumerate(node.args):
        if arg is value:
            return ("args", i)
    return None


@handler("unbind")
def unbind(an, call):
    """Over another dim: the channel axis moves down where it lies after. Over the first of two dims
    a view split the channels into (`view(B, n, C / n, ...)` with n written), one part each, tied
    channel by channel. Over the channels themselves: one tensor per channel for the code, so a
    pruned model would give it fewer; refused."""
    x = call.arg("input")
    layout = an.layout_of(x)
    result = call.result
    if not isinstance(layout, Layout) or not isinstance(result, (tuple, list)):
        return an.opaque_like(result)
    dim = (call.arg("dim", 0) or 0) % len(an.shape(x))
    if dim not in layout.axes:
        return tuple(layout.moved(tuple(a - (a > dim) for a in layout.axes)) for _ in result)
    if len(layout.axes) == 2 and dim == layout.axes[0] and _parts_written(an, x):
        return tuple(Layout((dim,), layout.ids[i]) for i in range(len(result)))
    return an.not_understood(call, f"{call.what} hands the code one tensor per channel (a pruned model would "
                                   "hand it fewer)")


def _parts_written(an, node) -> bool:
    while node is not None:
        if node in an.parts_written:
            return True
        node = an.link.get(node)
    return False


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
    positions = list(range(len(items)))
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(shape) - (len(items) - 1 - sum(i is None for i in items))
        items = items[:at] + [slice(None)] * fill + items[at + 1:]
        positions = positions[:at] + [None] * fill + positions[at + 1:]
    mapping: dict[int, int] = {}
    ids = layout.ids
    i_in = i_out = 0
    for item, written in zip(items, positions):
        if item is None:
            i_out += 1
            continue
        if isinstance(item, int):
            if i_in in layout.axes:
                return an.not_understood(call, f"{call.what} picks single channels")
            i_in += 1
            continue
        if isinstance(item, slice):
            if i_in in layout.axes:
                where = ("args", 1) if not isinstance(index, tuple) else ("args", 1, written)
                ids = _channel_slice(an, call, layout, shape[i_in], item.start, item.stop, item.step, where)
                if ids is None:
                    return an.opaque_like(call.result)
            mapping[i_in] = i_out
            i_in += 1
            i_out += 1
            continue
        return an.not_understood(call)
    for rest in range(i_in, len(shape)):
        mapping[rest] = i_out
        i_out += 1
    if ids is layout.ids:
        an.link[call.node] = src
    return Layout(tuple(mapping[a] for a in layout.axes), ids, layout.factor)


def _channel_slice(an, call, layout, width: int, start, stop, step, where: tuple | None):
    """The ids a slice of the channel axis keeps, asking where each bound written in the code comes
    from (`graph/sizes.py`); None when refused."""
    if any(isinstance(b, torch.fx.Node) for b in (start, stop, step)) or step not in (None, 1):
        an.not_understood(call, f"{call.what} slices the channel axis with a step or at a bound computed in forward")
        return None
    lo, hi, _ = slice(start, stop).indices(width)
    if lo == 0 and hi >= width:
        return layout.ids
    if len(layout.axes) != 1 or layout.factor != 1 or hi <= lo:
        an.not_understood(call, f"{call.what} slices a channel axis the graph holds as several dims")
        return None
    ids = layout.ids
    kept = ids[lo:hi]
    an.channels.keep_one(kept, f"{call.what}")
    for bound, attr in ((start, "start"), (stop, "stop")):
        if bound is None or (attr == "stop" and bound >= width) or (attr == "start" and bound == 0):
            continue
        at = bound % width if bound < 0 else bound
        region = ids[:at] if bound >= 0 else ids[at:]       # positions whose removal moves this bound
        path = None if where is None else where + (attr,)
        if path is None:
            _size_refused(region)(an, f"{call.what} slices the channels at {bound}, a number in the code "
                                      "(a pruned model would keep it)")
            continue
        ask(an, SizeQuestion(call.node, path, int(bound), call.what, _size_found(region), _size_refused(region)))
    return kept


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
    if dim not in layout.axes or call.result.shape[dim] == an.shape(x)[dim]:
        return layout
    ids = _channel_slice(an, call, layout, an.shape(x)[dim], call.arg("start"), call.arg("end"), call.arg("step"), None)
    return an.opaque_like(call.result) if ids is None else Layout(layout.axes, ids)


@handler("narrow")
def narrow(an, call):
    """narrow(x, dim, start, length): a slice [start, start + length)."""
    x = call.arg("input")
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    nd = len(an.shape(x))
    dim, start, length = call.arg("dim"), call.arg("start"), call.arg("length")
    if not isinstance(dim, int):
        return an.not_understood(call)
    dim %= nd
    if dim not in layout.axes:
        an.link[call.node] = x
        return layout
    width = an.shape(x)[dim]
    if any(isinstance(v, torch.fx.Node) for v in (start, length)) or len(layout.axes) != 1 or layout.factor != 1:
        return an.not_understood(call, f"{call.what} narrows the channel axis at a size computed in forward")
    start = start % width if start < 0 else start
    if start == 0 and length >= width:
        an.link[call.node] = x
        return layout
    ids = layout.ids
    kept = ids[start:start + length]
    an.channels.keep_one(kept, f"{call.what}")
    names = ("input", "dim", "start", "length")
    for name, region, value in (("start", ids[:start], start), ("length", kept, length)):
        if name == "start" and start == 0:
            continue
        path = ("kwargs", name) if name in call.node.kwargs else ("args", names.index(name))
        ask(an, SizeQuestion(call.node, path, int(value), call.what, _size_found(region), _size_refused(region)))
    return Layout(layout.axes, kept)
