"""The Explorer panel without a browser: its traitlets, callbacks and the library calls behind them."""
from __future__ import annotations

import html
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
from prune_explorer.loop.cut import accuracy

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
    e = Explorer(model, trial=trial, example_inputs=x[:1], validation=(x, y), n_lowest=120, criterion="taylor")
    e.fill_mode = "filters"  # the mechanics below, whatever the default recipe (tests/test_recipe_defaults.py)
    yield e.wait()
    e.close()


def test_opens_on_a_trial_and_ranks_every_prunable_group(explorer):
    assert explorer.error == ""
    assert explorer.criterion == "taylor"
    assert set(explorer.table["criterion"]) == {"taylor"}
    assert list(explorer.table_editor.rows) == [g.name for g in explorer.graph.prunable()]
    colour = explorer.heatmap.matrix.normalized
    assert colour.shape == (len(explorer.graph.prunable()), max(g.size for g in explorer.graph.prunable()))
    assert np.isnan(colour).sum() == colour.size - len(explorer.table)
    canvas = explorer.heatmap.canvas
    assert canvas.layers == [g.name for g in explorer.graph.prunable()]  # rows are named, not numbered
    assert np.array_equal(np.frombuffer(canvas.matrix, np.float32).reshape(colour.shape), colour, equal_nan=True)


def test_lowest_n_control_builds_the_library_plan(explorer):
    explorer.fill_lowest(n=150, scheme="all")
    expected = PrunePlan.lowest(explorer.table, explorer.graph, n=150, scheme="all")
    assert explorer.plan().resolve(explorer.graph) == expected.resolve(explorer.graph)
    assert explorer.plan_summary == expected.summary()
    assert explorer.preview["filters_removed"] == 150
    assert _cut_cells(explorer) == 150

    explorer.fill_lowest(n=40, scheme="internal")
    internal = PrunePlan.lowest(explorer.table, explorer.graph, n=40, scheme="internal")
    assert explorer.plan().resolve(explorer.graph) == internal.resolve(explorer.graph)
    assert all(explorer.graph.group(layer).kind == "internal" for layer in explorer.counts)


def _cut_cells(explorer) -> int:
    return int(np.frombuffer(explorer.heatmap.canvas.cut, np.uint8).sum())


def test_moving_one_slider_updates_counts_plan_and_preview(explorer):
    canvas = explorer.table_editor.canvas
    canvas.set_state({"counts": {"layer2.0.conv1": 10}})  # what the browser sends when a row's slider moves
    assert explorer.counts == {"layer2.0.conv1": 10}
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
    explorer.finetune.apply_button.click()  # on the "cut" worker: the controls never wait for it
    explorer.wait()
    assert "cuts no filters" in explorer.error
    assert explorer.applied == {}


def test_apply_prunes_and_saves_the_smaller_model(captured, tmp_path):
    model, trial, x, y = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws")
    try:
        e.set_counts({"layer3.0.conv1": 100, "layer1.1.conv1": 5})
        e.finetune.apply_button.click()
        e.wait()
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


def test_normalisation_and_global_criterion_selectors_rerank_with_the_library(explorer):
    """The normalisation dropdown and the new criteria give exactly `rank()`'s table."""
    from prune_explorer.signals.ranking import rank

    t = explorer.table_editor
    assert t.normalization.value == "auto" and explorer.normalization == "auto"
    t.normalization.value = "none"
    explorer.wait()
    assert explorer.normalization == "none" and set(explorer.table["normalization"]) == {"none"}
    assert np.array_equal(explorer.table["normalized"], explorer.table["score"])
    t.criterion.value = "taylor_global"
    explorer.wait()
    t.normalization.value = "flops"
    explorer.wait()
    expected = rank(explorer.model, explorer.x, trial=explorer.trial, criterion="taylor_global",
                    graph=explorer.graph, normalize="flops")
    assert np.allclose(explorer.table["normalized"], expected["normalized"])
    assert set(explorer.table["criterion"]) == {"taylor_global"} and "(flops)" in explorer.status
    t.normalization.value = "auto"  # taylor_global's own: unnormalised, compared across layers
    explorer.wait()
    assert set(explorer.table["normalization"]) == {"none"}
    assert explorer.error == ""


def test_fill_by_macs_mode_cuts_to_the_fraction_within_one_filter(explorer):
    t = explorer.table_editor
    t.fill_mode.value = "macs"
    assert explorer.fill_mode == "macs" and t.keep_fraction.layout.display is None and t.n_lowest.layout.display == "none"
    assert t.fill.description == "fill to macs"
    t.keep_fraction.value = 0.6
    t.fill.click()
    before = explorer.costs.before.macs
    expected = PrunePlan.lowest(explorer.table, explorer.graph, scheme=explorer.scheme, costs=explorer.costs,
                                target_macs=0.6 * before)
    assert explorer.plan().resolve(explorer.graph) == expected.resolve(explorer.graph)
    one_filter = max(explorer.costs.channel_macs().values())
    assert 0.6 * before - one_filter < explorer.preview["macs_after"] <= 0.6 * before
    explorer.fill_lowest(keep_macs=0.01)  # out of reach for the internal scheme: an error, the plan kept
    assert "cannot be reached" in explorer.error and explorer.plan_summary == expected.summary()
    explorer.fill_lowest(n=30)
    assert t.fill_mode.value == "filters" and explorer.preview["filters_removed"] == 30


