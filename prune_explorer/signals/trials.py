"""Open an smdebug trial (local dir or s3://) and reduce it, in one pass, to per-channel sums.

Three naming schemes are understood (see `capture` for this project's own):

* the AWS pruning example: ``layer1.0.relu_0_output_0`` (call index inside the name),
  ``gradient/layer1.0.relu_ReLU_output`` (same name for every call: within a step the k-th of n
  occurrences is call n-1-k, since backward runs in reverse), ``ResNet_layer1.0.conv1.weight``,
  ``layer1.0.bn1.running_mean_output_0``;
* stock ``smdebug.pytorch.Hook``: ``layer1.0.relu_output_0`` (``_output_1`` for the second call),
  ``ResNet_<param>``; it never saves gradients of module outputs;
* this project's `CaptureHook`, modes "full" and "compact".

Each event file is read once with smdebug's record reader and reduced on the fly, so memory holds
one step at a time, never the whole trial. Anything that cannot be used lands in `Trial.unused`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import smdebug_compat
from .capture import COMPACT_COUNTS, COMPACT_LATER, COMPACT_STATS, META_FILE
from smdebug.core.access_layer.utils import END_OF_JOB_FILENAME
from smdebug.core.tfevent.proto.event_pb2 import Event
from smdebug.core.tfrecord.record_reader import masked_crc32c
from smdebug.core.tfrecord.record_writer import CHECKSUM_MAGIC_BYTES
from smdebug.core.tfrecord.tensor_reader import TensorReader
from smdebug.core.utils import is_s3

TapKey = tuple[str, int]
_MAGIC_CRC = masked_crc32c(CHECKSUM_MAGIC_BYTES)
_EVENT_FILE = re.compile(r"(?:^|/)events/\d+/(\d+)_(.+)\.tfevents$")


@dataclass
class TapStats:
    """Per-channel sums over every step read for one tap (module, call)."""

    source: str
    activation: np.ndarray | None = None   # Σ_examples mean_hw(a)
    zeros: np.ndarray | None = None        # Σ_examples fraction of zeros over h,w
    examples: int = 0
    taylor: np.ndarray | None = None       # Σ_examples |mean_hw(a·g)|
    taylor_aws: np.ndarray | None = None   # Σ_batches mean_(b,h,w)(a·g), signed
    grad_examples: int = 0
    grad_batches: int = 0
    taylor_sq: np.ndarray | None = None    # Σ_batches (Σ_(b,h,w) a·g)²: a per-channel gate's squared Taylor term
    sq_batches: int = 0                    # batches taylor_sq covers (0: a trial from before it was captured)

    def add(self, other: "TapStats") -> None:
        for key in ("activation", "zeros", "taylor", "taylor_aws", "taylor_sq"):
            value = getattr(other, key)
            if value is not None:
                mine = getattr(self, key)
                setattr(self, key, value.copy() if mine is None else mine + value)
        self.examples += other.examples
        self.grad_examples += other.grad_examples
        self.grad_batches += other.grad_batches
        self.sq_batches += other.sq_batches

    @property
    def has_gradients(self) -> bool:
        return self.taylor is not None and self.grad_examples > 0


@dataclass
class Trial:
    """A trial reduced to what ranking needs."""

    path: str
    complete: bool
    message: str
    steps: list[int]
    steps_used: int
    schemes: list[str]
    taps: dict[TapKey, TapStats]
    weights: Mapping[str, np.ndarray]                   # parameter/buffer name → last saved value (lazy)
    weight_norms: dict[str, dict[str, np.ndarray]]      # producer → {"l1", "l2"} (compact mode)
    unused: list[str]
    meta: dict = field(default_factory=dict)
    model: nn.Module | None = None
    graph: Any = None
    untrained_model: bool = False  # `model` was built from the recorded architecture: its weights are not the trained ones

    @property
    def has_gradients(self) -> bool:
        return any(s.has_gradients for s in self.taps.values())

    def group_stats(self, group) -> list[TapStats]:
        """The stats of the group's taps that the trial holds."""
        return [self.taps[(t.module, t.call)] for t in group.taps if (t.module, t.call) in self.taps]


