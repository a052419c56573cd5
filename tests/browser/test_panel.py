"""The Explorer in real JupyterLab and Voila pages (headless Chromium): it renders, reacts and round-trips a job."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect

from browser.conftest import ROOT, open_and_run, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RENDER_S = 240_000
JOB_S = 420_000


def _prunable_groups(workspace) -> int:
    import torch

    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.workspace.layout import read_metrics

    directory = workspace / "iterations" / "baseline"
    shape = read_metrics(directory).input_shape
    return len(ChannelGraph.trace(store.load(directory), torch.zeros(1, *shape[-3:])).prunable())


def _no_widget_failures(page) -> None:
    expect(page.locator(".jupyter-widgets-error-widget")).to_have_count(0)
    expect(page.get_by_text("VBox(children=")).to_have_count(0)


@pytest.fixture(scope="module")
def lab_page(browser, lab, served, artifacts):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    open_and_run(page, lab, "app.ipynb")
    expect(page.locator(".pe-explorer")).to_be_visible(timeout=RENDER_S)
    wait_ready(page, RENDER_S)
    yield page
    page.screenshot(path=str(artifacts / "lab-final.png"), full_page=True)
    context.close()


def _drawn(page) -> None:
    """The heatmap canvas has drawn at least once (heatmap.js counts its draws)."""
    expect(page.locator(".pe-heatmap-view canvas.pe-heatmap-canvas")).to_have_count(1)
    page.wait_for_function("() => Number(document.querySelector('.pe-heatmap-view')?.dataset.draws) > 0")


def test_app_notebook_renders_heatmap_and_layer_table(lab_page, served, artifacts):
    page = lab_page
    _no_widget_failures(page)
    _drawn(page)
    groups = _prunable_groups(served["root"] / "workspace")
    expect(page.locator(".pe-heatmap-label")).to_have_count(groups)
    expect(page.locator(".pe-heatmap-label").first).to_have_text("conv1")  # layer names, not group ids
    expect(page.locator(".pe-heatmap-legend")).to_contain_text("normalised rank")
    expect(page.locator(".pe-layer-row")).to_have_count(_prunable_groups(served["root"] / "workspace"))
    expect(page.locator(".pe-history-count span")).to_have_attribute("data-count", "1")
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-panel.png"))


def test_moving_a_layer_control_updates_the_preview(lab_page):
    page = lab_page
    removed = page.locator(".pe-preview .pe-removed")
    expect(removed).to_have_text("0")
    count = page.locator(".pe-layer-row").nth(2).locator(".pe-count input")
    count.fill("5")
    count.press("Enter")
    expect(removed).to_have_text("5")
    page.locator(".pe-fill-mode button", has_text="N filters").click()  # the default fill is the recipe's MACs step
    page.locator(".pe-fill").click()
    expect(removed).to_have_text("200")


def _hover(page, row: int, column: int = 0, tries: int = 4) -> str:
    """Move the mouse over one heatmap cell; returns the hover text the page shows.

    Playwright's hover scrolls the canvas into view and waits until it is stable and not covered.
    The notebook can still shift under a mouse that has stopped (an output or a toast above it
    changes height while the kernel is busy), and a resting mouse sends no event. So the mouse
    leaves and comes back, as a user's would, until the tip names the row."""
    canvas, tip = page.locator(".pe-heatmap-canvas"), page.locator(".pe-heatmap-tip")
    for _ in range(tries):
        canvas.hover(position={"x": 1 + column, "y": 14 * row + 7})
        if _shows(tip, row):
            return tip.inner_text()
        page.mouse.move(0, 0)
    raise AssertionError(f"no hover tip on heatmap row {row} after {tries} tries: {tip.evaluate('e => e.outerHTML')}")


def _shows(tip, row: int) -> bool:
    try:
        expect(tip).to_be_visible(timeout=5_000)
        expect(tip).to_have_attribute("data-row", str(row), timeout=5_000)
        return True
    except AssertionError:
        return False


def test_hover_names_the_layer_filter_score_rank_and_whether_it_is_cut(lab_page, artifacts):
    page = lab_page
    _drawn(page)
    page.locator(".pe-clear").click()
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("0")
    layer = page.locator(".pe-heatmap-label").nth(2).inner_text()
    text = _hover(page, 2)
    assert text.startswith(f"{layer} · filter ") and " · score " in text, text
    assert "rank 1 of " in text and text.endswith("kept"), text  # the leftmost cell in sorted order: lowest rank
    count = page.locator(".pe-layer-row").nth(2).locator(".pe-count input")
    count.fill("4")
    count.press("Enter")
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("4")
    page.mouse.move(0, 0)
    page.wait_for_function("() => document.querySelector('.pe-heatmap-tip').style.display === 'none'")
    assert _hover(page, 2).endswith("cut")
    page.locator(".pe-heatmap-view").screenshot(path=str(artifacts / "lab-heatmap-hover.png"))
    count.fill("0")
    count.press("Enter")
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("0")


