"""The `prune-explorer` command. Each subcommand is a thin shell over library functions: `demo`, `rank`,
`export` and `app` here, `run` and `history` in `run.py`, the options they share in `options.py`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..workspace.layout import BASELINE, MODEL_SPEC, Layout, has_model  # standard library only: the CLI starts without torch
from ..widgets.serve import APP_NOTEBOOK, APP_TOKEN_ENV, app_command, app_url, loopback
from ..widgets.serve import SCRIPTS_ENV, TRUST_ENV  # noqa: F401 — `prune-explorer app`'s names, as tests and users import them
from .options import (_add_criterion_options, _add_outputs_option, _add_trust_option, _json_object,  # noqa: F401
                      _module_names, _one_line)
from .run import _add_history, _add_run, loop_config  # noqa: F401  (loop_config: the tests' and notebooks')


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

    from .. import demo
    from ..default_recipe import DEFAULT_RECIPE
    from ..loop import (completed_iterations, demo_config, describe_recipe, pretrained_demo_config, recorded_recipe,
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
    from ..session import PruningSession
    from ..signals.trials import _example_inputs, open_trial

    normalize = "none" if args.no_normalize else args.normalization
    try:
        model = _rank_model(args.model, args.num_classes, args.trial, args.trust_model_code)
        example = None if args.input_size is None else _example_batch(args.input_size, "--input-size")
        trial = open_trial(args.trial, model=model, example_inputs=example, progress=True,
                           trust_code=args.trust_model_code, outputs=args.outputs or None)
        session = PruningSession(trial.model, _example_inputs(example, trial.meta, trial.path), trial=trial,
                                 graph=trial.graph, criterion=args.criterion, normalization=normalize)
        table = session.table
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
    _print_unassigned(session.graph)
    if args.target_macs is not None:
        try:
            _print_budget_plan(session, args.target_macs, args.scheme)
        except ValueError as exc:
            print(f"prune-explorer rank: {exc}", file=sys.stderr)
            return 2
    if args.csv:
        from ..loop.history import write_csv

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


def _print_budget_plan(session, fraction: float, scheme: str) -> None:
    """The layers a `fraction`-of-the-MACs plan cuts (the session's plan, the loop step's), and the MACs it reaches."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--target-macs is the fraction of the MACs to keep, in (0, 1), got {fraction}")
    plan = session.plan_for(macs=fraction, scheme=scheme)
    budget = plan.budget
    print(f"plan to {fraction:g} of {session.costs.before.macs:,} MACs: {sum(plan.summary().values())} filters, "
          f"reaches {budget['reached']:,.0f} MACs ({budget['reached'] / budget['before']:.1%})")
    for layer, removed in plan.summary().items():
        print(f"  {layer}: -{removed}")


def _rank_model(spec: str | None, num_classes: int | None, trial: str, trust_code: tuple[str, ...] = ()):
    """--model: a saved model directory (its model.json through the trust gate), else an architecture
    built with the trial's class count."""
    if spec is None:
        return None
    if os.path.isdir(spec) or os.sep in spec:
        from ..model.store import load

        if not has_model(spec):
            raise FileNotFoundError(f"--model {spec}: not a saved model directory (no {MODEL_SPEC} in it)")
        return load(spec, trust_code=trust_code)
    from ..model.zoo import build_model

    from ..signals.capture import recorded_classes

    classes = num_classes if num_classes is not None else recorded_classes(trial)
    return build_model(spec, **({} if classes is None else {"num_classes": classes}))


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
    from ..model.export import export_model

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
    from ..workspace import Layout, Workspace
    from ..workspace.layout import MODEL_SPEC

    if not Layout(root).is_workspace():
        raise FileNotFoundError(f"no directory {iteration!r}, and {root} is not a workspace "
                                f"(no {Layout(root).iterations_dir.name}/ in it)")
    workspace = Workspace(root)
    directory = workspace.iteration_dir(iteration)
    if not directory.is_dir():
        names = sorted(p.name for p in workspace.iterations_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"no iteration {iteration!r} in {root} and no directory {iteration!r}; "
                                f"iterations there: {', '.join(names) or 'none'}")
    if not workspace.has_model(iteration):
        pruned = workspace.pruned_dir(iteration)
        hint = f"; the model before fine-tuning is {pruned}" if workspace.has_model(iteration, pruned=True) else ""
        raise FileNotFoundError(f"{directory / MODEL_SPEC}: missing (its fine-tuning has not finished?){hint}")
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
                        "without it the app runs prune_explorer.jobs.train only")
    _add_trust_option(p)
    p.set_defaults(func=_app)


def _app(args) -> int:
    from ..widgets.setup import confirm_baseline
    from ..widgets.supervise import supervise

    from ..masking import unmasked

    workspace = Path(args.workspace).resolve()
    if not has_model(Layout(workspace).iteration_dir(BASELINE)) and not args.demo:
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




DESCRIPTION = ("See and steer iterative structured pruning of CNNs: rank filters from a training job's trial, "
               "cut them out of the model, fine-tune, track; `demo` for a first look, `run` for the loop, "
               "`app` for the panel (`prune-explorer COMMAND --help` for each).")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="prune-explorer", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"prune-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_rank, _add_run, _add_history, _add_app, _add_export):
        add(sub)
    return parser


def main(argv=None) -> int:
    from ..masking import MaskedStream

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
