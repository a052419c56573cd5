"""Training-time capture of what filter ranking needs, written as a real smdebug trial.

Usage in any training loop::

    with CaptureHook(model, "trial/", mode="compact", save_every=50) as hook:
        for x, y in loader:
            hook.step()
            loss = criterion(model(x), y)
            loss.backward()
            ...

Forward hooks count the calls of each watched module per forward pass, so a module used twice
(torchvision ResNet's ReLU) is two taps. Output gradients come from `tensor.register_hook` on the
forward output (module backward hooks fail on in-place ReLU). Only steps that run backward count.

Tensor names written (module = `model.named_modules()` name, call = 0, 1, … per forward pass):

mode "full" (whole tensors on every `save_every`-th step; readable by the AWS example's notebook):
    ``{module}_{call}_output_0``                 activation of a tap
    ``gradient/{module}_{call}_{Class}_output``  gradient of that activation (Class: `ReLU`, …);
                                                 unique per call, unlike the example's name
    ``{Model}_{param}``                          parameters of the modules of prunable groups,
                                                 e.g. ``ResNet_layer1.0.conv1.weight``
    ``{bn}.running_mean_output_0`` / ``{bn}.running_var_output_0``  batch-norm statistics

mode "compact" (per-channel sums over EVERY step since the last saved record, one record per
`save_every` steps; a reader sums the records):
    ``compact/{module}_{call}/taylor``      Σ over examples of |mean over h,w of a·g|   (Molchanov)
    ``compact/{module}_{call}/taylor_aws``  Σ over batches of mean over batch,h,w of a·g (signed;
                                            the AWS example takes |·| after summing)
    ``compact/{module}_{call}/taylor_sq``   Σ over batches of (Σ over batch,h,w of a·g)²: the squared
                                            first-order Taylor term of a per-channel gate on the tap's
                                            output, one per minibatch (Molchanov et al. 2019; the
                                            `taylor_global` criterion). Trials written before it
                                            existed lack it: that criterion refuses them, the others
                                            still read them.
    ``compact/{module}_{call}/activation``  Σ over examples of mean over h,w of a
    ``compact/{module}_{call}/zeros``       Σ over examples of the fraction of zeros over h,w (APoZ)
    ``compact/{module}_{call}/examples``    examples seen, ``…/batches`` batches seen
    ``compact/{producer}/weight_l1`` / ``weight_l2``  per-filter norms of producer weights
    ``compact/steps``                       training steps the record covers

Next to the smdebug files, ``prune_explorer.json`` records the mode, the taps, the model's base
spec (`models.build_model` tag) and input size, so `prune-explorer rank` can rebuild the model.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..model.kinds import recorded_kind
from . import smdebug_compat  # noqa: F401  (installs the numpy-2 fixes before smdebug writes)
from smdebug.core.access_layer.utils import has_training_ended, training_has_ended
from smdebug.core.collection import Collection
from smdebug.core.collection_manager import CollectionManager
from smdebug.core.utils import is_s3
from smdebug.core.writer import FileWriter

META_FILE = "prune_explorer.json"
META_FORMAT = 1
MODES = ("compact", "full")
COMPACT_STATS = ("taylor", "taylor_aws", "activation", "zeros")
COMPACT_LATER = ("taylor_sq",)   # written since issue 13; a trial from before lacks them
COMPACT_COUNTS = ("examples", "batches")

TapKey = tuple[str, int]


def activation_name(module: str, call: int) -> str:
    return f"{module}_{call}_output_0"


def gradient_name(module: str, call: int, cls: str) -> str:
    return f"gradient/{module}_{call}_{cls}_output"


def param_name(model_cls: str, param: str) -> str:
    return f"{model_cls}_{param}"


def compact_name(module: str, call: int, stat: str) -> str:
    return f"compact/{module}_{call}/{stat}"


def weight_norm_name(producer: str, norm: str) -> str:
    return f"compact/{producer}/weight_{norm}"


@dataclass
class _Accumulator:
    """Per-channel sums of one tap since the last saved record (tensors on the model's device)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: int = 0
    batches: int = 0

    def add(self, a: torch.Tensor, g: torch.Tensor) -> None:
        if a.dtype not in (torch.float32, torch.float64):
            a, g = a.float(), g.float()
        a3 = a.reshape(a.shape[0], a.shape[1], -1)
        per_example = (a3 * g.reshape(a3.shape)).mean(-1)
        nonzero = a3.sign().abs_().mean(-1)          # count_nonzero is several times slower on CPU
        gate = per_example.sum(0) * a3.shape[-1]      # d loss / d gate of each channel, this minibatch
        update = {
            "taylor": per_example.abs().sum(0),
            "taylor_aws": per_example.mean(0),
            "taylor_sq": gate.double().square(),
            "activation": a3.mean(-1).sum(0),
            "zeros": (1 - nonzero).sum(0),
        }
        for key, value in update.items():
            value = value.double()
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value
        self.examples += a.shape[0]
        self.batches += 1


class CaptureHook:
    """Watch a model's channel-group taps during training and write an smdebug trial.

    taps: None for every tap of every prunable group (`ChannelGraph`, traced from
    `example_inputs`, or from the first batch when none are given), or an explicit list of
    (module, call) pairs / `Tap`s. out_dir: a local directory or an s3:// prefix. Under torchrun
    each process writes its own worker's files (worker_<RANK>); the reader sums them.
    """

    def __init__(
        self,
        model: nn.Module,
        out_dir: str | os.PathLike,
        taps: Iterable[Any] | None = None,
        *,
        mode: str = "compact",
        save_every: int = 100,
        example_inputs: Any = None,
        graph: Any = None,
        model_info: dict | None = None,
        worker: str | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if int(save_every) < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every!r}")
        self.model = model
        self.out_dir = str(out_dir)
        self.mode = mode
        self.save_every = int(save_every)
        self.model_info = dict(model_info or {})
        self.worker = worker or f"worker_{int(os.environ.get('RANK', 0))}"   # one per torchrun process
        self._check_out_dir()
        self._names = {m: n for n, m in model.named_modules()}
        self._model_cls = model._get_name()
        self._explicit_taps = None if taps is None else [_tap_key(t) for t in taps]
        # channels-last taps (a Linear's output in a ConvNeXt block): channel axis per tap, moved to dim 1
        self._axes: dict[TapKey, int] = {} if taps is None else {
            _tap_key(t): int(t.axis) for t in taps if getattr(t, "axis", 1) != 1}
        self._graph = graph
        self._taps: set[TapKey] | None = None
        self._weight_modules: list[str] = []
        self._handles: list[Any] = []
        self._calls: dict[str, int] = defaultdict(int)
        self._acc: dict[TapKey, _Accumulator] = {}
        self._clone: set[TapKey] = set()
        self._pending_steps = 0
        self._step = -1
        self._writer: FileWriter | None = None
        self._weights_due = False
        self._started = False
        self._closed = False
        self._input_size: list[int] | None = None
        if example_inputs is not None:
            self._input_size = _input_size(example_inputs)
        if self._explicit_taps is not None or graph is not None or example_inputs is not None:
            self._setup(example_inputs)
        else:
            self._handles.append(model.register_forward_pre_hook(self._setup_on_first_batch))

    # --- public -------------------------------------------------------------------------------
    @property
    def taps(self) -> list[TapKey]:
        return sorted(self._taps or ())

    @property
    def step_number(self) -> int:
        return self._step

    def step(self) -> None:
        """Mark the start of a training step (call before the forward pass)."""
        if self._closed:
            raise RuntimeError("CaptureHook is closed")
        if self._step >= 0:
            self._end_step()
        self._step += 1
        self._calls.clear()
        if self.mode == "full" and self._step % self.save_every == 0:
            self._weights_due = True

    def save_scalar(self, name: str, value: float) -> None:
        """Record `scalar/{name}` at the current step (e.g. an epoch's accuracy, read by loop/rules.py)."""
        if self._closed:
            raise RuntimeError("CaptureHook is closed")
        if self._step < 0:
            raise RuntimeError("save_scalar needs a training step first (call step())")
        self._write_tensor(f"scalar/{name}", np.array([float(value)], np.float64))

    def close(self) -> None:
        """Write what is pending, remove the hooks and mark the trial finished."""
        if self._closed:
            return
        if self._step >= 0:
            self._end_step(final=True)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._start_trial()
        training_has_ended(self.out_dir)
        self._closed = True

    def __enter__(self) -> "CaptureHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- setup --------------------------------------------------------------------------------
    def _check_out_dir(self) -> None:
        if is_s3(self.out_dir)[0]:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        if has_training_ended(self.out_dir):
            raise ValueError(f"{self.out_dir} already holds a finished trial; capture into a new directory")

    def _setup_on_first_batch(self, module: nn.Module, args: tuple, kwargs: Any = None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        example = args[0] if len(args) == 1 else args
        example = _first_example(example)
        self._input_size = _input_size(example)
        self._setup(example)
        self._on_model_forward(module, args)

    def _setup(self, example_inputs: Any) -> None:
        graph = self._graph
        if graph is None and example_inputs is not None:
            graph = _trace(self.model, example_inputs)
        if self._explicit_taps is not None:
            self._taps = set(self._explicit_taps)
        elif graph is not None:
            self._taps = {(t.module, t.call) for g in graph.prunable() for t in g.taps}
            self._axes = {(t.module, t.call): t.axis for g in graph.prunable() for t in g.taps if t.axis != 1}
        else:
            raise ValueError("CaptureHook needs taps, a graph or example_inputs")
        unknown = sorted({m for m, _ in self._taps} - set(self._names.values()))
        if unknown:
            raise ValueError(f"taps name modules the model does not have: {unknown}")
        self._weight_modules = _weight_modules(self.model, graph)
        modules = dict(self.model.named_modules())
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_forward))
        for name in sorted({m for m, _ in self._taps}):
            self._handles.append(modules[name].register_forward_hook(self._on_output))

    # --- hooks (hot path: torch ops only) -----------------------------------------------------
    def _on_model_forward(self, module: nn.Module, args: tuple) -> None:
        if self._step < 0:
            self.step()
        self._calls.clear()
        if self._weights_due and torch.is_grad_enabled() and self.model.training:
            self._weights_due = False
            self._write_weights()

    def _on_output(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        name = self._names[module]
        call = self._calls[name]
        self._calls[name] = call + 1
        key = (name, call)
        if key not in self._taps or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        axis = self._axes.get(key, 1)
        if self.mode == "full":
            if self._step % self.save_every == 0:
                self._write_tensor(activation_name(name, call), output.detach().movedim(axis, 1))
                cls = module._get_name()
                output.register_hook(partial(self._on_full_grad, gradient_name(name, call, cls), axis))
            return
        saved = output.detach().movedim(axis, 1)
        if key in self._clone:
            saved = saved.clone()
        output.register_hook(partial(self._on_compact_grad, key, saved, saved._version, axis))

    def _on_compact_grad(self, key: TapKey, activation: torch.Tensor, version: int, axis: int,
                         grad: torch.Tensor) -> None:
        grad = grad.movedim(axis, 1)
        if activation._version != version:
            # Modified in place after the hook (e.g. `out += identity`): copy it from now on.
            self._clone.add(key)
            return
        with torch.no_grad():
            self._acc.setdefault(key, _Accumulator()).add(activation, grad.detach())

    def _on_full_grad(self, tensor_name: str, axis: int, grad: torch.Tensor) -> None:
        self._write_tensor(tensor_name, grad.detach().movedim(axis, 1))

    # --- writing ------------------------------------------------------------------------------
    def _end_step(self, final: bool = False) -> None:
        if self.mode == "compact":
            self._pending_steps += 1
            if (self._step + 1) % self.save_every == 0 or (final and self._acc):
                self._write_compact()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _step_writer(self) -> FileWriter:
        if self._writer is None:
            self._start_trial()
            self._writer = FileWriter(trial_dir=self.out_dir, step=self._step, worker=self.worker)
        return self._writer

    def _write_tensor(self, name: str, value: torch.Tensor | np.ndarray) -> None:
        if isinstance(value, torch.Tensor):
            value = value.cpu().numpy()
        self._step_writer().write_tensor(tdata=value, tname=name)

    def _write_compact(self) -> None:
        for (module, call), acc in sorted(self._acc.items()):
            for stat in COMPACT_STATS + COMPACT_LATER:
                self._write_tensor(compact_name(module, call, stat), acc.sums[stat])
            for stat in COMPACT_COUNTS:
                self._write_tensor(compact_name(module, call, stat), np.array([getattr(acc, stat)], np.int64))
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name in self._weight_modules:
                # norms of filters only: a norm layer (possibly affine=False, weight None) has none
                module = modules[name]
                kind = recorded_kind(module)
                if kind is None or not kind.has_filters:
                    continue
                flat = kind.filters(module.weight.detach(), getattr(module, "groups", 1)).double()
                self._write_tensor(weight_norm_name(name, "l1"), flat.abs().sum(1))
                self._write_tensor(weight_norm_name(name, "l2"), flat.pow(2).sum(1).sqrt())
        self._write_tensor("compact/steps", np.array([self._pending_steps], np.int64))
        self._acc.clear()
        self._pending_steps = 0

    def _write_weights(self) -> None:
        modules = dict(self.model.named_modules())
        for name in self._weight_modules:
            module = modules[name]
            for pname, param in module.named_parameters(recurse=False):
                self._write_tensor(param_name(self._model_cls, f"{name}.{pname}"), param.detach())
            if isinstance(getattr(module, "running_mean", None), torch.Tensor):
                self._write_tensor(f"{name}.running_mean_output_0", module.running_mean)
                self._write_tensor(f"{name}.running_var_output_0", module.running_var)

    def _start_trial(self) -> None:
        """Collections file (makes the trial readable) and our metadata, written once."""
        if self._started:
            return
        self._started = True
        manager = CollectionManager()
        manager.add(Collection("prune_explorer", include_regex=[".*"]))
        manager.export(self.out_dir, f"{self.worker}_collections.json")
        if self.worker != "worker_0":
            return
        meta = {
            "format": META_FORMAT,
            "mode": self.mode,
            "save_every": self.save_every,
            "taps": [list(t) for t in self.taps],
            "tap_axes": {f"{m}_{c}": a for (m, c), a in sorted(self._axes.items())},
            "input_size": self._input_size,
            "model": self.model_info or _base_spec(self.model),
        }
        write_text(self.out_dir, META_FILE, json.dumps(meta, indent=1))


# --- helpers --------------------------------------------------------------------------------------
def _tap_key(tap: Any) -> TapKey:
    if hasattr(tap, "module") and hasattr(tap, "call"):
        return (str(tap.module), int(tap.call))
    module, call = tap
    return (str(module), int(call))


def _first_example(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:1].detach()
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_first_example(x) for x in inputs)
    return inputs


