"""Re-capture an iteration's trial without changing its model: one epoch of its own job's recipe at a
learning rate too small to move a weight (1e-12, no weight decay), CaptureHook in compact mode.

Why: a trial captured before prune_explorer recorded the squared Taylor statistic cannot rank with
taylor_global or taylor_flops (the ranking says so and names the trial). The transfer benchmark's
baselines were trained before that; re-training them would change the model every recorded curve
starts from. This gives the copies of the baseline that the new methods start from (root/<method>)
a fresh trial of the same weights, captured on the same training images, and leaves the model files
and every other method's trial alone. The new trial is written beside the old one and renamed into place.

    python benchmarks/recapture_trial.py bench-workspace/transfer/seed-0/taylor-global-macs [more copies]

The first workspace's iteration is captured; the others (copies of the same model: the weights
files must be byte-identical) receive the same trial.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from prune_explorer.jobs.queue import read_metrics
from prune_explorer.workspace import BASELINE, Workspace

FROZEN_LR = 1e-12
RECIPE = ("dataset", "data_dir", "subset", "image_size", "batch_size", "seed", "model_kwargs")


def recapture(workspace: Path, iteration: str = BASELINE) -> Path:
    """A fresh compact trial for `iteration` of `workspace` from its own job's data recipe; returns its path."""
    space = Workspace(workspace)
    directory = space.iteration_dir(iteration)
    metrics = read_metrics(directory)
    config, recipe = metrics["config"], metrics.get("data_recipe") or {}
    args = [f"--model={directory}", "--epochs=1", f"--lr={FROZEN_LR}", "--weight-decay=0", "--capture=compact",
            "--val-subset=100", "--measure-latency=false", "--lr-schedule=constant"]
    args += [f"--{k.replace('_', '-')}={json.dumps(config[k]) if isinstance(config[k], dict) else config[k]}"
             for k in RECIPE if config.get(k) is not None]
    args += [f"--{k}={v}" for k, v in recipe.items() if v is not None]  # normalize, augment: as the job fed it
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".recapture-") as scratch:
        out = Path(scratch) / "out"
        done = subprocess.run([sys.executable, "-m", "prune_explorer.jobs.train", f"--out-dir={out}", *args],
                              capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            raise SystemExit(f"{directory}: re-capture failed:\n{done.stderr[-3000:]}")
        _swap_trial(directory, out / "trial")
    return directory / "trial"


def copy_trial(source: Path, workspace: Path, iteration: str = BASELINE) -> Path:
    """Give `iteration` of `workspace` the trial of `source` (the same iteration folder elsewhere, same weights)."""
    directory = Workspace(workspace).iteration_dir(iteration)
    if not filecmp.cmp(source / "model.safetensors", directory / "model.safetensors", shallow=False):
        raise SystemExit(f"{directory}: not the same weights as {source}; re-capture it on its own")
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".recapture-") as scratch:
        shutil.copytree(source / "trial", Path(scratch) / "trial")
        _swap_trial(directory, Path(scratch) / "trial")
    return directory / "trial"


def _swap_trial(directory: Path, new: Path) -> None:
    """Rename `new` into directory/trial; the old trial goes only once the new one is in place."""
    old = new.parent / "old-trial"
    os.rename(directory / "trial", old)
    os.rename(new, directory / "trial")
    shutil.rmtree(old)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspaces", nargs="+", type=Path)
    parser.add_argument("--iteration", default=BASELINE)
    args = parser.parse_args(argv)
    first = recapture(args.workspaces[0], args.iteration)
    print(f"{args.workspaces[0]}: captured {first}")
    for workspace in args.workspaces[1:]:
        print(f"{workspace}: copied into {copy_trial(first.parent, workspace, args.iteration)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
