"""`prune-explorer demo`: one pruning step, measured before and after (`surgery`), and the pretrained
model the loop's pretrained demo starts from."""
from __future__ import annotations

from .surgery import (EFFICIENTNET_LITE0, PRETRAINED_ARCH, PRETRAINED_NAME, RESNET18, SurgeryDemo, main,
                      pretrained_kwargs, pretrained_weights)

__all__ = ["EFFICIENTNET_LITE0", "PRETRAINED_ARCH", "PRETRAINED_NAME", "RESNET18", "SurgeryDemo", "main",
           "pretrained_kwargs", "pretrained_weights"]
