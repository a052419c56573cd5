"""binder/ gives Binder every runtime dependency of pyproject.toml, runs the notebooks like CI does, and
says what they cost there; the meter the notebook tests hold to Binder's memory measures real processes."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from test_notebooks import APP, BINDER_MEMORY_BYTES, FAST_ENV, NOTEBOOKS, KernelMemory

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


# A process holding `parent` MiB that starts a child holding `child` MiB; both print "ready" and wait on stdin.
_HOLDER = r"""
import subprocess, sys
held = bytearray(int(sys.argv[1]) * 2**20)
child = None
if len(sys.argv) > 2:
    child = subprocess.Popen([sys.executable, __file__, sys.argv[2]], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
print("ready", flush=True)
sys.stdin.readline()
if child:
    child.communicate("")
"""


def test_kernel_memory_counts_the_kernel_and_the_processes_it_starts(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), "300", "200"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"  # both processes hold their memory now
        meter = KernelMemory()
        meter.attach(proc.pid)
        meter.stop()
        assert meter.kernel_peak >= 300 * 2**20
        assert 500 * 2**20 <= meter.anon_peak < 700 * 2**20  # both processes' buffers, each counted once
        assert meter.anon_peak < meter.resident_peak <= meter.rss_sum_peak
        assert [entry.split()[0] for entry in meter.at_peak] == ["python", "python", "files"]
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0


def test_binder_readme_states_each_notebooks_measured_peak_memory_and_time():
    """The numbers come from tests/test_notebooks.py (artifacts/notebook_memory.json); each is under the limit."""
    readme = (BINDER / "README.md").read_text()
    assert f"{BINDER_MEMORY_BYTES / 2**30:.0f} GiB" in readme
    for path in [*sorted(NOTEBOOKS.glob("*.ipynb")), APP]:
        row = re.search(rf"^\| `{re.escape(path.name)}` \|(.+)$", readme, re.M)
        assert row, f"binder/README.md has no row for {path.name}"
        peak = re.search(r"(\d+) MiB", row.group(1))
        minutes = re.search(r"(\d+(?:\.\d+)?) (?:s|min)\b", row.group(1))
        assert peak and minutes, f"{path.name}: the row must give the peak memory (MiB) and the time"
        assert int(peak.group(1)) * 2**20 < BINDER_MEMORY_BYTES
