"""The recipe a workspace records, one per lineage: what a continued run takes, refuses, or branches on.
(The defaults of a new run are another thing: `prune_explorer/default_recipe.py`; they fill only what
a run does not give, so for a continued lineage the record below decides them.)

The recipe is the LoopConfig settings that decide what an iteration's accuracy means. The loop
writes it beside every iteration it makes (iterations/<name>/recipe.json, and the baseline's once);
a continued run reads the one nearest its start point up the lineage (else a workspace's older
loop_config.json) and, for every setting it was not given (`LoopConfig.given`), takes the recorded
value. A setting given with another value is refused by name — or, for the fine-tuning settings
with `new_recipe`, starts a new branch whose iterations carry a new recipe id (history shows it):

- IDENTITY: what the baseline and every comparison rest on (model, data, validation set, input);
  never changed on a workspace.
- FINE_TUNE: a fine-tuning job's recipe; changed only with `new_recipe`.
- STEERING: how the loop cuts and stops; taken from the record when none of a group is given, free
  to change (each group is taken whole: giving --target-macs drops a recorded --per-iteration).

A FINE_TUNE setting a record lacks (written before the setting existed) reads as LoopConfig's library
default, what such a run did: a record from before distillation is a plain fine-tune's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..workspace import BASELINE
from ..workspace.layout import LOOP_CONFIG, Layout
from .checks import RefusedValue

IDENTITY = ("model", "weights", "model_kwargs", "dataset", "data_dir", "val_subset", "image_size", "normalize",
            "baseline_epochs", "baseline_lr")
FINE_TUNE = ("epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "subset", "seed", "augment", "capture",
             "entry_point", "source_dir", "train_args", "distill", "distill_alpha", "distill_temperature")
STEERING = (("criterion", "normalization"), ("per_iteration", "target_macs", "target_latency", "target_scope"),
            ("latency_runtime", "round_to"), ("scheme",), ("threshold",), ("min_params",), ("outputs",))
FIELDS = IDENTITY + FINE_TUNE + tuple(f for group in STEERING for f in group)
LEGACY_FILE = LOOP_CONFIG  # what runs before recipes recorded: the last run's whole LoopConfig
_PATHS = ("data_dir", "weights", "source_dir")


@dataclass(frozen=True)
class Resolved:
    """A run's config after its recipe is settled: `id` (its recipe), `recorded` (the id it continues,
    None on a new workspace), `source` (the file the record came from), `taken` (settings not given
    that the record decided, with their values), `changed` ({setting: (recorded, given)} of a new branch)."""

    config: Any
    id: str
    recorded: str | None
    source: Path | None
    taken: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]

    @property
    def branch(self) -> bool:
        return bool(self.changed)


def settings(config: Any) -> dict[str, Any]:
    """The recipe settings of a LoopConfig."""
    return {f: getattr(config, f) for f in FIELDS}


def recipe_id(values: dict[str, Any]) -> str:
    """A short id of the settings that decide accuracy (IDENTITY and FINE_TUNE): equal recipes, equal ids.
    Unset settings are left out, so a setting added later (unset by default) keeps older records' ids."""
    core = {f: v for f in IDENTITY + FINE_TUNE if (v := _comparable(f, values.get(f))) is not None}
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:6]


def recorded(workspace: Any, start: str) -> tuple[dict[str, Any] | None, Path | None]:
    """The recipe recorded nearest `start` up its lineage (else loop_config.json), and its file."""
    for name in reversed(workspace.lineage(start)):
        path = workspace.recipe_path(name)
        if path.is_file():
            return _read(path)["settings"], path
    legacy = workspace.root / LEGACY_FILE
    if legacy.is_file():
        data = _read(legacy)
        return {f: data[f] for f in FIELDS if f in data}, legacy
    return None, None


def ranking(workspace: Any, start: str, given: dict[str, Any]) -> dict[str, Any]:
    """The criterion (and normalisation) recorded for `start`'s lineage, for those `given` leaves open
    (a normalisation of "auto" or None is open): what a run continuing it ranks by, so a panel or a
    session on it ranks the same. {} when nothing is recorded or the record cannot be read."""
    from .checks import Refused

    if given.get("criterion"):
        return {}  # a criterion asked for decides, with its own normalisation
    try:
        record, _ = recorded(workspace, start)
    except Refused:
        return {}
    found: dict[str, Any] = {}
    if record and record.get("criterion"):
        found["criterion"] = record["criterion"]
        if given.get("normalization") in (None, "auto") and record.get("normalization"):
            found["normalization"] = record["normalization"]
    return found


def resolve(config: Any, workspace: Any, start: str) -> Resolved:
    """`config` with the recorded recipe of `start`'s lineage in every setting it was not given.

    Refuses (RefusedValue naming each setting) a given IDENTITY setting that differs, and a given
    FINE_TUNE setting that differs unless `config.new_recipe`."""
    record, source = recorded(workspace, start)
    if record is None:
        return Resolved(config, recipe_id(settings(config)), None, None, {}, {})
    record = {**_library_defaults(config, FINE_TUNE), **record}
    given = set(FIELDS if config.given is None else config.given)
    taken: dict[str, Any] = {}
    for group in STEERING:
        if not given & set(group):
            taken.update({f: record[f] for f in group if f in record})
    fixed, changed = [], {}
    for f in IDENTITY + FINE_TUNE:
        if f not in record:
            continue
        if f not in given:
            taken[f] = record[f]
        elif _comparable(f, getattr(config, f)) != _comparable(f, record[f]):
            if f in IDENTITY:
                fixed.append(f)
            else:
                changed[f] = (record[f], getattr(config, f))
    where = f"recorded for {start}'s lineage in {source}"
    if fixed:
        raise RefusedValue(f"{_differences(fixed, config, record)} ({where}): a workspace keeps one model, dataset, "
                           "validation set and input; use another --workspace for these")
    if changed and not config.new_recipe:
        raise RefusedValue(f"{_differences(list(changed), config, record)} ({where}): leave "
                           f"{'that flag' if len(changed) == 1 else 'those flags'} out to continue with the recorded "
                           "recipe, or pass --new-recipe to start a new branch with them (marked in history)")
    resolved = dataclasses.replace(config, **taken)
    taken = {f: v for f, v in taken.items() if _comparable(f, v) != _comparable(f, getattr(config, f))}
    return Resolved(resolved, recipe_id(settings(resolved)), recipe_id(record), source, taken, changed)


