"""Params and MACs of a pruned model computed from the plan's widths, without pruning.

The panel's preview must answer within a slider drag (≤ 200 ms on resnet50), and a MACs budget
(`PrunePlan.lowest(target_macs=...)`) asks for the cost after every filter it takes, so neither
can run surgery and a flop counter. Each sliced module's cost is a product of its widths (the
layer-kind registry's cost terms); the model total after pruning is the measured total minus
the per-module differences, so whatever `measure.count` counts that these formulas do not
(norms, pooling) cancels out. `tests/test_costs.py` checks it equals prune + count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .graph import ChannelGraph, ModuleSlices
from .kinds import KINDS, CostShape, LayerKind
from .measure import _forward, count


@dataclass(frozen=True)
class _Member:
    """One sliced member: its kind's cost terms, its full widths, and how many positions each
    group holds along its output and input dims."""

    kind: LayerKind
    shape: CostShape
    slices: ModuleSlices
    out_full: int
    in_full: int
    out_counts: dict[int, int]
    in_counts: dict[int, int]
    out_factor: int
    in_factor: int
    sizes: tuple[int, ...]      # channels of every group


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int


class CostModel:
    """`cost(removed)` → params and MACs after removing `removed[group_id]` channels."""

    def __init__(self, model: nn.Module, example_inputs: Any, graph: ChannelGraph):
        self.graph = graph
        measured = count(model, example_inputs)
        self.before = Cost(int(measured.params), int(measured.macs))
        self._members = _members(model, example_inputs, graph)
        self._base_terms = {name: _terms(m, {}) for name, m in self._members.items()}
        self._touching: dict[int, list[str]] = {}
        for name, member in self._members.items():
            for g in member.slices.out_touches | member.slices.in_touches:
                self._touching.setdefault(g, []).append(name)

    def cost(self, removed: dict[int, int]) -> Cost:
        params, macs = self.before.params, self.before.macs
        touched = {g for g, n in removed.items() if n}
        for name, member in self._members.items():
            if not (member.slices.out_touches | member.slices.in_touches) & touched:
                continue
            base_params, base_macs = self._base_terms[name]
            new_params, new_macs = _terms(member, removed)
            params += new_params - base_params
            macs += new_macs - base_macs
        return Cost(int(params), int(macs))

    def change(self, removed: dict[int, int], group: int, more: int) -> Cost:
        """How params and MACs move when `group` loses `more` channels on top of `removed` (negative:
        they fall). Only the members the group passes through are re-costed, so a budget can ask
        after every filter."""
        after = {**removed, group: removed.get(group, 0) + more}
        params = macs = 0
        for name in self._touching.get(group, ()):
            member = self._members[name]
            old_params, old_macs = _terms(member, removed)
            new_params, new_macs = _terms(member, after)
            params += new_params - old_params
            macs += new_macs - old_macs
        return Cost(int(params), int(macs))

    def channel_macs(self) -> dict[int, int]:
        """MACs that removing one channel of each prunable group saves in the unpruned model (what
        one filter costs: the `flops` normalisation divides importance by it)."""
        return {g.id: -self.change({}, g.id, 1).macs for g in self.graph.prunable()}

    def member_widths(self, name: str, removed: dict[int, int]) -> tuple[int, int]:
        """(output, input) width of member `name` after removing `removed[group]` channels."""
        member = self._members[name]
        return (_width(member.out_full, member.out_counts, member.out_factor, removed, member.sizes),
                _width(member.in_full, member.in_counts, member.in_factor, removed, member.sizes))

    def members(self) -> dict[str, "_Member"]:
        return dict(self._members)

    def touching(self, group: int) -> list[str]:
        """Names of the members that group `group`'s channels pass through."""
        return list(self._touching.get(group, ()))

    def per_group(self) -> dict[int, Cost]:
        """Params and MACs of the modules each group's channels pass through (what its row carries)."""
        carried: dict[int, list[int]] = {}
        for name, member in self._members.items():
            p, m = self._base_terms[name]
            for g in member.slices.out_touches | member.slices.in_touches:
                acc = carried.setdefault(g, [0, 0])
                acc[0] += p
                acc[1] += m
        return {g: Cost(p, m) for g, (p, m) in carried.items()}


def _width(full: int, counts: dict[int, int], factor: int, removed: dict[int, int], sizes: list[int]) -> int:
    """Positions left along one dim. A group that loses k of its n channels loses k/n of the
    positions it holds there: exact when each channel sits at one position (shuffled groups whose
    channels repeat unequally get an estimate)."""
    lost = sum(n * removed[g] // sizes[g] for g, n in counts.items() if removed.get(g))
    return full - factor * lost


def _terms(m: _Member, removed: dict[int, int]) -> tuple[int, int]:
    sizes = m.sizes
    out = _width(m.out_full, m.out_counts, m.out_factor, removed, sizes)
    inp = _width(m.in_full, m.in_counts, m.in_factor, removed, sizes)
    return m.kind.terms(m.shape, out, inp)


def _counts(groups) -> dict[int, int]:
    if groups is None:
        return {}
    values, counts = np.unique(groups, return_counts=True)
    return {int(g): int(n) for g, n in zip(values, counts) if g >= 0}


def _members(model: nn.Module, example_inputs: Any, graph: ChannelGraph) -> dict[str, "_Member"]:
    modules = dict(model.named_modules())
    owners = {sl.module for sl in graph.slices.values()}
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {name: [] for name in owners}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor) and output.dim() >= 1:
                first = args[0] if args and isinstance(args[0], torch.Tensor) else output
                calls[name].append((tuple(first.shape), tuple(output.shape)))
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in owners if name in modules]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _forward(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    sizes = tuple(g.size for g in graph.groups)
    members = {}
    for name, sl in graph.slices.items():
        module = modules.get(sl.module)
        if module is None:
            continue
        kind = KINDS[sl.kind]
        positions = sum(kind.positions(inp, out) for inp, out in calls[sl.module])
        shape = kind.cost_shape(module, sl, positions)
        member = _Member(kind, shape, sl, shape.out_dim, kind.full_in(shape), _counts(sl.out_group), _counts(sl.in_group),
                         sl.out_factor, sl.in_factor, sizes)
        members[name] = member
    return members
