"""The workspace on disk: the one owner of WORKSPACE/, used by the loop, the panel, the notebooks and the CLI.

    WORKSPACE/
      iterations/<name>/           model.json, model.safetensors, metrics.json, trial/, train.log (a job's outputs)
      iterations/<name>/pruned/    the pruned model before fine-tuning (the job's input)
      iterations/<name>/recipe.json   the run's recipe that made it (loop/recorded_recipe.py)
      jobs/<job_id>.json           job records (JobQueue), jobs/.locks/ their locks (workspace-run: the run's)
      exports/<name>.onnx|.pt2     an iteration's model as a file that runs without prune_explorer
      mlflow.db, mlartifacts/      the default MLflow store (tracking.MlflowTracker)
      results.csv, params_vs_accuracy.png, loop_config.json   what the headless loop writes
      latency_table.json           per-layer latencies measured once on the baseline (latency budgets)

It decides names (the baseline, then `iter-NNN`, each reserved with an exclusive mkdir, so a panel
and `prune-explorer run` on one workspace never take the same one), lineage (each iteration's
parent, from the job that made it), the baseline (trained once, and refused when it was trained
with other settings), an iteration's example inputs and fine-tuning recipe, and the step
rank → plan → prune → save → submit. Jobs write only into the folder it gives them.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..jobs.base import COMPLETED, STOPPED, TRUST_ARGUMENT, Job
from ..jobs.queue import JobQueue, file_lock, read_metrics
from ..model.trust import trusted_modules

BASELINE = "baseline"
PRUNED = "pruned"
WEIGHT_CRITERIA = ("l1", "l2")
NATIVE_SIZE = {"digits": 8, "fashion-mnist": 28}  # image side when a model's metrics record no input shape
BASELINE_SETTINGS = ("model", "dataset", "subset", "val_subset", "image_size", "seed", "epochs", "batch_size", "lr",
                     "lr_schedule", "weight_decay", "weights", "model_kwargs", "normalize", "augment",
                     "entry_point")  # a reused baseline must have been trained with these
UNSET_SETTINGS = {"weights": None, "model_kwargs": {}, "entry_point": None}  # compared even when a run leaves them out
PER_JOB_RULE = ("baseline_accuracy", "stop_rule_threshold")  # set for each job from its parent, never inherited
BASELINE_SCHEDULE = ("epochs", "lr", "batch_size")  # a baseline's own schedule is not a fine-tune's
PER_JOB_TEACHER = ("teacher",)  # the teacher's folder, resolved from `distill` for each job (`teacher_dir`)
BASELINE_START = ("weights", "model_kwargs")  # how the baseline was built: a fine-tune loads a saved model
DATA_RECIPE = ("normalize", "augment")  # train.py's metrics.json data_recipe, carried from parent to child
DEFAULT_SCRIPT = "prune_explorer.jobs.train"  # metrics.json `script` of a job without an entry point
FORMER_DEFAULT_SCRIPT = "prune_explorer.train"  # the same module before it moved into jobs/ (older workspaces)
_ITERATION = re.compile(r"iter-(\d+)")
LATENCY_TABLE = "latency_table.json"
RUN_LOCK = "workspace-run"  # jobs/.locks/workspace-run: held by the one headless run working on the workspace


@dataclass(frozen=True)
class Iteration:
    """A model in the workspace: its name, folder and best validation accuracy (None when unknown)."""

    name: str
    directory: Path
    accuracy: float | None


@dataclass(frozen=True)
class Ranked:
    """An iteration's model ranked for the next cut."""

    model: Any
    example_inputs: Any
    graph: Any
    table: Any


@dataclass(frozen=True)
class StepTarget:
    """What one prune step cuts the parent down to, in `unit` ("macs" or "latency_ms"): `fraction`
    of the parent's cost, or — towards an overall `final` value `steps` iterations away — the same
    ratio at every step, so the last one lands on it."""

    unit: str
    fraction: float | None = None
    final: float | None = None
    steps: int = 1
    runtime: str | None = None  # unit "latency_ratio": the runtime the cut is measured in (model/runtime_budget.py)

    def value(self, before: float) -> float:
        if self.final is None:
            return before * self.fraction
        return before * (self.final / before) ** (1.0 / max(self.steps, 1))


@dataclass(frozen=True)
class Step:
    """What one rank → plan → prune → save → submit step did; `job` is None when it stopped first (`reason`)."""

    name: str | None
    job: Job | None
    plan: Any
    params: int
    reason: str | None = None


