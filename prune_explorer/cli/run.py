"""`prune-explorer run` (the headless loop) and `prune-explorer history` (what it tracked)."""
from __future__ import annotations

import argparse
import sys

from ..workspace.layout import Layout
from .options import _add_criterion_options, _add_outputs_option, _add_trust_option, _json_object, _one_line

RUN_DESCRIPTION = """The headless loop: baseline, then rank -> prune -> fine-tune until a stop. On a workspace with a
recorded recipe (iterations/*/recipe.json, an older loop_config.json) a setting not given is the recorded one of the
lineage it continues (the defaults below are a new workspace's); another fine-tuning setting is refused unless
--new-recipe (a branch, marked in `history`); model, data, validation set and input never change. Exit codes: 0 a
normal end (the iterations, the rule, the floor, a budget); 1 a job failed or was stopped by a fault; 2 refused."""


def _add_run(sub) -> None:
    from ..loop import LoopConfig
    from ..default_recipe import DEFAULT_RECIPE

    d, recipe = LoopConfig(), DEFAULT_RECIPE
    p = sub.add_parser("run", help="the headless loop: baseline, then rank → prune → fine-tune until a stop",
                       description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", default=d.workspace, help=f"jobs, iterations and MLflow runs live here (default ./{d.workspace})")
    p.add_argument("--dataset", default=None, help=f"{d.dataset} (default; scikit-learn's), fashion-mnist, imagefolder, caltech101")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (fashion-mnist idx files, an ImageFolder, torchvision's caltech101 layout), checked "
                        "before any work; an s3:// URI with --backend sagemaker (default for fashion-mnist: its system copy; digits reads none)")
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
    _add_criterion_options(p, None, f"{recipe['criterion']}, the default recipe's")
    p.add_argument("--per-iteration", type=int, default=None, help="filters removed per iteration (refused beside a --target-*); "
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
    from ..jobs.backends import BACKENDS

    p.add_argument("--backend", default=d.backend, choices=tuple(BACKENDS),
                   help="where fine-tuning jobs run: " + "; ".join(f"{name}: {entry.description}"
                                                                   for name, entry in BACKENDS.items()))
    p.add_argument("--tracker", default=d.tracker, choices=("mlflow", "sagemaker-experiments"),
                   help="where iterations are tracked: MLflow (default) or SageMaker Experiments")
    _add_tracker_options(p)
    _add_backend_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary table")
    _add_outputs_option(p)
    _add_trust_option(p)
    p.set_defaults(func=_run)


BACKEND_OPTION = "backend_option:"  # the dest prefix of a backend's option flags


def _add_backend_options(p) -> None:
    """Each backend's options (jobs.backends.BACKENDS) as flags in a group of their own; an option
    several backends declare is one flag."""
    from ..jobs.backends import BACKENDS

    seen = set()
    for name, entry in BACKENDS.items():
        fresh = [o for o in entry.options if o.name not in seen]
        if not fresh:
            continue
        group = p.add_argument_group(f"{entry.description or name} (--backend {name})")
        for option in fresh:
            seen.add(option.name)
            kind = dict(action=argparse.BooleanOptionalAction) if option.switch else \
                dict(type=option.type, metavar=option.name.upper())
            group.add_argument(option.cli_flag, dest=BACKEND_OPTION + option.name, default=None, help=option.help,
                               **kind)


def _backend_options(args: argparse.Namespace) -> dict:
    """The backend options given on the command line; one the chosen backend does not take is refused."""
    from ..jobs.backends import BACKENDS

    given = {k[len(BACKEND_OPTION):]: v for k, v in vars(args).items() if k.startswith(BACKEND_OPTION) and v is not None}
    takes = {o.name: o for o in BACKENDS[args.backend].options}
    for name in given:
        if name not in takes:
            owners = [b for b, e in BACKENDS.items() if any(o.name == name for o in e.options)]
            flag = next(o.cli_flag for e in BACKENDS.values() for o in e.options if o.name == name)
            raise ValueError(f"{flag} is an option of backend {', '.join(owners)}, not of {args.backend!r}")
    return given


def _add_tracker_options(p) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI: any MLflow server, SageMaker's managed MLflow (ARN, with the "
                        "sagemaker-mlflow plugin) (default: sqlite in the workspace)")
    p.add_argument("--experiment", default=None, help="experiment name (default prune-explorer)")
    p.add_argument("--region", default=None, help="AWS region for SageMaker (default: the boto3 session's)")


def loop_config(args: argparse.Namespace):
    """The LoopConfig a parsed `prune-explorer run` command line stands for (flags map one to one), with the
    default recipe's settings (`default_recipe.unset_defaults`) for what is not given: a new workspace's, since
    a continued run takes the recorded recipe for them (`loop.recorded_recipe.resolve`)."""
    from ..loop import LoopConfig
    from ..default_recipe import unset_defaults

    fields = set(LoopConfig.__dataclass_fields__) - {"given", "backend_options"}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if "per_iteration" in given and set(given) & {"target_macs", "target_latency"}:  # a target would win, silently
        from ..loop.checks import RefusedValue

        target = "--target-macs" if "target_macs" in given else "--target-latency"
        raise RefusedValue(f"--per-iteration and {target} are two budgets: give one (a filter count, or the "
                           "fraction of the cost to keep)")
    if given.get("distill") == "none":
        given["distill"] = None  # plain fine-tunes, as asked (given: it overrides a recorded teacher)
    return LoopConfig(**{**unset_defaults(given), **given}, given=tuple(given), backend_options=_backend_options(args))


def _run(args) -> int:
    from ..loop import format_history, run_loop, summary
    from ..loop.checks import Refused
    from ..workspace.run_lock import WorkspaceBusy

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
    from ..loop.history import format_history, read_history, write_csv

    try:
        history, legend = read_history(args.workspace, args.tracker, args.tracking_uri, args.experiment, args.region)
    except FileNotFoundError as exc:
        print(f"prune-explorer history: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 — a store that is not MLflow's, an unreachable server: one line
        where = (f"SageMaker Experiments' experiment {args.experiment or 'prune-explorer'!r}"
                 if args.tracker == "sagemaker-experiments" else args.tracking_uri or Layout(args.workspace).mlflow_db)
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
