"""Convolution, linear, batch norm and PReLU: the members with filters or per-channel tensors."""
from __future__ import annotations

from ...kinds import KINDS
from ..channels import OPAQUE, Layout
from . import handler
from .common import _computed, _key, _params, _passed_on, _ref, _same, _wrap


def _conv_refs(an, call):
    """(weight, bias) ParamRefs of a conv/linear call, or None when they are not one module's own."""
    weight, bias = _ref(an, call, "weight"), _ref(an, call, "bias")
    if weight is None or _computed(an, call, "bias") or (bias is not None and bias.module != weight.module):
        return None
    return weight, bias


def _channels_in(an, call, x):
    """The ids along dim 1 of a conv's input (None when the graph cannot follow them there)."""
    layout = an.layout_of(x)
    if isinstance(layout, Layout) and (layout.axes != (1,) or layout.factor != 1):
        an.refuse(layout, f"{call.what} convolves a tensor whose channels are not on dim 1")
        return None
    return layout.ids if isinstance(layout, Layout) else None


def _groups_settable(an, call, owner: str, weight, groups: int) -> bool:
    module = an.modules.get(owner)
    return isinstance(module, KINDS["depthwise"].module_types) and module.groups == groups and \
        getattr(module, weight.attr) is weight.tensor


@handler("conv")
def conv(an, call):
    if call.arg("transposed", False):
        return conv_transpose(an, call)
    refs = _conv_refs(an, call)
    if refs is None:
        return an.not_understood(call, f"{call.what} uses a weight or bias that is not one module's parameter")
    weight, bias = refs
    groups = int(call.arg("groups", 1) or 1)
    inp = _channels_in(an, call, call.arg("input"))
    out_ch, per_group = int(weight.tensor.shape[0]), int(weight.tensor.shape[1])
    owner = weight.module
    params = _params(call, weight, bias)
    if groups == 1:
        kind = call.kind or "conv"
        name = _key(an, owner, weight.attr, kind)
        out = an.produce(name, out_ch)
        an.member(name, owner, kind, params, out=out, inp=inp, what=call.what)
        return Layout((1,), out)
    if call.kind is not None:
        return an.not_understood(call, f"{call.what} is a layer of kind {call.kind!r} with groups={groups}; a "
                                       "registered kind is cut as a plain convolution (groups=1) only")
    if per_group == 1 and out_ch == groups:
        if inp is None:
            return OPAQUE
        if not _groups_settable(an, call, owner, weight, groups):
            an.refuse(an.layout_of(call.arg("input")), f"{call.what} is a depthwise convolution whose groups is not "
                                                       f"an attribute of module {owner!r} that surgery can change")
        name = _key(an, owner, weight.attr, "depthwise")
        an.member(name, owner, "depthwise", params, out=inp, what=call.what)
        return Layout((1,), inp)
    name = _key(an, owner, weight.attr, "grouped")
    out = an.produce(name, out_ch)
    _balance(an, f"grouped convolution {owner!r}", groups, inp, out)
    an.member(name, owner, "grouped", params, out=out, inp=inp, groups=groups, what=call.what)
    return Layout((1,), out)


def _balance(an, what: str, groups: int, inp, out) -> None:
    """A grouped conv keeps `groups`: its inputs and outputs lose as many channels from each group."""
    rule = f"{what} (groups={groups}) needs the same number of channels removed from each of its {groups} groups"
    if inp is not None:
        an.channels.balance(inp, groups, rule)
    an.channels.balance(out, groups, rule)


