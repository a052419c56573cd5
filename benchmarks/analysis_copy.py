"""What running costs on a private copy costs: `CostModel` with its forwards on `clone.private_copy`
(as the package does, so the user's model is never run) against the same on the model itself.

One process, interleaved, median of 8, one thread; prints both, the ratio, and the copy alone.
"""
from __future__ import annotations

import statistics
import time

import torch
import torchvision

from prune_explorer.model import costs
from prune_explorer.model.graph import ChannelGraph


def main() -> None:
    torch.set_num_threads(1)
    model, x = torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)
    graph = ChannelGraph.trace(model, x)
    copying = costs.private_copy
    itself = lambda module, share_tensors: module          # noqa: E731 - the "before": the model itself runs
    costs.CostModel(model, x, graph)
    timed: dict[str, list[float]] = {"copy": [], "itself": []}
    try:
        for _ in range(8):
            for name, copy in (("copy", copying), ("itself", itself)):
                costs.private_copy = copy
                start = time.perf_counter()
                costs.CostModel(model, x, graph)
                timed[name].append(time.perf_counter() - start)
    finally:
        costs.private_copy = copying
    start = time.perf_counter()
    copying(model, share_tensors=False)
    alone = time.perf_counter() - start
    a, b = (statistics.median(timed[k]) * 1000 for k in ("copy", "itself"))
    print(f"CostModel(resnet50, 224, 1 thread): on a private copy {a:.0f} ms, on the model itself {b:.0f} ms, "
          f"ratio {a / b:.2f}; the copy alone {alone * 1000:.0f} ms")


if __name__ == "__main__":
    main()
