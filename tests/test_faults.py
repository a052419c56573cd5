"""Faults injected into real runs: a job SIGKILLed mid-epoch, a full disk while saving, exporting and in
a job, flipped bytes in a trial, two runs on one workspace, SIGTERM to the app. Each gives one clear
message, a non-zero exit where asked-for work did not happen, and leaves every earlier iteration
byte-identical (hashed before and after).

Jobs are real `prune_explorer.jobs.train` processes; `tests/fault_injection/sitecustomize.py` (on
their PYTHONPATH, `conftest.fault_env`) pauses one inside an optimizer step or makes its model save fail as on a full
disk, so every test acts on a known state, never after a sleep.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import fault_env, wait_for_file
from prune_explorer.cli import main as cli_main
from prune_explorer.jobs import Job
from prune_explorer.loop import LoopConfig, run_loop
from prune_explorer.workspace import BASELINE, Workspace

pytestmark = pytest.mark.slow
SETTINGS = dict(dataset="digits", image_size=8, subset=120, val_subset=60, batch_size=30, baseline_epochs=1,
                epochs=1, per_iteration=48, threshold=1.0)
WAIT_S = 600  # the longest a test waits for a job to reach its fault (a loaded machine is slow, never wrong)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> Path:
    """A workspace with a baseline and one fine-tuned iteration (iter-001), made by the loop once."""
    root = tmp_path_factory.mktemp("lineage") / "ws"
    rows = run_loop(LoopConfig(workspace=str(root), iterations=1, **SETTINGS), progress=False)
    assert rows["iteration"].tolist() == [BASELINE, "iter-001"] and not rows.attrs["failed"]
    return root


@pytest.fixture
def workspace(lineage, tmp_path) -> Path:
    """This test's own copy of the lineage."""
    root = tmp_path / "ws"
    shutil.copytree(lineage, root)
    return root


def digest(root: Path, names=(BASELINE, "iter-001")) -> dict[str, str]:
    """sha256 of every file of the named iterations."""
    files = sorted(p for name in names for p in (root / "iterations" / name).rglob("*") if p.is_file())
    assert files
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def start_run(workspace: Path, *args: str, **faults: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prune_explorer.cli", "run", f"--workspace={workspace}", "--quiet",
                             *args], env=fault_env(**faults), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    wait_for_file(path, proc, WAIT_S)


def job_of(workspace: Path, iteration: str) -> Job:
    (job,) = [j for j in map(Job.load, (workspace / "jobs").glob("*.json")) if j.iteration == iteration]
    return job


def test_a_job_killed_mid_epoch_fails_the_run_and_earlier_iterations_stay_as_they_were(workspace, tmp_path):
    before = digest(workspace)
    mark = tmp_path / "mid-epoch"
    run = start_run(workspace, "--iterations=2", FAULT_JOB_OUT="iter-002", FAULT_PAUSE_MARK=str(mark))
    try:
        wait_for(mark, run)
        job = job_of(workspace, "iter-002")
        assert job.status == "running"
        os.killpg(int(job.backend_id), signal.SIGKILL)  # the job's whole process group, as the OOM killer would
        output, _ = run.communicate(timeout=WAIT_S)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, output
    assert "iter-002: fine-tuning job" in output and "killed by SIGKILL" in output
    assert "run FAILED (exit code 1)" in output and "Traceback" not in output
    assert job_of(workspace, "iter-002").status == "failed"
    assert not (workspace / "iterations" / "iter-003").exists()  # the run stopped at the failure
    assert digest(workspace) == before
    assert Workspace(workspace).completed_iterations() == ["iter-001"]  # a later run continues from iter-001


