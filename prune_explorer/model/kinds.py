"""Layer kinds: one class per kind of prunable member, one registry that graph, surgery, the
panel's cost model and store all read (instead of a string switch in each).

A kind knows which of its module's tensors it slices along which dim, which module attributes
hold its widths (surgery sets them, store records them), and its parameter/MAC terms at a width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .norms import PrunedChannelNorm


@dataclass(frozen=True)
class CostShape:
    """What a kind's cost terms need about one member (full widths, kernel, output positions)."""

    out_dim: int
    in_dim: int            # conv: in_channels / groups; linear: in_features; norm: tensors per channel
    kernel: int            # product of kernel sizes (1 for linear)
    positions: int         # output positions per forward (batch × spatial), summed over calls
    has_bias: bool
    groups: int = 1
    numel: int = 0         # channel_param: elements of the tensor


class LayerKind:
    """Base: a member whose tensors are sliced along an output dim (0) and maybe an input dim (1)."""

    name: ClassVar[str]
    module_types: ClassVar[tuple[type, ...]] = ()
    width_attrs: ClassVar[tuple[str, ...]] = ()
    has_filters: ClassVar[bool] = False       # per-filter weights (l1/l2 ranking, display names)
    sliced_roles: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def slice(self, role: str, tensor: torch.Tensor, out_ix, in_ix, member) -> torch.Tensor:
        if role == "weight" and in_ix is not None and tensor.dim() > 1:
            if out_ix is None:
                return tensor.index_select(1, in_ix)
            # two index_selects: ≈ 2.7x faster on CPU than one advanced-indexing gather (512x512x3x3)
            return tensor.index_select(0, out_ix).index_select(1, in_ix)
        return tensor if out_ix is None else tensor.index_select(0, out_ix)

    def set_widths(self, module: nn.Module, member, n_out: int | None, n_in: int | None) -> None:
        """Module attributes that must follow the new tensor sizes."""

    def resize(self, module: nn.Module, member, out_ix, in_ix) -> nn.Module:
        """After surgery cut the tensors to the kept positions: the module to use (this one, its
        widths set, unless the kind replaces the module)."""
        self.set_widths(module, member, None if out_ix is None else len(out_ix), None if in_ix is None else len(in_ix))
        return module

    def record(self, module: nn.Module) -> dict[str, Any]:
        """What store writes for the module: its width attributes."""
        record: dict[str, Any] = {"kind": self.name}
        for attr in self.width_attrs:
            value = getattr(module, attr)
            record[attr] = list(value) if isinstance(value, tuple) else value
        return record

    def from_record(self, current: nn.Module, record: dict[str, Any]) -> nn.Module | None:
        """A module built from a record in place of the base model's `current`, or None when the
        kind narrows `current` in place (store sets its width attributes)."""
        return None

    def terms(self, s: CostShape, out: int, inp: int) -> tuple[int, int]:
        weights = out * inp * s.kernel
        return weights + (out if s.has_bias else 0), weights * s.positions

    def cost_shape(self, module: nn.Module, member, positions: int) -> CostShape:
        raise NotImplementedError

    def expected_shapes(self, module: nn.Module) -> dict[str, tuple[int, ...]]:
        """Tensor shapes the module's width attributes imply (store checks a file against them)."""
        return {}


def _attr(module: nn.Module, name: str, value) -> None:
    if value is not None and hasattr(module, name):
        setattr(module, name, value)


def _kernel(module: nn.Module, member) -> int:
    weight = getattr(module, member.params["weight"])
    k = 1
    for d in weight.shape[2:]:
        k *= int(d)
    return k


