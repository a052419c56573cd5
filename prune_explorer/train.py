"""Fine-tuning entry point: one iteration's training job.

Runs the same way as a plain process (`python -m prune_explorer.train ...`), under torchrun
(DDP: gloo on CPU, nccl on GPU) and inside a SageMaker training container, where hyperparameters
arrive as `--key value` arguments and data/model/output locations as SM_* environment variables.
It fine-tunes a model (a saved model directory or a torchvision/user architecture name),
evaluates every epoch, captures a trial for the next ranking, keeps the best epoch's model and
writes `metrics.json`. Only rank 0 writes files.

Exit codes: 0 completed, 3 stopped by the accuracy-drop rule, anything else failed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from .data import labels_of, load_dataset

EXIT_STOPPED = 3
SAGEMAKER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")
CAPTURE_MODES = ("compact", "full", "none")
LR_SCHEDULES = ("constant", "cosine")
LOG_EVERY_S = 30.0


@dataclass
class TrainConfig:
    """Everything one training job needs; field names are the command-line flags."""

    model: str = "resnet18"
    dataset: str | None = None
    data_dir: str | None = None
    val_dir: str | None = None
    out_dir: str | None = None
    checkpoint_dir: str | None = None
    metrics_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    workers: int = 0
    seed: int = 0
    subset: int | None = None
    val_subset: int | None = None
    image_size: int | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    capture: str = "compact"
    capture_every: int = 50
    max_steps: int | None = None
    stop_rule_threshold: float | None = None
    stop_rule_mode: str = "best"
    baseline_accuracy: float | None = None
    device: str | None = None
    measure_latency: bool = True
    download: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        normalized = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalized) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**normalized)

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "capture_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("subset", "val_subset", "max_steps", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        if self.capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {self.capture!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.stop_rule_mode not in ("best", "latest"):
            raise ValueError(f"stop_rule_mode must be 'best' or 'latest', got {self.stop_rule_mode!r}")
        if self.stop_rule_threshold is not None and self.baseline_accuracy is None:
            raise ValueError("--stop-rule-threshold needs --baseline-accuracy (the previous iteration's accuracy)")
        return self


# --- command line ------------------------------------------------------------------------------
def _optional(kind):
    def parse(text: str):
        return None if text.strip().lower() in ("", "none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _kwargs(text: str) -> dict[str, Any]:
    """A JSON object (or a Python dict literal, as `str(dict)` gives)."""
    import ast

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_explorer.train", description=__doc__.split("\n\n")[0])
    defaults = TrainConfig()

    def add(name: str, kind, help: str) -> None:
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        switch = dict(nargs="?", const=True) if kind is _flag else {}
        parser.add_argument(*flags, dest=name, type=kind, default=getattr(defaults, name), help=help, **switch)

    add("model", str, "saved model directory (model.json) or architecture name (torchvision, or 'pkg.mod:Class')")
    add("dataset", _optional(str), "imagefolder | fashion-mnist | digits (default: imagefolder with SM_CHANNEL_TRAIN, else fashion-mnist)")
    add("data_dir", _optional(str), "dataset folder (default: SM_CHANNEL_TRAIN)")
    add("val_dir", _optional(str), "separate validation image folder (default: SM_CHANNEL_TEST)")
    add("out_dir", _optional(str), "where model.json, model.safetensors, metrics.json go (default: SM_MODEL_DIR, else ./output)")
    add("checkpoint_dir", _optional(str), "the trial goes to DIR/trial (default: SM_CHECKPOINT_DIR, /opt/ml/checkpoints on SageMaker, else --out-dir)")
    add("metrics_dir", _optional(str), "extra copy of metrics.json (default: SM_OUTPUT_DATA_DIR)")
    add("epochs", int, "fine-tuning epochs")
    add("batch_size", int, "batch size per process")
    add("lr", float, "SGD learning rate")
    add("lr_schedule", str, "constant (the AWS example) | cosine (decays to 0 over the job's steps)")
    add("momentum", float, "SGD momentum")
    add("weight_decay", float, "SGD weight decay")
    add("workers", int, "data loader worker processes")
    add("seed", int, "seed for subsets, splits, shuffling and initialisation")
    add("subset", _optional(int), "train on this many examples (per-class draw)")
    add("val_subset", _optional(int), "evaluate on this many examples (per-class draw)")
    add("image_size", _optional(int), "input size (crop size for imagefolder)")
    add("weights", _optional(str), "initial weights for an architecture name: local state dict or torchvision enum")
    add("model_kwargs", _kwargs, "JSON keyword arguments for the architecture constructor")
    add("capture", str, "trial capture mode: compact | full | none")
    add("capture_every", int, "capture every N training steps")
    add("max_steps", _optional(int), "stop training after this many steps in total")
    add("stop_rule_threshold", _optional(float), "stop when accuracy falls this far below --baseline-accuracy")
    add("stop_rule_mode", str, "compare the best (default) or latest epoch accuracy")
    add("baseline_accuracy", _optional(float), "the previous iteration's accuracy, for the stop rule")
    add("device", _optional(str), "cpu | cuda (default: cuda when available)")
    add("measure_latency", _flag, "measure CPU latency of the final model (true/false)")
    add("download", _flag, "let torchvision download Fashion-MNIST when it is not on disk (needs internet)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse `--key value` arguments; unknown ones (extra SageMaker hyperparameters) are reported, not fatal."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        print(f"[train] ignoring unknown arguments: {' '.join(unknown)}", file=sys.stderr, flush=True)
    return TrainConfig(**vars(args)).validate()


# --- distributed -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_request: str | None) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() if device_request is None else device_request.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    device = torch.device(f"cuda:{dist.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if dist.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist, device


def _all_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    if not dist.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


class ShardSampler(Sampler[int]):
    """Every `world`-th index from `rank`: each example evaluated exactly once across processes."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --- locations (SageMaker conventions) ---------------------------------------------------------
