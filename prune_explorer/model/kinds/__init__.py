"""The layer-kind registry: the one place a kind of prunable member goes, and the one that graph,
surgery, costs, latency, ranking, capture, exactness and store read (instead of a switch each).

A kind (`LayerKind`, `base.py`) knows which of its module's tensors it slices along which dim,
which module attributes hold its widths (surgery sets them, store records them), its parameter
and MAC terms at a width, its filters (ranking, capture), and how latency times it.

A user's own layer type is one class and one call, from outside the package:

    class ScaledLinearKind(kinds.Linear):          # inherit slicing and costs from a built-in kind
        name = "scaled_linear"
        module_types = (ScaledLinear,)
        sliced_roles = ("weight", "bias", "scale")  # every tensor cut along the output dim
    register_layer_kind(ScaledLinearKind)

The graph then takes every `ScaledLinear` call as one op of the kind's `op` family ("conv" with
channels on dim 1, "linear" on the last dim, "batch_norm" for per-channel tensors) without
tracing into its forward, so its forward may compute its weight however it likes, as long as
output channel i depends only on row i of each sliced tensor (and input channel j only on the
weight's input column j).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import CostShape, LayerKind
from .convs import Conv, ConvTranspose, Depthwise, DepthwiseTranspose, Grouped, Linear
from .norms import BatchNorm, ChannelNorm, ChannelParam, GroupNorm, LayerNorm
from .sizes import SizeAttribute, SplitSizes

__all__ = ["KINDS", "LayerKind", "CostShape", "Conv", "Depthwise", "Grouped", "ConvTranspose", "DepthwiseTranspose",
           "Linear", "BatchNorm", "GroupNorm", "ChannelParam", "ChannelNorm", "LayerNorm", "SizeAttribute",
           "SplitSizes", "register_layer_kind", "unregister_layer_kind", "kind", "recorded_kind", "width_record",
           "registered_kind", "leaf_types", "replace_module", "OPS"]

KINDS: dict[str, LayerKind] = {k.name: k for k in (
    Conv(), Depthwise(), Grouped(), ConvTranspose(), DepthwiseTranspose(), Linear(), BatchNorm(), GroupNorm(),
    ChannelParam(), ChannelNorm(), LayerNorm(), SizeAttribute(), SplitSizes())}
BUILT_IN = frozenset(KINDS)

# What store records for a module, most specific type first (GroupNorm/LayerNorm are not _NormBase).
RECORDED: list[LayerKind] = [KINDS["conv"], KINDS["linear"], KINDS["batch_norm"], KINDS["group_norm"],
                             KINDS["layer_norm"], KINDS["channel_norm"]]
# Registered kinds, newest first: their modules are graph leaves of `op` and are recorded by store.
_REGISTERED: list[LayerKind] = []
# op families a registered kind may name: the handlers that make a member of the call's kind
OPS = ("conv", "linear", "batch_norm")


def register_layer_kind(new: LayerKind | type[LayerKind]) -> LayerKind:
    """Add a layer kind (a `LayerKind` subclass or instance) for a module type of your own.

    Its `module_types` become graph leaves handled as one call of `op` (one of `OPS`); surgery
    slices its `sliced_roles`, store records its `width_attrs`, costs, latency, ranking and capture
    ask it like a built-in kind. Registering a kind of the same name again replaces it.
    """
    instance = new() if isinstance(new, type) else new
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer kind {type(instance).__name__}: set `name` to a non-empty string")
    if name in BUILT_IN:
        raise ValueError(f"layer kind {name!r}: a built-in kind has that name; choose another")
    types = instance.module_types
    if not types or not isinstance(types, tuple) or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                                            for t in types):
        raise ValueError(f"layer kind {name!r}: module_types must be a non-empty tuple of nn.Module subclasses")
    if instance.op not in OPS:
        raise ValueError(f"layer kind {name!r}: op is {instance.op!r}, expected one of {OPS}")
    unregister_layer_kind(name)
    KINDS[name] = instance
    _REGISTERED.insert(0, instance)
    return instance


def unregister_layer_kind(name: str) -> None:
    """Remove a registered kind (a built-in one cannot be removed)."""
    if name in BUILT_IN:
        raise ValueError(f"layer kind {name!r} is built in")
    KINDS.pop(name, None)
    _REGISTERED[:] = [k for k in _REGISTERED if k.name != name]


def kind(name: str) -> LayerKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown layer kind {name!r}; known: {sorted(KINDS)} (a kind of your own must be "
                         "registered with register_layer_kind before use)") from None


def registered_kind(module: nn.Module) -> LayerKind | None:
    """The registered (user's) kind whose module types `module` is, newest registration first."""
    for k in _REGISTERED:
        if isinstance(module, k.module_types):
            return k
    return None


def leaf_types() -> tuple[type, ...]:
    """Module types the graph must not trace into: those of the registered kinds."""
    return tuple(t for k in _REGISTERED for t in k.module_types)


def recorded_kinds() -> list[LayerKind]:
    return _REGISTERED + RECORDED


def recorded_kind(module: nn.Module) -> LayerKind | None:
    """The kind store records `module` as (its width attributes), or None."""
    for k in recorded_kinds():
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