def open_trial(path_or_s3_uri: str | os.PathLike, model: nn.Module | None = None, example_inputs: Any = None,
               graph: Any = None, progress: bool = False, trust_code: Any = None) -> Trial:
    """Read a trial once and reduce it per channel against `model`'s channel groups.

    Without `model`, the model recorded by `CaptureHook` (prune_explorer.json) is rebuilt: a
    "package.module:Class" there only when registered or its module is in `trust_code` (model/trust.py).
    """
    source = _Source(str(path_or_s3_uri))
    meta = source.meta()
    untrained = False
    if model is None:
        model, untrained = _model_from_meta(meta, source.path, trust_code)
    if graph is None:
        example_inputs = _example_inputs(example_inputs, meta, source.path)
        graph = _trace(model, example_inputs)
    trial = _Reducer(source, model, graph, meta, progress).run()
    trial.untrained_model = untrained
    return trial


# --- where the files are --------------------------------------------------------------------------
class _Source:
    """A trial's file listing and bytes, local or on S3."""

    def __init__(self, path: str):
        self.path = path.rstrip("/")
        self.on_s3, self.bucket, prefix = is_s3(self.path)
        self.prefix = (prefix or "").rstrip("/")
        self.files = self._list()

    def _list(self) -> list[str]:
        if self.on_s3:
            import boto3

            self._s3 = boto3.client("s3")
            keys = []
            try:
                pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
                for page in pages:
                    keys += [o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", [])]
            except self._s3.exceptions.NoSuchBucket:
                raise ValueError(f"{self.path}: no such S3 bucket {self.bucket!r}") from None
            return sorted(keys)
        if not os.path.isdir(self.path):
            raise ValueError(f"{self.path}: no such trial directory")
        out = []
        for root, _, names in os.walk(self.path):
            rel = os.path.relpath(root, self.path)
            out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names]
        return sorted(out)

    def read(self, rel: str) -> bytes:
        if self.on_s3:
            return self._s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{rel}")["Body"].read()
        with open(os.path.join(self.path, rel), "rb") as f:
            return f.read()

    @contextlib.contextmanager
    def ranges(self, rel: str):
        """read(start, length) over one file, opened once (S3: fetched once)."""
        if self.on_s3:
            data = self.read(rel)
            yield lambda start, length: data[start:start + length]
            return
        with open(os.path.join(self.path, rel), "rb") as f:
            def read(start: int, length: int) -> bytes:
                f.seek(start)
                return f.read(length)

            yield read

    def name(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def meta(self) -> dict:
        if META_FILE not in self.files:
            return {}
        try:
            return json.loads(self.read(META_FILE))
        except ValueError as e:
            raise ValueError(f"{self.name(META_FILE)}: not valid JSON ({e})") from None


# --- reading records ------------------------------------------------------------------------------
class _CheckedReader(TensorReader):
    """smdebug's record reader, refusing truncated records and bad checksums with the file's name."""

    def __init__(self, data: bytes, filename: str):
        super().__init__(memoryview(data))
        self.filename = filename

    def _take(self, n: int, what: str):
        if self.position + n > self.max_pos:
            raise ValueError(f"{self.filename}: truncated event file ({what} at byte {self.position} "
                             f"needs {n} bytes, {self.max_pos - self.position} left)")
        return self._read(n)

    def read_record(self, check: str = "minimal"):
        start = self.position
        length_bytes = bytes(self._take(8, "record length"))
        (length,) = struct.unpack("Q", length_bytes)
        (length_crc,) = struct.unpack("I", self._take(4, "length checksum"))
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"{self.filename}: bad CRC in the record header at byte {start}")
        payload = self._take(length, "record payload")
        (payload_crc,) = struct.unpack("I", self._take(4, "payload checksum"))
        if payload_crc != _MAGIC_CRC and payload_crc != masked_crc32c(bytes(payload)):
            raise ValueError(f"{self.filename}: bad CRC in the record payload at byte {start}")
        return payload

    def tensors(self) -> Iterator[tuple[str, int, np.ndarray]]:
        for event in self._events():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.WhichOneof("value") != "tensor":
                    continue
                yield value.tag, event.step, _tensor_array(value.tensor, value.tag, self.filename)

    def _events(self) -> Iterator[Event]:
        from google.protobuf.message import DecodeError

        while self.has_data():
            start = self.position
            payload = self.read_record()
            event = Event()
            try:
                event.ParseFromString(bytes(payload))
            except DecodeError as e:
                raise ValueError(f"{self.filename}: corrupt event record at byte {start} ({e})") from None
            yield event