def resolve_locations(config: TrainConfig) -> TrainConfig:
    """Fill unset paths from SageMaker's environment variables and directories."""
    env = os.environ
    resolved = copy.copy(config)
    if resolved.data_dir is None:
        resolved.data_dir = env.get("SM_CHANNEL_TRAIN")
    if resolved.val_dir is None and resolved.data_dir == env.get("SM_CHANNEL_TRAIN"):
        resolved.val_dir = env.get("SM_CHANNEL_TEST") or env.get("SM_CHANNEL_VALIDATION") or env.get("SM_CHANNEL_VAL")
    if resolved.dataset is None:
        resolved.dataset = "imagefolder" if env.get("SM_CHANNEL_TRAIN") else "fashion-mnist"
    if resolved.dataset != "imagefolder":
        resolved.val_dir = None
    if resolved.out_dir is None:
        resolved.out_dir = env.get("SM_MODEL_DIR") or "output"
    if resolved.metrics_dir is None:
        resolved.metrics_dir = env.get("SM_OUTPUT_DATA_DIR")
    if resolved.checkpoint_dir is None:
        if env.get("SM_CHECKPOINT_DIR"):
            resolved.checkpoint_dir = env["SM_CHECKPOINT_DIR"]
        elif "SM_MODEL_DIR" in env and SAGEMAKER_CHECKPOINT_DIR.is_dir():
            resolved.checkpoint_dir = str(SAGEMAKER_CHECKPOINT_DIR)
    return resolved


def trial_dir(config: TrainConfig) -> Path:
    return Path(config.checkpoint_dir or config.out_dir) / "trial"


