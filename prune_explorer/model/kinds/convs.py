"""Kinds with filters: convolutions (plain, depthwise, grouped, transposed) and linear layers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .base import CostShape, LayerKind, kernel_size, per_output, set_attr


class Conv(LayerKind):
    name = "conv"
    module_types = (_ConvNd,)
    op = "conv"
    width_attrs = ("in_channels", "out_channels", "groups")
    has_filters = True
    timed = True
    conv_filters = True

    def constants(self, module):
        return {"groups": getattr(module, "groups", 1), "transposed": getattr(module, "transposed", False)}

    def set_widths(self, module, member, n_out, n_in):
        if isinstance(module, self.module_types):
            set_attr(module, "out_channels", n_out)
            set_attr(module, "in_channels", n_in)

    def expected_shapes(self, module):
        kernel = tuple(module.kernel_size)
        if module.transposed:
            weight = (module.in_channels, module.out_channels // module.groups) + kernel
        else:
            weight = (module.out_channels, module.in_channels // module.groups) + kernel
        return {"weight": weight, "bias": (module.out_channels,)}

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        return CostShape(int(weight.shape[0]), int(weight.shape[1]), kernel_size(weight), positions,
                         _has(module, member, "bias"), per_out=per_output(self, module, member, int(weight.shape[0])))


class _TiedInOut:
    """groups == in == out (depthwise): input and output channels are one and the same, so only dim
    0 is cut and `groups` follows."""

    in_follows_out = True

    def slice(self, role, tensor, out_ix, in_ix, member):
        return tensor if out_ix is None else tensor.index_select(0, out_ix)

    def set_widths(self, module, member, n_out, n_in):
        if n_out is not None:
            module.in_channels = module.out_channels = module.groups = n_out

    def terms(self, s, out, inp):
        return out * s.kernel + (out if s.has_bias else 0), out * s.kernel * s.positions


class Depthwise(_TiedInOut, Conv):
    name = "depthwise"


class Grouped(Conv):
    """groups > 1, not depthwise: `groups` stays; each conv group keeps as many channels as the others."""

    name = "grouped"

    def slice(self, role, tensor, out_ix, in_ix, member):
        t = tensor if out_ix is None else tensor.index_select(0, out_ix)
        if role == "weight" and in_ix is not None:
            # dim 1 holds one conv group's inputs; every output filter of conv group j reads group j's
            t = _gather_per_group(t, 1, in_ix, tensor.shape[1], member.groups)
        return t

    def cost_shape(self, module, member, positions):
        s = super().cost_shape(module, member, positions)
        return CostShape(s.out_dim, s.in_dim, s.kernel, s.positions, s.has_bias, groups=member.groups)

    def full_in(self, shape):
        return shape.in_dim * shape.groups

    def terms(self, s, out, inp):
        weights = out * (inp // s.groups) * s.kernel
        return weights + (out if s.has_bias else 0), weights * s.positions

    def width_step(self, member, side):
        return member.groups

    def timing_positions(self, width, full, member, side):
        return _first_per_group(width, full, member.groups)

    def zero_inputs(self, weight, positions, member):
        per_in = weight.shape[1]
        rows = weight.shape[0] // member.groups
        out = weight.clone()
        for p in positions.tolist():          # input p is group p // per_in's local input p % per_in
            g = p // per_in
            out[g * rows:(g + 1) * rows, p % per_in] = 0
        return out


class ConvTranspose(Conv):
    """A transposed convolution: weight (in, out / groups, k...), so its filters are dim 1 and its
    inputs dim 0. With groups > 1 (not depthwise) `groups` stays and each conv group keeps as many
    input and output channels as the others."""

    name = "conv_transpose"
    filter_dim = 1

    def slice(self, role, tensor, out_ix, in_ix, member):
        if role != "weight" or tensor.dim() < 2:
            return tensor if out_ix is None else tensor.index_select(0, out_ix)
        t = tensor if in_ix is None else tensor.index_select(0, in_ix)
        if out_ix is not None:
            if member.groups == 1:
                t = t.index_select(1, out_ix)
            else:   # the rows of conv group j write only group j's outputs
                t = _gather_per_group(t, 1, out_ix, tensor.shape[1], member.groups)
        return t

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        return CostShape(int(weight.shape[1]) * member.groups, int(weight.shape[0]), kernel_size(weight), positions,
                         _has(module, member, "bias"), groups=member.groups)

    def terms(self, s, out, inp):
        weights = inp * (out // s.groups) * s.kernel
        return weights + (out if s.has_bias else 0), weights * s.positions

    def zero_inputs(self, weight, positions, member):
        return weight.index_fill(0, positions, 0)

    def positions(self, input_shape, output_shape):
        """torch's flop counter counts a transposed conv at its input's positions."""
        return LayerKind.positions(self, input_shape, input_shape)

    def filters(self, weight, groups: int = 1):
        if groups == 1:
            return super().filters(weight)
        rows = weight.shape[0] // groups
        if isinstance(weight, np.ndarray):
            w = weight.reshape(groups, rows, weight.shape[1], -1).transpose(0, 2, 1, 3)
            return w.reshape(groups * weight.shape[1], -1)
        return weight.reshape(groups, rows, weight.shape[1], -1).transpose(1, 2).reshape(groups * weight.shape[1], -1)

    def width_step(self, member, side):
        return member.groups

    def timing_positions(self, width, full, member, side):
        return _first_per_group(width, full, member.groups)


class DepthwiseTranspose(_TiedInOut, ConvTranspose):
    """A transposed conv with groups == in == out: weight (C, 1, k...), input and output channels tied."""

    name = "depthwise_transpose"
    filter_dim = 0

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        return CostShape(int(weight.shape[0]), 1, kernel_size(weight), positions, _has(module, member, "bias"))

    def filters(self, weight, groups: int = 1):
        return LayerKind.filters(self, weight)

    def width_step(self, member, side):
        return 1

    def timing_positions(self, width, full, member, side):
        return torch.arange(width)


class Linear(LayerKind):
    name = "linear"
    module_types = (nn.Linear,)
    op = "linear"
    width_attrs = ("in_features", "out_features")
    has_filters = True
    channel_axis = -1
    timed = True

    def set_widths(self, module, member, n_out, n_in):
        if isinstance(module, self.module_types):
            set_attr(module, "out_features", n_out)
            set_attr(module, "in_features", n_in)

    def expected_shapes(self, module):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}

    def cost_shape(self, module, member, positions):
        weight = getattr(module, member.params["weight"])
        return CostShape(int(weight.shape[0]), int(weight.shape[1]), 1, positions, _has(module, member, "bias"),
                         per_out=per_output(self, module, member, int(weight.shape[0])))


def _has(module: nn.Module, member, role: str) -> bool:
    attr = member.params.get(role)
    return attr is not None and getattr(module, attr, None) is not None


def _gather_per_group(t: torch.Tensor, dim: int, kept: torch.Tensor, per_group: int, groups: int) -> torch.Tensor:
    """`t`'s dim `dim` holds one conv group's share; the kept positions `kept` (global, the same
    number in each group) become local indices, repeated for every row of `t`'s group along dim 0."""
    local = kept.reshape(groups, -1) - (torch.arange(groups) * per_group)[:, None]
    index = local.repeat_interleave(t.shape[0] // groups, dim=0)          # (rows, kept per group)
    shape = (t.shape[0], index.shape[1]) + (1,) * (t.dim() - 2)
    return torch.gather(t, dim, index.reshape(shape).expand(-1, -1, *t.shape[2:]))


def _first_per_group(width: int, full: int, groups: int) -> torch.Tensor:
    per_full, per = full // groups, width // groups
    return (torch.arange(groups)[:, None] * per_full + torch.arange(per)).reshape(-1)
