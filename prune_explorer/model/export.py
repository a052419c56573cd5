"""Ship a (pruned) model as a file that runs without prune_explorer: ONNX or a torch.export `.pt2`.

The pruned model on disk (model.json + safetensors) needs prune_explorer to rebuild; an edge
device needs a file its runtime loads alone. Every export captures the forward pass with
`torch.export` (one capture, two writers), checks the written program against PyTorch on seeded
random inputs before the file appears, records the example input shape (and the ONNX opset) in
the file's metadata, and writes atomically (temp file, then rename).

ONNX: the dynamo exporter (`torch.onnx.export(ExportedProgram)`) is the default. Both exporters
give outputs equal to PyTorch's on the torchvision zoo (tests/test_export.py); the TorchScript-based
one is deprecated since torch 2.9 and, tracing one run, silently bakes data-dependent branches into
the graph, where `torch.export` refuses them with the line that branches. It stays selectable
(`exporter="torchscript"`) for models `torch.export` cannot capture.
"""
from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from .measure import _eval_no_grad, count

TOLERANCE = 1e-4
"""Export check: max |file - PyTorch| <= TOLERANCE * max(1, max |PyTorch output|) (float32)."""
BATCH_DIM = "batch"
METADATA_FILE = "prune_explorer.json"  # the .pt2 archive's extra file holding the metadata
_CHECK_SEED = 0


class ExportError(ValueError):
    """A model that cannot be exported, naming the model and, where known, the op and module at fault."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote."""

    path: Path
    format: str
    exporter: str
    input_shape: list[list[int]]
    dynamic_batch: bool
    opset: int | None
    max_abs_diff: float
    seconds: float
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class _Source:
    """The model to export and what the metadata says about where it came from."""

    model: nn.Module
    name: str
    base: dict[str, Any] | None


# --- entry point --------------------------------------------------------------------------------
def export_model(
    model: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    example_inputs: Any = None,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    opset: int | None = None,
    trust_code: Any = None,
) -> ExportResult:
    """Write `model` (a module or a saved model directory) to `path` as ONNX or `.pt2`.

    `format` defaults to the suffix of `path` (".onnx" / ".pt2"). `example_inputs` (a tensor or a
    tuple of tensors) defaults, for a model directory, to one zero image of the `input_shape` its
    metrics.json records. With `dynamic_batch` the file accepts any batch size. `exporter` and
    `opset` apply to ONNX only. Raises ExportError naming the model (and op/module) that cannot be
    exported; nothing is written then. `trust_code`: as `store.load`'s, for a directory whose
    model.json names a "package.module:Class".
    """
    fmt = _format_of(path, format)
    if fmt != "onnx" and (exporter != "dynamo" or opset is not None):
        raise ValueError(f"exporter and opset apply to ONNX only, not to format {fmt!r}")
    if fmt == "onnx" and exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(ONNX_EXPORTERS)}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot export to {path}: it is a directory; give a file name such as model.{fmt}")
    source = _source_of(model, trust_code)
    example = _as_tuple(example_inputs if example_inputs is not None else recorded_example_inputs(model))
    start = time.perf_counter()
    with _eval_no_grad(source.model):
        write = FORMATS[fmt]
        opset_used, diff = write(source, example, path, dynamic_batch=dynamic_batch, exporter=exporter, opset=opset)
    return ExportResult(
        path=path, format=fmt, exporter=exporter if fmt == "onnx" else "torch.export",
        input_shape=[list(t.shape) for t in example], dynamic_batch=dynamic_batch, opset=opset_used,
        max_abs_diff=diff, seconds=time.perf_counter() - start, bytes=path.stat().st_size,
    )


