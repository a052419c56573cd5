"""Detector plumbing: a list is one argument, RoI pooling follows channels, refusals stay quiet.

The five whole torchvision detectors (random plans exact on the heads' raw outputs and on the
post-processed detections, ≥ 90 % of backbone + FPN conv filters prunable) are in the zoo sweep,
`tests/test_zoo.py`.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from prune_explorer.model.exactness import TOLERANCE, check
from prune_explorer.model.graph import ChannelGraph


class ListOfImages(nn.Module):
    """Takes a list of 3-d images, as torchvision's detectors do, and pools regions with RoIAlign."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = torchvision.ops.MultiScaleRoIAlign(["a", "b"], 2, 2)
        self.box_head = nn.Linear(8 * 2 * 2, 5)
        self.cls = nn.Linear(8 * 2 * 2, 5)

    def forward(self, images: list[torch.Tensor]):
        x = torch.stack(images)
        a = torch.relu(self.stem(x))
        b = torch.nn.functional.max_pool2d(torch.relu(self.body(a)), 2)
        boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 16.0, 16.0]], dtype=x.dtype)] * len(images)
        regions = self.pool({"a": a, "b": b}, boxes, [tuple(x.shape[-2:])] * len(images))
        single = torchvision.ops.roi_align(b, boxes, 2)
        return self.box_head(regions.flatten(1)) + self.cls(single.flatten(1))


def test_a_list_input_is_one_argument_and_roi_pooling_follows_the_channels():
    images = [torch.rand(3, 16, 16), torch.rand(3, 16, 16)]
    model = ListOfImages().eval()
    result = check(model, images)                    # a list: one argument, not two
    graph = result.graph
    assert graph.route == "record" and result.max_diff <= TOLERANCE
    stem = graph.group("stem")                       # MultiScaleRoIAlign ties the levels' channels
    assert stem is graph.group("body") and stem.prunable and {"box_head", "cls"} <= set(stem.consumers)
    assert graph.slices["box_head"].in_factor == 4   # each channel's 2x2 region, flattened


def test_a_tuple_is_positional_arguments_and_a_dict_keyword_arguments():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    x, y = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    by_position = ChannelGraph.trace(Two(), (x, y))
    by_name = ChannelGraph.trace(Two(), {"x": x, "y": y})
    assert by_position.group("a") is by_position.group("b")
    assert [g.layers for g in by_name.groups] == [g.layers for g in by_position.groups]


def test_a_refused_export_prints_nothing(capfd):
    class DataDependentShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return y[y > 0].sum() if int((y > 0).sum()) > 3 else y.sum()

    with pytest.raises(ValueError, match="torch.export says"):
        ChannelGraph.trace(DataDependentShape(), torch.randn(1, 3, 8, 8), route="export")
    out, err = capfd.readouterr()
    assert len((out + err).splitlines()) <= 2, (out + err)[:500]
