"""Surgery speed against Torch-Pruning, and whether cut MACs turn into CPU latency.

Both sides prune the same 200 lowest-L1 channels of torchvision resnet18(num_classes=101) in this
process; median of several runs each, a fresh model every run. Last line:
`surgery: ours X ms, torch-pruning Y ms, ratio R`.
"""
from __future__ import annotations

import copy
import statistics
import time

import pandas as pd
import torch
import torchvision

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune

RUNS = 7
N_REMOVE = 200


def l1_table(model: torch.nn.Module, graph: ChannelGraph) -> pd.DataFrame:
    """L1 norm of each filter, summed over the group's producer convs/linears."""
    modules = dict(model.named_modules())
    rows = []
    for g in graph.prunable():
        score = torch.zeros(g.size)
        for name in g.producers:
            if graph.slices[name].kind in ("conv", "linear"):
                score += modules[name].weight.detach().abs().flatten(1).sum(1)
        rows += [dict(layer=g.name, filter=f, score=float(s), normalized=float(s), group=g.id,
                      criterion="l1", steps=0) for f, s in enumerate(score)]
    return pd.DataFrame(rows)


def ours(model, x, plan) -> float:
    start = time.perf_counter()
    graph = ChannelGraph.trace(model, x)
    prune(model, plan, x, graph=graph)
    return (time.perf_counter() - start) * 1000


def torch_pruning(model, x, removed: dict[str, list[int]]) -> float:
    import torch_pruning as tp

    start = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    modules = dict(model.named_modules())
    for name, idxs in removed.items():
        dg.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=idxs).prune()
    return (time.perf_counter() - start) * 1000


def latency_ms(model, x, repeats=5) -> float:
    try:
        from prune_explorer.model.measure import latency
        return latency(model, x, repeats=repeats)
    except ImportError:
        model.eval()
        with torch.no_grad():
            model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def macs(model, x) -> int:
    try:
        from prune_explorer.model.measure import count
        return count(model, x).macs
    except ImportError:
        from torch.utils.flop_counter import FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.eval()(x)
        return fc.get_total_flops() // 2


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=101).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = ChannelGraph.trace(base, x)
    table = l1_table(base, graph)
    plan = PrunePlan.lowest(table, graph, n=N_REMOVE, min_keep=1)
    resolved = plan.resolve(graph)
    assert sum(len(ix) for ix in resolved.values()) == N_REMOVE
    by_conv = {graph.groups[g].name: ix for g, ix in resolved.items()}

    ours_ms, tp_ms = [], []
    for _ in range(RUNS):
        ours_ms.append(ours(copy.deepcopy(base), x, plan))
        tp_ms.append(torch_pruning(copy.deepcopy(base), x, by_conv))
    check_tp = copy.deepcopy(base)
    torch_pruning(check_tp, x, by_conv)
    mine = prune(base, plan, x, graph=graph)
    same = all(a.shape == b.shape for a, b in zip(mine.state_dict().values(), check_tp.state_dict().values()))
    print(f"same pruned shapes as torch-pruning: {same}")

    counts = {g.name: int(round(0.3 * g.size)) for g in graph.prunable()}
    half = prune(base, PrunePlan.from_counts(table, graph, counts), x, graph=graph)
    batch = torch.randn(32, 3, 224, 224)
    mac_ratio = macs(base, x) / macs(half, x)
    speedup = latency_ms(base, batch) / latency_ms(half, batch)
    print(f"30% of every prunable group: MACs {mac_ratio:.2f}x fewer, batch-32 CPU latency {speedup:.2f}x faster, "
          f"speed-up / MAC ratio {speedup / mac_ratio:.2f} (goal >= 0.7)")
    ours_med, tp_med = statistics.median(ours_ms), statistics.median(tp_ms)
    print(f"surgery: ours {ours_med:.1f} ms, torch-pruning {tp_med:.1f} ms, ratio {ours_med / tp_med:.3f}")


if __name__ == "__main__":
    main()
