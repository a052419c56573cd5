"""A panel and a headless run on one workspace at the same time: the Explorer (no browser) in this
process, `prune-explorer run` in another, real local jobs and one MLflow store between them.

What the code promises, whatever the order things finish in: distinct iteration names, each job
tracked once, every lineage intact, and the run's iterations a chain from the start point it
announced ("latest": the newest completed iteration when it starts, possibly the panel's). The
run's first job waits mid-epoch (tests/fault_injection) until the panel has queued its two, so
the two really run at the same time on any machine, loaded or not."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import fault_env, wait_for_file
from prune_explorer.jobs import COMPLETED, Job
from prune_explorer.loop import LoopConfig, run_loop
from prune_explorer.tracking import MlflowTracker
from prune_explorer.widgets import Explorer
from prune_explorer.workspace import BASELINE, Workspace

pytestmark = pytest.mark.slow
SETTINGS = dict(dataset="digits", image_size=8, subset=120, val_subset=60, batch_size=30, baseline_epochs=1, epochs=1)


def _cli_args(workspace) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    return ["run", f"--workspace={workspace}", "--iterations=2", "--per-iteration=48", "--threshold=1.0",
            "--criterion=taylor", "--quiet", *flags]


def test_a_panel_and_a_cli_run_make_distinct_iterations_each_tracked_once_with_lineage_intact(tmp_path):
    from mlflow.entities import ViewType

    workspace, mark, release = tmp_path / "ws", tmp_path / "cli-job-mid-epoch", tmp_path / "release"
    run_loop(LoopConfig(workspace=str(workspace), iterations=0, threshold=1.0, **SETTINGS), progress=False)
    env = fault_env(FAULT_JOB_OUT=str(workspace / "iterations" / "iter-001"), FAULT_PAUSE_MARK=str(mark),
                    FAULT_RELEASE=str(release))
    cli = subprocess.Popen([sys.executable, "-m", "prune_explorer.cli", *_cli_args(workspace)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    panel = Explorer.from_iteration(workspace, BASELINE, criterion="taylor", n_lowest=32,
                                    hyperparameters={"epochs": 1, "batch_size": 30})
    try:
        wait_for_file(mark, cli, timeout=900)  # the run's first job is mid-epoch
        queued = []
        for n in (32, 40):  # two fine-tunes queued from the panel while the run goes on
            panel.fill_lowest(n=n, scheme="internal")
            panel.apply()
            queued.append(panel.queue_finetune())
        release.touch()
        output, _ = cli.communicate(timeout=900)
        done = [panel.queue.wait(job.id, timeout=900) for job in queued]
    finally:
        release.touch()
        panel.close()
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, output
    assert "stopped: completed 2 iterations" in output
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" not in output
    assert [j.status for j in done] == [COMPLETED, COMPLETED], [j.message for j in done]

    space = Workspace(workspace)
    jobs = [Job.load(p) for p in (workspace / "jobs").glob("*.json")]
    pruned = sorted(j.iteration for j in jobs if j.iteration != BASELINE)
    assert pruned == ["iter-001", "iter-002", "iter-003", "iter-004"]  # four distinct names, one job each
    panel_names = {j.iteration for j in done}
    cli_names = sorted(set(pruned) - panel_names)
    assert all(space.lineage(name) == [BASELINE, name] for name in panel_names)
    announced = re.search(r"continuing from (\S+) in ", output)
    start = announced.group(1) if announced else BASELINE  # the run names its start when it is not the baseline
    assert start == BASELINE or start in panel_names
    assert space.lineage(cli_names[-1]) == [*space.lineage(start), *cli_names]  # the run pruned its own previous

    tracker = MlflowTracker(workspace)
    runs = tracker._client.search_runs([tracker.experiment_id], run_view_type=ViewType.ALL)
    tracked = sorted(r.data.tags["prune_explorer.iteration"] for r in runs)
    assert tracked == [BASELINE, *pruned]  # each recorded once: no run replaced, none missing
    history = tracker.history().set_index("iteration")
    assert all(history.loc[name, "parent"] == space.lineage(name)[-2] for name in pruned)
    assert set(history["status"]) == {COMPLETED}
