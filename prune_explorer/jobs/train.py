"""Fine-tuning entry point: one iteration's training job, the project's own user of the job contract.

Runs the same way as a plain process (`python -m prune_explorer.jobs.train ...`), under torchrun
(DDP: gloo on CPU, nccl on GPU) and inside a SageMaker training container, where hyperparameters
arrive as `--key value` arguments and data/model/output locations as SM_* environment variables.
It fine-tunes a model (a saved model directory or a torchvision/user architecture name, optionally
from pretrained `--weights` with a new head), evaluates every epoch, captures a trial for the next
ranking, keeps the best epoch's model and writes `metrics.json` — all through `prune_explorer.jobs.contract`,
which any other training script can use the same way. With `--teacher` (a saved model, the
baseline or the parent: `--distill`) each batch's loss is Hinton's distillation loss against the
frozen teacher's logits (`jobs/distill.py`). Only rank 0 writes files.

Exit codes: 0 completed, 3 stopped by the accuracy-drop rule, anything else failed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import NORMALIZATIONS, labels_of, load_dataset, with_channels
from .contract import (EXIT_STOPPED, JobContext, JobSpec, RuleStopped, all_sum, flag, optional,
                       build_parser as contract_parser, resolve_locations as contract_locations)

LR_SCHEDULES = ("constant", "cosine")
__all__ = ["EXIT_STOPPED", "TrainConfig", "build_parser", "first_conv_in_channels", "main", "parse_args", "train"]


@dataclass
class TrainConfig(JobSpec):
    """The job contract's options plus this script's recipe; field names are the command-line flags."""

    default_model: ClassVar[str] = "resnet18"

    dataset: str | None = None
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    subset: int | None = None
    val_subset: int | None = None
    normalize: str | None = None  # None: "imagenet" with --weights (and always for image folders), else the data's
    augment: bool | None = None   # None: on with --weights and for image folders, off for grey sets from scratch
    download: bool = False

    def validate(self) -> "TrainConfig":
        super().validate()
        for name in ("subset", "val_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        return self

    def data_recipe(self, in_channels: int | None = None) -> tuple[str | None, bool | None]:
        """(normalize, augment) for load_dataset: a pretrained start (--weights) takes light augmentation
        and, when its first convolution takes RGB (`in_channels` 3), ImageNet's normalisation, unless told otherwise."""
        pretrained = self.weights is not None
        normalize = self.normalize or ("imagenet" if pretrained and in_channels == 3 else None)
        augment = self.augment if self.augment is not None else (True if pretrained else None)
        return normalize, augment

    def resolved(self) -> "TrainConfig":
        """The contract's locations, then this script's dataset default (an image folder on SageMaker)."""
        import os

        resolved = contract_locations(self)
        if resolved.dataset is None:
            resolved.dataset = "imagefolder" if os.environ.get("SM_CHANNEL_TRAIN") else "fashion-mnist"
        if resolved.dataset != "imagefolder":
            resolved.val_dir = None
        return resolved


TRAIN_TYPES = {
    "dataset": optional(str), "lr_schedule": str, "momentum": float, "weight_decay": float,
    "subset": optional(int), "val_subset": optional(int), "download": flag,
    "normalize": optional(str), "augment": optional(flag),
}
TRAIN_HELP = {
    "dataset": "imagefolder | caltech101 | fashion-mnist | digits (default: imagefolder with SM_CHANNEL_TRAIN, "
               "else fashion-mnist)",
    "weights": "pretrained start for an architecture name: torchvision enum (IMAGENET1K_V1, downloaded) or local "
               "state-dict file (weights_only); the head is replaced for the data's classes",
    "normalize": "dataset | imagenet (default: imagenet with --weights; image folders always imagenet)",
    "augment": "light training augmentation true/false (default: on with --weights and for image folders)",
    "model": "saved model directory (model.json) or architecture name (torchvision, or 'pkg.mod:Class'); "
             "default: the SageMaker model channel, else resnet18",
    "lr": "SGD learning rate",
    "lr_schedule": "constant (the AWS example) | cosine (decays to 0 over the job's steps)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "subset": "train on this many examples (per-class draw)",
    "val_subset": "evaluate on this many examples (per-class draw)",
    "download": "let torchvision download Fashion-MNIST or Caltech101 when not on disk (needs internet)",
}


def build_parser() -> argparse.ArgumentParser:
    """The contract's options and this script's recipe, one `--name` each."""
    return contract_parser(TrainConfig, TRAIN_TYPES, TRAIN_HELP, prog="python -m prune_explorer.jobs.train",
                           description=__doc__.split("\n\n")[0])


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse `--key value` arguments; unknown ones (extra SageMaker hyperparameters) are reported, not fatal."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        print(f"[train] ignoring unknown arguments: {' '.join(unknown)}", file=sys.stderr, flush=True)
    return TrainConfig(**vars(args)).validate()


# --- model and data ----------------------------------------------------------------------------
def first_conv_in_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def _with_channels(dataset: Dataset, channels: int, model: str, name: str) -> Dataset:
    """Repeat grey images over `channels` (the model's first conv decides)."""
    have = int(dataset[0][0].shape[0])
    if have == channels:
        return dataset
    if have == 1:
        return with_channels(dataset, channels)
    raise ValueError(
        f"--model {model}: its first convolution expects {channels} input channel(s) but dataset "
        f"{name!r} gives {have}"
    )


