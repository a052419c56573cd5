"""A workspace keeps one recipe per lineage (loop/recorded_recipe.py): a continued run takes the recorded settings
it is not given, refuses a different one by name, and branches visibly only with --new-recipe."""
from __future__ import annotations

import dataclasses
import json

import pytest

from prune_explorer.cli import main as cli_main
from prune_explorer.jobs import Job, JobQueue
from prune_explorer.loop import LoopConfig, recorded_recipe, run_loop
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
    recorded_recipe.write(space, name, recorded_recipe.Resolved(config, recorded_recipe.recipe_id(recorded_recipe.settings(config)), None, None, {}, {}),
                 parent)


def test_a_continued_run_takes_the_recorded_settings_it_was_not_given(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    given = LoopConfig(workspace=str(tmp_path), iterations=1, given=("workspace", "iterations"))
    resolved = recorded_recipe.resolve(given, space, "iter-001")
    config = resolved.config
    assert (config.subset, config.lr, config.lr_schedule, config.weight_decay, config.image_size) == (
        120, 0.003, "cosine", 5e-4, 8)
    assert (config.per_iteration, config.threshold, config.iterations) == (48, 1.0, 1)
    assert resolved.taken["subset"] == 120 and "iterations" not in resolved.taken and not resolved.branch
    assert resolved.id == resolved.recorded  # the same recipe: the same id
    assert "taking" in recorded_recipe.describe(resolved, "iter-001")[0]


def test_another_fine_tuning_setting_is_refused_by_name_or_branches_when_asked(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    asked = LoopConfig(workspace=str(tmp_path), lr=0.01, subset=500, given=("workspace", "lr", "subset"))
    with pytest.raises(Refused, match=r"--lr 0.01 differs from the recorded 0.003; --subset 500 differs .*--new-recipe"):
        recorded_recipe.resolve(asked, space, "iter-001")
    branch = recorded_recipe.resolve(dataclasses.replace(asked, new_recipe=True), space, "iter-001")
    assert branch.branch and branch.changed == {"lr": (0.003, 0.01), "subset": (120, 500)}
    assert branch.id != branch.recorded and branch.config.lr_schedule == "cosine"  # the rest still recorded
    assert "new recipe" in recorded_recipe.describe(branch, "iter-001")[-1]


def test_model_data_and_input_never_change_on_a_workspace(tmp_path):
    space = _lineage(tmp_path)
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    for field, value in (("dataset", "fashion-mnist"), ("image_size", 16), ("model", "resnet34"),
                         ("val_subset", 30)):
        asked = LoopConfig(workspace=str(tmp_path), new_recipe=True, **{field: value},
                           given=("workspace", field))
        with pytest.raises(Refused, match=rf"--{field.replace('_', '-')} .*use another --workspace"):
            recorded_recipe.resolve(asked, space, BASELINE)


def test_steering_settings_come_as_a_group_and_may_change(tmp_path):
    space = _lineage(tmp_path)
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED, criterion="taylor_global"))
    budget = recorded_recipe.resolve(LoopConfig(workspace=str(tmp_path), target_macs=0.5, given=("target_macs",)), space,
                            BASELINE).config
    assert budget.target_macs == 0.5 and budget.per_iteration == LoopConfig().per_iteration  # 48 not taken
    assert budget.criterion == "taylor_global"
    other = recorded_recipe.resolve(LoopConfig(workspace=str(tmp_path), **{**RECORDED, "per_iteration": 16}), space, BASELINE)
    assert other.config.per_iteration == 16 and not other.branch  # given=None: as the caller wants


def test_the_recipe_nearest_the_start_up_its_lineage_decides(tmp_path):
    space = _lineage(tmp_path, "iter-001", "iter-002")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path), **RECORDED))
    _record(space, "iter-001", LoopConfig(workspace=str(tmp_path), **{**RECORDED, "lr": 0.01}), BASELINE)
    given = LoopConfig(workspace=str(tmp_path), given=())
    assert recorded_recipe.resolve(given, space, "iter-002").config.lr == 0.01  # iter-002 has none: its parent's
    assert recorded_recipe.resolve(given, space, BASELINE).config.lr == 0.003
    assert recorded_recipe.for_baseline(recorded_recipe.resolve(given, space, "iter-002").config, space).lr == 0.003


def test_a_workspace_from_before_recipes_reads_its_loop_config(tmp_path):
    space = _lineage(tmp_path, "iter-001")
    (tmp_path / "loop_config.json").write_text(json.dumps({**dataclasses.asdict(
        LoopConfig(workspace=str(tmp_path), **RECORDED)), "given": None}))
    resolved = recorded_recipe.resolve(LoopConfig(workspace=str(tmp_path), given=()), space, "iter-001")
    assert resolved.source == tmp_path / "loop_config.json" and resolved.config.subset == 120


