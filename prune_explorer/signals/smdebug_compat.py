"""Make smdebug 1.0.34 write (and read back) tensors under numpy 2.

smdebug's upstream is dormant; its write path breaks on numpy >= 2 in exactly two places, and its
reader maps two integer types wrongly. Everything is patched in place, once, on import:

1. `smdebug.core.tfevent.util.make_tensor_proto` calls `ndarray.tostring()` (removed in numpy 2;
   `tobytes()` is byte-identical). `smdebug.core.writer` imports the function by name, so the
   replacement is installed in both modules.
2. `smdebug.core.tfevent.summary.scalar_summary` does `float()` of a shape-(1,) array (TypeError
   on numpy >= 2.4); reached only when a TensorBoard writer is active.
3. Reader: `event_file_reader.as_dtype` returns uint8 for DT_INT8 (negative values come back
   wrapped) and knows no DT_INT16/DT_UINT16/32/64, although the writer emits them. The table is
   completed so every dtype the writer supports reads back unchanged. Files stay byte-identical.

Never pin numpy<2 for smdebug: import this module instead.

5. Checksums: smdebug's record writer computes TFRecord's masked CRC32C in pure Python (≈ 2 MB/s).
   `record_writer.masked_crc32c` becomes `signals.crc.masked_crc32c` (google-crc32c, the same
   numbers), so a writer asked for checksums (`write_checksum=True`, as `CaptureHook` asks) costs
   next to nothing. smdebug's readers, in their default "minimal" check, accept only the placeholder
   a writer puts there without checksums; `read_record` of `TensorReader` and `RecordReader` is
   replaced so "minimal" accepts the placeholder or a payload checksum that verifies ("full" still
   insists on a real one). `loop/rules.py` carries the same replacement for Debugger's rule
   container, where this package is absent.

4. Logging: smdebug's logger prints INFO lines straight to stdout (`RULE_JOB_STOP_SIGNAL_FILENAME:
   None` on import), which breaks progress bars and fills every job's log. `route_logging()`
   (run here before any other smdebug import) hands its records to the `prune_explorer.smdebug`
   logger: WARNING and above by default; `PRUNE_EXPLORER_SMDEBUG_LOG=INFO` (or DEBUG) keeps them,
   on stderr, which in a job is its train.log.
"""
from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import version as _version

if int(_version("protobuf").split(".")[0]) >= 4:  # smdebug's generated code predates protobuf 4
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

LOGGER = "prune_explorer.smdebug"
LOG_LEVEL_ENV = "PRUNE_EXPLORER_SMDEBUG_LOG"


class _ToProjectLogger(logging.Handler):
    """Hands smdebug's records to the project's logger, which decides what shows."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(LOGGER)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def route_logging() -> logging.Logger:
    """Take over smdebug's logger (idempotent); returns the project logger its records go to."""
    import smdebug.core.logger as smdebug_logger  # imports nothing that logs

    source = smdebug_logger.get_logger()  # smdebug's one-time setup runs now, so it cannot undo ours later
    ours = logging.getLogger(LOGGER)
    if not any(isinstance(h, _ToProjectLogger) for h in source.handlers):
        source.handlers = [_ToProjectLogger()]
        source.propagate = False
        asked = os.environ.get(LOG_LEVEL_ENV, "").strip().upper()
        if asked in logging.getLevelNamesMapping():
            ours.setLevel(asked)
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("[smdebug %(levelname)s %(filename)s:%(lineno)d] %(message)s"))
            ours.addHandler(handler)
            ours.propagate = False
        elif ours.level == logging.NOTSET:
            ours.setLevel(logging.WARNING)
    return ours


route_logging()

import numpy as np  # noqa: E402
import smdebug.core.tfevent.event_file_reader as _event_file_reader  # noqa: E402
import smdebug.core.tfevent.proto.types_pb2 as _types_pb2  # noqa: E402
import smdebug.core.tfevent.summary as _summary  # noqa: E402
import smdebug.core.tfevent.util as _util  # noqa: E402
import smdebug.core.tfrecord.record_reader as _record_reader  # noqa: E402
import smdebug.core.tfrecord.record_writer as _record_writer  # noqa: E402
import smdebug.core.tfrecord.tensor_reader as _tensor_reader  # noqa: E402
import smdebug.core.writer as _writer  # noqa: E402
from smdebug.core.tfevent.proto.summary_pb2 import Summary  # noqa: E402
from smdebug.core.tfevent.proto.tensor_pb2 import TensorProto  # noqa: E402
from smdebug.core.tfevent.proto.tensor_shape_pb2 import TensorShapeProto  # noqa: E402
from smdebug.exceptions import SMDebugRuntimeError  # noqa: E402

