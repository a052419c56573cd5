"""Params and MACs of a pruned model computed from the plan's widths, without pruning.

The preview must answer within a slider drag (≤ 200 ms on resnet50), so it cannot run surgery
and a flop counter on every move. Each sliced module's cost is a product of its widths; the
model total after pruning is the measured total minus the per-module differences, so whatever
`measure.count` counts that these formulas do not (norms, pooling) cancels out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..model.graph import ChannelGraph
from ..model.measure import _forward, count


@dataclass(frozen=True)
class _ModuleShape:
    kind: str                   # "conv" | "depthwise" | "grouped" | "linear" | "norm"
    out_dim: int
    in_dim: int                 # conv: in_channels / groups; linear: in_features; norm: params per channel
    kernel: int                 # product of kernel sizes (1 for linear)
    positions: int              # output positions per forward (batch × spatial), summed over calls
    has_bias: bool
    out_segments: tuple[tuple[int, int], ...]
    in_segments: tuple[tuple[int, int], ...]
    out_factor: int
    in_factor: int


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
        self._shapes = _module_shapes(model, example_inputs, graph)
        self._base_terms = {name: _terms(s, {}) for name, s in self._shapes.items()}

    def cost(self, removed: dict[int, int]) -> Cost:
        params, macs = self.before.params, self.before.macs
        touched = {g for g, n in removed.items() if n}
        for name, shape in self._shapes.items():
            groups = {g for g, _ in shape.out_segments} | {g for g, _ in shape.in_segments}
            if not groups & touched:
                continue
            base_params, base_macs = self._base_terms[name]
            new_params, new_macs = _terms(shape, removed)
            params += new_params - base_params
            macs += new_macs - base_macs
        return Cost(int(params), int(macs))

    def per_group(self) -> dict[int, Cost]:
        """Params and MACs of the modules each group's channels pass through (what its row carries)."""
        carried: dict[int, list[int]] = {}
        for name, shape in self._shapes.items():
            p, m = self._base_terms[name]
            for g in {g for g, _ in shape.out_segments} | {g for g, _ in shape.in_segments}:
                acc = carried.setdefault(g, [0, 0])
                acc[0] += p
                acc[1] += m
        return {g: Cost(p, m) for g, (p, m) in carried.items()}


def _width(full: int, segments: tuple[tuple[int, int], ...], factor: int, removed: dict[int, int]) -> int:
    return full - factor * sum(removed.get(g, 0) for g, _ in segments)


def _terms(s: _ModuleShape, removed: dict[int, int]) -> tuple[int, int]:
    out = _width(s.out_dim, s.out_segments, s.out_factor, removed)
    if s.kind == "norm":
        return s.in_dim * out, 0
    if s.kind == "depthwise":
        return out * s.kernel + (out if s.has_bias else 0), out * s.kernel * s.positions
    inp = _width(s.in_dim, s.in_segments, s.in_factor, removed) if s.kind != "grouped" else s.in_dim
    weights = out * inp * s.kernel
    return weights + (out if s.has_bias else 0), weights * s.positions


def _module_shapes(model: nn.Module, example_inputs: Any, graph: ChannelGraph) -> dict[str, _ModuleShape]:
    modules = dict(model.named_modules())
    positions: dict[str, int] = {name: 0 for name in graph.slices}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor) and output.dim() >= 1:
                channels = output.shape[1] if output.dim() > 1 and not isinstance(module, nn.Linear) else output.shape[-1]
                positions[name] += output.numel() // max(int(channels), 1)
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in graph.slices if name in modules]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _forward(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    shapes = {}
    for name, sl in graph.slices.items():
        module = modules.get(name)
        if module is None:
            continue
        shapes[name] = _shape_of(module, sl, positions[name])
    return shapes


def _shape_of(module: nn.Module, sl, positions: int) -> _ModuleShape:
    segments = dict(out_segments=tuple(sl.out or ()), in_segments=tuple(sl.inputs or ()),
                    out_factor=sl.out_factor, in_factor=sl.in_factor)
    bias = getattr(module, "bias", None) is not None
    if sl.kind == "norm":
        per_channel = 2 if getattr(module, "weight", None) is not None else 0
        return _ModuleShape("norm", module.num_features, per_channel, 1, 0, False, **segments)
    if sl.kind == "linear":
        return _ModuleShape("linear", module.out_features, module.in_features, 1, positions, bias, **segments)
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    return _ModuleShape(sl.kind, module.out_channels, module.in_channels // module.groups, kernel, positions, bias,
                        **segments)
