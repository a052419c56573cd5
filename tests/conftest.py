"""Shared fixtures. In CI (CI=true) a missing browser, dataset or server fails; elsewhere it skips."""
from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when something the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {what}")
    pytest.skip(f"missing: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def assert_nothing_silent(model, graph) -> None:
    """Every conv and linear is in a channel group or listed in graph.unassigned with a reason."""
    from torch import nn

    grouped = {name for g in graph.groups for name in g.layers}
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    missing = [n for n in layers if n not in grouped and not graph.unassigned.get(n)]
    assert not missing, missing
    assert all(reason for reason in graph.unassigned.values())
