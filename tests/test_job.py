"""The job contract (prune_explorer.jobs.contract): arguments, SageMaker locations, what a job leaves, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prune_explorer import job
from prune_explorer.model import store

TESTS = Path(__file__).resolve().parent
EXAMPLE = TESTS.parent / "examples" / "custom_training"
SMALL_CNN = "test_train:SmallCNN"


def test_arguments_beyond_the_contract_are_the_scripts_hyperparameters():
    spec = job.parse_spec(["--epochs", "3", "--batch_size", "8", "--label-smoothing", "0.2", "--use-amp",
                           "--name=resnet", "--sizes", "[1, 2]", "--stop-rule-mode", "latest", "--mixup", "false"])
    assert (spec.epochs, spec.batch_size, spec.stop_rule_mode) == (3, 8, "latest")
    assert spec.hyperparameters == {"label_smoothing": 0.2, "use_amp": True, "name": "resnet", "sizes": [1, 2],
                                    "mixup": False}
    assert job.parse_spec([]).model is None and job.parse_spec(["--model", "null"]).model is None
    with pytest.raises(ValueError, match="unexpected argument 'stray'"):
        job.parse_spec(["--epochs", "1", "stray"])
    with pytest.raises(ValueError, match="baseline-accuracy"):
        job.parse_spec(["--stop-rule-threshold", "0.1"])


def test_sagemaker_locations_and_the_model_channel(tmp_path, monkeypatch):
    model_dir = tmp_path / "input" / "data" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.json").write_text("{}")
    env = {"SM_CHANNEL_MODEL": model_dir, "SM_CHANNEL_TRAIN": tmp_path / "train", "SM_CHANNEL_TEST": tmp_path / "test",
           "SM_MODEL_DIR": tmp_path / "model", "SM_OUTPUT_DATA_DIR": tmp_path / "output",
           "SM_CHECKPOINT_DIR": tmp_path / "checkpoints"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    spec = job.resolve_locations(job.JobSpec())
    assert spec.model == str(model_dir)
    assert (spec.data_dir, spec.val_dir) == (str(tmp_path / "train"), str(tmp_path / "test"))
    assert (spec.out_dir, spec.metrics_dir, spec.checkpoint_dir) == (
        str(tmp_path / "model"), str(tmp_path / "output"), str(tmp_path / "checkpoints"))
    assert job.trial_dir(spec) == tmp_path / "checkpoints" / "trial"
    assert job.resolve_locations(job.JobSpec(model="resnet18", data_dir="mine")).model == "resnet18"
    assert job.resolve_locations(job.JobSpec(data_dir="mine")).val_dir is None  # the test channel goes with train's

    (model_dir / "model.json").unlink()  # a channel with no saved model in it is not the model
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no model to fine-tune"), \
            job.JobContext(job.JobSpec(out_dir=str(tmp_path / "out"))) as run:
        run.load_model(num_classes=2)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "failed"


def test_a_job_records_its_epochs_the_batches_it_saw_and_its_unread_flags(tmp_path):
    spec = job.parse_spec(["--model", SMALL_CNN, "--trust-model-code", "test_train",
                           "--model-kwargs", '{"in_channels": 3, "width": 4}',
                           "--out-dir", str(tmp_path), "--measure-latency", "false", "--capture-every", "1",
                           "--label-smoothing", "0.3", "--subset", "100"])
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 6, 6) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5, torch.randn(8, 3, 6, 6)]
    with job.JobContext(spec) as run:
        assert run.hyperparameter("label_smoothing", 0.1) == pytest.approx(0.3)
        assert run.hyperparameter("mixup", False) is False  # not given: the default
        with pytest.raises(ValueError, match="contract option: read run.spec.epochs"):
            run.hyperparameter("epochs", 1)
        model = run.load_model(num_classes=4)
        hook = run.capture(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch, x in zip(run.epochs(), batches):
            model.train()
            hook.step()
            loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 4)
            loss.backward()
            optimizer.step()
            run.report(0.25 * epoch, train_loss=float(loss))
            if epoch == 2:
                break
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["best_accuracy"] == 0.5 and metrics["final_accuracy"] == 0.5
    seen = metrics["first_batch"]  # the first training batch, as the model received it
    assert seen["shape"] == [8, 3, 6, 6]
    assert seen["mean"] == pytest.approx(batches[0].mean((0, 2, 3)).tolist(), abs=1e-5)
    assert seen["std"] == pytest.approx(batches[0].std((0, 2, 3), unbiased=False).tolist(), abs=1e-5)
    assert metrics["input_shape"] == [3, 6, 6] and metrics["unused_hyperparameters"] == ["subset"]
    assert metrics["params"] == sum(p.numel() for p in store.load(tmp_path, trust_code=["test_train"]).parameters())
    from prune_explorer.loop.rules import read_accuracies

    assert read_accuracies(tmp_path / "trial") == [0.25, 0.5]


def test_the_best_epoch_is_the_model_saved(tmp_path):
    spec = job.JobSpec(model=SMALL_CNN, trust_model_code=("test_train",), model_kwargs={"in_channels": 1, "width": 4},
                       out_dir=str(tmp_path),
                       capture="none", measure_latency=False)
    x = torch.randn(4, 1, 5, 5)
    with job.JobContext(spec) as run:
        model = run.load_model(num_classes=3)
        run.capture(model)
        model.train()
        model(x)
        run.report(0.9)
        best = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.fc.weight.add_(1.0)
        run.report(0.5)
    saved = store.load(tmp_path, trust_code=["test_train"])
    assert torch.equal(saved.fc.weight, best["fc.weight"])
    assert json.loads((tmp_path / "metrics.json").read_text())["best_accuracy"] == 0.9


def test_a_job_that_never_reports_fails_saying_so(tmp_path):
    spec = job.JobSpec(model=SMALL_CNN, trust_model_code=("test_train",), out_dir=str(tmp_path), capture="none")
    with pytest.raises(RuntimeError, match="reported no epoch"), job.JobContext(spec) as run:
        run.load_model(num_classes=10)
    failed = json.loads((tmp_path / "metrics.json").read_text())
    assert failed["status"] == "failed" and "reported no epoch" in failed["reason"]
    assert not (tmp_path / "model.json").exists()


def _run_example(tmp_path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLE / "train.py"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE))
    from make_digits import make_digits

    return make_digits(tmp_path_factory.mktemp("data") / "digits", per_class=6, size=8)


def test_the_stop_rule_ends_a_users_script_with_exit_code_3_after_saving(digits, tmp_path):
    proc = _run_example(tmp_path, "--model", SMALL_CNN, "--trust-model-code", "test_train",
                        "--model-kwargs", '{"in_channels": 3, "width": 4}',
                        "--data-dir", str(digits), "--out-dir", "out", "--epochs", "5", "--image-size", "8",
                        "--lr", "1e-6", "--capture", "none", "--measure-latency", "false",
                        "--stop-rule-threshold", "0.1", "--baseline-accuracy", "0.99")
    assert proc.returncode == job.EXIT_STOPPED, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and len(metrics["epochs"]) == 1 and "0.9900" in metrics["reason"]
    assert (tmp_path / "out" / "model.safetensors").is_file() and "stop rule fired" in proc.stdout


def test_a_failing_script_leaves_the_reason_in_metrics_and_a_nonzero_exit(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run_example(tmp_path, "--model", "resnet18", "--data-dir", str(tmp_path / "empty"), "--out-dir", "out")
    assert proc.returncode not in (0, job.EXIT_STOPPED)
    failed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "empty: no images in class folders" in failed["reason"]