def recorded_example_inputs(model_dir: Any) -> tuple[torch.Tensor, ...]:
    """One zero image shaped like the data a saved model was trained on (its metrics.json `input_shape`;
    for a workspace iteration's `pruned/` model, the job's metrics.json one level up)."""
    from ..jobs.queue import read_metrics

    if isinstance(model_dir, nn.Module):
        raise ValueError("example_inputs is required when exporting a module (only a model directory records its input shape)")
    model_dir = Path(model_dir)
    candidates = [model_dir] + ([model_dir.parent] if model_dir.name == "pruned" else [])
    shape = next((s for d in candidates if (s := read_metrics(d).get("input_shape"))), None)
    if not shape:
        raise ValueError(f"{model_dir / 'metrics.json'}: no input_shape recorded for {model_dir}; "
                         "pass example_inputs (CLI: --input-shape C,H,W)")
    return (torch.zeros(1, *[int(s) for s in list(shape)[-3:]]),)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata an export recorded (example input shape, opset, source, ...), read back from the file."""
    path = Path(path)
    if path.suffix == ".pt2":  # a zip archive; its extra files live in <archive>/extra/ (no need to load the program)
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise ValueError(f"{path}: no {METADATA_FILE} in this .pt2 archive (not written by export_model?)")
            return json.loads(archive.read(names[0]))
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --- ONNX Runtime latency -------------------------------------------------------------------------
def onnxruntime_latency_ms(
    models: Sequence[nn.Module | str | os.PathLike],
    example_inputs: Any,
    *,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> list[float]:
    """Median ONNX Runtime CPU milliseconds per model (modules are exported in memory first).

    The models are timed in turn within each repeat (as `paired_latency_ms` does for PyTorch), so a
    burst of load elsewhere slows both sides of a before/after pair. `threads` (intra-op) defaults to
    torch's thread count, so ORT and PyTorch numbers from one process are comparable.
    """
    from .runtimes import OnnxRuntimeCPU, interleaved

    timings = interleaved(OnnxRuntimeCPU(threads), models, example_inputs, warmup=warmup, repeats=repeats)
    return [t.median for t in timings]


def onnx_bytes(model: nn.Module, example_inputs: Any, *, exporter: str = "dynamo") -> bytes:
    """A module as serialized ONNX at the example's shape (static batch), in memory: what ORT sessions load."""
    source = _source_of(model)
    with _eval_no_grad(model):
        proto, _ = _onnx_proto(source, _as_tuple(example_inputs), dynamic_batch=False, exporter=exporter, opset=None)
    return proto.SerializeToString()


def onnxruntime_session(model: nn.Module | str | os.PathLike | bytes, example_inputs: Any = None, *,
                        threads: int | None = None, exporter: str = "dynamo"):
    """A CPU InferenceSession for an .onnx file, serialized ONNX bytes, or a module (exported at the example's
    shape with `exporter`; "torchscript" takes milliseconds where dynamo takes seconds, for single layers)."""
    import onnxruntime as ort

    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise ValueError("example_inputs is required to export a module for ONNX Runtime")
        model = onnx_bytes(model, example_inputs, exporter=exporter)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    target = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(target, sess_options=options, providers=["CPUExecutionProvider"])


# --- formats ---------------------------------------------------------------------------------------
def _write_onnx(source: _Source, example, path: Path, *, dynamic_batch: bool, exporter: str,
                opset: int | None) -> tuple[int, float]:
    proto, opset_used = _onnx_proto(source, example, dynamic_batch=dynamic_batch, exporter=exporter, opset=opset)
    try:
        data = proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ExportError(f"cannot export {source.name} to ONNX: the model does not fit one ONNX file ({exc})") from exc
    diff = _check(source, example, dynamic_batch, "ONNX Runtime", lambda: _ort_runner(data))
    metadata = _metadata(source, example, dynamic_batch, diff, exporter=exporter, opset=opset_used)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    _write_atomic(path, lambda f: f.write(proto.SerializeToString()))
    return opset_used, diff


def _write_pt2(source: _Source, example, path: Path, *, dynamic_batch: bool, exporter: str,
               opset: int | None) -> tuple[None, float]:
    program = _capture(source, example, dynamic_batch)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()

    def runner():
        module = torch.export.load(io.BytesIO(data)).module()
        return lambda *xs: [t.detach().cpu().numpy() for t in _as_tuple(module(*xs))]

    diff = _check(source, example, dynamic_batch, "torch.export.load", runner)
    metadata = _metadata(source, example, dynamic_batch, diff, exporter="torch.export", opset=None)
    _write_atomic(path, lambda f: torch.export.save(program, f, extra_files={METADATA_FILE: json.dumps(metadata)}))
    return None, diff


FORMATS: dict[str, Callable[..., tuple[int | None, float]]] = {"onnx": _write_onnx, "pt2": _write_pt2}


# --- ONNX exporters ---------------------------------------------------------------------------------
def _onnx_proto(source: _Source, example, *, dynamic_batch: bool, exporter: str, opset: int | None):
    """(onnx.ModelProto, opset) from the chosen exporter, its batch dimension named `batch`."""
    proto = ONNX_EXPORTERS[exporter](source, example, dynamic_batch, opset)
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto, int(opset_used)


