"""One headless run per workspace at a time: a second `prune-explorer run` is refused, naming the first.

Two runs on one workspace both continued from the same iteration into two identical lineages, and
the last one to finish wrote results.csv (issue 22). The run holds an exclusive flock on
jobs/.locks/workspace-run for its whole length — the kernel drops it when the process ends, even by
SIGKILL, so a crashed run never leaves the workspace locked — and writes who it is into the file,
so a refused run can say which process holds it. The panel is not a run: it works beside one.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace."""


@contextmanager
def hold(path: Path, workspace: Path) -> Iterator[dict]:
    """Hold the run lock at `path` while the block runs; WorkspaceBusy when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(f"{workspace}: another run is working on this workspace ({_holder(handle)}); "
                               "wait for it to end, or use another --workspace") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
        try:
            yield me
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def holder(path: Path) -> dict | None:
    """Who holds the lock at `path` now (pid, host, started, command), or None."""
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _holder(handle) -> str:
    handle.seek(0)
    try:
        who = json.loads(handle.read() or "{}")
    except ValueError:
        who = {}
    if not who:
        return "a process that is starting"
    return f"pid {who.get('pid')} on {who.get('host')} since {who.get('started')}: {who.get('command')}"