# --- model -------------------------------------------------------------------------------------
def first_conv_in_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def output_size(model: nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(example)
        model.train(was_training)
    return int(out.shape[-1])


def load_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The model to fine-tune and where it came from ("saved" or "built")."""
    source = Path(config.model)
    if (source / "model.json").is_file():
        from .model.store import load

        return load(source), "saved"
    if source.exists() or os.sep in config.model:
        raise FileNotFoundError(f"--model {config.model}: not a saved model directory (no model.json in it)")
    from .model.zoo import build_model

    kwargs = dict(config.model_kwargs)
    if config.weights is None:
        kwargs.setdefault("num_classes", num_classes)
    return build_model(config.model, weights=config.weights, **kwargs), "built"


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the last Linear layer for a fresh one with `num_classes` outputs (pretrained weights, new task)."""
    name = next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)
    if name is None:
        raise ValueError("the model has no Linear layer to replace as its classification head")
    old = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return name


def _with_channels(dataset: Dataset, channels: int, model: str, name: str) -> Dataset:
    """Repeat grey images over `channels` (the model's first conv decides)."""
    have = int(dataset[0][0].shape[0])
    if have == channels:
        return dataset
    if isinstance(dataset, TensorDataset) and have == 1:
        images, labels = dataset.tensors
        return TensorDataset(images.expand(-1, channels, -1, -1).contiguous(), labels)
    raise ValueError(
        f"--model {model}: its first convolution expects {channels} input channel(s) but dataset "
        f"{name!r} gives {have}"
    )


# --- capture -----------------------------------------------------------------------------------
class _NoCapture:
    path = None

    def step(self) -> None:
        pass

    def scalar(self, name: str, value: float) -> None:
        pass

    def close(self) -> None:
        pass


class _Capture:
    """The CaptureHook plus the per-epoch accuracy scalars the stop rule reads."""

    def __init__(self, model: nn.Module, path: Path, mode: str, every: int):
        from .signals.capture import CaptureHook

        self.path = path
        self.hook = CaptureHook(model, str(path), mode=mode, save_every=every)

    def step(self) -> None:
        self.hook.step()

    def scalar(self, name: str, value: float) -> None:
        self.hook.save_scalar(name, float(value))

    def close(self) -> None:
        self.hook.close()


def _start_capture(config: TrainConfig, model: nn.Module, dist: Dist):
    if config.capture == "none" or not dist.main:
        return _NoCapture()
    path = trial_dir(config)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    return _Capture(model, path, config.capture, config.capture_every)


# --- the job -----------------------------------------------------------------------------------
def _log(dist: Dist, message: str) -> None:
    if dist.main:
        print(f"[train] {message}", flush=True)


