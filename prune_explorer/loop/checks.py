"""What a run checks before any work: every input of its LoopConfig — numbers in range, paths that
exist (a wrong folder is an error, never a silent switch to another copy of the data), a
`per_iteration` the model's channel groups can give — refused with the setting named.

A refusal is a `Refused` (also a ValueError or FileNotFoundError, as the check that found it), so
`prune-explorer run` can tell "refused before anything ran" (exit 2) from "asked work failed" (exit 1).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..workspace.layout import MODEL_SPEC, has_model

POSITIVE = ("lr", "baseline_lr")  # learning rates: finite and > 0 (None: train.py's default)
AT_LEAST_ONE = ("batch_size", "subset", "val_subset", "image_size", "epochs", "baseline_epochs", "per_iteration",
                "instance_count")  # instance_count: a backend option (LoopConfig.backend_options)
NON_NEGATIVE = ("weight_decay", "min_params", "seed", "iterations")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")  # model.zoo's local state-dict files


class Refused(Exception):
    """A run refused before any work: a bad input, another recipe, a busy workspace (CLI exit 2)."""


class RefusedValue(Refused, ValueError):
    pass


class RefusedPath(Refused, FileNotFoundError):
    pass


def refusal(exc: BaseException) -> Refused:
    """`exc` (from a check) as a Refused of the same family; a Refused as it is."""
    if isinstance(exc, Refused):
        return exc
    kind = RefusedPath if isinstance(exc, FileNotFoundError) else RefusedValue
    refused = kind(str(exc))
    refused.__cause__ = exc
    return refused


def flag(name: str) -> str:
    """The `prune-explorer run` flag of a LoopConfig field."""
    return "--" + name.replace("_", "-")


def check_numbers(config: Any) -> None:
    """Every number of the run in its range (the loop's own checks are in LoopConfig.validate)."""
    options = dict(getattr(config, "backend_options", None) or {})  # e.g. SageMaker's instance_count
    for name in POSITIVE + AT_LEAST_ONE + NON_NEGATIVE:
        value = getattr(config, name) if hasattr(config, name) else options.get(name)
        if value is None:
            continue
        named = f"{name} ({flag(name)})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RefusedValue(f"{named} must be a finite number, got {value!r}")
        if name in AT_LEAST_ONE and (value < 1 or value != int(value)):
            raise RefusedValue(f"{named} must be a whole number >= 1, got {value!r}")
        if name in POSITIVE and value <= 0:
            raise RefusedValue(f"{named} must be > 0, got {value!r}")
        if name in NON_NEGATIVE and value < 0:
            raise RefusedValue(f"{named} must be >= 0, got {value!r}")


def check_paths(config: Any) -> None:
    """The data, the baseline's weights and model, the training script: each where the run says."""
    from ..jobs.base import training_script

    _check_data(config)
    weights = config.weights
    if weights is not None and (Path(weights).suffix in WEIGHTS_SUFFIXES or os.sep in str(weights)) \
            and not Path(weights).is_file():
        raise RefusedPath(f"--weights {weights}: no such file (a local state dict, or a torchvision weights "
                          "name such as IMAGENET1K_V1)")
    model = Path(config.model)
    if (model.exists() or os.sep in config.model) and not has_model(model):
        raise RefusedPath(f"--model {config.model}: not a saved model directory (no {MODEL_SPEC} in it)")
    try:
        training_script(config.entry_point, config.source_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise refusal(exc) from exc


def _check_data(config: Any) -> None:
    from ..jobs import data

    data_dir, dataset = config.data_dir, config.dataset.lower().replace("_", "-")
    if isinstance(data_dir, str) and data_dir.startswith("s3://"):
        return  # the SageMaker jobs' train channel (LoopConfig.validate checks the backend)
    if config.entry_point is not None:  # the user's script reads its data its own way
        if data_dir is not None and not Path(data_dir).exists():
            raise RefusedPath(f"--data-dir {data_dir}: no such file or folder")
        return
    if dataset == "digits":
        if data_dir is not None:
            raise RefusedValue(f"--data-dir {data_dir}: dataset 'digits' is scikit-learn's built-in set and reads "
                               "no folder; leave --data-dir out, or name the dataset that folder holds")
        return
    if config.download:
        return  # torchvision fetches what is missing into data_dir
    if dataset in ("fashion-mnist", "fashionmnist"):
        problem = data.fashion_mnist_dir_problem(data_dir or data.FASHION_MNIST_SYSTEM_DIR)
        if problem:
            hint = "pass the folder that holds them" if data_dir else \
                "install dataset-fashion-mnist (apt), pass --data-dir, or --download"
            raise RefusedPath(f"{'--data-dir ' if data_dir else 'Fashion-MNIST: '}{problem}; {hint}")
    elif dataset == "caltech101":
        try:
            data.caltech101_root(data_dir, download=False)
        except FileNotFoundError as exc:
            raise refusal(exc) from exc
    elif dataset == "imagefolder":
        if data_dir is None:
            raise RefusedValue("dataset 'imagefolder' needs --data-dir (a folder of class folders, or train/ and val/)")
        if not Path(data_dir).is_dir():
            raise RefusedPath(f"--data-dir {data_dir}: no such folder")


def filter_capacity(graph: Any, scheme: str) -> int:
    """How many filters a plan can remove from a channel graph's groups under `scheme`: each keeps one."""
    return sum(g.size - 1 for g in graph.prunable("internal" if scheme == "internal" else None))


def check_capacity(config: Any, workspace: Any, start: Any) -> None:
    """Refuse a `per_iteration` larger than the start model's groups can give (issue 22: 100,000 cut every
    internal conv to one channel, silently); later iterations that run short warn instead (loop)."""
    if config.iterations == 0 or config.target_macs is not None or config.target_latency is not None:
        return
    from ..model import store

    model = store.load(workspace.iteration_dir(start.name), trust_code=workspace.trust_code).eval()
    x = workspace.example_inputs(start.name, model, image_size=config.image_size, dataset=config.dataset)
    _refuse_beyond(config, filter_capacity(workspace.trace(model, x), config.scheme), start.name)  # outputs kept


def check_new_capacity(config: Any) -> None:
    """`check_capacity` on a new workspace, before its baseline trains: on the untrained architecture the
    baseline job will build (channel groups do not depend on weights or the head's classes). Where only the
    job knows the model (a saved model directory, a user class, the user's own script) the check waits for
    the trained baseline."""
    if config.iterations == 0 or config.target_macs is not None or config.target_latency is not None:
        return
    if config.entry_point or ":" in config.model or Path(config.model).exists():
        return
    import torch

    from ..model.graph import ChannelGraph
    from ..model.zoo import build_model
    from ..workspace.workspace import NATIVE_SIZE

    model = build_model(config.model, **{"num_classes": 10, **config.model_kwargs}).eval()
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    size = config.image_size or NATIVE_SIZE.get(config.dataset, 224)
    x = torch.zeros(1, first.in_channels if first is not None else 3, size, size)
    try:
        graph = ChannelGraph.trace(model, x, outputs=tuple(config.outputs) or None)
    except Exception:  # an input only the job knows (a detector's, a size the data sets): checked after the baseline
        return
    _refuse_beyond(config, filter_capacity(graph, config.scheme), "baseline")


def _refuse_beyond(config: Any, capacity: int, name: str) -> None:
    if config.per_iteration > capacity:
        raise RefusedValue(f"--per-iteration {config.per_iteration:,}: the {config.scheme} channel groups of "
                           f"{name} can give at most {capacity:,} filters (each group keeps one channel); "
                           "ask for fewer, or cut by compute with --target-macs")


def check_aws_region(config: Any, backend: bool = True, tracker: bool = True) -> None:
    """A run on SageMaker (jobs or Experiments) needs an AWS region: without one the SDK failed after the
    workspace was made, as a failed run (exit 1). `backend` / `tracker`: whether the config's make them."""
    uses = [flag for flag, on in (("--backend sagemaker", backend and config.backend == "sagemaker"),
                                  ("--tracker sagemaker-experiments",
                                   tracker and config.tracker == "sagemaker-experiments")) if on]
    if not uses or config.region:
        return
    import boto3

    if boto3.Session().region_name is None:
        raise RefusedValue(f"{' and '.join(uses)}: no AWS region; give --region, or set AWS_REGION / "
                           "AWS_DEFAULT_REGION or a region in your AWS profile")
