"""What `prune-explorer app` runs: Voila, with the XSRF cookie set before the page starts streaming.

Voila streams its page while the notebook runs, so the `_xsrf` cookie Jupyter's templates would set
comes after the headers left and never reaches the browser; the page's unload beacon then posts an
empty `_xsrf` and, with the XSRF check on, its kernel is never shut down. Voila's pre-launch hook
runs before the first byte is sent: reading the handler's `xsrf_token` there sets the cookie, the
beacon carries it back, and the check stays on (`python -m prune_explorer.widgets.serve` takes
Voila's own arguments).
"""
from __future__ import annotations

import sys
from typing import Any


def set_xsrf_cookie(handler: Any, notebook: Any = None, cwd: str | None = None) -> Any:
    """Voila's prelaunch hook: give the page its `_xsrf` cookie while headers can still be set."""
    handler.xsrf_token  # noqa: B018  (reading it sets the cookie)
    return notebook


def main(argv: list[str] | None = None) -> None:
    from voila.app import Voila

    class App(Voila):
        def initialize(self, argv: Any = None) -> None:
            super().initialize(argv)
            self.voila_configuration.prelaunch_hook = set_xsrf_cookie

    App.launch_instance(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