def _input_size(inputs: Any) -> list[int] | None:
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1:
        inputs = inputs[0]
    return list(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None


def _trace(model: nn.Module, example_inputs: Any):
    from ..model.graph import ChannelGraph

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return ChannelGraph.trace(model, example_inputs)
    finally:
        model.train(was_training)


def _weight_modules(model: nn.Module, graph: Any) -> list[str]:
    """Modules whose weights ranking may need: layers with filters (the layer-kind registry's) and
    norms with running statistics, in prunable groups (all of them without a graph)."""
    modules = dict(model.named_modules())
    names = list(modules) if graph is None else sorted({n for g in graph.prunable() for n in g.layers if n in modules})

    def weighted(module: nn.Module) -> bool:
        kind = recorded_kind(module)
        return kind is not None and (kind.has_filters or isinstance(getattr(module, "running_mean", None), torch.Tensor))

    return [n for n in names if weighted(modules[n])]


def _base_spec(model: nn.Module) -> dict | None:
    try:
        from ..model.zoo import base_spec
    except ImportError:
        return None
    return base_spec(model)


def write_text(out_dir: str, name: str, text: str) -> None:
    """Write `text` next to a trial: atomically for a local dir, one PUT for s3://."""
    on_s3, bucket, prefix = is_s3(out_dir)
    if on_s3:
        import boto3

        key = f"{prefix.rstrip('/')}/{name}" if prefix else name
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=text.encode())
        return
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