@handler("conv_transpose")
def conv_transpose(an, call):
    """Weight (in, out / groups, k...): the output channels are dim 1, the inputs dim 0."""
    refs = _conv_refs(an, call)
    if refs is None or call.kind is not None:
        return an.not_understood(call, f"{call.what} uses a weight or bias that is not one module's parameter")
    weight, bias = refs
    groups = int(call.arg("groups", 1) or 1)
    inp = _channels_in(an, call, call.arg("input"))
    in_ch, per_group = int(weight.tensor.shape[0]), int(weight.tensor.shape[1])
    out_ch = per_group * groups
    owner = weight.module
    params = _params(call, weight, bias)
    if groups > 1 and per_group == 1 and in_ch == groups:
        if inp is None:
            return OPAQUE
        if not _groups_settable(an, call, owner, weight, groups):
            an.refuse(an.layout_of(call.arg("input")), f"{call.what} is a depthwise transposed convolution whose "
                                                       f"groups is not an attribute of module {owner!r} that surgery "
                                                       "can change")
        name = _key(an, owner, weight.attr, "depthwise_transpose")
        an.member(name, owner, "depthwise_transpose", params, out=inp, what=call.what)
        return Layout((1,), inp)
    name = _key(an, owner, weight.attr, "conv_transpose")
    out = an.produce(name, out_ch)
    if groups > 1:
        if not _groups_settable(an, call, owner, weight, groups) and inp is not None:
            an.refuse(an.layout_of(call.arg("input")), f"{call.what} is a grouped transposed convolution outside a "
                                                       "module surgery can resize")
        _balance(an, f"grouped transposed convolution {owner!r}", groups, inp, out)
    an.member(name, owner, "conv_transpose", params, out=out, inp=inp, groups=groups, what=call.what)
    return Layout((1,), out)


@handler("linear")
def linear(an, call):
    """Acts on the last dim. Channels on another dim (a token-mixing MLP: (B, C, T) with the Linear
    over T) pass through where they are, and the Linear's own features go on beside them
    (`Analysis.secondary`) into the next Linear; a model input's guessed channel axis is dropped."""
    x = call.arg("input")
    refs = _conv_refs(an, call)
    if refs is None:
        return an.not_understood(call, f"{call.what} uses a weight or bias that is not one module's parameter")
    weight, bias = refs
    layout = an.layout_of(x)
    last = len(an.shape(x)) - 1
    out_f, in_f = int(weight.tensor.shape[0]), int(weight.tensor.shape[1])
    through = None                                  # channels on another dim, passed through
    if isinstance(layout, Layout) and layout.axes != (last,):
        if last in layout.axes:
            an.refuse(layout, f"{call.what} mixes a split channel axis")
            layout = OPAQUE
        elif an.is_input(layout):                   # (B, T, F) input: its dim 1 was a guess
            layout = OPAQUE
        else:
            through, layout = layout, an.secondary.get(x, OPAQUE)
    inp, factor = None, 1
    if isinstance(layout, Layout):
        if layout.width == in_f:
            inp, factor = layout.ids, layout.factor
        else:
            an.refuse(layout, f"{call.what} in_features do not match the channels feeding it")
    owner = weight.module
    kind = call.kind or "linear"
    name = _key(an, owner, weight.attr, kind)
    out = an.produce(name, out_f)
    an.member(name, owner, kind, _params(call, weight, bias), out=out, inp=inp, in_factor=factor, in_axis=last,
              extra={"through": through.ids} if through is not None else None, what=call.what)
    features = Layout((call.result.dim() - 1,), out)
    if through is None:
        return features
    if through.factor != 1 or call.result.shape[:-1] != an.shape(x)[:-1]:
        an.refuse(through, f"{call.what} changes the dims its input's channels sit on")
        an.refuse(features, f"{call.what} changes the dims its input's channels sit on")
        return OPAQUE
    an.secondary[call.node] = features
    an.link[call.node] = x
    return through


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
        kind = call.kind or "batch_norm"
        params = {r: ref.attr for r, ref in refs.items()} if call.kind is None else \
            {r: (ref.attr if ref is not None else None) for r, ref in call.params.items()}
        name = _key(an, owner, first, kind)
        an.member(name, owner, kind, params, out=layout.ids, what=call.what)
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
