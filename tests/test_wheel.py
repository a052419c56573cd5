"""The package as users get it: a wheel built from the repo, installed (not editable) into a fresh venv,
serves `prune-explorer app`.

The fresh venv borrows the dependencies of the venv running the tests through a .pth file (no second
torch download) and holds only the wheel itself, so nothing from the source tree can be imported.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
PAGE_S = 600


def _run(cmd, **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """(venv python, its bin dir, a clean environment) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # what the wheel is built from, copied so the build leaves the repo untouched
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "prune_explorer", source / "prune_explorer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(source)])
    (wheel,) = dist.glob("prune_explorer-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (purelib / "_prune_explorer_deps.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")  # Voila's templates, beside the deps
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], env=env, cwd=tmp)
    return {"python": python, "bin": venv / "bin", "env": env, "tmp": tmp, "purelib": purelib}


def test_the_wheel_installs_the_package_and_its_app_notebook(installed):
    where = _run([str(installed["python"]), "-c", "import prune_explorer.cli as c; print(c.__file__); "
                  "print(c.APP_NOTEBOOK.is_file())"], env=installed["env"], cwd=installed["tmp"]).split()
    assert Path(where[0]).is_relative_to(installed["purelib"]) and where[1] == "True"  # not the source tree


def test_prune_explorer_app_from_the_wheel_serves_its_page(installed):
    port = free_port()
    workspace = installed["tmp"] / "workspace"
    log = installed["tmp"] / "app.log"
    token = secrets.token_hex(16)  # the app's token from the environment: off the command line
    with open(log, "w") as out:
        app = subprocess.Popen([str(installed["bin"] / "prune-explorer"), "app", "--fast", f"--port={port}",
                                f"--workspace={workspace}"], env={**installed["env"], "PRUNE_EXPLORER_APP_TOKEN": token},
                               cwd=installed["tmp"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        page = _page(f"http://127.0.0.1:{port}/?token={token}", app, log)
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
    assert "application/vnd.jupyter.widget-view+json" in page, log.read_text()[-3000:]  # the Explorer rendered
    assert "Traceback" not in page and "RULE_JOB_STOP_SIGNAL_FILENAME" not in page
    assert (workspace / "iterations" / "baseline" / "model.json").is_file()  # the app trained its baseline


def _page(url: str, app: subprocess.Popen, log: Path) -> str:
    """The app's page once the server answers (Voila runs the notebook while it renders it)."""
    deadline = time.monotonic() + PAGE_S
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise AssertionError(f"prune-explorer app exited ({app.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=PAGE_S) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)  # not listening yet: poll again
    raise AssertionError(f"no page at {url} after {PAGE_S} s:\n{log.read_text()[-3000:]}")
