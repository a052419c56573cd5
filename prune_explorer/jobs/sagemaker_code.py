"""What a SageMaker training job runs: the AWS PyTorch training image, the rule evaluator's image, a
valid job name, hyperparameters as SageMaker's strings, the source tarball (the package, the job's
own source dir, one requirements.txt) and the container's entry command."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Mapping, Sequence

CODE_DIR = "/opt/ml/code"
DEFAULT_REQUIREMENTS = ("safetensors>=0.4", "smdebug>=1.0.34", "tqdm>=4.60")
PYTORCH_VERSION = "2.10.0"
PYTORCH_PY_VERSION = "py313"
# The AWS Deep Learning Container for PyTorch training; sagemaker.core.image_uris fills in the
# region's registry account and cpu/gpu from the instance type, e.g.
# 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.10.0-gpu-py313
PYTORCH_IMAGE_TEMPLATE = "{account}.dkr.ecr.{region}.amazonaws.com/pytorch-training:{version}-{device}-{py}"
_NAME_OK = re.compile(r"[^a-zA-Z0-9-]+")


def pytorch_training_image(region: str, instance_type: str, version: str = PYTORCH_VERSION,
                           py_version: str = PYTORCH_PY_VERSION) -> str:
    """The AWS PyTorch training container for `region` (see PYTORCH_IMAGE_TEMPLATE)."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region, version=version, py_version=py_version,
                               instance_type=instance_type, image_scope="training")


def rule_evaluator_image(region: str) -> str:
    """Debugger's image for custom rules: the built-in rules registry, `rule-evaluator` repository."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("debugger", region).replace(
        "sagemaker-debugger-rules:", "sagemaker-debugger-rule-evaluator:")


def training_job_name(prefix: str, job_id: str) -> str:
    """A valid SageMaker job name (alphanumerics and '-', at most 63 characters)."""
    name = _NAME_OK.sub("-", f"{prefix}-{job_id}").strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def hyperparameter_strings(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker takes only strings, at most 100 pairs of at most 256 characters each."""
    if len(hyperparameters) > 100:
        raise ValueError(f"hyperparameters: {len(hyperparameters)} given, SageMaker allows 100")
    out = {}
    for key, value in hyperparameters.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(str(key)) > 256 or len(text) > 256:
            raise ValueError(f"hyperparameter {key!r}: key and value must be at most 256 characters")
        out[str(key)] = text
    return out


def source_tarball(package_dir: Path, requirements: Sequence[str], user_dir: Path | None = None) -> bytes:
    """gzip tar of the package (no caches) plus requirements.txt, reproducible for equal content.

    `user_dir` (a job's source dir) adds its files at the top level, as /opt/ml/code holds them for
    an SDK estimator; its requirements.txt lines follow ours in the one requirements.txt.
    """
    if not (package_dir / "__init__.py").is_file():
        raise ValueError(f"{package_dir}: not a Python package (no __init__.py)")
    requirements = list(requirements)
    user_files: list[tuple[str, Path]] = []
    if user_dir is not None:
        user_dir = Path(user_dir)
        if (user_dir / package_dir.name).exists():
            raise ValueError(f"source_dir {user_dir}: holds a folder {package_dir.name!r}, which would hide the "
                             "installed package in the container; move it out of the source dir")
        for path in _source_files(user_dir):
            relative = path.relative_to(user_dir).as_posix()
            if relative == "requirements.txt":
                requirements += [line for line in path.read_text().splitlines() if line.strip()]
            else:
                user_files.append((relative, path))
    buffer = io.BytesIO()
    # gzip stamps the time into its header unless told otherwise: mtime=0 keeps equal content equal bytes
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _source_files(package_dir):
            _add_bytes(tar, f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}", path.read_bytes())
        for relative, path in user_files:
            _add_bytes(tar, relative, path.read_bytes())
        _add_bytes(tar, "requirements.txt", "".join(f"{r}\n" for r in requirements).encode())
    return buffer.getvalue()


_SKIPPED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def _source_files(root: Path) -> list[Path]:
    """Files to ship from `root`, sorted: no caches, compiled files or VCS folders."""
    return [path for path in sorted(root.rglob("*"))
            if path.is_file() and not _SKIPPED_DIRS.intersection(path.relative_to(root).parts)
            and path.suffix not in {".pyc", ".pyo"}]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def entrypoint(code_channel: str = "code") -> list[str]:
    """Container command: unpack the source, then hand over to prune_explorer.jobs.sagemaker_entry."""
    return [
        "/bin/sh", "-c",
        f"mkdir -p {CODE_DIR} && tar -xzf /opt/ml/input/data/{code_channel}/sourcedir.tar.gz -C {CODE_DIR}"
        f" && cd {CODE_DIR} && exec python3 -m prune_explorer.jobs.sagemaker_entry",
    ]
