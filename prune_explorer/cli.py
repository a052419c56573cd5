"""The `prune-explorer` command. Each subcommand is a thin shell over library functions."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .widgets.serve import APP_NOTEBOOK, APP_TOKEN_ENV, app_command, app_url, loopback
from .widgets.serve import SCRIPTS_ENV, TRUST_ENV  # noqa: F401 — `prune-explorer app`'s names, as tests and users import them


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on an embedded default: one measured surgery step, then the pruning loop "
        "(resnet18 on a Fashion-MNIST subset, digits when it is absent; --pretrained: EfficientNet-Lite0 "
        "with its ImageNet weights on Fashion-MNIST at 64x64)",
    )
    p.add_argument("--workspace", default=None,
                   help="where models, trials, jobs and MLflow runs go (default ./workspace, --pretrained "
                        "./workspace-pretrained)")
    p.add_argument("--surgery-only", action="store_true", help="only the surgery before/after table (~30 s)")
    p.add_argument("--pretrained", action="store_true",
                   help="the transfer demo: a pretrained network fine-tuned on a new task, pruned to below 1/3 "
                        "of its parameters (~10 min on 2 cores; needs the 'pretrained' extra)")
    p.add_argument("--fast", action="store_true", help="a tiny version of the loop (a minute): for tests and a first look")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    import dataclasses

    from . import demo
    from .default_recipe import DEFAULT_RECIPE
    from .loop import (completed_iterations, demo_config, describe_recipe, pretrained_demo_config, recorded_recipe,
                       run_loop)

    try:
        status = demo.main(demo.EFFICIENTNET_LITE0 if args.pretrained else demo.RESNET18)
    except RuntimeError as exc:  # the pretrained extra missing
        print(f"prune-explorer demo: {exc}", file=sys.stderr)
        return 1
    if status or args.surgery_only:
        return status
    workspace = args.workspace or ("workspace-pretrained" if args.pretrained else "workspace")
    config = (pretrained_demo_config if args.pretrained else demo_config)(workspace, fast=args.fast)
    if args.pretrained:  # the default recipe fills what the demo's own workspace has not recorded
        config = recorded_recipe.defaulted(config, DEFAULT_RECIPE)
    name = demo.PRETRAINED_NAME if args.pretrained else config.model
    print(f"\n- pruning loop: {name} on {config.dataset}, {describe_recipe(config)}, workspace {workspace}/")
    done = len(completed_iterations(workspace))
    if done:  # a rerun finishes an interrupted demo, or only reprints a finished one
        print(f"  {done} of them already in {workspace}/ (delete it to start over)")
    try:
        rows = run_loop(dataclasses.replace(config, iterations=max(0, config.iterations - done)))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"prune-explorer demo: {exc}", file=sys.stderr)
        return 1
    if rows.attrs.get("failed"):  # a job failed: the summary above says which
        return 1
    print(f"results: {workspace}/results.csv, plot: {workspace}/params_vs_accuracy.png; "
          f"open the panel with `make lab` (notebooks/) or `prune-explorer app --workspace {workspace}`")
    return 0


# --- rank (capture/trials/ranking) -------------------------------------------------------------
def _add_rank(sub) -> None:
    p = sub.add_parser("rank", help="rank filters from an smdebug trial (local dir or s3://)")
    p.add_argument("trial", help="trial directory or s3:// prefix")
    p.add_argument("--model", default=None,
                   help="torchvision architecture name or a saved model directory (default: as recorded in the trial)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of --model ARCH (default: as the trial records, or its job's metrics.json)")
    p.add_argument("--input-size", default=None, help="C,H,W of one example, e.g. 3,64,64 (default: as recorded)")
    _add_criterion_options(p, "taylor")
    p.add_argument("--no-normalize", action="store_true", help="the same as --normalization none (raw scores)")
    p.add_argument("--target-macs", type=float, default=None, metavar="FRACTION",
                   help="also print the plan that cuts the lowest-ranked filters until this fraction of the trial "
                        "model's MACs is left (one step; `run --target-macs` repeats it per iteration or overall)")
    p.add_argument("--scheme", default="internal", choices=("all", "internal"),
                   help="groups the --target-macs plan may cut (default internal, as `run`)")
    p.add_argument("--csv", default=None, help="write the RankTable here")
    _add_outputs_option(p)
    _add_trust_option(p)
    p.set_defaults(func=_rank)


def _rank(args) -> int:
    from .signals.ranking import rank
    from .signals.trials import open_trial

    normalize = "none" if args.no_normalize else args.normalization
    try:
        model = _rank_model(args.model, args.num_classes, args.trial, args.trust_model_code)
        example = None if args.input_size is None else _example_batch(args.input_size, "--input-size")
        trial = open_trial(args.trial, model=model, example_inputs=example, progress=True,
                           trust_code=args.trust_model_code, outputs=args.outputs or None)
        table = rank(trial.model, example, trial=trial, criterion=args.criterion, normalize=normalize)
    except (ValueError, OSError, KeyError) as exc:  # a bad trial, model directory, file or name: one line
        print(f"prune-explorer rank: {_one_line(exc)}", file=sys.stderr)
        return 2
    if not trial.complete:
        print(f"note: {trial.message}", file=sys.stderr)
    if trial.unused:
        print(f"note: {len(trial.unused)} tensor names not used, e.g. {trial.unused[0]}", file=sys.stderr)
    summary = table.groupby("group", sort=True).agg(
        layer=("layer", "first"), channels=("filter", "size"),
        min=("normalized", "min"), median=("normalized", "median"), max=("normalized", "max"))
    how = table["normalization"].iloc[0] if len(table) else normalize
    print(f"criterion {args.criterion}, normalisation {how}, {trial.steps_used} steps, schemes {', '.join(trial.schemes)}")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    _print_unassigned(trial.graph)
    if args.target_macs is not None:
        try:
            _print_budget_plan(trial, example, table, args.target_macs, args.scheme)
        except ValueError as exc:
            print(f"prune-explorer rank: {exc}", file=sys.stderr)
            return 2
    if args.csv:
        from .loop.history import write_csv

        write_csv(table, args.csv)
        print(f"wrote {len(table)} rows to {args.csv}")
    return 0


def _print_unassigned(graph, limit: int = 10) -> None:
    """The conv and linear layers no channel group holds, each with the graph's reason (never silent)."""
    unassigned = list(getattr(graph, "unassigned", {}).items()) if graph is not None else []
    if not unassigned:
        return
    print(f"not in any channel group ({len(unassigned)} conv/linear layers):")
    for layer, reason in unassigned[:limit]:
        print(f"  {layer}: {reason}")
    if len(unassigned) > limit:
        print(f"  ... and {len(unassigned) - limit} more")


