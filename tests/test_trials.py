"""open_trial: the three naming schemes, streaming reduction, partial trials, S3, and bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.trials import open_trial
from smdebug.core.access_layer.utils import END_OF_JOB_FILENAME
from smdebug.core.writer import FileWriter
from smdebug.trials import create_trial

from aws_naming import TinyResNet, write_aws_trial, relu_outputs_and_grads

RELU_TAPS = [("relu", 0), ("layer1.0.relu", 0), ("layer1.0.relu", 1), ("layer1.1.relu", 0), ("layer1.1.relu", 1)]


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TinyResNet()
    g = torch.Generator().manual_seed(seed)
    return model, torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)


def _close(actual, expected):
    """float32 sums of products: relative to the largest channel, not per element."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _capture(model, x, y, path, steps=2, **kw):
    with CaptureHook(model, path, example_inputs=x[:1], **kw) as hook:
        for _ in range(steps):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("mode", ["compact", "full"])
def test_our_trials_reduce_to_the_direct_per_channel_sums(tmp_path, mode):
    model, x, y = _setup()
    direct = relu_outputs_and_grads(model, x, y)
    _capture(model, x, y, tmp_path, steps=3, mode=mode, save_every=1)
    trial = open_trial(tmp_path, model, x[:1])
    assert trial.complete and trial.unused == [] and trial.steps_used == 3
    assert mode in trial.schemes
    for key, (a, g) in direct.items():
        stats = trial.taps[key]
        per_example = (a * g).mean((2, 3)).double()
        _close(stats.taylor, 3 * per_example.abs().sum(0).numpy())
        _close(stats.taylor_aws, 3 * per_example.mean(0).numpy())
        _close(stats.activation, 3 * a.double().mean((2, 3)).sum(0).numpy())
        assert stats.examples == stats.grad_examples == 3 * len(x) and stats.grad_batches == 3


def test_aws_example_trial_recovers_each_call_of_the_duplicate_gradient_name(tmp_path):
    model, x, y = _setup(1)
    direct = relu_outputs_and_grads(model, x, y)
    write_aws_trial(model, str(tmp_path), [(x, y)] * 2)

    name = "gradient/layer1.0.relu_ReLU_output"
    smdebug_value = create_trial(str(tmp_path)).tensor(name).value(0)
    np.testing.assert_array_equal(smdebug_value, direct[("layer1.0.relu", 0)][1].numpy())  # the trap: call 1 lost

    trial = open_trial(tmp_path, model, x[:1])
    assert "aws" in trial.schemes and trial.steps == [0, 1]
    for key in RELU_TAPS:
        a, g = direct[key]
        expected = 2 * (a * g).mean((2, 3)).abs().sum(0).double().numpy()
        _close(trial.taps[key].taylor, expected)
    assert trial.weights["layer1.0.conv1.weight"].shape == (8, 8, 3, 3)
    assert any(u.startswith("layer1.0.bn1_0_output_0") for u in trial.unused)  # saved, not a tap: reported


def test_stock_smdebug_trial_reads_activations_and_says_gradients_are_missing(tmp_path):
    import smdebug.pytorch as smd
    from smdebug.core.save_config import SaveConfig

    model, x, y = _setup(2)
    direct = relu_outputs_and_grads(model, x, y)
    hook = smd.Hook(out_dir=str(tmp_path / "t"), include_regex=[r".*relu_(input|output).*", r".*conv.*weight"],
                    save_config=SaveConfig(save_interval=1))
    hook.register_module(model)
    for _ in range(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    hook.close()

    trial = open_trial(tmp_path / "t", model, x[:1])
    assert "stock" in trial.schemes and not trial.has_gradients
    a = direct[("layer1.0.relu", 1)][0]
    np.testing.assert_allclose(trial.taps[("layer1.0.relu", 1)].activation,
                               2 * a.double().mean((2, 3)).sum(0).numpy(), rtol=1e-5)
    assert any("parameter gradient" in u for u in trial.unused)
    assert any("module input" in u for u in trial.unused)


def test_trial_being_written_yields_complete_steps_and_says_so(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=3, mode="full", save_every=1)
    (tmp_path / END_OF_JOB_FILENAME).unlink()
    next((tmp_path / "index").rglob("000000000002_worker_0.json")).unlink()   # step 2 still open
    trial = open_trial(tmp_path, model, x[:1])
    assert not trial.complete and trial.steps == [0, 1]
    assert "still being written" in trial.message and "000000000002" in trial.message


def test_s3_trial_through_moto(tmp_path, moto_server):
    import boto3

    model, x, y = _setup()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="trials")
    _capture(model, x, y, tmp_path / "local", steps=2, mode="compact", save_every=1)
    for f in (tmp_path / "local").rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "trials", f"run1/{f.relative_to(tmp_path / 'local').as_posix()}")
    _capture(model, x, y, "s3://trials/run2", steps=2, mode="compact", save_every=1)   # written by the hook

    local = open_trial(tmp_path / "local", model, x[:1])
    for uri in ("s3://trials/run1", "s3://trials/run2"):
        remote = open_trial(uri, model, x[:1])
        assert remote.complete and remote.steps == local.steps
        np.testing.assert_allclose(remote.taps[("relu", 0)].taylor, local.taps[("relu", 0)].taylor, rtol=1e-6)
    with pytest.raises(ValueError, match="empty trial"):
        open_trial("s3://trials/nothing-here", model, x[:1])


