"""Kinds without filters: norms (per channel, or across channels), per-channel parameters."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..norms import PrunedChannelNorm
from .base import CostShape, LayerKind, set_attr


class BatchNorm(LayerKind):
    """Per-channel affine and running statistics: every tensor is cut along dim 0."""

    name = "batch_norm"
    module_types = (_NormBase,)
    op = "batch_norm"
    width_attrs = ("num_features",)
    in_follows_out = True
    timed = True
    normalizes = True
    sliced_roles = ("weight", "bias", "running_mean", "running_var")

    def slice(self, role, tensor, out_ix, in_ix, member):
        return tensor if out_ix is None else tensor.index_select(0, out_ix)

    def set_widths(self, module, member, n_out, n_in):
        set_attr(module, "num_features", n_out)

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
    op = "group_norm"
    width_attrs = ("num_groups", "num_channels")

    def set_widths(self, module, member, n_out, n_in):
        set_attr(module, "num_channels", n_out)
        set_attr(module, "num_groups", n_out)

    def expected_shapes(self, module):
        return {"weight": (module.num_channels,), "bias": (module.num_channels,)}


class ChannelParam(LayerKind):
    """One parameter or buffer with a per-channel dim, used in forward (layer_scale, gamma, GRN)."""

    name = "channel_param"
    multiplies = True
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
    op = "channel_norm"
    timed = False
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
    op = "layer_norm"
    width_attrs = ("normalized_shape",)
    normalizes = True

    def expected_shapes(self, module):
        return {"weight": tuple(module.normalized_shape), "bias": tuple(module.normalized_shape)}


def _width(module: nn.Module, member) -> int:
    return int(getattr(module, member.params["weight"] if member.params.get("weight") else
                       next(iter(member.params.values()))).shape[0])
