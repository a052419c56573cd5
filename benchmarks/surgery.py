"""Surgery speed against Torch-Pruning, and whether cut MACs turn into CPU latency.

Per model, in this process, runs interleaved (ours, then Torch-Pruning, a fresh copy of the model
each run), medians of RUNS:
- ours end to end: `ChannelGraph.trace` + `rank(criterion="l2")` + `PrunePlan.lowest(n=200)` + `prune`
  (a new model; the input is untouched);
- ours on a known graph: `prune` alone with the graph and plan already built;
- Torch-Pruning as its README uses it: `MagnitudePruner(model, x, importance, global_pruning=True,
  pruning_ratio=R, ignored_layers=[classifier])` construction + `step()` (in place), R found by
  bisection (untimed) so that it removes about as many conv channels as ours.
Lines: `surgery MODEL: ours end to end A ms, prune on a known graph B ms, torch-pruning C ms
(removed N); ratios A/C, B/C`, then the same as CPU time of this process (on a shared machine
wall time mostly measures the neighbours).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.measure import count, median_latency_ms
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.ranking import rank

RUNS = 7
N_REMOVE = 200
MODELS = ("resnet18", "resnext50_32x4d", "convnext_tiny")


def ours(model, x) -> dict[str, float]:
    marks = [time.perf_counter()]
    graph = ChannelGraph.trace(model, x)
    marks.append(time.perf_counter())
    table = rank(model, x, criterion="l2", graph=graph)
    marks.append(time.perf_counter())
    plan = PrunePlan.lowest(table, graph, n=N_REMOVE)
    marks.append(time.perf_counter())
    prune(model, plan, x, graph=graph)
    marks.append(time.perf_counter())
    parts = [(b - a) * 1000 for a, b in zip(marks, marks[1:])]
    return {"total": sum(parts), "trace": parts[0], "rank": parts[1], "plan": parts[2], "prune": parts[3],
            "removed": len(plan)}


def known(model, x, plan, graph) -> float:
    start = time.perf_counter()
    prune(model, plan, x, graph=graph)
    return (time.perf_counter() - start) * 1000


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def torch_pruning(model, x, ratio: float) -> tuple[float, int]:
    import torch_pruning as tp

    before = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       global_pruning=True, pruning_ratio=ratio, ignored_layers=[classifier(model)])
    pruner.step()
    elapsed = (time.perf_counter() - start) * 1000
    after = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return elapsed, before - after


def ratio_for(base, x, target: int) -> float:
    """Torch-Pruning's global ratio that removes about `target` channels (bisection, not timed)."""
    low, high = 0.0, 0.5
    for _ in range(7):
        mid = (low + high) / 2
        _, removed = torch_pruning(copy.deepcopy(base), x, mid)
        low, high = (mid, high) if removed < target else (low, mid)
    return (low + high) / 2


def bench(name: str) -> None:
    torch.manual_seed(0)
    base = torchvision.models.get_model(name, weights=None, num_classes=101).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = ChannelGraph.trace(base, x)
    plan = PrunePlan.lowest(rank(base, x, criterion="l2", graph=graph), graph, n=N_REMOVE)
    ratio = ratio_for(base, x, len(plan))
    mine, on_graph, theirs, removed = [], [], [], 0
    cpu: dict[str, list[float]] = {"ours": [], "known": [], "tp": []}
    for _ in range(RUNS):
        model, start = copy.deepcopy(base), time.process_time()
        mine.append(ours(model, x))
        cpu["ours"].append(time.process_time() - start)
        start = time.process_time()
        on_graph.append(known(base, x, plan, graph))
        cpu["known"].append(time.process_time() - start)
        model, start = copy.deepcopy(base), time.process_time()
        ms, removed = torch_pruning(model, x, ratio)
        cpu["tp"].append(time.process_time() - start)
        theirs.append(ms)
    med = {k: statistics.median(r[k] for r in mine) for k in ("total", "trace", "rank", "plan", "prune")}
    k_ms, tp_ms = statistics.median(on_graph), statistics.median(theirs)
    print(f"surgery {name}: ours end to end {med['total']:.1f} ms (trace {med['trace']:.1f}, rank {med['rank']:.1f}, "
          f"plan {med['plan']:.1f}, prune {med['prune']:.1f}; removed {len(plan)}), prune on a known graph "
          f"{k_ms:.1f} ms, torch-pruning {tp_ms:.1f} ms (removed {removed}); ratios {med['total'] / tp_ms:.3f}, "
          f"{k_ms / tp_ms:.3f}", flush=True)
    o, k, t = (1000 * statistics.median(cpu[key]) for key in ("ours", "known", "tp"))
    print(f"  cpu time (less moved by other processes): ours {o:.1f} ms, known graph {k:.1f} ms, "
          f"torch-pruning {t:.1f} ms; ratios {o / t:.3f}, {k / t:.3f}", flush=True)


def latency_line() -> None:
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=101).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = ChannelGraph.trace(base, x)
    table = rank(base, x, criterion="l1", graph=graph)
    counts = {g.name: int(round(0.3 * g.size)) for g in graph.prunable()}
    half = prune(base, PrunePlan.from_counts(table, graph, counts), x, graph=graph)
    batch = torch.randn(32, 3, 224, 224)
    mac_ratio = count(base, x).macs / count(half, x).macs
    speedup = median_latency_ms(base, batch, repeats=5) / median_latency_ms(half, batch, repeats=5)
    print(f"30% of every prunable group: MACs {mac_ratio:.2f}x fewer, batch-32 CPU latency {speedup:.2f}x faster, "
          f"speed-up / MAC ratio {speedup / mac_ratio:.2f} (goal >= 0.7)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)   # one thread: on a shared machine CPU time then means something
    for name in args.models:
        bench(name)
    if not args.no_latency:
        latency_line()


if __name__ == "__main__":
    main()