def defaulted(config: Any, names: Any) -> Any:
    """`config` with `names` — and every STEERING setting grouped with one of them — counted as not given:
    defaults (e.g. the default recipe's) that a continued lineage's record overrides."""
    loose = set(names).union(*(group for group in STEERING if set(group) & set(names)))
    given = FIELDS if config.given is None else config.given
    return dataclasses.replace(config, given=tuple(f for f in given if f not in loose))


def for_baseline(config: Any, workspace: Any) -> Any:
    """`config` with the baseline's own recorded fine-tuning settings: what the baseline check compares
    (a branch's new learning rate or schedule is its jobs', not the baseline's)."""
    record, _ = recorded(workspace, BASELINE)
    if record is None:
        return config
    return dataclasses.replace(config, **{f: record[f] for f in FINE_TUNE if f in record})


def record_baseline(workspace: Any, config: Any) -> None:
    """Record the baseline's recipe once (the run that trains it, or the first run that finds it without one)."""
    if not workspace.recipe_path(BASELINE).is_file():
        write(workspace, BASELINE, Resolved(config, recipe_id(settings(config)), None, None, {}, {}), parent=None)


def write(workspace: Any, name: str, resolved: Resolved, parent: str | None) -> Path:
    """Record `resolved`'s recipe beside iteration `name` (temp file + rename)."""
    record = {"id": resolved.id, "settings": settings(resolved.config), "parent": parent,
              "branch_of": resolved.recorded if resolved.branch else None,
              "changed": {f: list(v) for f, v in resolved.changed.items()}}
    relative = workspace.recipe_path(name).relative_to(workspace.root)
    return workspace.write_json(str(relative), record)


def ids(workspace: Any, names: list[str]) -> dict[str, str]:
    """Iteration name -> the recipe id recorded beside it (iterations the loop did not make have none)."""
    found = {}
    for name in names:
        path = workspace.recipe_path(str(name))
        if path.is_file():
            found[name] = _read(path).get("id", "")
    return found


def annotate(history: Any, root: str | os.PathLike) -> list[str]:
    """Add each iteration's recipe id to a history DataFrame (column "recipe"); the legend of those recipes."""
    from ..workspace import Workspace

    if history.empty or not Layout(root).is_workspace():
        return []
    workspace = Workspace(root)
    names = history["iteration"].tolist()
    history["recipe"] = history["iteration"].map(ids(workspace, names)).fillna("")
    return legend(workspace, names)


def legend(workspace: Any, names: list[str]) -> list[str]:
    """One line per recipe among `names`: its id, its fine-tuning settings, and what a branch changed."""
    lines, seen = [], set()
    for name in names:
        path = workspace.recipe_path(str(name))
        if not path.is_file():
            continue
        record = _read(path)
        if record.get("id") in seen:
            continue
        seen.add(record.get("id"))
        values = record.get("settings", {})
        shown = " ".join(f"{f}={values[f]}" for f in ("dataset",) + FINE_TUNE if values.get(f) not in (None, {}))
        branch = (f"; branch of {record['branch_of']}: " + ", ".join(
            f"{f} {old!r} -> {new!r}" for f, (old, new) in record.get("changed", {}).items())
            if record.get("branch_of") else "")
        lines.append(f"recipe {record.get('id')}: {shown}{branch}")
    return lines


def describe(resolved: Resolved, start: str) -> list[str]:
    """What resolving did, for the run's stderr: the recorded settings taken, or the new branch."""
    lines = []
    if resolved.taken:
        taken = ", ".join(f"{f}={v!r}" for f, v in resolved.taken.items())
        lines.append(f"recipe {resolved.recorded} recorded in {resolved.source}: taking {taken} "
                     "(the settings this run did not give)")
    if resolved.branch:
        changes = ", ".join(f"{f} {old!r} -> {new!r}" for f, (old, new) in resolved.changed.items())
        lines.append(f"new recipe {resolved.id} branching from {start} (recipe {resolved.recorded}): {changes}")
    return lines


def _library_defaults(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """LoopConfig's own defaults of `names` (what a run did before a setting existed)."""
    found = {}
    for f in dataclasses.fields(config):
        if f.name in names and f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.name in names and f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def _differences(names: list[str], config: Any, record: dict[str, Any]) -> str:
    return "; ".join(f"{_flag(f)} {getattr(config, f)!r} differs from the recorded {record[f]!r}" for f in names)


def _flag(name: str) -> str:
    from .checks import flag

    return flag(name)


def _comparable(name: str, value: Any) -> Any:
    """A setting as compared: local paths absolute, an empty dict as None."""
    if value in ({}, None):
        return None
    if name in _PATHS and isinstance(value, (str, os.PathLike)) and not str(value).startswith("s3://") \
            and (os.sep in str(value) or Path(value).exists()):
        return os.path.abspath(value)
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RefusedValue(f"{path}: not a readable recipe record ({exc})") from exc
    if not isinstance(data, dict):
        raise RefusedValue(f"{path}: not a recipe record (a JSON object)")
    return data
