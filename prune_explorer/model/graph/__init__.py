"""Channel groups of a model: which channels must be removed together, and which cannot be removed.

Built from operators, not module types (see ARCHITECTURE.md, model/graph): `tracing` (fx, with
torch.export where fx fails), `ops` (the op registry), `handlers` (one per op family),
`analysis` (the walk), `channels` (ids and couplings), `groups` (groups, slices, taps).
"""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from ..kinds import KINDS, leaf_types
from .analysis import Analysis
from .coverage import unassigned
from .groups import ChannelGroup, KeepOne, ModuleSlices, Tap, build
from .tracing import run_fx, trace_export, trace_fx

__all__ = ["ChannelGraph", "ChannelGroup", "KeepOne", "ModuleSlices", "Tap"]


class ChannelGraph:
    """Channel groups of one model, and how each member's tensors map onto them."""

    def __init__(self, groups: list[ChannelGroup], slices: dict[str, ModuleSlices], by_layer: dict[str, int],
                 ambiguous: dict[str, tuple[int, ...]], route: str = "fx", unassigned: dict[str, str] | None = None,
                 keep: list[KeepOne] | tuple = ()):
        self.groups = groups
        self.slices = slices
        self.route = route          # "fx" or "export": which tracer understood the model
        self.unassigned = dict(unassigned or {})   # conv/linear layers in no group -> why (never silent)
        self.keep = list(keep)      # parts of splits and slices a plan must not empty
        self._by_layer = by_layer
        self._ambiguous = ambiguous

    def __repr__(self) -> str:
        return f"ChannelGraph({len(self.groups)} groups, {len(self.prunable())} prunable, via {self.route})"

    @classmethod
    def trace(cls, model: nn.Module, example_inputs: Any, leaf_modules: Iterable[type] = ()) -> "ChannelGraph":
        """Trace `model` once (fx + meta shapes; torch.export where fx fails) and find its groups."""
        inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        try:
            leaves = tuple(leaf_modules) + leaf_types()
            traced, constants = trace_fx(model, leaves)
            analysis = Analysis(model, traced)
            analysis.fx_leaves = leaves
            run_fx(model, traced, constants, inputs, analysis.visit)
        except Exception as fx_error:  # fx raises many types; export may still understand the model
            try:
                traced = trace_export(model, inputs)
            except Exception as export_error:
                raise ValueError(
                    f"cannot trace {type(model).__name__}: torch.fx says {_first_line(fx_error)}; torch.export "
                    f"says {_first_line(export_error)}. Pass the offending module types as leaf_modules=(...)"
                ) from export_error
            analysis = Analysis(model, traced)
            for node in traced.graph.nodes:
                analysis.visit(node, node.meta.get("val"))
        analysis.finish()
        built = build(analysis)
        return cls(built.groups, built.slices, built.by_layer, built.ambiguous, analysis.traced.route,
                   unassigned(analysis, built.slices), built.keep)

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
