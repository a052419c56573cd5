"""How the package reads example inputs: the one owner of the convention every forward it runs follows.

A tuple is the positional arguments, a dict the keyword arguments, anything else — a tensor, a
list of images (torchvision's detectors take one list) — the one argument. Tracing (`graph`),
costs, latency, exactness and surgery's check all call a model through `call`.
"""
from __future__ import annotations

from typing import Any


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs) of `example_inputs`."""
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    return (example_inputs,), {}


def call(model: Any, example_inputs: Any) -> Any:
    """`model` run on `example_inputs` as the package reads them."""
    args, kwargs = split_inputs(example_inputs)
    return model(*args, **kwargs)
