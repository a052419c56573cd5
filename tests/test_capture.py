"""CaptureHook writes real smdebug trials: smdebug's own reader opens them and the values equal a
direct computation on the same batch."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.signals import smdebug_compat
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.records import CheckedReader
from smdebug.core.access_layer.utils import END_OF_JOB_FILENAME
from smdebug.core.collection_manager import CollectionManager
from smdebug.core.tfevent.summary import scalar_summary
from smdebug.core.writer import FileWriter
from smdebug.trials import create_trial

from aws_naming import TinyResNet, relu_outputs_and_grads

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
CALLS_OF = {("relu", 0), ("layer1.0.relu", 0), ("layer1.0.relu", 1), ("layer1.1.relu", 0), ("layer1.1.relu", 1)}


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return TinyResNet()


def _train(model, hook, batches):
    for x, y in batches:
        hook.step()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_through_smdebug_writer_and_readers(tmp_path, dtype):
    value = (np.arange(-6, 6).reshape(3, 4) * 37).astype(dtype)
    with FileWriter(trial_dir=str(tmp_path), step=0, worker="worker_0") as writer:
        writer.write_tensor(tdata=value, tname=f"t_{dtype}")
    CollectionManager().export(str(tmp_path), "worker_0_collections.json")
    (tmp_path / END_OF_JOB_FILENAME).touch()

    back = create_trial(str(tmp_path)).tensor(f"t_{dtype}").value(0)
    assert back.dtype == value.dtype and np.array_equal(back, value)

    event_file = next((tmp_path / "events").rglob("*.tfevents"))
    [(tag, step, ours)] = list(CheckedReader(event_file.read_bytes(), str(event_file)).tensors())
    assert (tag, step) == (f"t_{dtype}", 0)
    assert ours.dtype == value.dtype and np.array_equal(ours, value)


def test_scalar_summary_takes_a_shape_one_array_on_numpy2():
    summary = scalar_summary("loss", np.array([2.5], dtype=np.float32))
    assert summary.value[0].simple_value == 2.5
    with pytest.raises(Exception, match="0D"):
        scalar_summary("loss", np.zeros(2))


def test_compatibility_layer_is_installed_where_smdebug_writes():
    import smdebug.core.tfevent.util as util
    import smdebug.core.writer as writer

    assert util.make_tensor_proto is smdebug_compat.make_tensor_proto
    assert writer.make_tensor_proto is smdebug_compat.make_tensor_proto


def test_compact_trial_opens_in_smdebug_and_equals_direct_statistics(tmp_path):
    model, (x, y) = _model(), _batch()
    direct = relu_outputs_and_grads(model, x, y)
    with CaptureHook(model, tmp_path, mode="compact", save_every=2, example_inputs=x[:1]) as hook:
        assert set(hook.taps) == CALLS_OF
        _train(model, hook, [(x, y)] * 3)          # no optimizer step: every step sees the same numbers
    assert (tmp_path / END_OF_JOB_FILENAME).exists()

    trial = create_trial(str(tmp_path))
    assert trial.steps() == [1, 2]                  # steps 0-1 in one record, step 2 flushed on close
    for (module, call), (a, g) in direct.items():
        per_example = (a * g).mean((2, 3))
        expected = {
            "taylor": per_example.abs().sum(0),
            "taylor_aws": per_example.mean(0),
            "activation": a.mean((2, 3)).sum(0),
            "zeros": (a == 0).double().mean((2, 3)).sum(0),
        }
        for stat, value in expected.items():
            saved = trial.tensor(f"compact/{module}_{call}/{stat}")
            np.testing.assert_allclose(saved.value(1), 2 * value.double().numpy(), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(saved.value(2), value.double().numpy(), rtol=1e-5, atol=1e-9)
        assert trial.tensor(f"compact/{module}_{call}/examples").value(1)[0] == 2 * len(x)
        assert trial.tensor(f"compact/{module}_{call}/batches").value(2)[0] == 1
    assert trial.tensor("compact/steps").value(1)[0] == 2
    weight = model.layer1[0].conv1.weight.detach().double().reshape(8, -1)
    np.testing.assert_allclose(trial.tensor("compact/layer1.0.conv1/weight_l1").value(2), weight.abs().sum(1))


def test_full_trial_names_each_call_uniquely_and_holds_exact_tensors(tmp_path):
    model, (x, y) = _model(), _batch(1)
    direct = relu_outputs_and_grads(model, x, y)
    running_mean_at_step0 = model.layer1[0].bn1.running_mean.clone()
    with CaptureHook(model, tmp_path, mode="full", save_every=2, example_inputs=x[:1]) as hook:
        _train(model, hook, [(x, y)] * 3)
    trial = create_trial(str(tmp_path))
    assert trial.steps() == [0, 2]
    for (module, call), (a, g) in direct.items():
        np.testing.assert_array_equal(trial.tensor(f"{module}_{call}_output_0").value(2), a.numpy())
        np.testing.assert_array_equal(trial.tensor(f"gradient/{module}_{call}_ReLU_output").value(2), g.numpy())
    np.testing.assert_array_equal(trial.tensor("TinyResNet_layer1.0.conv1.weight").value(0),
                                  model.layer1[0].conv1.weight.detach().numpy())
    np.testing.assert_array_equal(trial.tensor("layer1.0.bn1.running_mean_output_0").value(0),
                                  running_mean_at_step0.numpy())


def test_compact_writes_a_small_fraction_of_full_bytes(tmp_path):
    model, (x, y) = _model(), _batch(2, n=8)
    sizes = {}
    for mode in ("compact", "full"):
        with CaptureHook(model, tmp_path / mode, mode=mode, save_every=1, example_inputs=x[:1]) as hook:
            _train(model, hook, [(x, y)] * 2)
        sizes[mode] = sum(f.stat().st_size for f in (tmp_path / mode / "events").rglob("*.tfevents"))
    assert 0 < sizes["compact"] < 0.25 * sizes["full"]


def test_taps_default_to_the_graph_when_traced_from_the_first_batch(tmp_path):
    model, (x, y) = _model(), _batch()
    with CaptureHook(model, tmp_path) as hook:
        _train(model, hook, [(x, y)])
        assert set(hook.taps) == CALLS_OF
    meta = json.loads((tmp_path / "prune_explorer.json").read_text())
    assert meta["input_size"] == [3, 16, 16] and meta["mode"] == "compact"


def test_in_place_modified_tap_is_copied_and_stays_exact(tmp_path):
    """bn1's output is overwritten by the in-place ReLU: the hook notices and keeps a copy."""
    model, (x, y) = _model(), _batch(3)
    bn_out = {}

    def keep(module, inputs, output):
        bn_out["a"] = output.detach().clone()
        output.register_hook(lambda g: bn_out.__setitem__("g", g.clone()))

    handle = model.layer1[0].bn1.register_forward_hook(keep)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    handle.remove()
    with CaptureHook(model, tmp_path, [("layer1.0.bn1", 0)], save_every=1) as hook:
        _train(model, hook, [(x, y)] * 2)
    trial = create_trial(str(tmp_path))
    expected = (bn_out["a"] * bn_out["g"]).mean((2, 3)).abs().sum(0).double().numpy()
    np.testing.assert_allclose(trial.tensor("compact/layer1.0.bn1_0/taylor").value(1), expected, rtol=1e-5)


def test_bad_arguments_are_refused(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="mode"):
        CaptureHook(model, tmp_path, [("relu", 0)], mode="everything")
    with pytest.raises(ValueError, match="nonexistent"):
        CaptureHook(model, tmp_path, [("nonexistent", 0)])
    CaptureHook(model, tmp_path / "done", [("relu", 0)]).close()
    with pytest.raises(ValueError, match="finished trial"):
        CaptureHook(model, tmp_path / "done", [("relu", 0)])
    assert os.path.exists(tmp_path / "done" / END_OF_JOB_FILENAME)
