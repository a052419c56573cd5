"""The Explorer in real JupyterLab and Voila pages (headless Chromium): it renders, reacts and round-trips a job."""
from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from playwright.sync_api import expect

from browser.conftest import ROOT, open_and_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RENDER_S = 240_000
JOB_S = 420_000


def _prunable_groups(workspace) -> int:
    import torch

    from prune_explorer.model import store
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.jobs.queue import read_metrics

    directory = workspace / "iterations" / "baseline"
    shape = read_metrics(directory)["input_shape"]
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
    yield page
    page.screenshot(path=str(artifacts / "lab-final.png"), full_page=True)
    context.close()


def test_app_notebook_renders_heatmap_and_layer_table(lab_page, served, artifacts):
    page = lab_page
    _no_widget_failures(page)
    expect(page.locator(".pe-heatmap image.heatmap")).to_have_count(1)
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
    page.locator(".pe-fill").click()
    expect(removed).to_have_text("200")


def test_apply_then_queue_completes_a_job_and_the_scatter_gains_a_point(lab_page, artifacts):
    page = lab_page
    page.locator(".pe-apply").click()
    expect(page.locator(".pe-applied")).to_contain_text("filters removed")
    page.locator(".pe-queue").click()
    expect(page.locator(".pe-job")).to_have_count(2)
    status = page.locator(".pe-job").first.locator(".pe-job-status")
    expect(status).to_have_attribute("data-status", "completed", timeout=JOB_S)
    expect(page.locator(".pe-history-count span")).to_have_attribute("data-count", "2")
    expect(page.locator(".pe-error")).to_have_text("")
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-after-job.png"))


def test_clicking_a_point_rebases_on_that_iteration(lab_page, artifacts):
    page = lab_page
    dots = page.locator(".pe-scatter .dot")
    expect(dots).to_have_count(3)  # two iterations + the ring marking the base
    dots.nth(1).click(force=True)
    expect(page.locator(".pe-status")).to_contain_text("based on iter-001", timeout=RENDER_S)
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("0")
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-rebased.png"))


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
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    # Voila runs the whole app notebook before it sends the page: wait for the panel, not for "load"
    page.goto(voila["url"], wait_until="commit")
    expect(page.locator(".pe-explorer")).to_be_visible(timeout=RENDER_S)
    _no_widget_failures(page)
    expect(page.locator(".pe-heatmap image.heatmap")).to_have_count(1)
    expect(page.locator(".pe-layer-row")).to_have_count(_prunable_groups(served["root"] / "workspace"))
    count = page.locator(".pe-layer-row").nth(0).locator(".pe-count input")
    count.fill("3")
    count.press("Enter")
    expect(page.locator(".pe-preview .pe-removed")).to_have_text("3")
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "voila-panel.png"))
    if os.environ.get("PRUNE_EXPLORER_UPDATE_DOCS"):  # refresh the README's screenshot on request only
        shutil.copy(artifacts / "voila-panel.png", ROOT / "docs" / "panel.png")
    context.close()