def _tensor_array(proto, tag: str, filename: str) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    try:
        dtype = smdebug_compat.as_dtype(proto.dtype)
    except KeyError:
        raise ValueError(f"{filename}: tensor {tag!r} has unsupported dtype code {proto.dtype}") from None
    if proto.tensor_content:
        data = np.frombuffer(proto.tensor_content, dtype=dtype)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{filename}: tensor {tag!r} holds {data.size} values for shape {shape}")
        return data.reshape(shape)
    for field_name in ("float_val", "double_val", "int_val", "int64_val", "bool_val"):
        values = getattr(proto, field_name, ())
        if len(values):
            return np.asarray(values, dtype=dtype).reshape(shape or [len(values)])
    return np.zeros(shape, dtype=dtype)


# --- names ----------------------------------------------------------------------------------------
_COMPACT_TAP = re.compile(rf"^compact/(.+)_(\d+)/({'|'.join(COMPACT_STATS + COMPACT_LATER + COMPACT_COUNTS)})$")
_COMPACT_NORM = re.compile(r"^compact/(.+)/weight_(l1|l2)$")
_GRAD_CALL = re.compile(r"^gradient/(.+)_(\d+)_([A-Za-z0-9]+)_output$")
_GRAD_NO_CALL = re.compile(r"^gradient/(.+)_([A-Za-z0-9]+)_output$")
_BN_STAT = re.compile(r"^(.+)\.(running_mean|running_var)_output_\d+$")
_ACT_CALL = re.compile(r"^(.+)_(\d+)_output_0$")
_ACT_STOCK = re.compile(r"^(.+)_output_(\d+)$")
_INPUT = re.compile(r"^(.+)_input_\d+$")
_PARAM = re.compile(r"^([A-Za-z0-9]+)_(.+)$")


class _Names:
    """Classify tensor names against a model (cached: names repeat every step)."""

    def __init__(self, model: nn.Module):
        self.modules = {n: m for n, m in model.named_modules()}
        self.params = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        self.cache: dict[str, tuple] = {}

    def __call__(self, name: str) -> tuple:
        if name not in self.cache:
            self.cache[name] = self._classify(name)
        return self.cache[name]

    def _classify(self, name: str) -> tuple:
        mods = self.modules
        if name == "compact/steps":
            return ("steps",)
        if name.startswith("scalar/"):
            return ("unused", name, "a training scalar, not a ranking input")
        if m := _COMPACT_TAP.match(name):
            if m[1] in mods:
                return ("compact", (m[1], int(m[2])), m[3])
            return ("unused", name, "unknown module")
        if m := _COMPACT_NORM.match(name):
            if m[1] in mods:
                return ("norm", m[1], m[2])
            return ("unused", name, "unknown module")
        if name.startswith("gradient/"):
            if (m := _GRAD_CALL.match(name)) and m[1] in mods:
                return ("grad", (m[1], int(m[2])), "full")
            if (m := _GRAD_NO_CALL.match(name)) and m[1] in mods:
                return ("grad_nocall", m[1], "aws")
            if (m := _PARAM.match(name[len("gradient/"):])) and m[2] in self.params:
                return ("unused", name, "parameter gradient")
            return ("unused", name, "unknown gradient name")
        if (m := _BN_STAT.match(name)) and m[1] in mods:
            return ("param", f"{m[1]}.{m[2]}", "aws")
        if (m := _ACT_CALL.match(name)) and m[1] in mods:
            return ("act", (m[1], int(m[2])), "full/aws")
        if (m := _ACT_STOCK.match(name)) and m[1] in mods:
            return ("act", (m[1], int(m[2])), "stock")
        if (m := _INPUT.match(name)) and m[1] in mods:
            return ("unused", name, "module input")
        if (m := _PARAM.match(name)) and m[2] in self.params:
            return ("param", m[2], "weights")
        return ("unused", name, "unknown name")


# --- reduction ------------------------------------------------------------------------------------
def _flat(a: np.ndarray) -> np.ndarray:
    """(batch, channels, positions); integers and halves widen to float64."""
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a.reshape(a.shape[0], a.shape[1], -1)


def activation_stats(a: np.ndarray, source: str) -> TapStats:
    """numpy, not torch: its reductions are several times faster on these small CPU tensors."""
    t = _flat(a)
    positions = t.shape[-1]
    return TapStats(
        source=source,
        activation=t.sum(-1, dtype=np.float64).sum(0) / positions,
        zeros=(positions - np.count_nonzero(t, axis=-1)).sum(0, dtype=np.float64) / positions,
        examples=t.shape[0],
    )


