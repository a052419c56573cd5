"""The headless loop end to end on sklearn digits: real train jobs, trials, ranks, surgery, MLflow.

Each test owns its workspace: it starts from a copy of one baseline trained once for the session
(conftest's `digits_baseline`, as the quality benchmark shares one), so every test passes alone and
in any order.
"""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import torch

from prune_explorer.cli import main as cli_main
from prune_explorer.jobs import JobQueue, LocalBackend
from prune_explorer.loop import LoopConfig, demo_config, recorded_recipe, run_loop
from prune_explorer.model import store
from prune_explorer.tracking import MlflowTracker
from prune_explorer.workspace import Workspace


def _config(workspace, **over) -> LoopConfig:
    values = dict(workspace=str(workspace), dataset="digits", model="resnet18", criterion="taylor",
                  per_iteration=48, iterations=1, epochs=1, baseline_epochs=1, subset=60, val_subset=40,
                  image_size=8, batch_size=30, threshold=1.0, capture="compact", train_args={"measure_latency": False})
    values.update(over)
    return LoopConfig(**values)


@pytest.fixture
def workspace(tmp_path, digits_baseline):
    """This test's own workspace, holding a copy of the session's trained baseline (tracked on first use)."""
    root = tmp_path / "ws"
    assert Workspace(root).copy_baseline(digits_baseline)
    # the recipe the loop records when it trains a baseline with `_config`'s settings (the shared one was)
    recorded_recipe.record_baseline(Workspace(root), _config(root))
    return root


def _one_iteration(workspace, **over):
    return run_loop(_config(workspace, **over), progress=False)


def _perfect_parent(workspace, name):
    """Make `name` look perfect: any fine-tuned child on digits falls more than 0.1 below it."""
    path = workspace / "iterations" / name / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["best_accuracy"] = 1.0
    path.write_text(json.dumps(metrics))


class RuleIgnoringBackend(LocalBackend):
    """Runs train.py without the per-job rule, as a user's own training script would: only the loop judges."""

    def command(self, job):
        keep = {k: v for k, v in job.hyperparameters.items() if k not in ("stop_rule_threshold", "baseline_accuracy")}
        from prune_explorer.jobs.local import train_arguments

        return [self.python, "-m", "prune_explorer.jobs.train",
                *train_arguments(type(job)(**{**vars(job), "hyperparameters": keep}))]


def test_loop_prunes_fine_tunes_and_tracks_from_the_baseline(workspace):
    rows = _one_iteration(workspace)
    assert rows["iteration"].tolist() == ["baseline", "iter-001"]
    assert rows.attrs["stop_reason"] == "completed 1 iterations"
    base, child = rows.iloc[0], rows.iloc[1]
    assert child["parent"] == "baseline" and child["criterion"] == "taylor"
    assert child["status"] == "completed" and child["filters_removed"] == 48
    assert child["params"] < base["params"] and child["macs"] < base["macs"]
    assert 0.0 <= child["accuracy"] <= 1.0

    # the tracked numbers are those of the real fine-tuned model on disk
    model = store.load(child["model_dir"])
    assert sum(p.numel() for p in model.parameters()) == child["params"]
    removed = json.loads((workspace / "iterations" / "iter-001" / "metrics.json").read_text())
    assert removed["best_accuracy"] == pytest.approx(child["accuracy"])
    assert (workspace / "iterations" / "baseline" / "trial" / "collections").is_dir()  # ranked from this
    assert (workspace / "iterations" / "iter-001" / "pruned" / "model.json").is_file()

    csv = pd.read_csv(workspace / "results.csv")
    assert csv["iteration"].tolist() == ["baseline", "iter-001"]
    assert (workspace / "params_vs_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    jobs = JobQueue(workspace, tracker=False).jobs()
    assert [j.iteration for j in jobs] == ["iter-001"]  # the copied baseline is reused, not retrained
    assert jobs[0].plan and sum(jobs[0].plan.values()) == 48

    # the accuracy right after the cut: the saved pruned model on the first validation images its job used
    from prune_explorer.jobs.data import load_dataset, with_channels
    from prune_explorer.loop.cut import accuracy

    pruned = store.load(workspace / "iterations" / "iter-001" / "pruned")
    config = _config(workspace)  # the slice of the job's own validation set: its size, subset and seed
    _, val, _, _ = load_dataset("digits", image_size=config.image_size, val_subset=config.val_subset, seed=config.seed,
                                download=False)
    pairs = [with_channels(val, 3)[i] for i in range(min(1000, len(val)))]
    images, labels = torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])
    assert child["cut_accuracy"] == pytest.approx(accuracy(pruned, images, labels))
    assert pd.isna(base["cut_accuracy"])  # a baseline is not cut
    # the panel's first view of the run: the last model's ranks and the history, on disk
    from prune_explorer.workspace import view

    drawn = view.read_view(Workspace(workspace), "iter-001", "taylor", None)
    assert drawn is not None and drawn["criterion"] == "taylor" and min(drawn["ranks"]["row"]) >= 0
    assert [r["iteration"] for r in view.read_history(Workspace(workspace))] == ["baseline", "iter-001"]


