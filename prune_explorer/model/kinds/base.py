"""`LayerKind`: what every part of the package asks about one kind of member, in one class.

A *member* is a set of tensors of one module that are cut together (a conv's weight and bias, a
norm's affine and statistics, a per-channel parameter) or, for the size kinds, a module attribute
the forward reads as a width. The graph records members by kind name; surgery, costs, latency,
ranking, capture, exactness and store look the kind up in the registry (`kinds/__init__.py`)
and ask it, instead of switching on module types of their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class CostShape:
    """What a kind's cost terms need about one member (full widths, kernel, output positions)."""

    out_dim: int
    in_dim: int            # conv: in_channels / groups; linear: in_features; norm: tensors per channel
    kernel: int            # product of kernel sizes (1 for linear)
    positions: int         # positions per forward the MACs are counted at (batch × spatial), summed over calls
    has_bias: bool
    groups: int = 1
    numel: int = 0         # channel_param: elements of the tensor
    per_out: int = 0       # parameters per output channel beyond weight and bias (a registered kind's gain)


class LayerKind:
    """Base: a member whose tensors are sliced along an output dim (0) and maybe an input dim (1).

    Class attributes say what the rest of the package needs to know; methods do the per-kind work.
    A new kind (`register_layer_kind`) sets `name`, `module_types` and `op`, and usually subclasses
    a built-in kind (`Conv`, `Linear`, `BatchNorm`) to inherit its slicing and costs.
    """

    name: ClassVar[str]
    module_types: ClassVar[tuple[type, ...]] = ()   # modules recorded as this kind (store); for a
    #   registered kind also the modules the graph takes as one leaf call of `op` (never traced into)
    op: ClassVar[str | None] = None           # the op family a registered kind's module call is
    width_attrs: ClassVar[tuple[str, ...]] = ()
    has_filters: ClassVar[bool] = False       # per-filter weights (l1/l2 ranking, display names, capture norms)
    sliced_roles: ClassVar[tuple[str, ...]] = ("weight", "bias")
    filter_dim: ClassVar[int] = 0             # the weight's dim along the output channels (1: transposed conv)
    channel_axis: ClassVar[int] = 1           # the channel axis of the module's input and output (-1: linear)
    in_follows_out: ClassVar[bool] = False    # its input channels are its output channels (depthwise, norms)
    timed: ClassVar[bool] = False             # the latency table times it at a grid of widths
    conv_filters: ClassVar[bool] = False      # counted in the zoo's share of prunable conv filters
    normalizes: ClassVar[bool] = False        # a norm: exactness randomises its affine and statistics
    multiplies: ClassVar[bool] = False        # a per-channel multiplier: exactness randomises it
    produces: ClassVar[bool] = True           # listed among its group's producers (False: a size attribute)
    attribute: ClassVar[bool] = False         # a module attribute the forward reads (surgery checks a run)

    # --- graph --------------------------------------------------------------------------------
    def params(self, module: nn.Module) -> dict[str, str | None]:
        """Tensor roles -> attribute names of `module` (None where the module has no such tensor)."""
        return {role: (role if getattr(module, role, None) is not None else None) for role in self.sliced_roles}

    def constants(self, module: nn.Module) -> dict[str, Any]:
        """Arguments of the op that a leaf call of `module` takes from the module (e.g. `groups`)."""
        return {}

    # --- surgery ------------------------------------------------------------------------------
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

    # --- store --------------------------------------------------------------------------------
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

    def expected_shapes(self, module: nn.Module) -> dict[str, tuple[int, ...]]:
        """Tensor shapes the module's width attributes imply (store checks a file against them)."""
        return {}

    # --- costs --------------------------------------------------------------------------------
    def terms(self, s: CostShape, out: int, inp: int) -> tuple[int, int]:
        """(params, MACs) of the member at `out` x `inp` positions."""
        weights = out * inp * s.kernel
        return weights + (out if s.has_bias else 0) + out * s.per_out, weights * s.positions

    def cost_shape(self, module: nn.Module, member, positions: int) -> CostShape:
        return CostShape(0, 0, 1, 0, False)

    def full_in(self, shape: CostShape) -> int:
        """Positions along the input dim at full width (a grouped conv's weight holds a group's share)."""
        return shape.in_dim

    def positions(self, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        """Positions per call the MACs are counted at: the output's elements per channel."""
        channels = int(output_shape[self.channel_axis]) if len(output_shape) > 1 else int(output_shape[-1])
        return math.prod(output_shape) // max(channels, 1)

    # --- ranking and capture --------------------------------------------------------------------
    def filters(self, weight, groups: int = 1):
        """The weight as one row per output channel (numpy or torch): l1/l2 norms are taken per row."""
        if isinstance(weight, np.ndarray):
            moved = np.moveaxis(weight, self.filter_dim, 0)
            return moved.reshape(moved.shape[0], -1)
        return weight.movedim(self.filter_dim, 0).flatten(1)

    def filter_count(self, module: nn.Module, member) -> int:
        weight = getattr(module, member.params["weight"])
        return int(weight.shape[self.filter_dim]) * (member.groups if self.filter_dim == 1 else 1)

    # --- exactness --------------------------------------------------------------------------------
    def zero_inputs(self, weight: torch.Tensor, positions: torch.Tensor, member) -> torch.Tensor:
        """The weight with its input positions `positions` zeroed: the reference's removed input
        channels for a consumer no forward pre-hook can reach (a conv on the root's own parameter)."""
        return weight.index_fill(1, positions, 0)

    # --- latency --------------------------------------------------------------------------------
    def width_step(self, member, side: str) -> int:
        """Widths the latency grid may take along one side are multiples of this."""
        return 1

    def timing_positions(self, width: int, full: int, member, side: str) -> torch.Tensor:
        """Positions kept along one side when the latency table times the member at `width`."""
        return torch.arange(width)


def per_output(kind: LayerKind, module: nn.Module, member, out_dim: int) -> int:
    """Parameters per output channel in the sliced tensors other than weight and bias."""
    total = 0
    for role in kind.sliced_roles:
        attr = member.params.get(role)
        tensor = getattr(module, attr, None) if attr and role not in ("weight", "bias") else None
        if isinstance(tensor, nn.Parameter):
            total += tensor.numel() // max(out_dim, 1)
    return total


def set_attr(module: nn.Module, name: str, value) -> None:
    if value is not None and hasattr(module, name):
        setattr(module, name, value)


def kernel_size(weight: torch.Tensor) -> int:
    return math.prod(int(d) for d in weight.shape[2:])
