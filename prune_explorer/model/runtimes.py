"""Where a model's latency is measured: the runtime it ships to, behind one small interface.

A pruned model is only faster where it runs. PyTorch eager and ONNX Runtime's CPU provider run the
same widths at different speeds (ORT's fastest convolutions want channel counts in multiples of
its block: BENCHMARKS.md, export), so a latency figure or budget names its runtime. A runtime is
anything with a `name`, `session(model, example_inputs)` — a context manager giving a zero-argument
callable that runs one forward pass — and `block_size()`, the channel multiple its fast kernels
want (1 for none). `PyTorchEager` and `OnnxRuntimeCPU` are the two here; `RUNTIMES` is where
another goes (`register_runtime`).

Timing is always interleaved: `interleaved(runtime, models, x)` runs every model once per round,
round after round, so a burst of load from elsewhere slows all of them in the same round, and
returns each model's samples (`Timing`: median, quartiles, relative spread). `ratio_timing` gives
the per-round ratio of two models' samples, the figure a before/after comparison should quote.
Two clocks: "wall" (perf_counter) and "cpu" (the calling thread's CPU time). A run on one thread
computes in the calling thread (PyTorch with one intra-op thread, ORT with one), so its CPU time is
its latency less the time other processes held the core: on a 2-core machine at load 8 the wall
clock's quartiles of an EfficientNet-Lite0 run spread 1.6–9.8 ms, the CPU clock's 1.64–1.79 ms.
`default_clock` picks "cpu" for one thread, "wall" otherwise (several threads, or CUDA).
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

NOISY_SPREAD = 0.25  # interquartile range over the median above which a figure is called too noisy to quote


@runtime_checkable
class LatencyRuntime(Protocol):
    """What a deployment runtime gives the latency tools (see the module docstring)."""

    name: str

    def session(self, model: Any, example_inputs: Any) -> contextlib.AbstractContextManager[Callable[[], Any]]:
        """Prepare `model` (a module, or a file the runtime loads) for `example_inputs`; yield a callable
        that runs one forward pass on them. Leaving the block releases what it holds."""

    def block_size(self) -> int:
        """The channel multiple the runtime's fast kernels want on this machine (1: no preference)."""


CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class Timing:
    """One model's latency samples (ms), one per interleaved round, on `clock` ("wall" or "cpu")."""

    samples: tuple[float, ...]
    clock: str = "wall"

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def spread(self) -> float:
        """Interquartile range over the median: 0.1 means the middle half of the rounds lie within ±5 %."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def __str__(self) -> str:
        return f"{self.median:.3g} ms [{self.q1:.3g}–{self.q3:.3g}]"


def ratio_timing(after: Timing, before: Timing) -> Timing:
    """after/before per round: the ratio's own median and spread (rounds shared the same load)."""
    if len(after.samples) != len(before.samples):
        raise ValueError("ratio_timing: the two timings come from different rounds")
    return Timing(tuple(a / b for a, b in zip(after.samples, before.samples)), after.clock)


def _quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return float(ordered[0])
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def default_clock(runtime: "LatencyRuntime | str", example_inputs: Any = None) -> str:
    """"cpu" when the runtime computes on one thread (its `threads`, else torch's count) on the CPU, else "wall"."""
    runtime = get_runtime(runtime)
    threads = getattr(runtime, "threads", None) or torch.get_num_threads()
    on_gpu = _synchronizer(example_inputs) is torch.cuda.synchronize if example_inputs is not None else False
    return "cpu" if threads == 1 and not on_gpu else "wall"


MAX_ROUNDS = 500