def test_fill_by_latency_measures_a_table_once_and_cuts_to_the_predicted_fraction(explorer):
    # every group may shrink: at 16x16 much of the time is per-call overhead no internal layer carries
    explorer.fill_lowest(keep_latency=0.95, scheme="all")
    explorer.wait()
    assert explorer.session.has_latency_table
    table = explorer.session.latency_table()
    assert "latency table measured" in explorer.status and explorer.error == ""
    expected = PrunePlan.lowest(explorer.table, explorer.graph, scheme="all", costs=explorer.costs,
                                latency=table, target_latency_ms=0.95 * table.predict(explorer.costs))
    assert explorer.plan().resolve(explorer.graph) == expected.resolve(explorer.graph) and len(expected) > 0
    budget = expected.budget
    assert budget["reached"] <= budget["target"] < budget["reached"] + budget["last_step"] + 1e-9
    explorer.fill_lowest(keep_latency=0.98)  # the same table: planned at once, no second measurement
    assert explorer.session.latency_table() is table
    assert explorer.plan_summary == PrunePlan.lowest(
        explorer.table, explorer.graph, scheme="all", costs=explorer.costs, latency=table,
        target_latency_ms=0.98 * table.predict(explorer.costs)).summary()


def test_scatter_axis_toggle_replots_by_macs_and_latency_with_each_axiss_frontier():
    from prune_explorer.widgets.scatter import HistoryScatter

    history = [{"iteration": "baseline", "status": "completed", "params": 100.0, "macs": 1000.0, "latency_ms": 9.0,
                "accuracy": 0.90},
               {"iteration": "iter-001", "status": "completed", "params": 50.0, "macs": 400.0, "latency_ms": 5.0,
                "accuracy": 0.89},
               {"iteration": "iter-002", "status": "completed", "params": 40.0, "macs": 700.0, "latency_ms": None,
                "accuracy": 0.80}]
    picked = []
    scatter = HistoryScatter(picked.append)
    scatter.show(history, "iter-001")
    canvas = scatter.canvas
    assert scatter.x == [100.0, 50.0, 40.0]
    assert [canvas.points[i]["x"] for i in canvas.frontier] == [40.0, 50.0, 100.0]
    scatter.axis.value = "macs"
    assert scatter.x == [1000.0, 400.0, 700.0] and canvas.x_label.startswith("MACs")
    assert [canvas.points[i]["x"] for i in canvas.frontier] == [400.0, 1000.0]  # iter-002 is dominated on MACs
    assert canvas.base == "iter-001"
    scatter.axis.value = "latency_ms"
    assert scatter.names == ["baseline", "iter-001"]  # no latency measured for iter-002
    assert canvas.x_label == "latency (ms)" and "data-axis='latency_ms'" in scatter.summary.value
    canvas.set_state({"picked": "iter-001"})  # what the front end sends on a dot click
    assert picked == ["iter-001"] and canvas.picked == ""


def test_sensitivity_curve_starts_at_the_unpruned_accuracy(explorer, captured):
    model, _, x, y = captured
    explorer.compute_sensitivity("layer2.1.conv1")
    explorer.wait()
    points = explorer.sensitivity["layer2.1.conv1"]
    assert points[0] == (0.0, accuracy(model, x, y))
    assert [p[0] for p in points] == sorted(p[0] for p in points) and points[-1][0] > 0.8
    assert explorer.table_editor.canvas.curves["layer2.1.conv1"] == [list(p) for p in points]


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
    e = Explorer.from_iteration(ws, "baseline").wait()
    try:
        history = tracker.history().dropna(subset=["accuracy"])
        assert e.history_size == 2
        assert e.scatter.x == history["params"].astype(float).tolist()
        assert e.scatter.y == history["accuracy"].tolist()
        assert e.scatter.names == ["baseline", "iter-001"]
        assert e.scatter.canvas.base == "baseline"

        e.set_counts({"layer4.0.conv1": 400})
        e.scatter.canvas.set_state({"picked": "iter-001"})
        e.wait()
        assert e.error == ""
        assert e.base_iteration == "iter-001"
        assert e.preview["params_before"] == int(history["params"].iloc[1])
        assert e.table_editor.rows["layer4.0.conv1"]["size"] == 312
        assert e.counts == {} and _cut_cells(e) == 0
        assert e.scatter.canvas.base == "iter-001"
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
        assert (tuned.finetune.epochs.value, tuned.finetune.lr.value, tuned.finetune.batch_size.value) == (2, 0.003, 32)
        assert tuned.hyperparameters() == {**recipe, "image_size": SIZE, "epochs": 2, "lr": 0.003,
                                           "batch_size": 32}  # no stale rule; the size its job trained at
        assert (base.finetune.epochs.value, base.finetune.lr.value, base.finetune.batch_size.value) == (1, 1e-3, 64)  # not the baseline's 6 x 0.01
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
    e = Explorer(model, example_inputs=x[:1], criterion="l1", workspace=ws).wait()
    try:
        assert e.history_size == 2
        tracker.record("iter-003", parent="iter-001", params=1000, accuracies=[0.5], status="stopped")
        e.refresh()
        assert e.history_size == 3
        assert e.scatter.canvas.points[-1]["status"] == "stopped"
    finally:
        e.close()


@pytest.mark.slow
def test_queued_job_completes_and_reaches_the_scatter_without_a_refresh_call(captured, tmp_path):
    """A real local fine-tuning job (digits, tiny): the queue's on_change callback updates the panel."""
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", poll_interval=0.2,
                 train_args=dict(dataset="digits", image_size=SIZE, subset=64, val_subset=32, capture="compact"),
                 hyperparameters=dict(epochs=1, batch_size=32)).wait()
    try:
        assert e.history_size == 0
        landed = threading.Event()
        e.observe(lambda change: landed.set(), "history_size")
        e.fill_lowest(n=100, scheme="internal")
        e.finetune.queue_button.click()
        e.wait()
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
        assert e.scatter.names == [job.iteration]
        assert e.scatter.x == [float(e.preview["params_after"])]
    finally:
        e.close()


