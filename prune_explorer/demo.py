"""`prune-explorer demo`: one pruning step on ResNet18, measured before and after, saved and reloaded.

Offline and weight-free: ResNet18 (10 classes, random init) at 3x224x224, the 200 filters with the
lowest L1 norm (L2-normalised per layer) removed over every prunable channel group.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .model.measure import ModelCost, count, paired_latency_ms
from .model.zoo import build_model

ARCH = "resnet18"
NUM_CLASSES = 10
IMAGE_SIZE = 224
LATENCY_BATCH = 8
FILTERS_TO_REMOVE = 200
LATENCY_THREADS = 1  # one thread: steady numbers on a shared machine, and the demo stays under 30 s


def main() -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)


def _run() -> int:
    from .model.graph import ChannelGraph
    from .model.plan import PrunePlan
    from .signals.ranking import rank
    from .model.store import load, save
    from .model.surgery import prune

    torch.manual_seed(0)
    one = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    batch = torch.randn(LATENCY_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = build_model(ARCH, num_classes=NUM_CLASSES).eval()

    with _step(f"trace {ARCH} and rank filters by L1 norm"):
        graph = ChannelGraph.trace(model, one)
        table = rank(model, one, criterion="l1", graph=graph)
        plan = PrunePlan.lowest(table, graph, n=FILTERS_TO_REMOVE, scheme="all")
    removed = sum(plan.summary().values())
    with _step(f"prune {removed} filters from {len(plan.summary())} of {len(graph.prunable())} prunable groups"):
        pruned = prune(model, plan, one, graph=graph)
    with _step(f"measure params, MACs (1x3x{IMAGE_SIZE}x{IMAGE_SIZE}) and median CPU latency (batch {LATENCY_BATCH})"):
        before, after = _costs([model, pruned], one, batch)
    print(_table(before, after))

    with tempfile.TemporaryDirectory(prefix="prune-explorer-demo-") as tmp:
        target = Path(tmp) / "pruned"
        with _step("save to model.json + model.safetensors and load back"):
            save(pruned, target, metadata={"plan": plan.summary(), "criterion": "l1"})
            reloaded = load(target)
        same = _same_outputs(pruned, reloaded, one)
        size_mb = (target / "model.safetensors").stat().st_size / 1e6
    print(f"reloaded model ({size_mb:.1f} MB of weights) gives {'identical' if same else 'DIFFERENT'} outputs")
    return 0 if same else 1


def _costs(models: list[nn.Module], one: torch.Tensor, batch: torch.Tensor) -> list[ModelCost]:
    """Counts per model; latencies timed in alternation so both sides see the same machine load."""
    times = paired_latency_ms(models, batch, warmup=2, repeats=5)
    return [ModelCost(c.params, c.macs, ms) for c, ms in zip((count(m, one) for m in models), times)]


def _table(before: ModelCost, after: ModelCost) -> str:
    rows = [
        ("params (M)", before.params / 1e6, after.params / 1e6),
        ("MACs (G)", before.macs / 1e9, after.macs / 1e9),
        (f"CPU ms (median, batch {LATENCY_BATCH}, {LATENCY_THREADS} thread)", before.latency_ms, after.latency_ms),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'before':>9}  {'after':>9}  {'ratio':>6}"]
    for label, b, a in rows:
        lines.append(f"{label:<{width}}  {b:>9.3f}  {a:>9.3f}  {a / b:>6.3f}")
    return "\n".join(lines)


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


class _step:
    """Print what is being done and how long it took."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        print(f"- {self.what} ...", end="", flush=True)
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        print(f" {time.perf_counter() - self.start:.1f} s", flush=True)