def _progress(iterable, dist: Dist, desc: str):
    """A tqdm bar on a terminal; in a job log (no terminal), a plain line every LOG_EVERY_S seconds."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, disable=not dist.main, leave=False)
    return _logged(iterable, dist, desc)


def _logged(iterable, dist: Dist, desc: str):
    total, last = len(iterable), time.monotonic()
    for done, item in enumerate(iterable, 1):
        yield item
        if time.monotonic() - last >= LOG_EVERY_S:
            _log(dist, f"{desc}: {done}/{total} batches")
            last = time.monotonic()


def evaluate(model: nn.Module, loader: DataLoader, dist: Dist, device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole validation set, summed across processes."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss_sum = correct = count = 0.0
    with torch.no_grad():
        for x, y in _progress(loader, dist, desc="eval"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss_sum += float(criterion(out, y))
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], dist, device)
    if count == 0:
        raise ValueError("the validation set is empty")
    return loss_sum / count, correct / count


def train(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Run one fine-tuning job; returns the metrics written to metrics.json (status "completed" or "stopped")."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config = resolve_locations(config.validate())
    dist, device = _init_distributed(config.device)
    try:
        metrics = _train(config, dist, device)
        if dist.enabled:
            torch.distributed.barrier()  # every rank leaves after rank 0 has written its files
        return metrics
    except Exception as exc:
        if dist.main:
            failed = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "config": asdict(config)}
            write_metrics(config, failed)
        raise
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass
class _Prepared:
    model: nn.Module
    origin: str
    train_ds: Dataset
    val_ds: Dataset
    num_classes: int
    in_channels: int
    example: torch.Tensor


def _prepare(config: TrainConfig, dist: Dist) -> _Prepared:
    """Load the data and the model, and make them fit each other (channels, classes)."""
    download_first = config.download and dist.enabled
    if download_first and not dist.main:
        torch.distributed.barrier()  # rank 0 downloads alone
    train_ds, val_ds, num_classes, in_channels = load_dataset(
        config.dataset,
        config.data_dir,
        image_size=config.image_size,
        subset=config.subset,
        val_subset=config.val_subset,
        seed=config.seed,
        val_dir=config.val_dir,
        download=config.download and dist.main,
    )
    if download_first and dist.main:
        torch.distributed.barrier()
    model, origin = load_model(config, num_classes)
    wanted = first_conv_in_channels(model)
    if wanted is not None and wanted != in_channels:
        train_ds = _with_channels(train_ds, wanted, config.model, config.dataset)
        val_ds = _with_channels(val_ds, wanted, config.model, config.dataset)
        in_channels = wanted
    example = val_ds[0][0].unsqueeze(0)
    outputs = output_size(model, example)
    if outputs != num_classes and origin == "built" and config.weights is not None:
        head = replace_head(model, num_classes)
        _log(dist, f"new {num_classes}-class head {head!r} on weights {config.weights} ({outputs} outputs)")
        outputs = output_size(model, example)
    if outputs != num_classes:
        raise ValueError(
            f"--model {config.model}: the model has {outputs} outputs but dataset {config.dataset!r} has "
            f"{num_classes} classes"
        )
    return _Prepared(model, origin, train_ds, val_ds, num_classes, in_channels, example)


def _train(config: TrainConfig, dist: Dist, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if dist.main:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    prepared = _prepare(config, dist)
    model = prepared.model.to(device)
    _log(dist, f"{prepared.origin} model {config.model} on {device} x{dist.world_size}; dataset {config.dataset}: "
               f"{len(prepared.train_ds)} train / {len(prepared.val_ds)} val, {prepared.num_classes} classes, "
               f"input {tuple(prepared.example.shape[1:])}")
    train_loader, val_loader = _loaders(config, prepared.train_ds, prepared.val_ds, dist, device)
    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = _scheduler(config, optimizer, len(train_loader))
    rule = _stop_rule(config)
    capture = _start_capture(config, model, dist)

    epochs: list[dict[str, Any]] = []
    best_accuracy, best_state = -1.0, None
    status, reason, step = "completed", None, 0
    try:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            train_loss, step = _train_epoch(net, train_loader, optimizer, scheduler, capture, config, dist, device,
                                            epoch, step)
            val_loss, val_accuracy = evaluate(net, val_loader, dist, device)
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy,
                      "seconds": time.perf_counter() - started, "steps": step, "lr": optimizer.param_groups[0]["lr"]}
            epochs.append(record)
            for name in ("val_accuracy", "val_loss", "train_loss"):
                capture.scalar(name, record[name])
            _log(dist, f"epoch {epoch}/{config.epochs} train_loss={train_loss:.4f} "
                       f"val_loss={val_loss:.4f} val_accuracy={val_accuracy:.4f} ({record['seconds']:.1f}s)")
            if val_accuracy > best_accuracy:
                best_accuracy = val_accuracy
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if rule is not None:
                result = rule.evaluate(config.baseline_accuracy, [e["val_accuracy"] for e in epochs])
                if result.fired:
                    status, reason = "stopped", result.reason
                    _log(dist, f"stop rule fired: {reason}")
                    break
            if config.max_steps is not None and step >= config.max_steps:
                break
    finally:
        capture.close()

    if not dist.main:
        return {"status": status, "reason": reason, "rank": dist.rank}
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    metrics = _finish(config, prepared, model, epochs, best_accuracy, status, reason, capture.path, dist)
    _log(dist, f"{status}: best_accuracy={best_accuracy:.4f} params={metrics['params']} macs={metrics['macs']} "
               f"-> {config.out_dir}")
    return metrics


def _train_epoch(net, loader, optimizer, scheduler, capture, config: TrainConfig, dist: Dist, device, epoch: int,
                 step: int) -> tuple[float, int]:
    """One pass over the training data (or up to --max-steps); returns (mean loss, global step)."""
    criterion = nn.CrossEntropyLoss()
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    net.train()
    loss_sum = seen = 0.0
    for x, y in _progress(loader, dist, desc=f"epoch {epoch}/{config.epochs}"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        capture.step()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        step += 1
        if config.max_steps is not None and step >= config.max_steps:
            break
    loss_sum, seen = _all_sum([loss_sum, seen], dist, device)
    return loss_sum / max(seen, 1.0), step


def _loaders(config, train_ds, val_ds, dist: Dist, device: torch.device):
    generator = torch.Generator().manual_seed(config.seed)
    if dist.enabled:
        train_sampler: Sampler = torch.utils.data.DistributedSampler(
            train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.seed
        )
    else:
        train_sampler = torch.utils.data.RandomSampler(train_ds, generator=generator)
    common = dict(batch_size=config.batch_size, num_workers=config.workers, pin_memory=device.type == "cuda",
                  persistent_workers=config.workers > 0)
    train_loader = DataLoader(train_ds, sampler=train_sampler, **common)
    val_loader = DataLoader(val_ds, sampler=ShardSampler(len(val_ds), dist.rank, dist.world_size), **common)
    return train_loader, val_loader


def _scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step cosine decay over the whole job (or --max-steps); None for a constant rate."""
    if config.lr_schedule == "constant":
        return None
    total = config.epochs * max(steps_per_epoch, 1)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))


