"""Real JupyterLab and Voila servers on 127.0.0.1, driven by pytest-playwright with Debian's Chromium.

Each server gets fresh config/data/runtime dirs and a copy of the notebooks (Lab autosaves
outputs into the copy). The baseline iteration is trained once per session before any page
opens, so run-all only pays for opening the Explorer.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import free_port, require

# A page update waits on a kernel that shares 2 cores with the panel's background work (latency
# timing, the tracker loading); expectations poll for up to this long before failing.
expect.set_options(timeout=20_000)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    require(CHROMIUM.exists(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1500, "height": 1100}}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> dict:
    """A folder with the notebooks, a workspace holding a tracked baseline, and the env the servers get."""
    root = tmp_path_factory.mktemp("served")
    for nb in [*(ROOT / "notebooks").glob("*.ipynb"), ROOT / "prune_explorer" / "widgets" / "app.ipynb"]:
        shutil.copy(nb, root / nb.name)
    env = {**os.environ, "PRUNE_EXPLORER_FAST": "1", "PRUNE_EXPLORER_WORKSPACE": str(root / "workspace"),
           "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_DATA_DIR": str(root / ".data"),
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "IPYTHONDIR": str(root / ".ipython"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    subprocess.run([sys.executable, "-c", "from prune_explorer.widgets.setup import ensure_baseline, workspace;"
                    "ensure_baseline(workspace())"], env=env, check=True, timeout=600)
    return {"root": root, "env": env}


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll until `url` answers (any HTTP status counts: the server is up)."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server not ready after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _no_comms_over_subshells(settings: Path) -> None:
    """JupyterLab 4.6 sends widget messages over a kernel subshell shared per comm target
    (ipykernel 7); when widgets close, its reference count can drop that subshell while other
    widgets still address it, and the kernel drops their messages ("Cannot handle comm_msg …:
    Unknown subshell_id"; jupyterlab/jupyterlab#19719, #19725 turn it off for the same reason).
    The panel's traffic then goes over the main shell, as it does in Voila and classic Jupyter."""
    kernels = settings / "@jupyterlab" / "apputils-extension" / "kernels-settings.jupyterlab-settings"
    kernels.parent.mkdir(parents=True, exist_ok=True)
    kernels.write_text(json.dumps({"commsOverSubshells": "disabled"}))


@pytest.fixture(scope="session")
def lab(served) -> dict:
    root, env = served["root"], served["env"]
    settings = root / ".lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"checkForUpdates": False, "fetchNews": "false"}))
    _no_comms_over_subshells(settings)
    port, token = free_port(), secrets.token_hex(16)
    log = root / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={root / '.lab-workspaces'}",
           f"--LabApp.user_settings_dir={settings}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "root": root}
    finally:
        _stop(proc)


def start_app(served: dict, *flags: str) -> tuple[subprocess.Popen, dict]:
    """`prune-explorer app FLAGS` (the CLI's own Voila command line and environment) on the served
    workspace; returns the process and {"url", "token", "log", "base"}."""
    from prune_explorer.cli import app_command, app_url, build_parser

    root, env = served["root"], served["env"]
    args = build_parser().parse_args(["app", "--notebook", str(root / "app.ipynb"), "--port", str(free_port()),
                                      "--workspace", env["PRUNE_EXPLORER_WORKSPACE"], "--fast", *flags])
    cmd, app_env = app_command(args)
    log = root / f"voila-{args.port}.log"
    passed = {k: v for k, v in app_env.items() if k.startswith("PRUNE_") or k == "JUPYTER_TOKEN"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**{k: v for k, v in env.items() if k != "JUPYTER_TOKEN"}, **passed},
                                stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        _wait_ready(f"http://127.0.0.1:{args.port}/voila/static/", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc, {"url": app_url(args, app_env), "token": app_env.get("JUPYTER_TOKEN"), "log": log,
                  "base": f"http://127.0.0.1:{args.port}/"}


@pytest.fixture(scope="session")
def voila(served) -> dict:
    """`prune-explorer app` as launched by default (a random token, XSRF checked, no script fields)."""
    proc, app = start_app(served)
    try:
        yield app
    finally:
        _stop(proc)


RUN_ALL = """async () => {
  const app = window.jupyterapp;
  await app.started; await app.restored;
  const panel = app.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  await app.commands.execute('notebook:run-all-cells');
}"""


def open_and_run(page, lab: dict, notebook: str) -> None:
    """Open a notebook in Lab (fresh workspace), wait for its kernel, run all cells."""
    url = f"{lab['url']}/lab/workspaces/{secrets.token_hex(4)}/tree/{notebook}?reset&token={lab['token']}"
    page.goto(url)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
    page.evaluate(RUN_ALL)
