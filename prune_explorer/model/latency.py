"""A per-layer latency table, measured once: what a pruned model's forward pass will cost.

Latency is not proportional to MACs (small or oddly sized layers run at a fraction of the peak;
BENCHMARKS.md, export), so a latency budget needs measured numbers. Each sliced conv, linear and
norm of a model is timed alone, on its own recorded inputs, at a grid of widths (output × input,
fractions of its full widths); between grid points the table interpolates bilinearly. A model's
latency is predicted as the measured whole, minus what the timed layers cost at full width, plus
what they cost at the plan's widths — so the untimed rest (activations, adds, pooling) is carried
as a constant, which makes the prediction for a pruned model err on the slow side.

The table is keyed by module name and absolute widths, so one measured on a base model also
serves the models pruned from it (their module names stay): `PrunePlan.lowest(...,
target_latency_ms=..., latency=table, costs=CostModel(child, ...))`.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .clone import private_copy
from .costs import CostModel
from .kinds import KINDS

FORMAT = 1
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass
class LayerGrid:
    """Milliseconds of one member's forward pass (all its calls) at output widths × input widths."""

    module: str
    out: list[int]
    inp: list[int]
    ms: list[list[float]]
    full: tuple[int, int]

    def at(self, out: float, inp: float) -> float:
        """Bilinear interpolation, clamped at the grid's edges."""
        table = np.asarray(self.ms, dtype=np.float64)
        along_in = [np.interp(inp, self.inp, row) for row in table]
        return float(np.interp(out, self.out, along_in))


@dataclass
class LatencyTable:
    """`predict(costs, removed)` and `change(costs, removed, group, k)` in milliseconds."""

    rest_ms: float                       # what the timed layers do not account for (kept constant)
    layers: dict[str, LayerGrid]         # member name -> grid
    input_shape: list[int]
    threads: int
    device: str
    meta: dict = field(default_factory=dict)

    # --- measuring --------------------------------------------------------------------------------
    @classmethod
    def measure(cls, model: nn.Module, example_inputs: Any, graph=None, costs: CostModel | None = None,
                fractions: tuple[float, ...] = FRACTIONS, warmup: int = 2, repeats: int = 5,
                progress: bool = False) -> "LatencyTable":
        """Time the whole model and every sliced layer at `fractions` of its widths (eval, no_grad)."""
        from tqdm.auto import tqdm

        from .graph import ChannelGraph
        from .runtimes import default_clock

        if graph is None:
            with torch.no_grad():
                graph = ChannelGraph.trace(model, example_inputs)
        model = private_copy(model, share_tensors=False)   # every forward below runs on this copy
        costs = costs or CostModel(model, example_inputs, graph)
        prunable = {g.id for g in graph.prunable()}
        modules = dict(model.named_modules())
        members = {name: m for name, m in costs.members().items()
                   if KINDS[m.slices.kind].timed and (m.slices.out_touches | m.slices.in_touches) & prunable}
        calls = _recorded_inputs(model, example_inputs, {m.slices.module for m in members.values()})
        total = _median_ms(model, example_inputs, warmup, max(repeats, 10))
        layers: dict[str, LayerGrid] = {}
        bar = tqdm(members.items(), desc="latency table", unit="layer", disable=not progress)
        for name, member in bar:
            module = modules[member.slices.module]
            outs = _widths(member, "out", fractions, prunable)
            ins = _widths(member, "in", fractions, prunable)
            ms = [[_time_at(module, member, o, i, calls[member.slices.module], warmup, repeats) for i in ins]
                  for o in outs]
            # noise that makes a narrower layer slower than a wider one is flattened: never negative savings
            grid = np.maximum.accumulate(np.maximum.accumulate(np.asarray(ms), axis=0), axis=1)
            layers[name] = LayerGrid(member.slices.module, outs, ins, grid.tolist(), (member.out_full, member.in_full))
        full = sum(layer.at(*layer.full) for layer in layers.values())
        shape = list(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else []
        device = str(next((p.device for p in model.parameters()), torch.device("cpu")))
        return cls(total - full, layers, shape, torch.get_num_threads(), device,
                   {"measured_total_ms": total, "fractions": list(fractions), "repeats": repeats,
                    "clock": default_clock("pytorch", example_inputs)})

    # --- predicting -------------------------------------------------------------------------------
    def predict(self, costs: CostModel, removed: dict[int, int] | None = None) -> float:
        """Milliseconds of `costs`' model after removing `removed[group]` channels."""
        removed = removed or {}
        self._check(costs)
        members = costs.members()
        # a layer the model's graph no longer lists as sliced (a group cut to one channel can look
        # broadcast) is counted at the width the table measured it at: the slow side
        return self.rest_ms + sum(layer.at(*(costs.member_widths(name, removed) if name in members else layer.full))
                                  for name, layer in self.layers.items())

    def change(self, costs: CostModel, removed: dict[int, int], group: int, more: int) -> float:
        """How the predicted milliseconds move when `group` loses `more` channels on top of `removed`."""
        after = {**removed, group: removed.get(group, 0) + more}
        delta = 0.0
        for name in costs.touching(group):
            layer = self.layers.get(name)
            if layer is not None:
                delta += layer.at(*costs.member_widths(name, after)) - layer.at(*costs.member_widths(name, removed))
        return delta

    def _check(self, costs: CostModel) -> None:
        for name, member in costs.members().items():
            layer = self.layers.get(name)
            if layer is not None and (member.out_full > max(layer.out) or member.in_full > max(layer.inp)):
                raise ValueError(f"latency table: layer {name!r} is {member.out_full}x{member.in_full} wide but "
                                 f"the table was measured up to {max(layer.out)}x{max(layer.inp)}: measure it on "
                                 "this model (or the one it was pruned from)")

    # --- on disk ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "rest_ms": self.rest_ms, "input_shape": self.input_shape, "threads": self.threads,
                "device": self.device, "meta": self.meta,
                "layers": {n: {"module": g.module, "out": g.out, "in": g.inp, "ms": g.ms, "full": list(g.full)}
                           for n, g in self.layers.items()}}

    def save(self, path: str | os.PathLike) -> None:
        """JSON, written to a temp file beside `path` and renamed."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".latency.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not a latency table ({exc})") from None
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: latency table format {data.get('format')!r}, expected {FORMAT}")
        try:
            layers = {n: LayerGrid(g["module"], g["out"], g["in"], g["ms"], tuple(g["full"]))
                      for n, g in data["layers"].items()}
            return cls(float(data["rest_ms"]), layers, data["input_shape"], int(data["threads"]), data["device"],
                       data.get("meta", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: latency table lacks field {exc}") from None


def _widths(member, side: str, fractions, prunable: set[int]) -> list[int]:
    """Grid widths along one side: the fractions of its full width, multiples of the conv groups."""
    full = member.out_full if side == "out" else member.in_full
    touches = member.slices.out_touches if side == "out" else member.slices.in_touches
    kind = KINDS[member.slices.kind]
    if kind.in_follows_out and side == "in" or not touches & prunable:
        return [full]
    step = kind.width_step(member.slices, side)
    step *= member.out_factor if side == "out" else member.in_factor
    return sorted({max(step, int(round(f * full / step)) * step) for f in fractions} | {full})


def _recorded_inputs(model: nn.Module, example_inputs: Any, names: set[str]) -> dict[str, list[torch.Tensor]]:
    """Each module's inputs, one per call, from one forward pass (the shapes its timing uses)."""
    from .inputs import call
    from .measure import _eval_no_grad

    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())

    def hook(name):
        def record(module, args):
            seen[name].append(args[0].detach().clone())
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with _eval_no_grad(model):
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _median_ms(model: nn.Module, inputs: Any, warmup: int, repeats: int) -> float:
    """Median milliseconds in PyTorch eager on its default clock: on one thread the CPU time, which
    other processes on a busy machine do not inflate (model/runtimes.py)."""
    from .runtimes import interleaved

    return interleaved("pytorch", [model], inputs, warmup=warmup, repeats=repeats)[0].median


