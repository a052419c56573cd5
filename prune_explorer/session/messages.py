"""A failure as the one line a user reads (the panel's error line, the session's `problem`)."""
from __future__ import annotations


def message(exc: BaseException) -> str:
    """A ValueError's or a missing file's text as it is; anything else prefixed by its type."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"