def test_preview_latency_times_before_and_after_in_alternation(explorer, monkeypatch):
    import prune_explorer.model.measure as measure

    calls = []
    real = measure.paired_latency_ms

    def paired(models, *args, **kwargs):
        calls.append([sum(p.numel() for p in m.parameters()) for m in models])
        return real(models, *args, **kwargs)

    monkeypatch.setattr(measure, "paired_latency_ms", paired)
    explorer.set_counts({"layer3.0.conv1": 64})
    explorer.wait()
    assert len(calls) == 7  # seven rounds, each the base model and the pruned one timed in turn
    assert all(sizes == [explorer.preview["params_before"], explorer.preview["params_after"]] for sizes in calls)
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
                 entry_point="train.py", source_dir=str(tmp_path / "nowhere")).wait()
    try:
        e.fill_lowest(n=50, scheme="internal")
        e.finetune.queue_button.click()
        e.wait()
        assert "source_dir" in e.error and "nowhere" in e.error and e.last_job is None
        assert e.queue.jobs() == []  # nothing queued
    finally:
        e.close()


# --- heatmap: named rows, per-cell data for the hover, cut lines, row click → selection -----------------------
def _cells(explorer):
    canvas, m = explorer.heatmap.canvas, explorer.heatmap.matrix
    shape = m.normalized.shape
    return {name: np.frombuffer(getattr(canvas, name), dtype).reshape(shape)
            for name, dtype in (("filters", np.int32), ("scores", np.float32), ("ranks", np.int32), ("cut", np.uint8))}


def test_heatmap_cells_carry_the_rank_table_for_the_hover_in_both_orders(explorer):
    layer = "layer2.1.conv1"
    rows = explorer.table[explorer.table["layer"] == layer].sort_values(["normalized", "filter"], kind="stable")
    r = explorer.heatmap.canvas.layers.index(layer)
    for order in ("sorted", "natural"):
        explorer.heatmap.order.value = order
        cells = _cells(explorer)
        width = explorer.heatmap.canvas.widths[r]
        assert width == len(rows) == explorer.graph.group(layer).size
        filters = cells["filters"][r, :width]
        expected = rows["filter"].to_numpy() if order == "sorted" else np.arange(width)
        assert filters.tolist() == expected.tolist()
        score_of = dict(zip(rows["filter"], rows["score"]))
        assert np.allclose(cells["scores"][r, :width], [score_of[f] for f in filters], rtol=1e-6)
        rank_of = {f: i + 1 for i, f in enumerate(rows["filter"])}  # 1 = lowest normalised rank = cut first
        assert cells["ranks"][r, :width].tolist() == [rank_of[f] for f in filters]
        assert (cells["filters"][r, width:] == -1).all()


def test_heatmap_cut_mask_and_cut_lines_follow_the_plan(explorer):
    explorer.set_counts({"layer3.0.conv1": 30, "layer1.1.conv1": 4})
    cells, canvas = _cells(explorer), explorer.heatmap.canvas
    for layer, indices in explorer.plan_channels.items():
        r = canvas.layers.index(layer)
        assert sorted(cells["filters"][r][cells["cut"][r] == 1].tolist()) == sorted(indices)
        assert canvas.cutline[r] == len(indices)  # the lowest-ranked ones: the line sits after them
    untouched = canvas.layers.index("layer2.0.conv1")
    assert canvas.cutline[untouched] == 0 and not cells["cut"][untouched].any()
    explorer.fill_lowest(n=200, scheme="all")  # a global plan cuts each layer's lowest too
    for layer, indices in explorer.plan_channels.items():
        assert canvas.cutline[canvas.layers.index(layer)] == len(indices)


def test_clicking_a_heatmap_row_selects_that_layer_in_the_table(explorer):
    explorer.heatmap.canvas.set_state({"selected": "layer3.1.conv1"})  # what the front end sends on a click
    assert explorer.selected_layer == "layer3.1.conv1"
    assert explorer.table_editor.selected == "layer3.1.conv1"
    assert explorer.table_editor.canvas.selected == "layer3.1.conv1"  # the row the browser highlights
    assert explorer.coupling["layer"] == "layer3.1.conv1"
    explorer.table_editor.canvas.set_state({"selected": "layer1.0.conv1"})  # and the table's own name button
    assert explorer.selected_layer == explorer.heatmap.canvas.selected == "layer1.0.conv1"