def _time_at(module: nn.Module, member, out: int, inp: int, inputs: list[torch.Tensor], warmup: int,
             repeats: int) -> float:
    """Median ms of `module` narrowed to `out` x `inp` (the kind's own slicing), on its recorded inputs."""
    sl, kind = member.slices, KINDS[member.slices.kind]
    out_ix = kind.timing_positions(out, member.out_full, sl, "out")
    in_ix = kind.timing_positions(inp, member.in_full, sl, "in")
    narrowed = copy.copy(module)
    narrowed._parameters, narrowed._buffers = dict(module._parameters), dict(module._buffers)
    with torch.no_grad():
        for role, attr in sl.params.items():
            tensor = getattr(module, attr, None) if attr else None
            if role in kind.sliced_roles and isinstance(tensor, torch.Tensor):
                value = kind.slice(role, tensor.detach(), out_ix, in_ix, sl)
                if attr in narrowed._parameters:
                    narrowed._parameters[attr] = nn.Parameter(value, requires_grad=False)
                else:
                    narrowed._buffers[attr] = value
    kind.set_widths(narrowed, sl, out, None if kind.in_follows_out else inp)
    narrowed.training = False          # not .eval(): that would reach the original's (shared) children
    channels = out if kind.in_follows_out else inp
    xs = tuple(_narrow_input(x, kind.channel_axis, channels) for x in inputs)

    class Calls(nn.Module):
        def forward(self, *args):
            return [narrowed(a) for a in args]

    return _median_ms(Calls(), xs, warmup, repeats)


def _narrow_input(x: torch.Tensor, axis: int, channels: int) -> torch.Tensor:
    return x.narrow(axis, 0, channels).contiguous() if x.shape[axis] >= channels else x
