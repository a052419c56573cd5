"""The model a trial was captured from, when the caller gives none: the saved model beside the trial,
the recorded model directory, or the recorded architecture (untrained); its example inputs and graph."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..workspace.layout import has_model
from . import smdebug_compat  # noqa: F401  (the numpy-2 fixes before smdebug is used)
from .capture import META_FILE
from smdebug.core.utils import is_s3


def _model_from_meta(meta: dict, path: str, trust_code: Any = None) -> tuple[nn.Module, bool]:
    """The model a trial was captured on, and whether it was built untrained: the saved model beside
    it (train.py writes OUT/trial next to OUT/model.json, with the pruned widths), else the recorded
    model directory, else the base arch (fresh weights: True)."""
    beside = os.path.dirname(os.path.abspath(path))
    if not is_s3(path)[0] and has_model(beside):
        from ..model.store import load

        return load(beside, trust_code=trust_code), False
    spec = meta.get("model") or {}
    if spec.get("model_dir"):
        from ..model.store import load

        return load(spec["model_dir"], trust_code=trust_code), False
    if spec.get("arch"):
        from ..model.zoo import build_from_spec

        where = f"{path}/{META_FILE}: field 'model.arch'"
        return build_from_spec({"arch": spec["arch"], "kwargs": spec.get("kwargs") or {}}, trust_code=trust_code,
                               where=where), True
    raise ValueError(f"{path}: the trial does not record its model ({META_FILE} missing or without 'model'); "
                     "pass model= (CLI: --model ARCH|SPEC_DIR)")


def _example_inputs(example_inputs: Any, meta: dict, path: str) -> Any:
    if example_inputs is not None:
        return example_inputs
    size = meta.get("input_size")
    if size:
        return torch.zeros(1, *size)
    raise ValueError(f"{path}: the trial does not record the input size; pass example_inputs= "
                     "(CLI: --input-size 3,64,64)")


def _trace(model: nn.Module, example_inputs: Any, outputs: Any = None):
    from ..model.graph import ChannelGraph

    return ChannelGraph.trace(model, example_inputs, outputs=outputs)
