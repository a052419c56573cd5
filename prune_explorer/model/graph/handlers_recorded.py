"""Handlers for ops a recorded forward meets and fx graphs rarely do: torchvision's RoI pooling
(per channel: region k of channel c is read from channel c; boxes never carry channels), NMS (boxes
and scores only), tensor values read into Python (the channels read are refused: a pruned model
would read others), `type_as` / `new_zeros`-style ops that read only a dtype and a device, and
`expand` to sizes written as numbers.
"""
from __future__ import annotations

from .channels import OPAQUE, Layout
from .handlers import HANDLERS, handler


def _on_dim1(layout) -> bool:
    return isinstance(layout, Layout) and layout.axes == (1,) and layout.factor == 1


def _boxes_carry_no_channels(an, call, features) -> None:
    for a in an.tensor_args(call):
        if a not in features and isinstance(an.layout_of(a), Layout):
            an.refuse(an.layout_of(a), f"{call.what} takes these channels as boxes")


@handler("roi_pool")
def roi_pool(an, call):
    """roi_align / roi_pool: (N, C, H, W) features -> (K, C, h, w) regions, channel by channel."""
    x = call.arg("input")
    _boxes_carry_no_channels(an, call, (x,))
    layout = an.layout_of(x)
    if not isinstance(layout, Layout):
        return an.opaque_like(call.result)
    if not _on_dim1(layout):
        an.refuse(layout, f"{call.what} pools regions of a tensor whose channels are not on dim 1")
        return OPAQUE
    return Layout((1,), layout.ids)


@handler("multiscale_roi_pool")
def multiscale_roi_pool(an, call):
    """torchvision's MultiScaleRoIAlign: each region is pooled from one of the named feature maps, so
    their channels must line up (coupled) and the result carries them on dim 1."""
    features = call.arg("input")
    if not isinstance(features, dict):
        return an.not_understood(call)
    chosen = [node for key, node in features.items() if key in call.arg("featmap_names", ())]
    _boxes_carry_no_channels(an, call, tuple(features.values()))
    layouts = [an.layout_of(node) for node in chosen]
    if not chosen or not all(_on_dim1(x) for x in layouts) or len({x.ids.size for x in layouts}) != 1:
        for x in layouts:
            an.refuse(x, f"{call.what} pools feature maps whose channels the graph cannot line up")
        return an.opaque_like(call.result)
    first = layouts[0]
    for other in layouts[1:]:
        an.channels.couple(first.ids, other.ids)
    return Layout((1,), first.ids)


@handler("value_read")
def value_read(an, call):
    x = call.arg("input")
    an.refuse(an.layout_of(x), f"{call.what} reads the channels' values into Python")
    return None


@handler("like")
def like(an, call):
    """`x.type_as(other)`, `x.to(other | dtype | device)`: x's channels where they were; `other`'s
    values are never read, so its channels are not touched."""
    x = call.arg("input")
    if not an.is_tensor(x) or not hasattr(call.result, "shape") or call.result.shape != an.shape(x):
        return an.not_understood(call)
    layout = an.layout_of(x)
    if isinstance(layout, Layout):
        an.link[call.node] = x
        return layout
    return an.opaque_like(call.result)


@handler("fresh")
def fresh(an, call):
    """`x.new_zeros(size)` and kin: a new tensor of x's dtype and device; x's values are not read."""
    return an.opaque_like(call.result)


@handler("expand_to")
def expand_to(an, call):
    """`x.expand(*sizes)`: a size written as a number on the channel axis (not -1) stays the old
    width in a pruned model. fx shows computed sizes as nodes; a recording shows every size as a
    number, so there any such size is refused."""
    x = call.arg("input")
    layout = an.layout_of(x)
    sizes = call.arg("sizes") or ()
    if isinstance(layout, Layout) and an.is_tensor(x) and sizes:
        offset = len(sizes) - len(an.shape(x))
        for axis in layout.axes:
            size = sizes[axis + offset] if 0 <= axis + offset < len(sizes) else None
            if isinstance(size, int) and not isinstance(size, bool) and size != -1:
                an.refuse(layout, f"{call.what} expands to a channel width written as a number ({size})")
                return OPAQUE
    return HANDLERS["expand"](an, call)


@handler("boxes")
def boxes(an, call):
    """NMS: its tensors are boxes and scores, never channels; channels that reach it are refused."""
    for a in an.tensor_args(call):
        an.refuse(an.layout_of(a), f"{call.what} reads these channels as boxes or scores")
    return an.opaque_like(call.result)
