"""Structured pruning surgery: a new, smaller model whose tensors are exact slices of the old one.

What to cut comes from the graph (`ModuleSlices`: positions per member, by group and channel);
how a member's tensors are cut and which module attributes follow comes from its layer kind
(`kinds.KINDS`), the registry graph, store and the panel's cost model share.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .clone import clone
from .graph import ChannelGraph
from .kinds import KINDS, replace_module
from .plan import PrunePlan


def prune(model: nn.Module, plan: PrunePlan, example_inputs: Any, graph: ChannelGraph | None = None,
          round_to: int | None = None) -> nn.Module:
    """Return a pruned copy of `model`; the input model is never changed.

    Sliced tensors are built first and handed to the module-tree copy (`clone.clone`, deepcopy's
    semantics) through its memo, so each tensor is copied once (the slice), not copied and then sliced.
    """
    if graph is None:
        graph = ChannelGraph.trace(model, example_inputs)
    removed = plan.resolve(graph)
    if round_to:
        for gid, ix in removed.items():
            group = graph.groups[gid]
            if (group.size - len(ix)) % round_to:
                raise ValueError(
                    f"layer {group.name!r}: keeping {group.size - len(ix)} of {group.size} channels "
                    f"is not a multiple of round_to={round_to}"
                )
    masks = {gid: _mask(graph.groups[gid].size, ix) for gid, ix in removed.items()}
    modules = dict(model.named_modules())
    memo: dict[int, Any] = {}
    resized = []
    with torch.no_grad():
        for name, sl in graph.slices.items():
            if not (sl.out_touches | sl.in_touches) & masks.keys():
                continue
            module = modules.get(sl.module)
            if module is None:
                raise ValueError(f"layer {sl.module!r} of the graph is not in the model; trace this model again")
            out_ix, in_ix = sl.kept("out", masks), sl.kept("in", masks)
            if out_ix is None and in_ix is None:
                continue
            kind = KINDS[sl.kind]
            for role, attr in sl.params.items():
                tensor = getattr(module, attr, None) if attr else None
                if role in kind.sliced_roles and isinstance(tensor, torch.Tensor):
                    memo[id(tensor)] = _as_kind(tensor, kind.slice(role, tensor, out_ix, in_ix, sl))
            resized.append((sl, out_ix, in_ix))
        for tensor in _tensors(model):   # plain clones: cheaper than Tensor.__deepcopy__ per tensor
            if id(tensor) not in memo and type(tensor) in (torch.Tensor, nn.Parameter):
                memo[id(tensor)] = _as_kind(tensor, tensor.detach().clone())
        pruned = clone(model, memo)
    new_modules = dict(pruned.named_modules())
    for sl, out_ix, in_ix in resized:
        module = new_modules[sl.module]
        new = KINDS[sl.kind].resize(module, sl, out_ix, in_ix)
        if new is not module:
            replace_module(pruned, sl.module, new)
            new_modules[sl.module] = new
    rewritten = [sl.name for sl, _, _ in resized if KINDS[sl.kind].attribute]
    if rewritten:
        _check_runs(pruned, example_inputs, rewritten)
    return pruned


def _check_runs(pruned: nn.Module, example_inputs: Any, rewritten: list[str]) -> None:
    """Widths the forward reads were rewritten: the pruned model must still run on the example."""
    from .measure import _eval_no_grad, _forward

    try:
        with _eval_no_grad(pruned):
            _forward(pruned, tuple(example_inputs) if isinstance(example_inputs, list) else example_inputs)
    except Exception as exc:  # whatever the user's forward raises
        raise ValueError(f"the pruned model does not run after surgery rewrote {', '.join(rewritten)}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _tensors(model: nn.Module):
    for module in model.modules():
        yield from (t for t in module._parameters.values() if t is not None)
        yield from (t for t in module._buffers.values() if t is not None)


def _mask(size: int, removed: list[int]) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[removed] = True
    return mask


def _as_kind(original: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if value is original:
        value = value.clone()
    if isinstance(original, nn.Parameter):
        return nn.Parameter(value, requires_grad=original.requires_grad)
    return value
