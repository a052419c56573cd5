"""Channel groups of a model: which channels must be removed together, and which cannot be removed.

Built from operators, not module types (see ARCHITECTURE.md, model/graph): `routes` (which route
understands the model, on a private copy), `tracing` (fx; torch.export), `recording` (one real
forward recorded), `ops` (the op registry), `handlers` (one per op family), `analysis` (the walk),
`channels` (ids and couplings), `groups` (groups, slices, taps), `sizes` (widths written in the
code), `coverage` (layers in no group).
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from ..kinds import KINDS, leaf_types
from . import handlers_recorded  # noqa: F401 - registers RoI pooling, NMS, value reads, dtype-only ops
from .coverage import unassigned
from .groups import ChannelGroup, KeepOne, ModuleSlices, Tap, ZeroedInput, build
from .outputs import OutputSelection, kept_outputs, selection
from .routes import ROUTES, InputDependentPath, analyse, split_inputs

__all__ = ["ChannelGraph", "ChannelGroup", "KeepOne", "ModuleSlices", "Tap", "ZeroedInput", "InputDependentPath",
           "ROUTES", "split_inputs", "OutputSelection", "kept_outputs"]


class ChannelGraph:
    """Channel groups of one model, and how each member's tensors map onto them."""

    def __init__(self, groups: list[ChannelGroup], slices: dict[str, ModuleSlices], by_layer: dict[str, int],
                 ambiguous: dict[str, tuple[int, ...]], route: str = "fx", unassigned: dict[str, str] | None = None,
                 keep: list[KeepOne] | tuple = (), outputs: Any = None,
                 zeroed_inputs: list[ZeroedInput] | tuple = ()):
        self.groups = groups
        self.slices = slices
        self.route = route          # "fx", "record" or "export": which route understood the model
        self.unassigned = dict(unassigned or {})   # conv/linear layers in no group -> why (never silent)
        self.keep = list(keep)      # parts of splits and slices a plan must not empty
        self.outputs = outputs      # the outputs kept (`outputs.py`'s spec as given; None: every output)
        self.zeroed_inputs = list(zeroed_inputs)   # ops (not layers) the exactness reference zeroes inputs of
        self._by_layer = by_layer
        self._ambiguous = ambiguous

    def __repr__(self) -> str:
        return f"ChannelGraph({len(self.groups)} groups, {len(self.prunable())} prunable, via {self.route})"

    @classmethod
    def trace(cls, model: nn.Module, example_inputs: Any, leaf_modules: Iterable[type] = (),
              route: str | None = None, outputs: Any = None) -> "ChannelGraph":
        """Trace `model` once and find its groups; `model` itself is never changed (a private copy is traced).

        `example_inputs`: a tuple is the positional arguments, a dict the keyword arguments, anything
        else (a tensor, a list of images) the one argument. Routes, in order: torch.fx, a recorded
        forward, torch.export (`routes.py`); `route="fx" | "record" | "export"` takes only that one.
        The registered layer kinds' module types are leaves, as `leaf_modules` are.

        `outputs`: which outputs must keep their shape and values (`outputs.py`: a path pattern such
        as `"!1.feats"`, a list of them, or a callable on an output's path); None keeps every output.
        A selected-away output's channels are pruned like an inner tensor's, so in the pruned model
        that output may change shape and values.
        """
        selected = selection(outputs)
        analysis = analyse(model, example_inputs, tuple(leaf_modules) + leaf_types(), route, selected)
        built = build(analysis)
        return cls(built.groups, built.slices, built.by_layer, built.ambiguous, analysis.traced.route,
                   unassigned(analysis, built.slices), built.keep, None if selected is None else selected.spec,
                   built.zeroed_inputs)

    def group(self, layer_or_id: str | int) -> ChannelGroup:
        """The group a member layer name (or group id) names; ValueError otherwise."""
        if isinstance(layer_or_id, int) and not isinstance(layer_or_id, bool):
            if 0 <= layer_or_id < len(self.groups):
                return self.groups[layer_or_id]
            raise ValueError(f"no channel group with id {layer_or_id} (the graph has {len(self.groups)})")
        if layer_or_id in self._by_layer:
            return self.groups[self._by_layer[layer_or_id]]
        if layer_or_id in self._ambiguous:
            names = ", ".join(self.groups[g].name for g in self._ambiguous[layer_or_id])
            raise ValueError(f"layer {layer_or_id!r} spans several channel groups ({names}); name one of those")
        raise ValueError(f"unknown layer {layer_or_id!r}: it is not a member of any channel group")

    def prunable(self, kind: str | None = None) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable and (kind is None or g.kind == kind)]

    def filter_members(self, group_id: int) -> list[ModuleSlices]:
        """Members with filters (their layer kind's `has_filters`) whose output carries the group."""
        if not hasattr(self, "_filters"):
            found: dict[int, list[ModuleSlices]] = {}
            for sl in self.slices.values():
                if KINDS[sl.kind].has_filters:
                    for g in sl.out_touches:
                        found.setdefault(g, []).append(sl)
            self._filters = found
        return self._filters.get(group_id, [])

