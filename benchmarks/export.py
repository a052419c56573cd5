"""Does a pruned model's MAC cut turn into ONNX Runtime CPU speed? (issue 14, goal: speed-up >= MAC ratio)

resnet18(num_classes=101) at 3x224x224, 30% of every prunable group removed by L1 (as
benchmarks/surgery.py cuts it), and the same cut with widths kept at multiples of 8 (fixed before
measuring: vectorised conv kernels favour such widths). Each model is exported to ONNX in memory
with the library's exporter and timed with `onnxruntime_latency_ms` (before and after interleaved in
one run, medians) at batch 1 (one image on an edge device) and batch 32; PyTorch eager latency of
the same pair in the same process for comparison; ONNX Runtime's profiler splits batch-1 time into
conv kernels and the rest, and the optimized graph tells how many convs ORT runs in its blocked
NCHWc layout (channel counts that are multiples of its block). Last line:
`export: onnxruntime batch-1 speed-up S x, MAC ratio M x, speed-up / MAC ratio R (goal >= 1); widths
multiples of 8: S8 x / M8 x = R8`.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
import torchvision

from prune_explorer.model.export import export_model, onnxruntime_latency_ms
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.measure import count, paired_latency_ms
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from surgery import l1_table

FRACTION = 0.3
SHAPE = (3, 224, 224)


CONV_OPS = {"Conv", "FusedConv"}  # ORT fuses Conv+BN+ReLU(+Add) into these on CPU


def op_ms(paths: list[Path], x: torch.Tensor, threads: int, runs: int) -> list[dict[str, float]]:
    """ONNX Runtime's own kernel time per op type (ms per run) for each model, runs interleaved."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
        sessions.append(ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"]))
    for _ in range(runs):
        for session in sessions:
            session.run(None, {"input": x.numpy()})
    out = []
    for session in sessions:
        totals: dict[str, float] = collections.defaultdict(float)
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
        out.append(totals)
    return out


def where_time_goes(base, pruned, x, threads: int, runs: int) -> str:
    """Conv kernel time against the rest, before and after (ORT's profiler, the models' runs interleaved)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "base.onnx", Path(tmp) / "pruned.onnx"]
        for model, path in zip((base, pruned), paths):
            export_model(model, path, example_inputs=x, dynamic_batch=False)
        times = op_ms(paths, x, threads, runs)
        blocked = [nchwc_convs(path) for path in paths]
    conv = [sum(v for k, v in t.items() if k in CONV_OPS) for t in times]
    rest = [sum(v for k, v in t.items() if k not in CONV_OPS) for t in times]
    top = sorted(times[1].items(), key=lambda kv: -kv[1])[:4]
    return (f"conv kernels {conv[0]:.1f} -> {conv[1]:.1f} ms ({conv[0] / conv[1]:.2f}x), other ops "
            f"{rest[0]:.1f} -> {rest[1]:.1f} ms, conv share after {conv[1] / (conv[1] + rest[1]):.0%}; "
            "top ops after: " + ", ".join(f"{k} {v:.1f}" for k, v in top)
            + f"; convs in ORT's blocked NCHWc layout: {blocked[0][0]}/{blocked[0][1]} before, "
              f"{blocked[1][0]}/{blocked[1][1]} after")


def nchwc_convs(path: Path) -> tuple[int, int]:
    """(convs ORT runs in its blocked NCHWc layout, all convs) in the graph ORT optimizes `path` to."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    convs = [n for n in nodes if n.op_type in CONV_OPS]
    return sum(n.domain == "com.microsoft.nchwc" for n in convs), len(convs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and ONNX Runtime intra-op threads (1: steadier on a shared machine)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=101).eval()
    x = torch.zeros(1, *SHAPE)
    graph = ChannelGraph.trace(base, x)
    table = l1_table(base, graph)
    counts = {g.name: int(round(FRACTION * g.size)) for g in graph.prunable()}
    cuts = {
        "30% of every prunable group": prune(base, PrunePlan.from_counts(table, graph, counts), x, graph=graph),
        "30%, widths multiples of 8": prune(base, PrunePlan.from_counts(table, graph, counts, round_to=8), x,
                                            graph=graph),
    }
    base_macs = count(base, x).macs
    ratios: list[tuple[float, float]] = []  # batch-1 (speed-up, MAC ratio) per cut
    for label, pruned in cuts.items():
        mac_ratio = base_macs / count(pruned, x).macs
        print(f"{label}: params {count(base, x).params / 1e6:.2f}M -> {count(pruned, x).params / 1e6:.2f}M, "
              f"MACs {mac_ratio:.2f}x fewer")
        for batch, repeats in ((1, args.repeats), (32, max(3, args.repeats // 4))):
            xb = torch.randn(batch, *SHAPE)
            ort_before, ort_after = onnxruntime_latency_ms([base, pruned], xb, repeats=repeats, threads=args.threads)
            pt_before, pt_after = paired_latency_ms([base, pruned], xb, repeats=repeats)
            speedup = ort_before / ort_after
            print(f"  batch {batch:2d}: onnxruntime {ort_before:.1f} -> {ort_after:.1f} ms ({speedup:.2f}x, "
                  f"/ MAC ratio {speedup / mac_ratio:.2f}); pytorch {pt_before:.1f} -> {pt_after:.1f} ms "
                  f"({pt_before / pt_after:.2f}x); onnxruntime / pytorch after {ort_after / pt_after:.2f}")
            if batch == 1:
                ratios.append((speedup, mac_ratio))
        print("  batch  1 profile: " + where_time_goes(base, pruned, torch.randn(1, *SHAPE), args.threads, args.repeats))
    (speedup, mac_ratio), (speedup8, mac_ratio8) = ratios
    print(f"export: onnxruntime batch-1 speed-up {speedup:.2f} x, MAC ratio {mac_ratio:.2f} x, "
          f"speed-up / MAC ratio {speedup / mac_ratio:.2f} (goal >= 1); widths multiples of 8: "
          f"{speedup8:.2f} x / {mac_ratio8:.2f} x = {speedup8 / mac_ratio8:.2f}")


if __name__ == "__main__":
    main()
