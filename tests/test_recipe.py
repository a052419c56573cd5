"""A workspace keeps one recipe per lineage (loop/recipe.py): a continued run takes the recorded settings
it is not given, refuses a different one by name, and branches visibly only with --new-recipe."""
from __future__ import annotations

import dataclasses
import json

import pytest

from prune_explorer.cli import main as cli_main
from prune_explorer.jobs import Job, JobQueue
from prune_explorer.loop import LoopConfig, recipe, run_loop
from prune_explorer.loop.checks import Refused
from prune_explorer.workspace import BASELINE, Workspace

RECORDED = dict(dataset="digits", subset=120, val_subset=60, image_size=8, batch_size=30, baseline_epochs=1,
                epochs=1, lr=0.003, lr_schedule="cosine", weight_decay=5e-4, per_iteration=48, threshold=1.0)


def _lineage(root, *names):
    """A workspace whose jobs say each name's parent is the one before it (no models: the recipe only)."""
    space = Workspace(root)
    parent = None
    for name in (BASELINE, *names):
        Job(id=f"job-{name}", backend="local", model="resnet18", out_dir=str(space.iteration_dir(name)),
            parent=parent, iteration=name).save(root / "jobs")
        space.iteration_dir(name).mkdir(parents=True, exist_ok=True)
        parent = name
    return space


def _record(space, name, config, parent=None):
    recipe.write(space, name, recipe.Resolved(config, recipe.recipe_id(recipe.settings(config)), None, None, {}, {}),
                 parent)


def test_a_continued_run_takes_the_recorded_settings_it_was_not_given(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    given = LoopConfig(workspace=str(tmp_path), iterations=1, given=("workspace", "iterations"))
    resolved = recipe.resolve(given, space, "iter-001")
    config = resolved.config
    assert (config.subset, config.lr, config.lr_schedule, config.weight_decay, config.image_size) == (
        120, 0.003, "cosine", 5e-4, 8)
    assert (config.per_iteration, config.threshold, config.iterations) == (48, 1.0, 1)
    assert resolved.taken["subset"] == 120 and "iterations" not in resolved.taken and not resolved.branch
    assert resolved.id == resolved.recorded  # the same recipe: the same id
    assert "taking" in recipe.describe(resolved, "iter-001")[0]


def test_another_fine_tuning_setting_is_refused_by_name_or_branches_when_asked(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    asked = LoopConfig(workspace=str(tmp_path), lr=0.01, subset=500, given=("workspace", "lr", "subset"))
    with pytest.raises(Refused, match=r"--lr 0.01 differs from the recorded 0.003; --subset 500 differs .*--new-recipe"):
        recipe.resolve(asked, space, "iter-001")
    branch = recipe.resolve(dataclasses.replace(asked, new_recipe=True), space, "iter-001")
    assert branch.branch and branch.changed == {"lr": (0.003, 0.01), "subset": (120, 500)}
    assert branch.id != branch.recorded and branch.config.lr_schedule == "cosine"  # the rest still recorded
    assert "new recipe" in recipe.describe(branch, "iter-001")[-1]


def test_model_data_and_input_never_change_on_a_workspace(tmp_path):
    space = _lineage(tmp_path)
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    for field, value in (("dataset", "fashion-mnist"), ("image_size", 16), ("model", "resnet34"),
                         ("val_subset", 30)):
        asked = LoopConfig(workspace=str(tmp_path), new_recipe=True, **{field: value},
                           given=("workspace", field))
        with pytest.raises(Refused, match=rf"--{field.replace('_', '-')} .*use another --workspace"):
            recipe.resolve(asked, space, BASELINE)


def test_steering_settings_come_as_a_group_and_may_change(tmp_path):
    space = _lineage(tmp_path)
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED, criterion="taylor_global"))
    budget = recipe.resolve(LoopConfig(workspace=str(tmp_path), target_macs=0.5, given=("target_macs",)), space,
                            BASELINE).config
    assert budget.target_macs == 0.5 and budget.per_iteration == LoopConfig().per_iteration  # 48 not taken
    assert budget.criterion == "taylor_global"
    other = recipe.resolve(LoopConfig(workspace=str(tmp_path), **{**RECORDED, "per_iteration": 16}), space, BASELINE)
    assert other.config.per_iteration == 16 and not other.branch  # given=None: as the caller wants


