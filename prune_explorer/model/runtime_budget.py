"""A latency budget on the runtime a model ships to, met by measuring the cut models there.

`PrunePlan.lowest` removes channels in rank order and only decides where to stop, so every budget
(filters, MACs, latency) picks a point on the same ranked sequence of cuts. A per-layer table timed
in isolation predicts PyTorch eager well enough, but not ONNX Runtime: ORT fuses a convolution
with its norm and activation, runs a graph of blocked channels with its weights out of cache, and
on EfficientNet-Lite0 at 64x64 a plan a per-layer ORT table put at 0.80 of the latency measured
0.53 (BENCHMARKS.md, "ONNX Runtime latency budget"). So here the stopping point is found by
measurement: a cut is made at a MACs target, exported, timed in the runtime interleaved with the
uncut model (on the one-thread CPU clock: `runtimes.interleaved`), and the MACs target moves by a
secant step on log latency against log MACs until the measured ratio is within `tolerance` of the
target. The plan returned is the measured one at or below the target closest to it; `plan.budget`
records every measurement.

The ratio is that of the two models' medians over many short rounds (`latency_ratio`, `SECONDS` of
rounds, up to 500): on the shared 2-core machine at load 10–11, five repeated 200-round measurements
of one EfficientNet-Lite0 pair gave 0.687–0.708 this way, against 0.663–0.709 for the median of
per-round ratios and 0.655–0.720 for the ratio of lower quartiles; 20-round measurements scattered
over ±8 %.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from .plan import PrunePlan
from .runtimes import LatencyRuntime, Timing, get_runtime, interleaved, ratio_timing

TOLERANCE = 0.02  # a measured ratio within 2 % of the target ends the search (the check after the cut allows 5 %)
SECONDS = 8.0  # of interleaved rounds per measurement (at least `repeats` rounds)
MAX_MEASUREMENTS = 7


def latency_ratio(after: Timing, before: Timing) -> float:
    """after/before as the ratio of their medians over the same rounds (module docstring: the steadiest here)."""
    return after.median / before.median


def plan_to_latency(table: Any, graph: Any, model: nn.Module, example_inputs: Any, target_ratio: float, *,
                    runtime: LatencyRuntime | str = "onnxruntime", scheme: str = "all", round_to: int | None = None,
                    costs: Any = None, tolerance: float = TOLERANCE, max_measurements: int = MAX_MEASUREMENTS,
                    repeats: int = 20, warmup: int = 3, seconds: float = SECONDS) -> PrunePlan:
    """The lowest-ranked channels whose removal brings `model`'s latency in `runtime` to `target_ratio` of
    its own, measured (module docstring). ValueError when even the deepest cut the scheme allows stays above."""
    from .costs import CostModel
    from .export import onnx_bytes
    from .surgery import prune

    if not 0.0 < target_ratio < 1.0:
        raise ValueError(f"target_ratio is the fraction of the latency to keep, in (0, 1), got {target_ratio}")
    runtime = get_runtime(runtime)
    costs = costs or CostModel(model, example_inputs, graph)
    full = float(costs.before.macs)
    base = onnx_bytes(model, example_inputs) if runtime.name == "onnxruntime" else model  # exported once
    measured: list[dict[str, Any]] = []
    plans: dict[float, PrunePlan] = {}

    def measure(fraction: float) -> float | None:
        try:
            plan = PrunePlan.lowest(table, graph, scheme=scheme, round_to=round_to, costs=costs,
                                    target_macs=fraction * full)
        except ValueError:
            return None  # deeper than the scheme can cut
        pruned = prune(model, plan, example_inputs, graph=graph)
        before, after = interleaved(runtime, [base, pruned], example_inputs, warmup=warmup, repeats=repeats,
                                    seconds=seconds)
        ratio, rounds = latency_ratio(after, before), ratio_timing(after, before)
        plans[fraction] = plan
        measured.append({"macs_fraction": round(plan.budget["reached"] / full, 5), "ratio": ratio,
                         "per_round_median": rounds.median, "per_round_q1": rounds.q1, "per_round_q3": rounds.q3,
                         "ms_before": before.median, "ms_after": after.median, "rounds": len(after.samples),
                         "clock": after.clock})
        return ratio

    low, high = 0.0, 1.0  # MACs fractions known to land below / above the target
    fraction, slope = target_ratio, 1.0  # first guess: latency falls with the MACs
    points: list[tuple[float, float]] = []
    for _ in range(max_measurements):
        ratio = measure(fraction)
        if ratio is None:
            low = fraction
            if not points and fraction < 1e-3:
                break
            fraction = (fraction + min(high, 1.0)) / 2
            continue
        points.append((fraction, ratio))
        if abs(ratio - target_ratio) <= tolerance * target_ratio:
            break
        if ratio > target_ratio:
            high = min(high, fraction)
        else:
            low = max(low, fraction)
        if len(points) >= 2:
            (f0, r0), (f1, r1) = points[-2], points[-1]
            if f0 != f1 and r0 > 0 and r1 > 0 and r0 != r1:
                slope = max(0.2, min(5.0, (math.log(r1) - math.log(r0)) / (math.log(f1) - math.log(f0))))
        step = fraction * (target_ratio / ratio) ** (1.0 / slope)
        fraction = step if low < step < high else (low + high) / 2
    if not points:
        raise ValueError(f"latency target {target_ratio:.3f} of {runtime.name}'s: no cut the scheme {scheme!r} "
                         f"allows could be made (round_to={round_to})")
    under = [(f, r) for f, r in points if r <= target_ratio * (1 + tolerance)]
    if not under:
        deepest = min(points, key=lambda p: p[1])
        raise ValueError(f"latency target {target_ratio:.3f} of {runtime.name}'s: the deepest cut measured keeps "
                         f"{deepest[1]:.3f} of it (at {deepest[0]:.3f} of the MACs); set a higher target")
    fraction, ratio = max(under, key=lambda p: p[1])
    plan = plans[fraction]
    plan.budget = {"unit": "latency_ratio", "runtime": runtime.name, "target": target_ratio, "reached": ratio,
                   "macs_fraction": plan.budget["reached"] / full, "round_to": round_to, "measurements": measured}
    return plan