class Conv(LayerKind):
    name = "conv"
    module_types = (_ConvNd,)
    width_attrs = ("in_channels", "out_channels", "groups")
    has_filters = True

    def set_widths(self, module, member, n_out, n_in):
        if isinstance(module, _ConvNd):
            _attr(module, "out_channels", n_out)
            _attr(module, "in_channels", n_in)

    def expected_shapes(self, module):
        kernel = tuple(module.kernel_size)
        if module.transposed:
            weight = (module.in_channels, module.out_channels // module.groups) + kernel
        else:
            weight = (module.out_channels, module.in_channels // module.groups) + kernel
        return {"weight": weight, "bias": (module.out_channels,)}

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        return CostShape(int(weight.shape[0]), int(weight.shape[1]), _kernel(module, member), positions,
                         member.params.get("bias") is not None and getattr(module, member.params["bias"]) is not None)


class Depthwise(Conv):
    """groups == in == out: input and output channels are one and the same, so only dim 0 is cut."""

    name = "depthwise"

    def slice(self, role, tensor, out_ix, in_ix, member):
        return tensor if out_ix is None else tensor.index_select(0, out_ix)

    def set_widths(self, module, member, n_out, n_in):
        if n_out is not None:
            module.in_channels = module.out_channels = module.groups = n_out

    def terms(self, s, out, inp):
        return out * s.kernel + (out if s.has_bias else 0), out * s.kernel * s.positions


class Grouped(Conv):
    """groups > 1, not depthwise: `groups` stays; each conv group keeps as many channels as the others."""

    name = "grouped"

    def slice(self, role, tensor, out_ix, in_ix, member):
        t = tensor if out_ix is None else tensor.index_select(0, out_ix)
        if role == "weight" and in_ix is not None:
            # dim 1 holds one conv group's inputs; every output filter of conv group j reads group j's
            groups = member.groups
            per_in = tensor.shape[1]
            kept_out = t.shape[0] // groups
            local = in_ix.reshape(groups, -1) - (torch.arange(groups) * per_in)[:, None]
            index = local.repeat_interleave(kept_out, dim=0)          # (out', in'/groups)
            shape = (t.shape[0], index.shape[1]) + (1,) * (t.dim() - 2)
            t = torch.gather(t, 1, index.reshape(shape).expand(-1, -1, *t.shape[2:]))
        return t

    def set_widths(self, module, member, n_out, n_in):
        Conv.set_widths(self, module, member, n_out, n_in)

    def cost_shape(self, module, member, positions):
        s = super().cost_shape(module, member, positions)
        return CostShape(s.out_dim, s.in_dim, s.kernel, s.positions, s.has_bias, groups=member.groups)

    def terms(self, s, out, inp):
        weights = out * (inp // s.groups) * s.kernel
        return weights + (out if s.has_bias else 0), weights * s.positions


class Linear(LayerKind):
    name = "linear"
    module_types = (nn.Linear,)
    width_attrs = ("in_features", "out_features")
    has_filters = True

    def set_widths(self, module, member, n_out, n_in):
        if isinstance(module, nn.Linear):
            _attr(module, "out_features", n_out)
            _attr(module, "in_features", n_in)

    def expected_shapes(self, module):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        bias = member.params.get("bias")
        return CostShape(int(weight.shape[0]), int(weight.shape[1]), 1, positions,
                         bias is not None and getattr(module, bias) is not None)


class BatchNorm(LayerKind):
    """Per-channel affine and running statistics: every tensor is cut along dim 0."""

    name = "batch_norm"
    module_types = (_NormBase,)
    width_attrs = ("num_features",)
    sliced_roles = ("weight", "bias", "running_mean", "running_var")

    def slice(self, role, tensor, out_ix, in_ix, member):
        return tensor if out_ix is None else tensor.index_select(0, out_ix)

    def set_widths(self, module, member, n_out, n_in):
        _attr(module, "num_features", n_out)

    def expected_shapes(self, module):
        return {k: (module.num_features,) for k in self.sliced_roles}

    def cost_shape(self, module, member, positions):
        affine = sum(1 for r in ("weight", "bias") if member.params.get(r) and
                     isinstance(getattr(module, member.params[r], None), nn.Parameter))
        return CostShape(_width(module, member), affine, 1, 0, False)

    def terms(self, s, out, inp):
        return s.in_dim * out, 0


class GroupNorm(BatchNorm):
    """GroupNorm with one channel per group (per-channel statistics, like instance norm)."""

    name = "group_norm"
    module_types = (nn.GroupNorm,)
    width_attrs = ("num_groups", "num_channels")

    def set_widths(self, module, member, n_out, n_in):
        _attr(module, "num_channels", n_out)
        _attr(module, "num_groups", n_out)

    def expected_shapes(self, module):
        return {"weight": (module.num_channels,), "bias": (module.num_channels,)}


class ChannelParam(LayerKind):
    """One parameter or buffer with a per-channel dim, used in forward (layer_scale, gamma, GRN)."""

    name = "channel_param"
    sliced_roles = ("tensor",)

    def slice(self, role, tensor, out_ix, in_ix, member):
        return tensor if out_ix is None else tensor.index_select(member.param_dim, out_ix)

    def cost_shape(self, module, member, positions):
        tensor = getattr(module, member.params["tensor"])
        return CostShape(int(tensor.shape[member.param_dim]), 0, 1, 0, False,
                         numel=int(tensor.numel()) if isinstance(tensor, nn.Parameter) else 0)

    def terms(self, s, out, inp):
        return s.numel // max(s.out_dim, 1) * out, 0


class ChannelNorm(BatchNorm):
    """A norm whose statistics span channels: LayerNorm over the channel axis, GroupNorm with fewer
    groups than channels. Its weight and bias are cut like a batch norm's; the module becomes a
    `PrunedChannelNorm`, which still counts the removed channels (as zeros) in its statistics."""

    name = "channel_norm"
    module_types = (PrunedChannelNorm,)
    replaces = (nn.LayerNorm, nn.GroupNorm, PrunedChannelNorm)
    width_attrs = PrunedChannelNorm.RECORD
    sliced_roles = ("weight", "bias")

    def resize(self, module, member, out_ix, in_ix):
        if out_ix is None:
            return module
        if isinstance(module, PrunedChannelNorm):
            module.narrow(out_ix)
            return module
        return PrunedChannelNorm.replacing(module, out_ix, **member.extra)

    def record(self, module):
        return {"kind": self.name, **module.record()}

    def from_record(self, current, record):
        if not isinstance(current, self.replaces):
            raise ValueError(f"the base model's module is {type(current).__name__}, not a LayerNorm or GroupNorm")
        kwargs = {k: record[k] for k in self.width_attrs if k in record}
        missing = sorted(set(self.width_attrs) - set(kwargs))
        if missing:
            raise ValueError(f"missing {missing}")
        for key in ("num_channels", "full_width", "axis", "num_groups"):
            if not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool):
                raise ValueError(f"{key!r} is {kwargs[key]!r}, expected an integer")
        if not isinstance(kwargs["eps"], (int, float)) or isinstance(kwargs["eps"], bool):
            raise ValueError(f"'eps' is {kwargs['eps']!r}, expected a number")
        device = next((t.device for t in current.parameters(recurse=False)), None)
        return PrunedChannelNorm(**kwargs, device=device)

    def expected_shapes(self, module):
        return {"weight": (module.num_channels,), "bias": (module.num_channels,)}

    def cost_shape(self, module, member, positions):
        affine = sum(1 for r in ("weight", "bias") if member.params.get(r) and
                     isinstance(getattr(module, member.params[r], None), nn.Parameter))
        width = member.out_group.size if member.out_group is not None else 0
        return CostShape(width, affine, 1, 0, False)


class LayerNorm(LayerKind):
    """Recorded by store only: a LayerNorm over channels mixes them, so it is never cut."""

    name = "layer_norm"
    module_types = (nn.LayerNorm,)
    width_attrs = ("normalized_shape",)

    def expected_shapes(self, module):
        return {"weight": tuple(module.normalized_shape), "bias": tuple(module.normalized_shape)}


def _width(module: nn.Module, member) -> int:
    return int(getattr(module, member.params["weight"] if member.params.get("weight") else
                       next(iter(member.params.values()))).shape[0])


KINDS: dict[str, LayerKind] = {k.name: k for k in (
    Conv(), Depthwise(), Grouped(), Linear(), BatchNorm(), GroupNorm(), ChannelParam(), ChannelNorm(), LayerNorm())}

# What store records for a module, most specific type first (GroupNorm/LayerNorm are not _NormBase).
RECORDED: tuple[LayerKind, ...] = (KINDS["conv"], KINDS["linear"], KINDS["batch_norm"], KINDS["group_norm"],
                                   KINDS["layer_norm"], KINDS["channel_norm"])


def kind(name: str) -> LayerKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown layer kind {name!r}; known: {sorted(KINDS)}") from None


def recorded_kind(module: nn.Module) -> LayerKind | None:
    """The kind store records `module` as (its width attributes), or None."""
    for k in RECORDED:
        if isinstance(module, k.module_types):
            return k
    return None


def width_record(module: nn.Module) -> dict[str, Any] | None:
    k = recorded_kind(module)
    return None if k is None else k.record(module)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `root`'s submodule `name` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
