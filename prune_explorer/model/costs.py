"""Params and MACs of a pruned model computed from the plan's widths, without pruning.

The panel's preview must answer within a slider drag (≤ 200 ms on resnet50), and a MACs budget
(`PrunePlan.lowest(target_macs=...)`) asks for the cost after every filter it takes, so neither
can run surgery and a flop counter. Each sliced module's cost is a product of its widths (the
layer-kind registry's cost terms); the model total after pruning is the measured total minus
the per-module differences, so whatever `measure.count` counts that these formulas do not
(norms, pooling) cancels out. `tests/test_costs.py` checks it equals prune + count.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .graph import ChannelGraph, ModuleSlices
from .kinds import KINDS, CostShape, LayerKind
from .measure import _eval_no_grad, _forward, count


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
    through: tuple | None = None       # channels a Linear passes through: (full width, per group counts, classes)
    out_classes: dict | None = None    # group -> its channel at each position it holds (exact costs from indices)
    in_classes: dict | None = None

    @property
    def groups(self) -> frozenset:
        """The groups whose cuts change this member's cost."""
        touched = self.slices.out_touches | self.slices.in_touches
        return touched | frozenset(self.through[1]) if self.through else touched


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
            for g in member.groups:
                self._touching.setdefault(g, []).append(name)

    def cost(self, removed: dict[int, int]) -> Cost:
        params, macs = self.before.params, self.before.macs
        touched = {g for g, n in removed.items() if n}
        for name, member in self._members.items():
            if not (member.groups) & touched:
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
        return (_width(member.out_full, member.out_counts, member.out_factor, removed, member.sizes, member.out_classes),
                _width(member.in_full, member.in_counts, member.in_factor, removed, member.sizes, member.in_classes))

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
            for g in member.groups:
                acc = carried.setdefault(g, [0, 0])
                acc[0] += p
                acc[1] += m
        return {g: Cost(p, m) for g, (p, m) in carried.items()}


def _width(full: int, counts: dict[int, int], factor: int, removed: dict, sizes: list[int],
           classes: dict[int, np.ndarray] | None = None) -> int:
    """Positions left along one dim. `removed[g]` a count: a group that loses k of its n channels
    loses k/n of the positions it holds there — exact when the dim holds every channel of the group
    equally often, an estimate where it holds only some (a split's part, a slice, a shuffle);
    `removed[g]` the channel indices: exact."""
    lost = 0
    for g, n in counts.items():
        cut = removed.get(g)
        if cut is None or isinstance(cut, (int, np.integer)) and not cut:
            continue
        if isinstance(cut, (int, np.integer)):
            lost += n * int(cut) // sizes[g]
        elif len(cut):
            lost += int(np.isin(classes[g], cut).sum())
    return full - factor * lost


def _terms(m: _Member, removed: dict[int, int]) -> tuple[int, int]:
    sizes = m.sizes
    out = _width(m.out_full, m.out_counts, m.out_factor, removed, sizes, m.out_classes)
    inp = _width(m.in_full, m.in_counts, m.in_factor, removed, sizes, m.in_classes)
    if m.through is None:
        return m.kind.terms(m.shape, out, inp)
    full, counts, classes = m.through   # MACs scale with the passed-through channels left (positions per one)
    shape = replace(m.shape, positions=m.shape.positions * _width(full, counts, 1, removed, sizes, classes))
    return m.kind.terms(shape, out, inp)


def _classes(groups, channels) -> dict[int, np.ndarray]:
    if groups is None:
        return {}
    return {int(g): channels[groups == g] for g in np.unique(groups).tolist() if g >= 0}


def _counts(groups) -> dict[int, int]:
    if groups is None:
        return {}
    values, counts = np.unique(groups, return_counts=True)
    return {int(g): int(n) for g, n in zip(values, counts) if g >= 0}


_WEIGHTED_OPS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                           "linear"})


class _OpShapes(TorchFunctionMode):
    """(input, output) shapes of every conv/linear call, keyed by its weight tensor: a member's own
    op, wherever it runs (a functional conv on the root's parameter, a block that pools after it)."""

    def __init__(self, weights: set[int]):
        super().__init__()
        self.weights = weights
        self.calls: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in _WEIGHTED_OPS and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(weight) in self.weights and isinstance(args[0], torch.Tensor):
                self.calls.setdefault(id(weight), []).append((tuple(args[0].shape), tuple(out.shape)))
        return out


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

    def weight(sl):
        attr = sl.params.get("weight")
        module = modules.get(sl.module)
        return getattr(module, attr, None) if attr and module is not None else None

    weights = {id(w) for sl in graph.slices.values() if isinstance(w := weight(sl), torch.Tensor)}
    handles = [modules[name].register_forward_hook(hook(name)) for name in owners if name in modules]
    ops = _OpShapes(weights)
    try:
        with _eval_no_grad(model), ops:
            _forward(model, example_inputs)
    finally:
        for h in handles:
            h.remove()

    sizes = tuple(g.size for g in graph.groups)
    members = {}
    for name, sl in graph.slices.items():
        module = modules.get(sl.module)
        if module is None:
            continue
        kind = KINDS[sl.kind]
        seen = ops.calls.get(id(weight(sl))) or calls[sl.module]     # the op's own shapes, else its module's
        positions = sum(kind.positions(inp, out) for inp, out in seen)
        shape = kind.cost_shape(module, sl, positions)
        through = sl.extra.get("through")
        if through:   # a Linear over another dim: its positions include channels it passes through
            shape = replace(shape, positions=shape.positions // sl.extra["through_full"])
            through = (sl.extra["through_full"], through, sl.extra["through_classes"])
        member = _Member(kind, shape, sl, shape.out_dim, kind.full_in(shape), _counts(sl.out_group), _counts(sl.in_group),
                         sl.out_factor, sl.in_factor, sizes, through or None, _classes(sl.out_group, sl.out_channel),
                         _classes(sl.in_group, sl.in_channel))
        members[name] = member
    return members