# --- coupling view: members, roles and shapes after, before Apply ---------------------------------------------------
def test_coupling_view_lists_the_group_members_and_their_shapes_after_the_plan(captured, tmp_path):
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", tracker="mlflow").wait()
    try:
        e.select_layer("layer1.0.conv1")
        roles = {m["module"]: m["roles"] for m in e.coupling["members"]}
        assert roles == {"layer1.0.conv1": ["producer"], "layer1.0.bn1": ["norm"], "layer1.0.conv2": ["consumer"]}
        e.set_counts({"layer1.0.conv1": 10})
        e.wait()  # the preview's pruned model gives the shapes after
        after = {m["module"]: m["after"] for m in e.coupling["members"]}
        assert after == {"layer1.0.conv1": {"weight": [54, 64, 3, 3]}, "layer1.0.bn1": {"weight": [54], "bias": [54]},
                         "layer1.0.conv2": {"weight": [64, 54, 3, 3]}}
        assert "54×64×3×3" in e.coupling_view.table.value and "cutting" in e.coupling_view.title.value

        e.select_layer("layer2.0.conv2")  # a residual group: every conv writing into the stream is a partner
        coupling = e.coupling
        assert coupling["kind"] == "residual"
        by_role = {}
        for m in coupling["members"]:
            by_role.setdefault(m["roles"][0], []).append(m["module"])
        assert by_role["producer"] == ["layer2.0.conv2"]
        assert set(by_role["residual partner"]) == {"layer2.0.downsample.0", "layer2.1.conv2"}
        assert {"layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"} <= set(by_role["consumer"])
        e.set_counts({"layer2.0.conv2": 8})
        e.wait()
        e.apply()  # what the view said is what Apply did
        saved = store.load(e.applied["model_dir"])
        modules = dict(saved.named_modules())
        for m in e.coupling["members"]:
            assert {k: list(v.shape) for k, v in modules[m["module"]].named_parameters(recurse=False)} == m["after"]
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
                 hyperparameters=dict(epochs=1, batch_size=32)).wait()
    try:
        e.finetune.entry_point.value, e.finetune.source_dir.value = "train.py", str(example)  # what a user types into the fields
        e.fill_lowest(n=100, scheme="internal")
        e.finetune.queue_button.click()
        e.wait()
        assert e.error == "" and e.last_job
        job = e.queue.wait(e.last_job, timeout=600)
        assert (job.entry_point, job.source_dir) == ("train.py", str(example))
        assert job.status == "completed", job.message
        assert job.result["script"] == "train.py" and "[job] epoch 1/1" in job.log_tail(20)
        e.refresh()
        assert e.history.set_index("iteration").loc[job.iteration, "script"] == "train.py"
    finally:
        e.close()


def test_the_teacher_control_distils_the_queued_fine_tune_from_the_baseline(captured, tmp_path):
    """Issue 21: the panel's teacher dropdown and its `distill` trait; the queued job gets the teacher's folder."""
    from prune_explorer.default_recipe import DEFAULT_RECIPE

    model, trial, x, _ = captured
    ws = tmp_path / "ws"
    store.save(model, ws / "iterations" / "baseline")
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=ws, base_iteration="baseline",
                 train_args=dict(dataset="digits", image_size=SIZE, subset=64, val_subset=32),
                 hyperparameters=dict(epochs=1, batch_size=32)).wait()
    try:
        assert e.distill == e.finetune.teacher.value == (DEFAULT_RECIPE["distill"] or "none")
        e.finetune.teacher.value = "baseline"  # what a user picks
        assert e.distill == "baseline" and e.hyperparameters()["distill"] == "baseline"
        e.fill_lowest(n=100, scheme="internal")
        e.finetune.queue_button.click()
        e.wait()  # Queue runs on the panel's "cut" worker
        assert e.error == "" and e.last_job
        job = e.queue.get(e.last_job)
        assert job.hyperparameters["distill"] == "baseline"
        assert job.hyperparameters["teacher"] == str(ws / "iterations" / "baseline")
        e.queue.cancel(job.id)
        e.distill = "none"  # the trait drives the control, and a plain fine-tune sends no teacher
        assert e.finetune.teacher.value == "none" and "distill" not in e.hyperparameters()
    finally:
        e.close()


# --- lineage tree and compare ------------------------------------------------------------------------------------
def test_lineage_tree_shows_branches_marks_the_base_and_a_click_rebases(captured, tmp_path):
    from prune_explorer.widgets.lineage import tree

    model, _, x, _ = captured
    ws, tracker = _tracked_workspace(tmp_path, model, x[:1])  # baseline → iter-001 → iter-002 (failed)
    tracker.record("iter-004", parent="baseline", params=5, accuracies=[0.7], status="completed")
    assert tree(tracker.history()) == [("baseline", 0, ""), ("iter-001", 1, "├─ "), ("iter-002", 2, "│  └─ "),
                                       ("iter-004", 1, "└─ ")]
    e = Explorer.from_iteration(ws, "baseline").wait()
    try:
        nodes = e.lineage.nodes
        assert list(nodes) == ["baseline", "iter-001", "iter-002", "iter-004"]
        assert "pe-lineage-base" in nodes["baseline"]._dom_classes and "● baseline" in nodes["baseline"].description
        nodes["iter-001"].click()
        e.wait()
        assert e.base_iteration == "iter-001" and e.error == ""
        assert "pe-lineage-base" in e.lineage.nodes["iter-001"]._dom_classes
        assert "pe-lineage-base" not in e.lineage.nodes["baseline"]._dom_classes
    finally:
        e.close()


def test_compare_two_iterations_gives_per_layer_widths_params_macs_and_accuracy(captured, tmp_path):
    model, _, x, _ = captured
    ws, tracker = _tracked_workspace(tmp_path, model, x[:1])
    e = Explorer.from_iteration(ws, "baseline").wait()
    try:
        e.lineage.compare_a.value, e.lineage.compare_b.value = "baseline", "iter-001"
        e.lineage.compare_button.click()
        result = e.compared
        widths = {row["layer"]: (row["a"], row["b"]) for row in result["layers"]}
        assert widths["layer4.0.conv1"] == (512, 312) and widths["layer4.0.bn1"] == (512, 312)
        assert widths["layer4.0.conv2"] == (512, 512)
        assert result["changed"] == 2
        history = tracker.history().set_index("iteration")
        assert result["totals"]["params"] == {"a": history.loc["baseline", "params"], "b": history.loc["iter-001", "params"]}
        assert result["totals"]["accuracy"] == {"a": 0.9, "b": 0.85}
        assert "512" in e.lineage.result.value and "312" in e.lineage.result.value
        e.lineage.compare_b.value = "iter-002"  # tracked, but its job failed: no model to read
        e.lineage.compare_button.click()
        assert e.compared == {} and "iter-002" in e.lineage.result.value and "no saved model" in e.lineage.result.value
    finally:
        e.close()