def test_truncated_event_file_is_named(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=1, mode="full", save_every=1)
    event = next((tmp_path / "events").rglob("*.tfevents"))
    data = event.read_bytes()
    event.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{event.name}.*truncated"):
        open_trial(tmp_path, model, x[:1])


def test_corrupted_record_header_is_named(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=1, mode="compact", save_every=1)
    event = next((tmp_path / "events").rglob("*.tfevents"))
    data = bytearray(event.read_bytes())
    data[2] ^= 0xFF
    event.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{event.name}.*bad CRC"):
        open_trial(tmp_path, model, x[:1])


def test_empty_trial_and_missing_directory(tmp_path):
    model, x, _ = _setup()
    (tmp_path / "events").mkdir()
    with pytest.raises(ValueError, match="empty trial"):
        open_trial(tmp_path, model, x[:1])
    with pytest.raises(ValueError, match="no such trial directory"):
        open_trial(tmp_path / "absent", model, x[:1])


def test_trial_of_another_model_names_the_mismatched_tensor(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=1, mode="compact", save_every=1)
    wider = TinyResNet(width=12)
    with pytest.raises(ValueError, match=r"tensor 'compact/[^']+' has shape \[8\] but .*12"):
        open_trial(tmp_path, wider, x[:1])


def test_unknown_names_are_reported_and_a_trial_of_only_unknown_names_is_refused(tmp_path):
    model, x, y = _setup()
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with CaptureHook(other, tmp_path / "other", [("1", 0)], mode="full", save_every=1) as hook:
        hook.step()
        other(x).sum().backward()
    with pytest.raises(ValueError, match="no tensor matches.*1_0_output_0"):
        open_trial(tmp_path / "other", model, x[:1])

    _capture(model, x, y, tmp_path / "mixed", steps=1, mode="full", save_every=1)
    with FileWriter(trial_dir=str(tmp_path / "mixed"), step=5, worker="worker_0") as writer:
        writer.write_tensor(tdata=np.ones(3, np.float32), tname="mystery_tensor")
    trial = open_trial(tmp_path / "mixed", model, x[:1])
    assert trial.unused == ["mystery_tensor (unknown name)"] and ("relu", 0) in trial.taps


def test_model_is_rebuilt_from_the_trial_record(tmp_path):
    from prune_explorer.model.zoo import build_model

    model = build_model("resnet18", num_classes=3)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with CaptureHook(model, tmp_path, save_every=1) as hook:
        hook.step()
        nn.functional.cross_entropy(model(x), y).backward()
    trial = open_trial(tmp_path)
    assert trial.meta["model"] == {"arch": "resnet18", "kwargs": {"num_classes": 3}}
    assert ("layer4.1.relu", 1) in trial.taps


def test_trial_without_index_files_is_read_whole_with_the_same_result(tmp_path):
    model, x, y = _setup()
    _capture(model, x, y, tmp_path, steps=2, mode="full", save_every=1)
    indexed = open_trial(tmp_path, model, x[:1])
    shutil.rmtree(tmp_path / "index")
    whole = open_trial(tmp_path, model, x[:1])
    assert whole.steps == indexed.steps and whole.complete
    for key, stats in indexed.taps.items():
        np.testing.assert_array_equal(whole.taps[key].taylor, stats.taylor)
    np.testing.assert_array_equal(whole.weights["layer1.0.conv1.weight"], indexed.weights["layer1.0.conv1.weight"])