class Workspace:
    """WORKSPACE/ on disk; every write into it goes through here (or through the queue and trackers it feeds)."""

    def __init__(self, root: str | os.PathLike, *, trust_code: Any = None, outputs: Any = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # the modules whose model classes its model.json files may name (model/trust.py); its jobs get them too
        self.trust_code = trusted_modules(trust_code)
        self.outputs = outputs or None   # the model outputs kept when its models are traced (None: every one)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def iterations_dir(self) -> Path:
        return self.root / "iterations"

    def iteration_dir(self, name: str) -> Path:
        return self.iterations_dir / name

    def queue(self, backend: Any = "local", tracker: Any = None, **options: Any) -> JobQueue:
        """The JobQueue over this workspace's job records."""
        return JobQueue(self.root, backend=backend, tracker=tracker, **{"trust_code": self.trust_code, **options})

    # --- names and lineage -----------------------------------------------------------------
    def reserve_iteration(self) -> str:
        """The next free `iter-NNN`, taken with an exclusive mkdir (safe across threads and processes)."""
        self.iterations_dir.mkdir(parents=True, exist_ok=True)
        while True:
            taken = [int(m.group(1)) for p in self.iterations_dir.iterdir() if (m := _ITERATION.fullmatch(p.name))]
            name = f"iter-{max(taken, default=0) + 1:03d}"
            try:
                self.iteration_dir(name).mkdir()
            except FileExistsError:
                continue  # another process took it between the listing and the mkdir
            return name

    def has_model(self, name: str) -> bool:
        return (self.iteration_dir(name) / "model.json").is_file()

    def iteration(self, name: str) -> Iteration:
        directory = self.iteration_dir(name)
        return Iteration(name, directory, read_metrics(directory).get("best_accuracy"))

    def completed_iterations(self) -> list[str]:
        """Names of the iter-NNN iterations whose fine-tuning completed (not stopped by a rule), oldest first."""
        found = []
        for metrics in self.iterations_dir.glob("iter-*/metrics.json"):
            match = _ITERATION.fullmatch(metrics.parent.name)
            if match and self.has_model(metrics.parent.name) and read_metrics(metrics.parent).get("status") == COMPLETED:
                found.append((int(match.group(1)), metrics.parent.name))
        return [name for _, name in sorted(found)]

    def start_point(self, start_from: str = "latest") -> Iteration:
        """The iteration to prune next: "latest" completed (the baseline when none), "baseline", or a named one."""
        if start_from == BASELINE:
            return self.iteration(BASELINE)
        done = self.completed_iterations()
        if start_from == "latest":
            return self.iteration(done[-1] if done else BASELINE)
        if start_from in done:
            return self.iteration(start_from)
        raise ValueError(f"start_from: {start_from!r} is not a completed iteration of {self.root} "
                         f"(completed: {', '.join(done) or 'none'}; or 'latest', 'baseline')")

    def jobs_of(self, name: str) -> list[Job]:
        """The job records that produce iteration `name`, oldest first."""
        found = []
        for path in (self.root / "jobs").glob("*.json"):
            try:
                job = Job.load(path)
            except (FileNotFoundError, ValueError):
                continue
            if job.iteration == name:
                found.append(job)
        return sorted(found, key=lambda j: (j.created, j.id))

    def made_by(self, name: str) -> Job | None:
        """The job that made iteration `name`: its latest completed one, else its latest one."""
        jobs = self.jobs_of(name)
        completed = [j for j in jobs if j.status == COMPLETED]
        return (completed or jobs or [None])[-1]

    def lineage(self, name: str) -> list[str]:
        """`name` and its ancestors (each one's parent is that of the job that made it), baseline first."""
        parents: dict[str, str | None] = {}
        for path in sorted((self.root / "jobs").glob("*.json")):
            try:
                job = Job.load(path)
            except (FileNotFoundError, ValueError):
                continue
            if job.iteration:
                parents[job.iteration] = job.parent
        chain = [name]
        while isinstance(parents.get(chain[-1]), str) and parents[chain[-1]] not in chain:
            chain.append(parents[chain[-1]])
        return chain[::-1]

    # --- the baseline ----------------------------------------------------------------------
    def ensure_baseline(self, queue: JobQueue, model: str, hyperparameters: dict[str, Any],
                        settings: tuple[str, ...] = BASELINE_SETTINGS, timeout: float | None = None,
                        entry_point: str | os.PathLike | None = None,
                        source_dir: str | os.PathLike | None = None) -> Iteration:
        """The baseline iteration: reused when on disk (after checking it was trained with these
        `settings`, the training script and a pretrained start included), else trained once — by
        `entry_point` in `source_dir` when given — and a baseline job another process already runs
        is waited for."""
        wanted = {**UNSET_SETTINGS, **hyperparameters, "model": model,
                  "entry_point": None if entry_point is None else str(entry_point)}
        with self._lock("baseline"):
            if self.has_model(BASELINE) and (self.iteration_dir(BASELINE) / "metrics.json").is_file():
                metrics = self._checked_baseline(wanted, settings)
                _track_copied_baseline(queue.tracker, self.iteration_dir(BASELINE), metrics, queue.backend.name)
                return self.iteration(BASELINE)
            queue.refresh()
            running = [j for j in queue.jobs() if j.iteration == BASELINE and not j.done]
            job = running[-1] if running else queue.submit(
                model, out_dir=self.iteration_dir(BASELINE), criterion=None, iteration=BASELINE,
                hyperparameters=hyperparameters, entry_point=entry_point, source_dir=source_dir)
        job = queue.wait(job.id, timeout=timeout)
        if job.status != COMPLETED:
            raise RuntimeError(f"baseline job {job.id} {job.status}: {job.message}")
        self._checked_baseline(wanted, settings)  # another process's job may have had other settings
        return self.iteration(BASELINE)

    def copy_baseline(self, source: str | os.PathLike) -> bool:
        """Start from another workspace's trained baseline folder (so methods compare against one model);
        copied whole, then renamed into place. False when this workspace has a baseline already."""
        target = self.iteration_dir(BASELINE)
        if target.exists():
            return False
        self.iterations_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.iterations_dir, prefix=".baseline-"))
        try:
            shutil.copytree(source, staging / BASELINE)
            os.rename(staging / BASELINE, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False  # another process put one there meanwhile
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def _checked_baseline(self, wanted: dict[str, Any], settings: tuple[str, ...]) -> dict[str, Any]:
        directory = self.iteration_dir(BASELINE)
        metrics = read_metrics(directory)
        trained = dict(metrics.get("config") or {})
        if metrics.get("script"):  # what ran it: "prune_explorer.jobs.train" or the user's script file
            trained["entry_point"] = None if metrics["script"] in (DEFAULT_SCRIPT, FORMER_DEFAULT_SCRIPT) else metrics["script"]
        differ = [f"{k}={trained[k]!r} (this run: {wanted[k]!r})" for k in settings
                  if k in wanted and k in trained and not _same_setting(k, trained[k], wanted[k])]
        if differ:
            raise ValueError(f"{directory} was trained with other settings: {', '.join(differ)}. "
                             "Use another --workspace, or delete that baseline to train a new one.")
        return metrics

    # --- an iteration's inputs -------------------------------------------------------------
    def example_inputs(self, name: str, model: Any = None, image_size: int | None = None,
                       dataset: str | None = None):
        """A one-image batch shaped like the iteration's training data (its metrics.json `input_shape`).

        Without a recorded shape, `model`'s first conv gives the channels and `image_size` (or the
        dataset's native size) the side; with no model either, ValueError names the file.
        """
        import torch

        metrics_path = self.iteration_dir(name) / "metrics.json"
        shape = read_metrics(metrics_path.parent).get("input_shape")
        if shape:
            return torch.zeros(1, *[int(s) for s in list(shape)[-3:]])
        if model is None:
            raise ValueError(f"{metrics_path}: no input_shape recorded; give example inputs explicitly")
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 1
        size = image_size or NATIVE_SIZE.get(dataset or "", 224)
        return torch.zeros(1, channels, size, size)

    def trial_dir(self, name: str) -> Path | None:
        trial = self.iteration_dir(name) / "trial"
        return trial if trial.is_dir() else None

    def data_recipe(self, name: str) -> dict[str, Any]:
        """How iteration `name`'s job fed its model (metrics.json `data_recipe`: normalize, augment, and
        its image size), for its children: a pruned model carries no weights enum to imply ImageNet's
        normalisation, so without this a child of a pretrained baseline would see other inputs."""
        metrics = read_metrics(self.iteration_dir(name))
        recipe = {k: v for k, v in (metrics.get("data_recipe") or {}).items() if k in DATA_RECIPE and v is not None}
        size = (metrics.get("config") or {}).get("image_size")
        return {**recipe, "image_size": size} if size is not None else recipe

    def fine_tune_recipe(self, name: str) -> dict[str, Any]:
        """Training arguments for fine-tuning a child of `name`: its data recipe, then those of the job
        that made it, less the per-job rule and, for the baseline, less its own schedule and start."""
        job = self.made_by(name)
        if job is None:
            return {}
        recipe = {k: v for k, v in job.hyperparameters.items()
                  if k not in PER_JOB_RULE + PER_JOB_TEACHER + BASELINE_START + (TRUST_ARGUMENT,)}  # trust: the queue's to give
        if job.parent is None:
            recipe = {k: v for k, v in recipe.items() if k not in BASELINE_SCHEDULE}
        return {**self.data_recipe(name), **recipe}

    def training_script(self, name: str) -> dict[str, str | None]:
        """The entry point and source dir of the job that made iteration `name` (None, None: train.py)."""
        job = self.made_by(name)
        return {"entry_point": job.entry_point if job else None, "source_dir": job.source_dir if job else None}

    def open_iteration(self, name: str):
        """(model, example inputs, trial dir or None, fine-tuning recipe) of an iteration with a saved model."""
        from ..model import store

        if not self.has_model(name):
            raise KeyError(f"iteration {name!r} has no saved model in {self.iteration_dir(name)} "
                           "(not in this workspace, or its job has not finished)")
        model = store.load(self.iteration_dir(name), trust_code=self.trust_code)
        return model, self.example_inputs(name), self.trial_dir(name), self.fine_tune_recipe(name)

    # --- the step --------------------------------------------------------------------------
    def trace(self, model: Any, example_inputs: Any):
        """The channel graph of one of its models, keeping the workspace's `outputs` (`ChannelGraph.trace`)."""
        from ..model.graph import ChannelGraph

        return ChannelGraph.trace(model, example_inputs, outputs=self.outputs)

    def rank_iteration(self, name: str, criterion: str = "taylor", criterion_fn: Callable | None = None,
                       capture: str = "compact", image_size: int | None = None,
                       dataset: str | None = None, normalization: str | None = None) -> Ranked:
        """Load an iteration's model, trace it and rank its filters (from its trial unless l1/l2);
        `normalization` as `rank`'s `normalize` (None: the criterion's own)."""
        from ..model import store
        from ..signals.ranking import rank
        from ..signals.trials import open_trial

        directory = self.iteration_dir(name)
        model = store.load(directory, trust_code=self.trust_code).eval()
        x = self.example_inputs(name, model, image_size=image_size, dataset=dataset)
        graph = self.trace(model, x)
        trial = None
        if capture != "none" and (criterion_fn is not None or criterion not in WEIGHT_CRITERIA):
            trial = open_trial(directory / "trial", model=model, example_inputs=x, graph=graph)
        table = rank(model, x, trial=trial, criterion=criterion_fn or criterion, graph=graph, normalize=normalization)
        return Ranked(model, x, graph, table)

    def latency_table(self, image_size: int | None = None, dataset: str | None = None, progress: bool = False):
        """The per-layer latency table of the baseline model (measured on first use on this machine,
        then read from WORKSPACE/latency_table.json); it serves every iteration pruned from it."""
        from ..model import store
        from ..model.latency import LatencyTable

        path = self.root / LATENCY_TABLE
        if path.is_file():
            return LatencyTable.load(path)
        if not self.has_model(BASELINE):
            raise FileNotFoundError(f"{self.iteration_dir(BASELINE)}: a latency table is measured on the baseline, "
                                    "which is not trained yet")
        model = store.load(self.iteration_dir(BASELINE), trust_code=self.trust_code).eval()
        x = self.example_inputs(BASELINE, model, image_size=image_size, dataset=dataset)
        table = LatencyTable.measure(model, x, self.trace(model, x), progress=progress)
        table.save(path)   # a temp file beside it, then a rename
        return table

    def save_pruned(self, name: str, pruned: Any, plan: Any, parent: str | None, criterion: str | None) -> Path:
        """Save a pruned model as iteration `name`'s job input (iterations/<name>/pruned/)."""
        from ..model import store

        summary = plan.summary() if hasattr(plan, "summary") else dict(plan or {})
        return store.save(pruned, self.iteration_dir(name) / PRUNED,
                          metadata={"plan": summary, "criterion": criterion, "parent": parent})

    def submit(self, queue: JobQueue, name: str, *, parent: str | None, plan: Any, criterion: str | None,
               hyperparameters: dict[str, Any], **submit_options: Any) -> Job:
        """Queue the fine-tuning of iteration `name`'s pruned model; its outputs land in iterations/<name>/.
        Further keyword arguments go to `JobQueue.submit` as they are."""
        pruned = self.iteration_dir(name) / PRUNED
        if not (pruned / "model.json").is_file():
            raise FileNotFoundError(f"{pruned}: no pruned model saved for {name} (apply a plan first)")
        if hyperparameters.get("distill") is not None:  # the teacher's folder, for this job
            hyperparameters = {**hyperparameters, "teacher": str(self.teacher_dir(hyperparameters["distill"], parent))}
        return queue.submit(pruned, out_dir=self.iteration_dir(name), parent=parent, plan=plan, criterion=criterion,
                            hyperparameters=hyperparameters, iteration=name, **submit_options)

    def teacher_dir(self, distill: str, parent: str | None) -> Path:
        """The saved model a fine-tune of `parent`'s child distills from: the workspace's baseline, or
        the parent itself (`distill` "baseline" | "parent")."""
        from ..jobs.distill import DISTILL_TEACHERS

        if distill not in DISTILL_TEACHERS:
            raise ValueError(f"distill: the teacher is one of {DISTILL_TEACHERS}, got {distill!r}")
        name = BASELINE if distill == "baseline" else parent
        if name is None:
            raise ValueError("distill 'parent': this job has no parent iteration to learn from")
        if not self.has_model(name):
            raise FileNotFoundError(f"distill {distill!r}: {self.iteration_dir(name)} holds no saved model "
                                    "(model.json) to teach from")
        return self.iteration_dir(name)

    def prune_step(self, queue: JobQueue, parent: Iteration, *, criterion: str, per_iteration: int,
                   scheme: str, hyperparameters: dict[str, Any], min_params: int = 0,
                   criterion_fn: Callable | None = None, capture: str = "compact",
                   image_size: int | None = None, dataset: str | None = None, normalization: str | None = None,
                   target: StepTarget | None = None, latency: Any = None, round_to: int | None = None,
                   **submit_options: Any) -> Step:
        """Rank `parent`, plan its lowest `per_iteration` filters — or, with `target`, as many as bring it
        to the target's MACs or latency (`latency`: a LatencyTable; unit "latency_ratio": measured in the
        target's runtime), every touched group keeping a multiple of `round_to` — prune, and, unless nothing is left
        to cut, the target cannot be reached or the result falls below `min_params` (then nothing is
        written), save and submit."""
        from ..model.measure import count
        from ..model.surgery import prune

        ranked = self.rank_iteration(parent.name, criterion, criterion_fn, capture, image_size, dataset, normalization)
        try:
            plan = _plan(ranked, per_iteration, scheme, target, latency, round_to)
        except ValueError as exc:
            if target is None:
                raise
            return Step(None, None, None, 0, f"pruning {parent.name}: {exc}")
        if len(plan) == 0:
            why = "at the target already" if target is not None else "every group at its minimum"
            return Step(None, None, None, 0, f"nothing left to prune in {parent.name} ({why})")
        pruned = prune(ranked.model, plan, ranked.example_inputs, graph=ranked.graph)
        params = int(count(pruned, ranked.example_inputs).params)
        if params < min_params:
            return Step(None, None, plan, params, f"pruning {parent.name} further would leave {params:,} params, "
                                                  f"below the floor of {min_params:,}")
        name = self.reserve_iteration()
        try:
            self.save_pruned(name, pruned, plan, parent=parent.name, criterion=criterion)
        except BaseException:  # e.g. a full disk: the save left nothing, and the reserved name goes too
            shutil.rmtree(self.iteration_dir(name), ignore_errors=True)
            raise
        job = self.submit(queue, name, parent=parent.name, plan=plan, criterion=criterion,
                          hyperparameters=hyperparameters, **submit_options)
        return Step(name, job, plan, params)

    # --- verdicts and run outputs ----------------------------------------------------------
    def mark_stopped(self, name: str, reason: str) -> None:
        """Record a rule's verdict in the iteration's metrics.json, where a later run reads it back."""
        directory = self.iteration_dir(name)
        metrics = read_metrics(directory)
        if not metrics:
            raise FileNotFoundError(f"{directory / 'metrics.json'}: no metrics to mark stopped")
        metrics.update(status=STOPPED, reason=reason)
        self.write_file(f"iterations/{name}/metrics.json",
                        lambda path: Path(path).write_text(json.dumps(metrics, indent=1, default=str)))

    def export_path(self, name: str, fmt: str) -> Path:
        """WORKSPACE/exports/<name>.<fmt>: where iteration `name`'s model is exported (the folder is made;
        `model.export.export_model` writes the file through a temp file and one rename)."""
        from ..model.export import FORMATS

        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"export: {name!r} is not an iteration name (a plain name such as iter-001)")
        folder = self.root / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.{fmt}"

    def write_file(self, relative: str, write: Callable[[str], Any]) -> Path:
        """Write WORKSPACE/<relative> through `write(temp_path)` and one rename: never half a file."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def write_json(self, relative: str, data: Any) -> Path:
        return self.write_file(relative, lambda path: Path(path).write_text(json.dumps(data, indent=1, default=str)))

    def discard_pruned(self, name: str) -> bool:
        """Remove iteration `name`'s job input (pruned/), e.g. after its job failed for disk space."""
        pruned = self.iteration_dir(name) / PRUNED
        shutil.rmtree(pruned, ignore_errors=True)
        return not pruned.exists()

    def run_lock(self):
        """Hold the workspace for one headless run (`run_lock.hold`): WorkspaceBusy when another run has it."""
        from .run_lock import hold

        return hold(self.root / "jobs" / ".locks" / RUN_LOCK, self.root)

    @contextmanager
    def _lock(self, what: str) -> Iterator[None]:
        """A workspace-wide lock on one decision (e.g. whether to train the baseline), across processes."""
        locks = self.root / "jobs" / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with file_lock(locks / f"workspace-{what}"):
            yield