# --- jobs: progress from the job's own reports, a clean log tail, the run it was recorded as ----------------------
def test_job_progress_and_log_tail_come_from_the_job_contract_lines(tmp_path, capsys, monkeypatch):
    from prune_explorer import job as contract
    from prune_explorer.jobs import Job
    from prune_explorer.widgets.jobs_panel import JobRow, clean_tail, epochs_from_log, progress

    monkeypatch.setattr(contract, "LOG_EVERY_S", 0.0)
    run = contract.JobContext(contract.JobSpec(out_dir=str(tmp_path), epochs=3), log_prefix="train")
    run.report(0.5, model=nn.Linear(2, 2), train_loss=1.25)
    list(run._logged(range(4), "epoch 2/3"))  # JobContext.progress's lines in a log
    printed = capsys.readouterr().out
    noise = ("[2026-12-01 10:55:04.895 vm:16784 INFO utils.py:28] RULE_JOB_STOP_SIGNAL_FILENAME: None\n"
             "[smdebug INFO hook.py:12] saving\n"
             "/x/torch/nn/modules/module.py:1: UserWarning: something internal\n  warnings.warn(msg)\n")
    log = noise + printed
    (epoch,) = epochs_from_log(log)
    assert epoch["epoch"] == 1 and epoch["epochs"] == 3 and epoch["val_accuracy"] == 0.5 and epoch["train_loss"] == 1.25
    tail = clean_tail(log)
    assert tail.splitlines() == [line for line in printed.splitlines() if "batches" not in line]
    assert "RULE_JOB_STOP" not in tail and "Warning" not in tail and "smdebug" not in tail

    job = Job(id="job-1", backend="local", model="m", out_dir=str(tmp_path), iteration="iter-001", status="running",
              hyperparameters={"epochs": 3})
    job.log_path.write_text(log)
    p = progress(job, log)
    assert (p["epoch"], p["epochs"], p["val_accuracy"]) == (1, 3, 0.5)
    assert p["fraction"] == pytest.approx((1 + 4 / 4) / 3)  # epoch 2's batches counted
    tracker = MlflowTracker(tmp_path / "ws")
    run_id = tracker.record("iter-001", params=1, accuracies=[0.5], status="completed")
    job.status, job.result = "completed", {"epochs": [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]}
    row = JobRow(job.id, lambda _: None)
    row.show(job, tracker, tracker.run_id("iter-001"))
    assert row.progress == {"epoch": 2, "epochs": 3, "fraction": 1.0, "val_accuracy": 0.6}
    assert "data-status='completed'" in row.head.value and "#2ca02c" in row.head.value
    assert f"MLflow run <code class='pe-job-run'>{run_id}</code>" in row.record.value
    assert "RULE_JOB_STOP" not in row.log_view.value


