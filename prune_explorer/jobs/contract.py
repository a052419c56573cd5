"""The job contract: what a fine-tuning job receives and what it must leave behind.

Any script that honours it — `prune_explorer.jobs.train` or a team's own training code — can be an
iteration's job, locally, under torchrun or in a SageMaker container.

A job RECEIVES (as `--key value` arguments; locations also from SageMaker's `SM_*` variables):
  the model to fine-tune   `--model` a saved model directory (model.json + model.safetensors), or an
                           architecture name with `--weights` (torchvision enum or local file) and
                           `--model-kwargs`; in a container the `model` channel (SM_CHANNEL_MODEL),
                           a weights file by name from the `weights` channel (SM_CHANNEL_WEIGHTS)
  hyperparameters          `--epochs`, `--batch-size`, `--lr`, `--seed`, `--image-size`, ... and any
                           others the script reads with `run.hyperparameter(name, default)`
  data                     `--data-dir` / `--val-dir` (SM_CHANNEL_TRAIN / SM_CHANNEL_TEST)
  where to write           `--out-dir` (SM_MODEL_DIR), `--checkpoint-dir` (SM_CHECKPOINT_DIR, the
                           trial goes to DIR/trial), `--metrics-dir` (SM_OUTPUT_DATA_DIR)
  the stop rule            `--stop-rule-threshold`, `--baseline-accuracy`, `--stop-rule-mode`
  a teacher (optional)     `--teacher` a saved model directory to distill from (SageMaker: the
                           `teacher` channel, SM_CHANNEL_TEACHER), `--distill-alpha`,
                           `--distill-temperature`; `--distill` names it (baseline | parent)

A job LEAVES in its out dir: the best epoch's model (model.json + model.safetensors), metrics.json
(per-epoch records, best/final accuracy, params, MACs, latency, status, input shape, the first
training batch's statistics) and a trial (smdebug, per-epoch `val_accuracy` scalars included).
Exit code 0 completed, 3 stopped by the rule, anything else failed (metrics.json then says why).

A script honours it in a few lines::

    from prune_explorer import job

    with job.start() as run:
        model = run.load_model(num_classes=10).to(run.device)
        hook = run.capture(model)
        for epoch in run.epochs():
            for x, y in loader:
                hook.step()
                ...                                   # the script's own step
            run.report(val_accuracy=accuracy)         # the stop rule runs here
    # with a teacher: loss = run.distill_loss(model(x), x, y)   (its logits, frozen, per batch)
    # leaving the block saves the best epoch's model and writes metrics.json
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from .distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, DISTILL_TEACHERS, Distilling, Teacher

EXIT_COMPLETED, EXIT_STOPPED = 0, 3
SAGEMAKER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")
LOG_EVERY_S = 30.0
CAPTURE_MODES = ("compact", "full", "none")
STOP_RULE_MODES = ("best", "latest")


# --- what a job receives -------------------------------------------------------------------------
@dataclass
class JobSpec:
    """The contract's options; field names are the command-line flags (`--batch-size` or `--batch_size`)."""

    default_model: ClassVar[str | None] = None  # used when neither --model nor a model channel is given

    model: str | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    val_dir: str | None = None
    out_dir: str | None = None
    checkpoint_dir: str | None = None
    metrics_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    image_size: int | None = None
    workers: int = 0
    max_steps: int | None = None
    capture: str = "compact"
    capture_every: int = 50
    stop_rule_threshold: float | None = None
    stop_rule_mode: str = "best"
    baseline_accuracy: float | None = None
    device: str | None = None
    measure_latency: bool = True
    teacher: str | None = None  # a saved model directory to distill from (default: SM_CHANNEL_TEACHER)
    distill: str | None = None  # which model the teacher is (baseline | parent), for the record
    distill_alpha: float = DEFAULT_ALPHA
    distill_temperature: float = DEFAULT_TEMPERATURE
    trust_model_code: tuple[str, ...] = ()  # modules a "pkg.mod:Class" model may come from (model/trust.py)
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the script's own (`--key value` beyond these)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        normalized = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalized) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**normalized)

    def validate(self):
        for name in ("epochs", "batch_size", "capture_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        if self.capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {self.capture!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.stop_rule_mode not in STOP_RULE_MODES:
            raise ValueError(f"stop_rule_mode must be 'best' or 'latest', got {self.stop_rule_mode!r}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha is the soft-target weight, in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if self.distill is not None and self.distill not in DISTILL_TEACHERS:
            raise ValueError(f"distill must be one of {DISTILL_TEACHERS}, got {self.distill!r}")
        if self.stop_rule_threshold is not None and self.baseline_accuracy is None:
            raise ValueError("--stop-rule-threshold needs --baseline-accuracy (the previous iteration's accuracy)")
        return self

    def resolved(self):
        """A copy with unset locations filled from SageMaker's environment (`resolve_locations`)."""
        return resolve_locations(self)


CONTRACT_HELP = {
    "model": "saved model directory (model.json) or architecture name (torchvision, or 'pkg.mod:Class'); "
             "default: the SageMaker model channel",
    "weights": "initial weights for an architecture name: torchvision enum (IMAGENET1K_V1) or local state-dict file",
    "model_kwargs": "JSON keyword arguments for the architecture constructor",
    "data_dir": "training data folder (default: SM_CHANNEL_TRAIN)",
    "val_dir": "separate validation folder (default: SM_CHANNEL_TEST)",
    "out_dir": "where model.json, model.safetensors, metrics.json go (default: SM_MODEL_DIR, else ./output)",
    "checkpoint_dir": "the trial goes to DIR/trial (default: SM_CHECKPOINT_DIR, /opt/ml/checkpoints on SageMaker, "
                      "else --out-dir)",
    "metrics_dir": "extra copy of metrics.json (default: SM_OUTPUT_DATA_DIR)",
    "epochs": "fine-tuning epochs",
    "batch_size": "batch size per process",
    "lr": "learning rate",
    "seed": "seed for subsets, splits, shuffling and initialisation",
    "image_size": "input size (resize/crop size for image folders)",
    "workers": "data loader worker processes",
    "max_steps": "stop training after this many steps in total",
    "capture": "trial capture mode: compact | full | none",
    "capture_every": "capture every N training steps",
    "stop_rule_threshold": "stop when accuracy falls this far below --baseline-accuracy",
    "stop_rule_mode": "compare the best (default) or latest epoch accuracy",
    "baseline_accuracy": "the previous iteration's accuracy, for the stop rule",
    "device": "cpu | cuda (default: cuda when available)",
    "measure_latency": "measure CPU latency of the final model (true/false)",
    "teacher": "saved model directory to distill from (default: the SageMaker teacher channel)",
    "distill": "which model the teacher is: baseline | parent (recorded; the teacher itself is --teacher)",
    "distill_alpha": "weight of the teacher's soft targets: (1-a)*CE + a*T^2*KL",
    "distill_temperature": "softmax temperature T of the distillation term",
    "trust_model_code": "comma-separated modules whose nn.Module classes --model (or its model.json) may name, e.g. "
                        "mypkg; without it only torchvision architectures and registered classes are built",
}


def optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argument type that reads '', 'none' and 'null' as None (SageMaker sends every value as text)."""
    def parse(text: str):
        return None if text.strip().lower() in ("", "none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (or a Python dict literal, as `str(dict)` gives)."""
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


def module_names(text: str) -> tuple[str, ...]:
    """Module names as a command line gives them: "a,b" (or a JSON list)."""
    from ..model.trust import trusted_modules

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    try:
        return trusted_modules(value if isinstance(value, (str, list)) else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


CONTRACT_TYPES: dict[str, Callable[[str], Any]] = {
    "model": optional(str), "weights": optional(str), "model_kwargs": json_object,
    "data_dir": optional(str), "val_dir": optional(str), "out_dir": optional(str),
    "checkpoint_dir": optional(str), "metrics_dir": optional(str),
    "epochs": int, "batch_size": int, "lr": float, "seed": int, "image_size": optional(int), "workers": int,
    "max_steps": optional(int), "capture": str, "capture_every": int,
    "stop_rule_threshold": optional(float), "stop_rule_mode": str, "baseline_accuracy": optional(float),
    "teacher": optional(str), "distill": optional(str), "distill_alpha": float, "distill_temperature": float,
    "device": optional(str), "measure_latency": flag, "trust_model_code": module_names,
}


def build_parser(spec_cls: type = JobSpec, types: dict | None = None, helps: dict | None = None,
                 prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """A parser with one `--name` option per field of `spec_cls` (both dash and underscore spellings)."""
    types = {**CONTRACT_TYPES, **(types or {})}
    helps = {**CONTRACT_HELP, **(helps or {})}
    parser = argparse.ArgumentParser(prog=prog, description=description)
    defaults = spec_cls()
    for name in (f.name for f in fields(spec_cls) if f.name != "hyperparameters"):
        kind = types[name]
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        switch = dict(nargs="?", const=True) if kind is flag else {}
        parser.add_argument(*flags, dest=name, type=kind, default=getattr(defaults, name), help=helps.get(name),
                            **switch)
    return parser


def script_hyperparameters(arguments: Sequence[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` / `--switch` beyond the contract's options, values JSON-decoded when they parse."""
    out: dict[str, Any] = {}
    items = list(arguments)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) == 2:
            raise ValueError(f"unexpected argument {item!r}: hyperparameters come as --name value")
        key, has_value, text = item[2:].partition("=")
        if not has_value:
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                text, i = items[i + 1], i + 1
            else:
                text = "true"
        out[key.replace("-", "_")] = _decode(text)
        i += 1
    return out


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_spec(argv: Sequence[str] | None = None, spec_cls: type = JobSpec, types: dict | None = None,
               helps: dict | None = None, prog: str | None = None, description: str | None = None):
    """Parse a job's arguments into `spec_cls`; arguments beyond its options land in `.hyperparameters`."""
    parser = build_parser(spec_cls, types, helps, prog, description)
    args, rest = parser.parse_known_args(argv)
    spec = spec_cls(**vars(args))
    spec.hyperparameters = script_hyperparameters(rest)
    return spec.validate()


def resolve_locations(spec):
    """A copy with unset locations filled from SageMaker's environment variables and directories."""
    env = os.environ
    resolved = copy.copy(spec)
    if resolved.model is None:
        channel = env.get("SM_CHANNEL_MODEL")
        resolved.model = channel if channel and (Path(channel) / "model.json").is_file() else spec.default_model
    weights_channel = env.get("SM_CHANNEL_WEIGHTS")
    if resolved.weights and weights_channel and not Path(resolved.weights).exists() \
            and (Path(weights_channel) / resolved.weights).is_file():
        resolved.weights = str(Path(weights_channel) / resolved.weights)  # a local file shipped as a channel
    if resolved.teacher is None:
        channel = env.get("SM_CHANNEL_TEACHER")
        if channel and (Path(channel) / "model.json").is_file():
            resolved.teacher = channel
    if resolved.data_dir is None:
        resolved.data_dir = env.get("SM_CHANNEL_TRAIN")
    if resolved.val_dir is None and resolved.data_dir == env.get("SM_CHANNEL_TRAIN"):
        resolved.val_dir = env.get("SM_CHANNEL_TEST") or env.get("SM_CHANNEL_VALIDATION") or env.get("SM_CHANNEL_VAL")
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


def trial_dir(spec) -> Path:
    return Path(spec.checkpoint_dir or spec.out_dir) / "trial"


# --- distributed ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 otherwise)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str | None) -> tuple[Dist, torch.device]:
    """Join the torchrun process group (gloo on CPU, nccl on GPU) when WORLD_SIZE > 1; pick the device."""
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


def all_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
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


# --- what a job leaves ---------------------------------------------------------------------------
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


def mask_output() -> None:
    """Mask credentials in everything this process prints from now on (a job's log; `masking.py`)."""
    from ..masking import MaskedStream

    if not isinstance(sys.stdout, MaskedStream):
        sys.stdout = MaskedStream(sys.stdout)
    if not isinstance(sys.stderr, MaskedStream):
        sys.stderr = MaskedStream(sys.stderr)


def write_metrics(spec, metrics: dict[str, Any]) -> None:
    """metrics.json beside the model, and in SageMaker's output-data and checkpoint folders when set
    (credentials masked: its config and reason are read back and shown)."""
    from ..masking import mask_values

    metrics = mask_values(metrics)
    targets: list[Path] = []
    for directory in (spec.out_dir, spec.metrics_dir, spec.checkpoint_dir):
        if directory and Path(directory).resolve() not in targets:
            targets.append(Path(directory).resolve())
    for directory in targets:
        write_json_atomic(directory / "metrics.json", metrics)


class RuleStopped(SystemExit):
    """The accuracy-drop rule fired: the job has saved its best model and ends with exit code 3."""

    def __init__(self, metrics: dict[str, Any]):
        super().__init__(EXIT_STOPPED)
        self.metrics = metrics


def batch_statistics(x: torch.Tensor) -> dict[str, Any]:
    """Shape and per-channel mean/std/min/max of an image batch (N, C, ...): what the model was fed."""
    flat = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)
    return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
            "mean": flat.mean(1).tolist(), "std": flat.std(1, unbiased=False).tolist(),
            "min": flat.min(1).values.tolist(), "max": flat.max(1).values.tolist()}


class _NoCapture:
    path = None

    def step(self) -> None:
        pass

    def scalar(self, name: str, value: float) -> None:
        pass

    def close(self) -> None:
        pass


class _Capture:
    """The CaptureHook, plus the per-epoch scalars the stop rule reads."""

    def __init__(self, model: nn.Module, path: Path, mode: str, every: int):
        from ..signals.capture import CaptureHook

        self.path = path
        self.hook = CaptureHook(model, str(path), mode=mode, save_every=every)

    def step(self) -> None:
        self.hook.step()

    def scalar(self, name: str, value: float) -> None:
        self.hook.save_scalar(name, float(value))

    def close(self) -> None:
        self.hook.close()


class JobContext(Distilling):
    """One running job: its spec, process rank and device, and the record it leaves.

    Use it as a context manager (`with job.start() as run:`): leaving the block normally saves the
    best epoch's model and writes metrics.json; an exception writes metrics.json with status
    "failed" and the reason, then propagates. `report` ends the job (exit code 3, SystemExit) when
    the stop rule fires, after saving as on a normal end.
    """

    def __init__(self, spec: JobSpec, log_prefix: str = "job"):
        self.spec = spec.validate().resolved()
        self.log_prefix = log_prefix
        self.dist, self.device = init_distributed(self.spec.device)
        self.records: list[dict[str, Any]] = []
        self.best_accuracy = -1.0
        self.model: nn.Module | None = None
        self.built = False
        self.finished: dict[str, Any] | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._capture: _Capture | _NoCapture = _NoCapture()
        self._watch: Any = None
        self._example: torch.Tensor | None = None
        self._first_batch: dict[str, Any] | None = None
        self._epoch_started = time.perf_counter()
        self._epoch_cpu = time.process_time()
        self._teacher: Teacher | None = None
        self._samplers: list[Any] = []
        self._read: set[str] = set()
        self._rule = None
        if self.spec.stop_rule_threshold is not None:
            from ..loop.rules import AccuracyDropRule

            self._rule = AccuracyDropRule(self.spec.stop_rule_threshold, self.spec.stop_rule_mode)
        torch.manual_seed(self.spec.seed)
        if self.dist.main:
            Path(self.spec.out_dir).mkdir(parents=True, exist_ok=True)

    # --- context manager ---------------------------------------------------------------------
    def __enter__(self) -> "JobContext":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is None and self.finished is None:
                try:
                    self.finish()
                except BaseException as error:
                    self.fail(error)
                    raise
            elif exc is not None and not isinstance(exc, RuleStopped) and self.finished is None:
                self.fail(exc)
        finally:
            self.close()
        return False

    # --- what the script asks for ------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.main

    def log(self, message: str) -> None:
        if self.dist.main:
            print(f"[{self.log_prefix}] {message}", flush=True)

    def progress(self, iterable, desc: str):
        """A tqdm bar on a terminal; in a job log (no terminal), a plain line every LOG_EVERY_S seconds."""
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            return tqdm(iterable, desc=desc, disable=not self.dist.main, leave=False)
        return self._logged(iterable, desc)

    def _logged(self, iterable, desc: str):
        total, last = len(iterable), time.monotonic()
        for done, item in enumerate(iterable, 1):
            yield item
            if time.monotonic() - last >= LOG_EVERY_S:
                self.log(f"{desc}: {done}/{total} batches")
                last = time.monotonic()

    def hyperparameter(self, name: str, default: Any = None, kind: Callable[[Any], Any] | None = None) -> Any:
        """The script's own hyperparameter `name` (e.g. label_smoothing), else `default`.

        Converted with `kind`, or to the type of a given `default`. Hyperparameters no script read are
        listed in metrics.json (`unused_hyperparameters`), so a flag the script ignores is visible.
        """
        key = name.replace("-", "_")
        if key in {f.name for f in fields(self.spec)}:
            raise ValueError(f"hyperparameter {name!r} is a contract option: read run.spec.{key}")
        self._read.add(key)
        if key not in self.spec.hyperparameters:
            return default
        value = self.spec.hyperparameters[key]
        kind = kind or (type(default) if default is not None and not isinstance(default, bool) else None)
        if isinstance(default, bool) and not isinstance(value, bool):
            kind = flag
        try:
            return kind(value) if kind is not None else value
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"hyperparameter {name}={value!r}: {exc}") from exc

    def load_model(self, num_classes: int | None = None, example_inputs: torch.Tensor | None = None, *,
                   fit_head: bool = True) -> nn.Module:
        """The model to fine-tune (on the CPU), which the job saves at the end (its best epoch).

        A saved model directory is loaded as it is; an architecture name is built with `--weights`
        and `--model-kwargs` (without weights, `num_classes` goes to the constructor). With
        `num_classes` the head is fitted to the data (`fit_head`) unless `fit_head=False`.
        """
        from ..model.zoo import build_from_spec

        spec = self.spec
        if spec.model is None:
            raise ValueError("no model to fine-tune: pass --model (a saved model directory or an architecture name)")
        source = Path(spec.model)
        if (source / "model.json").is_file():
            from ..model.store import load

            model, self.built = load(source, trust_code=spec.trust_model_code), False
        elif source.exists() or os.sep in spec.model:
            raise FileNotFoundError(f"--model {spec.model}: not a saved model directory (no model.json in it)")
        else:
            kwargs = dict(spec.model_kwargs)
            if spec.weights is None and num_classes is not None:
                kwargs.setdefault("num_classes", num_classes)
            model = build_from_spec({"arch": spec.model, "kwargs": kwargs}, trust_code=spec.trust_model_code,
                                    where="--model", weights=spec.weights)
            self.built = True
        self.model = model
        if num_classes is not None and fit_head:
            self.fit_head(model, num_classes, example_inputs)
        return model

    def fit_head(self, model: nn.Module, num_classes: int, example_inputs: torch.Tensor | None = None) -> None:
        """Make the model's outputs match the data's classes: a pretrained start (built with --weights)
        gets a fresh last Linear layer; any other mismatch is an error naming the model.

        The outputs are counted on `example_inputs` when given, else read from the last Linear layer.
        """
        from ..model.zoo import output_size, replace_head

        outputs = output_size(model, example_inputs)
        if outputs is not None and outputs != num_classes and self.built and self.spec.weights is not None:
            head = replace_head(model, num_classes)
            self.log(f"new {num_classes}-class head {head!r} on weights {self.spec.weights} ({outputs} outputs)")
            outputs = output_size(model, example_inputs)
        if outputs is not None and outputs != num_classes:
            dataset = getattr(self.spec, "dataset", None)
            data = f"dataset {dataset!r}" if dataset else "the data"
            raise ValueError(f"--model {self.spec.model}: the model has {outputs} outputs but {data} has "
                             f"{num_classes} classes")

    def capture(self, model: nn.Module | None = None) -> _Capture | _NoCapture:
        """Start the trial (CaptureHook on rank 0, unless --capture none); call `.step()` every training step.

        Also records the first training batch the model sees (shape and per-channel statistics, in
        metrics.json as `first_batch`) and one example of it for measuring the saved model.
        """
        model = self._register(model)
        self._watch = model.register_forward_pre_hook(self._see_batch)
        if self.spec.capture == "none" or not self.dist.main:
            return self._capture
        path = trial_dir(self.spec)
        if path.exists():
            shutil.rmtree(path)
        self._capture = _Capture(model, path, self.spec.capture, self.spec.capture_every)
        return self._capture

    def distribute(self, model: nn.Module) -> nn.Module:
        """The model wrapped in DistributedDataParallel under torchrun; the model itself otherwise."""
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def train_sampler(self, dataset: Dataset) -> Sampler:
        """Shuffled from --seed, sharded across processes under torchrun (re-shuffled by `epochs()`)."""
        if self.dist.enabled:
            sampler: Sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.spec.seed)
        else:
            sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(self.spec.seed))
        self._samplers.append(sampler)
        return sampler

    def val_sampler(self, dataset: Dataset) -> Sampler:
        """In order; each example evaluated by exactly one process."""
        return ShardSampler(len(dataset), self.dist.rank, self.dist.world_size)

    def epochs(self) -> Iterator[int]:
        """1 … --epochs; starts each epoch's clock and re-shuffles the distributed samplers."""
        for epoch in range(len(self.records) + 1, self.spec.epochs + 1):
            for sampler in self._samplers:
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
            self._epoch_started = time.perf_counter()
            self._epoch_cpu = time.process_time()
            yield epoch

    def evaluate(self, model: nn.Module, loader, loss: nn.Module | None = None) -> tuple[float, float]:
        """(mean loss, accuracy) over the whole validation set, summed across processes."""
        loss = loss or nn.CrossEntropyLoss()
        model.eval()
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for x, y in self.progress(loader, "eval"):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                out = model(x)
                loss_sum += float(loss(out, y)) * len(y)
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
        loss_sum, correct, count = all_sum([loss_sum, correct, count], self.dist, self.device)
        if count == 0:
            raise ValueError("the validation set is empty")
        return loss_sum / count, correct / count

    # --- what the job leaves ------------------------------------------------------------------
    def report(self, val_accuracy: float, *, model: nn.Module | None = None, epoch: int | None = None,
               **values: float) -> dict[str, Any]:
        """Record one epoch (accuracy in [0, 1], plus any numbers: train_loss, val_loss, lr, ...).

        Keeps the best epoch's weights, writes the numbers as trial scalars and checks the stop rule;
        when the rule fires the job is finished (status "stopped") and ends: RuleStopped, exit code 3.
        """
        model = self._register(model)
        record = {"epoch": epoch or len(self.records) + 1, **values, "val_accuracy": float(val_accuracy),
                  "seconds": time.perf_counter() - self._epoch_started,
                  "cpu_seconds": time.process_time() - self._epoch_cpu}
        self.records.append(record)
        for name, value in record.items():
            if name not in ("epoch", "seconds", "cpu_seconds") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._capture.scalar(name, value)
        shown = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds", "cpu_seconds")
                         and isinstance(v, float))
        self.log(f"epoch {record['epoch']}/{self.spec.epochs} {shown} ({record['seconds']:.1f}s)")
        if record["val_accuracy"] > self.best_accuracy:
            self.best_accuracy = record["val_accuracy"]
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self._rule is not None:
            verdict = self._rule.evaluate(self.spec.baseline_accuracy, [r["val_accuracy"] for r in self.records])
            if verdict.fired:
                self.log(f"stop rule fired: {verdict.reason}")
                raise RuleStopped(self.finish(status="stopped", reason=verdict.reason))
        return record

    def finish(self, model: nn.Module | None = None, *, example_inputs: torch.Tensor | None = None,
               status: str = "completed", reason: str | None = None,
               metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save the best epoch's model and write metrics.json (rank 0); returns the metrics.

        `example_inputs` (one batch shaped like the data) measures params/MACs/latency; by default
        one example of the first training batch. `metrics` adds the script's own fields.
        """
        if self.finished is not None:
            return self.finished
        self._capture.close()
        if self._watch is not None:
            self._watch.remove()
        if not self.dist.main:
            self.finished = {"status": status, "reason": reason, "rank": self.dist.rank}
            self._barrier()
            return self.finished
        model = self._register(model)
        if not self.records:
            raise RuntimeError("the job reported no epoch: call run.report(val_accuracy=...) after each epoch")
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
        model.to("cpu").eval()
        example = example_inputs if example_inputs is not None else self._example
        if example is None:
            raise RuntimeError("finish() needs example_inputs: the model saw no forward pass while captured")
        self.finished = self._save(model, example.to("cpu"), status, reason, metrics or {})
        self.log(f"{status}: best_accuracy={self.best_accuracy:.4f} params={self.finished['params']} "
                 f"macs={self.finished['macs']} -> {self.spec.out_dir}")
        self._barrier()
        return self.finished

    def fail(self, exc: BaseException) -> None:
        """Leave metrics.json with status "failed" and the reason (rank 0)."""
        self._capture.close()
        if self.dist.main:
            write_metrics(self.spec, {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                                      "config": asdict(self.spec)})

    def close(self) -> None:
        if self.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    @property
    def exit_code(self) -> int:
        return EXIT_STOPPED if (self.finished or {}).get("status") == "stopped" else EXIT_COMPLETED

    # --- internals ----------------------------------------------------------------------------
    def _register(self, model: nn.Module | None) -> nn.Module:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if model is not None:
            self.model = model
        if self.model is None:
            raise ValueError("no model yet: get it with run.load_model(...) or pass model=")
        return self.model

    def _see_batch(self, module: nn.Module, args: tuple) -> None:
        if self._first_batch is not None or not module.training or not args or not torch.is_tensor(args[0]):
            return
        x = args[0]
        self._first_batch = batch_statistics(x)
        self._example = x[:1].detach().to("cpu", copy=True)

    def _barrier(self) -> None:
        if self.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank leaves after rank 0 has written its files

    def _save(self, model: nn.Module, example: torch.Tensor, status: str, reason: str | None,
              extra: dict[str, Any]) -> dict[str, Any]:
        from ..model.measure import count, latency
        from ..model.store import save

        cost = count(model, example)
        unused = sorted(set(self.spec.hyperparameters) - self._read)
        if unused:
            self.log(f"hyperparameters this script did not read: {', '.join(unused)}")
        metrics = {
            "status": status,
            "reason": reason,
            "epochs": self.records,
            "best_accuracy": self.best_accuracy,
            "final_accuracy": self.records[-1]["val_accuracy"],
            "params": cost.params,
            "macs": cost.macs,
            "latency_ms": latency(model, example) if self.spec.measure_latency else None,
            "trial": str(self._capture.path) if self._capture.path is not None else None,
            "model": str(self.spec.out_dir),
            "input_shape": list(example.shape[1:]),
            "first_batch": self._first_batch,
            "world_size": self.dist.world_size,
            "baseline_accuracy": self.spec.baseline_accuracy,
            "script": _program(),
            "unused_hyperparameters": unused,
            **self.teacher_record(),
            **extra,
            "config": asdict(self.spec),
        }
        metadata = {"accuracy": self.best_accuracy, "source": self.spec.model}
        if "dataset" in extra:
            metadata["dataset"] = extra["dataset"]
        save(model, self.spec.out_dir, metadata=metadata)
        write_metrics(self.spec, metrics)
        return metrics


def _program() -> str | None:
    """What runs this job: the module for `python -m` ("prune_explorer.jobs.train"), else the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        return spec.name
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None


def start(argv: Sequence[str] | None = None, *, log_prefix: str = "job") -> JobContext:
    """Parse this job's arguments (sys.argv by default) and SageMaker's environment; join torchrun's group.

    A job is a process of its own: from here on what it prints (its log) has credentials masked.
    """
    mask_output()
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None
    return JobContext(parse_spec(argv, prog=prog), log_prefix=log_prefix)
