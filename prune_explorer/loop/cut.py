"""Accuracy right after a cut: the pruned model, not fine-tuned, on a fixed validation slice.

The slice is the first `n` images of the validation set a fine-tuning job of these arguments
validates on (`jobs.data.load_dataset` with the job's dataset, size, subset, seed and normalisation;
grey images repeated over the model's input channels, as the job does), so the panel, the loop and
a test that loads the saved pruned model all see the same images in the same order. The loop's
step records it (`record_cut`), the panel's Apply through `PruningSession.evaluate_cut`; both write
cut.json through `Workspace.write_cut_accuracy` (`workspace.layout.cut_record`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..workspace.layout import cut_record

CUT_EXAMPLES = 1000  # images the accuracy after a cut is measured on (≤ 3 s for resnet18 at 32 px on CPU)
SLICE_ARGS = ("dataset", "data_dir", "val_dir", "image_size", "val_subset", "seed", "normalize")
log = logging.getLogger(__name__)
_cache: dict[tuple, "Slice"] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Slice:
    images: torch.Tensor
    labels: torch.Tensor

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels


def describe(args: dict[str, Any], examples: int, given: bool = False) -> dict[str, Any]:
    """What the slice was, as the iteration's record keeps it."""
    if given:
        return {"source": "given", "examples": int(examples)}
    return {**{k: args[k] for k in SLICE_ARGS if args.get(k) is not None}, "examples": int(examples)}


def validation_slice(args: dict[str, Any], n: int = CUT_EXAMPLES, model: nn.Module | None = None) -> Slice:
    """The first `n` validation images of a job with training arguments `args` (cached per arguments)."""
    from ..jobs.data import load_dataset, with_channels
    from ..jobs.train import first_conv_in_channels

    if not args.get("dataset"):
        raise ValueError("no validation data: the fine-tune's arguments name no dataset (pass validation=(images, "
                         "labels), or train_args={'dataset': ...})")
    channels = first_conv_in_channels(model) if model is not None else None
    key = (tuple((k, str(args.get(k))) for k in SLICE_ARGS), n, channels)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    _, val_ds, _, _ = load_dataset(args["dataset"], args.get("data_dir"), image_size=args.get("image_size"),
                                   val_subset=args.get("val_subset"), seed=int(args.get("seed") or 0),
                                   val_dir=args.get("val_dir"), normalize=args.get("normalize"), download=False)
    if channels is not None and int(val_ds[0][0].shape[0]) != channels:
        val_ds = with_channels(val_ds, channels)
    pairs = [val_ds[i] for i in range(min(n, len(val_ds)))]
    found = Slice(torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs]))
    with _cache_lock:
        _cache[key] = found
    return found


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy of `model` (eval mode, no grad) on `images`."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = model(images[start:start + batch_size])
                correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(images), 1)


def measured(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, slice_record: dict[str, Any]) -> dict[str, Any]:
    """The record an iteration keeps of its cut (`layout.cut_record`: accuracy, examples, slice)."""
    return cut_record(accuracy(model, images, labels), len(labels), slice_record)


def record_cut(workspace: Any, name: str, model: nn.Module, args: dict[str, Any], n: int = CUT_EXAMPLES):
    """Measure iteration `name`'s pruned model right after its cut on the slice of its fine-tune's
    arguments `args` and record it in the iteration (the loop's step; the panel's Apply measures the
    same through `PruningSession.evaluate_cut`). None, with a warning, when that data cannot be read
    here (an S3 bucket, a training script's own dataset): the iteration goes on without the number."""
    try:
        images, labels = validation_slice(args, n, model).tensors
    except (ValueError, FileNotFoundError, OSError) as exc:
        log.warning("%s: accuracy right after the cut not measured: %s", name, exc)
        return None
    found = measured(model, images, labels, describe(args, len(labels)))
    workspace.write_cut_accuracy(name, **found)
    return found
