"""Credentials are never shown: the one place that masks them in text the package displays or records.

What counts as a credential: the user-info part of any URI (`https://user:token@host`,
`s3://KEY:SECRET@bucket/...` → `https://***@host`), secret query parameters (`?token=`,
presigned S3 URLs' `X-Amz-Signature` / `X-Amz-Credential` / `X-Amz-Security-Token`), AWS access
key ids (`AKIA…`, `ASIA…`), and the value of every environment variable whose name says it is a
secret (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `MLFLOW_TRACKING_PASSWORD`, any `*_TOKEN`,
`*_SECRET*`, `*_PASSWORD`, `*_API_KEY`, ...) wherever it appears. The panel, the CLI, job logs,
job records and the trackers pass what they show through `mask`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, TextIO

MASK = "***"
MIN_SECRET_LENGTH = 8  # a shorter value ("true", moto's "testing") would mask ordinary words
SECRET_NAME = re.compile(
    r"(?:^|_)(?:SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|ACCESS_KEY|ACCESS_KEY_ID|PRIVATE_KEY)(?:_|$)",
    re.IGNORECASE)
NOT_SECRET = re.compile(r"(?:_FILE|_PATH|_DIR|_URL|_ENDPOINT|_REGION)$", re.IGNORECASE)  # names of places, not secrets
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#'\"<>]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:token|access_token|auth|password|passwd|secret|api_?key|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&;#\s'\"<>]+", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names say they are secrets, longest first."""
    env = os.environ if environ is None else environ
    found = {value for name, value in env.items()
             if SECRET_NAME.search(name) and not NOT_SECRET.search(name) and len(value) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)


def mask(text: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`text` with every credential replaced by `***` (non-strings come back as they are)."""
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", text)
    return _AWS_KEY_ID.sub(MASK, text)


def mask_values(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of JSON-like `data` (dicts, lists, strings) with every string masked."""
    if isinstance(data, str):
        return mask(data, environ)
    if isinstance(data, Mapping):
        return {key: mask_values(value, environ) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(mask_values(value, environ) for value in data)
    return data


class MaskedStream:
    """A text stream that masks what is written through it (the CLI's stdout and stderr)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(mask(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the real stream's
        return getattr(self.stream, name)


def unmasked(stream: TextIO) -> TextIO:
    """The real stream behind a MaskedStream (for the one line that must show a secret: the app's own URL)."""
    return stream.stream if isinstance(stream, MaskedStream) else stream
