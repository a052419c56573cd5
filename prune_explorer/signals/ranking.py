"""Filter ranking: criteria are small callables giving one score per channel of a group, and a
normalisation decides how scores of different layers compare before a plan takes the lowest.

Higher score = more important. Trial criteria sum their per-tap score over the group's taps;
weight criteria sum per-filter norms over the group's producer convs/linears.

Normalisations (`NORMALIZATIONS`): `l2` divides each layer's scores by their L2 norm (Molchanov
2017 and the AWS example: n similar scores become ≈ 1/√n, so cuts even out layer widths);
`none` compares raw scores across layers (Molchanov 2019's global ranking, meaningful when every
score is in the same units, as a change of the one loss is); `flops` divides each raw score by the
share of the model's MACs one channel of its group costs (importance per MAC saved). A criterion
carries its own default (`criterion.normalization`, `l2` when it has none).
"""
from __future__ import annotations

import os
import warnings
from functools import cached_property
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..model.kinds import KINDS

COLUMNS = ["layer", "filter", "score", "normalized", "group", "criterion", "steps", "normalization"]

Criterion = Callable[[Any, nn.Module, Any], np.ndarray]


def _trial_criterion(stat: Callable[[Any], np.ndarray | None], needs_gradients: bool = False,
                     requires: tuple[Callable[[Any], bool], str] | None = None) -> Criterion:
    def score(group, model, trial) -> np.ndarray:
        if trial is None:
            raise ValueError("this criterion needs a trial (captured activations)")
        parts = trial.group_stats(group)
        if not parts:
            raise ValueError(f"trial {trial.path} holds no tensor for layer {group.name} "
                             f"(taps {[(t.module, t.call) for t in group.taps]})")
        if needs_gradients and not any(p.has_gradients for p in parts):
            raise ValueError(
                f"trial {trial.path} has no gradients of module outputs for layer {group.name}: the Taylor "
                "criterion needs them. Stock smdebug hooks never save them; capture with "
                "prune_explorer.CaptureHook(model, out_dir) (mode 'compact' or 'full'), or use l1, l2, "
                "mean_activation or apoz.")
        if requires is not None and not all(requires[0](p) for p in parts if p.has_gradients):
            raise ValueError(f"trial {trial.path}, layer {group.name}: {requires[1]}")
        return np.sum([stat(p) for p in parts if not needs_gradients or p.has_gradients], axis=0)

    score.needs_trial = True
    return score


def _weight_criterion(norm: Callable[[np.ndarray], np.ndarray], key: str) -> Criterion:
    def score(group, model, trial, graph=None) -> np.ndarray:
        """Per channel: the norm of its filters in each member with filters that produces the group
        (several filters per channel — a pixel shuffle's r², a shuffle — count as one row), summed
        over those members."""
        if graph is None:
            graph = trial.graph if trial is not None and getattr(trial, "graph", None) is not None else None
        if graph is None:
            raise ValueError(f"layer {group.name}: weight criteria need the model's ChannelGraph (rank passes it)")
        modules = dict(model.named_modules())
        # a job keeps its best epoch's weights while the trial saw the last step's: the trial's
        # norms stand in only for a model it rebuilt from an architecture name (fresh weights)
        trained = trial if trial is not None and trial.untrained_model and trial.model is model else None
        total = np.zeros(group.size)
        members = graph.filter_members(group.id)
        if not members:
            raise ValueError(f"layer {group.name}: no conv/linear producer to take a weight norm of")
        for sl in members:
            per_filter = _filter_norm(sl, modules[sl.module], trained, norm, key)
            at = sl.out_group == group.id
            channels, values = sl.out_channel[at], per_filter[at]
            if channels.size == group.size and (channels == np.arange(group.size)).all():
                total += values
            elif key == "l1":
                total += np.bincount(channels, weights=values, minlength=group.size)
            else:
                total += np.sqrt(np.bincount(channels, weights=values ** 2, minlength=group.size))
        return total

    score.uses_graph = True
    return score


