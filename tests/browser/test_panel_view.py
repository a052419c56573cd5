"""The panel's first view and its plots in a real browser: drawn before torch is imported in the
kernel, then Apply enabled; scatter ticks that never repeat on a narrow params range."""
from __future__ import annotations

import json

import nbformat
import pytest
from playwright.sync_api import expect

from browser.conftest import kernel_print, open_and_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RENDER_S = 240_000

WATCH = """() => {
  const seen = window.__first = {};
  const drawn = (selector) => Number(document.querySelector(selector)?.dataset.draws) > 0;
  const obs = new MutationObserver(() => {
    const apply = document.querySelector('.pe-explorer .pe-apply');
    if (!seen.drawn && apply && drawn('.pe-explorer .pe-heatmap-view') && drawn('.pe-explorer .pe-scatter-view')
        && document.querySelectorAll('.pe-explorer .pe-layer-row').length
        && document.querySelector('.pe-heatmap-label')) {
      seen.drawn = performance.now();
      seen.apply_disabled_when_drawn = apply.disabled;
      seen.rows = document.querySelectorAll('.pe-explorer .pe-layer-row').length;
    }
    if (seen.drawn && !seen.enabled && apply && !apply.disabled) { seen.enabled = performance.now(); obs.disconnect(); }
  });
  obs.observe(document.body, {subtree: true, childList: true, attributes: true,
                              attributeFilter: ['data-draws', 'disabled']});
}"""


def _notebook(root, name: str, code: str) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root / name)
    return name


def test_the_first_view_is_drawn_before_torch_is_imported_then_apply_is_enabled(browser, lab, served, artifacts):
    """The workspace's view files (what the panel or the loop left at their last open) are drawn at once;
    the model loads only after the browser painted them (`load_after_s=None`: nothing else starts it)."""
    from prune_explorer.default_recipe import DEFAULT_RECIPE
    from prune_explorer.session import PruningSession
    from prune_explorer.tracking import MlflowTracker
    from prune_explorer.workspace import Workspace, view

    space = Workspace(served["root"] / "workspace")
    opened = PruningSession.open(space, "baseline", criterion=DEFAULT_RECIPE["criterion"])  # ranked as the panel ranks
    opened.write_view()
    view.write_history(space, MlflowTracker(space.root).history())
    groups = len(opened.layers)
    opened.close()
    name = _notebook(lab["root"], "first_view.ipynb", "from prune_explorer.widgets import open_panel\n"
                     f"panel = open_panel({str(space.root)!r}, 'baseline', torch_threads=2, load_after_s=None)\n"
                     "panel")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.add_init_script(f"window.addEventListener('DOMContentLoaded', () => ({WATCH})())")
    open_and_run(page, lab, name)
    page.wait_for_function("() => window.__first && window.__first.enabled", timeout=RENDER_S, polling=100)
    seen = page.evaluate("() => window.__first")
    assert seen["apply_disabled_when_drawn"] and seen["rows"] == groups and seen["drawn"] < seen["enabled"], seen
    record = json.loads(kernel_print(page, "import json, sys\n"
                                           "print(json.dumps({'first_view': panel.first_view, "
                                           "'torch': 'torch' in sys.modules, 'ready': panel.ready}))"))
    started = record["first_view"]
    assert started["load_started_by"] == "browser", started  # the browser's paint report started the load
    assert "torch" not in started["imported"] and "torchvision" not in started["imported"], started
    assert record["torch"] and record["ready"]  # and then the model stack loaded behind the view
    expect(page.locator(".pe-apply")).to_be_enabled()
    expect(page.locator(".pe-heatmap-label")).to_have_count(groups)
    page.locator(".pe-explorer").screenshot(path=str(artifacts / "lab-first-view.png"))
    context.close()


TICKS = """
from prune_explorer.tracking import MlflowTracker
from prune_explorer.widgets.scatter import HistoryScatter
from prune_explorer.workspace.view import history_records
tracker = MlflowTracker({root!r})
rows = [("baseline", None, 11.2e6, 0.912, None), ("iter-001", "baseline", 10.9e6, 0.931, 0.70),
        ("iter-002", "iter-001", 10.5e6, 0.926, 0.81), ("iter-003", "iter-002", 10.1e6, 0.924, 0.62),
        ("iter-004", "iter-003", 9.8e6, 0.922, 0.55), ("iter-005", "iter-004", 9.4e6, 0.913, 0.48)]
for name, parent, params, tuned, cut in rows:
    tracker.record(name, parent=parent, params=params, macs=params * 150, accuracies=[tuned], cut_accuracy=cut,
                   status="completed")
scatter = HistoryScatter(lambda name: None)
scatter.show(history_records(tracker.history()), "iter-003")
scatter
"""


def test_scatter_tick_labels_never_repeat_on_a_history_from_9_4m_to_11_2m_params(browser, lab, tmp_path, artifacts):
    name = _notebook(lab["root"], "ticks.ipynb", TICKS.format(root=str(tmp_path / "ticks-ws")))
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    open_and_run(page, lab, name)
    scatter = page.locator(".pe-scatter-view")
    expect(scatter.locator(".dot")).to_have_count(6, timeout=RENDER_S)
    expect(scatter.locator(".pe-cut-mark")).to_have_count(5)
    expect(scatter.locator(".pe-recovery")).to_have_count(5)
    for axis in ("pe-x-axis", "pe-y-axis"):
        labels = scatter.locator(f".{axis} .tick text").all_text_contents()
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    x_labels = scatter.locator(".pe-x-axis .tick text").all_text_contents()
    values = [float(label.rstrip("M")) for label in x_labels]
    assert all(label.endswith("M") for label in x_labels) and values == sorted(values), x_labels
    assert 9.0 <= values[0] and values[-1] <= 11.6, x_labels  # ticks inside the range drawn
    positions = [box["x"] for box in (t.bounding_box() for t in scatter.locator(".pe-x-axis .tick text").all())]
    assert positions == sorted(positions)
    expect(scatter.locator("text.axislabel").first).to_have_text("parameters (count)")
    expect(scatter.locator("text.axislabel").nth(1)).to_have_text("validation accuracy (%)")
    scatter.screenshot(path=str(artifacts / "lab-scatter-ticks.png"))
    context.close()