def _print_budget_plan(trial, example, table, fraction: float, scheme: str) -> None:
    """The layers a `fraction`-of-the-MACs plan cuts, and the MACs it reaches."""
    from .model.costs import CostModel
    from .model.plan import PrunePlan
    from .signals.trials import _example_inputs

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--target-macs is the fraction of the MACs to keep, in (0, 1), got {fraction}")
    example = _example_inputs(example, trial.meta, trial.path)
    costs = CostModel(trial.model, example, trial.graph)
    plan = PrunePlan.lowest(table, trial.graph, scheme=scheme, costs=costs, target_macs=fraction * costs.before.macs)
    budget = plan.budget
    print(f"plan to {fraction:g} of {costs.before.macs:,} MACs: {sum(plan.summary().values())} filters, reaches "
          f"{budget['reached']:,.0f} MACs ({budget['reached'] / budget['before']:.1%})")
    for layer, removed in plan.summary().items():
        print(f"  {layer}: -{removed}")


def _add_outputs_option(p) -> None:
    p.add_argument("--outputs", type=_patterns, default=None, metavar="PATHS",
                   help="comma-separated paths of the model outputs that must keep their shape and values, e.g. "
                        "'0,1.boxes' or '!1.feats' (all but that one); the others may change shape and their "
                        "channels become prunable (default: every output)")


