"""ultralytics YOLO models for the tests, built from their yaml with no weights and no download.

ultralytics is AGPL-3.0: the `dev` extra has it, the package never imports it. Its settings file
goes to a temporary directory, not the user's home.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile

import torch
from torch import nn

from conftest import require


def yolo(name: str) -> nn.Module:
    """`YOLO(f"{name}.yaml").model` in eval mode, never run (its Detect head's caches are empty)."""
    require(importlib.util.find_spec("ultralytics") is not None, "ultralytics (the dev extra)")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-settings-"))
    from ultralytics import YOLO

    torch.manual_seed(0)
    return YOLO(f"{name}.yaml").model.eval()
