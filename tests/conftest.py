"""Shared fixtures. In CI (CI=true) a missing browser, dataset or server fails; elsewhere it skips.

What several files need is made here once per session — and, under pytest-xdist, once for all
workers where it is only read (`digits_baseline`): jobs with one thread each, sklearn digits as
image folders, a local ImageNet-shaped weights file, a trained digits baseline, a moto server.
"""
from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_training"
# The digits baseline every loop and workspace test starts from (a copy of it): what
# `Workspace.ensure_baseline` and `prune-explorer run` train with these settings.
DIGITS_BASELINE = dict(dataset="digits", epochs=1, subset=60, val_subset=40, batch_size=30, image_size=8,
                       capture="compact", measure_latency=False, seed=0)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when something the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {what}")
    pytest.skip(f"missing: {what}")


FAULT_INJECTION = Path(__file__).parent / "fault_injection"  # sitecustomize.py: faults inside real jobs


def fault_env(**faults: str) -> dict[str, str]:
    """The environment of a process whose jobs load `FAULT_INJECTION` (and this checkout); `faults`
    are its FAULT_* variables (see fault_injection/sitecustomize.py)."""
    paths = [str(FAULT_INJECTION), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PRUNE_EXPLORER_SMDEBUG_LOG": "",
            **faults}


def wait_for_file(path: Path, proc, timeout: float = 600) -> None:
    """Until `path` exists (a fault point reached: a condition, not a delay), failing if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared:\n{out}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


_PORTS = itertools.count()


def free_port() -> int:
    """A port nothing listens on. Under pytest-xdist each worker takes ports from its own range below
    the kernel's ephemeral ones, so two workers never race for one; elsewhere the kernel picks."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        base = 20_000 + 500 * int(worker[2:])
        for _ in range(500):
            port = base + next(_PORTS) % 500
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_dir(tmp_path_factory) -> Path:
    """A folder all xdist workers of this run share (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# The longest files first (measured, `make test`'s --durations), so that parallel workers, each
# taking whole files (--dist loadfile --no-loadscope-reorder), finish at about the same time.
LONGEST_FIRST = (
    "test_zoo.py", "test_notebooks.py", "browser/test_panel.py", "test_loop.py", "test_export.py", "test_widgets.py",
    "test_custom_training.py", "test_jobs_sagemaker.py", "test_tracker_contract.py", "test_demo.py",
    "test_loop_transfer.py", "test_train.py", "test_wheel.py", "test_backend_registry.py", "test_workspace.py",
)


def pytest_collection_modifyitems(config, items):
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    here = Path(__file__).parent

    def rank(item) -> int:
        path = Path(str(item.fspath))
        return order.get(path.relative_to(here).as_posix(), len(order)) if path.is_relative_to(here) else len(order)

    items.sort(key=rank)  # stable: a file's tests keep their order


# Files with no module fixture and long tests (a sweep): their tests go to the workers one by one.
BY_TEST = ("test_zoo.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, but a BY_TEST file's tests are units of their own (a sweep does not hold up a run)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndSweeps(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if Path(nodeid.split("::", 1)[0]).name in BY_TEST else super()._split_scope(nodeid)

    return FilesAndSweeps(config, log)


@pytest.fixture(autouse=True, scope="session")
def one_thread_jobs():
    """Jobs inherit the environment: one thread each, as a busy 2-core machine (and parallel test
    workers) run them best."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    # One thread: tests start subprocesses (jobs, kernels) that need the other core.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def moto_server():
    """A real moto server on 127.0.0.1 in this process; boto3/smdebug/sagemaker reach it via AWS_ENDPOINT_URL.

    Yields the endpoint URL. The server runs in-process so tests can reach moto's backends
    (e.g. to move a training job to InProgress/Failed, which moto cannot do on its own).
    The library's own `local_moto_endpoint` (what notebook 02 uses) sets it up.
    """
    from prune_explorer.jobs.sagemaker import local_moto_endpoint

    with local_moto_endpoint(bucket=None) as endpoint:
        yield endpoint["endpoint"]


@pytest.fixture(scope="session")
def digit_folders(tmp_path_factory):
    """make(per_class, size): sklearn digits as PNG class folders (the custom-training example's
    input format), made once per size in this session."""
    sys.path.insert(0, str(EXAMPLE))
    from make_digits import make_digits

    made: dict[tuple[int, int], Path] = {}

    def make(per_class: int, size: int) -> Path:
        if (per_class, size) not in made:
            made[per_class, size] = make_digits(tmp_path_factory.mktemp("digits") / "digits", per_class=per_class,
                                                size=size)
        return made[per_class, size]

    return make


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory) -> Path:
    """A local state-dict file of a 1000-class torchvision resnet18 (the shape of IMAGENET1K_V1)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory) -> Path:
    """A resnet18 baseline trained once on digits (`DIGITS_BASELINE`), shared by every xdist worker:
    its iteration folder, to copy (`Workspace.copy_baseline`), never to write into."""
    from prune_explorer.workspace import Workspace
    from prune_explorer.workspace.layout import BASELINE, file_lock

    root = shared_dir(tmp_path_factory)
    space = Workspace(root / "digits-baseline")
    with file_lock(root / "digits-baseline.lock"):
        if not space.has_model(BASELINE):
            with space.queue(tracker=False) as queue:
                trained = space.ensure_baseline(queue, "resnet18", DIGITS_BASELINE, timeout=900)
            assert trained.accuracy is not None
    return space.iteration_dir(BASELINE)


def assert_nothing_silent(model, graph) -> None:
    """Every conv and linear is in a channel group or listed in graph.unassigned with a reason."""
    from torch import nn

    grouped = {name for g in graph.groups for name in g.layers}
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    missing = [n for n in layers if n not in grouped and not graph.unassigned.get(n)]
    assert not missing, missing
    assert all(reason for reason in graph.unassigned.values())
