"""binder/ gives Binder every runtime dependency of pyproject.toml, and runs the notebooks like CI does."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from test_notebooks import FAST_ENV

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _binder_requirements() -> tuple[dict[str, Requirement], list[str]]:
    reqs, options = {}, []
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)
        reqs[canonicalize_name(req.name)] = req
    return reqs, options


def test_every_runtime_dependency_is_in_binder_with_the_same_range():
    reqs, _ = _binder_requirements()
    for line in _pyproject()["project"]["dependencies"]:
        wanted = Requirement(line)
        name = canonicalize_name(wanted.name)
        assert name in reqs, f"binder/requirements.txt lacks {wanted.name}"
        assert reqs[name].specifier == wanted.specifier, f"{wanted.name}: {reqs[name].specifier} != {wanted.specifier}"


def test_binder_extras_are_declared_in_pyproject():
    """Anything Binder installs beyond the runtime set must be a declared optional dependency."""
    reqs, _ = _binder_requirements()
    project = _pyproject()["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {canonicalize_name(Requirement(r).name) for r in extra}
    assert set(reqs) <= declared, set(reqs) - declared


def test_torch_comes_from_the_cpu_index():
    _, options = _binder_requirements()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options


def test_fashion_mnist_comes_from_apt_as_the_makefile_installs_it():
    apt = (BINDER / "apt.txt").read_text().split()
    assert "dataset-fashion-mnist" in apt
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    assert set(apt) <= set(packages)


def _executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def test_postbuild_installs_the_package_and_is_valid_bash():
    post = BINDER / "postBuild"
    assert _executable(post)
    assert re.search(r"pip install .*-e \.", post.read_text())
    subprocess.run(["bash", "-n", str(post)], check=True)


def test_start_runs_notebooks_with_the_ci_settings():
    start = BINDER / "start"
    assert _executable(start)
    out = subprocess.run([str(start), "env"], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    for key, value in FAST_ENV.items():
        assert env.get(key) == value
