"""The CLI turns every known failure into one line naming the file or field, its help says every default,
and the docs' commands work as written (issue 22)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from prune_explorer import __version__
from prune_explorer.cli import build_parser
from prune_explorer.cli import main as cli_main
from prune_explorer.loop import format_history
from prune_explorer.model import store
from prune_explorer.model.zoo import build_model
from prune_explorer.signals.capture import CaptureHook

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trial_and_model(tmp_path_factory):
    """A 10-class resnet18 saved as a model directory, and a trial captured on it."""
    root = tmp_path_factory.mktemp("rank")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with CaptureHook(model, root / "trial", example_inputs=x[:1], mode="compact", save_every=1) as hook:
        for _ in range(2):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
    store.save(model, root / "model")
    return root / "trial", root / "model"


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(prefix) and "\n" not in err and "Traceback" not in err, err
    return err


def test_rank_names_a_missing_weights_file_and_a_bad_model_directory(trial_and_model, tmp_path, capsys):
    trial, model = trial_and_model
    broken = tmp_path / "no-weights"
    broken.mkdir()
    (broken / "model.json").write_bytes((model / "model.json").read_bytes())
    assert cli_main(["rank", str(trial), "--model", str(broken)]) == 2
    assert "model.safetensors" in _one_line(capsys, "prune-explorer rank: ")
    assert cli_main(["rank", str(trial), "--model", str(tmp_path)]) == 2
    assert "not a saved model directory (no model.json in it)" in _one_line(capsys, "prune-explorer rank: ")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "model.json").write_text("{not json")
    assert cli_main(["rank", str(trial), "--model", str(garbled)]) == 2
    assert "model.json" in _one_line(capsys, "prune-explorer rank: ")
    assert cli_main(["rank", str(tmp_path / "no-trial"), "--model", str(model)]) == 2
    assert "no such trial directory" in _one_line(capsys, "prune-explorer rank: ")
    assert cli_main(["rank", str(trial), "--input-size", "3x32"]) == 2
    assert "--input-size must look like 3,64,64" in _one_line(capsys, "prune-explorer rank: ")


def test_rank_with_an_architecture_name_reads_the_class_count_from_the_trial(trial_and_model, capsys):
    """Issue 22: `rank TRIAL --model resnet18` needed --num-classes 10, which the README never said."""
    trial, _ = trial_and_model
    assert cli_main(["rank", str(trial), "--model", "resnet18", "--input-size", "3,32,32"]) == 0, \
        capsys.readouterr().err
    assert "criterion taylor" in capsys.readouterr().out


def test_export_and_history_failures_are_one_line(trial_and_model, tmp_path, capsys):
    _, model = trial_and_model
    assert cli_main(["export", "iter-009", f"--workspace={tmp_path / 'ws'}"]) == 1
    assert "is not a workspace" in _one_line(capsys, "prune-explorer export: ")
    broken = tmp_path / "no-weights"
    broken.mkdir()
    (broken / "model.json").write_bytes((model / "model.json").read_bytes())
    assert cli_main(["export", str(broken), "--input-shape=3,32,32", f"--output={tmp_path / 'm.onnx'}"]) == 1
    assert "model.safetensors" in _one_line(capsys, "prune-explorer export: ")
    assert not (tmp_path / "m.onnx").exists()

    ws = tmp_path / "ws"
    assert cli_main(["history", f"--workspace={ws}"]) == 1  # a typo'd path: named as no workspace
    assert f"no workspace at {ws}" in _one_line(capsys, "prune-explorer history: ")
    ws.mkdir()
    assert cli_main(["history", f"--workspace={ws}"]) == 1
    assert "has no tracked iteration yet" in _one_line(capsys, "prune-explorer history: ")
    (ws / "mlflow.db").write_bytes(b"this is not a database" * 100)
    assert cli_main(["history", f"--workspace={ws}"]) == 1
    assert f"cannot read {ws / 'mlflow.db'}" in _one_line(capsys, "prune-explorer history: ")


def test_history_on_experiments_without_aws_names_experiments_not_the_mlflow_store(tmp_path, capsys, monkeypatch):
    """`history --tracker sagemaker-experiments` with no AWS region said `cannot read WS/mlflow.db`."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    assert cli_main(["history", f"--workspace={tmp_path}", "--tracker=sagemaker-experiments"]) == 1
    line = _one_line(capsys, "prune-explorer history: ")
    assert "cannot read SageMaker Experiments' experiment 'prune-explorer'" in line and "mlflow.db" not in line


def test_history_names_the_training_script_when_a_job_ran_its_own():
    rows = pd.DataFrame({"iteration": ["baseline", "iter-001"], "parent": [None, "baseline"],
                         "status": ["completed"] * 2, "criterion": [None, "taylor"], "filters_removed": [None, 48],
                         "params": [100, 80], "macs": [1000, 800], "latency_ms": [None, None],
                         "accuracy": [0.9, 0.88], "script": ["prune_explorer.jobs.train", "train.py"]})
    table = format_history(rows)
    assert table.splitlines()[0].split()[-1] == "script" and "train.py" in table.splitlines()[2]
    assert "script" not in format_history(rows.assign(script="prune_explorer.jobs.train"))


def test_version_and_every_run_flag_has_help_and_says_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"prune-explorer {__version__}"
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    for action in run._actions:
        if action.dest in ("help",):
            continue
        assert action.help, f"--{action.dest} has no help"
    helps = {a.dest: " ".join((a.help or "").split()) for a in run._actions}
    for dest, default in (("per_iteration", "default 200"), ("iterations", "default 5"), ("epochs", "default 1"),
                          ("workspace", "default ./workspace"), ("subset", "default: the full training set"),
                          ("baseline_epochs", "default 3"), ("batch_size", "default 64"), ("seed", "default 0"),
                          ("image_size", "default: the data's own"), ("weight_decay", "default: train.py's 0"),
                          ("threshold", "default 0.1"), ("dataset", "digits (default"), ("model", "default resnet18"),
                          ("criterion", "default taylor"), ("scheme", "'internal' (default)")):
        assert default in helps[dest], (dest, helps[dest])
    text = run.format_help()
    assert "Exit codes: 0" in text and "--new-recipe" in text


def test_the_readmes_latency_table_import_works_as_written():
    readme = (ROOT / "README.md").read_text()
    imports = re.findall(r"from (prune_explorer[\w.]*) import ([\w, ]*LatencyTable[\w, ]*)", readme)
    assert imports, "the README says where LatencyTable comes from"
    for module, names in imports:
        done = subprocess.run([sys.executable, "-c", f"from {module} import {names}"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_app_on_a_new_workspace_says_what_it_would_train_and_starts_nothing(tmp_path):
    """Issue 22: `prune-explorer app` on a new directory silently trained the 6-epoch demo baseline."""
    ws = tmp_path / "new"
    done = subprocess.run([sys.executable, "-m", "prune_explorer.cli", "app", f"--workspace={ws}", "--port=1"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "has no baseline model" in done.stderr and "6 epoch(s)" in done.stderr and "--demo" in done.stderr
    assert not ws.exists()
