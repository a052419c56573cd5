"""The `prune-explorer` command. Each subcommand is a thin shell over library functions."""
from __future__ import annotations

import argparse
import sys


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on an embedded default")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from .demo import main as demo_main

    return demo_main()


# --- rank (capture/trials/ranking) -------------------------------------------------------------
def _add_rank(sub) -> None:
    pass


# --- run / history (jobs, tracking, loop) ------------------------------------------------------
def _add_run(sub) -> None:
    pass


def _add_history(sub) -> None:
    pass


# --- app (Voila) -------------------------------------------------------------------------------
def _add_app(sub) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-explorer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_rank, _add_run, _add_history, _add_app):
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