@pytest.mark.slow
def test_a_second_run_continues_from_the_newest_iteration_and_the_rule_fires_in_the_job(workspace):
    _one_iteration(workspace)
    _perfect_parent(workspace, "iter-001")
    rows = run_loop(_config(workspace, threshold=0.10, iterations=3), progress=False)
    # baseline reused, not retrained; iter-002 prunes iter-001 further; the lineage is reported
    assert rows["iteration"].tolist() == ["baseline", "iter-001", "iter-002"]
    assert rows.iloc[2]["parent"] == "iter-001" and rows.iloc[2]["params"] < rows.iloc[1]["params"]
    assert pd.read_csv(workspace / "results.csv")["iteration"].tolist() == ["baseline", "iter-001", "iter-002"]
    assert "accuracy rule fired" in rows.attrs["stop_reason"] and "iter-002" in rows.attrs["stop_reason"]
    assert rows.iloc[2]["status"] == "stopped"
    assert MlflowTracker(workspace).history().set_index("iteration").loc["iter-002", "status"] == "stopped"
    # the rule ran inside the fine-tuning job (as the Debugger rule does on SageMaker), which stopped itself
    (job,) = [j for j in JobQueue(workspace, tracker=False).jobs() if j.iteration == "iter-002"]
    assert job.status == "stopped" and "in job " + job.id in rows.attrs["stop_reason"]
    assert job.hyperparameters["baseline_accuracy"] == 1.0 and job.hyperparameters["stop_rule_threshold"] == 0.10
    # the panel's first view is of the iteration it opens on "latest": iter-001 (its metrics changed, so the
    # first run's view of it is stale), not the stopped iter-002
    from prune_explorer.workspace import view

    assert Workspace(workspace).start_point("latest").name == "iter-001"
    drawn = view.read_view(Workspace(workspace), "iter-001", "taylor", None)
    assert drawn is not None and drawn["iteration"] == "iter-001"
    assert job.result["status"] == "stopped" and "below" in job.result["reason"]
    assert Workspace(workspace).completed_iterations() == ["iter-001"]


@pytest.mark.slow
def test_the_loops_own_rule_verdict_is_written_where_a_later_run_reads_it(workspace):
    _one_iteration(workspace)
    _perfect_parent(workspace, "iter-001")
    rows = run_loop(_config(workspace, threshold=0.10, iterations=2), progress=False, backend=RuleIgnoringBackend())
    assert rows.attrs["stop_reason"].startswith("iter-002: accuracy rule fired: ")
    (job,) = [j for j in JobQueue(workspace, tracker=False).jobs() if j.iteration == "iter-002"]
    assert job.status == "completed"  # the job did not judge itself: the loop did, after it
    metrics = json.loads((workspace / "iterations" / "iter-002" / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and "below the previous iteration" in metrics["reason"]
    assert MlflowTracker(workspace).history().set_index("iteration").loc["iter-002", "status"] == "stopped"
    assert Workspace(workspace).completed_iterations() == ["iter-001"]
    again = run_loop(_config(workspace, iterations=0), progress=False)  # continues from iter-001, not iter-002
    assert again.attrs["stop_reason"] == "no new iterations asked for; the lineage ends at iter-001"


def test_parameter_floor_stops_before_any_job_and_cli_history_prints(workspace, capsys, tmp_path):
    _one_iteration(workspace)
    jobs_before = len(JobQueue(workspace, tracker=False).jobs())
    code = cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--iterations", "2",
                     "--per-iteration", "48", "--min-params", "10000000000", "--subset", "60", "--image-size", "8",
                     "--quiet", "--baseline-epochs", "1", "--val-subset", "40", "--batch-size", "30"])
    assert code == 0
    out = capsys.readouterr().out
    assert "below the floor" in out and "baseline" in out and "pruning iter-001 further" in out
    assert len(JobQueue(workspace, tracker=False).jobs()) == jobs_before
    assert not (workspace / "iterations" / "iter-002").exists()  # nothing half-made is left behind

    target = tmp_path / "history.csv"
    assert cli_main(["history", "--workspace", str(workspace), "--csv", str(target)]) == 0
    printed = capsys.readouterr().out
    for iteration in ("baseline", "iter-001"):
        assert iteration in printed
    assert pd.read_csv(target)["iteration"].tolist() == ["baseline", "iter-001"]
    assert cli_main(["history", "--workspace", str(tmp_path / "empty")]) == 1


