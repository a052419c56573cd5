"""`prune-explorer app`'s launch: a token by default (in the environment, never on the command line), the
XSRF check left on, no token only on a loopback address, and the launch's allowances passed to the kernel.
(The served app itself is tried in a browser: tests/browser/test_app_security.py.)"""
from __future__ import annotations

import pytest

from prune_explorer.cli import APP_TOKEN_ENV, SCRIPTS_ENV, TRUST_ENV, app_command, app_url, build_parser
from prune_explorer.widgets.setup import served_options


def launch(*flags: str):
    args = build_parser().parse_args(["app", *flags])
    cmd, env = app_command(args)
    return args, cmd, env


def test_by_default_a_random_token_travels_in_the_environment_and_the_url(monkeypatch):
    monkeypatch.delenv(APP_TOKEN_ENV, raising=False)
    monkeypatch.setenv("JUPYTER_TOKEN", "inherited-not-used")
    args, cmd, env = launch()
    token = env["JUPYTER_TOKEN"]
    assert len(token) == 48 and token != "inherited-not-used"
    assert token != launch()[2]["JUPYTER_TOKEN"]  # a new one each launch
    assert not any(token in part for part in cmd)  # not visible in `ps`
    assert "--Voila.auto_token=True" in cmd and not any("xsrf" in part.lower() for part in cmd)
    assert cmd[1:3] == ["-m", "prune_explorer.widgets.serve"]
    assert app_url(args, env) == f"http://127.0.0.1:8866/?token={token}"


def test_a_chosen_token_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv(APP_TOKEN_ENV, "from-the-environment-0123456789")
    assert launch()[2]["JUPYTER_TOKEN"] == "from-the-environment-0123456789"
    assert launch("--token", "from-the-flag-0123456789")[2]["JUPYTER_TOKEN"] == "from-the-flag-0123456789"


@pytest.mark.parametrize("ip", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_no_token_is_refused_on_any_address_but_loopback(ip):
    with pytest.raises(SystemExit, match=f"--no-token with --ip {ip}"):
        launch("--no-token", "--ip", ip)
    args, cmd, env = launch("--ip", ip)  # with its token, any address is allowed
    assert env["JUPYTER_TOKEN"] and f"--Voila.ip={ip}" in cmd


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "localhost"])
def test_no_token_on_loopback_is_allowed_and_says_so(ip):
    args, cmd, env = launch("--no-token", "--ip", ip)
    assert "JUPYTER_TOKEN" not in env and "--Voila.auto_token=True" not in cmd
    assert "token=" not in app_url(args, env)


def test_the_launch_passes_trusted_modules_and_the_scripts_folder_to_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv(SCRIPTS_ENV, "/inherited/not/used")
    _, _, env = launch()
    assert SCRIPTS_ENV not in env and TRUST_ENV not in env  # nothing allowed unless this launch says so
    _, _, env = launch("--allow-scripts", str(tmp_path), "--trust-model-code", "mypkg,other.models")
    assert env[SCRIPTS_ENV] == str(tmp_path.resolve()) and env[TRUST_ENV] == "mypkg,other.models"
    for name, value in ((SCRIPTS_ENV, env[SCRIPTS_ENV]), (TRUST_ENV, env[TRUST_ENV])):
        monkeypatch.setenv(name, value)
    assert served_options() == {"trust_code": "mypkg,other.models", "scripts": str(tmp_path.resolve())}
    with pytest.raises(SystemExit, match="--allow-scripts .*: no such folder"):
        launch("--allow-scripts", str(tmp_path / "absent"))
    with pytest.raises(SystemExit):
        launch("--trust-model-code", "not a module")


def test_in_the_app_without_allowances_no_script_runs_and_no_code_is_trusted(monkeypatch):
    monkeypatch.delenv(SCRIPTS_ENV, raising=False)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert served_options() == {"trust_code": None, "scripts": False}
