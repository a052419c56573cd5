"""The pruning session without widgets: the plan for a filter count, a MACs target and a latency
target is the loop step's plan on the same iteration; Apply, the accuracy right after the cut, Export
and the first view are session calls a script makes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from prune_explorer.default_recipe import DEFAULT_RECIPE
from prune_explorer.loop import LoopConfig, recorded_recipe
from prune_explorer.model import store
from prune_explorer.model.measure import count
from prune_explorer.model.zoo import build_model
from prune_explorer.session import PruningSession
from prune_explorer.loop.cut import accuracy
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.loop.step import StepTarget, latency_table, prune_step
from prune_explorer.workspace import Iteration, Workspace, view

SIZE = 16
FLOOR = 10 ** 12  # a parameter floor no cut reaches: the loop's step plans, then stops before saving or queueing


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A workspace whose baseline is a resnet18 with a real compact trial (two training steps, 16 px)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (8,), generator=g)
    root = tmp_path_factory.mktemp("session") / "ws"
    directory = root / "iterations" / "baseline"
    with CaptureHook(model, directory / "trial", mode="compact", save_every=1, example_inputs=x[:1]) as hook:
        for _ in range(2):
            hook.step()
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
    store.save(model.eval(), directory)
    (directory / "metrics.json").write_text(json.dumps({"status": "completed", "input_shape": [3, SIZE, SIZE],
                                                        "best_accuracy": 0.5}))
    return Workspace(root), x, y


@pytest.fixture(scope="module")
def session(space):
    workspace, x, y = space
    opened = PruningSession.open(workspace, "baseline", criterion="taylor", validation=(x, y))  # as _loop_plan
    yield opened
    opened.close()


def test_latest_opens_the_newest_completed_iteration_as_the_panel_does(space):
    workspace, _, _ = space
    opened = PruningSession.open(workspace, "latest")
    try:
        assert opened.iteration == workspace.start_point("latest").name != "latest"
        assert opened.criterion == DEFAULT_RECIPE["criterion"]  # no recorded recipe: the default recipe's, as the panel
    finally:
        opened.close()


def test_open_ranks_by_the_criterion_its_lineage_records(space):
    """A session on a workspace the loop made ranks as the loop, the panel and a continued run do."""
    workspace, _, _ = space
    record = workspace.recipe_path("baseline")
    config = LoopConfig(workspace=str(workspace.root), criterion="l1", normalization="none")
    recorded_recipe.write(workspace, "baseline", recorded_recipe.Resolved(
        config, recorded_recipe.recipe_id(recorded_recipe.settings(config)), None, None, {}, {}), None)
    try:
        opened = PruningSession.open(workspace, "baseline")
        assert (opened.criterion, opened.normalization) == ("l1", "none")
        opened.close()
        asked = PruningSession.open(workspace, "baseline", criterion="taylor")
        assert (asked.criterion, asked.normalization) == ("taylor", None)  # what is asked wins
        asked.close()
    finally:
        record.unlink()


def _loop_plan(workspace, **step):
    """The plan the loop's step cuts from the baseline (it stops at the floor: nothing saved, nothing queued)."""
    with workspace.queue(tracker=False) as queue:
        done = prune_step(workspace, queue, Iteration("baseline", workspace.iteration_dir("baseline"), 0.5),
                                    criterion="taylor", hyperparameters={}, min_params=FLOOR, **step)
    assert done.job is None and "below the floor" in done.reason
    return done.plan


@pytest.mark.parametrize("target", [{"filters": 150}, {"macs": 0.6}, {"latency": 0.95}], ids=lambda t: next(iter(t)))
@pytest.mark.parametrize("scheme", ["internal", "all"])
def test_the_plan_for_a_target_is_the_loop_steps_plan(space, session, target, scheme):
    workspace = space[0]
    (unit, value), = target.items()
    if unit == "filters":
        step = dict(per_iteration=value)
    else:
        step = dict(per_iteration=1, target=StepTarget("macs" if unit == "macs" else "latency_ms", fraction=value),
                    latency=latency_table(workspace) if unit == "latency" else None)
    try:
        planned = session.plan_for(scheme=scheme, **target)
    except ValueError as exc:  # out of reach (at 16 px much of the time sits in layers no group shrinks)
        assert unit == "latency" and "cannot be reached" in str(exc)
        with workspace.queue(tracker=False) as queue:
            done = prune_step(workspace, queue, Iteration("baseline", workspace.iteration_dir("baseline"), 0.5),
                                        criterion="taylor", hyperparameters={}, scheme=scheme, **step)
        assert done.job is None and str(exc) in done.reason  # the loop stops with the same reason
        return
    loop = _loop_plan(workspace, scheme=scheme, **step)
    assert len(planned) > 0 and planned.resolve(session.graph) == loop.resolve(session.graph)
    if unit == "macs":
        one = max(session.costs.channel_macs().values())
        reached = session.preview(planned)["macs_after"]
        assert value * session.costs.before.macs - one < reached <= value * session.costs.before.macs
    assert planned.summary() == loop.summary()