@pytest.mark.slow
def test_from_names_where_to_continue_and_an_unknown_start_is_refused(workspace):
    _one_iteration(workspace)
    rows = run_loop(_config(workspace, per_iteration=16, start_from="baseline"), progress=False)
    assert rows["iteration"].tolist() == ["baseline", "iter-002"] and rows.iloc[1]["parent"] == "baseline"
    assert rows.iloc[1]["filters_removed"] == 16
    jobs_before = len(JobQueue(workspace, tracker=False).jobs())
    with pytest.raises(ValueError, match=r"'iter-009' is not a completed iteration .*completed: iter-001, iter-002"):
        run_loop(_config(workspace, start_from="iter-009"), progress=False)
    assert cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--subset", "60", "--image-size",
                     "8", "--quiet", "--baseline-epochs", "1", "--val-subset", "40", "--batch-size", "30",
                     "--from", "nowhere"]) == 2  # refused before any work
    rows = run_loop(_config(workspace, iterations=0, start_from="iter-001"), progress=False)
    assert rows["iteration"].tolist() == ["baseline", "iter-001"]
    assert rows.attrs["stop_reason"] == "no new iterations asked for; the lineage ends at iter-001"
    assert len(JobQueue(workspace, tracker=False).jobs()) == jobs_before


def test_an_overall_macs_target_is_reached_in_equal_ratios_by_the_global_criterion(workspace, capsys):
    """`run --criterion taylor_global --target-macs 0.5 --target-scope overall --iterations 2`:
    each iteration keeps about 1/√2 of its parent's MACs and the last lands on half the baseline's,
    within one filter's MACs."""
    from prune_explorer.model.costs import CostModel
    from prune_explorer.model.graph import ChannelGraph

    code = cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--iterations", "2",
                     "--criterion", "taylor_global", "--target-macs", "0.5", "--target-scope", "overall",
                     "--subset", "60", "--image-size", "8", "--val-subset", "40", "--batch-size", "30",
                     "--baseline-epochs", "1", "--epochs", "1", "--threshold", "1.0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    history = MlflowTracker(workspace).history().set_index("iteration")
    assert history.loc[["iter-001", "iter-002"], "criterion"].tolist() == ["taylor_global"] * 2
    macs = history["macs"].astype(float)
    base = store.load(workspace / "iterations" / "baseline").eval()
    x = Workspace(workspace).example_inputs("baseline", base)
    costs = CostModel(base, x, ChannelGraph.trace(base, x))
    one_filter, per_example = max(costs.channel_macs().values()), costs.before.macs
    assert per_example == macs["baseline"]
    final = macs["iter-002"] / macs["baseline"]
    assert 0.5 - one_filter / per_example < final <= 0.5
    assert macs["iter-001"] / macs["baseline"] == pytest.approx(0.5 ** 0.5, abs=one_filter / per_example)
    config = json.loads((workspace / "loop_config.json").read_text())
    assert (config["target_macs"], config["target_scope"], config["criterion"]) == (0.5, "overall", "taylor_global")


def test_run_distill_parent_teaches_each_fine_tune_with_its_parent_and_records_it(workspace, capsys):
    """`run --distill parent`: iter-001 learns from the baseline, iter-002 from iter-001, each teacher's
    files unchanged by the job, and both trackers' hyperparameters say so (MLflow here)."""
    import hashlib

    iterations = workspace / "iterations"
    baseline_hash = hashlib.sha256((iterations / "baseline" / "model.safetensors").read_bytes()).hexdigest()
    code = cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--iterations", "2",
                     "--per-iteration", "48", "--subset", "60", "--val-subset", "40", "--image-size", "8",
                     "--batch-size", "30", "--baseline-epochs", "1", "--epochs", "1", "--threshold", "1.0", "--distill", "parent",
                     "--distill-temperature", "2", "--quiet",
                     "--new-recipe"])  # distillation is a fine-tuning setting: another than the recorded one branches
    assert code == 0, capsys.readouterr().err
    tracker = MlflowTracker(workspace)
    for name, parent in (("iter-001", "baseline"), ("iter-002", "iter-001")):
        teacher = json.loads((iterations / name / "metrics.json").read_text())["teacher"]
        assert teacher["model"] == str(iterations / parent) and teacher["calls"] == 60 // 30  # 60 images, batch 30
        assert teacher["weights_sha256_before"] == teacher["weights_sha256_after"]
        assert tracker.hyperparameters(name) == {"distill": "parent", "distill_alpha": 0.9, "distill_temperature": 2.0,
                                                 "teacher": str(iterations / parent)}
    assert hashlib.sha256((iterations / "baseline" / "model.safetensors").read_bytes()).hexdigest() == baseline_hash
    assert json.loads((workspace / "loop_config.json").read_text())["distill"] == "parent"