def test_clicking_a_heatmap_row_selects_the_layer_and_shows_its_coupled_modules(lab_page, artifacts):
    page = lab_page
    _drawn(page)
    label = page.locator(".pe-heatmap-label").nth(3)
    layer = label.inner_text()
    label.click()
    selected = page.locator(".pe-layer-row.pe-selected")
    expect(selected).to_have_count(1)
    expect(selected.locator(".pe-layer-name")).to_have_text(layer)
    expect(page.locator(".pe-coupling")).to_contain_text(layer)
    expect(page.locator(".pe-coupling-member").first).to_have_attribute("data-module", layer)
    count = selected.locator(".pe-count input")
    count.fill("6")
    count.press("Enter")
    changed = page.locator(".pe-coupling-changed")
    expect(changed.first).to_be_visible(timeout=60_000)  # the preview's pruned model gave the shapes after
    expect(page.locator(".pe-coupling-removed")).to_have_text("6")
    page.locator(".pe-coupling").screenshot(path=str(artifacts / "lab-coupling.png"))
    page.locator(".pe-heatmap-canvas").click(position={"x": 5, "y": 14 * 1 + 7})  # a click on the canvas row too
    expect(page.locator(".pe-layer-row.pe-selected .pe-layer-name").filter(
        has_text=page.locator(".pe-heatmap-label").nth(1).inner_text())).to_have_count(1)
    expect(page.locator(".pe-layer-row.pe-selected")).to_have_count(1)
    page.locator(".pe-clear").click()
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("0")


def test_the_scatter_axis_toggle_redraws_the_history_by_macs_and_back(lab_page, artifacts):
    """Clicking MACs relabels the drawn x axis, retitles its ticks and re-reports the frontier;
    params brings the first drawing back."""
    page = lab_page
    scatter = page.locator(".pe-scatter")
    label = scatter.locator("text.axislabel").filter(has_text="parameters (count)")
    expect(label).to_have_count(1)
    summary = page.locator(".pe-history-count span")
    expect(summary).to_have_attribute("data-axis", "params")
    points = summary.get_attribute("data-count")
    ticks = page.evaluate("() => [...document.querySelectorAll('.pe-scatter .axis .tick text')].map(t => t.textContent)")
    assert ticks
    page.locator(".pe-scatter-axis button", has_text="MACs").click()
    expect(summary).to_have_attribute("data-axis", "macs")
    expect(summary).to_have_attribute("data-count", points)  # every tracked iteration has its MACs
    expect(scatter.locator("text.axislabel").filter(has_text="MACs (per image)")).to_have_count(1)
    page.wait_for_function("""(before) => {
        const now = [...document.querySelectorAll('.pe-scatter .axis .tick text')].map(t => t.textContent);
        return JSON.stringify(now) !== JSON.stringify(before);
    }""", arg=ticks)
    scatter.screenshot(path=str(artifacts / "lab-scatter-macs.png"))
    page.locator(".pe-scatter-axis button", has_text="params").click()
    expect(summary).to_have_attribute("data-axis", "params")
    ticks = page.evaluate("() => [...document.querySelectorAll('.pe-scatter .pe-y-axis .tick text')].map(t => t.textContent)")
    assert ticks and len(set(ticks)) == len(ticks) and all(t.endswith("%") for t in ticks), ticks
    expect(label).to_have_count(1)