# --- opening fast: nothing heavy before it is used ------------------------------------------------------------------
def test_the_panel_modules_import_no_tracker_cloud_or_trial_library_until_used(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "heavy = ('torch', 'mlflow', 'sagemaker', 'boto3', 'smdebug', 'pandas', 'bqplot')\n"
        "import prune_explorer.widgets, prune_explorer.widgets.setup, prune_explorer.widgets.opening\n"
        "from prune_explorer.widgets import Explorer, open_panel\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import torch\n"
        "from prune_explorer.model.zoo import build_model\n"
        "e = Explorer(build_model('resnet18', num_classes=10), criterion='l1', example_inputs=torch.zeros(1, 3, 16, 16)).wait()\n"
        "print(sorted(m for m in heavy if m in sys.modules and m not in ('pandas',)))\n"
        "e.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.splitlines()[-2:] == ["[]", "['torch']"]


FIRST_VIEW = """
import json, sys
from prune_explorer.widgets import open_panel
panel = open_panel(sys.argv[1], "latest", criterion="l1", load_after_s=None)  # loads at wait(): no browser here
drawn = {"torch": "torch" in sys.modules, "ready": panel.ready, "rows": len(panel.table_editor.rows),
         "heatmap": len(panel.heatmap.canvas.layers), "history": panel.scatter.names,
         "lineage": list(panel.lineage.nodes), "apply_disabled": panel.finetune.apply_button.disabled}
panel.wait()
ready = {"torch": "torch" in sys.modules, "ready": panel.ready, "apply_disabled": panel.finetune.apply_button.disabled,
         "base": panel.base_iteration, "error": panel.error, "first_view": panel.first_view}
panel.close()
print(json.dumps([drawn, ready]))
"""


def test_open_panel_draws_the_first_view_before_torch_then_enables_apply(captured, tmp_path):
    """The first open writes the iteration's view and the history view; the next open draws heatmap,
    table, scatter and lineage from them with torch not imported, then loads the model and enables Apply."""
    import subprocess
    import sys

    from prune_explorer.widgets import open_panel
    from prune_explorer.workspace import Workspace, view

    model, _, x, _ = captured
    ws, _ = _tracked_workspace(tmp_path, model, x[:1])
    checked = []
    first = open_panel(ws, "latest", check=lambda root: checked.append(root), criterion="l1", load_after_s=None)
    try:
        assert first.first_view == {"load_started_by": "no first view", "imported": first.first_view["imported"]}
        first.wait()
        assert first.ready and not first.finetune.apply_button.disabled and first.error == ""
        assert first.base_iteration == "baseline" and checked == [ws.resolve()] and first.history_size == 2
        written = view.read_view(Workspace(ws), "baseline", "l1", None)
        assert written is not None and written["ranks"] == first.session.view()["ranks"]
        assert [r["iteration"] for r in view.read_history(Workspace(ws))] == ["baseline", "iter-001", "iter-002"]
    finally:
        first.close()
    out = subprocess.run([sys.executable, "-c", FIRST_VIEW, str(ws)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    drawn, ready = json.loads(out.stdout.splitlines()[-1])
    groups = len(written["groups"])
    assert drawn == {"torch": False, "ready": False, "rows": groups, "heatmap": groups,
                     "history": ["baseline", "iter-001"], "lineage": ["baseline", "iter-001", "iter-002"],
                     "apply_disabled": True}
    assert ready == {"torch": True, "ready": True, "apply_disabled": False, "base": "baseline", "error": "",
                     "first_view": {"load_started_by": "wait", "imported": []}}


RECORDED_VIEW = """
import json, sys
from prune_explorer.widgets import open_panel
panel = open_panel(sys.argv[1], "latest", load_after_s=None)  # no criterion given: the lineage's recorded one
drawn = {"torch": "torch" in sys.modules, "criterion": panel.criterion, "shown": panel.shown_view is not None,
         "rows": len(panel.table_editor.rows)}
panel.close()
print(json.dumps(drawn))
"""


def test_open_panel_ranks_by_the_recorded_criterion_so_the_loops_first_view_is_drawn(captured, tmp_path):
    """A workspace the loop made with another criterion than the default recipe's (the demo ranks by taylor)
    has its first view ranked by that criterion: the panel opened with no criterion draws it before torch."""
    import subprocess
    import sys

    from prune_explorer.loop.recorded_recipe import record_baseline
    from prune_explorer.loop.run import LoopConfig
    from prune_explorer.workspace import Workspace, view

    model, _, x, _ = captured
    ws, _ = _tracked_workspace(tmp_path, model, x[:1])
    record_baseline(Workspace(ws), LoopConfig(workspace=str(ws), criterion="l1"))  # as a run ranking by l1 records
    e = Explorer.from_iteration(ws, "baseline").wait()  # no criterion either: the recorded l1, and its view
    assert e.criterion == "l1" and set(e.table["criterion"]) == {"l1"}
    e.close()
    written = view.read_view(Workspace(ws), "baseline", "l1", None)
    assert written is not None
    out = subprocess.run([sys.executable, "-c", RECORDED_VIEW, str(ws)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"torch": False, "criterion": "l1", "shown": True,
                                                        "rows": len(written["groups"])}


def test_a_stale_view_is_not_drawn_and_a_missing_iteration_is_an_error_in_the_panel(captured, tmp_path):
    from prune_explorer.widgets import open_panel
    from prune_explorer.workspace import Workspace, view

    model, _, x, _ = captured
    ws, _ = _tracked_workspace(tmp_path, model, x[:1])
    space = Workspace(ws)
    e = Explorer.from_iteration(ws, "baseline", criterion="l1").wait()
    e.close()
    assert view.read_view(space, "baseline", "l1", None) is not None
    assert view.read_view(space, "baseline", "taylor", None) is None  # ranked by another criterion
    store.save(model, space.iteration_dir("baseline"))  # the model changed since: the view describes the old one
    assert view.read_view(space, "baseline", "l1", None) is None
    missing = open_panel(ws, "iter-009")
    try:
        with pytest.raises(RuntimeError, match="iter-009"):
            missing.wait()
        assert "iter-009" in missing.error_line.value and not missing.ready
    finally:
        missing.close()


def test_the_panel_plans_layer_by_layer_exactly_as_from_counts_plans_the_model(explorer):
    rng = np.random.default_rng(0)
    groups = explorer.graph.prunable()
    for _ in range(5):
        counts = {g.name: int(rng.integers(0, g.size)) for g in groups if rng.random() < 0.6}
        explorer.set_counts(counts)
        expected = PrunePlan.from_counts(explorer.table, explorer.graph, counts)
        assert explorer.plan().resolve(explorer.graph) == expected.resolve(explorer.graph)
        assert explorer.plan_summary == expected.summary()


def test_export_button_writes_the_applied_model_into_the_workspace_and_it_runs_in_onnxruntime(captured, tmp_path):
    import onnxruntime as ort

    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws")
    try:
        e.set_counts({"layer3.0.conv1": 100})
        e.apply()
        e.exporter.format.value = "onnx"
        e.exporter.button.click()
        # shown at once (the export runs in the background), named as not fine-tuned: never taken for the
        # fine-tuned iter-001's exports/iter-001.onnx
        assert "exporting iter-001-pruned as onnx" in e.exporter.line.value
        e.wait(600)
        assert e.error == ""
        path = tmp_path / "ws" / "exports" / "iter-001-pruned.onnx"
        assert path.is_file() and e.exported["path"] == str(path) and e.exported["iteration"] == "iter-001"
        assert f"data-path='{path}'" in e.exporter.line.value
        assert sorted(p.name for p in path.parent.iterdir()) == ["iter-001-pruned.onnx"], "a temp file was left behind"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch = x[:3]
        (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        with torch.no_grad():
            pruned, base = e.pruned_model(batch).numpy(), model(batch).numpy()
        assert np.abs(out - pruned).max() <= 1e-4 * max(1.0, np.abs(pruned).max())  # the applied model, any batch
        assert np.abs(out - base).max() > 1e-3  # not the unpruned one
    finally:
        e.close()


def test_export_without_an_applied_model_ships_the_base_and_failures_name_their_cause(captured, tmp_path):
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", base_iteration="baseline")
    try:
        with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of onnx, pt2"):
            e.export("tflite")
        with pytest.raises(ValueError, match=r"'\.\./elsewhere' is not an iteration name"):
            e.workspace.export_path("../elsewhere", "onnx")
        (tmp_path / "ws" / "exports" / "baseline.onnx").mkdir(parents=True)  # in the way of the file
        e.exporter.button.click()
        e.wait(120)
        assert e.error.startswith("export: ") and "baseline.onnx: it is a directory" in e.error
        assert "export of baseline failed" in e.exporter.line.value and e.exported == {}

        e.exporter.format.value = "pt2"
        e.exporter.button.click()
        e.wait(600)
        assert e.error == ""
        path = tmp_path / "ws" / "exports" / "baseline.pt2"
        assert e.exported["path"] == str(path) and e.exported["format"] == "pt2"
        program = torch.export.load(str(path))
        with torch.no_grad():
            assert torch.allclose(program.module()(x[:2]), model(x[:2]), atol=1e-4)
    finally:
        e.close()


def test_preview_times_onnx_runtime_on_the_latency_worker_once_per_plan(captured, monkeypatch):
    import prune_explorer.model.export as export_module

    timed, exported = [], []
    real_latency, real_export = export_module.onnxruntime_latency_ms, export_module.export_model

    def ort_latency(models, *args, **kwargs):
        timed.append([m if isinstance(m, nn.Module) else str(m) for m in models])
        return real_latency(models, *args, **kwargs)

    def export(model, path, **kwargs):
        exported.append(path)
        return real_export(model, path, **kwargs)

    monkeypatch.setattr(export_module, "onnxruntime_latency_ms", ort_latency)
    monkeypatch.setattr(export_module, "export_model", export)
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], onnxruntime_latency=True)
    try:
        e.wait(120)
        assert "ort_latency_ms_before" not in e.preview and timed == []  # nothing timed before a plan
        e.set_counts({"layer3.0.conv1": 128})
        assert e.preview["ort_latency_ms_after"] is None  # the slider path only marks it pending
        assert "ONNX Runtime CPU" in e.preview_box.table.value
        e.wait(600)
        assert len(timed) == 1 and len(exported) == 1  # the base file once; the pruned module in memory
        (base_file, pruned), = timed
        assert base_file == str(exported[0]) and pruned is e.planner.previewed[1]
        first = (e.preview["ort_latency_ms_before"], e.preview["ort_latency_ms_after"])
        assert all(ms > 0 for ms in first)

        e.set_counts({"layer3.0.conv1": 64})
        e.wait(600)
        assert len(timed) == 2 and len(exported) == 1 and timed[1][0] == base_file  # the base export is reused
        e.set_counts({"layer3.0.conv1": 128})  # back to the first plan: its numbers at once, from the cache
        assert (e.preview["ort_latency_ms_before"], e.preview["ort_latency_ms_after"]) == first
        e.wait(600)
        assert len(timed) == 2
        e.set_counts({})
        assert e.preview["ort_latency_ms_after"] == e.preview["ort_latency_ms_before"]
    finally:
        e.close()
    assert not exported[0].exists()  # the panel's temp folder goes with it


def test_a_model_for_onnxruntime_keeps_orts_channel_block_in_every_plan(captured):
    """Issue 21: "ships to onnxruntime" (the `latency_runtime` trait) rounds every cut to ORT's block; the
    sliders and the fill keep each touched group at a multiple of it; back to pytorch, any width."""
    from prune_explorer.model.runtimes import onnxruntime_block_size

    model, trial, x, _ = captured
    block = onnxruntime_block_size()
    e = Explorer(model, trial=trial, example_inputs=x[:1], criterion="taylor")
    try:
        e.wait(120)
        assert (e.latency_runtime, e.round_to) == ("pytorch", 0)  # PyTorch eager: any width
        e.set_counts({"layer3.0.conv1": 100})
        assert len(e.plan_channels["layer3.0.conv1"]) == 100
        e.finetune.runtime.value = "onnxruntime"  # what a user picks
        assert e.latency_runtime == "onnxruntime" and e.round_to == block
        kept = 256 - len(e.plan_channels["layer3.0.conv1"])  # the same count, rounded anew
        assert kept % block == 0 and abs(kept - 156) <= block // 2
        e.fill_lowest(n=300, scheme="internal")
        widths = {g.name: g.size for g in e.graph.prunable("internal")}
        assert e.plan_channels and all((widths[layer] - len(ix)) % block == 0 for layer, ix in e.plan_channels.items())
        e.latency_runtime = "pytorch"
        assert e.finetune.runtime.value == "pytorch" and e.round_to == 0
    finally:
        e.close()


def test_apply_reuses_the_previews_surgery_only_for_the_same_plan(captured, tmp_path):
    model, trial, x, _ = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", criterion="l1")
    try:
        e.set_counts({"layer2.0.conv1": 40})
        e.wait()
        previewed, by_l1 = e.planner.previewed[1], dict(e.plan_channels)
        assert e.apply() is previewed  # no second surgery (the model lock may be busy with an export)
        e.table_editor.criterion.value = "l2"  # same counts, other ranks: another plan
        e.wait()
        assert e.counts == {"layer2.0.conv1": 40} and e.plan_channels != by_l1
        fresh = e.apply()
        assert fresh is not previewed
        expected = prune(model, e.plan(), x[:1], graph=e.graph)
        with torch.no_grad():
            assert torch.equal(fresh(x), expected(x))
    finally:
        e.close()


def test_the_panels_fill_cuts_the_sessions_plan_and_the_loops_for_each_target(captured, tmp_path):
    """Filters, MACs and latency: the panel's fill, the session's plan_for and the loop's step plan the
    same channels from the same iteration (the loop stops at a floor no cut reaches: nothing queued)."""
    import shutil

    from prune_explorer.loop.step import StepTarget, latency_table, prune_step
    from prune_explorer.workspace import Iteration, Workspace

    model, trial, x, _ = captured
    space = Workspace(tmp_path / "ws")
    directory = space.iteration_dir("baseline")
    store.save(model, directory)
    shutil.copytree(trial, directory / "trial")
    (directory / "metrics.json").write_text(json.dumps({"status": "completed", "input_shape": list(x.shape[1:])}))
    e = Explorer.from_iteration(space.root, "baseline", criterion="taylor").wait()  # the loop step ranks by it below
    try:
        for fill, target, step in (
                ({"n": 150}, {"filters": 150}, {"per_iteration": 150}),
                ({"keep_macs": 0.6}, {"macs": 0.6}, {"target": StepTarget("macs", fraction=0.6)}),
                ({"keep_latency": 0.95}, {"latency": 0.95},
                 {"target": StepTarget("latency_ms", fraction=0.95), "latency": latency_table(space)})):
            e.fill_lowest(scheme="all", **fill)
            e.wait()
            assert e.error == "", e.error
            with space.queue(tracker=False) as queue:
                done = prune_step(space, queue, Iteration("baseline", directory, 0.5), criterion="taylor",
                                        scheme="all", hyperparameters={}, min_params=10 ** 12,
                                        **{"per_iteration": 1, **step})
            assert done.job is None and len(done.plan) > 0
            expected = done.plan.resolve(e.graph)
            assert e.plan().resolve(e.graph) == expected == e.session.plan_for(scheme="all", **target).resolve(e.graph)
    finally:
        e.close()


def test_tick_labels_never_repeat_and_stay_in_range_over_many_spans():
    from prune_explorer.widgets.scatter import ticks

    assert [label for _, label in ticks(9.4e6, 11.2e6)] == ["9.5M", "10.0M", "10.5M", "11.0M"]
    assert [label for _, label in ticks(0.42, 0.935, "%")] == ["50%", "60%", "70%", "80%", "90%"]
    assert [label for _, label in ticks(0.91, 0.935, "%")] == ["91.0%", "91.5%", "92.0%", "92.5%", "93.0%", "93.5%"]
    assert [label for _, label in ticks(6.5e5, 1.2e7, log=True)] == ["1M", "2M", "5M", "10M"]
    rng = np.random.default_rng(0)
    for _ in range(2000):
        unit = ["", "%", "ms"][rng.integers(3)]
        lo = float(10 ** rng.uniform(-3, 9)) if unit != "%" else float(rng.uniform(0, 1))
        hi = lo * float(1 + 10 ** rng.uniform(-4, 2)) if unit != "%" else min(1.0, lo + float(10 ** rng.uniform(-4, 0)))
        log = unit != "%" and bool(rng.integers(2))
        found = ticks(lo, hi, unit, log=log)
        labels = [label for _, label in found]
        assert found and len(set(labels)) == len(labels), (lo, hi, unit, log, labels)
        assert all(lo - 1e-9 * abs(lo) <= v <= hi + 1e-9 * abs(hi) for v, _ in found), (lo, hi, found)


def test_apply_shows_the_accuracy_right_after_the_cut_in_the_preview_and_a_mark_on_the_scatter(captured, tmp_path):
    model, trial, x, y = captured
    e = Explorer(model, trial=trial, example_inputs=x[:1], workspace=tmp_path / "ws", validation=(x, y)).wait()
    try:
        e.set_counts({"layer3.0.conv1": 200, "layer4.1.conv1": 400})
        e.finetune.apply_button.click()
        e.wait()
        applied = e.applied
        saved = store.load(applied["model_dir"])
        assert applied["cut_accuracy"] == accuracy(saved, x, y) and applied["cut_examples"] == len(y)
        assert f"data-value='{applied['cut_accuracy']}'" in e.preview_box.changes.value
        mark = {p["iteration"]: p for p in e.scatter.canvas.points}[applied["iteration"]]
        assert mark["cut"] == applied["cut_accuracy"] and mark["y"] is None and mark["status"] == "applied"
        assert mark["x"] == float(applied["params_after"]) and e.history_size == 0  # not fine-tuned yet
    finally:
        e.close()


class _WithAttention(nn.Module):
    """A prunable conv pair, then attention: its out_proj is in no channel group (the trace takes
    nn.MultiheadAttention as one call), and the groups around it are not prunable."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)

    def forward(self, x):
        t = self.conv2(torch.relu(self.conv1(x))).flatten(2).transpose(1, 2)
        a, _ = self.attn(t, t, t)
        return self.head(a.mean(1))


def test_the_not_prunable_list_names_each_group_and_each_layer_in_no_group_with_its_reason():
    model = _WithAttention().eval()
    e = Explorer(model, example_inputs=torch.zeros(1, 3, 6, 6), criterion="l1").wait()
    try:
        graph = e.graph
        assert list(e.table_editor.rows) == ["conv1"] and graph.unassigned == {"attn.out_proj": graph.unassigned["attn.out_proj"]}
        shown = e.not_prunable
        blocked = [g for g in graph.groups if not g.prunable]
        assert shown.toggle.description == f"{len(blocked)} groups not prunable, 1 conv/linear layer in no group"
        assert shown.body.value == ""  # folded until asked
        shown.toggle.value = True
        for group in blocked:
            assert f"<code>{group.name}</code>" in shown.body.value and html.escape(group.reason) in shown.body.value
        assert "<code>attn.out_proj</code>" in shown.body.value
        assert html.escape(graph.unassigned["attn.out_proj"]) in shown.body.value
    finally:
        e.close()
