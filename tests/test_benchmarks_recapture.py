"""benchmarks/recapture_trial.py: a fresh trial for a trained iteration, its weights byte for byte the
same, and the same trial handed to copies of that model (never to a different one)."""
from __future__ import annotations

import filecmp
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from prune_explorer.loop import rank_iteration
from prune_explorer.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recapture_trial import copy_trial, recapture  # noqa: E402


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, digits_baseline) -> Path:
    """A workspace of its own holding a copy of the session's digits baseline (recapture writes into it)."""
    root = tmp_path_factory.mktemp("recapture") / "ws"
    assert Workspace(root).copy_baseline(digits_baseline)
    return root


def test_recapture_keeps_the_weights_and_writes_a_trial_the_global_criterion_ranks_from(baseline, tmp_path):
    directory = Workspace(baseline).iteration_dir("baseline")
    weights, metrics = tmp_path / "before.safetensors", (directory / "metrics.json").read_text()
    shutil.copy(directory / "model.safetensors", weights)
    old_trial = (directory / "trial").stat().st_ino

    trial = recapture(baseline)

    assert trial == directory / "trial" and (trial / "events").is_dir()
    assert filecmp.cmp(weights, directory / "model.safetensors", shallow=False)  # the model is not touched
    assert (directory / "metrics.json").read_text() == metrics
    assert trial.stat().st_ino != old_trial  # a new folder renamed into place
    assert not list(directory.parent.glob(".recapture-*"))  # the scratch folder is gone
    table = rank_iteration(Workspace(baseline), "baseline", criterion="taylor_global").table
    assert len(table) and np.isfinite(table["score"].to_numpy(dtype=float)).all()


def test_a_copy_of_the_same_model_gets_the_trial_and_a_different_model_is_refused(baseline, tmp_path):
    source = Workspace(baseline).iteration_dir("baseline")
    same, other = tmp_path / "same", tmp_path / "other"
    for root in (same, other):
        assert Workspace(root).copy_baseline(source)
    shutil.rmtree(same / "iterations" / "baseline" / "trial" / "events")
    (same / "iterations" / "baseline" / "trial" / "events").mkdir()

    copy_trial(source, same)
    assert sorted(p.name for p in (same / "iterations" / "baseline" / "trial" / "events").iterdir()) == \
        sorted(p.name for p in (source / "trial" / "events").iterdir())

    changed = other / "iterations" / "baseline" / "model.safetensors"
    changed.write_bytes(changed.read_bytes()[:-1] + b"\0")
    before = json.dumps(sorted(str(p.relative_to(other)) for p in other.rglob("*")))
    with pytest.raises(SystemExit, match=r"other/iterations/baseline: not the same weights"):
        copy_trial(source, other)
    assert json.dumps(sorted(str(p.relative_to(other)) for p in other.rglob("*"))) == before
