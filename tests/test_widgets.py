"""The Explorer panel without a browser: its traitlets, callbacks and the library calls behind them."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.model import store
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.model.measure import count
from prune_explorer.model.zoo import build_model
from prune_explorer.model.plan import PrunePlan
from prune_explorer.model.surgery import prune
from prune_explorer.tracking import MlflowTracker
from prune_explorer.widgets import Explorer
from prune_explorer.widgets.scatter import pareto_frontier
from prune_explorer.widgets.sensitivity import accuracy

SIZE = 16


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A resnet18 and a real compact trial captured over two training steps."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    x, y = _batch()
    trial = tmp_path_factory.mktemp("trial") / "trial"
    with CaptureHook(model, trial, mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        for _ in range(2):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
    return model.eval(), trial, x, y


@pytest.fixture
def explorer(captured):
    model, trial, x, y = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], validation=(x, y), n_lowest=120)
    yield e.wait()
    e.close()


def test_opens_on_a_trial_and_ranks_every_prunable_group(explorer):
    assert explorer.error == ""
    assert explorer.criterion == "taylor"
    assert set(explorer.table["criterion"]) == {"taylor"}
    assert list(explorer.table_editor.rows) == [g.name for g in explorer.graph.prunable()]
    colour = explorer.heatmap.map.color
    assert colour.shape == (len(explorer.graph.prunable()), max(g.size for g in explorer.graph.prunable()))
    assert np.isnan(colour).sum() == colour.size - len(explorer.table)


def test_lowest_n_control_builds_the_library_plan(explorer):
    explorer.fill_lowest(n=150, scheme="all")
    expected = PrunePlan.lowest(explorer.table, explorer.graph, n=150, scheme="all")
    assert explorer.plan().resolve(explorer.graph) == expected.resolve(explorer.graph)
    assert explorer.plan_summary == expected.summary()
    assert explorer.preview["filters_removed"] == 150
    assert len(explorer.heatmap.cut.x) == 150

    explorer.fill_lowest(n=40, scheme="internal")
    internal = PrunePlan.lowest(explorer.table, explorer.graph, n=40, scheme="internal")
    assert explorer.plan().resolve(explorer.graph) == internal.resolve(explorer.graph)
    assert all(explorer.graph.group(layer).kind == "internal" for layer in explorer.counts)


def test_moving_one_slider_updates_counts_plan_and_preview(explorer):
    row = explorer.table_editor.rows["layer2.0.conv1"]
    row.slider.value = 10
    assert explorer.counts == {"layer2.0.conv1": 10}
    assert row.remaining.value == str(row.size - 10)
    expected = PrunePlan.from_counts(explorer.table, explorer.graph, {"layer2.0.conv1": 10})
    assert explorer.plan_channels == expected.channels
    real = count(prune(explorer.model, expected, explorer.x, graph=explorer.graph), explorer.x)
    assert (explorer.preview["params_after"], explorer.preview["macs_after"]) == (real.params, real.macs)
    assert explorer.preview["params_after"] < explorer.preview["params_before"]
    explorer.wait()
    assert explorer.preview["latency_ms_after"] > 0


def test_preview_equals_surgery_and_count_for_a_global_plan(explorer):
    explorer.fill_lowest(n=300, scheme="all")
    pruned = prune(explorer.model, explorer.plan(), explorer.x, graph=explorer.graph)
    real = count(pruned, explorer.x)
    assert explorer.preview["params_after"] == real.params
    assert explorer.preview["macs_after"] == real.macs


def test_refused_plan_shows_an_error_naming_the_layer_and_keeps_the_old_plan(explorer):
    explorer.set_counts({"layer1.0.conv1": 3})
    kept = dict(explorer.plan_channels)
    explorer.counts = {"layer1.0.conv1": 64}
    assert "plan refused" in explorer.error and "layer1.0.conv1" in explorer.error
    assert "layer1.0.conv1" in explorer.error_line.value
    assert explorer.plan_channels == kept
    explorer.set_counts({"layer1.0.conv1": 2})
    assert explorer.error == ""


def test_apply_without_cuts_is_an_error_in_the_panel_not_an_exception(explorer, tmp_path):
    explorer.set_counts({})
    explorer.apply_button.click()
    assert "cuts no filters" in explorer.error
    assert explorer.applied == {}


def test_apply_prunes_and_saves_the_smaller_model(captured, tmp_path):
    model, trial, x, y = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws")
    try:
        e.set_counts({"layer3.0.conv1": 100, "layer1.1.conv1": 5})
        e.apply_button.click()
        assert e.error == ""
        assert e.applied["filters_removed"] == 105
        assert e.applied["widths"] == {"layer1.1.conv1": (64, 59), "layer3.0.conv1": (256, 156)}
        reloaded = store.load(e.applied["model_dir"])
        assert count(reloaded, x[:1]).params == e.preview["params_after"] == e.applied["params_after"]
        assert reloaded.layer3[0].conv1.out_channels == 156
    finally:
        e.close()


def test_bad_trial_path_is_an_error_in_the_panel_and_ranks_fall_back_to_weights(captured, tmp_path):
    model, _, x, _ = captured
    missing = tmp_path / "no-such-trial"
    e = Explorer(model, trial=missing, example_inputs=x[:1])
    try:
        assert str(missing) in e.error and "l1" in e.error
        assert str(missing) in e.error_line.value
        assert e.criterion == "l1" and set(e.table["criterion"]) == {"l1"}
        e.table_editor.criterion.value = "taylor"
        e.wait()
        assert "needs a trial" in e.error
    finally:
        e.close()


def test_criterion_dropdown_reranks_in_the_background(explorer):
    explorer.set_counts({"layer4.0.conv1": 50})
    explorer.table_editor.criterion.value = "l2"
    explorer.wait()
    assert set(explorer.table["criterion"]) == {"l2"}
    assert explorer.counts == {"layer4.0.conv1": 50}
    assert explorer.plan_channels == PrunePlan.from_counts(explorer.table, explorer.graph, explorer.counts).channels


def test_sensitivity_curve_starts_at_the_unpruned_accuracy(explorer, captured):
    model, _, x, y = captured
    explorer.compute_sensitivity("layer2.1.conv1")
    explorer.wait()
    points = explorer.sensitivity["layer2.1.conv1"]
    assert points[0] == (0.0, accuracy(model, x, y))
    assert [p[0] for p in points] == sorted(p[0] for p in points) and points[-1][0] > 0.8
    assert explorer.table_editor.rows["layer2.1.conv1"].curve_box.children


def test_pareto_frontier_keeps_points_nothing_beats():
    params = np.array([10.0, 8.0, 6.0, 6.0, 3.0])
    acc = np.array([0.90, 0.92, 0.85, 0.80, 0.86])
    assert pareto_frontier(params, acc).tolist() == [4, 1]


def _tracked_workspace(tmp_path, model, x):
    """A workspace whose tracker holds a baseline and a pruned iteration, both with saved models."""
    ws = tmp_path / "ws"
    tracker = MlflowTracker(ws)
    models = {"baseline": model, "iter-001": prune(model, PrunePlan({"layer4.0.conv1": list(range(200))}), x)}
    for (name, m), acc in zip(models.items(), (0.9, 0.85)):
        directory = ws / "iterations" / name
        store.save(m, directory)
        (directory / "metrics.json").write_text(json.dumps({"input_shape": list(x.shape[1:])}))
        tracker.record(name, parent=None if name == "baseline" else "baseline", params=count(m, x).params,
                       accuracies=[acc], model_dir=str(directory), status="completed")
    tracker.record("iter-002", parent="iter-001", status="failed")
    return ws, tracker


def test_scatter_shows_the_real_tracker_history_and_a_click_rebases(captured, tmp_path):
    model, _, x, _ = captured
    ws, tracker = _tracked_workspace(tmp_path, model, x[:1])
    e = Explorer.from_iteration(ws, "baseline")
    try:
        history = tracker.history().dropna(subset=["accuracy"])
        assert e.history_size == 2
        assert e.scatter.points.x.tolist() == history["params"].astype(float).tolist()
        assert e.scatter.points.y.tolist() == history["accuracy"].tolist()
        assert e.scatter.points.names.tolist() == ["baseline", "iter-001"]
        assert e.scatter.base.x.tolist() == [float(history["params"].iloc[0])]

        e.set_counts({"layer4.0.conv1": 400})
        e.scatter.points._handle_custom_msgs(None, {"event": "element_click", "data": {"index": 1}})
        e.wait()
        assert e.error == ""
        assert e.base_iteration == "iter-001"
        assert e.preview["params_before"] == int(history["params"].iloc[1])
        assert e.table_editor.rows["layer4.0.conv1"].size == 312
        assert e.counts == {} and len(e.heatmap.cut.x) == 0
        assert e.scatter.base.x.tolist() == [float(history["params"].iloc[1])]
    finally:
        e.close()


def test_an_iteration_opens_with_the_fine_tuning_recipe_of_the_job_that_made_it(captured, tmp_path):
    from prune_explorer.jobs import Job

    model, _, x, _ = captured
    ws = tmp_path / "ws"
    tracker = MlflowTracker(ws)
    recipe = {"dataset": "digits", "lr_schedule": "cosine", "weight_decay": 5e-4}
    script = {"entry_point": "train.py", "source_dir": str(tmp_path / "src")}  # the user's own script made iter-001
    jobs = {"baseline": (None, {**recipe, "epochs": 6, "lr": 0.01, "batch_size": 64, "weights": "IMAGENET1K_V1",
                                "image_size": SIZE}, {}),
            "iter-001": ("baseline", {**recipe, "epochs": 2, "lr": 0.003, "batch_size": 32,
                                      "stop_rule_threshold": 0.1, "baseline_accuracy": 0.9}, script)}
    for name, (parent, hp, made_by) in jobs.items():
        directory = ws / "iterations" / name
        store.save(model, directory)
        metrics = {"input_shape": list(x.shape[1:]), "config": {"image_size": SIZE}}
        if name == "baseline":  # train.py's record of how a pretrained start fed its model
            metrics["data_recipe"] = {"normalize": "imagenet", "augment": True}
        (directory / "metrics.json").write_text(json.dumps(metrics))
        job = Job(id=f"job-{name}", backend="local", model="resnet18", out_dir=str(directory), parent=parent,
                  iteration=name, hyperparameters=hp, status="completed", **made_by)
        job.save(ws / "jobs")
        tracker.record(name, parent=parent, params=1, accuracies=[0.9], model_dir=str(directory),
                       status="completed", job_id=job.id)

    tuned = Explorer.from_iteration(ws, "iter-001", criterion="l1")
    base = Explorer.from_iteration(ws, "baseline", criterion="l1")
    try:
        assert (tuned.epochs.value, tuned.lr.value, tuned.batch_size.value) == (2, 0.003, 32)
        assert tuned.hyperparameters() == {**recipe, "image_size": SIZE, "epochs": 2, "lr": 0.003,
                                           "batch_size": 32}  # no stale rule; the size its job trained at
        assert (base.epochs.value, base.lr.value, base.batch_size.value) == (1, 1e-3, 64)  # not the baseline's 6 x 0.01
        assert base.hyperparameters()["lr_schedule"] == "cosine"
        # a child of a pretrained baseline: its data recipe and size, not its weights (it loads a saved model)
        assert base.hyperparameters() == {**recipe, "normalize": "imagenet", "augment": True, "image_size": SIZE,
                                          "epochs": 1, "lr": 1e-3, "batch_size": 64}
        assert tuned.training_script() == script and base.training_script() == {"entry_point": None,
                                                                                 "source_dir": None}
    finally:
        tuned.close()
        base.close()


def test_tracker_rows_recorded_later_reach_the_scatter_on_refresh(captured, tmp_path):
    model, _, x, _ = captured
    ws, tracker = _tracked_workspace(tmp_path, model, x[:1])
    e = Explorer(model, example_inputs=x[:1], criterion="l1", workspace=ws)
    try:
        assert e.history_size == 2
        tracker.record("iter-003", parent="iter-001", params=1000, accuracies=[0.5], status="stopped")
        e.refresh()
        assert e.history_size == 3
        assert e.scatter.points.color[-1] == "stopped"
    finally:
        e.close()


@pytest.mark.slow
def test_queued_job_completes_and_reaches_the_scatter_without_a_refresh_call(captured, tmp_path):
    """A real local fine-tuning job (digits, tiny): the queue's on_change callback updates the panel."""
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", poll_interval=0.2,
                 train_args=dict(dataset="digits", image_size=SIZE, subset=64, val_subset=32, capture="compact"),
                 hyperparameters=dict(epochs=1, batch_size=32))
    try:
        assert e.history_size == 0
        landed = threading.Event()
        e.observe(lambda change: landed.set(), "history_size")
        e.fill_lowest(n=100, scheme="internal")
        e.queue_button.click()
        assert e.error == "" and e.last_job
        job = e.queue.wait(e.last_job, timeout=600)
        assert job.status == "completed", job.message
        assert landed.wait(60), "the finished job never reached the scatter"
        e.wait()
        row = e.jobs_panel.rows[job.id]
        assert "data-status='completed'" in row.head.value
        assert "epoch 1/1" in row.log_view.value  # the log tail the panel shows: the job's own lines,
        assert "RULE_JOB_STOP_SIGNAL_FILENAME" not in job.log_path.read_text()  # not smdebug's
        assert e.history_size == 1
        assert e.scatter.points.names.tolist() == [job.iteration]
        assert e.scatter.points.x.tolist() == [float(e.preview["params_after"])]
    finally:
        e.close()


