"""How fast the Explorer panel opens and reacts in a real browser (JupyterLab + headless Chromium), timed inside the page.

For a resnet18 and a resnet50 workspace (a saved baseline with a real CaptureHook trial, 32 px
inputs, tracked in MLflow, opened once before — as the loop's end or an earlier panel leaves it — so
its view files are on disk) it opens the app notebook's code (`open_panel`) and measures:
  * open: the kernel is ready (its kernel_info reply) → the panel is visible with ranks, table and
    history: the heatmap has drawn, its layer table is in the DOM and the history scatter has drawn
    (+ one animation frame); "model ready" is when Apply became enabled (the session loaded behind);
  * preview update: a layer's count input changes → the preview shows the new filter count, plus one
    requestAnimationFrame (the frame that paints it); median over repeats;
  * hover: a real mouse move onto a heatmap cell (first mousemove event) → its hover text is shown, plus
    one frame; median;
  * heatmap redraw: the sorted/natural toggle → the canvas has redrawn (heatmap.js counts draws), plus one frame;
  * accuracy after the cut (resnet18): fill the lowest 200, Apply → the accuracy right after the cut is
    shown (1,000 Fashion-MNIST validation images at 32 px), plus one frame.
Goals (issue 24): open ≤ 1.5 s (resnet18), preview ≤ 50 ms median, hover ≤ 50 ms, resnet50 heatmap
redraw ≤ 300 ms, accuracy after the cut ≤ 3 s after Apply.
Last line: `panel: open X s, preview update median Y ms, hover Z ms, resnet50 heatmap redraw W ms`.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARCHS = ("resnet18", "resnet50")
REPEATS = 11
OPEN_GOAL_S, PREVIEW_GOAL_MS, HOVER_GOAL_MS, HEATMAP_GOAL_MS, CUT_GOAL_S = 1.5, 50.0, 50.0, 300.0, 3.0

NOTEBOOK = """from prune_explorer.widgets import open_panel
panel = open_panel({workspace!r}, "baseline", torch_threads=2,
                   train_args=dict(dataset="fashion-mnist", image_size=32))  # the slice the cut is measured on
panel"""

WORKSPACE = """import json, sys, torch
from torch import nn
from prune_explorer.model import store
from prune_explorer.model.measure import count
from prune_explorer.model.zoo import build_model
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.tracking import MlflowTracker
torch.set_num_threads(1)
torch.manual_seed(0)
arch, root = sys.argv[1], sys.argv[2]
directory = f"{root}/iterations/baseline"
model = build_model(arch, num_classes=10)
x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
with CaptureHook(model, f"{directory}/trial", mode="compact", save_every=1, example_inputs=x[:1]) as hook:
    for _ in range(2):
        hook.step()
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
store.save(model.eval(), directory)
cost = count(model, x[:1])
with open(f"{directory}/metrics.json", "w") as f:
    json.dump({"status": "completed", "input_shape": [3, 32, 32], "best_accuracy": 0.5, "params": cost.params,
               "macs": cost.macs, "epochs": [{"epoch": 1, "val_accuracy": 0.5}]}, f)
tracker = MlflowTracker(root)
tracker.record("baseline", params=cost.params, macs=cost.macs, accuracies=[0.5], model_dir=directory,
               trial_dir=f"{directory}/trial", status="completed")