def test_a_latency_target_plans_with_the_workspaces_table_measured_once_on_the_baseline(space, session):
    workspace = space[0]
    assert session.latency_table().to_json() == latency_table(workspace).to_json()
    assert (workspace.root / "latency_table.json").is_file()


def test_plan_for_takes_one_target_and_counts_plan_layer_by_layer_as_from_counts(session):
    from prune_explorer.model.plan import PrunePlan

    with pytest.raises(ValueError, match="one of filters, macs or latency"):
        session.plan_for(filters=10, macs=0.5)
    counts = {"layer1.0.conv1": 5, "layer3.1.conv1": 40}
    assert session.plan(counts).resolve(session.graph) == \
        PrunePlan.from_counts(session.table, session.graph, counts).resolve(session.graph)


def test_the_preview_is_the_real_pruned_models_cost_and_the_surgery_is_kept(session):
    plan = session.plan_for(filters=120)
    numbers = session.preview(plan)
    pruned = session.pruned(plan)
    real = count(pruned, session.x)
    assert (numbers["params_after"], numbers["macs_after"]) == (real.params, real.macs)
    assert numbers["filters_removed"] == 120 and session.pruned(plan) is pruned and session.surgery_of(plan) is pruned
    before, after = session.latency(pruned)
    assert before > 0 and after > 0
    assert session.latency(pruned, wanted=lambda: False) is None  # the sliders moved on: no measurement


def test_apply_saves_an_iteration_and_the_cut_accuracy_is_the_saved_models_on_the_slice(space, tmp_path):
    workspace, x, y = space
    model = store.load(workspace.iteration_dir("baseline"))
    session = PruningSession(model, x[:1], workspace=tmp_path / "ws", iteration="baseline", criterion="l1",
                             validation=(x, y))
    plan = session.plan({"layer2.0.conv1": 60, "layer4.1.conv1": 200})
    applied = session.apply(plan)
    record = session.evaluate_cut(applied)
    saved = store.load(applied.model_dir)
    assert record["accuracy"] == accuracy(saved, x, y) and record["examples"] == len(y)
    assert json.loads((tmp_path / "ws" / "iterations" / applied.iteration / "cut.json").read_text()) == record
    again = session.apply(session.plan({"layer2.0.conv1": 10}))  # applying again before queueing replaces it
    assert again.iteration == applied.iteration
    assert not (tmp_path / "ws" / "iterations" / applied.iteration / "cut.json").exists()  # measured for the old cut
    with pytest.raises(ValueError, match="cuts no filters"):
        session.apply(session.plan({}))
    with pytest.raises(ValueError, match="no workspace"):
        PruningSession(model, x[:1], criterion="l1").apply(plan)  # never a silent ./workspace
    session.close()


def test_the_cut_slice_is_the_first_validation_images_the_fine_tune_sees(tmp_path):
    from prune_explorer.jobs.data import load_dataset, with_channels
    from prune_explorer.loop import cut

    args = {"dataset": "digits", "image_size": 8, "val_subset": 50, "seed": 0, "epochs": 3}
    model = build_model("resnet18", num_classes=10).eval()
    images, labels = cut.validation_slice(args, 20, model).tensors
    _, val, _, _ = load_dataset("digits", image_size=8, val_subset=50, seed=0, download=False)
    val = with_channels(val, 3)  # the model's first conv takes RGB, as the job repeats grey images
    assert torch.equal(images, torch.stack([val[i][0] for i in range(20)]))
    assert labels.tolist() == [int(val[i][1]) for i in range(20)]
    assert cut.describe(args, 20) == {"dataset": "digits", "image_size": 8, "val_subset": 50, "seed": 0, "examples": 20}
    with pytest.raises(ValueError, match="no validation data"):
        cut.validation_slice({"epochs": 1}, 20, model)


def test_the_view_is_what_the_panel_draws_and_reads_back_only_while_fresh(space, session):
    workspace = space[0]
    session.write_view()
    drawn = view.read_view(workspace, "baseline", "taylor", None)
    assert drawn["groups"] == session.view()["groups"] and drawn["criterion"] == "taylor"
    table = session.table
    names = [g["name"] for g in drawn["groups"]]
    rows = np.asarray(drawn["ranks"]["row"])
    assert [names[r] for r in rows] == table["layer"].tolist()
    assert drawn["ranks"]["normalized"] == table["normalized"].tolist()  # exactly, through JSON
    carried = session.costs.per_group()
    assert all(g["params"] == carried[g["id"]].params for g in drawn["groups"])
    assert drawn["before"] == {"params": session.costs.before.params, "macs": session.costs.before.macs}
    assert view.read_view(workspace, "baseline", "l1", None) is None  # asked for another criterion
    assert view.read_view(workspace, "baseline", "taylor", "none") is None
