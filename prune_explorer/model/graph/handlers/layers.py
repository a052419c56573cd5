"""Convolution, linear, batch norm and PReLU: the members with filters or per-channel tensors."""
from __future__ import annotations

from torch.nn.modules.conv import _ConvNd

from ..channels import OPAQUE, Layout
from . import handler
from .common import _computed, _key, _passed_on, _ref, _same, _wrap


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
