"""Latency runtimes (model/runtimes.py) and ORT latency budgets met by measurement (model/runtime_budget.py).

No test asserts a duration: the machine is shared. They assert what is timed, in which order, on which
clock, what a runtime computes, which channel block ORT uses here, and what a budget search records."""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.model.runtimes import (RUNTIMES, LatencyRuntime, OnnxRuntimeCPU, PyTorchEager, Timing,
                                           cpu_block_size, default_clock, get_runtime, interleaved,
                                           onnxruntime_block_size, ratio_timing, register_runtime)


class Net(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class Recording:
    """A runtime of its own (the interface another runtime implements): runs PyTorch and logs each call."""

    name = "recording"

    def __init__(self):
        self.calls: list[str] = []

    @contextlib.contextmanager
    def session(self, model, example_inputs):
        with torch.no_grad():
            yield lambda: self.calls.append(model.tag) or model(example_inputs)

    def block_size(self) -> int:
        return 4


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_models_are_timed_in_turn_every_round_and_the_spread_comes_with_the_median():
    a, b = Net().eval(), Net(16).eval()
    a.tag, b.tag = "a", "b"
    runtime = Recording()
    assert isinstance(runtime, LatencyRuntime)
    timings = interleaved(runtime, [a, b], torch.randn(1, 3, 8, 8), warmup=2, repeats=5)
    assert runtime.calls == ["a", "b"] * 7  # warm-up rounds, then timed rounds, always both in turn
    assert [len(t.samples) for t in timings] == [5, 5] and {t.clock for t in timings} == {"cpu"}  # one thread
    t = Timing((4.0, 1.0, 2.0, 3.0, 100.0))
    assert (t.median, t.q1, t.q3) == (3.0, 2.0, 4.0) and t.spread == pytest.approx(2 / 3) and t.noisy
    assert str(t) == "3 ms [2–4]"
    ratio = ratio_timing(Timing((1.0, 2.0, 3.0)), Timing((2.0, 4.0, 3.0)))
    assert ratio.samples == (0.5, 0.5, 1.0) and ratio.median == 0.5  # per round: a slow round slows both
    with pytest.raises(ValueError, match="different rounds"):
        ratio_timing(Timing((1.0,)), Timing((1.0, 2.0)))


def test_the_clock_is_cpu_time_on_one_thread_and_wall_time_on_several():
    assert default_clock("pytorch") == "cpu"
    assert default_clock(OnnxRuntimeCPU(threads=2)) == "wall"
    torch.set_num_threads(2)
    assert default_clock("pytorch") == "wall" and default_clock(OnnxRuntimeCPU(threads=1)) == "cpu"
    with pytest.raises(ValueError, match="clock must be one of"):
        interleaved("pytorch", [Net()], torch.randn(1, 3, 8, 8), clock="sundial")


def test_onnxruntime_runs_what_pytorch_computes_and_the_model_keeps_its_training_flags():
    model = Net()
    model.train()
    x = torch.randn(2, 3, 8, 8)
    stats = model.bn1.running_mean.clone()
    with PyTorchEager().session(model, x) as run:
        expected = run()
        assert model.training  # timed on a private copy (model/measure.py): the model itself untouched ...
    assert model.training and all(m.training for m in model.modules())  # ... and as it came
    assert torch.equal(model.bn1.running_mean, stats)
    with torch.no_grad():  # ... and the copy ran in eval mode (BatchNorm on its running statistics)
        assert torch.allclose(expected, copy.deepcopy(model).eval()(x), atol=1e-6)
    with OnnxRuntimeCPU(threads=1).session(model, x) as run:
        got = run()[0]
    assert np.allclose(got, expected.numpy(), atol=1e-5)


def test_the_runtime_registry_names_its_runtimes_and_takes_new_ones():
    assert isinstance(get_runtime("pytorch"), PyTorchEager) and isinstance(get_runtime("onnxruntime"), OnnxRuntimeCPU)
    with pytest.raises(ValueError, match="unknown latency runtime 'tflite'; choose one of pytorch, onnxruntime"):
        get_runtime("tflite")
    with pytest.raises(TypeError, match="is not a latency runtime"):
        get_runtime(object())
    register_runtime("recording", Recording)
    try:
        assert get_runtime("recording").block_size() == 4
    finally:
        RUNTIMES.pop("recording")


def test_onnxruntimes_channel_block_is_what_the_cpu_flags_say():
    assert cpu_block_size("flags : fpu sse avx avx2 avx512f") == 16
    assert cpu_block_size("flags : fpu sse avx avx2") == 8 and cpu_block_size("flags : neon") == 1
    assert onnxruntime_block_size() == cpu_block_size()  # ORT's own layout pass, probed, agrees on this machine
    assert OnnxRuntimeCPU().block_size() == onnxruntime_block_size() and PyTorchEager().block_size() == 1


def test_the_loop_rounds_to_the_latency_runtimes_block_unless_told():
    from prune_explorer.loop import LoopConfig

    block = onnxruntime_block_size()
    assert LoopConfig(dataset="digits").channel_multiple is None  # PyTorch eager: no rounding
    assert LoopConfig(dataset="digits", latency_runtime="onnxruntime").channel_multiple == (block if block > 1 else None)
    assert LoopConfig(dataset="digits", latency_runtime="onnxruntime", round_to=0).channel_multiple is None
    assert LoopConfig(dataset="digits", round_to=8).channel_multiple == 8
    with pytest.raises(ValueError, match="latency_runtime must be one of"):
        LoopConfig(dataset="digits", latency_runtime="tvm").validate()
    with pytest.raises(ValueError, match="round_to must be >= 0"):
        LoopConfig(dataset="digits", round_to=-8).validate()


def test_an_onnxruntime_latency_budget_is_met_by_measuring_the_cut_models():
    """The search's record: every cut it measured, the plan returned among them, at or below the target
    (within the tolerance), widths rounded to the block; a target no cut reaches is refused."""
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.runtime_budget import TOLERANCE, plan_to_latency
    from prune_explorer.model.surgery import prune
    from prune_explorer.signals.ranking import rank

    torch.manual_seed(0)
    model = Net(64).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = ChannelGraph.trace(model, x)
    table = rank(model, x, criterion="l1", graph=graph)
    plan = plan_to_latency(table, graph, model, x, 0.6, round_to=8, max_measurements=6, repeats=5)
    budget = plan.budget
    assert (budget["unit"], budget["runtime"], budget["target"], budget["round_to"]) == ("latency_ratio", "onnxruntime",
                                                                                        0.6, 8)
    measured = budget["measurements"]
    assert 1 <= len(measured) <= 6 and all(m["clock"] == "cpu" for m in measured)
    assert budget["reached"] in [m["ratio"] for m in measured] and budget["reached"] <= 0.6 * (1 + TOLERANCE)
    pruned = prune(model, plan, x, graph=graph)
    assert pruned.conv1.out_channels % 8 == 0 and pruned.conv2.out_channels % 8 == 0
    with pytest.raises(ValueError, match="target_ratio is the fraction of the latency to keep"):
        plan_to_latency(table, graph, model, x, 1.2)
