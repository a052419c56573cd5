"""The workspace layout on disk and what a fine-tuning job leaves: the one place that spells them.

    WORKSPACE/
      iterations/<name>/           model.json, model.safetensors, metrics.json, trial/, train.log (a job's outputs)
      iterations/<name>/pruned/    the pruned model before fine-tuning (the job's input)
      iterations/<name>/recipe.json   the recipe of the run that made it (loop/recorded_recipe.py)
      iterations/<name>/cut.json   its accuracy right after the cut, before fine-tuning (the tracker's cut_accuracy)
      iterations/<name>/view.json  the panel's first view of it (workspace/view.py: ranks, widths, costs)
      jobs/<job_id>.json           job records (JobQueue), jobs/.locks/ their locks and the workspace's
                                   (workspace-run: held by the one headless run)
      exports/<name>.onnx|.pt2     an iteration's model as a file that runs without prune_explorer;
                                   <name>-pruned.onnx|.pt2 its model before fine-tuning (`export_name`)
      mlflow.db, mlartifacts/      the default MLflow store (tracking.MlflowTracker)
      results.csv, params_vs_accuracy.png, loop_config.json   what the headless loop writes
      latency_table.json           per-layer latencies measured once on the baseline (latency budgets)
      history.json                 the last tracked history the panel saw (its first view's scatter and lineage)

Folder and file names (`Layout`, a workspace's paths), the keys of metrics.json (`Metrics`: read,
`job_metrics` / `failed_metrics`: written — best accuracy, else the max over the epochs; the input
shape), and the one atomic write (`atomic_write`: a temp file beside the target, then one rename)
and lock (`file_lock`). Standard library only and importing nothing of the package, so every
stage — the model stack, a job in its container, the queue and its backends, the trackers, the
loop, the CLI — asks it; `Workspace` builds names, lineage and writes on it.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

# --- names on disk -------------------------------------------------------------------------------
BASELINE = "baseline"
ITERATIONS = "iterations"
PRUNED = "pruned"
TRIAL = "trial"
JOBS = "jobs"
LOCKS = ".locks"
EXPORTS = "exports"
MODEL_SPEC = "model.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_FILES = (MODEL_SPEC, MODEL_WEIGHTS)
METRICS = "metrics.json"
TRAIN_LOG = "train.log"
LATENCY_TABLE = "latency_table.json"
LOOP_CONFIG = "loop_config.json"
RESULTS_CSV = "results.csv"
RESULTS_PNG = "params_vs_accuracy.png"
MLFLOW_DB = "mlflow.db"
MLARTIFACTS = "mlartifacts"
CUT_ACCURACY = "cut.json"
RECIPE = "recipe.json"
RUN_LOCK = "workspace-run"
VIEW = "view.json"
HISTORY_VIEW = "history.json"
_ITERATION = re.compile(r"iter-(\d+)")


def iteration_name(number: int) -> str:
    """The name of the `number`-th pruned iteration: iter-001, iter-002, …"""
    return f"iter-{number:03d}"


def export_name(iteration: str, pruned: bool = False) -> str:
    """The file name (no suffix) an iteration's model is exported under; its model before fine-tuning
    (the panel's applied cut) is `<iteration>-pruned`, never taken for the fine-tuned model's file."""
    return f"{iteration}-{PRUNED}" if pruned else iteration


def iteration_number(name: str) -> int | None:
    """`iteration_name`'s number back, None for any other name (the baseline, a temp folder)."""
    match = _ITERATION.fullmatch(name)
    return int(match.group(1)) if match else None


def has_model(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a saved model (its model.json; model.store writes both files)."""
    return (Path(directory) / MODEL_SPEC).is_file()


def _at_root(name: str, doc: str) -> property:
    return property(lambda self: self.root / name, doc=f"WORKSPACE/{name}: {doc}")


class Layout:
    """The paths of one workspace; nothing is created or read here."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    iterations_dir = _at_root(ITERATIONS, "one folder an iteration")

    def iteration_dir(self, name: str) -> Path:
        return self.iterations_dir / name

    def pruned_dir(self, name: str) -> Path:
        """Where iteration `name`'s pruned model waits for its fine-tuning job (the job's input)."""
        return self.iteration_dir(name) / PRUNED

    def recipe_path(self, name: str) -> Path:
        """The recipe of the run that made iteration `name` (`loop/recorded_recipe.py`)."""
        return self.iteration_dir(name) / RECIPE

    def view_path(self, name: str) -> Path:
        """Iteration `name`'s first view for the panel (`workspace.view`)."""
        return self.iteration_dir(name) / VIEW

    def iteration_names(self) -> list[str]:
        """The iter-NNN folders there are, by number."""
        if not self.iterations_dir.is_dir():
            return []
        found = [(n, p.name) for p in self.iterations_dir.iterdir() if (n := iteration_number(p.name)) is not None]
        return [name for _, name in sorted(found)]

    jobs_dir = _at_root(JOBS, "job records (`JobQueue`)")
    locks_dir = property(lambda self: self.jobs_dir / LOCKS, doc="per-job and per-decision file locks")
    run_lock_path = property(lambda self: self.locks_dir / RUN_LOCK,
                             doc="held by the one headless run working on the workspace (`workspace/run_lock.py`)")
    exports_dir = _at_root(EXPORTS, "iterations' models as files that run without prune_explorer")
    history_view_path = _at_root(HISTORY_VIEW, "the last tracked history the panel saw (`workspace.view`)")
    latency_table_path = _at_root(LATENCY_TABLE, "the baseline's per-layer latency table (`loop.step.latency_table`)")
    mlflow_db = _at_root(MLFLOW_DB, "the default MLflow store")
    mlartifacts = _at_root(MLARTIFACTS, "the default MLflow store's artifacts")

    def is_workspace(self) -> bool:
        """Whether the root looks like a workspace (it has an iterations folder)."""
        return self.iterations_dir.is_dir()


# --- a job's outputs (any out dir: an iteration's folder, a SageMaker job's model dir) -------------
def metrics_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / METRICS


def trial_dir(out_dir: str | os.PathLike) -> Path:
    """Where a job leaves its trial in its out (or checkpoint) dir."""
    return Path(out_dir) / TRIAL


def train_log(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / TRAIN_LOG


def sibling_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """Iteration `name`'s folder beside the iteration folder `out_dir` (a job's parent, seen from the job)."""
    return Path(out_dir).parent / name


def cut_path(out_dir: str | os.PathLike) -> Path:
    """An iteration's record of its accuracy right after the cut, before fine-tuning."""
    return Path(out_dir) / CUT_ACCURACY


def cut_record(accuracy: float, examples: int, slice: dict[str, Any]) -> dict[str, Any]:
    """What cut.json holds: the pruned model's accuracy on `examples` validation images (`slice`: which)."""
    return {"accuracy": float(accuracy), "examples": int(examples), "slice": slice}


def read_cut_accuracy(out_dir: str | os.PathLike) -> float | None:
    """An iteration's accuracy right after its cut (cut.json), None when it was not measured."""
    try:
        return float(json.loads(cut_path(out_dir).read_text())["accuracy"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def _field(key: str, doc: str) -> property:
    return property(lambda self: self.get(key), doc=doc)


def _section(key: str, doc: str) -> property:
    return property(lambda self: dict(self.get(key) or {}), doc=doc)


class Metrics(dict):
    """metrics.json as a dict, with its fields by name: read them here, not by key."""

    status = _field("status", "completed | stopped | failed")
    reason = _field("reason", "why it stopped or failed")
    script = _field("script", 'what ran the job: "prune_explorer.jobs.train" or the user\'s script\'s file name')
    trial = _field("trial", "where the job left its trial")
    params = _field("params", "the saved model's parameters")
    macs = _field("macs", "the saved model's MACs per example")
    config = _section("config", "the job's parsed arguments (`JobSpec`)")
    data_recipe = _section("data_recipe", "how the job fed its model (train.py's normalize / augment)")
    teacher = _section("teacher", "a distilled job's teacher: model, distill, alpha, temperature, cost, digests")
    num_classes = _field("num_classes", "the classes of the model's head, when the job recorded them")

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return [e for e in self.get("epochs") or [] if isinstance(e, dict)]

    @property
    def accuracies(self) -> list[float]:
        """The validation accuracy of each reported epoch, in order."""
        return [float(a) for e in self.epochs if isinstance(a := e.get("val_accuracy"), (int, float))]

    @property
    def best_accuracy(self) -> float | None:
        """The job's best validation accuracy, else the max over its epochs (None when it reported none)."""
        return best_accuracy(self.get("best_accuracy"), self.accuracies)

    @property
    def input_shape(self) -> list[int] | None:
        """One example's shape (C, H, W) as the job's model received it."""
        shape = self.get("input_shape")
        return [int(s) for s in list(shape)[-3:]] if shape else None

    def cost(self) -> dict[str, Any]:
        """params, macs, latency_ms of the saved model."""
        return {k: self.get(k) for k in ("params", "macs", "latency_ms")}

    def with_verdict(self, status: str, reason: str | None) -> "Metrics":
        """A copy with another status and reason (a rule's verdict after the job)."""
        return Metrics({**self, "status": status, "reason": reason})


def best_accuracy(best: float | None, accuracies: Iterable[float | None]) -> float | None:
    """`best` when known, else the max of the per-epoch `accuracies` (None when there are none)."""
    if best is not None:
        return float(best)
    return max((float(a) for a in accuracies if a is not None), default=None)


def read_metrics(out_dir: str | os.PathLike, missing_ok: bool = True) -> Metrics:
    """A job's metrics.json in `out_dir` ({} when absent and `missing_ok`); ValueError naming a broken file."""
    path = metrics_path(out_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return Metrics()
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return Metrics(data)


def recorded_input_shape(model_dir: str | os.PathLike) -> list[int] | None:
    """The input shape a saved model's job recorded: its folder's metrics.json, or for an iteration's
    pruned model (not fine-tuned yet) the iteration's one level up."""
    model_dir = Path(model_dir)
    candidates = [model_dir] + ([model_dir.parent] if model_dir.name == PRUNED else [])
    return next((s for d in candidates if (s := read_metrics(d).input_shape)), None)


def job_metrics(*, status: str, reason: str | None, epochs: list[dict[str, Any]], best_accuracy: float,
                cost: dict[str, Any], trial: str | None, model: str, input_shape: list[int], first_batch: Any,
                world_size: int, baseline_accuracy: float | None, script: str | None, unused: list[str],
                extra: dict[str, Any], config: dict[str, Any]) -> Metrics:
    """What a finished job writes (the job contract's `finish`); `extra` is the script's own fields."""
    return Metrics({
        "status": status, "reason": reason, "epochs": epochs, "best_accuracy": best_accuracy,
        "final_accuracy": epochs[-1]["val_accuracy"] if epochs else None, **cost, "trial": trial, "model": model,
        "input_shape": list(input_shape), "first_batch": first_batch, "world_size": world_size,
        "baseline_accuracy": baseline_accuracy, "script": script, "unused_hyperparameters": unused, **extra,
        "config": config,
    })


def data_recipe_metrics(normalize: str | None, augment: bool | None) -> dict[str, Any]:
    """The default training script's extra metrics field: how it fed the model, which a child inherits."""
    return {"data_recipe": {"normalize": normalize, "augment": augment}}


def failed_metrics(reason: str, config: dict[str, Any]) -> Metrics:
    """What a job that raised leaves."""
    return Metrics({"status": "failed", "reason": reason, "config": config})


def epoch_record(epoch: int, val_accuracy: float, seconds: float, values: dict[str, Any],
                 cpu_seconds: float | None = None) -> dict[str, Any]:
    """One entry of metrics.json's `epochs`: its number, the script's numbers, accuracy, wall and CPU time."""
    return {"epoch": epoch, **values, "val_accuracy": float(val_accuracy), "seconds": seconds,
            "cpu_seconds": cpu_seconds}


EPOCH_BOOKKEEPING = ("epoch", "seconds", "cpu_seconds")  # an epoch record's fields that are not the job's numbers


def teacher_record(*, model: str | os.PathLike, calls: int, seconds: float, cpu_seconds: float, digest_before: str,
                   digest_after: str) -> dict[str, Any]:
    """A distillation teacher as metrics.json's `teacher` entry keeps it: where it came from, what its
    forwards cost, and its weights' digest before and after (equal: it was frozen)."""
    return {"model": str(model), "calls": calls, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "weights_sha256_before": digest_before, "weights_sha256_after": digest_after}


def teacher_metrics(record: dict[str, Any], distill: str | None, alpha: float, temperature: float) -> dict[str, Any]:
    """metrics.json's extra field of a distilled job (`jobs/distill.py`): the teacher and its settings."""
    return {"teacher": {**record, "distill": distill, "alpha": alpha, "temperature": temperature}}


def write_metrics(directories: Iterable[str | os.PathLike | None], metrics: dict[str, Any]) -> list[Path]:
    """Write metrics.json into each of `directories` (None and repeats skipped), atomically."""
    targets: list[Path] = []
    for directory in directories:
        if directory and Path(directory).resolve() not in targets:
            targets.append(Path(directory).resolve())
    return [write_json(metrics_path(d), metrics) for d in targets]


# --- writes and locks ----------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False,
                 replace: bool = True, what: str = "the file") -> bool:
    """Write `path` through `write(open file)` into a temp file beside it, then one rename: readers
    never see half a file and a failure leaves none. The umask applies (not mkstemp's 0600).
    `replace=False` never replaces a file another process put there first (then False). An OSError
    that names no file (a full disk) is raised again naming `path`: "cannot write `what`: why"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    except OSError as exc:
        if exc.filename is None:  # e.g. a full disk: name the file it was for
            raise OSError(exc.errno, f"cannot write {what}: {exc.strerror or exc}", str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any, **dump: Any) -> Path:
    """`data` as indented JSON, atomically; values JSON does not know are written as their str()."""
    atomic_write(path, lambda f: json.dump(data, f, indent=1, default=str, **dump))
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    atomic_write(path, lambda f: f.write(text))
    return Path(path)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing): excludes other processes and other threads alike."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
