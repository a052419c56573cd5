"""A panel and a headless run on one workspace at the same time: the Explorer (no browser) in this
process, `prune-explorer run` in another, real local jobs and one MLflow store between them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

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

    workspace = tmp_path / "ws"
    run_loop(LoopConfig(workspace=str(workspace), iterations=0, threshold=1.0, **SETTINGS), progress=False)
    env = {**os.environ, "PRUNE_EXPLORER_SMDEBUG_LOG": ""}
    cli = subprocess.Popen([sys.executable, "-m", "prune_explorer.cli", *_cli_args(workspace)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    panel = Explorer.from_iteration(workspace, BASELINE, criterion="taylor", n_lowest=32,
                                    hyperparameters={"epochs": 1, "batch_size": 30})
    try:
        queued = []
        for n in (32, 40):  # two fine-tunes queued from the panel while the run goes on
            panel.fill_lowest(n=n, scheme="internal")
            panel.apply()
            queued.append(panel.queue_finetune())
        assert cli.poll() is None, "the CLI run ended before the panel queued: nothing ran at the same time"
        output, _ = cli.communicate(timeout=900)
        done = [panel.queue.wait(job.id, timeout=900) for job in queued]
    finally:
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
    assert space.lineage(cli_names[1]) == [BASELINE, *cli_names]  # the run pruned its own previous iteration

    tracker = MlflowTracker(workspace)
    runs = tracker._client.search_runs([tracker.experiment_id], run_view_type=ViewType.ALL)
    tracked = sorted(r.data.tags["prune_explorer.iteration"] for r in runs)
    assert tracked == [BASELINE, *pruned]  # each recorded once: no run replaced, none missing
    history = tracker.history().set_index("iteration")
    assert all(history.loc[name, "parent"] == space.lineage(name)[-2] for name in pruned)
    assert set(history["status"]) == {COMPLETED}
