"""Per-layer sensitivity: validation accuracy when only one layer loses x% of its filters.

No fine-tuning: the curve says how much a layer's lowest-ranked filters matter right now, the
cue Distiller's and Sparsify's sensitivity views give before committing to a plan.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from ..model.graph import ChannelGraph
from ..model.plan import PrunePlan
from ..model.surgery import prune
from ..loop.cut import accuracy

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9)


def sensitivity_curve(model: nn.Module, example_inputs: Any, graph: ChannelGraph, table: pd.DataFrame,
                      layer: str, images: torch.Tensor, labels: torch.Tensor,
                      fractions: Sequence[float] = FRACTIONS) -> list[tuple[float, float]]:
    """[(fraction cut, accuracy)] for `layer` alone, cutting its lowest-ranked filters first."""
    size = graph.group(layer).size
    points = []
    for fraction in fractions:
        k = min(int(round(fraction * size)), size - 1)
        plan = PrunePlan.from_counts(table, graph, {layer: k})
        pruned = prune(model, plan, example_inputs, graph=graph) if k else model
        points.append((k / size, accuracy(pruned, images, labels)))
    return points