def _patterns(text: str) -> tuple[str, ...]:
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found:
        raise argparse.ArgumentTypeError("give at least one output path, e.g. 0 or '!1.feats'")
    return found


def _add_trust_option(p) -> None:
    p.add_argument("--trust-model-code", type=_module_names, default=(), metavar="MODULES",
                   help="comma-separated modules (and the modules under them) whose nn.Module classes a model.json, "
                        "trial or job may name, e.g. mypkg.models; without it only torchvision architectures are "
                        "rebuilt from files and nothing else is imported or run")


def _module_names(text: str) -> tuple[str, ...]:
    from .model.trust import trusted_modules  # torch-free

    try:
        return trusted_modules(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_criterion_options(p, default: str | None, shown: str = "taylor") -> None:
    """--criterion and --normalization; the library checks the names (its registries import torch)."""
    p.add_argument("--criterion", default=default,
                   help="taylor, taylor_aws, taylor_global, taylor_flops, mean_activation, apoz (from the trial) or "
                        "l1, l2 (weights); taylor_global is Molchanov 2019's squared gate gradient, compared across "
                        f"layers unnormalised; taylor_flops is the same per MAC saved (default {shown})")
    p.add_argument("--normalization", default=None, metavar="{l2,none,flops}",
                   help="how scores of different layers compare (not the input --normalize): l2 per layer, none "
                        "(raw), flops (per MAC one channel costs); default: the criterion's own (taylor_global "
                        "none, taylor_flops flops, others l2)")


def _rank_model(spec: str | None, num_classes: int | None, trial: str, trust_code: tuple[str, ...] = ()):
    """--model: a saved model directory (its model.json through the trust gate), else an architecture
    built with the trial's class count."""
    if spec is None:
        return None
    if os.path.isdir(spec) or os.sep in spec:
        from .model.store import load

        if not os.path.isfile(os.path.join(spec, "model.json")):
            raise FileNotFoundError(f"--model {spec}: not a saved model directory (no model.json in it)")
        return load(spec, trust_code=trust_code)
    from .model.zoo import build_model

    from .signals.capture import recorded_classes

    classes = num_classes if num_classes is not None else recorded_classes(trial)
    return build_model(spec, **({} if classes is None else {"num_classes": classes}))


def _one_line(exc: BaseException) -> str:
    """An exception as the one line the CLI prints: an OSError with its file, a KeyError without quotes."""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.strerror or ""):
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split("\n")[:1]) if len(text) > 400 else text.replace("\n", " ")


# --- run / history (jobs, tracking, loop) ------------------------------------------------------
RUN_DESCRIPTION = """The headless loop: baseline, then rank -> prune -> fine-tune until a stop. On a workspace with a
recorded recipe (iterations/*/recipe.json, an older loop_config.json) a setting not given is the recorded one of the
lineage it continues (the defaults below, the default recipe's included, are a new workspace's); another fine-tuning
setting (a --distill teacher too) is refused unless --new-recipe (a branch, marked in `history`); model, data,
validation set and input never change. Exit codes: 0 a normal end (the iterations, the rule, the floor, a budget);
1 a job failed or was stopped by a fault; 2 refused."""


