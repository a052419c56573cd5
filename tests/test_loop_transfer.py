"""The example's scenario through the loop and the CLI: a pretrained start, the user's own training
script, and the README's real-world command (resnet18 IMAGENET1K_V1 on Caltech101 on SageMaker).

The pretrained runs use a local weights file (the shape of ImageNet's resnet18) and sklearn digits;
the asserted inputs are the batches each job itself fed its model (metrics.json `first_batch`).
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

from prune_explorer.cli import build_parser, loop_config, main as cli_main
from prune_explorer.jobs.data import IMAGENET_MEAN, IMAGENET_STD
from prune_explorer.jobs import JobQueue
from prune_explorer.model import store
from prune_explorer.tracking import MlflowTracker
from prune_explorer.workspace import BASELINE, Workspace
from sagemaker_fakes import aws  # noqa: F401  (the moto-backed AWS fixture)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_training"
QUICK = ["--dataset", "digits", "--image-size", "16", "--subset", "120", "--val-subset", "60", "--batch-size", "30",
         "--baseline-epochs", "1", "--epochs", "1", "--iterations", "1", "--per-iteration", "48",
         "--threshold", "1.0", "--quiet"]


def _jobs(workspace: Path) -> dict:
    return {j.iteration: j for j in JobQueue(workspace, tracker=False).jobs()}


def _black_is_imagenet_normalised(first_batch: dict) -> None:
    """Digits have black (0) pixels in every image: their value per channel is ImageNet's (0 - mean) / std."""
    assert first_batch["shape"][1] == 3  # grey digits as RGB for an RGB first conv
    black = [(0.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert first_batch["min"] == pytest.approx(black, abs=1e-5)


@pytest.mark.slow
def test_the_cli_loop_starts_from_pretrained_weights_and_every_child_keeps_the_data_recipe(imagenet_weights, tmp_path):
    workspace = tmp_path / "ws"
    assert cli_main(["run", "--workspace", str(workspace), "--weights", str(imagenet_weights), *QUICK]) == 0
    jobs = _jobs(workspace)
    baseline, child = jobs[BASELINE], jobs["iter-001"]
    assert baseline.hyperparameters["weights"] == str(imagenet_weights)       # only the baseline starts from them
    assert "weights" not in child.hyperparameters and child.model.endswith("iter-001/pruned")
    assert (child.hyperparameters["normalize"], child.hyperparameters["augment"]) == ("imagenet", True)
    assert child.hyperparameters["image_size"] == 16

    for job in (baseline, child):
        metrics = json.loads((Path(job.out_dir) / "metrics.json").read_text())
        assert metrics["data_recipe"] == {"normalize": "imagenet", "augment": True}
        _black_is_imagenet_normalised(metrics["first_batch"])
    tuned = store.load(workspace / "iterations" / BASELINE)
    assert tuned.fc.out_features == 10  # the 1000-class head replaced for the digits
    pretrained = torch.load(imagenet_weights, weights_only=True)
    assert not torch.equal(tuned.layer1[0].conv1.weight, pretrained["layer1.0.conv1.weight"])  # fine-tuned from them
    assert torch.allclose(tuned.layer1[0].conv1.weight, pretrained["layer1.0.conv1.weight"], atol=0.05)

    history = MlflowTracker(workspace).history().set_index("iteration")
    assert history.loc["iter-001", "parent"] == BASELINE and history.loc["iter-001", "filters_removed"] == 48
    assert history["script"].tolist() == ["prune_explorer.jobs.train"] * 2
    assert json.loads((workspace / "loop_config.json").read_text())["weights"] == str(imagenet_weights)

    # another pretrained start is another baseline: refused by name before any job runs (leaving --weights
    # out would continue this lineage with its recorded weights: loop/recipe.py)
    other = tmp_path / "other-weights.pth"
    other.write_bytes(imagenet_weights.read_bytes())
    assert cli_main(["run", "--workspace", str(workspace), "--weights", str(other), *QUICK]) == 2
    assert len(_jobs(workspace)) == 2


@pytest.mark.slow
def test_the_cli_loop_runs_the_users_own_script_for_every_job(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLE))
    from make_digits import make_digits

    data = make_digits(tmp_path / "digits", per_class=12, size=16)
    workspace = tmp_path / "ws"
    script = ["--entry-point", str(EXAMPLE / "train.py"), "--source-dir", str(EXAMPLE), "--data-dir", str(data)]
    assert cli_main(["run", "--workspace", str(workspace), *script, *QUICK]) == 0
    jobs = _jobs(workspace)
    for job in jobs.values():
        assert (job.entry_point, job.source_dir) == ("train.py", str(EXAMPLE)), job
        assert job.status == "completed" and job.result["script"] == "train.py"
        assert "[job] epoch 1/1" in job.log_tail(30)  # the example's own log prefix, not train.py's
    assert jobs["iter-001"].parent == BASELINE and sum(jobs["iter-001"].plan.values()) == 48
    history = MlflowTracker(workspace).history()
    assert history["iteration"].tolist() == [BASELINE, "iter-001"]
    assert history["script"].tolist() == ["train.py", "train.py"]
    assert history["params"].iloc[1] < history["params"].iloc[0]

    capsys.readouterr()
    other = tmp_path / "other"  # another script on this lineage: refused by name (loop/recorded_recipe.py)
    shutil.copytree(EXAMPLE, other)
    assert cli_main(["run", "--workspace", str(workspace), "--entry-point", str(other / "train.py"),
                     "--source-dir", str(other), *QUICK]) == 2
    assert f"--entry-point {str(other / 'train.py')!r} differs from the recorded" in capsys.readouterr().err
    assert len(_jobs(workspace)) == 2


def test_a_baseline_with_other_weights_or_another_script_is_refused_naming_them(tmp_path):
    from prune_explorer.model.zoo import build_model

    space = Workspace(tmp_path / "ws")
    directory = space.iteration_dir(BASELINE)
    store.save(build_model("resnet18", num_classes=10), directory)
    trained = {"model": "resnet18", "dataset": "digits", "weights": "/opt/ml/input/data/weights/r18.pth",
               "model_kwargs": {}}
    (directory / "metrics.json").write_text(json.dumps({"config": trained, "script": "train.py"}))
    with space.queue(tracker=False) as queue:
        ok = dict(model="resnet18", hyperparameters={"dataset": "digits", "weights": "weights/r18.pth"},
                  entry_point="src/train.py")
        assert space.ensure_baseline(queue, **ok).name == BASELINE  # the same file and script, by name
        for change, named in (({"hyperparameters": {"dataset": "digits"}}, "weights="),
                              ({"entry_point": None}, "entry_point='train.py' (this run: None)"),
                              ({"hyperparameters": {**ok["hyperparameters"], "model_kwargs": {"width": 2}}},
                               "model_kwargs={}")):
            with pytest.raises(ValueError, match=r"other settings: .*" + named.replace("(", r"\(").replace(")", r"\)")):
                space.ensure_baseline(queue, **{**ok, **change})
        assert queue.jobs() == []


def test_a_baseline_trained_before_train_py_moved_into_jobs_is_still_the_default_script(tmp_path):
    from prune_explorer.model.zoo import build_model

    space = Workspace(tmp_path / "ws")
    directory = space.iteration_dir(BASELINE)
    store.save(build_model("resnet18", num_classes=10), directory)
    trained = {"model": "resnet18", "dataset": "digits", "model_kwargs": {}}
    (directory / "metrics.json").write_text(json.dumps({"config": trained, "script": "prune_explorer.train"}))
    with space.queue(tracker=False) as queue:
        assert space.ensure_baseline(queue, "resnet18", {"dataset": "digits"}).name == BASELINE
        with pytest.raises(ValueError, match=r"entry_point=None \(this run: 'src/train.py'\)"):
            space.ensure_baseline(queue, "resnet18", {"dataset": "digits"}, entry_point="src/train.py")
        assert queue.jobs() == []


def readme_command(starting: str) -> list[str]:
    """The README's shell command that starts with `starting` (continuation lines joined), as argv."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(starting))
    command = []
    for line in lines[start:]:
        command.append(line.strip().rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command))


def test_the_readmes_real_world_command_is_the_aws_example_on_sagemaker_and_experiments(aws, monkeypatch, tmp_path):
    """It cannot run offline: this checks what it stands for, down to the training job it would create."""
    from prune_explorer.jobs import Job
    from prune_explorer.jobs.sagemaker import BUCKET_ENV, ROLE_ENV
    from prune_explorer.loop import loop_backend, loop_tracker
    from prune_explorer.tracking.sagemaker_experiments import SageMakerExperimentsTracker

    argv = readme_command("prune-explorer run --model resnet18 --weights IMAGENET1K_V1")
    assert argv[0] == "prune-explorer"
    config = loop_config(build_parser().parse_args(argv[1:])).validate()
    assert (config.model, config.weights, config.dataset, config.image_size) == ("resnet18", "IMAGENET1K_V1",
                                                                                 "caltech101", 224)
    assert (config.per_iteration, config.scheme, config.criterion) == (200, "internal", "taylor")  # the example's cut
    assert (config.epochs, config.batch_size, config.lr, config.threshold) == (10, 64, 0.001, 0.05)
    assert (config.backend, config.tracker, config.experiment) == ("sagemaker", "sagemaker-experiments",
                                                                   "caltech101-resnet18")

    monkeypatch.setenv(ROLE_ENV, "arn:aws:iam::123456789012:role/readme")  # in Studio: the session's role, bucket
    monkeypatch.setenv(BUCKET_ENV, aws["bucket"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    backend = loop_backend(config)
    assert (backend.instance_type, backend.experiment_name, backend.rule_threshold) == (
        "ml.g4dn.xlarge", "caltech101-resnet18", 0.05)
    assert backend.inputs == {"train": config.data_dir} and config.data_dir.startswith("s3://")
    tracker = loop_tracker(config)
    assert isinstance(tracker, SageMakerExperimentsTracker) and tracker.experiment_name == "caltech101-resnet18"

    baseline = Job(id="job-readme", backend="sagemaker", model=config.model, out_dir=str(tmp_path / "baseline"),
                   iteration=BASELINE, hyperparameters=config.hyperparameters(config.baseline_epochs, baseline=True))
    spec = backend.training_job_spec(baseline, "pe-readme-baseline")
    sent = spec["hyper_parameters"]
    assert (sent["model"], sent["weights"], sent["dataset"], sent["image_size"]) == ("resnet18", "IMAGENET1K_V1",
                                                                                     "caltech101", "224")
    assert (sent["epochs"], sent["batch_size"], sent["lr"]) == ("10", "64", "0.001") and "data_dir" not in sent
    channels = {c.channel_name: c.data_source.s3_data_source.s3_uri for c in spec["input_data_config"]}
    assert channels["train"] == config.data_dir  # the job reads Caltech101 from SM_CHANNEL_TRAIN
    assert spec["resource_config"].instance_type == "ml.g4dn.xlarge"
    assert spec["experiment_config"].experiment_name == "caltech101-resnet18"
    child = config.hyperparameters(config.epochs)
    assert "weights" not in child and child["image_size"] == 224  # a child loads its parent's pruned model
