"""Open the panel before the model stack loads: a frame that shows at once and becomes the Explorer.

Importing torch, torchvision (which pulls in torch._dynamo) and reading the trial take seconds
after the kernel is ready; this module imports only ipywidgets, so the frame — naming what it is
loading — is on the page within a second, and the Explorer replaces it when its ranks are drawn.
The tracker (MLflow), the job queue and the baseline's settings check load after that, in the
Explorer's background (`check=`), so they never delay the heatmap.
"""
from __future__ import annotations

import html
import os
import threading
import time
from typing import Any, Callable

import ipywidgets as W
from traitlets import Any as AnyTrait, Unicode


class OpeningPanel(W.VBox):
    """Shows the loading stage, then holds the Explorer (`explorer`); `wait()` returns it once built."""

    stage = Unicode("")
    error = Unicode("")
    explorer = AnyTrait(None)

    def __init__(self, workspace: str | os.PathLike, iteration: str = "latest", *,
                 check: Callable[[Any], Any] | None = None, torch_threads: int | None = None, **explorer_kwargs: Any):
        self._root, self._iteration, self._check = workspace, iteration, check
        self._threads, self._kwargs = torch_threads, explorer_kwargs
        self._built = threading.Event()
        self._started = time.perf_counter()
        self.line = W.HTML()
        self.line.add_class("pe-opening-stage")
        super().__init__([W.HTML("<h3 style='margin:4px 0'>prune_explorer</h3>"), self.line])
        self.add_class("pe-opening")
        self._set_stage("importing torch and the model stack")
        threading.Thread(target=self._build, name="explorer-open", daemon=True).start()

    def _set_stage(self, text: str) -> None:
        self.stage = text
        self.line.value = (f"<span>⏳ {html.escape(text)}… "
                           f"<small>({time.perf_counter() - self._started:.1f} s)</small></span>")

    def _build(self) -> None:
        try:
            from ..workspace import Workspace
            from .explorer import Explorer

            if self._threads:
                import torch

                torch.set_num_threads(self._threads)
            space = Workspace(self._root)
            name = space.start_point(self._iteration).name if self._iteration == "latest" else self._iteration
            self._set_stage(f"loading {name}: model, trial and ranks")
            explorer = Explorer.from_iteration(space.root, name, **self._kwargs)
            if self._check is not None:
                explorer._bg.submit("refresh", self._check, space.root)
            self.explorer = explorer
            self.children = [explorer]
        except Exception as exc:  # shown in the frame, never a traceback on a background thread
            from ..masking import mask  # torch-free, like this module

            self.error = mask(f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, KeyError)) else str(exc))
            self.line.value = f"<div class='pe-error' style='color:#b00020'>⚠ {html.escape(self.error)}</div>"
        finally:
            self._built.set()

    def wait(self, timeout: float | None = 300):
        """The Explorer, once built and its background work done (for tests and scripts)."""
        if not self._built.wait(timeout):
            raise TimeoutError(f"the panel was not built within {timeout} s (stage: {self.stage})")
        if self.explorer is None:
            raise RuntimeError(f"the panel could not open: {self.error}")
        return self.explorer.wait(timeout)

    def close(self) -> None:
        if self.explorer is not None:
            self.explorer.close()
        super().close()


def open_panel(workspace: str | os.PathLike, iteration: str = "latest", **kwargs: Any) -> OpeningPanel:
    """The panel on `iteration` ("latest": the newest completed one) of `workspace`, shown at once."""
    return OpeningPanel(workspace, iteration, **kwargs)
