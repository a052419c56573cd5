"""A team's own training script (examples/custom_training) as the job, end to end, on both backends.

Each test runs the iteration the way the loop does — a baseline job with the user's script, rank
its filters from the trial that script captured, cut the lowest, fine-tune the pruned model with
the same script, track both in MLflow — once on the local backend (real processes) and once on the
SageMaker backend against moto, where the test plays the container from what the job was given
(the uploaded source tarball, the data and model channels, the hyperparameters).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import torch

from prune_explorer.jobs import COMPLETED, RUNNING, JobQueue
from prune_explorer.model import store
from prune_explorer.tracking import MlflowTracker
from sagemaker_fakes import aws, backend, moto_job, play_container, upload_folder  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_training"
sys.path.insert(0, str(EXAMPLE))
from make_digits import make_digits  # noqa: E402

PRUNE = 96  # filters cut from the baseline
HYPER = dict(epochs=2, batch_size=32, lr=0.002, image_size=16, seed=0, measure_latency=False,
             label_smoothing=0.2, val_fraction=0.25, capture_every=4)


@pytest.fixture(autouse=True)
def one_thread_jobs(monkeypatch):
    """Jobs inherit the environment: one thread each, as a busy 2-core machine runs them best."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """sklearn digits as PNG class folders (20 a class), the example's own input format."""
    return make_digits(tmp_path_factory.mktemp("data") / "digits", per_class=20, size=16)


def prune_from_trial(parent: Path, out: Path):
    """The loop's step: rank the parent's filters from its trial (taylor), cut the lowest, save."""
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune
    from prune_explorer.signals.ranking import rank
    from prune_explorer.signals.trials import open_trial

    model = store.load(parent).eval()
    shape = json.loads((parent / "metrics.json").read_text())["input_shape"]
    x = torch.zeros(1, *shape)
    graph = ChannelGraph.trace(model, x)
    trial = open_trial(parent / "trial", model=model, example_inputs=x, graph=graph)
    table = rank(model, x, trial=trial, criterion="taylor", graph=graph)
    assert table["steps"].min() > 0  # ranked from what the user's script captured
    plan = PrunePlan.lowest(table, graph, n=PRUNE, scheme="internal")
    pruned_dir = store.save(prune(model, plan, x, graph=graph), out / "pruned")
    return pruned_dir, plan


def check_iterations(tracker: MlflowTracker, baseline, child) -> None:
    """What both backends must leave: two tracked iterations made by the user's script."""
    from prune_explorer.loop.rules import read_accuracies

    for job in (baseline, child):
        assert job.status == COMPLETED, job.message
        assert job.entry_point == "train.py" and job.source_dir == str(EXAMPLE)
        result = job.result
        assert result["script"] == "train.py" and result["unused_hyperparameters"] == []
        assert result["config"]["hyperparameters"]["label_smoothing"] == 0.2  # the script's own flag arrived
        assert result["first_batch"]["shape"] == [32, 3, 16, 16]
        out = Path(job.out_dir)
        assert read_accuracies(out / "trial") == pytest.approx([e["val_accuracy"] for e in result["epochs"]])
        assert sum(p.numel() for p in store.load(out).parameters()) == result["params"]
    assert baseline.result["best_accuracy"] > 0.2  # 10 classes, 50 validation images: chance is 0.1

    history = tracker.history().set_index("iteration")
    assert list(history.index) == ["baseline", "iter-001"]
    base, pruned = history.loc["baseline"], history.loc["iter-001"]
    assert (base["status"], pruned["status"]) == ("completed", "completed")
    assert pruned["parent"] == "baseline" and pruned["criterion"] == "taylor"
    assert pruned["filters_removed"] == PRUNE
    assert pruned["params"] == child.result["params"] < base["params"] == baseline.result["params"]
    assert pruned["accuracy"] == pytest.approx(child.result["best_accuracy"])


