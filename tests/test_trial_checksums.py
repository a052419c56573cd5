"""Trials carry real TFRecord checksums (masked CRC32C, as TensorBoard writes them) and every reader
verifies them: a flipped byte is named by file and record; a trial written with smdebug's placeholder
is read with one warning line; smdebug's own readers and the Debugger rule file read ours."""
from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from aws_naming import TinyResNet
from prune_explorer.signals import crc
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import rank
from prune_explorer.signals.trials import open_trial
from smdebug.core.tfrecord._crc32c import crc32c as smdebug_crc32c
from smdebug.trials import create_trial


def _trial(path: Path, steps: int = 3, scalars=()) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyResNet()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))
    with CaptureHook(model, path, example_inputs=x[:1], mode="compact", save_every=1) as hook:
        for step in range(steps):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step < len(scalars):
                hook.save_scalar("val_accuracy", scalars[step])
    return model, x[:1]


def _records(event_file: Path) -> list[tuple[int, int, int]]:
    """(payload start, payload length, stored payload checksum) of every record."""
    data, at, found = event_file.read_bytes(), 0, []
    while at < len(data):
        (length,) = struct.unpack("Q", data[at:at + 8])
        (stored,) = struct.unpack("I", data[at + 12 + length:at + 16 + length])
        found.append((at + 12, length, stored))
        at += 16 + length
    return found


def _masked_by_smdebug(payload: bytes) -> int:
    """TFRecord's mask over smdebug's own (pure Python) CRC32C: an independent check of signals/crc.py."""
    value = smdebug_crc32c(payload) & 0xFFFFFFFF
    return (((value >> 15) | (value << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_every_record_of_our_trials_carries_its_real_crc32c(tmp_path):
    """Issue 22: the capture wrote smdebug's placeholder, so corrupt bytes could not be noticed."""
    _trial(tmp_path)
    events = sorted(tmp_path.rglob("*.tfevents"))
    assert events
    for event in events:
        data = event.read_bytes()
        for start, length, stored in _records(event):
            payload = data[start:start + length]
            assert stored == crc.masked_crc32c(payload) == _masked_by_smdebug(payload) != crc.PLACEHOLDER


def test_flipped_bytes_in_a_record_are_named_by_file_and_record(tmp_path):
    """Issue 22: 300 flipped bytes in a Taylor record changed 512 rank rows with no error."""
    model, x = _trial(tmp_path)
    event = max(tmp_path.rglob("*.tfevents"), key=lambda p: p.stat().st_size)
    start, length, _ = max(_records(event), key=lambda r: r[1])
    data = bytearray(event.read_bytes())
    for i in range(start + length // 2 - 20, start + length // 2 + 20):
        data[i] ^= 0xFF
    event.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{event.name}: (record \d+|the record of '.+') at byte {start - 12}: "
                                         r"bad CRC of the payload \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)"):
        rank(model, x, trial=open_trial(tmp_path, model, x), criterion="taylor")


def test_a_placeholder_trial_is_read_with_one_warning_line(tmp_path, caplog):
    """smdebug's own writers (and this project's trials before issue 22) put the placeholder there."""
    model, x = _trial(tmp_path / "ours")
    with caplog.at_level(logging.WARNING, logger="prune_explorer.trials"):
        verified = open_trial(tmp_path / "ours", model, x)
    assert verified.checksums == "verified" and not caplog.records
    stock = tmp_path / "stock"  # the same trial as the capture wrote it before issue 22: placeholders
    shutil.copytree(tmp_path / "ours", stock)
    for event in stock.rglob("*.tfevents"):
        data = bytearray(event.read_bytes())
        for start, length, _ in _records(event):
            data[start + length:start + length + 4] = struct.pack("I", crc.PLACEHOLDER)
        event.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prune_explorer.trials"):
        trial = open_trial(tmp_path / "stock", model, x)
    assert trial.checksums == "unverified"
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and str(tmp_path / "stock") in message and "placeholder checksum" in message


def test_smdebugs_reader_and_the_standalone_debugger_rule_read_real_checksums(tmp_path):
    """smdebug's readers accept only the placeholder in their default check; the package teaches them a real
    checksum, and the rule file uploaded to Debugger's container (without this package) does the same."""
    _trial(tmp_path / "trial", scalars=(0.9, 0.5, 0.45))
    assert create_trial(str(tmp_path / "trial")).tensor("scalar/val_accuracy").value(1).item() == pytest.approx(0.5)
    rules = Path(__file__).resolve().parents[1] / "prune_explorer" / "loop" / "rules.py"
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("uploaded_rule", {str(rules)!r})
rule_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rule_module)
assert not any(m.startswith("prune_explorer") for m in sys.modules), "the rule container has no prune_explorer"
from smdebug.trials import create_trial
from smdebug.rules.rule_invoker import invoke_rule
from smdebug.exceptions import RuleEvaluationConditionMet
trial = create_trial({str(tmp_path / 'trial')!r})
rule = rule_module.AccuracyDropSmdebugRule(trial, previous_accuracy="0.9", threshold="0.1", mode="latest")
try:
    invoke_rule(rule, start_step=0, end_step=trial.steps()[-1] + 1, raise_eval_cond=True)
except RuleEvaluationConditionMet as fired:
    print("fired at step", fired.step)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # not the repository: `import prune_explorer` must be impossible there
    assert done.returncode == 0, done.stderr
    assert "fired at step 1" in done.stdout
