"""Widths written in the model's code: which module attribute holds each, found by one more trace.

A pruned model runs the original code, so a slice bound (`y[:, :k]`), split sizes or the channel
dim of a reshape must follow the pruned width, or the pruned model computes something else. A
handler that meets such a number asks a `SizeQuestion`; after the walk, `answer` looks in the
modules the op runs in (innermost first, then the root) for int or int-list attributes holding
that number, traces a copy of the model (the module tree only: tensors shared, never changed)
with those attributes set to marker values, and sees which marker the op now reads. Only an
attribute the op is seen to read becomes a member (kind `size` / `split_sizes`, which surgery sets
and store records); anything else is refused by the question's handler, naming the op and why.
Value matching alone would be a guess (a bound of 2 and a `stride` of 2), so it is never used.
Under torch.export every size is a number in the graph, so no attribute can be confirmed there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
from torch import nn

from ..kinds import leaf_types, recorded_kind
from .tracing import _scopes, trace_fx

MAX_CANDIDATES = 16
MARKER_STEP = 97          # markers: value + 97 * (i + 1), small enough for any tensor sized by them


@dataclass
class SizeQuestion:
    """One number an op reads, and what its handler does once it is known where it comes from."""

    node: torch.fx.Node
    path: tuple                      # where the number sits in the node's args (`read`)
    value: int | tuple[int, ...]
    what: str                        # the op, for reasons
    found: Callable[[Any, str, str, int], None]     # (analysis, module, attribute, multiplier)
    missing: Callable[[Any, str], None]             # (analysis, reason)
    multiples: bool = False          # the code may multiply the attribute (`view(B, self.c * 49)`)


def ask(an, question: SizeQuestion) -> None:
    an.sizes.append(question)


def read(node: torch.fx.Node, path: tuple) -> Any:
    """The value at `path` in a node's arguments: ("args", i, ...) / ("kwargs", key, ...), with
    "start" / "stop" stepping into a slice."""
    value: Any = node.args if path[0] == "args" else node.kwargs
    for step in path[1:]:
        if isinstance(value, slice):
            value = getattr(value, step)
        else:
            value = value[step]
    return value


def answer(an) -> None:
    questions, an.sizes = an.sizes, []
    if an.traced.route != "fx":
        for q in questions:
            q.missing(an, f"{q.what} writes the width {_show(q.value)} as a number, and under torch.export every "
                          "size is one, so the graph cannot tell which module attribute holds it (a pruned model "
                          "would keep the number)")
        return
    candidates = [_candidates(an, q) for q in questions]
    wanted: dict[tuple[str, str], Any] = {}
    for found in candidates:
        for m, a, v, _ in found:
            wanted.setdefault((m, a), v)
    markers = {key: _marker(v, i) for i, (key, v) in enumerate(sorted(wanted.items())[:MAX_CANDIDATES])}
    nodes = _perturbed_nodes(an.model, markers, getattr(an, "fx_leaves", leaf_types())) if markers else None
    for q, found in zip(questions, candidates):
        hits = []
        other = nodes.get(q.node.name) if nodes else None
        if other is not None and other.op == q.node.op and other.target == q.node.target:
            got = _value(other, q.path)
            hits = [(m, a, s) for m, a, _, s in found if (m, a) in markers and _reads(got, markers[(m, a)], s)]
        if len(hits) == 1:
            q.found(an, *hits[0])
        elif hits:
            names = " and ".join(f"{m + '.' if m else ''}{a}" for m, a, _ in hits)
            q.missing(an, f"{q.what} reads the width {_show(q.value)} from {names} at once")
        elif found and nodes is None:
            q.missing(an, f"{q.what} writes the width {_show(q.value)}, and tracing the model with its attributes "
                          "changed failed, so the graph cannot tell which one holds it")
        else:
            q.missing(an, f"{q.what} writes the width {_show(q.value)} in the code, so a pruned model would keep it "
                          "(hold it in a module attribute that forward reads, e.g. self.sizes, and surgery sets it)")


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _value(node: torch.fx.Node, path: tuple) -> Any:
    try:
        value = read(node, path)
    except (IndexError, KeyError, AttributeError, TypeError):
        return None
    return tuple(value) if isinstance(value, list) else value


def _candidates(an, q: SizeQuestion) -> list[tuple[str, str, Any, int]]:
    """(module, attribute, its value, multiplier) holding the question's number, in the innermost
    module the op runs in that has any (the root last)."""
    scopes = [name for name, _ in reversed(list(_scopes(q.node).values()))] + [""]
    for name in scopes:
        module = an.modules.get(name)
        if module is None:
            continue
        kind = recorded_kind(module)
        managed = set(kind.width_attrs) if kind is not None else set()   # widths surgery sets already
        found = []
        for attr, v in vars(module).items():
            if attr.startswith("_") or attr in managed or attr == "training":
                continue
            s = _multiplier(v, q.value, q.multiples)
            if s:
                found.append((name, attr, v, s))
        if found:
            return found
    return []


def _multiplier(v: Any, value: Any, multiples: bool) -> int:
    """s with value == s * v (1 for lists; ±1 for bounds, which may be negated in the code)."""
    if isinstance(value, tuple):
        ok = isinstance(v, (list, tuple)) and len(v) == len(value) and all(type(x) is int for x in v)
        return 1 if ok and tuple(v) == value else 0
    if type(v) is not int or v == 0 or type(value) is not int:
        return 0
    if v == value:
        return 1
    if v == -value:
        return -1
    if multiples and abs(v) >= 2 and value % v == 0 and value // v > 0:
        return value // v
    return 0


def _marker(v: Any, i: int) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(x + MARKER_STEP * (i + 1) for x in v)
    return v + MARKER_STEP * (i + 1) if v > 0 else v - MARKER_STEP * (i + 1)


def _reads(got: Any, marker: Any, s: int) -> bool:
    if isinstance(marker, (list, tuple)):
        return got == tuple(marker)
    return type(got) is int and got == s * marker


def _perturbed_nodes(model: nn.Module, markers: dict[tuple[str, str], Any],
                     leaves: tuple[type, ...]) -> dict[str, torch.fx.Node] | None:
    """The fx nodes of a copy of `model` (module tree copied, tensors shared) whose candidate
    attributes hold the markers; None when that copy cannot be traced."""
    from ..clone import clone

    memo: dict[int, Any] = {}
    for module in model.modules():
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                memo[id(t)] = t
    copy = clone(model, memo)
    modules = dict(copy.named_modules())
    for (name, attr), marker in markers.items():
        setattr(modules[name], attr, marker)
    try:
        traced, _ = trace_fx(copy, leaves)
    except Exception:  # a marker may send the code down a path fx cannot trace: then nothing is confirmed
        return None
    return {n.name: n for n in traced.graph.nodes}