def test_preview_latency_times_before_and_after_in_alternation(explorer, monkeypatch):
    import prune_explorer.widgets.explorer as explorer_module

    calls = []
    real = explorer_module.paired_latency_ms

    def paired(models, *args, **kwargs):
        calls.append([sum(p.numel() for p in m.parameters()) for m in models])
        return real(models, *args, **kwargs)

    monkeypatch.setattr(explorer_module, "paired_latency_ms", paired)
    explorer.set_counts({"layer3.0.conv1": 64})
    explorer.wait()
    (sizes,) = calls  # one paired measurement: the base model and the pruned one, timed in turn
    assert sizes[0] == explorer.preview["params_before"] and sizes[1] == explorer.preview["params_after"]
    assert explorer.preview["latency_ms_before"] > 0 and explorer.preview["latency_ms_after"] > 0


def test_apply_reserves_an_iteration_in_the_workspace_and_applying_again_replaces_it(captured, tmp_path):
    from prune_explorer.workspace import Workspace

    model, trial, x, _ = captured
    ws = Workspace(tmp_path / "ws")
    taken = ws.reserve_iteration()  # e.g. a `prune-explorer run` on the same workspace got there first
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=ws.root, tracker="mlflow")
    try:
        e.set_counts({"layer1.1.conv1": 5})
        e.apply()
        first = e.applied["iteration"]
        assert first != taken and first == "iter-002"
        e.set_counts({"layer1.1.conv1": 7})
        e.apply()
        assert e.applied["iteration"] == first and e.applied["filters_removed"] == 7
        assert store.load(ws.iteration_dir(first) / "pruned").layer1[1].conv1.out_channels == 57
        assert sorted(p.name for p in ws.iterations_dir.iterdir()) == [taken, first]
    finally:
        e.close()