@dataclass
class _Prepared:
    model: nn.Module
    origin: str
    train_ds: Dataset
    val_ds: Dataset
    num_classes: int
    in_channels: int
    example: torch.Tensor


def _prepare(run: JobContext) -> _Prepared:
    """Load the data and the model, and make them fit each other (channels, then classes)."""
    config, dist = run.spec, run.dist
    download_first = config.download and dist.enabled
    if download_first and not dist.main:
        torch.distributed.barrier()  # rank 0 downloads alone
    pretrained = run.load_model(fit_head=False) if config.weights is not None else None  # its input decides
    normalize, augment = config.data_recipe(first_conv_in_channels(pretrained) if pretrained is not None else None)
    train_ds, val_ds, num_classes, in_channels = load_dataset(
        config.dataset,
        config.data_dir,
        image_size=config.image_size,
        subset=config.subset,
        val_subset=config.val_subset,
        seed=config.seed,
        val_dir=config.val_dir,
        download=config.download and dist.main,
        normalize=normalize,
        augment=augment,
    )
    if download_first and dist.main:
        torch.distributed.barrier()
    model = pretrained if pretrained is not None else run.load_model(num_classes, fit_head=False)
    origin = "built" if run.built else "saved"
    wanted = first_conv_in_channels(model)
    if wanted is not None and wanted != in_channels:
        train_ds = _with_channels(train_ds, wanted, config.model, config.dataset)
        val_ds = _with_channels(val_ds, wanted, config.model, config.dataset)
        in_channels = wanted
    example = val_ds[0][0].unsqueeze(0)
    run.fit_head(model, num_classes, example)
    return _Prepared(model, origin, train_ds, val_ds, num_classes, in_channels, example)


# --- the job -----------------------------------------------------------------------------------
def train(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Run one fine-tuning job; returns the metrics written to metrics.json (status "completed" or "stopped")."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    try:
        with JobContext(config, log_prefix="train") as run:
            return _train(run)
    except RuleStopped as stopped:
        return stopped.metrics


def _train(run: JobContext) -> dict[str, Any]:
    config, dist, device = run.spec, run.dist, run.device
    np.random.seed(config.seed)
    prepared = _prepare(run)
    model = prepared.model.to(device)
    run.log(f"{prepared.origin} model {config.model} on {device} x{dist.world_size}; dataset {config.dataset}: "
            f"{len(prepared.train_ds)} train / {len(prepared.val_ds)} val, {prepared.num_classes} classes, "
            f"input {tuple(prepared.example.shape[1:])}")
    train_loader, val_loader = _loaders(run, prepared.train_ds, prepared.val_ds)
    net = run.distribute(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = _scheduler(config, optimizer, len(train_loader))
    capture = run.capture(model)
    if run.distilling:
        run.teacher()  # loaded frozen before the first batch; each batch's loss then uses its logits
    step = 0
    for epoch in run.epochs():
        train_loss, step = _train_epoch(net, train_loader, optimizer, scheduler, capture, run, epoch, step)
        val_loss, val_accuracy = run.evaluate(net, val_loader)
        run.report(val_accuracy, train_loss=train_loss, val_loss=val_loss, steps=step,
                   lr=optimizer.param_groups[0]["lr"])
        if config.max_steps is not None and step >= config.max_steps:
            break
    data = {
        "dataset": config.dataset,
        "num_classes": prepared.num_classes,
        "in_channels": prepared.in_channels,
        "train_size": len(prepared.train_ds),
        "val_size": len(prepared.val_ds),
        "class_counts": np.bincount(labels_of(prepared.train_ds), minlength=prepared.num_classes).tolist(),
        "data_recipe": dict(zip(("normalize", "augment"), config.data_recipe(first_conv_in_channels(model)))),
    }
    return run.finish(example_inputs=prepared.example, metrics=data)


def _train_epoch(net, loader, optimizer, scheduler, capture, run: JobContext, epoch: int,
                 step: int) -> tuple[float, int]:
    """One pass over the training data (or up to --max-steps); returns (mean loss, global step)."""
    config, device = run.spec, run.device
    criterion = run.distill_loss if run.distilling else (lambda out, x, y: nn.functional.cross_entropy(out, y))
    net.train()
    loss_sum = seen = 0.0
    for x, y in run.progress(loader, desc=f"epoch {epoch}/{config.epochs}"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        capture.step()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), x, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        step += 1
        if config.max_steps is not None and step >= config.max_steps:
            break
    loss_sum, seen = all_sum([loss_sum, seen], run.dist, device)
    return loss_sum / max(seen, 1.0), step


def _loaders(run: JobContext, train_ds, val_ds):
    config = run.spec
    common = dict(batch_size=config.batch_size, num_workers=config.workers, pin_memory=run.device.type == "cuda",
                  persistent_workers=config.workers > 0)
    train_loader = DataLoader(train_ds, sampler=run.train_sampler(train_ds), **common)
    val_loader = DataLoader(val_ds, sampler=run.val_sampler(val_ds), **common)
    return train_loader, val_loader


def _scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step cosine decay over the whole job (or --max-steps); None for a constant rate."""
    if config.lr_schedule == "constant":
        return None
    total = config.epochs * max(steps_per_epoch, 1)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))


def main(argv: Sequence[str] | None = None) -> int:
    metrics = train(parse_args(argv))
    return EXIT_STOPPED if metrics.get("status") == "stopped" else 0


if __name__ == "__main__":
    from .contract import mask_output

    mask_output()  # the job's log (train.log, CloudWatch) shows no credential
    sys.exit(main())
