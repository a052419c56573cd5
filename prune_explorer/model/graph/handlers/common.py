"""Helpers every handler uses: parameter references, passing a layout on, member names."""
from __future__ import annotations

import numpy as np

from ..channels import OPAQUE, Layout


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
    """Slice name: the module's name, or module.attr when the module holds more than one member (the
    attribute's name alone for a parameter of the root module)."""
    if kind == "channel_param" or not owner:
        return f"{owner}.{attr}" if owner else attr
    existing = an.members.get(owner)
    if existing is None or (existing.kind == kind and existing.params.get("weight", attr) == attr):
        return owner
    return f"{owner}.{attr}" if owner else attr


def _single(layout) -> bool:
    return isinstance(layout, Layout) and len(layout.axes) == 1


def _passed_on(an, call, x, layout):
    """A norm whose output carries its input's channels where they were."""
    if isinstance(layout, Layout):
        an.link[call.node] = x
        return _wrap(call, layout)
    return _wrap(call, an.opaque_like(_result(call)))


def _params(call, weight, bias) -> dict:
    """Roles -> attributes of the member a conv/linear call makes: a registered kind's module
    lists every tensor it has; otherwise weight and bias."""
    if call.kind is not None:
        return {role: (ref.attr if ref is not None else None) for role, ref in call.params.items()}
    return {"weight": weight.attr, "bias": bias.attr if bias else None}


def _size_found(region, *, factor: int = 1, keep: str | None = None):
    """What a `SizeQuestion` does when the width comes from a module attribute: a member of kind
    `size` counting the kept positions of `region` (`factor` positions each)."""
    def found(an, module: str, attr: str, multiplier: int) -> None:
        if factor % abs(multiplier):
            return _size_refused(region)(an, f"the code reads {attr!r} times {multiplier}, which a pruned width "
                                             "need not be a multiple of")
        value = getattr(an.modules[module], attr)
        sign = 1 if value * multiplier > 0 else -1
        name = f"{module}.{attr}" if module else attr
        an.member(name, module, "size", {}, out=np.asarray(region), out_factor=factor,
                  extra={"attr": attr, "sign": sign, "divisor": multiplier}, what=f"attribute {name}")
    return found


def _size_refused(region):
    """What a `SizeQuestion` does when the width is written in the code: refuse `region`."""
    def missing(an, reason: str) -> None:
        an.channels.refuse(Layout((0,), np.asarray(region)), reason)
    return missing
