"""What verifying every record's checksum costs when reading a big trial (issue 22).

A full-mode resnet18 trial (benchmarks/ranking.py's) is written with real CRC32C per record, then a
copy gets smdebug's placeholder in every payload-checksum slot (what the capture wrote before, which
the reader cannot verify). `open_trial` + `rank` on both, interleaved, one process, best of 3: the
ratio is the price of the check. The CRC32C itself: google-crc32c (signals/crc.py) against
smdebug's pure-Python table on the same bytes, the reason a table in Python or numpy is not used.
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from prune_explorer.signals import crc
from prune_explorer.signals.ranking import rank
from prune_explorer.signals.trials import open_trial

sys.path.insert(0, str(Path(__file__).parent))
from ranking import SIZE, STEPS, make_trial  # noqa: E402

REPEATS = 3


def to_placeholders(trial: Path) -> None:
    """Every payload checksum replaced by smdebug's placeholder (the bytes are otherwise the same)."""
    for event in trial.rglob("*.tfevents"):
        data, at = bytearray(event.read_bytes()), 0
        while at < len(data):
            (length,) = struct.unpack("Q", data[at:at + 8])
            data[at + 12 + length:at + 16 + length] = struct.pack("I", crc.PLACEHOLDER)
            at += 16 + length
        event.write_bytes(bytes(data))


def read_and_rank(path: Path, model) -> float:
    t0 = time.perf_counter()
    trial = open_trial(path, model, torch.zeros(1, 3, SIZE, SIZE))
    rank(model, None, trial=trial, criterion="taylor_aws")
    return time.perf_counter() - t0


def main() -> None:
    import logging

    from smdebug.core.tfrecord._crc32c import crc32c as pure_python

    logging.getLogger("prune_explorer.trials").setLevel(logging.ERROR)  # the placeholder copy's warning
    torch.set_num_threads(1)
    model = torchvision.models.resnet18(num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        verified, unverified = Path(tmp, "verified"), Path(tmp, "placeholder")
        make_trial(str(verified), model)
        shutil.copytree(verified, unverified)
        to_placeholders(unverified)
        nbytes = sum(p.stat().st_size for p in verified.rglob("*.tfevents"))
        times = {"verified": [], "placeholder": []}
        for _ in range(REPEATS):
            times["verified"].append(read_and_rank(verified, model))
            times["placeholder"].append(read_and_rank(unverified, model))
    sample = os.urandom(1 << 20)
    t0 = time.perf_counter()
    crc.masked_crc32c(sample)
    fast = time.perf_counter() - t0
    small = sample[: 64 << 10]
    t0 = time.perf_counter()
    pure_python(small)
    slow = (time.perf_counter() - t0) * len(sample) / len(small)
    best = {k: min(v) for k, v in times.items()}
    print(f"trial: {STEPS} steps, {nbytes / 1e6:.0f} MB in event files, best of {REPEATS}")
    print(f"read + rank: checksums verified {best['verified']:.2f} s, placeholder (unverified) "
          f"{best['placeholder']:.2f} s, ratio {best['verified'] / best['placeholder']:.3f}")
    print(f"crc32c of 1 MiB: google-crc32c {fast * 1e3:.3f} ms ({len(sample) / fast / 1e9:.1f} GB/s), smdebug's pure "
          f"Python {slow:.2f} s ({len(sample) / slow / 1e6:.1f} MB/s, {slow / fast:,.0f}x slower): "
          f"{nbytes / 1e6:.0f} MB would take {nbytes / (len(sample) / slow):.0f} s")


if __name__ == "__main__":
    sys.exit(main())
