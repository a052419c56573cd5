"""The workspace layout module (`workspace/layout.py`) is the one place that spells the disk: folder
and file names and metrics.json's keys appear nowhere else in the package (checked on the source),
its atomic write never leaves half a file, and its metrics reader answers by field. The package's
stage folders import only the ones below them."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import prune_explorer
from prune_explorer.workspace import layout
from prune_explorer.workspace.layout import Layout, Metrics, atomic_write, read_metrics, recorded_input_shape

PACKAGE = Path(prune_explorer.__file__).parent
LAYOUT_FILE = PACKAGE / "workspace" / "layout.py"

# The stages, lowest first: a module may import the package root and the units of earlier layers
# only. `workspace.layout`, `masking` and `loop.rules` are units of their own: the layout and the
# masking of credentials import nothing of the package, and the stop rule (a self-contained file, uploaded alone as the Debugger rule) runs
# inside every job.
LAYERS = [
    {"workspace.layout", "masking", "default_recipe"},
    {"model"},
    {"signals"},
    {"tracking", "loop.rules"},
    {"jobs"},
    {"workspace", "demo"},
    {"loop"},
    {"session"},
    {"widgets"},
    {"cli"},
]

# Words another format spells too, each allowed in one file with the reason.
OTHER_FORMATS = {
    ("loop/rules.py", "val_accuracy"): "the trial scalar the Debugger rule reads (the file is uploaded alone)",
    ("model/latency.py", "input_shape"): "a field of the latency table's own JSON",
    ("tracking/base.py", "best_accuracy"): "a number Tracker.record takes (IterationRecord.best_accuracy)",
    ("tracking/mlflow_tracker.py", "best_accuracy"): "the MLflow metric of Tracker.record's best_accuracy",
    ("tracking/sagemaker_experiments.py", "best_accuracy"): "the Experiments metric of Tracker.record's best_accuracy",
    ("loop/checks.py", "iterations"): "LoopConfig's field `iterations` (how many steps), not the folder",
    ("workspace/view.py", "input_shape"): "a field of the panel's view file (its own JSON, written and read there)",
    ("widgets/jobs_panel.py", "val_accuracy"): "a field of the job log's epoch line and of the panel's progress",
}


def _unit(module: str) -> str:
    parts = module.removesuffix(".__init__").split(".")[1:]
    if not parts:
        return "(root)"
    if parts[:2] in (["workspace", "layout"], ["loop", "rules"]):
        return ".".join(parts[:2])
    return parts[0] if (PACKAGE / parts[0]).is_dir() else Path(parts[0]).stem


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every prune_explorer module `path` imports (lazy imports inside functions included)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:  # `from ..workspace import layout` imports the module workspace.layout
                sub = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / Path(*sub.split("."))).is_dir()
                found.append((sub if is_module else base, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "prune_explorer"]


def test_each_stage_folder_imports_only_the_folders_below_it():
    level = {unit: i for i, layer in enumerate(LAYERS) for unit in layer} | {"(root)": len(LAYERS)}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _unit(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        assert here in level, f"{path}: stage {here!r} is in no layer of this test"
        for name, line in _imports(path):
            there = _unit(name)
            if there not in (here, "(root)") and level.get(there, len(LAYERS)) >= level[here]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({here}) imports {name} ({there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
    # the parser sees relative, lazy and `from package import module` imports
    export = {name for name, _ in _imports(PACKAGE / "model" / "export.py")}
    assert "prune_explorer.workspace.layout" in export and not any(".jobs" in name for name in export)
    contract = {_unit(name) for name, _ in _imports(PACKAGE / "jobs" / "contract.py")}
    assert {"workspace.layout", "loop.rules", "model"} <= contract


def _strings(tree: ast.AST):
    """(node, value, in a path expression) for every string constant that is not a docstring."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    in_path: set[int] = set()
    for node in ast.walk(tree):
        operands = []
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            operands = [node.left, node.right]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("joinpath", "join", "glob", "rglob", "with_name"):
            operands = list(node.args)
        for operand in operands:
            in_path |= {id(c) for c in ast.walk(operand) if isinstance(c, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node, node.value, id(node) in in_path


def _layout_words() -> tuple[set[str], set[str]]:
    """(words spelled only in the layout anywhere, names spelled only there in a path expression)."""
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    keys = set(layout.job_metrics(status="completed", reason=None, epochs=[layout.epoch_record(1, 0.5, 1.0, {})],
                                  best_accuracy=0.5, cost={}, trial=None, model="m", input_shape=[1, 8, 8],
                                  first_batch=None, world_size=1, baseline_accuracy=None, script=None, unused=[],
                                  extra=layout.data_recipe_metrics(None, None), config={}))
    keys |= set(layout.epoch_record(1, 0.5, 1.0, {}))
    # metrics.json's own words; its keys that are common words (status, epochs, params, config, ...)
    # and the names of the contract's options (baseline_accuracy) are read through `Metrics` but
    # spelled elsewhere for other things
    distinct = {w for w in names | keys if "_" in w or "." in w} | {layout.ITERATIONS, layout.EXPORTS,
                                                                      layout.PRUNED, layout.MLARTIFACTS}
    distinct -= {"baseline_accuracy", "latency_ms"}
    return distinct, names


def test_workspace_names_and_metrics_keys_are_spelled_only_in_the_layout_module():
    distinct, in_paths = _layout_words()
    assert {"metrics.json", "iterations", "best_accuracy", "input_shape", ".locks", "val_accuracy"} <= distinct
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == LAYOUT_FILE:
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        for node, value, in_path in _strings(ast.parse(path.read_text())):
            spelled = value in distinct or (in_path and value in in_paths) or value.startswith("iter-")
            if spelled and (relative, value) not in OTHER_FORMATS:
                found.append(f"{relative}:{node.lineno}: {value!r}")
    assert not found, "the workspace layout spelled outside workspace/layout.py:\n" + "\n".join(found)


def test_the_check_finds_a_name_spelled_in_a_path_or_a_key_read_by_hand():
    distinct, anywhere = _layout_words()
    code = 'def f(root, m):\n    """metrics.json in a docstring is prose"""\n    return root / "trial", m["best_accuracy"], "ok"\n'
    spelled = [(v, p) for _, v, p in _strings(ast.parse(code)) if v in distinct or (p and v in anywhere)]
    assert spelled == [("trial", True), ("best_accuracy", False)]


# --- the layout's behaviour ----------------------------------------------------------------------
def test_an_atomic_write_that_fails_leaves_neither_the_file_nor_a_temp_file(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with pytest.raises(RuntimeError, match="half"):
        atomic_write(target, lambda f: (f.write("a,b\n"), (_ for _ in ()).throw(RuntimeError("half way"))))
    assert list((tmp_path / "sub").iterdir()) == []
    atomic_write(target, lambda f: f.write("a,b\n"))
    atomic_write(target, lambda f: f.write("c,d\n"))
    assert target.read_text() == "c,d\n" and [p.name for p in target.parent.iterdir()] == ["table.csv"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_write_that_must_not_replace_keeps_the_first_file(tmp_path):
    target = tmp_path / "store.db"
    assert atomic_write(target, lambda f: f.write(b"first"), binary=True, replace=False)
    assert not atomic_write(target, lambda f: f.write(b"second"), binary=True, replace=False)
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["store.db"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_metrics_are_read_by_field_with_the_best_accuracy_else_the_max_over_epochs(tmp_path):
    epochs = [layout.epoch_record(i + 1, a, 1.0, {"train_loss": 0.1}) for i, a in enumerate([0.5, 0.7, 0.6])]
    layout.write_metrics([tmp_path, None, tmp_path], {"epochs": epochs, "status": "completed", "input_shape": [3, 8, 8]})
    metrics = read_metrics(tmp_path)
    assert isinstance(metrics, Metrics) and metrics.status == "completed" and metrics.accuracies == [0.5, 0.7, 0.6]
    assert metrics.best_accuracy == 0.7 and Metrics(metrics, best_accuracy=0.65).best_accuracy == 0.65
    assert Metrics().best_accuracy is None and read_metrics(tmp_path / "nothing") == {}
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nothing", missing_ok=False)
    stopped = metrics.with_verdict("stopped", "too far down")
    assert (stopped.status, stopped.reason, metrics.status) == ("stopped", "too far down", "completed")
    (tmp_path / layout.METRICS).write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{layout.METRICS}: not a JSON object"):
        read_metrics(tmp_path)
    (tmp_path / layout.METRICS).write_text("{broken")
    with pytest.raises(ValueError, match=f"{tmp_path / layout.METRICS}: not valid JSON"):
        read_metrics(tmp_path)


def test_an_iterations_pruned_model_takes_the_input_shape_its_iteration_recorded(tmp_path):
    space = Layout(tmp_path)
    layout.write_json(layout.metrics_path(space.iteration_dir("iter-001")), {"input_shape": [1, 3, 16, 16]})
    assert recorded_input_shape(space.pruned_dir("iter-001")) == [3, 16, 16]
    assert recorded_input_shape(space.iteration_dir("iter-001")) == [3, 16, 16]
    assert recorded_input_shape(tmp_path / "elsewhere" / layout.PRUNED) is None
    assert json.loads(layout.metrics_path(space.iteration_dir("iter-001")).read_text()) == {"input_shape": [1, 3, 16, 16]}


def test_iteration_names_sort_by_number_and_other_folders_are_not_iterations(tmp_path):
    space = Layout(tmp_path)
    for name in ("iter-010", "iter-002", layout.BASELINE, ".baseline-x", "iter-1x"):
        space.iteration_dir(name).mkdir(parents=True)
    assert space.iteration_names() == ["iter-002", "iter-010"] and space.is_workspace()
    assert layout.iteration_name(7) == "iter-007" and layout.iteration_number("iter-007") == 7
    assert layout.sibling_dir(space.iteration_dir("iter-010"), "iter-002") == space.iteration_dir("iter-002")
