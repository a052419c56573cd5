"""The TFRecord checksum of trial event files: masked CRC32C, as TensorFlow and TensorBoard write it.

Every record is `uint64 length | masked crc of length | payload | masked crc of payload`. smdebug's
writer puts a fixed placeholder (the masked CRC of the bytes b"0x12345678") in the payload's slot
unless asked for checksums, and computes CRC32C in pure Python (≈ 2 MB/s); google-crc32c (C,
hardware CRC32C where the CPU has it) is ≈ 10,000x faster (`benchmarks/trial_crc.py`), so the
capture writes real checksums and the reader verifies every record.
"""
from __future__ import annotations

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC32C of `data` (TensorFlow's `crc32c::Mask`)."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


PLACEHOLDER = masked_crc32c(b"0x12345678")  # smdebug's CHECKSUM_MAGIC_BYTES: "no checksum written"
