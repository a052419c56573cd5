"""The workspace on disk: the one owner of WORKSPACE/, used by the loop, the panel, the notebooks and the CLI.

Its layout — every folder and file name, metrics.json's keys, the atomic write — is `layout.py`'s;
`Workspace` builds on it: names (the baseline, then `iter-NNN`, each reserved with an exclusive
mkdir, so a panel and `prune-explorer run` on one workspace never take the same one), lineage (each
iteration's parent, from the job that made it), the baseline (trained once, and refused when it was
trained with other settings), an iteration's example inputs and fine-tuning recipe, locks (the
run lock: one headless run a workspace, `run_lock.py`) and writes. The step rank → plan → prune → save → submit that runs on it is `loop.step`'s, the
recipe each lineage records `loop.recorded_recipe`'s. Jobs write only into the folder it gives them.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from ..jobs.base import COMPLETED, STOPPED, TRUST_ARGUMENT, Job, read_records
from ..jobs.queue import JobQueue
from ..model.trust import trusted_modules
from .layout import (BASELINE, MODEL_SPEC, Layout, atomic_write, cut_path, cut_record, file_lock, has_model, iteration_name,
                     iteration_number, metrics_path, read_metrics, trial_dir, write_json)

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


@dataclass(frozen=True)
class Iteration:
    """A model in the workspace: its name, folder and best validation accuracy (None when unknown)."""

    name: str
    directory: Path
    accuracy: float | None


class Workspace(Layout):
    """WORKSPACE/ on disk; every write into it goes through here (or through the queue and trackers it feeds)."""

    def __init__(self, root: str | os.PathLike, *, trust_code: Any = None, outputs: Any = None):
        super().__init__(Path(root).resolve())
        self.root.mkdir(parents=True, exist_ok=True)
        # the modules whose model classes its model.json files may name (model/trust.py); its jobs get them too
        self.trust_code = trusted_modules(trust_code)
        self.outputs = outputs or None   # the model outputs kept when its models are traced (None: every one)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def queue(self, backend: Any = "local", tracker: Any = None, **options: Any) -> JobQueue:
        """The JobQueue over this workspace's job records."""
        return JobQueue(self.root, backend=backend, tracker=tracker, **{"trust_code": self.trust_code, **options})

    # --- names and lineage -----------------------------------------------------------------
    def reserve_iteration(self) -> str:
        """The next free `iter-NNN`, taken with an exclusive mkdir (safe across threads and processes)."""
        self.iterations_dir.mkdir(parents=True, exist_ok=True)
        while True:
            name = iteration_name(max(map(iteration_number, self.iteration_names()), default=0) + 1)
            try:
                self.iteration_dir(name).mkdir()
            except FileExistsError:
                continue  # another process took it between the listing and the mkdir
            return name

    def has_model(self, name: str, pruned: bool = False) -> bool:
        """Whether iteration `name` has a saved model (its fine-tuned one, or with `pruned` its job's input)."""
        return has_model(self.pruned_dir(name) if pruned else self.iteration_dir(name))

    def iteration(self, name: str) -> Iteration:
        directory = self.iteration_dir(name)
        return Iteration(name, directory, read_metrics(directory).best_accuracy)

    def completed_iterations(self) -> list[str]:
        """Names of the iter-NNN iterations whose fine-tuning completed (not stopped by a rule), oldest first."""
        return [name for name in self.iteration_names()
                if self.has_model(name) and read_metrics(self.iteration_dir(name)).status == COMPLETED]

    def start_point(self, start_from: str = "latest") -> Iteration:
        """The iteration to prune next: "latest" completed (the baseline when none), "baseline", or a named one."""
        if start_from == BASELINE:
            return self.iteration(BASELINE)
        done = self.completed_iterations()
        if start_from == "latest":
            return self.iteration(done[-1] if done else BASELINE)
        if start_from in done:
            return self.iteration(start_from)
        raise ValueError(f"start_from (--from): {start_from!r} is not a completed iteration of {self.root} "
                         f"(completed: {', '.join(done) or 'none'}; or 'latest', 'baseline')")

    def jobs_of(self, name: str) -> list[Job]:
        """The job records that produce iteration `name`, oldest first."""
        found = [job for job in read_records(self.jobs_dir) if job.iteration == name]
        return sorted(found, key=lambda j: (j.created, j.id))

    def made_by(self, name: str) -> Job | None:
        """The job that made iteration `name`: its latest completed one, else its latest one."""
        jobs = self.jobs_of(name)
        completed = [j for j in jobs if j.status == COMPLETED]
        return (completed or jobs or [None])[-1]

    def lineage(self, name: str) -> list[str]:
        """`name` and its ancestors (each one's parent is that of the job that made it), baseline first."""
        parents: dict[str, str | None] = {}
        for job in read_records(self.jobs_dir):
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
            if self.has_model(BASELINE) and metrics_path(self.iteration_dir(BASELINE)).is_file():
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

    def _checked_baseline(self, wanted: dict[str, Any], settings: tuple[str, ...]):
        directory = self.iteration_dir(BASELINE)
        metrics = read_metrics(directory)
        trained = metrics.config
        if metrics.script:  # what ran it: "prune_explorer.jobs.train" or the user's script file
            trained["entry_point"] = None if metrics.script in (DEFAULT_SCRIPT, FORMER_DEFAULT_SCRIPT) else metrics.script
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

        shape = read_metrics(self.iteration_dir(name)).input_shape
        if shape:
            return torch.zeros(1, *shape)
        if model is None:
            raise ValueError(f"{metrics_path(self.iteration_dir(name))}: no input_shape recorded; "
                             "give example inputs explicitly")
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 1
        size = image_size or NATIVE_SIZE.get(dataset or "", 224)
        return torch.zeros(1, channels, size, size)

    def trial_dir(self, name: str) -> Path | None:
        trial = trial_dir(self.iteration_dir(name))
        return trial if trial.is_dir() else None

    def data_recipe(self, name: str) -> dict[str, Any]:
        """How iteration `name`'s job fed its model (metrics.json `data_recipe`: normalize, augment, and
        its image size), for its children: a pruned model carries no weights enum to imply ImageNet's
        normalisation, so without this a child of a pretrained baseline would see other inputs."""
        metrics = read_metrics(self.iteration_dir(name))
        recipe = {k: v for k, v in metrics.data_recipe.items() if k in DATA_RECIPE and v is not None}
        size = metrics.config.get("image_size")
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

    def trace(self, model: Any, example_inputs: Any):
        """The channel graph of one of its models, keeping the workspace's `outputs` (`ChannelGraph.trace`)."""
        from ..model.graph import ChannelGraph

        return ChannelGraph.trace(model, example_inputs, outputs=self.outputs)

    # --- the pruned model (a step's output, a job's input) ------------------------------
    def save_pruned(self, name: str, pruned: Any, plan: Any, parent: str | None, criterion: str | None) -> Path:
        """Save a pruned model as iteration `name`'s job input (`pruned_dir(name)`)."""
        from ..model import store

        summary = plan.summary() if hasattr(plan, "summary") else dict(plan or {})
        cut_path(self.iteration_dir(name)).unlink(missing_ok=True)  # measured for the model this replaces
        return store.save(pruned, self.pruned_dir(name),
                          metadata={"plan": summary, "criterion": criterion, "parent": parent})

    def teacher_dir(self, distill: str, parent: str | None) -> Path:
        """The saved model a fine-tune of `parent`'s child distills from: the workspace's baseline, or
        the parent itself (`distill` "baseline" | "parent")."""
        from ..jobs.spec import DISTILL_TEACHERS

        if distill not in DISTILL_TEACHERS:
            raise ValueError(f"distill: the teacher is one of {DISTILL_TEACHERS}, got {distill!r}")
        name = BASELINE if distill == "baseline" else parent
        if name is None:
            raise ValueError("distill 'parent': this job has no parent iteration to learn from")
        if not self.has_model(name):
            raise FileNotFoundError(f"distill {distill!r}: {self.iteration_dir(name)} holds no saved model "
                                    f"({MODEL_SPEC}) to teach from")
        return self.iteration_dir(name)

    # --- verdicts and run outputs ----------------------------------------------------------
    def mark_stopped(self, name: str, reason: str) -> None:
        """Record a rule's verdict in the iteration's metrics.json, where a later run reads it back."""
        directory = self.iteration_dir(name)
        metrics = read_metrics(directory)
        if not metrics:
            raise FileNotFoundError(f"{metrics_path(directory)}: no metrics to mark stopped")
        write_json(metrics_path(directory), metrics.with_verdict(STOPPED, reason))

    def write_cut_accuracy(self, name: str, accuracy: float, examples: int, slice: dict[str, Any]) -> Path:
        """Record iteration `name`'s accuracy right after its cut (`layout.cut_record`); the queue hands
        it to the tracker with the fine-tune's result (`layout.read_cut_accuracy`)."""
        return write_json(cut_path(self.iteration_dir(name)), cut_record(accuracy, examples, slice))

    def export_path(self, name: str, fmt: str) -> Path:
        """WORKSPACE/exports/<name>.<fmt>: where iteration `name`'s model is exported (the folder is made;
        `model.export.export_model` writes the file through a temp file and one rename)."""
        from ..model.export import FORMATS

        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"export: {name!r} is not an iteration name (a plain name such as iter-001)")
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        return self.exports_dir / f"{name}.{fmt}"

    def write_file(self, relative: str, write: Callable[[IO], Any], binary: bool = False) -> Path:
        """Write WORKSPACE/<relative> through `write(open file)` and one rename: never half a file."""
        atomic_write(self.root / relative, write, binary=binary)
        return self.root / relative

    def write_json(self, relative: str, data: Any) -> Path:
        return write_json(self.root / relative, data)

    def discard_pruned(self, name: str) -> bool:
        """Remove iteration `name`'s job input (pruned/), e.g. after its job failed for disk space."""
        pruned = self.pruned_dir(name)
        shutil.rmtree(pruned, ignore_errors=True)
        return not pruned.exists()

    def run_lock(self):
        """Hold the workspace for one headless run (`run_lock.hold`): WorkspaceBusy when another run has it."""
        from .run_lock import hold

        return hold(self.run_lock_path, self.root)

    @contextmanager
    def _lock(self, what: str) -> Iterator[None]:
        """A workspace-wide lock on one decision (e.g. whether to train the baseline), across processes."""
        with file_lock(self.locks_dir / f"workspace-{what}"):
            yield


def _same_setting(key: str, trained: Any, wanted: Any) -> bool:
    """Whether a recorded baseline setting is this run's. A weights file or a script is compared by its
    file name (a SageMaker job sees its weights under its channel folder, metrics.json names a script
    by its file); an unset model_kwargs is {}."""
    if key in ("weights", "entry_point") and trained is not None and wanted is not None:
        return Path(str(trained)).name == Path(str(wanted)).name
    if key == "model_kwargs":
        return (trained or {}) == (wanted or {})
    return trained == wanted


def _track_copied_baseline(tracker: Any, directory: Path, metrics: Any, backend: str) -> None:
    """A baseline copied into the workspace (never run by a queue here) is tracked once, as completed."""
    if tracker is None or tracker.run_id(BASELINE) is not None:
        return
    tracker.record(BASELINE, **metrics.cost(), accuracies=metrics.accuracies, best_accuracy=metrics.best_accuracy,
                   status=COMPLETED, model_dir=str(directory), trial_dir=metrics.trial, backend=backend,
                   script=metrics.script)