def _dynamo_proto(source: _Source, example, dynamic_batch: bool, opset: int | None):
    program = _capture(source, example, dynamic_batch)
    names_in, names_out = _io_names(len(example), _n_outputs(program))
    try:
        onnx_program = torch.onnx.export(program, _export_args(example, dynamic_batch), dynamo=True, verbose=False,
                                         opset_version=opset, input_names=names_in, output_names=names_out)
    except Exception as exc:
        raise ExportError(f"cannot export {source.name} to ONNX: {_conversion_failure(program, exc)}") from exc
    proto = onnx_program.model_proto
    if dynamic_batch:
        _rename_batch_dim(proto)
    return proto


def _torchscript_proto(source: _Source, example, dynamic_batch: bool, opset: int | None):
    import onnx

    args = _export_args(example, dynamic_batch)
    with torch.no_grad():
        n_out = len(_as_tuple(source.model(*args)))
    names_in, names_out = _io_names(len(example), n_out)
    axes = {name: {0: BATCH_DIM} for name in names_in + names_out} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        torch.onnx.export(source.model, args, buffer, dynamo=False, opset_version=opset, input_names=names_in,
                          output_names=names_out, dynamic_axes=axes)
    except Exception as exc:
        raise ExportError(f"cannot export {source.name} to ONNX (TorchScript exporter): {_first_line(exc)}") from exc
    return onnx.load_from_string(buffer.getvalue())


ONNX_EXPORTERS: dict[str, Callable] = {"dynamo": _dynamo_proto, "torchscript": _torchscript_proto}


def _rename_batch_dim(proto) -> None:
    """torch.export names the batch symbol like `s77`; call it `batch` wherever it appears."""
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    symbol = first.dim_param
    if not symbol:
        return
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH_DIM


def _conversion_failure(program, exc: BaseException) -> str:
    """The op (and the module that calls it) the ONNX translation stopped at, or the exporter's first line."""
    text = "\n".join(str(e) for e in _chain(exc))
    match = re.search(r"target=torch\.ops\.([\w.]+)", text)
    if match is None:
        return _first_line(exc)
    target = match.group(1)
    node = next((n for n in program.graph.nodes if n.op == "call_function" and str(n.target) == target), None)
    where = ""
    if node is not None:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            module_path, module_type = list(stack.values())[-1]
            where = f" in module {module_path or '(root)'!r} ({str(module_type).rsplit('.', 1)[-1]})"
    reason = next((str(e).splitlines()[0] for e in _chain(exc) if "No ONNX function" in str(e)), "")
    return f"op {target}{where} has no ONNX translation" + (f" ({reason})" if reason else "")


# --- capture and check ------------------------------------------------------------------------------
def _capture(source: _Source, example, dynamic_batch: bool):
    """torch.export of the forward pass, batch dimension dynamic when asked."""
    args = _export_args(example, dynamic_batch)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM, min=1)
        shapes = tuple({0: batch} for _ in args)
    try:
        return torch.export.export(source.model, args, dynamic_shapes=shapes)
    except Exception as exc:
        hint = " (a model that fixes its batch size exports with dynamic_batch=False, CLI --static-batch)" \
            if dynamic_batch and _mentions_batch(exc) else ""
        raise ExportError(f"cannot export {source.name}: torch.export cannot capture its forward: "
                          f"{_first_line(exc)}{_user_frame(exc)}{hint}") from exc


def _check(source: _Source, example, dynamic_batch: bool, runtime: str, make_runner) -> float:
    """Max abs difference between the written program and PyTorch; ExportError beyond TOLERANCE."""
    try:
        run = make_runner()
    except Exception as exc:
        raise ExportError(f"cannot export {source.name}: {runtime} cannot load the exported program: {_first_line(exc)}") from exc
    worst = 0.0
    for inputs in _check_inputs(example, dynamic_batch):
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in _as_tuple(source.model(*inputs))]
        try:
            actual = run(*inputs)
        except Exception as exc:
            raise ExportError(f"cannot export {source.name}: {runtime} fails on inputs of shape "
                              f"{[list(t.shape) for t in inputs]}: {_first_line(exc)}") from exc
        for a, e in zip(actual, expected):
            diff = float(abs(a - e).max()) if e.size else 0.0
            scale = max(1.0, float(abs(e).max()) if e.size else 0.0)
            if not diff <= TOLERANCE * scale:
                raise ExportError(f"cannot export {source.name}: {runtime} output differs from PyTorch by "
                                  f"{diff:.3g} (tolerance {TOLERANCE * scale:.3g}) on inputs of shape "
                                  f"{[list(t.shape) for t in inputs]}")
            worst = max(worst, diff)
    return worst