def _plan(ranked: Ranked, per_iteration: int, scheme: str, target: StepTarget | None, latency: Any,
          round_to: int | None = None):
    """The step's plan: the lowest `per_iteration` filters, or down to the target."""
    from ..model.plan import PrunePlan

    if target is None:
        return PrunePlan.lowest(ranked.table, ranked.graph, n=per_iteration, scheme=scheme, round_to=round_to)
    from ..model.costs import CostModel

    costs = CostModel(ranked.model, ranked.example_inputs, ranked.graph)
    if target.unit == "macs":
        return PrunePlan.lowest(ranked.table, ranked.graph, scheme=scheme, costs=costs, round_to=round_to,
                                target_macs=target.value(costs.before.macs))
    if target.unit == "latency_ratio":  # measured in the deployment runtime, relative to the parent
        from ..model.runtime_budget import plan_to_latency

        return plan_to_latency(ranked.table, ranked.graph, ranked.model, ranked.example_inputs, target.value(1.0),
                               runtime=target.runtime or "onnxruntime", scheme=scheme, round_to=round_to, costs=costs)
    if target.unit != "latency_ms":
        raise ValueError(f"target unit must be 'macs', 'latency_ms' or 'latency_ratio', got {target.unit!r}")
    if latency is None:
        raise ValueError("a latency target needs a latency table (Workspace.latency_table())")
    return PrunePlan.lowest(ranked.table, ranked.graph, scheme=scheme, costs=costs, latency=latency, round_to=round_to,
                            target_latency_ms=target.value(latency.predict(costs)))


def _same_setting(key: str, trained: Any, wanted: Any) -> bool:
    """Whether a recorded baseline setting is this run's. A weights file or a script is compared by its
    file name (a SageMaker job sees its weights under its channel folder, metrics.json names a script
    by its file); an unset model_kwargs is {}."""
    if key in ("weights", "entry_point") and trained is not None and wanted is not None:
        return Path(str(trained)).name == Path(str(wanted)).name
    if key == "model_kwargs":
        return (trained or {}) == (wanted or {})
    return trained == wanted


def _track_copied_baseline(tracker: Any, directory: Path, metrics: dict[str, Any], backend: str) -> None:
    """A baseline copied into the workspace (never run by a queue here) is tracked once, as completed."""
    if tracker is None or tracker.run_id(BASELINE) is not None:
        return
    tracker.record(BASELINE, params=metrics.get("params"), macs=metrics.get("macs"),
                   latency_ms=metrics.get("latency_ms"),
                   accuracies=[e["val_accuracy"] for e in metrics.get("epochs", [])],
                   best_accuracy=metrics.get("best_accuracy"), status=COMPLETED, model_dir=str(directory),
                   trial_dir=metrics.get("trial"), backend=backend, script=metrics.get("script"))