@pytest.mark.slow
def test_the_users_script_runs_the_iteration_on_the_local_backend(digits, tmp_path):
    workspace = tmp_path / "ws"
    queue = JobQueue(workspace, backend="local", tracker=MlflowTracker(workspace), poll_interval=0.1)
    hyper = dict(HYPER, data_dir=str(digits))
    baseline = queue.submit("resnet18", iteration="baseline", hyperparameters=hyper,
                            entry_point="train.py", source_dir=EXAMPLE)
    baseline = queue.wait(baseline.id, timeout=300)
    assert baseline.status == COMPLETED, baseline.message

    out = workspace / "iterations" / "iter-001"
    pruned_dir, plan = prune_from_trial(Path(baseline.out_dir), out)
    child = queue.submit(pruned_dir, out_dir=out, parent="baseline", plan=plan, criterion="taylor",
                         iteration="iter-001", entry_point=EXAMPLE / "train.py", source_dir=EXAMPLE,
                         hyperparameters=dict(hyper, epochs=1, stop_rule_threshold=0.5,
                                              baseline_accuracy=baseline.result["best_accuracy"]))
    child = queue.wait(child.id, timeout=300)
    queue.close()
    check_iterations(queue.tracker, baseline, child)
    assert "[job] epoch 1/1" in child.log_tail(20)


@pytest.mark.slow
def test_the_users_script_runs_the_iteration_on_sagemaker(aws, digits, tmp_path, monkeypatch):
    workspace = tmp_path / "ws"
    data = upload_folder(aws, digits, f"s3://{aws['bucket']}/datasets/digits")
    sm = backend(aws, debugger=False, rule_threshold=0.5, inputs={"train": data})
    started = threading.Event()

    def on_change(job) -> None:
        if job.status == RUNNING and job.backend_id and not started.is_set():
            moto_job(aws, job.backend_id).training_job_status = "InProgress"  # moto says Completed at once
            started.set()

    queue = JobQueue(workspace, backend=sm, tracker=MlflowTracker(workspace), poll_interval=0.1)
    queue.on_change(on_change)

    def run_on_sagemaker(model, **submit):
        started.clear()
        job = queue.submit(model, hyperparameters=submit.pop("hyperparameters", HYPER), entry_point="train.py",
                           source_dir=EXAMPLE, **submit)
        assert started.wait(60), "the queue never started the training job"
        played = play_container(aws, job.backend_id, tmp_path / "container" / job.id, monkeypatch)
        assert played["exit_code"] == 0
        assert "smdebug>=1.0.34" in played["requirements"]
        assert (played["code_dir"] / "train.py").read_bytes() == (EXAMPLE / "train.py").read_bytes()
        moto_job(aws, job.backend_id).training_job_status = "Completed"
        return queue.wait(job.id, timeout=60)

    baseline = run_on_sagemaker("resnet18", iteration="baseline")
    assert baseline.status == COMPLETED, baseline.message
    described = aws["sagemaker"].describe_training_job(TrainingJobName=baseline.backend_id)
    assert described["HyperParameters"]["sagemaker_program"] == "train.py"
    assert described["HyperParameters"]["model"] == "resnet18"

    out = workspace / "iterations" / "iter-001"
    pruned_dir, plan = prune_from_trial(Path(baseline.out_dir), out)
    child = run_on_sagemaker(pruned_dir, out_dir=out, parent="baseline", plan=plan, criterion="taylor",
                             iteration="iter-001", hyperparameters=dict(HYPER, epochs=1))
    queue.close()
    described = aws["sagemaker"].describe_training_job(TrainingJobName=child.backend_id)
    channels = {c["ChannelName"] for c in described["InputDataConfig"]}
    assert channels == {"code", "train", "model"} and "model" not in described["HyperParameters"]
    # without Debugger the rule runs inside the user's script, against the parent's accuracy
    assert float(described["HyperParameters"]["baseline_accuracy"]) == baseline.result["best_accuracy"]
    assert child.result["baseline_accuracy"] == baseline.result["best_accuracy"]
    check_iterations(queue.tracker, baseline, child)
