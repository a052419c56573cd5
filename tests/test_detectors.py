"""Detector plumbing: a list is one argument, RoI pooling follows channels, refusals stay quiet;
torchvision's FrozenBatchNorm2d (pretrained detectors' backbones) is a registered layer kind.

The five whole torchvision detectors (random plans exact on the heads' raw outputs and on the
post-processed detections, ≥ 90 % of backbone + FPN conv filters prunable) are in the zoo sweep,
`tests/test_zoo.py`.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from torchvision.ops.misc import FrozenBatchNorm2d

from prune_explorer.model import kinds
from prune_explorer.model.costs import CostModel
from prune_explorer.model.exactness import TOLERANCE, check, conv_filters, detection_example
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.latency import LatencyTable
from prune_explorer.model.measure import count
from prune_explorer.model.store import load, save
from prune_explorer.model.zoo import build_model


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


# --- FrozenBatchNorm2d: torchvision's pretrained backbones --------------------------------------------
class FrozenNet(nn.Module):
    """Convs with torchvision's FrozenBatchNorm2d after them (its affine and statistics are buffers,
    written out as arithmetic in its forward)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = FrozenBatchNorm2d(8)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = FrozenBatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = torch.relu(self.bn2(self.body(torch.relu(self.bn1(self.stem(x))))))
        return self.fc(y.mean((2, 3)))


def test_frozen_batch_norm_is_a_registered_kind_pruned_costed_timed_saved_and_loaded(tmp_path):
    assert kinds.registered_kind(FrozenBatchNorm2d(4)).name == "frozen_batch_norm"
    with pytest.raises(ValueError, match="built in"):
        kinds.unregister_layer_kind("frozen_batch_norm")
    model, x = build_model(f"{__name__}:FrozenNet").eval(), torch.randn(2, 3, 6, 6)
    result = check(model, x)
    graph = result.graph
    assert result.max_diff <= TOLERANCE and not graph.unassigned
    assert {graph.slices[n].kind for n in graph.slices if n.startswith("bn")} == {"frozen_batch_norm"}
    assert graph.group("stem").prunable and graph.group("body").prunable
    pruned = result.pruned
    kept = 12 - len(result.removed[graph.group("body").id])
    assert {tuple(t.shape) for t in pruned.bn2.buffers()} == {(kept,)} and pruned.fc.in_features == kept

    removed = {g: len(ix) for g, ix in result.removed.items()}
    predicted = CostModel(model, x, graph).cost(removed)
    assert (predicted.params, predicted.macs) == tuple(count(pruned, x).as_dict()[k] for k in ("params", "macs"))
    table = LatencyTable.measure(model, x, graph, fractions=(0.5, 1.0), warmup=0, repeats=1)
    assert {n for n in graph.slices if n.startswith("bn")} <= set(table.layers)

    save(pruned, tmp_path / "m")
    loaded = load(tmp_path / "m", trust_code=[__name__])
    assert type(loaded.bn2) is FrozenBatchNorm2d and loaded.bn2.running_var.shape == (kept,)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_a_detector_built_around_a_pretrained_backbone_prunes_whole_and_exactly():
    """fasterrcnn_mobilenet_v3_large_320_fpn as torchvision builds it for `weights_backbone`: its
    backbone's norms are FrozenBatchNorm2d (no weights downloaded; the same module tree)."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    model, images = detection_example("fasterrcnn_mobilenet_v3_large_320_fpn", frozen_backbone=True)
    as_torchvision_builds_it = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    assert [type(m) for m in model.backbone.modules()] == [type(m) for m in as_torchvision_builds_it.modules()]
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 40

    result = check(model, images)
    graph = result.graph
    assert result.max_diff <= TOLERANCE, result.diffs
    assert {"rpn.head", "roi_heads.box_predictor"} <= set(result.diffs)   # raw head outputs compared too
    frozen = {name for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert {sl.module for sl in graph.slices.values() if sl.kind == "frozen_batch_norm"} == frozen
    prunable, total = conv_filters(graph, within="backbone")
    assert prunable / total >= 0.90, (prunable, total)


def test_ssd300_vgg16s_l2_norm_leaves_its_whole_backbone_prunable_and_exact():
    """SSD's L2Norm (`scale_weight * F.normalize(x)` in the VGG extractor's forward) no longer pins
    conv4_3: removed channels as zeros add nothing to the norm (93.8 % of backbone filters before)."""
    model, images = detection_example("ssd300_vgg16")
    result = check(model, images)
    graph = result.graph
    assert result.max_diff <= TOLERANCE and set(result.diffs) == {"head", "output"}, result.diffs
    assert [site.what for site in graph.zeroed_inputs] == ["node normalize (normalize) in module backbone "
                                                          "(SSDFeatureExtractorVGG)"]
    conv4_3 = graph.group("backbone.features.21")
    assert conv4_3.prunable and result.removed[conv4_3.id]
    assert conv_filters(graph, within="backbone") == (8192, 8192)
