"""What a model costs: parameters, multiply-accumulates and CPU latency.

MACs come from torch's own `FlopCounterMode` (flops / 2), so every op torch knows how to count is
counted the same way for the base and the pruned model; there is no hand-written counter here.

Measuring never changes the caller's model: every forward here runs on a private copy
(`clone.private_copy`, tensors cloned), so what a forward writes — a detection head's cached
anchors, a counter, a buffer — lands on the copy, and the model's own hooks do not run.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .clone import private_copy
from .inputs import call


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of a model for one set of example inputs."""

    params: int
    macs: int
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count(model: nn.Module, example_inputs: Any) -> ModelCost:
    """Parameters (shared ones once) and MACs of one forward pass on `example_inputs` (whole batch).

    Runs in eval mode under no_grad, on a private copy (`model` is left as it was).
    """
    return count_own(private_copy(model, share_tensors=False), example_inputs)


def count_own(model: nn.Module, example_inputs: Any) -> ModelCost:
    """`count` on a model the caller owns (its private copy): the forward runs on `model` itself."""
    params = sum(p.numel() for p in model.parameters())
    with _eval_no_grad(model), FlopCounterMode(display=False) as counter:
        call(model, example_inputs)
    return ModelCost(params=params, macs=int(counter.get_total_flops() // 2))


def median_latency_ms(model: nn.Module, example_inputs: Any, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of one forward pass (eval mode, no_grad).

    The median, not the mean, so one slow run on a shared machine does not move the number.
    Measured on whatever device the model and inputs are on (CPU in this project's reports).
    """
    return paired_latency_ms([model], example_inputs, warmup=warmup, repeats=repeats)[0]


def paired_latency_ms(
    models: Sequence[nn.Module], example_inputs: Any, warmup: int = 3, repeats: int = 10
) -> list[float]:
    """Median milliseconds per model, timing the models in turn within each repeat.

    Interleaving makes a before/after comparison fair on a busy machine: a burst of load from
    elsewhere slows both sides of the same round instead of only one model. Each model is timed
    as a private copy (made before the clock starts), so the models are left as they were. The
    samples and their spread: `runtimes.interleaved` (any runtime; this is its "pytorch" one).
    """
    from .runtimes import interleaved

    return [t.median for t in interleaved("pytorch", models, example_inputs, warmup=warmup, repeats=repeats)]


latency = median_latency_ms


def measure(
    model: nn.Module,
    example_inputs: Any,
    latency: bool = True,
    *,
    latency_inputs: Any = None,
    warmup: int = 3,
    repeats: int = 10,
) -> ModelCost:
    """`count` plus, when `latency` is true, the median latency (ms) on `latency_inputs`.

    `latency_inputs` defaults to `example_inputs` (e.g. count MACs per image, time a batch of 8).
    """
    cost = count(model, example_inputs)
    if not latency:
        return cost
    timed_inputs = example_inputs if latency_inputs is None else latency_inputs
    ms = median_latency_ms(model, timed_inputs, warmup=warmup, repeats=repeats)
    return ModelCost(params=cost.params, macs=cost.macs, latency_ms=ms)


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
