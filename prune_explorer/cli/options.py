"""Command-line options several `prune-explorer` subcommands share, and how the CLI prints an error."""
from __future__ import annotations

import argparse


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
    from ..model.trust import trusted_modules  # torch-free

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


def _one_line(exc: BaseException) -> str:
    """An exception as the one line the CLI prints: an OSError with its file, a KeyError without quotes."""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.strerror or ""):
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split("\n")[:1]) if len(text) > 400 else text.replace("\n", " ")


def _json_object(text: str) -> dict:
    from ..jobs.contract import json_object  # imported when used: building the parser stays torch-free

    return json_object(text)
