"""How fast the Explorer panel reacts in a real browser (Voila + headless Chromium), timed inside the page.

For a resnet18 and a resnet50 trial (real CaptureHook trials, 32 px inputs) it measures:
  * panel ready: navigation start → the layer table is in the DOM (Voila runs the notebook);
  * control → preview: a layer's count input changes → the preview shows the new filter count,
    plus one requestAnimationFrame (the frame that paints it); median over repeats;
  * heatmap redraw: the sorted/natural toggle → the heatmap image is replaced, plus one frame.
Goals: preview update ≤ 200 ms median; resnet50 heatmap (~26k filters) redraw ≤ 1 s.
Last line: `panel: preview update median X ms, resnet50 heatmap redraw Y ms`.
"""
from __future__ import annotations

import os
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
REPEATS = 11
PREVIEW_GOAL_MS, HEATMAP_GOAL_MS = 200.0, 1000.0

NOTEBOOK = """import torch
from torch import nn
from prune_explorer.signals.capture import CaptureHook
from prune_explorer.model.zoo import build_model
from prune_explorer.widgets import Explorer

torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model({arch!r}, num_classes=10)
x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
with CaptureHook(model, {trial!r}, mode="compact", save_every=1, example_inputs=x[:1]) as hook:
    hook.step()
    nn.functional.cross_entropy(model(x), y).backward()
Explorer(model.eval(), trial={trial!r}, example_inputs=x[:1])"""

PREVIEW_JS = """async ([row, value]) => {
  const shown = document.querySelector('.pe-preview .pe-removed');
  const input = document.querySelectorAll('.pe-layer-row')[row].querySelector('.pe-count input');
  const done = new Promise((resolve, reject) => {
    const obs = new MutationObserver(() => {
      const el = document.querySelector('.pe-preview .pe-removed');
      if (el && el.textContent === String(value)) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now())); }
    });
    obs.observe(document.querySelector('.pe-preview'), {subtree: true, childList: true, characterData: true});
    setTimeout(() => reject(new Error('preview never showed ' + value)), 30000);
  });
  const t0 = performance.now();
  input.value = String(value);
  input.dispatchEvent(new Event('change', {bubbles: true}));
  return (await done) - t0;
}"""

HEATMAP_JS = """async (label) => {
  const image = document.querySelector('.pe-heatmap image.heatmap');
  const before = image.getAttribute('href');
  const done = new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error('heatmap never redrew')), 30000);
    const obs = new MutationObserver(() => {
      if (image.getAttribute('href') !== before) { obs.disconnect(); requestAnimationFrame(() => resolve(performance.now())); }
    });
    obs.observe(image, {attributes: true});
  });
  const button = [...document.querySelectorAll('.pe-heatmap-order button')].find(b => b.textContent.trim() === label);
  const t0 = performance.now();
  button.click();
  return (await done) - t0;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebooks(root: Path) -> None:
    for arch in ("resnet18", "resnet50"):
        code = NOTEBOOK.format(arch=arch, trial=str(root / f"trial-{arch}"))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)],
                                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        nbformat.write(nb, root / f"bench_{arch}.ipynb")


def _start_voila(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
           "IPYTHONDIR": str(root / ".ipython"), "JUPYTER_PLATFORM_DIRS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(root), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--Voila.tornado_settings=disable_check_xsrf=True"],
                            env=env, stdout=open(root / "voila.log", "w"), stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/", timeout=2)
            return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((root / "voila.log").read_text())
            time.sleep(0.2)
    raise RuntimeError("voila did not start")


def _measure(page, url: str, arch: str) -> dict[str, float]:
    page.goto(url)
    page.wait_for_selector(".pe-layer-row", timeout=600_000)
    page.wait_for_function("() => document.querySelector('.pe-preview .pe-removed')", timeout=60_000)
    ready_ms = page.evaluate("() => performance.now()")
    rows = page.locator(".pe-layer-row").count()
    # one row, a new value each time (the preview shows the plan's total, so other rows stay at 0)
    preview = [page.evaluate(PREVIEW_JS, [0, value]) for value in (1, 7, 3, 9, 5, 2, 8, 4, 10, 6, 11)[:REPEATS]]
    heatmap = [page.evaluate(HEATMAP_JS, label) for label in ("natural", "sorted", "natural", "sorted", "natural")]
    result = {"ready_ms": ready_ms, "preview_ms": statistics.median(preview), "heatmap_ms": statistics.median(heatmap),
              "rows": rows}
    print(f"{arch}: {rows} layer rows, panel ready {ready_ms / 1000:.1f} s after navigation, "
          f"preview update median {result['preview_ms']:.0f} ms (goal {PREVIEW_GOAL_MS:.0f}), "
          f"heatmap redraw median {result['heatmap_ms']:.0f} ms (goal {HEATMAP_GOAL_MS:.0f})", flush=True)
    return result


def main() -> int:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        print(f"benchmark needs Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="panel-bench-") as tmp:
        root = Path(tmp)
        _write_notebooks(root)
        port = _free_port()
        proc = _start_voila(root, port)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                results = {arch: _measure(page, f"http://127.0.0.1:{port}/voila/render/bench_{arch}.ipynb", arch)
                           for arch in ("resnet18", "resnet50")}
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    preview = statistics.median([r["preview_ms"] for r in results.values()])
    heatmap = results["resnet50"]["heatmap_ms"]
    print(f"goals: preview {preview / PREVIEW_GOAL_MS:.2f}x of the 200 ms budget, "
          f"resnet50 heatmap {heatmap / HEATMAP_GOAL_MS:.2f}x of the 1 s budget")
    print(f"panel: preview update median {preview:.0f} ms, resnet50 heatmap redraw {heatmap:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