def interleaved(runtime: "LatencyRuntime | str", models: Sequence[Any], example_inputs: Any, *, warmup: int = 3,
                repeats: int = 10, clock: str | None = None, seconds: float | None = None) -> list[Timing]:
    """Every model's samples from `repeats` rounds, each round running every model once in turn, on
    `clock` (None: `default_clock`). With `seconds`, more rounds (up to MAX_ROUNDS) until about that
    much time goes into them, estimated from the warm-up rounds: short models get many rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    runtime = get_runtime(runtime)
    clock = clock or default_clock(runtime, example_inputs)
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    sync = _synchronizer(example_inputs)
    if clock == "cpu" and sync is torch.cuda.synchronize:
        raise ValueError("the cpu clock cannot time work on a GPU: use clock='wall'")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    times: list[list[float]] = [[] for _ in models]
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(runtime.session(model, example_inputs)) for model in models]
        started = time.perf_counter()
        for _ in range(max(warmup, 1 if seconds else 0)):
            for run in runs:
                run()
        if seconds:
            per_round = (time.perf_counter() - started) / max(warmup, 1)
            repeats = max(repeats, min(MAX_ROUNDS, int(seconds / max(per_round, 1e-6))))
        for _ in range(repeats):
            for run, samples in zip(runs, times):
                sync()
                start = now()
                run()
                sync()
                samples.append((now() - start) * 1000.0)
    return [Timing(tuple(t), clock) for t in times]


# --- PyTorch eager -------------------------------------------------------------------------------
class PyTorchEager:
    """The model in eval mode under no_grad, run as a private copy (`clone.private_copy`): what a forward
    writes lands on the copy and the model's own hooks do not run (model/measure.py)."""

    name = "pytorch"

    @contextlib.contextmanager
    def session(self, model: nn.Module, example_inputs: Any) -> Iterator[Callable[[], Any]]:
        from .clone import private_copy
        from .inputs import call
        from .measure import _eval_no_grad

        if not isinstance(model, nn.Module):
            raise TypeError(f"the pytorch runtime times modules, not {type(model).__name__}")
        copy = private_copy(model, share_tensors=False)  # made before the clock starts; `model` left as it was
        with _eval_no_grad(copy):
            yield lambda: call(copy, example_inputs)

    def block_size(self) -> int:
        return 1  # eager convolutions have no channel-block layout to fall out of


# --- ONNX Runtime (CPU) --------------------------------------------------------------------------
class OnnxRuntimeCPU:
    """ONNX Runtime's CPU execution provider; a module is exported in memory first (the library's exporter).

    `threads`: intra-op threads (None: torch's thread count, so both runtimes' numbers from one
    process compare). `exporter` turns a module into ONNX (the library's, `model/export.py`).
    """

    name = "onnxruntime"

    def __init__(self, threads: int | None = None, exporter: str = "dynamo"):
        self.threads = threads
        self.exporter = exporter

    @contextlib.contextmanager
    def session(self, model: Any, example_inputs: Any) -> Iterator[Callable[[], Any]]:
        from .export import _as_tuple, onnxruntime_session

        example = _as_tuple(example_inputs)
        session = onnxruntime_session(model, example, threads=self.threads, exporter=self.exporter)
        names = [i.name for i in session.get_inputs()]
        feed = dict(zip(names, (t.detach().cpu().numpy() for t in example)))
        yield lambda: session.run(None, feed)

    def block_size(self) -> int:
        return onnxruntime_block_size()


@functools.cache
def onnxruntime_block_size() -> int:
    """ORT's NCHWc channel block on this CPU, read from ORT itself: the output channels its layout pass
    pads a small convolution's weights to (16 with AVX-512, 8 with AVX2); 1 when it uses no blocked layout."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 8, 3, 3), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=[weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="prune-explorer-ort-probe-") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    if not any(n.domain == "com.microsoft.nchwc" for n in optimized.graph.node):
        return 1
    return int(max(init.dims[0] for init in optimized.graph.initializer))


def cpu_block_size(flags: str | None = None) -> int:
    """The block the CPU's vector width implies (16 with AVX-512F, 8 with AVX2, else 1), from /proc/cpuinfo."""
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            flags = ""
    words = set(flags.split())
    return 16 if "avx512f" in words else 8 if "avx2" in words else 1


# --- registry ------------------------------------------------------------------------------------
RUNTIMES: dict[str, Callable[[], LatencyRuntime]] = {"pytorch": PyTorchEager, "onnxruntime": OnnxRuntimeCPU}


def register_runtime(name: str, make: Callable[[], LatencyRuntime]) -> None:
    """Make `make()` the runtime called `name` (CLI `--latency-runtime NAME`, `LatencyTable.measure(runtime=NAME)`)."""
    RUNTIMES[name] = make


def get_runtime(runtime: "LatencyRuntime | str") -> LatencyRuntime:
    """A runtime by name (RUNTIMES), or the runtime object itself."""
    if isinstance(runtime, str):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown latency runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        return RUNTIMES[runtime]()
    if not isinstance(runtime, LatencyRuntime):
        raise TypeError(f"{runtime!r} is not a latency runtime (needs name, session(), block_size())")
    return runtime


def _synchronizer(example_inputs: Any):
    """torch.cuda.synchronize when any input tensor (nested args/kwargs included) is on a GPU, else a no-op."""
    from torch.utils._pytree import tree_flatten

    from .inputs import split_inputs

    args, kwargs = split_inputs(example_inputs)
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    if any(t.is_cuda for t in tensors):
        return torch.cuda.synchronize
    return lambda: None
