"""Workspace: the one owner of WORKSPACE/ — names reserved across processes, the baseline trained once
and checked, lineage from the jobs that made each iteration, example inputs, the prune step, verdicts."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from conftest import DIGITS_BASELINE

from prune_explorer.jobs import COMPLETED, Job
from prune_explorer.loop import prune_step
from prune_explorer.model import store
from prune_explorer.model.zoo import build_model
from prune_explorer.workspace import BASELINE, Workspace

HP = DIGITS_BASELINE  # what conftest's `digits_baseline` was trained with by Workspace.ensure_baseline


@pytest.fixture
def space(tmp_path, digits_baseline):
    space = Workspace(tmp_path / "ws")
    assert space.copy_baseline(digits_baseline) and not space.copy_baseline(digits_baseline)
    assert space.iteration(BASELINE).accuracy is not None
    return space


RESERVE = """
import sys
from prune_explorer.workspace import Workspace
space = Workspace(sys.argv[1])
print(" ".join(space.reserve_iteration() for _ in range(int(sys.argv[2]))))
"""


def test_iteration_names_reserved_by_processes_at_once_are_distinct(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", RESERVE, str(tmp_path), "15"], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = [name for p in procs for name in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(names) == [f"iter-{k:03d}" for k in range(1, 61)]  # 60 distinct, none skipped
    assert sorted(p.name for p in (tmp_path / "iterations").iterdir()) == sorted(names)


def test_a_baseline_on_disk_is_reused_and_tracked_once(space):
    with space.queue() as queue:
        assert space.ensure_baseline(queue, "resnet18", HP).name == BASELINE
        first = queue.tracker.run_id(BASELINE)
        space.ensure_baseline(queue, "resnet18", HP)
        assert queue.jobs() == [] and first is not None and queue.tracker.run_id(BASELINE) == first
        row = queue.tracker.history().set_index("iteration").loc[BASELINE]
    assert row["status"] == COMPLETED and row["params"] == json.loads((space.iteration_dir(BASELINE) / "metrics.json")
                                                                      .read_text())["params"]


def test_the_panels_baseline_is_refused_when_trained_with_other_settings(space, monkeypatch):
    from prune_explorer.widgets.setup import ensure_baseline

    monkeypatch.setenv("PRUNE_EXPLORER_FAST", "1")  # the notebooks' digits setup: 16 px, 256 examples
    with pytest.raises(ValueError, match=r"baseline was trained with other settings: .*subset=60 \(this run: 256\)"):
        ensure_baseline(space.root)
    assert not list((space.root / "jobs").glob("*.json"))  # nothing was trained over it


def test_two_callers_at_once_train_the_baseline_once(tmp_path):
    space = Workspace(tmp_path)
    results, errors = [], []

    def call():
        try:
            with space.queue(tracker=False) as queue:
                results.append(space.ensure_baseline(queue, "resnet18", {**HP, "capture": "none"}, timeout=300))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    assert not errors and len(results) == 2
    (job,) = [Job.load(p) for p in (tmp_path / "jobs").glob("*.json")]
    assert job.iteration == BASELINE and job.status == COMPLETED


def test_lineage_follows_the_jobs_that_made_each_iteration(tmp_path):
    space = Workspace(tmp_path)
    for name, parent in (("baseline", None), ("iter-001", "baseline"), ("iter-002", "iter-001"),
                         ("iter-003", "baseline")):
        Job(id=f"job-{name}", backend="local", model="m", out_dir=str(space.iteration_dir(name)), parent=parent,
            iteration=name, status=COMPLETED).save(tmp_path / "jobs")
    assert space.lineage("iter-002") == ["baseline", "iter-001", "iter-002"]
    assert space.lineage("iter-003") == ["baseline", "iter-003"]
    assert space.lineage(BASELINE) == [BASELINE]


def test_example_inputs_follow_the_recorded_shape_or_the_model(space, tmp_path):
    shape = json.loads((space.iteration_dir(BASELINE) / "metrics.json").read_text())["input_shape"]
    assert tuple(space.example_inputs(BASELINE).shape) == (1, *shape)
    bare = Workspace(tmp_path / "bare")
    model = build_model("resnet18", num_classes=10)
    assert tuple(bare.example_inputs("iter-001", model, dataset="digits").shape) == (1, 3, 8, 8)
    assert tuple(bare.example_inputs("iter-001", model, image_size=20).shape) == (1, 3, 20, 20)
    with pytest.raises(ValueError, match=r"iter-001/metrics.json: no input_shape"):
        bare.example_inputs("iter-001")


def test_an_iteration_opens_with_its_model_trial_and_recipe(space):
    model, x, trial, recipe = space.open_iteration(BASELINE)
    assert trial == space.iteration_dir(BASELINE) / "trial" and x.shape[0] == 1
    assert model(x).shape == (1, 10)
    with pytest.raises(KeyError, match="iter-042"):
        space.open_iteration("iter-042")


def test_the_prune_step_saves_and_submits_or_writes_nothing(space):
    from prune_explorer.jobs import JobQueue

    queue = JobQueue(space.root, tracker=False)
    queue.close()  # submitted jobs stay queued: this test looks at what the step wrote
    parent = space.iteration(BASELINE)
    floor = prune_step(space, queue, parent, criterion="l1", per_iteration=32, scheme="all", hyperparameters=HP,
                       min_params=10**10, capture="none")
    assert floor.job is None and "below the floor" in floor.reason
    assert not list(space.iterations_dir.glob("iter-*"))
    step = prune_step(space, queue, parent, criterion="l1", per_iteration=32, scheme="all", hyperparameters=HP,
                      capture="none")
    assert step.name == "iter-001" and step.job.iteration == "iter-001" and step.job.parent == BASELINE
    pruned = store.load(space.iteration_dir("iter-001") / "pruned")
    assert sum(p.numel() for p in pruned.parameters()) == step.params
    assert step.job.model == str(space.iteration_dir("iter-001") / "pruned") and sum(step.job.plan.values()) == 32
    assert store.load_spec(space.iteration_dir("iter-001") / "pruned")["metadata"]["parent"] == BASELINE


def test_a_rule_verdict_is_kept_in_metrics_json(space, tmp_path):
    target = space.iteration_dir("iter-001")
    store.save(build_model("resnet18", num_classes=10), target)
    (target / "metrics.json").write_text(json.dumps({"status": "completed", "best_accuracy": 0.5}))
    assert space.completed_iterations() == ["iter-001"]
    space.mark_stopped("iter-001", "best accuracy 0.5 is 0.4 below the previous iteration's 0.9")
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and metrics["best_accuracy"] == 0.5 and "0.4 below" in metrics["reason"]
    assert space.completed_iterations() == [] and space.start_point("latest").name == BASELINE
    with pytest.raises(FileNotFoundError, match="iter-009"):
        space.mark_stopped("iter-009", "x")