def _stop_rule(config: TrainConfig):
    if config.stop_rule_threshold is None:
        return None
    from .rules import AccuracyDropRule

    return AccuracyDropRule(config.stop_rule_threshold, config.stop_rule_mode)


def _finish(config: TrainConfig, prepared: _Prepared, model: nn.Module, epochs: list[dict[str, Any]],
            best_accuracy: float, status: str, reason: str | None, trial_path: Path | None, dist: Dist) -> dict[str, Any]:
    """Measure the kept model, save it and write metrics.json (rank 0 only)."""
    from .model.measure import count, latency
    from .model.store import save

    example = prepared.example
    cost = count(model, example)
    latency_ms = latency(model, example) if config.measure_latency else None
    out_dir = Path(config.out_dir)
    metrics = {
        "status": status,
        "reason": reason,
        "epochs": epochs,
        "best_accuracy": best_accuracy,
        "final_accuracy": epochs[-1]["val_accuracy"] if epochs else None,
        "params": cost.params,
        "macs": cost.macs,
        "latency_ms": latency_ms,
        "trial": str(trial_path) if trial_path is not None else None,
        "model": str(out_dir),
        "dataset": config.dataset,
        "num_classes": prepared.num_classes,
        "in_channels": prepared.in_channels,
        "input_shape": list(example.shape[1:]),
        "train_size": len(prepared.train_ds),
        "val_size": len(prepared.val_ds),
        "class_counts": np.bincount(labels_of(prepared.train_ds), minlength=prepared.num_classes).tolist(),
        "world_size": dist.world_size,
        "baseline_accuracy": config.baseline_accuracy,
        "config": asdict(config),
    }
    save(model, out_dir, metadata={"accuracy": best_accuracy, "dataset": config.dataset, "source": config.model})
    write_metrics(config, metrics)
    return metrics


def write_metrics(config: TrainConfig, metrics: dict[str, Any]) -> None:
    """metrics.json beside the model, and in SageMaker's output-data and checkpoint folders when set."""
    targets: list[Path] = []
    for directory in (config.out_dir, config.metrics_dir, config.checkpoint_dir):
        if directory and Path(directory).resolve() not in targets:
            targets.append(Path(directory).resolve())
    for directory in targets:
        write_json_atomic(directory / "metrics.json", metrics)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON through a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> int:
    metrics = train(parse_args(argv))
    return EXIT_STOPPED if metrics.get("status") == "stopped" else 0


if __name__ == "__main__":
    sys.exit(main())