def test_the_default_recipe_starts_new_workspaces_and_never_changes_a_recorded_lineage(tmp_path):
    """Issue 21's default (taylor_global to 1/2 of the MACs) fills only what `run` is not given: a lineage
    recorded with per-layer Taylor at a filter count continues with it, the same recipe id."""
    from prune_explorer.cli import build_parser, loop_config
    from prune_explorer.default_recipe import DEFAULT_RECIPE

    fresh = loop_config(build_parser().parse_args(["run", f"--workspace={tmp_path / 'new'}"]))
    new = recorded_recipe.resolve(fresh, Workspace(tmp_path / "new"), BASELINE)
    assert {k: getattr(new.config, k) for k in DEFAULT_RECIPE} == DEFAULT_RECIPE and new.recorded is None

    space = _lineage(tmp_path / "old", "iter-001")
    _record(space, BASELINE, LoopConfig(workspace=str(tmp_path / "old"), **RECORDED))
    args = build_parser().parse_args(["run", f"--workspace={tmp_path / 'old'}", "--iterations=2"])
    resolved = recorded_recipe.resolve(loop_config(args), space, "iter-001")
    config = resolved.config
    assert (config.criterion, config.per_iteration, config.target_macs, config.target_scope, config.distill) == (
        "taylor", 48, None, "iteration", None)
    assert resolved.id == resolved.recorded and not resolved.branch
    assert resolved.taken["criterion"] == "taylor" and resolved.taken["target_macs"] is None  # said on stderr
    assert "criterion='taylor'" in recorded_recipe.describe(resolved, "iter-001")[0]


def test_a_record_from_before_distillation_is_a_plain_fine_tune(tmp_path):
    """A recipe.json without the distill settings keeps its id, and a teacher is another recipe: refused
    by name, or a marked branch."""
    space = _lineage(tmp_path, "iter-001")
    config = LoopConfig(workspace=str(tmp_path), **RECORDED)
    values = {k: v for k, v in recorded_recipe.settings(config).items() if not k.startswith("distill")}
    old_id = recorded_recipe.recipe_id(values)
    assert old_id == recorded_recipe.recipe_id(recorded_recipe.settings(config))
    space.write_json(f"iterations/{BASELINE}/recipe.json", {"id": old_id, "settings": values, "parent": None})
    same = recorded_recipe.resolve(LoopConfig(workspace=str(tmp_path), given=()), space, "iter-001")
    assert same.config.distill is None and same.recorded == same.id == old_id
    asked = LoopConfig(workspace=str(tmp_path), distill="baseline", given=("distill",))
    with pytest.raises(Refused, match=r"--distill 'baseline' differs from the recorded None.*--new-recipe"):
        recorded_recipe.resolve(asked, space, "iter-001")
    branch = recorded_recipe.resolve(dataclasses.replace(asked, new_recipe=True), space, "iter-001")
    assert branch.changed == {"distill": (None, "baseline")} and branch.id != old_id


def test_the_pretrained_demo_continues_a_workspace_recorded_with_another_recipe(tmp_path):
    """`demo --pretrained` rerun on a workspace-pretrained made before the default recipe finishes it with
    the recipe it recorded (per-layer Taylor, 1000 filters a step), not the new default (cli._demo counts
    the recipe's settings as not given); a library caller's config stays as it asked."""
    from prune_explorer.default_recipe import DEFAULT_RECIPE
    from prune_explorer.loop import pretrained_demo_config

    space = _lineage(tmp_path, "iter-001")
    old = dataclasses.replace(pretrained_demo_config(tmp_path), criterion="taylor", target_macs=None,
                              target_scope="iteration")
    _record(space, BASELINE, old)
    demo = recorded_recipe.defaulted(pretrained_demo_config(tmp_path), DEFAULT_RECIPE)
    resolved = recorded_recipe.resolve(demo, space, "iter-001")
    assert (resolved.config.criterion, resolved.config.target_macs, resolved.config.per_iteration) == (
        "taylor", None, 1000)
    assert not resolved.branch
    asked = recorded_recipe.resolve(pretrained_demo_config(tmp_path), space, "iter-001").config  # given=None
    assert (asked.criterion, asked.target_macs) == (DEFAULT_RECIPE["criterion"], DEFAULT_RECIPE["target_macs"])


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
    ids = recorded_recipe.ids(Workspace(ws), [BASELINE, "iter-001", "iter-002", "iter-003"])
    assert ids["iter-001"] == ids["iter-002"] == ids[BASELINE] != ids["iter-003"]
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert ids["iter-002"] in lines["iter-002"] and ids["iter-003"] in lines["iter-003"]  # the recipe column
    assert f"recipe {ids['iter-003']}: " in out and f"branch of {ids['iter-002']}: lr 0.003 -> 0.01" in out