def _filter_norm(sl, module: nn.Module, trained, norm, key: str) -> np.ndarray:
    """Per-filter norms of the model's weights, or of the trial's (`trained`) when given and saved."""
    kind, name, attr = KINDS[sl.kind], sl.module, sl.params["weight"]
    groups = sl.groups
    if trained is not None and attr == "weight" and name in trained.weight_norms and key in trained.weight_norms[name]:
        return trained.weight_norms[name][key]
    if trained is not None and attr == "weight" and f"{name}.weight" in trained.weights:
        weight = np.asarray(trained.weights[f"{name}.weight"], dtype=np.float64)
        return norm(kind.filters(weight, groups))
    # the model's own weights: torch accumulates in float64 without a float64 copy (2x faster)
    flat = kind.filters(getattr(module, attr).detach(), groups)
    return torch.linalg.vector_norm(flat, ord=_ORDER[key], dim=1, dtype=torch.float64).cpu().numpy()


_ORDER = {"l1": 1, "l2": 2}


def _per_example(total, count):
    return total / max(count, 1)


_NO_GATE_TERM = ("its compact records have no taylor_sq statistic (captured before prune_explorer recorded it); "
                 "taylor_global and taylor_flops need it. Capture again with CaptureHook (mode 'compact' or "
                 "'full'), or rank with taylor, taylor_aws, mean_activation, apoz, l1 or l2.")

taylor = _trial_criterion(lambda s: _per_example(s.taylor, s.grad_examples), needs_gradients=True)
taylor_aws = _trial_criterion(lambda s: np.abs(_per_example(s.taylor_aws, s.grad_batches)), needs_gradients=True)
# Molchanov et al. 2019: a gate z = 1 on each channel of the tap's output; its first-order Taylor
# term (dL/dz)² per minibatch, averaged over minibatches; a group seen at several taps (a residual
# stream) adds its taps' terms. In loss units, so layers compare without normalisation.
taylor_global = _trial_criterion(lambda s: s.taylor_sq / s.sq_batches, needs_gradients=True,
                                 requires=(lambda s: s.sq_batches > 0 and s.taylor_sq is not None, _NO_GATE_TERM))
taylor_global.normalization = "none"


def taylor_flops(group, model, trial) -> np.ndarray:
    """taylor_global per MAC saved: Molchanov 2017's FLOPs regulariser as a ratio (the greedy
    answer to "keep the most importance within a MACs budget")."""
    return taylor_global(group, model, trial)


taylor_flops.normalization = "flops"
taylor_flops.needs_trial = True
mean_activation = _trial_criterion(lambda s: _per_example(s.activation, s.examples))
apoz = _trial_criterion(lambda s: 1.0 - _per_example(s.zeros, s.examples))
l1 = _weight_criterion(lambda w: np.abs(w).sum(1), "l1")
l2 = _weight_criterion(lambda w: np.sqrt((w ** 2).sum(1)), "l2")

CRITERIA: dict[str, Criterion] = {
    "taylor": taylor,
    "taylor_aws": taylor_aws,
    "taylor_global": taylor_global,
    "taylor_flops": taylor_flops,
    "mean_activation": mean_activation,
    "apoz": apoz,
    "l1": l1,
    "l2": l2,
}
WEIGHT_CRITERIA = ("l1", "l2")   # need no trial


class _Context:
    """What a normalisation may need beyond a group's scores; the cost model is built on first use."""

    def __init__(self, model: nn.Module, example_inputs: Any, graph, trial):
        self.model, self.example_inputs, self.graph, self.trial = model, example_inputs, graph, trial

    @cached_property
    def mac_share(self) -> dict[int, float]:
        """Per group: the share of the model's MACs one of its channels costs."""
        from ..model.costs import CostModel

        x = self.example_inputs
        if x is None:
            size = (getattr(self.trial, "meta", None) or {}).get("input_size")
            if not size:
                raise ValueError("the flops normalisation needs example_inputs (or a trial that records its input size)")
            x = torch.zeros(1, *size)
        costs = CostModel(self.model, x, self.graph)
        total = max(costs.before.macs, 1)
        return {g: max(macs, 1) / total for g, macs in costs.channel_macs().items()}


def _l2_normalize(scores: np.ndarray, group=None, context=None) -> np.ndarray:
    norm = float(np.sqrt((scores ** 2).sum()))
    return scores / norm if norm > 0 else np.zeros_like(scores)


