"""Axis moves (permute, transpose, movedim), reshapes and channel shuffles."""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx

from ..channels import Layout
from ..sizes import SizeQuestion, ask
from . import handler
from .common import _size_found, _size_refused


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

    def written(b: int, region, factor: int, multiples: bool = False) -> None:
        """Dim b of the result carries channels and the code may write its size as a number: ask
        which module attribute holds it (`graph/sizes.py`); the answer makes a member or refuses."""
        if not (fixed_everywhere or _fixed(sizes, [b])):
            return
        ask(an, SizeQuestion(call.node, _size_path(call.node, b), int(outs[b]), call.what,
                             _size_found(region, factor=factor), _size_refused(region), multiples=multiples))

    a = layout.axes[0]
    outer = math.prod(ins[:a])
    if len(layout.axes) == 2:
        size, inner = ins[a] * ins[a + 1], math.prod(ins[a + 2:])
        for b in range(len(outs)):
            if math.prod(outs[:b]) == outer and outs[b] == size and math.prod(outs[b + 1:]) == inner:
                flat = layout.ids.reshape(-1)
                if ins != outs:
                    written(b, flat, 1)
                an.link[call.node] = x
                return Layout((b,), flat)
        if ins == outs:
            return layout
        return an.not_understood(call, f"{call.what} reshapes a split channel axis")
    size, inner = ins[a], math.prod(ins[a + 1:])
    for b in range(len(outs)):
        if math.prod(outs[:b]) != outer:
            continue
        rest = math.prod(outs[b + 1:])
        if outs[b] == size and rest == inner:
            if ins != outs:
                written(b, layout.ids, layout.factor)
            an.link[call.node] = x
            return layout.moved((b,))
        if outs[b] % size == 0 and outs[b] > size and rest * (outs[b] // size) == inner:
            written(b, layout.ids, layout.factor * (outs[b] // size), multiples=True)
            an.link[call.node] = x
            return Layout((b,), layout.ids, layout.factor * (outs[b] // size))
        if inner == 1 and 1 < outs[b] < size and outs[b] * rest == size and len(outs) - b >= 3:
            return _unflatten(an, call, x, layout, b, outs, written)
        if b + 1 < len(outs) and outs[b] * outs[b + 1] == size and outs[b] > 1 and outs[b + 1] > 1 \
                and math.prod(outs[b + 2:]) == inner and layout.factor == 1:
            return _split_view(an, call, x, layout, b, outs, sizes)
    return an.not_understood(call, f"{call.what} (reshapes the channel dim {tuple(ins)} -> {tuple(outs)})")


def _unflatten(an, call, x, layout, b, outs, written):
    """Features on the last dim become a channel map (`linear(z).view(B, C, H, W)`): channel c is
    features [c * HW, (c + 1) * HW), which go together; a flatten's channels come back as they were."""
    if layout.factor > 1:
        if outs[b] != layout.ids.size or math.prod(outs[b + 1:]) != layout.factor:
            return an.not_understood(call, f"{call.what} reshapes flattened channels into other channels")
        written(b, layout.ids, 1)
        an.link[call.node] = x
        return Layout((b,), layout.ids)
    grid = layout.ids.reshape(outs[b], -1)
    for column in grid.T[1:]:
        an.channels.couple(grid[:, 0], column)
    channels = grid[:, 0].copy()
    written(b, channels, 1)
    return Layout((b,), channels)


def _size_path(node, b: int) -> tuple:
    """Where dim b's size sits in a view/reshape node's arguments."""
    if "shape" in node.kwargs:
        return ("kwargs", "shape", b)
    if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        return ("args", 1, b)
    return ("args", 1 + b)


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
    if fixed[0]:
        an.parts_written.add(call.node)
    an.link[call.node] = x
    return Layout((b, b + 1), grid)


@handler("pixel_shuffle", "pixel_unshuffle")
def pixel_shuffle(an, call):
    """pixel_shuffle (*, C r², H, W) -> (*, C, r H, r W): output channel c is input channels
    c r² ... c r² + r² - 1, which go together. pixel_unshuffle, the other way: input channel c
    becomes channels c r² ... c r² + r² - 1 (its id r² times)."""
    x = call.arg("input")
    layout = an.layout_of(x)
    shuffle = call.handler == "pixel_shuffle"
    r = int(call.arg("upscale_factor" if shuffle else "downscale_factor"))
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    if layout.axes != (len(an.shape(x)) - 3,) or layout.factor != 1:
        return an.not_understood(call, f"{call.what} moves pixels of a tensor whose channels are not on dim -3")
    if not shuffle:
        return Layout(layout.axes, np.repeat(layout.ids, r * r))
    grid = layout.ids.reshape(-1, r * r)
    for column in grid.T[1:]:
        an.channels.couple(grid[:, 0], column)
    return Layout(layout.axes, grid[:, 0].copy())


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
