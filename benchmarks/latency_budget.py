"""Does a latency budget on ONNX Runtime land on its target? (issue 21: within 5 %, measured after the cut)

Two models, two targets each, fixed before measuring: the pretrained demo's EfficientNet-Lite0 (ImageNet
weights, a 10-class head, 3x64x64: `prune-explorer demo --pretrained`'s model) and
resnet18(num_classes=101) at 3x224x224 (benchmarks/export.py's), each cut to 0.7 and 0.5 of its ORT
latency at batch 1 by `plan_to_latency` (L1 ranks, block-internal groups for EfficientNet, every
group for resnet18; widths rounded to ORT's channel block, the default for onnxruntime). Then, after
the cut, a fresh measurement: the pruned model and its base in ORT, interleaved round by round on
the one-thread CPU clock (`model/runtimes.py`), 20 s of rounds (at least 40); the ratio of their
medians (what the search measures, `runtime_budget.latency_ratio`) against the target, and the
per-round ratio's median and quartiles beside it. Last line:
`latency budget: onnxruntime target T -> measured M (E %) ...; every plan within 5 %: yes|no`.

    python benchmarks/latency_budget.py [--models efficientnet,resnet18] [--targets 0.7,0.5]
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

from prune_explorer.loop import LoopConfig
from prune_explorer.model.costs import CostModel
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.runtime_budget import latency_ratio, plan_to_latency
from prune_explorer.model.runtimes import OnnxRuntimeCPU, interleaved, ratio_timing
from prune_explorer.model.surgery import prune
from prune_explorer.signals.ranking import rank

WITHIN = 0.05
CHECK_ROUNDS = 40
CHECK_SECONDS = 20.0


def efficientnet():
    from prune_explorer.demo import EFFICIENTNET_LITE0, pretrained_weights
    from prune_explorer.model.zoo import build_model, replace_head

    model = build_model(EFFICIENTNET_LITE0.arch, weights=pretrained_weights(), **EFFICIENTNET_LITE0.kwargs)
    replace_head(model, 10)
    return model.eval(), torch.randn(1, 3, 64, 64), "internal"


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=101).eval(), torch.randn(1, 3, 224, 224), "all"


MODELS = {"efficientnet": efficientnet, "resnet18": resnet18}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet,resnet18")
    parser.add_argument("--targets", default="0.7,0.5")
    args = parser.parse_args()
    torch.set_num_threads(1)
    block = LoopConfig(latency_runtime="onnxruntime").channel_multiple
    ort = OnnxRuntimeCPU(threads=1)
    results = []
    for name in args.models.split(","):
        model, x, scheme = MODELS[name]()
        graph = ChannelGraph.trace(model, x)
        table = rank(model, x, criterion="l1", graph=graph)
        macs = CostModel(model, x, graph).before.macs
        for target in (float(t) for t in args.targets.split(",")):
            start = time.perf_counter()
            plan = plan_to_latency(table, graph, model, x, target, runtime=ort, scheme=scheme, round_to=block)
            seconds = time.perf_counter() - start
            searched = plan.budget["measurements"]
            pruned = prune(model, plan, x, graph=graph)
            before, after = interleaved(ort, [model, pruned], x, repeats=CHECK_ROUNDS, seconds=CHECK_SECONDS)
            ratio, rounds = latency_ratio(after, before), ratio_timing(after, before)
            error = ratio / target - 1
            results.append((name, target, ratio, error))
            print(f"{name} target {target:.2f}: {len(searched)} cuts measured in {seconds:.0f} s "
                  f"(MACs fraction -> ratio: " + ", ".join(f"{m['macs_fraction']:.3f} -> {m['ratio']:.3f}"
                                                         for m in searched) + ")")
            print(f"  plan: {plan.budget['macs_fraction']:.3f} of the MACs ({CostModel(pruned, x, ChannelGraph.trace(pruned, x)).before.macs / macs:.3f} "
                  f"after surgery), widths multiples of {block}; measured in the search {plan.budget['reached']:.3f}")
            print(f"  after the cut, {len(after.samples)} rounds: base {before}, pruned {after} ({after.clock} clock, "
                  f"median [quartiles]); ratio of medians {ratio:.3f}, {100 * error:+.1f} % from the target "
                  f"(per-round ratio {rounds.median:.3f} [{rounds.q1:.3f}-{rounds.q3:.3f}])")
    ok = all(abs(e) <= WITHIN for *_, e in results)
    print("latency budget: onnxruntime " + ", ".join(f"{n} target {t:.2f} -> measured {m:.3f} ({100 * e:+.1f} %)"
                                                     for n, t, m, e in results)
          + f"; every plan within {100 * WITHIN:.0f} %: {'yes' if ok else 'no'}")


if __name__ == "__main__":
    main()