ORT_ALONE = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(x,) = session.get_inputs()
shape = [2 if isinstance(d, str) else d for d in x.shape]  # the batch dimension is symbolic
(out,) = session.run(None, {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})
assert not {"torch", "prune_explorer"} & set(sys.modules), "the file needed more than onnxruntime"
print(shape, out.shape, bool(np.isfinite(out).all()))
"""


def test_export_writes_the_applied_model_and_it_runs_in_onnxruntime_alone(lab_page, served, artifacts):
    page = lab_page
    page.locator(".pe-fill-mode button", has_text="N filters").click()  # the default fill is the recipe's MACs step
    page.locator(".pe-fill").click()
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("200")
    # the PyTorch latency after: the preview's surgery is done, so Apply reuses it (it still saves under the
    # model lock: torch.export swaps a module's tensors for fake ones while it traces, so the ONNX Runtime
    # preview's export and a save of the same model never overlap)
    expect(page.locator(".pe-preview tr[data-key='latency_ms'] td").nth(2)).to_contain_text(" ms", timeout=RENDER_S)
    page.locator(".pe-apply").click()
    expect(page.locator(".pe-applied")).to_contain_text("filters removed", timeout=RENDER_S)  # on the panel's worker
    page.locator(".pe-export-format button", has_text="onnx").click()
    page.locator(".pe-export").click()
    expect(page.locator(".pe-exported")).to_contain_text("exporting iter-001-pruned as onnx")  # not fine-tuned
    shown = page.locator(".pe-exported .pe-export-path")
    expect(shown).to_have_count(1, timeout=RENDER_S)  # the dynamo exporter runs on the panel's export worker
    path = Path(shown.get_attribute("data-path"))
    assert path == served["root"] / "workspace" / "exports" / "iter-001-pruned.onnx" and path.is_file()
    expect(page.locator(".pe-error")).to_have_text("")
    ort = page.locator(".pe-preview tr[data-key='ort_latency_ms'] td")  # before, after: from the ort-latency worker
    expect(ort.nth(1)).to_contain_text(" ms", timeout=RENDER_S)
    expect(ort.nth(2)).to_contain_text(" ms", timeout=RENDER_S)
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-export.png"))
    ran = subprocess.run([sys.executable, "-I", "-c", ORT_ALONE, str(path)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["[2,", "3,", "16,", "16]", "(2,", "10)", "True"], ran.stdout


def test_apply_then_queue_completes_a_job_and_the_scatter_gains_a_point(lab_page, artifacts):
    page = lab_page
    page.locator(".pe-fill-mode button", has_text="N filters").click()  # the default fill is the recipe's MACs step
    page.locator(".pe-fill").click()
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("200")
    applies = int(page.locator(".pe-applied-line").get_attribute("data-applies"))  # the export test applied once
    page.locator(".pe-apply").click()
    expect(page.locator(".pe-applied-line")).to_have_attribute("data-applies", str(applies + 1), timeout=RENDER_S)
    # the accuracy right after the cut: in the preview, and a hollow mark alone on the scatter until the fine-tune
    shown = page.locator(".pe-applied .pe-cut-accuracy")
    expect(shown).to_have_count(1, timeout=RENDER_S)
    cut = float(shown.get_attribute("data-value"))
    scatter = page.locator(".pe-scatter")
    expect(scatter.locator(".pe-cut-mark[data-iteration='iter-001']")).to_have_count(1)
    expect(scatter.locator(".pe-recovery")).to_have_count(0)
    epochs = page.locator(".pe-epochs input")
    epochs.fill("2")  # two epochs: a log of more lines than the folded view shows
    epochs.press("Enter")
    page.locator(".pe-queue").click()
    expect(page.locator(".pe-job")).to_have_count(2, timeout=RENDER_S)  # queued on the panel's worker
    status = page.locator(".pe-job").first.locator(".pe-job-status")
    expect(status).to_have_attribute("data-status", "completed", timeout=JOB_S)
    expect(page.locator(".pe-history-count span")).to_have_attribute("data-count", "2")
    expect(page.locator(".pe-history-count span")).to_have_attribute("data-cut", "1")
    expect(page.locator(".pe-error")).to_have_text("")
    # after its fine-tune: the tracked row carries the same number; its mark sits below the dot, joined
    link = scatter.locator(".pe-recovery[data-iteration='iter-001']")
    expect(link).to_have_count(1)
    mark = scatter.locator(".pe-cut-mark[data-iteration='iter-001']")
    dot = scatter.locator(".dot[data-iteration='iter-001']")
    expect(dot).to_have_count(1)
    geometry = {name: {k: float(loc.get_attribute(k)) for k in keys} for name, loc, keys in (
        ("link", link, ("x1", "x2", "y1", "y2")), ("mark", mark, ("cx", "cy")), ("dot", dot, ("cx", "cy")))}
    assert geometry["link"]["x1"] == geometry["link"]["x2"] == geometry["mark"]["cx"] == geometry["dot"]["cx"]
    assert (geometry["link"]["y1"], geometry["link"]["y2"]) == (geometry["mark"]["cy"], geometry["dot"]["cy"])
    assert f"{100 * cut:.1f}%" in mark.locator("title").text_content()
    job = page.locator(".pe-job").first
    expect(job.locator(".pe-job-progress span")).to_have_attribute("data-epoch", "2")
    expect(job.locator(".pe-job-record")).to_contain_text("MLflow run")
    expect(job.locator(".pe-job-log")).not_to_contain_text("INFO")
    # the job's log, folded to its latest lines; the toggle unfolds it
    log = job.locator(".pe-job-log pre")
    folded = int(log.get_attribute("data-lines"))
    assert 0 < folded <= 2
    job.locator(".pe-job-log-toggle").click()
    expect(log).not_to_have_attribute("data-lines", str(folded))
    assert int(log.get_attribute("data-lines")) > folded
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-after-job.png"))


def test_clicking_a_point_rebases_on_that_iteration(lab_page, artifacts):
    page = lab_page
    dots = page.locator(".pe-scatter .dot")
    expect(dots).to_have_count(2)  # two fine-tuned iterations (the base's ring is not a dot)
    expect(page.locator(".pe-scatter .pe-base-ring")).to_have_count(1)
    dots.nth(1).click(force=True)
    expect(page.locator(".pe-status")).to_contain_text("based on iter-001", timeout=RENDER_S)
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("0")
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-rebased.png"))


def test_lineage_click_rebases_and_compare_shows_two_iterations(lab_page, artifacts):
    page = lab_page
    nodes = page.locator(".pe-lineage-node")
    expect(nodes).to_have_count(2)
    nodes.filter(has_text="baseline").click()
    expect(page.locator(".pe-status")).to_contain_text("based on baseline", timeout=RENDER_S)
    expect(page.locator(".pe-lineage-base")).to_contain_text("baseline")
    page.locator(".pe-compare-a select").select_option("baseline")
    page.locator(".pe-compare-b select").select_option("iter-001")
    page.locator("button.pe-compare").click()
    result = page.locator(".pe-compare-result")
    expect(result).to_contain_text("layers differ in width")
    expect(result.locator(".pe-compare-changed").first).to_be_visible()
    expect(result.locator(".pe-compare-total[data-key='params']")).to_contain_text("%")
    # the table stays inside its column (long layer names wrap; the rest scrolls inside)
    table = result.locator("table").bounding_box()
    column = page.locator(".pe-lineage").bounding_box()
    assert table["x"] >= column["x"] - 1 and table["x"] + table["width"] <= column["x"] + column["width"] + 1
    page.locator(".pe-lineage").screenshot(path=str(artifacts / "lab-lineage-compare.png"))


def test_a_bad_trial_path_is_an_error_in_the_panel(browser, lab, artifacts):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import torch\n"
        "from prune_explorer.model.zoo import build_model\n"
        "from prune_explorer.widgets import Explorer\n"
        "Explorer(build_model('resnet18', num_classes=10), trial='/no/such/trial', example_inputs=torch.zeros(1, 3, 16, 16))"
    )], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, lab["root"] / "bad_trial.ipynb")
    context = browser.new_context()
    page = context.new_page()
    open_and_run(page, lab, "bad_trial.ipynb")
    expect(page.locator(".pe-error")).to_contain_text("no such trial directory: /no/such/trial", timeout=RENDER_S)
    _no_widget_failures(page)
    page.screenshot(path=str(artifacts / "lab-bad-trial.png"))
    context.close()


def test_voila_app_serves_the_panel(browser, voila, served, artifacts):
    context = browser.new_context(viewport={"width": 1280, "height": 800})  # a projector's, the README's
    page = context.new_page()
    # Voila runs the whole app notebook before it sends the page: wait for the panel, not for "load"
    page.goto(voila["url"], wait_until="commit")
    expect(page.locator(".pe-explorer")).to_be_visible(timeout=RENDER_S)
    _no_widget_failures(page)
    _drawn(page)
    expect(page.locator(".pe-layer-row")).to_have_count(_prunable_groups(served["root"] / "workspace"))
    count = page.locator(".pe-layer-row").nth(0).locator(".pe-count input")
    count.fill("3")
    count.press("Enter")
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("3")
    expect(page.locator(".pe-coupling-changed").first).to_be_visible(timeout=60_000)  # the shapes after, from surgery
    expect(page.locator(".pe-job").first).to_be_visible(timeout=RENDER_S)  # the queue (and tracker) loaded too
    # the whole panel fits the width: nothing cut off at the right edge
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(artifacts / "voila-panel.png"))  # what a 1280x800 screen shows first
    page.locator(".pe-history-count").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "voila-history.png"))  # the scatter, lineage and jobs
    if os.environ.get("PRUNE_EXPLORER_UPDATE_DOCS"):  # refresh the README's screenshots on request only
        shutil.copy(artifacts / "voila-panel.png", ROOT / "docs" / "panel.png")
        shutil.copy(artifacts / "voila-history.png", ROOT / "docs" / "panel-history.png")
    context.close()
