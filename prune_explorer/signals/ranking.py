"""Filter ranking: criteria are small callables giving one score per channel of a group.

Higher score = more important. Trial criteria sum their per-tap score over the group's taps;
weight criteria sum per-filter norms over the group's producer convs/linears.
"""
from __future__ import annotations

import os
import warnings

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

COLUMNS = ["layer", "filter", "score", "normalized", "group", "criterion", "steps"]
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

Criterion = Callable[[Any, nn.Module, Any], np.ndarray]


def _trial_criterion(stat: Callable[[Any], np.ndarray | None], needs_gradients: bool = False) -> Criterion:
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
        return np.sum([stat(p) for p in parts], axis=0)

    return score


def _weight_criterion(norm: Callable[[np.ndarray], np.ndarray], key: str) -> Criterion:
    def score(group, model, trial) -> np.ndarray:
        modules = dict(model.named_modules())
        # a job keeps its best epoch's weights while the trial saw the last step's: the trial's
        # norms stand in only for a model it rebuilt from an architecture name (fresh weights)
        trained = trial if trial is not None and trial.untrained_model and trial.model is model else None
        total = np.zeros(group.size)
        used = 0
        for name in group.producers:
            if not isinstance(modules.get(name), _WEIGHTED):
                continue
            total += _filter_norm(name, modules[name], trained, norm, key)
            used += 1
        if not used:
            raise ValueError(f"layer {group.name}: no conv/linear producer to take a weight norm of")
        return total

    return score


def _filter_norm(name: str, module: nn.Module, trained, norm, key: str) -> np.ndarray:
    """Per-filter norms of the model's weights, or of the trial's (`trained`) when given and saved."""
    if trained is not None and name in trained.weight_norms and key in trained.weight_norms[name]:
        return trained.weight_norms[name][key]
    if trained is not None and f"{name}.weight" in trained.weights:
        weight = np.asarray(trained.weights[f"{name}.weight"], dtype=np.float64)
        return norm(weight.reshape(weight.shape[0], -1))
    # the model's own weights: torch accumulates in float64 without a float64 copy (2x faster)
    flat = module.weight.detach().flatten(1)
    return torch.linalg.vector_norm(flat, ord=_ORDER[key], dim=1, dtype=torch.float64).cpu().numpy()


_ORDER = {"l1": 1, "l2": 2}


def _per_example(total, count):
    return total / max(count, 1)


taylor = _trial_criterion(lambda s: _per_example(s.taylor, s.grad_examples), needs_gradients=True)
taylor_aws = _trial_criterion(lambda s: np.abs(_per_example(s.taylor_aws, s.grad_batches)), needs_gradients=True)
mean_activation = _trial_criterion(lambda s: _per_example(s.activation, s.examples))
apoz = _trial_criterion(lambda s: 1.0 - _per_example(s.zeros, s.examples))
l1 = _weight_criterion(lambda w: np.abs(w).sum(1), "l1")
l2 = _weight_criterion(lambda w: np.sqrt((w ** 2).sum(1)), "l2")

CRITERIA: dict[str, Criterion] = {
    "taylor": taylor,
    "taylor_aws": taylor_aws,
    "mean_activation": mean_activation,
    "apoz": apoz,
    "l1": l1,
    "l2": l2,
}


def rank(model: nn.Module, example_inputs: Any, trial=None, criterion: str | Criterion = "taylor",
         normalize: bool = True, graph=None) -> pd.DataFrame:
    """RankTable: one row per (prunable group, channel), ordered by group then filter.

    `trial` is an opened Trial, or a path / s3:// URI that is opened here against `model`.
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
    steps = trial.steps_used if trial is not None and name not in ("l1", "l2") else 0
    frames = []
    modules = dict(model.named_modules())
    for group in sorted(graph.prunable(), key=lambda g: g.id):
        if not _addressable(group, modules):
            warnings.warn(f"layer {group.name}: its {group.size} channels are tied across several filters of each "
                          "producer (channel shuffles), so no filter score names them; not ranked", stacklevel=2)
            continue
        scores = np.asarray(score_fn(group, model, trial), dtype=np.float64)
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
        "normalized": np.concatenate([_l2_normalize(s) if normalize else s for _, s in frames]),
        "group": np.repeat(np.array([g.id for g, _ in frames], dtype=np.int64), sizes),
        "criterion": name,
        "steps": steps,
    })[COLUMNS]


def _addressable(group, modules: dict[str, nn.Module]) -> bool:
    """Some producer conv/linear has exactly one filter per channel of the group."""
    return any(isinstance(modules.get(p), _WEIGHTED) and modules[p].weight.shape[0] == group.size
               for p in group.producers)


def _l2_normalize(scores: np.ndarray) -> np.ndarray:
    norm = float(np.sqrt((scores ** 2).sum()))
    return scores / norm if norm > 0 else np.zeros_like(scores)


def _trace(model: nn.Module, example_inputs: Any):
    from ..model.graph import ChannelGraph

    with torch.no_grad():
        return ChannelGraph.trace(model, example_inputs)
