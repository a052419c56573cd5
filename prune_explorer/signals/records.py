"""Reading the TFRecord event records of a trial: every record's length and payload checksum verified
(`signals/crc.py`), a truncated or corrupt record refused naming its file, record and byte, and
smdebug's placeholder checksum counted so the trial can warn once (`Checksums`)."""
from __future__ import annotations

import struct
import threading
from typing import Iterator

import numpy as np

from . import smdebug_compat
from .crc import PLACEHOLDER, masked_crc32c
from smdebug.core.tfevent.proto.event_pb2 import Event
from smdebug.core.tfrecord.tensor_reader import TensorReader


class Checksums:
    """Records read without a checksum to verify (smdebug's placeholder), counted across reader threads."""

    def __init__(self):
        self.placeholders = 0
        self.files: set[str] = set()
        self._lock = threading.Lock()

    def unverified(self, filename: str) -> None:
        with self._lock:
            self.placeholders += 1
            self.files.add(filename)

    def warning(self, path: str) -> str:
        return (f"{path}: {self.placeholders} records in {len(self.files)} event files carry smdebug's placeholder "
                "checksum (written without write_checksum), so their bytes are not verified")


class CheckedReader(TensorReader):
    """smdebug's record reader, refusing truncated records and bad checksums with the file's name.

    Every record's payload checksum is verified (masked CRC32C); smdebug's placeholder, written when
    a writer was not asked for checksums, is counted in `checks` (the trial warns once) instead.
    `offset` is where `data` starts in the file and `name` the tensor an index says it holds."""

    def __init__(self, data: bytes, filename: str, checks: "Checksums | None" = None, offset: int = 0,
                 name: str | None = None):
        super().__init__(memoryview(data))
        self.filename, self.checks, self.offset, self.name = filename, checks, offset, name
        self.records = 0

    def _take(self, n: int, what: str):
        if self.position + n > self.max_pos:
            raise ValueError(f"{self.filename}: truncated event file ({what} at byte {self.offset + self.position} "
                             f"needs {n} bytes, {self.max_pos - self.position} left)")
        return self._read(n)

    def _record(self, start: int) -> str:
        index = f"record {self.records}" if self.name is None else f"the record of {self.name!r}"
        return f"{index} at byte {self.offset + start}"

    def read_record(self, check: str = "minimal"):
        start = self.position
        length_bytes = bytes(self._take(8, "record length"))
        (length,) = struct.unpack("Q", length_bytes)
        (length_crc,) = struct.unpack("I", self._take(4, "length checksum"))
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"{self.filename}: {self._record(start)}: bad CRC of the record length (the file is corrupt)")
        payload = self._take(length, "record payload")
        (payload_crc,) = struct.unpack("I", self._take(4, "payload checksum"))
        if payload_crc == PLACEHOLDER:
            if self.checks is not None:
                self.checks.unverified(self.filename)
        else:
            computed = masked_crc32c(payload)
            if payload_crc != computed:
                raise ValueError(f"{self.filename}: {self._record(start)}: bad CRC of the payload (stored "
                                 f"{payload_crc:#010x}, computed {computed:#010x}): the file is corrupt")
        self.records += 1
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
