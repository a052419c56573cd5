"""The training entry point: end to end on digits, resume, stop rule, SageMaker conventions, torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prune_explorer.jobs import data
from prune_explorer.jobs.train import EXIT_STOPPED, TrainConfig, main, parse_args, train

TESTS = Path(__file__).resolve().parent
SMALL_CNN = "test_train:SmallCNN"  # importable: pytest puts tests/ on sys.path; subprocesses get PYTHONPATH


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: learns 8x8 digits in a few seconds."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


TRUST = ("test_train",)  # the module SMALL_CNN names: jobs build it only when told to trust it
FAST = dict(dataset="digits", model=SMALL_CNN, lr=0.1, batch_size=32, capture_every=10, measure_latency=False,
            trust_model_code=TRUST)


def accuracy_of(model: nn.Module, dataset) -> float:
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from a second thread; on a busy machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    metrics = train(dict(FAST, epochs=3, out_dir=str(out)))
    return out, metrics


def test_train_writes_model_metrics_and_trial(trained):
    out, metrics = trained
    assert {"model.json", "model.safetensors", "metrics.json", "trial"} <= {p.name for p in out.iterdir()}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["status"] == "completed" and len(on_disk["epochs"]) == 3
    assert set(on_disk["epochs"][0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds"}
    assert on_disk["best_accuracy"] == max(e["val_accuracy"] for e in on_disk["epochs"])
    assert on_disk["best_accuracy"] > 0.6  # chance is 0.1
    assert on_disk["trial"] == str(out / "trial") and on_disk["model"] == str(out)
    assert on_disk["params"] == sum(p.numel() for p in SmallCNN().parameters())
    assert on_disk["macs"] > 0 and on_disk["val_size"] == 359 and on_disk["dataset"] == "digits"


def test_saved_model_is_the_best_epoch(trained):
    from prune_explorer.model.store import load

    out, metrics = trained
    model = load(out, trust_code=TRUST)
    _, val, _, _ = data.load_dataset("digits")
    assert accuracy_of(model, val) == pytest.approx(metrics["best_accuracy"], abs=1e-9)


def test_trial_holds_accuracy_per_epoch_for_the_rule(trained):
    from prune_explorer.loop.rules import read_accuracies

    out, metrics = trained
    assert read_accuracies(out / "trial") == pytest.approx([e["val_accuracy"] for e in metrics["epochs"]])


def test_resume_from_saved_model_starts_where_it_left_off(trained, tmp_path):
    out, metrics = trained
    resumed = train(dict(FAST, model=str(out), epochs=1, lr=1e-4, capture="none", out_dir=str(tmp_path)))
    assert resumed["params"] == metrics["params"]
    assert resumed["epochs"][0]["val_accuracy"] >= metrics["best_accuracy"] - 0.03
    fresh = train(dict(FAST, epochs=1, lr=1e-4, capture="none", out_dir=str(tmp_path / "fresh")))
    assert fresh["epochs"][0]["val_accuracy"] < metrics["best_accuracy"] - 0.2


def test_pretrained_weights_keep_their_features_and_get_a_new_head(tmp_path):
    from prune_explorer.model.store import load

    torch.manual_seed(1)
    pretrained = SmallCNN(num_classes=5)
    torch.save(pretrained.state_dict(), tmp_path / "five.pth")
    metrics = train(dict(FAST, model_kwargs={"num_classes": 5}, weights=str(tmp_path / "five.pth"), epochs=1,
                         max_steps=1, lr=1e-12, capture="none", out_dir=str(tmp_path / "out")))
    assert metrics["num_classes"] == 10
    tuned = load(tmp_path / "out", trust_code=TRUST)
    assert tuned.fc.out_features == 10
    assert torch.allclose(tuned.conv2.weight, pretrained.conv2.weight, atol=1e-6)


def test_stop_rule_ends_the_job_with_exit_code_3(tmp_path):
    code = main(["--dataset", "digits", "--model", SMALL_CNN, "--trust-model-code", "test_train",
                 "--epochs", "4", "--max-steps", "2",
                 "--capture", "none", "--measure-latency", "false",
                 "--stop-rule-threshold", "0.1", "--baseline-accuracy", "0.95", "--out-dir", str(tmp_path)])
    assert code == EXIT_STOPPED
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and len(metrics["epochs"]) == 1
    assert "0.9500" in metrics["reason"] and (tmp_path / "model.json").is_file()


def test_max_steps_limits_training(tmp_path):
    metrics = train(dict(FAST, epochs=5, max_steps=3, capture="none", out_dir=str(tmp_path)))
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][-1]["steps"] == 3


def test_cosine_schedule_decays_the_rate_to_zero_over_the_job(tmp_path):
    import math

    metrics = train(dict(FAST, epochs=2, lr=0.1, lr_schedule="cosine", capture="none", out_dir=str(tmp_path)))
    first, last = metrics["epochs"]
    assert first["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * first["steps"] / last["steps"])))
    assert last["lr"] == pytest.approx(0.0, abs=1e-8)
    constant = train(dict(FAST, epochs=2, lr=0.1, capture="none", out_dir=str(tmp_path / "c")))
    assert [e["lr"] for e in constant["epochs"]] == [0.1, 0.1]


def test_arguments_accept_both_spellings_and_null():
    config = parse_args(["--batch_size", "8", "--weight-decay", "0.01", "--subset", "null", "--max_steps", "5",
                         "--measure_latency", "false", "--sagemaker_program", "x.py"])
    assert (config.batch_size, config.weight_decay, config.subset, config.max_steps) == (8, 0.01, None, 5)
    assert config.measure_latency is False
    switched = parse_args(["--batch-size", "16", "--download", "--model-kwargs", "{'width': 4}"])
    assert switched.batch_size == 16 and switched.download is True and switched.model_kwargs == {"width": 4}
    assert parse_args([]).download is False
    recipe = parse_args(["--weights", "IMAGENET1K_V1", "--normalize", "imagenet", "--augment", "false"])
    assert (recipe.weights, recipe.normalize, recipe.augment) == ("IMAGENET1K_V1", "imagenet", False)
    assert recipe.data_recipe(3) == ("imagenet", False) and parse_args(["--weights", "w.pth"]).data_recipe(1) == (
        None, True)  # a one-channel pretrained model keeps the data's own normalisation


@pytest.mark.parametrize("argv, field", [
    (["--epochs", "0"], "epochs"),
    (["--capture", "everything"], "capture"),
    (["--stop-rule-threshold", "0.1"], "baseline-accuracy"),
    (["--stop_rule_mode", "mean"], "stop_rule_mode"),
    (["--lr-schedule", "step"], "lr_schedule"),
    (["--normalize", "cifar"], "normalize"),
])
def test_bad_arguments_name_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        parse_args(argv)


def test_unknown_option_in_config_dict_is_refused():
    with pytest.raises(ValueError, match="batchsize"):
        TrainConfig.from_dict({"batchsize": 3})


def test_class_count_mismatch_names_the_model(tmp_path):
    from test_data import make_image_tree

    make_image_tree(tmp_path / "images")
    config = dict(FAST, model_kwargs={"num_classes": 10, "in_channels": 3}, dataset="imagefolder",
                  data_dir=str(tmp_path / "images"), image_size=8, out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=f"{SMALL_CNN}.*10 outputs.*'imagefolder' has 2 classes"):
        train(config)
    failed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "10 outputs" in failed["reason"]


def test_channel_mismatch_names_the_model(trained, tmp_path):
    from test_data import make_image_tree

    out, _ = trained
    make_image_tree(tmp_path / "images")
    with pytest.raises(ValueError, match=f"{out}.*expects 1 input channel.*gives 3"):
        train(dict(FAST, model=str(out), dataset="imagefolder", data_dir=str(tmp_path / "images"),
                   image_size=8, out_dir=str(tmp_path / "out")))


def test_missing_dataset_error_reaches_the_caller(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        train(dict(FAST, dataset="fashion-mnist", out_dir=str(tmp_path / "o")))
    # a --data-dir without the files is named, never swapped for the system copy (issue 22)
    with pytest.raises(FileNotFoundError, match=r"--data-dir \S*empty \(no such folder\)"):
        train(dict(FAST, dataset="fashion-mnist", data_dir=str(tmp_path / "empty"), out_dir=str(tmp_path / "o")))


def test_sagemaker_environment_is_honoured(tmp_path, monkeypatch):
    from test_data import make_image_tree as make_tree

    env = {
        "SM_CHANNEL_TRAIN": make_tree(tmp_path / "input" / "train", per_class=8),
        "SM_CHANNEL_TEST": make_tree(tmp_path / "input" / "test", per_class=4),
        "SM_MODEL_DIR": tmp_path / "model",
        "SM_OUTPUT_DATA_DIR": tmp_path / "output" / "data",
        "SM_CHECKPOINT_DIR": tmp_path / "checkpoints",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    code = main(["--model", SMALL_CNN, "--trust-model-code", "test_train",
                 "--model_kwargs", '{"in_channels": 3}', "--epochs", "1",
                 "--batch_size", "8", "--image_size", "8", "--capture_every", "1", "--measure_latency", "false"])
    assert code == 0
    assert (tmp_path / "model" / "model.json").is_file() and (tmp_path / "model" / "metrics.json").is_file()
    metrics = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())
    assert metrics["dataset"] == "imagefolder" and metrics["num_classes"] == 2
    assert (metrics["train_size"], metrics["val_size"]) == (16, 8)
    assert metrics["trial"] == str(tmp_path / "checkpoints" / "trial")
    assert json.loads((tmp_path / "checkpoints" / "metrics.json").read_text()) == metrics
    assert (tmp_path / "checkpoints" / "trial" / "training_job_end.ts").is_file()


def test_grey_data_is_expanded_for_three_channel_models(tmp_path):
    metrics = train(dict(FAST, model_kwargs={"in_channels": 3}, epochs=1, subset=64, val_subset=32,
                         capture="none", out_dir=str(tmp_path)))
    assert metrics["in_channels"] == 3 and metrics["input_shape"] == [3, 8, 8]


@pytest.mark.slow
def test_torchrun_two_processes_write_one_model_and_one_record(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")  # a rank's hard crash prints its Python stack
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "prune_explorer.jobs.train", "--dataset", "digits", "--model", SMALL_CNN,
           "--trust-model-code", "test_train", "--epochs", "2",
           "--lr", "0.1", "--batch-size", "32", "--capture-every", "10", "--measure-latency", "false",
           "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # the whole stderr on failure: a rank's own abort message comes before torchrun's summary
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-12000:]
    assert proc.stdout.count("[train] completed") == 1
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.json", "model.safetensors", "trial"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["val_size"] == 359
    from prune_explorer.model.store import load

    _, val, _, _ = data.load_dataset("digits")
    # each validation example is counted once across the two processes
    assert accuracy_of(load(out, trust_code=TRUST), val) == pytest.approx(metrics["best_accuracy"], abs=1e-9)
    assert metrics["best_accuracy"] > 0.3