# what an earlier panel (or the loop's end) leaves: the iteration's first view and the history view
from prune_explorer.default_recipe import DEFAULT_RECIPE
from prune_explorer.session import PruningSession
from prune_explorer.workspace import Workspace, view
PruningSession.open(root, "baseline", criterion=DEFAULT_RECIPE["criterion"]).write_view()  # ranked as the panel ranks
view.write_history(Workspace(root), tracker.history())
"""

OPEN_JS = """async () => {
  const app = window.jupyterapp;
  await app.started; await app.restored;
  const panel = app.shell.currentWidget;
  await panel.context.ready; await panel.sessionContext.ready;
  await panel.sessionContext.session.kernel.info;
  const seen = window.__pe = {ready: performance.now()};
  const drawn = (selector) => Number(document.querySelector(selector)?.dataset.draws) > 0;
  const obs = new MutationObserver(() => {
    if (!seen.panel && drawn('.pe-explorer .pe-heatmap-view') && drawn('.pe-explorer .pe-scatter-view')
        && document.querySelector('.pe-explorer .pe-layer-row'))
      requestAnimationFrame(() => { seen.panel = seen.panel || performance.now(); });
    const apply = document.querySelector('.pe-explorer .pe-apply');
    if (!seen.model && apply && !apply.disabled) { seen.model = performance.now(); obs.disconnect(); }
  });
  obs.observe(document.body, {subtree: true, childList: true, attributes: true,
                              attributeFilter: ['data-draws', 'disabled']});
  app.commands.execute('notebook:run-all-cells');
  return seen.ready;
}"""

CUT_JS = """async () => {
  const done = new Promise((resolve, reject) => {
    const obs = new MutationObserver(() => {
      if (document.querySelector('.pe-applied .pe-cut-accuracy')) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now())); }
    });
    obs.observe(document.querySelector('.pe-applied'), {subtree: true, childList: true, characterData: true});
    setTimeout(() => reject(new Error('no accuracy after the cut within 120 s')), 120000);
  });
  const t0 = performance.now();
  document.querySelector('.pe-apply').click();
  return (await done) - t0;
}"""

def _change_and_wait_js(input_css: str, watched_css: str, shown_css: str) -> str:
    """An input's change → `shown_css` inside `watched_css` shows the value, + one frame: the preview and the
    widget round trip (its floor) are timed by this one page function, so they compare."""
    return """async (value) => {
  const input = INPUT;
  const done = new Promise((resolve, reject) => {
    const obs = new MutationObserver(() => {
      const el = document.querySelector(SHOWN);
      if (el && el.textContent === String(value)) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now())); }
    });
    obs.observe(document.querySelector(WATCHED), {subtree: true, childList: true, characterData: true});
    setTimeout(() => reject(new Error(SHOWN + ' never showed ' + value)), 30000);
  });
  const t0 = performance.now();
  input.value = String(value);
  input.dispatchEvent(new Event('change', {bubbles: true}));
  return (await done) - t0;
}""".replace("INPUT", input_css).replace("WATCHED", repr(watched_css)).replace("SHOWN", repr(shown_css))


# the first layer row's count input (the preview's row 0, as measured before)
PREVIEW_JS = _change_and_wait_js("document.querySelectorAll('.pe-layer-row')[0].querySelector('.pe-count input')",
                                 ".pe-preview", ".pe-preview .pe-removed")

ARM_HOVER_JS = """() => {
  const tip = document.querySelector('.pe-heatmap-tip');
  window.__hover = new Promise((resolve, reject) => {
    let t0 = null;
    document.addEventListener('mousemove', () => { if (t0 === null) t0 = performance.now(); }, {capture: true, once: true});
    const obs = new MutationObserver(() => {
      if (t0 !== null) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now() - t0)); }
    });
    obs.observe(tip, {attributes: true, childList: true, characterData: true, subtree: true});
    setTimeout(() => reject(new Error('no hover text within 10 s')), 10000);
  });
}"""


HEATMAP_JS = """async (label) => {
  const view = document.querySelector('.pe-heatmap-view');
  const before = Number(view.dataset.draws);
  const done = new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error('heatmap never redrew')), 30000);
    const obs = new MutationObserver(() => {
      if (Number(view.dataset.draws) > before) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now())); }
    });
    obs.observe(view, {attributes: true, attributeFilter: ['data-draws']});
  });
  const button = [...document.querySelectorAll('.pe-heatmap-order button')].find(b => b.textContent.trim() === label);
  const t0 = performance.now();
  button.click();
  return (await done) - t0;
}"""


ECHO_CELL = """import ipywidgets as W
box = W.IntText(value=0); box.add_class('pe-echo-in')
out = W.HTML('0'); out.add_class('pe-echo-out')
box.observe(lambda change: setattr(out, 'value', f"<b class='v'>{change['new']}</b>"), 'value')
W.VBox([box, out])"""

ECHO_JS = _change_and_wait_js("document.querySelector('.pe-echo-in input')", ".pe-echo-out", ".pe-echo-out .v")


def _floor(page, url: str) -> float:
    """The widget round trip any preview pays here: an IntText change → the kernel sets an HTML → shown (+ one
    frame), measured the way the preview is; median of REPEATS."""
    page.goto(url)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
    page.evaluate("""async () => {
      const app = window.jupyterapp; await app.started; await app.restored;
      const panel = app.shell.currentWidget; await panel.context.ready; await panel.sessionContext.ready;
      await app.commands.execute('notebook:run-all-cells');
    }""")
    page.wait_for_selector(".pe-echo-in input", timeout=600_000)
    return statistics.median(page.evaluate(ECHO_JS, v) for v in range(1, REPEATS + 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(root: Path) -> None:
    for arch in ARCHS:
        workspace = root / f"ws-{arch}"
        subprocess.run([sys.executable, "-c", WORKSPACE, arch, str(workspace)], check=True, timeout=900,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK.format(workspace=str(workspace)))],
                                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        nbformat.write(nb, root / f"bench_{arch}.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ECHO_CELL)], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3"}}), root / "echo.ipynb")


def _start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"checkForUpdates": False, "fetchNews": "false"}))
    # widget messages over the main shell, as tests/browser/conftest.py does (a JupyterLab 4.6 subshell bug)
    (settings.parent / "kernels-settings.jupyterlab-settings").write_text(json.dumps({"commsOverSubshells": "disabled"}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
           "JUPYTER_DATA_DIR": str(root / ".data"), "IPYTHONDIR": str(root / ".ipython"), "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={root / '.lab-workspaces'}",
           f"--LabApp.user_settings_dir={root / '.lab-settings'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(root / "lab.log", "w"), stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((root / "lab.log").read_text())
            time.sleep(0.2)
    raise RuntimeError("jupyter lab did not start")


def _hover(page, row: int, column: int) -> float:
    """A real mouse move onto cell (row, column): first mousemove event → hover text changed (+ one frame)."""
    canvas = page.locator(".pe-heatmap-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    columns = int(page.locator(".pe-heatmap-view").get_attribute("data-columns"))
    page.evaluate(ARM_HOVER_JS)
    page.mouse.move(box["x"] + (column % columns + 0.5) / columns * box["width"], box["y"] + 14 * row + 7)
    return page.evaluate("() => window.__hover")


def _measure(page, url: str, arch: str) -> dict[str, float]:
    page.goto(url)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext", timeout=120_000)
    page.evaluate(OPEN_JS)
    page.wait_for_function("() => window.__pe && window.__pe.panel && window.__pe.model", timeout=600_000, polling=50)
    seen = page.evaluate("() => window.__pe")
    open_s, model_s = (seen["panel"] - seen["ready"]) / 1000, (seen["model"] - seen["ready"]) / 1000
    rows = page.locator(".pe-layer-row").count()
    page.wait_for_function("() => !document.querySelector('.pe-status').textContent.includes('…')", timeout=120_000)
    preview = [page.evaluate(PREVIEW_JS, value) for value in (1, 7, 3, 9, 5, 2, 8, 4, 10, 6, 11)[:REPEATS]]
    hover = [_hover(page, r % rows, c) for r, c in zip(range(REPEATS), (0, 40, 90, 7, 300, 11, 60, 2, 500, 30, 5))]
    heatmap = [page.evaluate(HEATMAP_JS, label) for label in ("natural", "sorted", "natural", "sorted", "natural")]
    cut_s = None
    if arch == "resnet18":
        page.locator(".pe-fill-mode button", has_text="N filters").click()  # the default fill is the recipe's MACs step
        page.locator(".pe-fill").click()
        page.wait_for_function("() => document.querySelector('.pe-preview .pe-removed').textContent === '200'")
        cut_s = page.evaluate(CUT_JS) / 1000
    result = {"open_s": open_s, "model_s": model_s, "preview_ms": statistics.median(preview), "cut_s": cut_s,
              "hover_ms": statistics.median(hover), "heatmap_ms": statistics.median(heatmap), "rows": rows}
    cut = f"; accuracy after the cut shown {cut_s:.2f} s after Apply (goal {CUT_GOAL_S:.0f} s)" if cut_s else ""
    print(f"{arch}: {rows} layer rows; kernel ready → panel visible with ranks, table and history {open_s:.2f} s "
          f"(goal {OPEN_GOAL_S} s), → model ready (Apply enabled) {model_s:.2f} s; "
          f"preview update median {result['preview_ms']:.0f} ms (goal {PREVIEW_GOAL_MS:.0f}); "
          f"hover median {result['hover_ms']:.1f} ms (goal {HOVER_GOAL_MS:.0f}); heatmap redraw median "
          f"{result['heatmap_ms']:.0f} ms (goal {HEATMAP_GOAL_MS:.0f}){cut}", flush=True)
    return result


def main() -> int:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        print(f"benchmark needs Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="panel-bench-") as tmp:
        root = Path(tmp)
        _prepare(root)
        port, token = _free_port(), secrets.token_hex(16)
        proc = _start_lab(root, port, token)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                results = {}
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                floor = _floor(page, f"http://127.0.0.1:{port}/lab/workspaces/echo/tree/echo.ipynb?reset&token={token}")
                page.close()
                print(f"widget round trip (an IntText change → the kernel sets an HTML → shown, + one frame): median "
                      f"{floor:.0f} ms — the floor any preview pays on this machine now", flush=True)
                for arch in ARCHS:
                    page = browser.new_page(viewport={"width": 1500, "height": 1100})
                    url = f"http://127.0.0.1:{port}/lab/workspaces/{arch}/tree/bench_{arch}.ipynb?reset&token={token}"
                    results[arch] = _measure(page, url, arch)
                    page.close()
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    opened = results["resnet18"]["open_s"]
    preview = statistics.median([r["preview_ms"] for r in results.values()])
    hover = statistics.median([r["hover_ms"] for r in results.values()])
    heatmap = results["resnet50"]["heatmap_ms"]
    cut = results["resnet18"]["cut_s"]
    print(f"goals: open {opened / OPEN_GOAL_S:.2f}x of 1.5 s, preview {preview / PREVIEW_GOAL_MS:.2f}x of 50 ms, "
          f"hover {hover / HOVER_GOAL_MS:.2f}x of 50 ms, resnet50 heatmap {heatmap / HEATMAP_GOAL_MS:.2f}x of 300 ms, "
          f"accuracy after the cut {cut / CUT_GOAL_S:.2f}x of 3 s; preview {preview / floor:.2f}x the widget round trip")
    print(f"panel: open {opened:.1f} s, preview update median {preview:.0f} ms, hover {hover:.0f} ms, "
          f"resnet50 heatmap redraw {heatmap:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