def _add_run(sub) -> None:
    from .default_recipe import DEFAULT_RECIPE as recipe
    from .loop import LoopConfig

    d = LoopConfig()
    p = sub.add_parser("run", help="the headless loop: baseline, then rank → prune → fine-tune until a stop",
                       description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", default=d.workspace, help=f"jobs, iterations and MLflow runs live here (default ./{d.workspace})")
    p.add_argument("--dataset", default=None, help=f"{d.dataset} (default; scikit-learn's), fashion-mnist, imagefolder, caltech101")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (fashion-mnist idx files, an ImageFolder, torchvision's caltech101 layout), checked "
                        "before any work; an s3:// URI with --backend sagemaker (default: fashion-mnist's system copy)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download Fashion-MNIST or Caltech101 when absent (needs internet)")
    p.add_argument("--model", default=None,
                   help=f"torchvision architecture name, 'pkg.module:Class', or a saved model directory (default {d.model})")
    p.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="constructor arguments of the baseline architecture, e.g. '{\"image_size\": 64}'")
    p.add_argument("--weights", default=None,
                   help="pretrained start of the baseline: a torchvision weights enum (IMAGENET1K_V1, downloaded) "
                        "or a local state-dict file; the head is replaced for the data's classes (default: none)")
    p.add_argument("--normalize", default=None,
                   help="input normalisation: dataset | imagenet (default: imagenet with --weights, else the data's own)")
    p.add_argument("--augment", default=None, action=argparse.BooleanOptionalAction,
                   help="light training augmentation (default: on with --weights and for image folders)")
    p.add_argument("--entry-point", default=None, metavar="SCRIPT",
                   help="your own training script (honouring prune_explorer.jobs.contract) for every job, e.g. "
                        "src/train.py (default: prune_explorer.jobs.train)")
    p.add_argument("--source-dir", default=None, metavar="DIR",
                   help="the folder shipped with --entry-point (SageMaker: uploaded and run from /opt/ml/code)")
    _add_criterion_options(p, None, recipe["criterion"])
    p.add_argument("--per-iteration", type=int, default=None, help="filters removed per iteration without a --target-*; "
                   f"more than the model's groups can give is refused (default {d.per_iteration} when the recipe has "
                   "no MACs target; giving it replaces the default recipe's --target-macs)")
    budget = p.add_argument_group("budgets (instead of --per-iteration)")
    budget.add_argument("--target-macs", type=float, default=None, metavar="FRACTION",
                        help="cut the lowest-ranked filters until the model keeps this fraction of its MACs, e.g. 0.5 "
                             "(of each parent's, or of the baseline's with --target-scope overall); default: the "
                             f"recipe's, {recipe['target_macs']} (unless --per-iteration or --target-latency is given)")
    budget.add_argument("--target-latency", type=float, default=None, metavar="FRACTION",
                        help="the same for latency: in PyTorch eager predicted by a per-layer table measured once on "
                             "the baseline (WORKSPACE/latency_table.json); in ONNX Runtime (--latency-runtime) "
                             "measured on each cut model")
    budget.add_argument("--latency-runtime", default=None, choices=("pytorch", "onnxruntime"),
                        help=f"where latency is measured and the model ships (default {d.latency_runtime}); onnxruntime "
                             "also rounds every cut to ORT's channel block unless --round-to says otherwise")
    budget.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="keep every cut group's width a multiple of N (default: the latency runtime's channel "
                             "block, 16 with AVX-512 / 8 with AVX2 for onnxruntime, none for pytorch; 0: off)")
    budget.add_argument("--target-scope", default=None, choices=("iteration", "overall"),
                        help="iteration: every iteration keeps FRACTION of its parent's cost; overall: the run ends at "
                             "FRACTION of the baseline's, the same ratio at each of --iterations (default: the recipe's, "
                             f"{recipe['target_scope']}, with its MACs target, else {d.target_scope})")
    distill = p.add_argument_group("distillation (jobs/distill.py)")
    distill.add_argument("--distill", default=None, choices=("baseline", "parent", "none"),
                         help="fine-tune each pruned model from a frozen teacher: the baseline or the parent "
                              f"iteration; none: plain cross-entropy (default: the recipe's, {recipe['distill'] or 'none'})")
    distill.add_argument("--distill-alpha", type=float, default=None, metavar="A",
                         help="weight of the teacher's soft targets, (1-A)*CE + A*T^2*KL (default 0.9)")
    distill.add_argument("--distill-temperature", type=float, default=None, metavar="T",
                         help="softmax temperature of the distillation term (default 4)")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"at most this many new iterations (default {d.iterations})")
    p.add_argument("--from", dest="start_from", default=d.start_from, metavar="ITERATION",
                   help="where to continue in an existing workspace: latest (default: the newest completed "
                        "iteration), baseline, or an iteration name such as iter-003")
    p.add_argument("--new-recipe", action="store_true", default=None, help="fine-tuning settings other than the "
                   "recorded ones start a new branch (a new recipe id in history) instead of being refused")
    p.add_argument("--min-params", type=int, default=None, help=f"stop before going below this many params (default {d.min_params})")
    p.add_argument("--epochs", type=int, default=None, help=f"fine-tuning epochs per iteration (default {d.epochs})")
    p.add_argument("--baseline-epochs", type=int, default=None, help=f"epochs of the baseline (default {d.baseline_epochs})")
    p.add_argument("--subset", type=int, default=None, help="training examples, per class (default: the full training set)")
    p.add_argument("--val-subset", type=int, default=None, help="validation examples (default: the full validation set)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: the data's own; 224 for image folders)")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: train.py's 1e-3)")
    p.add_argument("--baseline-lr", type=float, default=None, help="learning rate of the baseline job (default: --lr)")
    p.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"),
                   help="per job: constant (default) or cosine decay over the job's steps")
    p.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay (default: train.py's 0)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the subsets, split and training (default {d.seed})")
    p.add_argument("--scheme", default=None, choices=("all", "internal"), help="'internal' (default): only "
                   "block-internal channels (the AWS example); 'all': every prunable group")
    p.add_argument("--threshold", type=float, default=None, help="stop when accuracy drops more than this (fraction) "
                   f"below the previous iteration (default {d.threshold})")
    p.add_argument("--backend", default=d.backend, choices=("local", "sagemaker"),
                   help="where fine-tuning jobs run: local processes (default) or SageMaker training jobs")
    p.add_argument("--tracker", default=d.tracker, choices=("mlflow", "sagemaker-experiments"),
                   help="where iterations are tracked: MLflow (default) or SageMaker Experiments")
    _add_tracker_options(p)
    sm = p.add_argument_group("SageMaker (--backend sagemaker)")
    sm.add_argument("--role", default=None,
                    help="execution role ARN (default $PRUNE_EXPLORER_SAGEMAKER_ROLE, else the SageMaker session's role)")
    sm.add_argument("--bucket", default=None,
                    help="S3 bucket for code and results (default $PRUNE_EXPLORER_SAGEMAKER_BUCKET, else the "
                         "SageMaker session's default bucket)")
    sm.add_argument("--instance-type", default=None, help="training instance type (default ml.g4dn.xlarge)")
    sm.add_argument("--instance-count", type=int, default=d.instance_count,
                    help="instances per job (more than one: torchrun across them; default 1)")
    sm.add_argument("--debugger", default=None, action=argparse.BooleanOptionalAction,
                    help="also run the accuracy rule as a SageMaker Debugger rule (default on; the rule always "
                         "runs inside the job too)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary table")
    _add_outputs_option(p)
    _add_trust_option(p)
    p.set_defaults(func=_run)


def _add_tracker_options(p) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI: any MLflow server, SageMaker's managed MLflow (ARN, with the "
                        "sagemaker-mlflow plugin) (default: sqlite in the workspace)")
    p.add_argument("--experiment", default=None, help="experiment name (default prune-explorer)")
    p.add_argument("--region", default=None, help="AWS region for SageMaker (default: the boto3 session's)")