def test_a_full_disk_while_saving_the_pruned_model_names_it_and_leaves_nothing(workspace, monkeypatch, capsys):
    import safetensors
    import safetensors.torch

    def full_disk(*args, **kwargs):  # what safetensors raises on a full disk (seen on a 64 KiB tmpfs)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    before = digest(workspace)
    jobs = sorted(p.name for p in (workspace / "jobs").glob("*.json"))
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    code = cli_main(["run", f"--workspace={workspace}", "--iterations=1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{workspace / 'iterations' / 'iter-002' / 'pruned'}" in err and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1 or "Traceback" not in err
    assert not (workspace / "iterations" / "iter-002").exists()  # no reserved name, no half-written model
    assert sorted(p.name for p in (workspace / "jobs").glob("*.json")) == jobs  # no job submitted
    assert digest(workspace) == before


def test_a_full_disk_in_a_job_fails_the_run_and_removes_its_pruned_model(workspace):
    before = digest(workspace)
    run = start_run(workspace, "--iterations=1", FAULT_JOB_OUT="iter-002", FAULT_ENOSPC="1")
    output, _ = run.communicate(timeout=WAIT_S)
    assert run.returncode == 1, output
    assert "iter-002: fine-tuning job" in output and "No space left on device" in output
    assert "the disk is full" in output and "run FAILED" in output
    assert not (workspace / "iterations" / "iter-002" / "pruned").exists()  # 31 MB on resnet18: not left behind
    assert not (workspace / "iterations" / "iter-002" / "model.safetensors").exists()
    assert digest(workspace) == before


class _FullDisk(io.RawIOBase):
    """A file that takes 4 KiB, then fails as a full disk does."""

    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def writable(self):
        return True

    def write(self, data):
        if self.written + len(data) > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def close(self):
        self.handle.close()
        super().close()


def test_a_full_disk_during_export_names_the_file_and_leaves_nothing(workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exports"
    out.mkdir()
    before = digest(workspace)
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(handle) if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)) else handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    code = cli_main(["export", "iter-001", f"--workspace={workspace}", f"--output={out / 'iter-001.onnx'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"prune-explorer export: {out / 'iter-001.onnx'}: cannot write the export: No space left on device"
    assert list(out.iterdir()) == []  # neither the file nor its temp file
    assert digest(workspace) == before


def _flip_payload(event_file: Path, count: int = 300) -> None:
    """Flip `count` bytes in the middle of the largest record's payload (a tensor's values)."""
    data = bytearray(event_file.read_bytes())
    records, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("Q", data[at:at + 8])
        records.append((length, at + 12))
        at += 12 + length + 4
    length, start = max(records)
    middle = start + length // 2 - count // 2
    for i in range(middle, middle + min(count, length)):
        data[i] ^= 0xFF
    event_file.write_bytes(bytes(data))


def test_flipped_bytes_in_a_trial_are_named_and_nothing_is_pruned(workspace, capsys):
    trial = workspace / "iterations" / "iter-001" / "trial"
    event = max(trial.rglob("*.tfevents"), key=lambda p: p.stat().st_size)
    _flip_payload(event)
    before = digest(workspace)
    jobs = sorted(p.name for p in (workspace / "jobs").glob("*.json"))
    code = cli_main(["run", f"--workspace={workspace}", "--iterations=1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert str(event) in err and "bad CRC of the payload" in err and "record" in err
    assert not (workspace / "iterations" / "iter-002").exists()
    assert sorted(p.name for p in (workspace / "jobs").glob("*.json")) == jobs
    assert digest(workspace) == before


def test_a_second_run_on_a_busy_workspace_is_refused_naming_the_first_and_results_keep_every_lineage(
        workspace, tmp_path):
    before = digest(workspace)
    mark, release = tmp_path / "mid-epoch", tmp_path / "release"
    first = start_run(workspace, "--iterations=1", FAULT_JOB_OUT="iter-002", FAULT_PAUSE_MARK=str(mark),
                      FAULT_RELEASE=str(release))
    try:
        wait_for(mark, first)  # the first run holds the workspace: its job is mid-epoch
        second = subprocess.run([sys.executable, "-m", "prune_explorer.cli", "run", f"--workspace={workspace}",
                                 "--iterations=1", "--quiet"], env=fault_env(), capture_output=True, text=True,
                                timeout=WAIT_S)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another run is working on this workspace" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "--iterations=1" in second.stderr
        release.touch()
        output, _ = first.communicate(timeout=WAIT_S)
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output
    assert sorted(p.name for p in (workspace / "iterations").iterdir()) == [BASELINE, "iter-001", "iter-002"]
    assert digest(workspace) == before
    # a branch from the baseline afterwards: results.csv holds both lineages, not only the last writer's
    branch = start_run(workspace, "--iterations=1", "--from=baseline")
    output, _ = branch.communicate(timeout=WAIT_S)
    assert branch.returncode == 0, output
    results = pd.read_csv(workspace / "results.csv").set_index("iteration")
    assert sorted(results.index) == [BASELINE, "iter-001", "iter-002", "iter-003"]
    assert results.loc["iter-002", "parent"] == "iter-001" and results.loc["iter-003", "parent"] == BASELINE
    assert digest(workspace) == before


def test_prune_explorer_app_stops_voila_its_kernel_and_the_job_on_sigterm(tmp_path):
    """SIGTERM to `prune-explorer app` while the page's kernel trains the baseline: nothing is left running."""
    import psutil

    from conftest import free_port

    workspace, mark, port, token = tmp_path / "ws", tmp_path / "mid-epoch", free_port(), "t0ken" * 8
    env = fault_env(FAULT_JOB_OUT=str(workspace / "iterations" / BASELINE), FAULT_PAUSE_MARK=str(mark),
                    PRUNE_EXPLORER_APP_TOKEN=token,
                    JUPYTER_PLATFORM_DIRS="1", JUPYTER_CONFIG_DIR=str(tmp_path / ".config"),
                    JUPYTER_DATA_DIR=str(tmp_path / ".data"), JUPYTER_RUNTIME_DIR=str(tmp_path / ".runtime"),
                    IPYTHONDIR=str(tmp_path / ".ipython"))
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    app = subprocess.Popen([sys.executable, "-m", "prune_explorer.cli", "app", "--fast", "--demo", f"--port={port}",
                            f"--workspace={workspace}"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    page = None
    try:
        page = subprocess.Popen([sys.executable, "-c", f"import urllib.request, time\n"
                                 f"while True:\n"
                                 f"    try: urllib.request.urlopen('http://127.0.0.1:{port}/?token={token}', timeout=900).read(); break\n"
                                 f"    except OSError: time.sleep(0.2)\n"], env=env)  # the page runs the notebook
        wait_for(mark, app)  # the kernel's baseline job is mid-epoch
        tree = psutil.Process(app.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "voila" in names and "ipykernel" in names and "prune_explorer.jobs.train" in names
        app.send_signal(signal.SIGTERM)
        output, _ = app.communicate(timeout=120)
    finally:
        if page is not None:
            page.kill()
        if app.poll() is None:
            app.kill()
    assert app.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopping the app, its kernels and jobs" in output
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    job = job_of(workspace, BASELINE)
    assert job.status == "stopped" and "cancelled" in (job.message or "")
