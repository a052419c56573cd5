"""The trace routes side by side: which order `ChannelGraph.trace` tries them in, measured.

Per model, in this process, each route alone (`ChannelGraph.trace(model, x, route=...)`): the
time (median of RUNS, each including the route's check of the path with another input), the
prunable groups and the share of prunable conv filters, or the first line of the route's refusal.
Models: the ones fx cannot trace — ultralytics YOLOv8n / YOLO11n from yaml (if ultralytics is
installed; AGPL, a benchmark/test extra), resnet18 behind a Python branch on the input's size,
torchvision's detectors — and resnet18 as fx takes it, for scale. YOLO also with its neck's feature
maps selected away (`outputs="!1.feats"`: its default eval output less the loss's inputs), and a
detector also with its backbone's norms frozen as torchvision builds it for pretrained weights.
`--models` picks rows by a substring of their label.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
import torchvision
from torch import nn

from prune_explorer.model.exactness import conv_filters, detection_example
from prune_explorer.model.graph import ROUTES, ChannelGraph

RUNS = 2
DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
             "fcos_resnet50_fpn", "keypointrcnn_resnet50_fpn")


class SizeBranch(nn.Module):
    """resnet18 with a Python branch on the input's size (fx cannot trace it)."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None)

    def forward(self, x):
        if x.shape[-1] % 2:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        return self.net(x)


def examples():
    """(label, model, example inputs, outputs kept: None for all)."""
    torch.manual_seed(0)
    yield "resnet18", torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 224, 224), None
    yield "resnet18 + size branch", SizeBranch().eval(), torch.randn(1, 3, 224, 224), None
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO
    except ImportError:
        print("(ultralytics not installed: no YOLO rows)")
    else:
        for name in ("yolov8n", "yolo11n"):
            yield f"{name} (yaml, 320)", YOLO(f"{name}.yaml").model.eval(), torch.randn(1, 3, 320, 320), None
            yield f"{name} (yaml, 320) !1.feats", YOLO(f"{name}.yaml").model.eval(), torch.randn(1, 3, 320, 320), \
                "!1.feats"
    for name in DETECTORS:
        model, x = detection_example(name)
        yield f"{name} (128)", model, x, None
    model, x = detection_example(DETECTORS[0], frozen_backbone=True)
    yield f"{DETECTORS[0]} (128) frozen norms", model, x, None


def measure(model, x, route: str, outputs=None) -> str:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = ChannelGraph.trace(model, x, route=route, outputs=outputs)
        except ValueError as err:
            return f"refused after {time.perf_counter() - start:.2f} s ({str(err).split(' says ', 1)[-1][:70]})"
        times.append(time.perf_counter() - start)
    prunable, total = conv_filters(graph)
    return (f"{statistics.median(times):6.2f} s, {len(graph.prunable())}/{len(graph.groups)} groups, "
            f"{100 * prunable / max(total, 1):.1f} % of conv filters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--models", default="", help="comma-separated substrings of the rows' labels (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = [w for w in args.models.split(",") if w]
    for label, model, x, outputs in examples():
        if wanted and not any(w in label for w in wanted):
            continue
        for route in args.routes.split(","):
            print(f"routes {label:42} {route:7} {measure(model, x, route, outputs)}", flush=True)


if __name__ == "__main__":
    main()
