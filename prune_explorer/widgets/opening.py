"""Open the panel before the model stack loads: the first view from the workspace's view files.

`open_panel` imports no torch: it finds the iteration, reads its view file and the workspace's
history view (`workspace/view.py`) and returns an Explorer that draws heatmap, layer table, scatter
and lineage from them at once. The session (torch, torchvision, the model, its trial and ranks)
loads on the Explorer's background worker, and Apply, the latency preview and Export come on when it
is ready; the tracker and the job queue load after that. Without a view file (an iteration never
opened before) the panel shows its frame and draws everything when the session is ready, writing
the view file for the next time.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

from ..default_recipe import DEFAULT_RECIPE
from ..session.messages import message

SESSION_OPTIONS = ("criterion", "validation", "train_args")
HEAVY = ("torch", "torchvision", "smdebug", "mlflow", "pandas")  # what the first view is drawn without
LOAD_AFTER_S = 2.0  # start loading the model this long after opening when no browser reported its first paint


def open_panel(workspace: str | os.PathLike, iteration: str = "latest", *, torch_threads: int | None = None,
               load_after_s: float | None = LOAD_AFTER_S, **kwargs: Any):
    """The panel on `iteration` ("latest": the newest completed one) of `workspace`, drawn at once; the
    model loads once a browser painted the first view, `load_after_s` later without one (None: never
    on its own), or at `wait()`."""
    from ..loop.recorded_recipe import ranking
    from ..workspace import Workspace, view
    from .explorer import Explorer

    space = Workspace(workspace, trust_code=kwargs.get("trust_code"))
    name = space.start_point(iteration).name if iteration == "latest" else iteration
    # ranked as its lineage records (a demo workspace by taylor): else the loop's view would never be drawn
    kwargs = {**kwargs, **ranking(space, name, kwargs)}
    norm = kwargs.get("normalization", "auto")
    criterion = kwargs.get("criterion") or DEFAULT_RECIPE["criterion"]  # the panel's default: the recipe's
    shown = view.read_view(space, name, criterion, None if norm == "auto" else norm)
    explorer = Explorer(workspace=space.root, base_iteration=name, view=shown, history=view.read_history(space),
                        **kwargs)
    explorer.loading = Loading(explorer, lambda: open_session(space.root, name, kwargs, torch_threads),
                               f"loading {name}", load_after_s)
    return explorer


class Loading:
    """The panel's session, opened on its "rank" worker once its first view is on screen.

    The model stack's imports hold the interpreter's lock for seconds; started while the kernel is
    still sending the first view, they would delay it. So loading starts when the heatmap reports its
    first paint, after `after_s` when no browser reports (a panel never displayed), or at `wait()`;
    `first_view` records what had been imported when it started (the view was drawn without it).
    """

    def __init__(self, panel: Any, opener: Callable[[], Any], what: str, after_s: float | None):
        self.panel, self._opener, self.what = panel, opener, what
        self._lock = threading.Lock()
        panel.status, panel.busy = f"{what}…", True
        if panel.shown_view is None:  # nothing drawn to wait for
            self.start("no first view")
            return
        panel.heatmap.on_drawn(lambda: self.start("browser"))
        if after_s is not None:
            timer = threading.Timer(after_s, self.start, ("timer",))
            timer.daemon = True
            timer.start()

    def start(self, why: str) -> None:
        with self._lock:
            opener, self._opener = self._opener, None
        if opener is None:
            return
        self.panel.first_view = {"load_started_by": why, "imported": [m for m in HEAVY if m in sys.modules]}
        self.panel.workers.submit("rank", self._load, opener)

    def _load(self, opener: Callable[[], Any]) -> None:
        try:
            self.panel.attach(opener())
        except Exception as exc:  # shown in the panel, never a traceback on a background thread
            self.panel.load_failed, self.panel.busy = True, False
            self.panel.error = f"{self.what}: {message(exc)}"


def open_session(workspace: str | os.PathLike, iteration: str, kwargs: dict[str, Any],
                 torch_threads: int | None = None):
    """The PruningSession an Explorer with these keyword arguments works on, for a workspace iteration."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    from ..session import PruningSession
    from ..workspace import Workspace

    options = {k: kwargs[k] for k in SESSION_OPTIONS if kwargs.get(k) is not None}
    norm = kwargs.get("normalization", "auto")
    space = Workspace(workspace, trust_code=kwargs.get("trust_code"))  # the model classes its files may name
    return PruningSession.open(space, iteration, normalization=None if norm == "auto" else norm, **options)