def _per_mac(scores: np.ndarray, group, context: _Context) -> np.ndarray:
    return scores / context.mac_share[group.id]


Normalization = Callable[[np.ndarray, Any, _Context], np.ndarray]
NORMALIZATIONS: dict[str, Normalization] = {
    "l2": _l2_normalize,
    "none": lambda scores, group, context: scores,
    "flops": _per_mac,
}


def normalization_of(criterion: str | Criterion, normalize: bool | str | None = None) -> str:
    """The normalisation name `rank` uses: `normalize` when it names one (True = "l2", False =
    "none"), else the criterion's own default."""
    if normalize is None:
        fn = CRITERIA.get(criterion) if isinstance(criterion, str) else criterion
        return getattr(fn, "normalization", "l2")
    if isinstance(normalize, bool):
        return "l2" if normalize else "none"
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {normalize!r}; choose from {sorted(NORMALIZATIONS)}")
    return normalize


def rank(model: nn.Module, example_inputs: Any, trial=None, criterion: str | Criterion = "taylor",
         normalize: bool | str | None = None, graph=None) -> pd.DataFrame:
    """RankTable: one row per (prunable group, channel), ordered by group then filter.

    `trial` is an opened Trial, or a path / s3:// URI that is opened here against `model`.
    `normalize`: a name in NORMALIZATIONS ("l2", "none", "flops"), True/False for "l2"/"none",
    or None for the criterion's default (`normalization_of`).
    """
    if isinstance(trial, (str, os.PathLike)):
        from .trials import open_trial

        if graph is None:
            graph = _trace(model, example_inputs)
        trial = open_trial(trial, model=model, example_inputs=example_inputs, graph=graph)
    if graph is None:
        graph = trial.graph if trial is not None and trial.graph is not None else _trace(model, example_inputs)
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; choose from {sorted(CRITERIA)}")
        name, score_fn = criterion, CRITERIA[criterion]
    else:
        name, score_fn = getattr(criterion, "__name__", "custom"), criterion
    how = normalization_of(criterion, normalize)
    normalizer = NORMALIZATIONS[how]
    context = _Context(model, example_inputs, graph, trial)
    steps = trial.steps_used if trial is not None and name not in WEIGHT_CRITERIA else 0
    frames = []
    uses_graph = getattr(score_fn, "uses_graph", False)
    for group in sorted(graph.prunable(), key=lambda g: g.id):
        if not graph.filter_members(group.id):
            warnings.warn(f"layer {group.name}: no conv/linear produces its channels, so no filter score names "
                          "them; not ranked", stacklevel=2)
            continue
        if getattr(score_fn, "needs_trial", False) and not group.taps:
            warnings.warn(f"layer {group.name}: no module output carries its {group.size} channels one per position "
                          "(channel shuffles, pixel shuffles), so a trial cannot score them; not ranked (l1 and l2 "
                          "rank them)", stacklevel=2)
            continue
        scores = np.asarray(score_fn(group, model, trial, graph=graph) if uses_graph else score_fn(group, model, trial),
                            dtype=np.float64)
        if scores.shape != (group.size,):
            raise ValueError(f"criterion {name} gave {scores.shape} scores for layer {group.name} "
                             f"with {group.size} channels")
        frames.append((group, scores))
    if not frames:
        return pd.DataFrame({c: [] for c in COLUMNS})
    # one DataFrame from whole columns: building one per group and concatenating costs more than scoring
    sizes = [g.size for g, _ in frames]
    scores = np.concatenate([s for _, s in frames])
    return pd.DataFrame({
        "layer": np.repeat(np.array([g.name for g, _ in frames], dtype=object), sizes),
        "filter": np.concatenate([np.arange(n) for n in sizes]),
        "score": scores,
        "normalized": np.concatenate([normalizer(s, g, context) for g, s in frames]),
        "group": np.repeat(np.array([g.id for g, _ in frames], dtype=np.int64), sizes),
        "criterion": name,
        "steps": steps,
        "normalization": how,
    })[COLUMNS]


def _trace(model: nn.Module, example_inputs: Any):
    from ..model.graph import ChannelGraph

    with torch.no_grad():
        return ChannelGraph.trace(model, example_inputs)
