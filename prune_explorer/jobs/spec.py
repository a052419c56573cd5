"""The job contract, what a job receives: `JobSpec` (the contract's options), parsed from `--key value`
arguments (`parse_spec`; anything beyond the options lands in `.hyperparameters`), and its locations
filled from SageMaker's `SM_*` variables (`resolve_locations`). Torch-free, so the CLI can build its
parser from it; `jobs.contract` re-exports every name.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from ..workspace import layout
from ..workspace.layout import has_model

SAGEMAKER_CHECKPOINT_DIR = Path("/opt/ml/checkpoints")
CAPTURE_MODES = ("compact", "full", "none")
STOP_RULE_MODES = ("best", "latest")
DISTILL_TEACHERS = ("baseline", "parent")  # which model of the workspace teaches (loop.step.submit resolves it)
DEFAULT_ALPHA = 0.9        # weight of the soft-target term; CRD's KD baseline (Tian et al. 2020), Hinton's
DEFAULT_TEMPERATURE = 4.0  # "considerably lower weight on the hard targets", at its usual T = 4


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
        at_least_one(self, ("epochs", "batch_size", "capture_every"))
        at_least_one(self, ("max_steps", "image_size"), optional=True)
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


def at_least_one(spec, names: Sequence[str], optional: bool = False) -> None:
    """ValueError naming the first of `names` below 1 (with `optional`, of those given)."""
    for name in names:
        value = getattr(spec, name)
        if optional and value is None:
            continue
        if value < 1:
            raise ValueError(f"{name} must be >= 1{' when given' if optional else ''}, got {value}")


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
    "device": optional(str), "measure_latency": flag, "trust_model_code": module_names,
    "teacher": optional(str), "distill": optional(str), "distill_alpha": float, "distill_temperature": float,
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
        resolved.model = channel if channel and has_model(channel) else spec.default_model
    weights_channel = env.get("SM_CHANNEL_WEIGHTS")
    if resolved.weights and weights_channel and not Path(resolved.weights).exists() \
            and (Path(weights_channel) / resolved.weights).is_file():
        resolved.weights = str(Path(weights_channel) / resolved.weights)  # a local file shipped as a channel
    if resolved.teacher is None:
        channel = env.get("SM_CHANNEL_TEACHER")
        if channel and has_model(channel):
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
    return layout.trial_dir(spec.checkpoint_dir or spec.out_dir)
