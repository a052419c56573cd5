"""What `prune-explorer app` runs: Voila, with the XSRF cookie set before the page starts streaming.

Voila streams its page while the notebook runs, so the `_xsrf` cookie Jupyter's templates would set
comes after the headers left and never reaches the browser; the page's unload beacon then posts an
empty `_xsrf` and, with the XSRF check on, its kernel is never shut down. Voila's pre-launch hook
runs before the first byte is sent: reading the handler's `xsrf_token` there sets the cookie, the
beacon carries it back, and the check stays on (`python -m prune_explorer.widgets.serve` takes
Voila's own arguments).

`app_command(args)` is that command line and its environment for `prune-explorer app`'s parsed
arguments, `app_url` where it answers; the environment names the app's kernel reads back
(`widgets/setup.py`) live here. Stdlib only: the CLI imports it to build its parser.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

APP_NOTEBOOK = Path(__file__).resolve().parent / "app.ipynb"  # package data: ships in the wheel
APP_TOKEN_ENV = "PRUNE_EXPLORER_APP_TOKEN"
WORKSPACE_ENV = "PRUNE_EXPLORER_WORKSPACE"
FAST_ENV = "PRUNE_EXPLORER_FAST"  # "1": the small digits setup (widgets/setup.fast)
APP_TRAIN_ENV = "PRUNE_EXPLORER_APP_TRAIN_BASELINE"  # "0": the app was not asked to train a baseline
TRUST_ENV = "PRUNE_EXPLORER_TRUST_MODEL_CODE"  # `prune-explorer app --trust-model-code` (setup.served_options)
SCRIPTS_ENV = "PRUNE_EXPLORER_ALLOW_SCRIPTS"  # `prune-explorer app --allow-scripts DIR`


def app_command(args) -> tuple[list[str], dict[str, str]]:
    """The Voila command line and environment `prune-explorer app` runs: token authentication (the
    token travels in JUPYTER_TOKEN, not on the command line) and the XSRF check on, as a Jupyter
    server has them; `app_url(args, env)` is the URL to open."""
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise SystemExit(f"prune-explorer app: no app notebook at {notebook} (pass --notebook PATH)")
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", TRUST_ENV, SCRIPTS_ENV)}
    env[WORKSPACE_ENV] = str(Path(args.workspace).resolve())
    env[APP_TRAIN_ENV] = "1" if getattr(args, "demo", False) else "0"  # widgets/setup.py
    if args.fast:
        env[FAST_ENV] = "1"
    if args.trust_model_code:
        env[TRUST_ENV] = ",".join(args.trust_model_code)
    if args.allow_scripts is not None:
        folder = Path(args.allow_scripts).resolve()
        if not folder.is_dir():
            raise SystemExit(f"prune-explorer app: --allow-scripts {args.allow_scripts}: no such folder")
        env[SCRIPTS_ENV] = str(folder)
    cmd = [sys.executable, "-m", "prune_explorer.widgets.serve", str(notebook), f"--port={args.port}",
           f"--Voila.ip={args.ip}", "--no-browser"]  # Voila, its XSRF cookie set before the page streams
    if args.no_token:
        if args.token is not None:
            raise SystemExit("prune-explorer app: --token and --no-token contradict each other")
        if not loopback(args.ip):
            raise SystemExit(f"prune-explorer app: --no-token with --ip {args.ip} would let anyone who reaches "
                             "the port run jobs on this machine; drop --no-token (the default token protects it)")
        return cmd, env
    import secrets

    token = args.token or os.environ.get(APP_TOKEN_ENV) or secrets.token_hex(24)
    env["JUPYTER_TOKEN"] = token
    return [*cmd, "--Voila.auto_token=True"], env


def app_url(args, env: dict[str, str]) -> str:
    """Where the app answers, with its token when it has one."""
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    token = env.get("JUPYTER_TOKEN")
    return f"http://{host}:{args.port}/" + (f"?token={token}" if token else "")


def loopback(ip: str) -> bool:
    import ipaddress

    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def set_xsrf_cookie(handler: Any, notebook: Any = None, cwd: str | None = None) -> Any:
    """Voila's prelaunch hook: give the page its `_xsrf` cookie while headers can still be set."""
    handler.xsrf_token  # noqa: B018  (reading it sets the cookie)
    return notebook


def main(argv: list[str] | None = None) -> None:
    from voila.app import Voila

    class App(Voila):
        def initialize(self, argv: Any = None) -> None:
            super().initialize(argv)
            self.voila_configuration.prelaunch_hook = set_xsrf_cookie

    App.launch_instance(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
