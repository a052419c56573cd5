"""Issue 13's criteria against hand computations: taylor_global (a per-channel gate's squared
Taylor term), taylor_flops (per MAC saved), the three normalisations, and a constructed net on
which the global and the per-layer order must differ."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import prune_explorer.signals.capture as capture
from prune_explorer.model.graph import ChannelGraph
from prune_explorer.model.measure import count
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import CRITERIA, NORMALIZATIONS, rank
from prune_explorer.signals.trials import open_trial

from aws_naming import TinyResNet, write_aws_trial

SIZE = 16


def _batches(n_batches=3, n=4, seed=0, classes=3, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))
            for _ in range(n_batches)]


def _capture(model, batches, path, mode="compact"):
    with CaptureHook(model, path, mode=mode, example_inputs=batches[0][0][:1], save_every=1) as hook:
        for x, y in batches:
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()


def _gate_gradients(model, batches, module, call=0):
    """dL/dz for a gate z = 1 multiplying every channel of `module`'s `call`-th output, per batch,
    by autograd on the gate itself (the definition, not the a·g shortcut)."""
    out = []
    for x, y in batches:
        seen = {"n": 0}

        def hook(mod, inputs, output, seen=seen):
            k = seen["n"]
            seen["n"] += 1
            if k != call:
                return None
            z = torch.ones(1, output.shape[1], *([1] * (output.dim() - 2)), requires_grad=True)
            seen["z"] = z
            return output * z

        handle = dict(model.named_modules())[module].register_forward_hook(hook)
        try:
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            (dz,) = torch.autograd.grad(loss, seen["z"])
        finally:
            handle.remove()
        out.append(dz.flatten().double().numpy())
    return np.stack(out)


@pytest.mark.parametrize("mode", ["compact", "full"])
def test_taylor_global_is_the_mean_squared_gate_gradient_per_minibatch(tmp_path, mode):
    torch.manual_seed(0)
    model = TinyResNet()
    batches = _batches()
    _capture(model, batches, tmp_path / "t", mode=mode)
    trial = open_trial(tmp_path / "t", model, batches[0][0][:1])
    table = rank(model, batches[0][0][:1], trial=trial, criterion="taylor_global")
    assert (table.normalization == "none").all() and (table.normalized == table.score).all()

    internal = table[table.layer == "layer1.0.conv1"]
    expected = (_gate_gradients(model, batches, "layer1.0.relu", call=0) ** 2).mean(0)
    np.testing.assert_allclose(internal.score, expected, rtol=1e-4)
    # a residual stream is seen at two taps (the stem's ReLU and block 0's second ReLU): their terms add
    stream = table[table.layer == "conv1"]
    expected = ((_gate_gradients(model, batches, "relu", 0) ** 2).mean(0)
                + (_gate_gradients(model, batches, "layer1.0.relu", 1) ** 2).mean(0))
    np.testing.assert_allclose(stream.score, expected, rtol=1e-4)


def test_taylor_global_reads_the_aws_examples_trials_too(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet()
    batches = _batches(2)
    write_aws_trial(model, str(tmp_path / "aws"), batches)
    trial = open_trial(tmp_path / "aws", model, batches[0][0][:1])
    rows = rank(model, batches[0][0][:1], trial=trial, criterion="taylor_global")
    expected = (_gate_gradients(model, batches, "layer1.0.relu", call=0) ** 2).mean(0)
    np.testing.assert_allclose(rows[rows.layer == "layer1.0.conv1"].score, expected, rtol=1e-4)


def _captured_tiny(path):
    """A seeded TinyResNet, one example, and its compact trial over two minibatches."""
    torch.manual_seed(0)
    model = TinyResNet()
    batches = _batches(2)
    _capture(model, batches, path)
    x = batches[0][0][:1]
    return model, x, open_trial(path, model, x)


def test_taylor_flops_divides_by_the_hand_counted_macs_of_one_channel(tmp_path):
    model, x, trial = _captured_tiny(tmp_path / "t")
    flops = rank(model, x, trial=trial, criterion="taylor_flops")
    plain = rank(model, x, trial=trial, criterion="taylor_global")
    total = count(model, x).macs
    # layer1.0.conv1's channel: one 3x3 filter over 8 inputs at 16x16 (conv1), one input of the 3x3
    # conv2 with 8 outputs at 16x16; batch norm and ReLU count no MACs
    one_channel = 8 * 9 * 16 * 16 + 8 * 9 * 16 * 16
    rows, base = flops[flops.layer == "layer1.0.conv1"], plain[plain.layer == "layer1.0.conv1"]
    np.testing.assert_allclose(rows.score, base.score)
    np.testing.assert_allclose(rows.normalized, base.score / (one_channel / total), rtol=1e-12)
    assert (flops.normalization == "flops").all()
    # layer1.1.conv1 (16 filters, stride 2 from 16x16 to 8x8): 8*9*64 in conv1, 16*9*64 in conv2
    one_channel = 8 * 9 * 8 * 8 + 16 * 9 * 8 * 8
    rows, base = flops[flops.layer == "layer1.1.conv1"], plain[plain.layer == "layer1.1.conv1"]
    np.testing.assert_allclose(rows.normalized, base.score / (one_channel / total), rtol=1e-12)
    # the flops normalisation is the same for any criterion
    again = rank(model, x, trial=trial, criterion="taylor_global", normalize="flops")
    np.testing.assert_array_equal(again.normalized, flops.normalized)


def test_normalisations_none_l2_and_flops_and_each_criterions_default(tmp_path):
    model, x, trial = _captured_tiny(tmp_path / "t")
    assert set(NORMALIZATIONS) == {"l2", "none", "flops"}
    for name in ("taylor", "taylor_aws", "mean_activation", "apoz", "l1", "l2"):
        assert rank(model, x, trial=trial, criterion=name).normalization.iloc[0] == "l2"
    table = rank(model, x, trial=trial, criterion="taylor", normalize="l2")
    for _, rows in table.groupby("group"):
        np.testing.assert_allclose(rows.normalized, rows.score / np.linalg.norm(rows.score))
    raw = rank(model, x, trial=trial, criterion="taylor", normalize="none")
    np.testing.assert_array_equal(raw.normalized, raw.score)
    assert (rank(model, x, trial=trial, criterion="taylor", normalize=False).normalized == raw.score).all()
    globally_l2 = rank(model, x, trial=trial, criterion="taylor_global", normalize=True)
    assert (globally_l2.normalization == "l2").all()
    with pytest.raises(ValueError, match="unknown normalisation 'max'.*flops"):
        rank(model, x, trial=trial, criterion="taylor", normalize="max")


def test_a_trial_from_before_taylor_sq_is_refused_by_taylor_global_only(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinyResNet()
    batches = _batches(2)
    monkeypatch.setattr(capture, "COMPACT_LATER", ())     # what CaptureHook wrote before issue 13
    _capture(model, batches, tmp_path / "old")
    monkeypatch.undo()
    x = batches[0][0][:1]
    trial = open_trial(tmp_path / "old", model, x)
    assert all(s.taylor_sq is None and s.sq_batches == 0 for s in trial.taps.values())
    for name in ("taylor_global", "taylor_flops"):
        with pytest.raises(ValueError, match=r"old.*layer conv1: .*no taylor_sq statistic.*Capture again"):
            rank(model, x, trial=trial, criterion=name)
    assert len(rank(model, x, trial=trial, criterion="taylor")) == sum(g.size for g in trial.graph.prunable())


class TwoBranches(nn.Module):
    """Two parallel conv branches summed into the logits: `wide` (32 channels) carries the
    prediction, `narrow` (4 channels) reaches the logits through a head scaled by 1e-3."""

    def __init__(self, classes=3):
        super().__init__()
        self.wide = nn.Conv2d(3, 32, 3, padding=1)
        self.wide_relu = nn.ReLU()
        self.narrow = nn.Conv2d(3, 4, 3, padding=1)
        self.narrow_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.wide_head = nn.Linear(32, classes)
        self.narrow_head = nn.Linear(4, classes)
        with torch.no_grad():
            self.narrow_head.weight.mul_(1e-3)

    def forward(self, x):
        a = self.pool(self.wide_relu(self.wide(x))).flatten(1)
        b = self.pool(self.narrow_relu(self.narrow(x))).flatten(1)
        return self.wide_head(a) + self.narrow_head(b)


def test_global_and_per_layer_orders_differ_where_they_must(tmp_path):
    """Per-layer L2 makes the 4 near-useless channels ≈ 1/2 each and the 32 useful ones ≈ 1/√32, so
    the lowest 3 all come from the useful branch; the global order cuts the useless ones — and
    the measured loss says the global plan is the right one."""
    torch.manual_seed(0)
    model = TwoBranches()
    batches = _batches(4, n=16, size=8)
    _capture(model, batches, tmp_path / "t")
    x = batches[0][0][:1]
    graph = ChannelGraph.trace(model.eval(), x)
    trial = open_trial(tmp_path / "t", model, x, graph=graph)
    per_layer = PrunePlan.lowest(rank(model, x, trial=trial, criterion="taylor", graph=graph), graph, n=3)
    global_ = PrunePlan.lowest(rank(model, x, trial=trial, criterion="taylor_global", graph=graph), graph, n=3)
    assert set(per_layer.channels) == {"wide"} and set(global_.channels) == {"narrow"}

    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])

    def loss(m):
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m.eval()(images), labels))

    base = loss(model)
    assert abs(loss(prune(model, global_, x, graph=graph)) - base) < 1e-3 * base
    assert loss(prune(model, per_layer, x, graph=graph)) - base > 10 * abs(loss(prune(model, global_, x, graph=graph)) - base)


def test_every_criterion_is_registered_with_a_known_default_normalisation():
    for name, fn in CRITERIA.items():
        assert getattr(fn, "normalization", "l2") in NORMALIZATIONS, name
