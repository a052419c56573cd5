"""Never silent: every conv and linear of a model is in a channel group or listed with the reason
it is not (`ChannelGraph.unassigned`), so nothing a user would expect to prune vanishes quietly."""
from __future__ import annotations

from ..kinds import KINDS, recorded_kind
from .groups import ModuleSlices
from .tracing import _scopes


def unassigned(an, slices: dict[str, ModuleSlices]) -> dict[str, str]:
    """{layer: reason} for each module with filters (its layer kind's `has_filters`) and each
    functional conv/linear on a parameter that no channel group holds, in model order."""
    grouped = {sl.module or sl.name for sl in slices.values()
               if KINDS[sl.kind].has_filters and (sl.out_touches or sl.in_touches)}
    called, leaves = _called(an)
    found: dict[str, str] = {}
    for name, module in an.modules.items():
        kind = recorded_kind(module)
        if not name or kind is None or not kind.has_filters or name in grouped:
            continue
        found[name] = _reason(an, name, called, leaves)
    for name, reason in an.refused_layers.items():
        if name not in grouped and name not in found:
            found[name] = reason
    return found


def _reason(an, name: str, called: set[str], leaves: dict[str, str]) -> str:
    outer = next((leaf for leaf in leaves if name.startswith(leaf + ".")), None)
    if outer is not None:
        return f"inside module {outer} ({leaves[outer]}), which the trace takes as one call it does not look into"
    if name in an.notes:
        return an.notes[name]
    if name not in called:
        return "not called in the forward pass on the example inputs"
    return "its output feeds no op the graph follows (its channels reach no channel group)"


def _called(an) -> tuple[set[str], dict[str, str]]:
    """Modules some op ran in, and the leaf modules (called as one op) with their class names."""
    called: set[str] = set()
    leaves: dict[str, str] = {}
    for node in an.traced.graph.nodes:
        if node.op == "call_module":
            called.add(node.target)
            module = an.modules.get(node.target)
            if module is not None and any(True for _ in module.children()):
                leaves[node.target] = type(module).__name__
        called.update(name for name, _ in _scopes(node).values())
    return called, leaves