from .crc import PLACEHOLDER, masked_crc32c  # noqa: E402

_PATCHED = "_prune_explorer_numpy2"

_READ_DTYPES = {
    _types_pb2.DT_HALF: np.float16,
    _types_pb2.DT_FLOAT: np.float32,
    _types_pb2.DT_DOUBLE: np.float64,
    _types_pb2.DT_INT8: np.int8,
    _types_pb2.DT_INT16: np.int16,
    _types_pb2.DT_INT32: np.int32,
    _types_pb2.DT_INT64: np.int64,
    _types_pb2.DT_UINT8: np.uint8,
    _types_pb2.DT_UINT16: np.uint16,
    _types_pb2.DT_UINT32: np.uint32,
    _types_pb2.DT_UINT64: np.uint64,
    _types_pb2.DT_BOOL: bool,
    _types_pb2.DT_STRING: str,
    _types_pb2.DT_COMPLEX64: np.complex64,
    _types_pb2.DT_COMPLEX128: np.complex128,
}


def make_tensor_proto(nparray_data: np.ndarray, tag: str) -> TensorProto:
    """smdebug's make_tensor_proto with `tobytes()` in place of the removed `tostring()`."""
    is_number, dtype = _util._get_proto_dtype(nparray_data.dtype)
    dims = [TensorShapeProto.Dim(size=d, name=f"{tag}_{d}") for d in nparray_data.shape]
    shape = TensorShapeProto(dim=dims)
    if is_number:
        return TensorProto(dtype=dtype, tensor_content=nparray_data.tobytes(), tensor_shape=shape)
    proto = TensorProto(tensor_shape=shape)
    for s in nparray_data:
        proto.string_val.append(bytes(s, encoding="utf-8"))
    return proto


def scalar_summary(tag: str, scalar) -> Summary:
    """smdebug's scalar_summary, taking the single element explicitly (numpy >= 2.4)."""
    value = _summary.make_numpy_array(scalar)
    if value.squeeze().ndim != 0:
        raise SMDebugRuntimeError("scalar should be 0D")
    return Summary(value=[Summary.Value(tag=_summary._clean_tag(tag), simple_value=float(value.item()))])


def as_dtype(proto_dtype: int):
    """The numpy dtype of a TensorProto dtype code (complete and sign-correct)."""
    return _READ_DTYPES[proto_dtype]


def read_record(read, check: str = "minimal") -> bytes:
    """One TFRecord through `read(n)`: the length's checksum verified ("minimal", "full"), the payload's
    verified unless it is smdebug's placeholder ("minimal" only)."""
    import struct

    length_bytes = read(8)
    (length,) = struct.unpack("Q", length_bytes)
    (length_crc,) = struct.unpack("I", read(4))
    if check in ("minimal", "full") and length_crc != masked_crc32c(length_bytes):
        raise SMDebugRuntimeError(f"bad CRC of the record length ({length_crc:#010x})")
    payload = read(length)
    (payload_crc,) = struct.unpack("I", read(4))
    placeholder_ok = check == "minimal" and payload_crc == PLACEHOLDER
    if check in ("minimal", "full") and not placeholder_ok and payload_crc != masked_crc32c(payload):
        raise SMDebugRuntimeError(f"bad CRC of the record payload ({payload_crc:#010x})")
    return payload


def install() -> None:
    """Install the replacements (idempotent)."""
    if getattr(_util, _PATCHED, False):
        return
    _util.make_tensor_proto = make_tensor_proto
    _writer.make_tensor_proto = make_tensor_proto
    _summary.scalar_summary = scalar_summary
    _writer.scalar_summary = scalar_summary
    _event_file_reader.as_dtype = as_dtype
    _record_writer.masked_crc32c = masked_crc32c
    _tensor_reader.TensorReader.read_record = lambda self, check="minimal": read_record(self._read, check)
    _record_reader.RecordReader.read_record = lambda self, check="minimal": read_record(self._reader.read, check)
    _tensor_reader.TensorReader._prune_explorer_crc = _record_reader.RecordReader._prune_explorer_crc = True
    setattr(_util, _PATCHED, True)


install()