def taylor_stats(a: np.ndarray, g: np.ndarray, stats: TapStats) -> None:
    ta, tg = _flat(a), _flat(g)
    per_example = np.matmul(ta[:, :, None, :], tg[:, :, :, None])[:, :, 0, 0].astype(np.float64) / ta.shape[-1]
    stats.taylor = np.abs(per_example).sum(0)
    stats.taylor_aws = per_example.mean(0)
    stats.taylor_sq = np.square(per_example.sum(0) * ta.shape[-1])   # one saved step = one minibatch
    stats.grad_examples = ta.shape[0]
    stats.grad_batches = 1
    stats.sq_batches = 1


class _Reducer:
    def __init__(self, source: _Source, model: nn.Module, graph: Any, meta: dict, progress: bool):
        self.source, self.model, self.graph, self.meta, self.progress = source, model, graph, meta, progress
        self.names = _Names(model)
        self.tap_size = {(t.module, t.call): g.size for g in graph.groups for t in g.taps}
        self.taps: dict[TapKey, TapStats] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.deferred: dict[str, tuple[str, str, str, int, int]] = {}
        self.weight_steps: dict[str, int] = {}
        self.norms: dict[str, dict[str, np.ndarray]] = {}
        self.norm_steps: dict[tuple[str, str], int] = {}  # (producer, l1|l2) -> step its norm is from
        self.unused: dict[str, str] = {}
        self.schemes: set[str] = set()
        self.steps: set[int] = set()
        self.compact_steps = 0
        self._weights_lock = threading.Lock()

    def run(self) -> Trial:
        files, complete, message = self._event_files()
        self.index_of = {os.path.basename(f)[: -len(".json")]: f for f in self.source.files
                         if f.startswith("index/") and f.endswith(".json")}
        self.last_file = max(files, key=lambda f: int(_EVENT_FILE.search(f)[1]))
        # Event files are read and reduced in parallel (file I/O and numpy release the GIL);
        # per-file results are merged in file order, so sums do not depend on thread timing.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(files))) as pool:
            for steps, reduced, norms in tqdm(pool.map(self._read_file, files), total=len(files),
                                              desc="reading trial", unit="file", disable=not self.progress):
                self.compact_steps += steps
                for key, stats in reduced:
                    self._add(key, stats)
                for (producer, norm), (step, value) in norms.items():
                    self._keep_norm(producer, norm, step, value)
        if not self.taps and not self.weights and not self.deferred and not self.norms:
            shown = sorted(self.unused)[:8]
            raise ValueError(f"{self.source.path}: no tensor matches a known naming scheme or the model's "
                             f"modules/parameters; unknown names include {shown}")
        schemes = set(self.schemes)
        if "full/aws" in schemes:
            schemes.discard("full/aws")
            schemes.add("aws" if "aws" in schemes or "full" not in schemes else "full")
        unused = [f"{n} ({why})" for n, why in sorted(self.unused.items())]
        steps_used = self.compact_steps if "compact" in schemes else len(self.steps)
        return Trial(
            path=self.source.path, complete=complete, message=message, steps=sorted(self.steps),
            steps_used=steps_used, schemes=sorted(schemes), taps=dict(sorted(self.taps.items())),
            weights=_LazyWeights(self), weight_norms=self.norms, unused=unused, meta=self.meta,
            model=self.model, graph=self.graph,
        )

    def _event_files(self) -> tuple[list[str], bool, str]:
        files = self.source.files
        events = [f for f in files if _EVENT_FILE.search(f)]
        if not events:
            raise ValueError(f"{self.source.path}: empty trial (no event files under events/)")
        complete = END_OF_JOB_FILENAME in files
        if complete:
            return events, True, f"complete: {len(events)} event files"
        indexed = {os.path.basename(f)[: -len(".json")] for f in files if f.startswith("index/") and f.endswith(".json")}
        done = [f for f in events if os.path.basename(f)[: -len(".tfevents")] in indexed]
        waiting = sorted(set(events) - set(done))
        if not done:
            raise ValueError(f"{self.source.path}: trial still being written and no step is complete yet")
        message = (f"trial still being written (no {END_OF_JOB_FILENAME}): read {len(done)} complete "
                   f"event files" + (f", skipped {len(waiting)} in progress ({waiting[0]})" if waiting else ""))
        return done, False, message

    def _read_file(self, rel: str) -> tuple[int, list[tuple[TapKey, TapStats]], dict[tuple[str, str], tuple[int, np.ndarray]]]:
        """(compact steps, per-tap statistics, weight norms with their step) of one event file; merged by the caller."""
        filename = self.source.name(rel)
        compact_steps = 0
        norms: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        acts: dict[TapKey, tuple[str, np.ndarray]] = {}
        grads: dict[TapKey, tuple[str, np.ndarray]] = {}
        nocall: dict[str, list[tuple[str, np.ndarray]]] = {}
        compact: dict[TapKey, dict[str, tuple[str, np.ndarray]]] = {}
        for tag, step, value in self._tensors(rel, filename):
            kind = self.names(tag)
            if kind[0] == "unused":
                self.unused[tag] = kind[2]
                continue
            self.steps.add(step)
            if kind[0] == "steps":
                compact_steps += int(value.sum())
            elif kind[0] == "compact":
                compact.setdefault(kind[1], {})[kind[2]] = (tag, value)
                self.schemes.add("compact")
            elif kind[0] == "norm":
                self._check_norm(tag, kind[1], value)
                if step >= norms.get((kind[1], kind[2]), (-1, None))[0]:
                    norms[(kind[1], kind[2])] = (step, value.astype(np.float64))
                self.schemes.add("compact")
            elif kind[0] == "param":
                self._keep_weight(tag, kind[1], step, value)
            elif kind[0] == "act":
                acts[kind[1]] = (tag, value)
                self.schemes.add(kind[2])
            elif kind[0] == "grad":
                grads[kind[1]] = (tag, value)
                self.schemes.add(kind[2])
            elif kind[0] == "grad_nocall":
                nocall.setdefault(kind[1], []).append((tag, value))
                self.schemes.add(kind[2])
        for module, written in nocall.items():
            for k, item in enumerate(written):
                grads.setdefault((module, len(written) - 1 - k), item)
        reduced = [(key, self._reduce_full(key, tag, a, grads.get(key))) for key, (tag, a) in acts.items()]
        reduced += [(key, self._reduce_compact(key, parts)) for key, parts in compact.items()]
        return compact_steps, [(key, stats) for key, stats in reduced if stats is not None], norms

    def _tensors(self, rel: str, filename: str) -> Iterator[tuple[str, int, np.ndarray]]:
        """Every tensor of one event file; with its index, read and parse only the records ranking uses."""
        records = self._indexed_records(rel)
        if records is None:
            yield from _CheckedReader(self.source.read(rel), filename).tensors()
            return
        wanted = []
        for name, start, length in records:
            kind = self.names(name)
            if kind[0] == "unused":
                self.unused[name] = kind[2]
            elif kind[0] == "param":
                if rel == self.last_file:                       # weights: the last saved step, on demand
                    self.deferred[kind[1]] = (rel, filename, name, start, length)
                    self.schemes.add("weights")
            else:
                wanted.append((name, start, length))
        with self.source.ranges(rel) as read_range:
            for name, start, length in wanted:
                data = read_range(start, length)
                if len(data) < length:
                    raise ValueError(f"{filename}: truncated event file (record {name!r} at byte {start} "
                                     f"needs {length} bytes, {len(data)} left)")
                yield from _CheckedReader(data, filename).tensors()

    def _indexed_records(self, rel: str) -> list[tuple[str, int, int]] | None:
        index = self.index_of.get(os.path.basename(rel)[: -len(".tfevents")])
        if index is None:
            return None
        try:
            payload = json.loads(self.source.read(index))["tensor_payload"]
            return [(p["tensorname"], int(p["start_idx"]), int(p["length"])) for p in payload]
        except (ValueError, KeyError, TypeError):
            return None

    def _size(self, key: TapKey, tag: str) -> int | None:
        size = self.tap_size.get(key)
        if size is None:
            self.unused[tag] = "not a channel-group tap of this model"
        return size

    def _reduce_full(self, key: TapKey, tag: str, a: np.ndarray,
                     grad: tuple[str, np.ndarray] | None) -> TapStats | None:
        size = self._size(key, tag)
        if size is None:
            return
        if a.ndim < 2 or a.shape[1] != size:
            raise ValueError(f"tensor {tag!r} has shape {list(a.shape)} but the model's tap {key[0]} (call {key[1]}) "
                             f"carries {size} channels: the trial does not match the model")
        stats = activation_stats(a, tag)
        if grad is not None:
            gtag, g = grad
            if g.shape != a.shape:
                raise ValueError(f"tensor {gtag!r} has shape {list(g.shape)}, its activation {tag!r} {list(a.shape)}")
            taylor_stats(a, g, stats)
        return stats

    def _reduce_compact(self, key: TapKey, parts: dict[str, tuple[str, np.ndarray]]) -> TapStats | None:
        tag = next(iter(parts.values()))[0]
        size = self._size(key, tag)
        if size is None:
            return
        missing = [s for s in COMPACT_STATS + COMPACT_COUNTS if s not in parts]
        if missing:
            raise ValueError(f"tensor {tag!r}: compact record of {key[0]} (call {key[1]}) lacks {missing}")
        for stat in COMPACT_STATS + tuple(s for s in COMPACT_LATER if s in parts):
            stag, value = parts[stat]
            if value.shape != (size,):
                raise ValueError(f"tensor {stag!r} has shape {list(value.shape)} but the model's tap {key[0]} "
                                 f"(call {key[1]}) carries {size} channels: the trial does not match the model")
        get = lambda s: parts[s][1].astype(np.float64)  # noqa: E731
        examples, batches = int(parts["examples"][1].sum()), int(parts["batches"][1].sum())
        has_sq = "taylor_sq" in parts
        return TapStats(source=tag, activation=get("activation"), zeros=get("zeros"), examples=examples,
                        taylor=get("taylor"), taylor_aws=get("taylor_aws"),
                        grad_examples=examples, grad_batches=batches,
                        taylor_sq=get("taylor_sq") if has_sq else None, sq_batches=batches if has_sq else 0)

    def _add(self, key: TapKey, stats: TapStats) -> None:
        if key in self.taps:
            self.taps[key].add(stats)
        else:
            self.taps[key] = stats

    def _keep_norm(self, producer: str, norm: str, step: int, value: np.ndarray) -> None:
        """Keep the norm of the latest step, whatever order the event files are merged in."""
        if step >= self.norm_steps.get((producer, norm), -1):
            self.norms.setdefault(producer, {})[norm] = value
            self.norm_steps[(producer, norm)] = step

    def _keep_weight(self, tag: str, name: str, step: int, value: np.ndarray) -> None:
        expected = self.names.params.get(name)
        if expected is not None and tuple(value.shape) != expected:
            raise ValueError(f"tensor {tag!r} has shape {list(value.shape)} but the model's {name} is "
                             f"{list(expected)}: the trial does not match the model")
        with self._weights_lock:  # files are read on several threads; keep the latest step's value
            if step >= self.weight_steps.get(name, -1):
                self.weights[name] = value
                self.weight_steps[name] = step
        self.schemes.add("weights")

    def load_deferred(self) -> dict[str, np.ndarray]:
        for name, (rel, filename, tag, start, length) in sorted(self.deferred.items()):
            with self.source.ranges(rel) as read_range:
                data = read_range(start, length)
            if len(data) < length:
                raise ValueError(f"{filename}: truncated event file (record {tag!r} at byte {start})")
            for _, step, value in _CheckedReader(data, filename).tensors():
                self._keep_weight(tag, name, step, value)
        self.deferred.clear()
        return self.weights

    def _check_norm(self, tag: str, producer: str, value: np.ndarray) -> None:
        weight = getattr(self.names.modules[producer], "weight", None)
        if weight is not None and value.shape != (weight.shape[0],):
            raise ValueError(f"tensor {tag!r} has shape {list(value.shape)} but {producer} has "
                             f"{weight.shape[0]} filters: the trial does not match the model")


class _LazyWeights(Mapping):
    """The last saved weights, parsed on first use (Taylor ranking never needs them)."""

    def __init__(self, reducer: "_Reducer"):
        self._reducer = reducer
        self._names = set(reducer.weights) | set(reducer.deferred)
        self._values: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._values is None:
            self._values = self._reducer.load_deferred()
            self._reducer = None
        return self._values

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._load()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


# --- the model a trial was captured from ----------------------------------------------------------
def _model_from_meta(meta: dict, path: str, trust_code: Any = None) -> tuple[nn.Module, bool]:
    """The model a trial was captured on, and whether it was built untrained: the saved model beside
    it (train.py writes OUT/trial next to OUT/model.json, with the pruned widths), else the recorded
    model directory, else the base arch (fresh weights: True)."""
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "model.json")
    if not is_s3(path)[0] and os.path.exists(beside):
        from ..model.store import load

        return load(os.path.dirname(beside), trust_code=trust_code), False
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


def _trace(model: nn.Module, example_inputs: Any):
    from ..model.graph import ChannelGraph

    return ChannelGraph.trace(model, example_inputs)
