"""Capture, trial reading and magnitude ranking where they used to go wrong: a norm layer without
affine weights, weight norms saved at several steps, and a model whose weights are not the trial's."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.model.graph import ChannelGraph
from prune_explorer.signals import trials as trials_module
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import rank
from prune_explorer.signals.trials import open_trial

from aws_naming import TinyResNet


class PlainNormNet(nn.Module):
    """conv → BatchNorm2d(affine=False) → ReLU → conv: the norm layer sits in a prunable group."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, affine=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.relu(self.bn1(self.conv1(x))))).flatten(1))


def _batch(seed=0, n=4, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(model, hook, x, y, steps, lr=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr) if lr else None
    for _ in range(steps):
        hook.step()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if optimizer is not None:
            optimizer.step()


def test_compact_capture_of_a_group_holding_a_batchnorm_without_affine_weights(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = PlainNormNet(), _batch()
    graph = ChannelGraph.trace(model.eval(), x[:1])
    group = graph.group("conv1")
    assert group.prunable and "bn1" in group.layers
    model.train()
    with CaptureHook(model, tmp_path / "trial", mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        _train(model, hook, x, y, steps=2)
    trial = open_trial(tmp_path / "trial", model.eval(), x[:1])
    assert set(trial.weight_norms) >= {"conv1"} and "bn1" not in trial.weight_norms
    table = rank(model, x[:1], trial=trial, criterion="taylor")
    assert table[table.layer == "conv1"]["score"].notna().all() and (table.steps == 2).all()


def test_weight_norms_come_from_the_last_step_whatever_order_the_reader_threads_finish(tmp_path, monkeypatch):
    """Step 0's file is held back until the last step's file is read: the norms must still be the last step's."""
    torch.manual_seed(0)
    model, (x, y) = TinyResNet(), _batch(size=16)
    with CaptureHook(model, tmp_path, mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        _train(model, hook, x, y, steps=3, lr=0.5)   # weights move every step
    last = model.layer1[0].conv1.weight.detach().double().reshape(8, -1)

    monkeypatch.setattr(os, "cpu_count", lambda: 4)   # several reader threads even on a small machine
    original = trials_module._Reducer._read_file
    last_file_read = threading.Event()

    def read_in_reverse(self, rel):
        if rel == self.last_file:
            result = original(self, rel)
            last_file_read.set()
            return result
        last_file_read.wait(timeout=30)
        return original(self, rel)

    monkeypatch.setattr(trials_module._Reducer, "_read_file", read_in_reverse)
    trial = open_trial(tmp_path, model, x[:1])
    assert last_file_read.is_set()
    np.testing.assert_allclose(trial.weight_norms["layer1.0.conv1"]["l1"], last.abs().sum(1).numpy(), rtol=1e-6)


def test_l1_and_l2_rank_the_weights_of_the_model_being_pruned_not_the_trials(tmp_path):
    """A job saves its best epoch's model; the trial's norms are from its last step."""
    torch.manual_seed(0)
    model, (x, y) = TinyResNet(), _batch(size=16)
    with CaptureHook(model, tmp_path, mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        _train(model, hook, x, y, steps=2, lr=0.5)
    best_epoch = TinyResNet()                      # other weights: the model the job kept
    trial = open_trial(tmp_path, best_epoch, x[:1])
    for criterion, norm in (("l1", lambda w: w.abs().sum(1)), ("l2", lambda w: w.pow(2).sum(1).sqrt())):
        table = rank(best_epoch, x[:1], trial=trial, criterion=criterion)
        rows = table[table.layer == "layer1.0.conv1"]
        expected = norm(best_epoch.layer1[0].conv1.weight.detach().double().reshape(8, -1)).numpy()
        np.testing.assert_allclose(rows.score, expected, rtol=1e-6)


def test_a_model_the_trial_rebuilt_from_its_architecture_ranks_by_the_trials_trained_norms(tmp_path):
    from prune_explorer.model.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with CaptureHook(model, tmp_path / "trial", save_every=1) as hook:
        _train(model, hook, x, y, steps=2, lr=0.1)
    trial = open_trial(tmp_path / "trial")            # no model given: rebuilt from prune_explorer.json, fresh weights
    assert trial.untrained_model
    table = rank(trial.model, None, trial=trial, criterion="l1")
    rows = table[table.layer == "layer1.0.conv1"]
    trained = model.layer1[0].conv1.weight.detach().double().reshape(64, -1).abs().sum(1).numpy()
    np.testing.assert_allclose(rows.score, trained, rtol=1e-6)


def test_smdebug_info_lines_go_to_the_project_logger_not_the_screen():
    code = ("import prune_explorer.signals.trials, prune_explorer.loop.rules, smdebug.rules.rule; "
            "import logging; print('level', logging.getLogger('prune_explorer.smdebug').getEffectiveLevel())")
    env = {**os.environ, "PRUNE_EXPLORER_SMDEBUG_LOG": ""}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" not in quiet.stdout + quiet.stderr
    assert quiet.stdout.strip() == "level 30"
    asked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**env, "PRUNE_EXPLORER_SMDEBUG_LOG": "INFO"})
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" in asked.stderr and "RULE_JOB" not in asked.stdout


@pytest.mark.parametrize("first", ["module", "package"])
def test_prune_explorer_jobs_train_is_the_module_in_any_import_order(first):
    steps = {"module": "import prune_explorer.jobs.train; from prune_explorer.jobs import train",
             "package": "from prune_explorer.jobs import train; import prune_explorer.jobs.train"}
    code = (f"{steps[first]}; import types, prune_explorer; "
            "assert isinstance(train, types.ModuleType) and isinstance(prune_explorer.jobs.train, types.ModuleType); "
            "assert prune_explorer.fine_tune is train.train; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("first", ["module", "package"])
def test_from_prune_explorer_import_job_is_the_job_contract_in_any_import_order(first):
    steps = {"module": "import prune_explorer.jobs.contract; from prune_explorer import job",
             "package": "from prune_explorer import job; import prune_explorer.jobs.contract"}
    code = (f"{steps[first]}; import prune_explorer; "
            "assert job is prune_explorer.jobs.contract is prune_explorer.job and callable(job.start); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_no_public_name_of_the_package_shadows_one_of_its_modules():
    import pkgutil

    import prune_explorer

    modules = {m.name for m in pkgutil.iter_modules(prune_explorer.__path__)}
    assert not modules & set(prune_explorer.__all__), modules & set(prune_explorer.__all__)


def test_a_jobs_log_has_no_smdebug_info_line_unless_asked(tmp_path):
    from prune_explorer.jobs import JobQueue, LocalBackend

    hp = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, image_size=8, capture="compact",
              measure_latency=False)
    quiet = JobQueue(tmp_path / "quiet", tracker=False)
    asked = JobQueue(tmp_path / "asked", tracker=False,
                     backend=LocalBackend(env={**os.environ, "PRUNE_EXPLORER_SMDEBUG_LOG": "INFO"}))
    jobs = [q.submit("resnet18", hyperparameters=hp) for q in (quiet, asked)]
    done = [q.wait(j.id, timeout=300) for q, j in zip((quiet, asked), jobs)]
    assert [j.status for j in done] == ["completed", "completed"]
    assert (Path(done[0].out_dir) / "trial").is_dir()  # captured with smdebug's writer
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" not in done[0].log_path.read_text()
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" in done[1].log_path.read_text()  # kept in the job's log when asked
    quiet.close()
    asked.close()
