"""S3 transfers of the SageMaker backend: object checks, downloads (a prefix with progress), unpacking
archives and moving fetched files into place with one rename each."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Any


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def _download(s3: Any, bucket: str, key: str, target: Path) -> bool:
    if not _exists(s3, bucket, key):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(target))
    return True


def _download_prefix(s3: Any, bucket: str, prefix: str, target: Path) -> bool:
    """Download every object under `prefix` (a trial can be thousands of event files)."""
    from tqdm.auto import tqdm

    keys = [obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if obj["Key"][len(prefix):] and not obj["Key"].endswith("/")]
    root = target.resolve()
    for key in tqdm(keys, desc=f"s3://{bucket}/{prefix}", unit="file", disable=len(keys) < 50):
        local = (target / key[len(prefix):]).resolve()
        if not local.is_relative_to(root):
            raise ValueError(f"s3://{bucket}/{key}: key escapes the download folder")
        local.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(local))
    return bool(keys)


def _extract(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{archive.name}: cannot be unpacked ({exc})") from exc


def _move_into(source: Path, target: Path) -> None:
    """Move each fetched file or folder into place with one rename, so no half-written file shows."""
    if not source.is_dir():
        return
    for item in source.iterdir():
        destination = target / item.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(item, destination)
