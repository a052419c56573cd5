"""What runs first inside the SageMaker training container.

The job's entrypoint unpacks the source tarball into /opt/ml/code and runs
`python -m prune_explorer.jobs.sagemaker_entry`. This module does what the SageMaker training
toolkit would otherwise do, so any image with Python and torch serves: install the
shipped requirements, export the `SM_*` variables the job contract reads, and start the job —
`prune_explorer.jobs.train`, or the user's script named by the `sagemaker_program` hyperparameter (or
`SAGEMAKER_PROGRAM`, as the toolkit takes an estimator's entry point), run from /opt/ml/code —
through torchrun when the job has more than one instance or more than one GPU. Hyperparameters
named `sagemaker_*` are the platform's, not the job's: they are not passed on. On failure
it writes /opt/ml/output/failure, which SageMaker shows as the job's FailureReason. A stop by
the accuracy-drop rule is not a failure: the job completes so SageMaker uploads the model, and
metrics.json says "stopped".

Standard library only: it runs before the requirements are installed.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

ML_ROOT = Path("/opt/ml")
TRAIN_MODULE = "prune_explorer.jobs.train"
MASTER_PORT = 29500
FAILURE_TAIL_LINES = 20
RULE_STOPPED_EXIT = 3  # prune_explorer.jobs.contract: stopped by the accuracy-drop rule; its model and metrics are valid
PROGRAM_ENV = "SAGEMAKER_PROGRAM"
PROGRAM_HYPERPARAMETER = "sagemaker_program"
PLATFORM_PREFIX = "sagemaker_"


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def gpu_count() -> int:
    """GPUs visible in the container (0 on CPU instances)."""
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def sm_environment(root: Path, resource_config: Mapping[str, Any], gpus: int,
                   hyperparameters: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The `SM_*` variables the SageMaker toolkit would set, for the job to honour."""
    hosts = list(resource_config.get("hosts") or ["algo-1"])
    current = str(resource_config.get("current_host") or hosts[0])
    env = {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_CHECKPOINT_DIR": str(root / "checkpoints"),
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": current,
        "SM_NUM_GPUS": str(gpus),
        "SM_HPS": json.dumps(dict(hyperparameters or {}), sort_keys=True),
    }
    data = root / "input" / "data"
    channels = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    env["SM_CHANNELS"] = json.dumps(channels)
    for name in channels:
        env[f"SM_CHANNEL_{name.upper()}"] = str(data / name)
    return env


def train_arguments(hyperparameters: Mapping[str, Any]) -> list[str]:
    """`--key value` pairs for the job, in key order so the command is reproducible."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def train_command(
    hyperparameters: Mapping[str, Any], resource_config: Mapping[str, Any], gpus: int,
    python: str = sys.executable, program: str | None = None,
) -> list[str]:
    """One process per machine, or torchrun with one worker per GPU across all hosts.

    `program`: the user's script (a path from /opt/ml/code); None runs prune_explorer.jobs.train.
    """
    hosts = list(resource_config.get("hosts") or ["algo-1"])
    current = resource_config.get("current_host") or hosts[0]
    args = train_arguments(hyperparameters)
    target = [program] if program else ["-m", TRAIN_MODULE]
    if len(hosts) == 1 and gpus <= 1:
        return [python, *target, *args]
    return [
        python, "-m", "torch.distributed.run",
        f"--nnodes={len(hosts)}",
        f"--nproc_per_node={max(gpus, 1)}",
        f"--node_rank={hosts.index(current)}",
        f"--master_addr={hosts[0]}",
        f"--master_port={MASTER_PORT}",
        *target, *args,
    ]


def install_requirements(code_dir: Path) -> None:
    requirements = code_dir / "requirements.txt"
    if requirements.is_file() and requirements.read_text().strip():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)


def run(command: Sequence[str], env: Mapping[str, str], failure_file: Path, cwd: Path | None = None) -> int:
    """Stream the command's output; on a non-zero exit leave its last lines as the FailureReason."""
    tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
    with subprocess.Popen(list(command), env={**os.environ, **env}, stdout=subprocess.PIPE, cwd=cwd,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
    name = next((Path(part).name for part in command if part.endswith(".py")), "train.py")
    if proc.returncode == RULE_STOPPED_EXIT:
        print(f"{name} stopped early by the accuracy-drop rule; see metrics.json", flush=True)
        return 0
    if proc.returncode != 0:
        failure_file.parent.mkdir(parents=True, exist_ok=True)
        failure_file.write_text(f"{name} exited with code {proc.returncode}:\n" + "".join(tail))
    return proc.returncode


def main(root: Path = ML_ROOT, code_dir: Path | None = None) -> int:
    code_dir = code_dir or Path(__file__).resolve().parents[2]  # /opt/ml/code: above prune_explorer/jobs/
    config = root / "input" / "config"
    hyperparameters = read_json(config / "hyperparameters.json", {})
    resource_config = read_json(config / "resourceconfig.json", {})
    gpus = gpu_count()
    install_requirements(code_dir)
    env = sm_environment(root, resource_config, gpus,
                         {k: v for k, v in hyperparameters.items() if not k.startswith(PLATFORM_PREFIX)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_dir), os.environ.get("PYTHONPATH")]))
    program = hyperparameters.get(PROGRAM_HYPERPARAMETER) or os.environ.get(PROGRAM_ENV) or None
    if program and not (code_dir / program).is_file():
        failure = root / "output" / "failure"
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(f"entry point {program}: no such file in {code_dir}")
        return 2
    own = {k: v for k, v in hyperparameters.items() if not k.startswith(PLATFORM_PREFIX)}
    command = train_command(own, resource_config, gpus, program=program)
    return run(command, env, root / "output" / "failure", cwd=code_dir)


if __name__ == "__main__":
    sys.exit(main())
