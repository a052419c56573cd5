"""Run the panel's slow work off the kernel's main thread and report failures as text.

One worker per task kind, so a long ranking never queues behind a latency measurement, and a
newer request of a kind supersedes older queued ones (the user only wants the latest preview).
"""
from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

log = logging.getLogger(__name__)


class Background:
    def __init__(self, on_error: Callable[[str, BaseException], None]):
        self._on_error = on_error
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._latest: dict[str, int] = {}
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any, latest_only: bool = False) -> Future:
        """Run `fn(*args)` on the `kind` worker; with `latest_only`, skip it if a newer one of that kind was queued."""
        with self._lock:
            pool = self._pools.get(kind)
            if pool is None:
                pool = self._pools[kind] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"explorer-{kind}")
            ticket = self._latest.get(kind, 0) + 1
            self._latest[kind] = ticket

        def run():
            if latest_only and self._latest.get(kind) != ticket:
                return None
            try:
                return fn(*args)
            except BaseException as exc:
                log.error("%s failed:\n%s", kind, traceback.format_exc())
                self._on_error(kind, exc)
                raise

        future = pool.submit(run)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout: float | None = None) -> None:
        """Block until all submitted work (including work submitted meanwhile) is done."""
        while True:
            with self._lock:
                pending = set(self._pending)
            if not pending:
                return
            done, not_done = wait(pending, timeout=timeout)
            if not_done:
                raise TimeoutError(f"{len(not_done)} background task(s) still running after {timeout} s")

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