def test_the_recipe_nearest_the_start_up_its_lineage_decides(tmp_path):
    space = _lineage(tmp_path, "iter-001", "iter-002")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    _record(space, "iter-001", LoopConfig(workspace=str(tmp_path), **{**RECORDED, "lr": 0.01}), BASELINE)
    given = LoopConfig(workspace=str(tmp_path), given=())
    assert recipe.resolve(given, space, "iter-002").config.lr == 0.01  # iter-002 has none: its parent's
    assert recipe.resolve(given, space, BASELINE).config.lr == 0.003
    assert recipe.for_baseline(recipe.resolve(given, space, "iter-002").config, space).lr == 0.003


def test_a_workspace_from_before_recipes_reads_its_loop_config(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    (tmp_path / "loop_config.json").write_text(json.dumps({**dataclasses.asdict(
        LoopConfig(workspace=str(tmp_path), **RECORDED)), "given": None}))
    resolved = recipe.resolve(LoopConfig(workspace=str(tmp_path), given=()), space, "iter-001")
    assert resolved.source == tmp_path / "loop_config.json" and resolved.config.subset == 120


@pytest.mark.slow
def test_the_demo_workspace_continued_without_flags_keeps_its_recipe_and_history_shows_each(tmp_path, capsys):
    """Issue 22: `run --workspace ws --iterations 1` on the demo's workspace fine-tuned on the full data with
    lr 1e-3, constant, no weight decay; now it takes the lineage's recipe, and a change is refused or branches."""
    ws = tmp_path / "ws"
    rows = run_loop(LoopConfig(workspace=str(ws), iterations=1, **RECORDED), progress=False)
    assert rows["iteration"].tolist() == [BASELINE, "iter-001"]
    first = {j.iteration: j for j in JobQueue(ws, tracker=False).jobs()}["iter-001"].hyperparameters

    assert cli_main(["run", f"--workspace={ws}", "--iterations=1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "taking" in err and "lr_schedule='cosine'" in err and "subset=120" in err
    jobs = {j.iteration: j for j in JobQueue(ws, tracker=False).jobs()}
    second = jobs["iter-002"].hyperparameters
    rule = ("baseline_accuracy", "stop_rule_threshold")
    assert {k: v for k, v in second.items() if k not in rule} == {k: v for k, v in first.items() if k not in rule}
    assert jobs["iter-002"].parent == "iter-001"

    assert cli_main(["run", f"--workspace={ws}", "--iterations=1", "--lr=0.01", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.01 differs from the recorded 0.003" in err and "--new-recipe" in err
    assert len(JobQueue(ws, tracker=False).jobs()) == len(jobs)  # refused before any work

    assert cli_main(["run", f"--workspace={ws}", "--iterations=1", "--lr=0.01", "--new-recipe", "--quiet"]) == 0
    assert "new recipe" in capsys.readouterr().err
    third = {j.iteration: j for j in JobQueue(ws, tracker=False).jobs()}["iter-003"]
    assert third.hyperparameters["lr"] == 0.01 and third.hyperparameters["subset"] == 120

    assert cli_main(["history", f"--workspace={ws}"]) == 0
    out = capsys.readouterr().out
    ids = recipe.ids(Workspace(ws), [BASELINE, "iter-001", "iter-002", "iter-003"])
    assert ids["iter-001"] == ids["iter-002"] == ids[BASELINE] != ids["iter-003"]
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert ids["iter-002"] in lines["iter-002"] and ids["iter-003"] in lines["iter-003"]  # the recipe column
    assert f"recipe {ids['iter-003']}: " in out and f"branch of {ids['iter-002']}: lr 0.003 -> 0.01" in out