def test_a_fine_tune_with_a_script_that_is_not_there_is_refused_in_the_panel(captured, tmp_path):
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", criterion="l1",
                 entry_point="train.py", source_dir=str(tmp_path / "nowhere"))
    try:
        e.fill_lowest(n=50, scheme="internal")
        e.queue_button.click()
        assert "source_dir" in e.error and "nowhere" in e.error and e.last_job is None
        assert e.queue.jobs() == []  # nothing queued
    finally:
        e.close()


@pytest.mark.slow
def test_the_panel_queues_the_users_own_script_and_the_history_names_it(captured, tmp_path):
    """examples/custom_training/train.py as the panel's fine-tuning job, on its own PNG digits."""
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_training"
    sys.path.insert(0, str(example))
    from make_digits import make_digits

    data = make_digits(tmp_path / "digits", per_class=10, size=SIZE)
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", criterion="taylor",
                 train_args=dict(data_dir=str(data), image_size=SIZE, measure_latency=False),
                 hyperparameters=dict(epochs=1, batch_size=32))
    try:
        e.entry_point.value, e.source_dir.value = "train.py", str(example)  # what a user types into the fields
        e.fill_lowest(n=100, scheme="internal")
        e.queue_button.click()
        assert e.error == "" and e.last_job
        job = e.queue.wait(e.last_job, timeout=600)
        assert (job.entry_point, job.source_dir) == ("train.py", str(example))
        assert job.status == "completed", job.message
        assert job.result["script"] == "train.py" and "[job] epoch 1/1" in job.log_tail(20)
        e.refresh()
        assert e.history.set_index("iteration").loc[job.iteration, "script"] == "train.py"
    finally:
        e.close()