def _json_object(text: str) -> dict:
    from .jobs.contract import json_object  # imported when used: building the parser stays torch-free

    return json_object(text)


def loop_config(args: argparse.Namespace):
    """The LoopConfig a parsed `prune-explorer run` command line stands for (flags map one to one; `given`
    names them), the default recipe's settings in those not given (default_recipe.unset_defaults: on a
    workspace with a recorded recipe the record decides them, loop/recorded_recipe.py)."""
    from .default_recipe import unset_defaults
    from .loop import LoopConfig

    fields = set(LoopConfig.__dataclass_fields__) - {"given"}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if given.get("distill") == "none":
        given["distill"] = None
    return LoopConfig(**{**unset_defaults(given), **given}, given=tuple(given))


def _run(args) -> int:
    from .loop import format_history, run_loop, summary
    from .loop.checks import Refused
    from .workspace.run_lock import WorkspaceBusy

    try:
        rows = run_loop(loop_config(args), progress=not args.quiet)
    except (Refused, WorkspaceBusy) as exc:
        print(f"prune-explorer run: refused: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"prune-explorer run: {exc}", file=sys.stderr)
        return 1
    if args.quiet:  # run_loop prints the summary itself when it shows progress
        print(format_history(rows))
        print(summary(rows))
    return 1 if rows.attrs.get("failed") else 0


def _add_history(sub) -> None:
    p = sub.add_parser("history", help="print the tracked iterations of a workspace")
    p.add_argument("--workspace", default="workspace", help="the workspace to read (default ./workspace)")
    p.add_argument("--tracker", default="mlflow", choices=("mlflow", "sagemaker-experiments"),
                   help="where the iterations were tracked (default mlflow)")
    _add_tracker_options(p)
    p.add_argument("--csv", default=None, metavar="OUT", help="also write the table as CSV")
    p.set_defaults(func=_history)


def _history(args) -> int:
    from .loop.history import format_history, read_history, write_csv

    try:
        history, legend = read_history(args.workspace, args.tracker, args.tracking_uri, args.experiment, args.region)
    except FileNotFoundError as exc:
        print(f"prune-explorer history: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 — a store that is not MLflow's, an unreachable server: one line
        where = args.tracking_uri or Path(args.workspace) / "mlflow.db"
        print(f"prune-explorer history: cannot read {where}: {_one_line(exc)}", file=sys.stderr)
        return 1
    print("\n".join([format_history(history), *legend]))
    try:
        if args.csv:
            write_csv(history, args.csv)
    except OSError as exc:
        print(f"prune-explorer history: --csv {args.csv}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


# --- export (model/export) ---------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write an iteration's model as ONNX or .pt2: a file that runs without prune_explorer")
    p.add_argument("iteration", metavar="ITERATION",
                   help="an iteration name in the workspace (WORKSPACE/iterations/NAME) or a saved model directory")
    p.add_argument("--format", default="onnx", choices=("onnx", "pt2"), help="onnx (ONNX Runtime, default) or pt2 (torch.export)")
    p.add_argument("--workspace", default="workspace", help="the workspace ITERATION is in (default ./workspace)")
    p.add_argument("--output", default=None, metavar="PATH", help="the file to write (default ./NAME.onnx or ./NAME.pt2)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one example's shape (default: the input_shape the model's metrics.json records)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 (default: any batch size)")
    p.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                   help="ONNX exporter: dynamo (default) or the deprecated TorchScript one")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    _add_trust_option(p)
    p.set_defaults(func=_export)


def _export(args) -> int:
    from .model.export import export_model

    try:
        model_dir, workspace = _export_source(args.iteration, Path(args.workspace))
        if args.input_shape:
            example = _example_batch(args.input_shape)
        else:  # a workspace iteration: the workspace knows its inputs; a bare directory: its metrics.json
            example = workspace.example_inputs(model_dir.name) if workspace is not None else None
        output = Path(args.output or f"{model_dir.name}.{args.format}")
        onnx_only = {"exporter": args.exporter, "opset": args.opset} if args.format == "onnx" else {}
        result = export_model(model_dir, output, format=args.format, example_inputs=example,
                              dynamic_batch=not args.static_batch, trust_code=args.trust_model_code, **onnx_only)
    except (ValueError, OSError, KeyError) as exc:  # a bad model, a missing file, a full disk: named, one line
        print(f"prune-explorer export: {_one_line(exc)}", file=sys.stderr)
        return 1
    opset = f", opset {result.opset}" if result.opset else ""
    batch = "any batch size" if result.dynamic_batch else "fixed batch"
    print(f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, {result.format} via {result.exporter}{opset}) "
          f"from {model_dir}: input {result.input_shape[0]} ({batch}), "
          f"max abs diff vs PyTorch {result.max_abs_diff:.2g}, {result.seconds:.1f} s")
    return 0


def _example_batch(shape: str, flag: str = "--input-shape"):
    """C,H,W (a flag's value) as a one-example zero batch."""
    import torch

    try:
        dims = [int(v) for v in shape.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must look like 3,64,64, got {shape!r}") from None
    return torch.zeros(1, *dims)


def _export_source(iteration: str, root: Path):
    """(model directory, its Workspace or None): ITERATION as a directory, else an iteration of the workspace."""
    given = Path(iteration)
    if given.is_dir():
        return given, None
    from .workspace import PRUNED, Workspace

    if not (root / "iterations").is_dir():
        raise FileNotFoundError(f"no directory {iteration!r}, and {root} is not a workspace (no iterations/ in it)")
    workspace = Workspace(root)
    directory = workspace.iteration_dir(iteration)
    if not directory.is_dir():
        names = sorted(p.name for p in workspace.iterations_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no iteration {iteration!r} in {root} and no directory {iteration!r}; "
                                f"iterations there: {', '.join(names) or 'none'}")
    if not workspace.has_model(iteration):
        hint = f"; the model before fine-tuning is {directory / PRUNED}" if (directory / PRUNED / "model.json").is_file() else ""
        raise FileNotFoundError(f"{directory / 'model.json'}: missing (its fine-tuning has not finished?){hint}")
    return directory, workspace


# --- app (Voila: the command line, environment and URL are widgets/serve.py's) ------------------


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="the Explorer panel as a web app (Voila, one kernel per page), behind a token")
    p.add_argument("--port", type=int, default=8866, help="port to listen on (default 8866)")
    p.add_argument("--ip", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address needs the token, and the "
                        "token crosses the network in plain HTTP: put a TLS proxy in front)")
    p.add_argument("--workspace", default="workspace", help="workspace folder the app opens (default ./workspace, where `make demo` writes)")
    p.add_argument("--notebook", default=str(APP_NOTEBOOK), help="the app notebook (default: the one shipped in prune_explorer/widgets/)")
    p.add_argument("--fast", action="store_true", help="small digits setup (PRUNE_EXPLORER_FAST=1)")
    p.add_argument("--demo", action="store_true",
                   help="on a workspace without a baseline, train the demo's in the page's kernel without asking "
                        "(without it the app says what it would train and asks, or refuses when it cannot ask)")
    p.add_argument("--token", default=None,
                   help=f"the token every request must carry (default ${APP_TOKEN_ENV}, else a random one, printed "
                        "in the URL); the page is the panel, and the panel queues jobs on this machine")
    p.add_argument("--no-token", action="store_true",
                   help="no authentication at all: refused unless --ip is a loopback address")
    p.add_argument("--allow-scripts", default=None, metavar="DIR",
                   help="show the panel's training-script fields and run scripts from DIR (and only from DIR); "
                        "without it the app runs prune_explorer.train only")
    _add_trust_option(p)
    p.set_defaults(func=_app)


def _app(args) -> int:
    from .widgets.setup import confirm_baseline
    from .widgets.supervise import supervise

    from .masking import unmasked

    workspace = Path(args.workspace).resolve()
    if not (workspace / "iterations" / "baseline" / "model.json").is_file() and not args.demo:
        if not confirm_baseline(workspace, args.fast):
            return 2
        args.demo = True
    cmd, env = app_command(args)
    print(f"prune-explorer app: {app_url(args, env)} (workspace {env['PRUNE_EXPLORER_WORKSPACE']})",
          file=unmasked(sys.stdout), flush=True)  # the one secret shown: the app's own token, to its user
    if "JUPYTER_TOKEN" not in env:
        print("prune-explorer app: no token: anyone who can reach this port can use the panel", file=sys.stderr)
    elif not loopback(args.ip):
        print(f"prune-explorer app: listening on {args.ip} over plain HTTP: the token is visible to the network; "
              "put a TLS proxy in front for anything but a trusted network", file=sys.stderr)
    return supervise(cmd, env, workspace)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="prune-explorer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"prune-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_rank, _add_run, _add_history, _add_app, _add_export):
        add(sub)
    return parser


def main(argv=None) -> int:
    from .masking import MaskedStream

    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = MaskedStream(out), MaskedStream(err)  # no credential reaches the terminal
    try:
        return int(args.func(args) or 0)
    except Exception:  # unexpected: its traceback (an MLflow error quotes the tracking URI), masked, exit 1
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout, sys.stderr = out, err


if __name__ == "__main__":
    sys.exit(main())
