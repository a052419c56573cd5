"""Structured pruning surgery: a new, smaller model whose weights are exact slices of the old one."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .graph import ChannelGraph, ModuleSlices
from .plan import PrunePlan


def prune(model: nn.Module, plan: PrunePlan, example_inputs: Any, graph: ChannelGraph | None = None,
          round_to: int | None = None) -> nn.Module:
    """Return a pruned copy of `model`; the input model is never changed.

    Sliced tensors are built first and handed to `copy.deepcopy` through its memo, so each
    weight is copied once (the slice), not copied and then sliced.
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
    keep = {gid: _kept(graph.groups[gid].size, ix) for gid, ix in removed.items()}
    modules = dict(model.named_modules())
    memo: dict[int, Any] = {}
    resized: dict[str, tuple[int | None, int | None]] = {}
    with torch.no_grad():
        for name, sl in graph.slices.items():
            module = modules.get(name)
            if module is None:
                raise ValueError(f"layer {name!r} of the graph is not in the model; trace this model again")
            out_ix = _index(sl.out, sl.out_factor, keep)
            in_ix = _index(sl.inputs, sl.in_factor, keep)
            if out_ix is None and in_ix is None:
                continue
            if sl.kind == "grouped":
                raise ValueError(f"layer {name!r} is a grouped convolution; its channels cannot be sliced")
            _slice_module(module, sl, out_ix, in_ix, memo)
            resized[name] = (None if out_ix is None else len(out_ix), None if in_ix is None else len(in_ix))
        pruned = copy.deepcopy(model, memo)
    new_modules = dict(pruned.named_modules())
    for name, (n_out, n_in) in resized.items():
        _resize(new_modules[name], graph.slices[name], n_out, n_in)
    return pruned


def _kept(size: int, removed: list[int]) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().flatten()


def _index(segments, factor: int, keep: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Kept positions along one weight dim laid out as `segments`, or None when nothing is cut."""
    if not segments or not any(g in keep for g, _ in segments):
        return None
    parts, offset = [], 0
    for g, size in segments:
        parts.append(keep[g] + offset if g in keep else torch.arange(offset, offset + size))
        offset += size
    index = torch.cat(parts)
    if factor > 1:
        index = (index[:, None] * factor + torch.arange(factor)).flatten()
    return index


def _sliced(t: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t.index_select(dim, index)


def _slice_module(module: nn.Module, sl: ModuleSlices, out_ix, in_ix, memo: dict[int, Any]) -> None:
    """Put the sliced copies of `module`'s tensors into the deepcopy memo."""
    if sl.kind == "norm":
        names = ("weight", "bias", "running_mean", "running_var")
        for name in names:
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                memo[id(t)] = _as_kind(t, _sliced(t, 0, out_ix))
        return
    weight = module.weight
    new = _sliced(weight, 0, out_ix)
    if sl.kind in ("conv", "linear"):
        new = _sliced(new, 1, in_ix)
    memo[id(weight)] = _as_kind(weight, new)
    if getattr(module, "bias", None) is not None:
        memo[id(module.bias)] = _as_kind(module.bias, _sliced(module.bias, 0, out_ix))


def _as_kind(original: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if value is original:
        value = value.clone()
    if isinstance(original, nn.Parameter):
        return nn.Parameter(value, requires_grad=original.requires_grad)
    return value


def _resize(module: nn.Module, sl: ModuleSlices, n_out: int | None, n_in: int | None) -> None:
    if sl.kind == "norm":
        module.num_features = n_out
    elif sl.kind == "depthwise":
        module.in_channels = module.out_channels = module.groups = n_out
    elif sl.kind == "conv":
        module.out_channels = n_out if n_out is not None else module.out_channels
        module.in_channels = n_in if n_in is not None else module.in_channels
    elif sl.kind == "linear":
        module.out_features = n_out if n_out is not None else module.out_features
        module.in_features = n_in if n_in is not None else module.in_features
