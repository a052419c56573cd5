"""The backend registry (`jobs.backends.BACKENDS`): a backend registered from here — one class, one
entry, nothing else edited — runs `JobQueue`'s jobs, `prune-explorer run`'s (its option a CLI flag)
and shows in the panel's backend list; options a backend does not take are refused by name, and an
older loop_config.json with flat SageMaker fields still reads."""
from __future__ import annotations

import json

import pytest

from prune_explorer.cli import main as cli_main
from prune_explorer.jobs import COMPLETED, BackendEntry, JobQueue, LocalBackend, Option
from prune_explorer.jobs.backends import BACKENDS, make_backend
from prune_explorer.loop import LoopConfig
from prune_explorer.workspace import Workspace

QUICK = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, capture="none",
             measure_latency=False, seed=0)


class RecordingBackend(LocalBackend):
    """Local processes, each start recorded with the `tag` the backend was built with."""

    name = "recording"
    starts: list[tuple[str, str]] = []

    def __init__(self, tag: str = "untagged"):
        super().__init__()
        self.tag = tag

    def start(self, job):
        RecordingBackend.starts.append((self.tag, job.iteration))
        super().start(job)


@pytest.fixture
def recording(monkeypatch):
    """The one entry: registered for this test only, so other tests see the registry as it ships."""
    monkeypatch.setitem(BACKENDS, "recording", BackendEntry(RecordingBackend, (Option("tag", help="a label"),),
                                                            "local processes, recorded"))
    RecordingBackend.starts.clear()
    return RecordingBackend.starts


def test_a_registered_backend_runs_the_queues_jobs(recording, tmp_path):
    with JobQueue(tmp_path, backend="recording", tracker=False) as queue:
        job = queue.wait(queue.submit("resnet18", iteration="baseline", hyperparameters=QUICK).id, timeout=600)
    assert job.status == COMPLETED and job.backend == "recording" and job.metrics.best_accuracy is not None
    assert recording == [("untagged", "baseline")]
    assert isinstance(make_backend("recording", tag="t"), RecordingBackend)


def test_prune_explorer_run_takes_the_registered_backend_and_its_option_flag(recording, digits_baseline, tmp_path,
                                                                              capsys):
    workspace = tmp_path / "ws"
    assert Workspace(workspace).copy_baseline(digits_baseline)  # the run trains only the iteration
    argv = ["run", "--workspace", str(workspace), "--backend", "recording", "--tag", "from-cli", "--dataset",
            "digits", "--iterations", "1", "--baseline-epochs", "1", "--epochs", "1", "--subset", "60",
            "--val-subset", "40", "--batch-size", "30", "--image-size", "8", "--per-iteration", "32",
            "--threshold", "1.0", "--criterion", "l1", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert recording == [("from-cli", "iter-001")]
    (job,) = JobQueue(workspace, tracker=False).jobs()
    assert (job.backend, job.iteration, job.status) == ("recording", "iter-001", COMPLETED)
    saved = json.loads((workspace / "loop_config.json").read_text())
    assert (saved["backend"], saved["backend_options"]) == ("recording", {"tag": "from-cli"})
    assert LoopConfig.from_dict(saved).validate().backend_options == {"tag": "from-cli"}
    assert cli_main([*argv[:7], "--role", "arn:aws:iam::1:role/x"]) == 1
    assert "--role is an option of backend sagemaker, not of 'recording'" in capsys.readouterr().err


def test_the_panels_backend_list_is_the_registry(recording):
    import torch
    import torchvision

    from prune_explorer.widgets import Explorer

    panel = Explorer(torchvision.models.resnet18(num_classes=10), example_inputs=torch.zeros(1, 3, 32, 32),
                     criterion="l1")
    try:
        assert set(panel.finetune.backend.options) == set(BACKENDS) and "recording" in panel.finetune.backend.options
    finally:
        panel.close()


def test_options_a_backend_does_not_take_are_refused_by_name():
    with pytest.raises(ValueError, match="backend 'local' does not take role_arn"):
        LoopConfig(backend="local", backend_options={"role_arn": "x"}).validate()
    with pytest.raises(ValueError, match="unknown name 'nowhere'.*local, sagemaker"):
        make_backend("nowhere")
    with pytest.raises(ValueError, match="does not take flavour"):
        make_backend("local", flavour="x")
    with pytest.raises(ValueError, match="data_dir 's3://b/d' is on S3: only backend 'sagemaker' reads it"):
        LoopConfig(data_dir="s3://b/d").validate()


def test_an_older_loop_config_with_flat_sagemaker_fields_still_reads():
    old = dict(workspace="ws", backend="sagemaker", role="arn:aws:iam::1:role/r", bucket="b", instance_type=None,
               instance_count=2, debugger=False, region="us-east-1")
    config = LoopConfig.from_dict(old).validate()
    assert config.backend_options == {"role_arn": "arn:aws:iam::1:role/r", "bucket": "b", "instance_count": 2,
                                      "debugger": False}
    local = LoopConfig.from_dict(dict(workspace="ws", backend="local", instance_count=1, role=None)).validate()
    assert local.backend_options == {}
    with pytest.raises(ValueError, match="loop_config.json: unknown field.*colour"):
        LoopConfig.from_dict({"colour": "red"}, source="loop_config.json")