def test_a_run_for_onnxruntime_keeps_every_cut_width_a_multiple_of_its_channel_block(workspace, capsys):
    """`run --latency-runtime onnxruntime`: rounding to ORT's block (probed: 16 with AVX-512, 8 with AVX2)
    is on by default, so no convolution falls out of ORT's blocked layout; --round-to 0 turns it off."""
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.runtimes import onnxruntime_block_size

    block = onnxruntime_block_size()
    code = cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--iterations", "1",
                     "--per-iteration", "100", "--subset", "60", "--val-subset", "40", "--image-size", "8",
                     "--batch-size", "30", "--baseline-epochs", "1", "--epochs", "1", "--threshold", "1.0", "--latency-runtime",
                     "onnxruntime", "--quiet"])
    assert code == 0, capsys.readouterr().err
    space = Workspace(workspace)
    widths = {}
    for name in ("baseline", "iter-001"):
        model = store.load(space.iteration_dir(name)).eval()
        x = space.example_inputs(name, model)
        widths[name] = {g.name: g.size for g in ChannelGraph.trace(model, x).prunable("internal")}
    cut = {g: w for g, w in widths["iter-001"].items() if w != widths["baseline"][g]}
    assert cut and all(w % block == 0 for w in cut.values()), (block, cut)
    assert json.loads((workspace / "loop_config.json").read_text())["latency_runtime"] == "onnxruntime"


def test_config_is_validated_and_demo_config_fits_the_machine(tmp_path):
    with pytest.raises(ValueError, match="target_macs is the fraction"):
        _config(tmp_path, target_macs=50.0).validate()
    with pytest.raises(ValueError, match="not both"):
        _config(tmp_path, target_macs=0.5, target_latency=0.5).validate()
    with pytest.raises(ValueError, match="normalization must be one of"):
        _config(tmp_path, normalization="max").validate()
    with pytest.raises(ValueError, match="target_scope"):
        _config(tmp_path, target_macs=0.5, target_scope="total").validate()
    with pytest.raises(ValueError, match="scheme"):
        _config(tmp_path, scheme="everything").validate()
    with pytest.raises(ValueError, match="per_iteration"):
        _config(tmp_path, per_iteration=0).validate()
    with pytest.raises(ValueError, match="needs a trial"):
        _config(tmp_path, capture="none").validate()
    config = _config(tmp_path, lr=0.003, baseline_lr=0.01, lr_schedule="cosine", weight_decay=5e-4)
    assert config.hyperparameters(6, baseline=True)["lr"] == 0.01
    tuning = config.hyperparameters(1)
    assert (tuning["lr"], tuning["lr_schedule"], tuning["weight_decay"], tuning["epochs"]) == (0.003, "cosine", 5e-4, 1)
    assert "lr" not in _config(tmp_path).hyperparameters(1)  # unset: train.py's own default
    demo = demo_config(tmp_path).validate()
    assert demo.model == "resnet18" and demo.iterations >= 4 and demo.epochs == 1
    assert demo.dataset in ("fashion-mnist", "digits")


def test_a_baseline_trained_with_other_settings_is_refused_not_reused(workspace):
    jobs_before = len(JobQueue(workspace, tracker=False).jobs())
    with pytest.raises(ValueError, match=r"--baseline-epochs 2 differs from the recorded 1 .*use another --workspace"):
        run_loop(_config(workspace, baseline_epochs=2), progress=False)
    (workspace / "iterations" / "baseline" / "recipe.json").unlink()  # without a recorded recipe: the baseline check
    with pytest.raises(ValueError, match=r"baseline was trained with other settings: .*epochs=1 \(this run: 2\)"):
        run_loop(_config(workspace, baseline_epochs=2), progress=False)
    code = cli_main(["run", "--workspace", str(workspace), "--dataset", "digits", "--subset", "500", "--quiet"])
    assert code == 2  # refused before any work
    assert len(JobQueue(workspace, tracker=False).jobs()) == jobs_before



@pytest.mark.slow
def test_the_run_commands_screen_output_has_its_progress_bar_and_no_smdebug_info_line(workspace):
    """What `make demo` shows after its surgery table: a `prune-explorer run` with progress on screen."""
    import os
    import subprocess

    env = {**os.environ, "PRUNE_EXPLORER_SMDEBUG_LOG": ""}
    done = subprocess.run([sys.executable, "-m", "prune_explorer.cli", "run", f"--workspace={workspace}",
                           "--dataset=digits", "--subset=60", "--val-subset=40", "--image-size=8", "--batch-size=30",
                           "--baseline-epochs=1", "--iterations=1", "--per-iteration=48", "--threshold=1.0"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "prune iterations" in done.stderr and "stopped: completed 1 iterations" in done.stdout
    screen = done.stdout + done.stderr
    assert "RULE_JOB_STOP_SIGNAL_FILENAME" not in screen and " INFO " not in screen
