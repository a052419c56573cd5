"""Does a pruned model's MAC cut turn into ONNX Runtime CPU speed? (issues 14 and 21, goal: speed-up >= MAC ratio)

resnet18(num_classes=101) at 3x224x224, 30% of every prunable group removed by L1 (as
benchmarks/surgery.py cuts it) without rounding, and the same cut with the rounding a run targeting
ORT uses by default (`LoopConfig(latency_runtime="onnxruntime").channel_multiple`: ORT's NCHWc
channel block, probed from ORT — 16 with AVX-512, 8 with AVX2). Each model is exported to ONNX in
memory with the library's exporter and timed in ORT (`model/runtimes.py`: before and after
interleaved round by round, on the one-thread CPU clock; median and quartiles of the per-round
ratio) at batch 1 (one image on an edge device) and batch 32; PyTorch eager of the same pair in the
same process for comparison; ONNX Runtime's profiler splits batch-1 time into conv kernels and the
rest, and the optimized graph tells how many convs ORT runs in its blocked NCHWc layout. Last line,
about the default rounding:
`export: onnxruntime batch-1 speed-up X x, MAC ratio Y x, speed-up / MAC ratio Z; batch 32: ...`.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
import torchvision

from prune_explorer.loop import LoopConfig
from prune_explorer.model.export import export_model
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.measure import count
from prune_explorer.model.runtimes import OnnxRuntimeCPU, interleaved, ratio_timing
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.ranking import rank

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
    table = rank(base, x, criterion="l1", graph=graph)  # L1 per filter, normalised per layer
    counts = {g.name: int(round(FRACTION * g.size)) for g in graph.prunable()}
    block = LoopConfig(latency_runtime="onnxruntime").channel_multiple  # what a run targeting ORT rounds to
    default = f"30%, widths multiples of {block} (the default for onnxruntime)"
    cuts = {
        "30% of every prunable group, no rounding": prune(base, PrunePlan.from_counts(table, graph, counts), x,
                                                          graph=graph),
        default: prune(base, PrunePlan.from_counts(table, graph, counts, round_to=block), x, graph=graph),
    }
    base_macs = count(base, x).macs
    ratios: dict[tuple[str, int], tuple[float, float]] = {}  # (cut, batch) -> (speed-up, MAC ratio)
    ort = OnnxRuntimeCPU(threads=args.threads)
    for label, pruned in cuts.items():
        mac_ratio = base_macs / count(pruned, x).macs
        print(f"{label}: params {count(base, x).params / 1e6:.2f}M -> {count(pruned, x).params / 1e6:.2f}M, "
              f"MACs {mac_ratio:.2f}x fewer")
        for batch, repeats in ((1, args.repeats), (32, max(3, args.repeats // 4))):
            xb = torch.randn(batch, *SHAPE)
            before, after = interleaved(ort, [base, pruned], xb, repeats=repeats)
            pt_before, pt_after = interleaved("pytorch", [base, pruned], xb, repeats=repeats)
            ratio = ratio_timing(before, after)  # before/after per round: the speed-up and its spread
            speedup = ratio.median
            print(f"  batch {batch:2d}: onnxruntime {before} -> {after} ({before.clock} clock), speed-up {speedup:.2f}x "
                  f"[{ratio.q1:.2f}-{ratio.q3:.2f}], / MAC ratio {speedup / mac_ratio:.2f}; pytorch "
                  f"{pt_before.median:.1f} -> {pt_after.median:.1f} ms ({pt_before.median / pt_after.median:.2f}x); "
                  f"onnxruntime / pytorch after {after.median / pt_after.median:.2f}")
            ratios[(label, batch)] = (speedup, mac_ratio)
        print("  batch  1 profile: " + where_time_goes(base, pruned, torch.randn(1, *SHAPE), args.threads, args.repeats))
    (s1, m1), (s32, m32) = ratios[(default, 1)], ratios[(default, 32)]
    print(f"export: onnxruntime batch-1 speed-up {s1:.2f} x, MAC ratio {m1:.2f} x, speed-up / MAC ratio {s1 / m1:.2f}; "
          f"batch 32: {s32:.2f} x / {m32:.2f} x = {s32 / m32:.2f} (default rounding: multiples of {block}; goal >= 1)")


if __name__ == "__main__":
    main()