def _ort_runner(data: bytes):
    session = onnxruntime_session(data)
    names = [i.name for i in session.get_inputs()]
    return lambda *xs: session.run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, xs)})


def _check_inputs(example, dynamic_batch: bool) -> list[tuple[torch.Tensor, ...]]:
    """Seeded random inputs shaped like the example: its batch, and a batch of 2 when the batch is dynamic."""
    batches = [example[0].shape[0]] if example[0].dim() else [None]
    if dynamic_batch and batches[0] != 2:
        batches.append(2)
    return [_sample(example, b) for b in batches]


def _export_args(example, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """torch.export specialises a batch of 1; a dynamic batch is captured at 2."""
    if dynamic_batch and example[0].dim() and example[0].shape[0] == 1:
        return _sample(example, 2)
    return example


def _sample(example, batch: int | None) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(_CHECK_SEED)
    out = []
    for t in example:
        shape = t.shape if batch is None else (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=t.dtype).to(t.device))
        else:
            out.append(t[:1].expand(shape).clone() if batch is not None else t.clone())
    return tuple(out)


# --- metadata, names, files ------------------------------------------------------------------------
def _metadata(source: _Source, example, dynamic_batch: bool, diff: float, *, exporter: str,
              opset: int | None) -> dict[str, str]:
    cost = count(source.model, example)
    meta = {
        "example_input_shape": json.dumps([list(t.shape) for t in example]),
        "dynamic_batch": json.dumps(dynamic_batch),
        "exporter": exporter,
        "source": source.name,
        "params": str(cost.params),
        "macs": str(cost.macs),
        "max_abs_diff_vs_pytorch": f"{diff:.3g}",
        "exported_by": f"prune_explorer {__version__}, torch {torch.__version__}",
    }
    if opset is not None:
        meta["opset"] = str(opset)
    if source.base is not None:
        meta["base_architecture"] = json.dumps(source.base)
    return meta


def _source_of(model: Any, trust_code: Any = None) -> _Source:
    from .zoo import base_spec

    if isinstance(model, nn.Module):
        base = base_spec(model)
        name = type(model).__name__ + (f" ({base['arch']})" if base else "")
        return _Source(model=model, name=name, base=base)
    from . import store

    directory = Path(model)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a module and not a saved model directory")
    loaded = store.load(directory, trust_code=trust_code)
    return _Source(model=loaded, name=str(directory), base=store.load_spec(directory)["base"])


def _format_of(path: Any, fmt: str | None) -> str:
    fmt = fmt or Path(path).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (from {str(path)!r}); choose one of {', '.join(FORMATS)}")
    return fmt


def _as_tuple(inputs: Any) -> tuple:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs:
        return tuple(inputs)
    raise TypeError(f"example inputs must be a tensor or a non-empty tuple of tensors, got {type(inputs).__name__}")


def _io_names(n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    names_in = ["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)]
    names_out = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return names_in, names_out


def _n_outputs(program) -> int:
    return len(program.graph_signature.user_outputs)


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, unlike mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. a full disk: name the file it was for
            raise OSError(exc.errno, f"cannot write the export: {exc.strerror or exc}", str(path)) from exc
        raise


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    """The exporter's own summary line: the innermost cause's first non-empty line."""
    causes = list(_chain(exc))
    text = str(causes[-1]).strip() or str(exc).strip()
    return f"{type(causes[-1]).__name__}: {text.splitlines()[0] if text else ''}"


def _user_frame(exc: BaseException) -> str:
    for e in _chain(exc):
        match = re.search(r'The following call raised this error:\s*\n\s*(File "[^"]+", line \d+, in \w+)\s*\n\s*(.+)', str(e))
        if match:
            return f" at {match.group(1)}: {match.group(2).strip()}"
    return ""


def _mentions_batch(exc: BaseException) -> bool:
    text = "\n".join(str(e) for e in _chain(exc))
    return BATCH_DIM in text or "Constraints violated" in text
