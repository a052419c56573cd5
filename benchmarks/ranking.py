"""Taylor ranks from a full-mode resnet18 trial: the AWS notebook's per-tensor, per-step loop vs
this project's one-pass reader, against the raw time to read every event file's bytes."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import rank
from prune_explorer.signals.trials import open_trial

STEPS, BATCH, SIZE = 6, 16, 64


def make_trial(path: str, model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with CaptureHook(model, path, mode="full", save_every=1, example_inputs=torch.zeros(1, 3, SIZE, SIZE)) as hook:
        for _ in range(STEPS):
            hook.step()
            model.zero_grad()
            x, y = torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
            nn.functional.cross_entropy(model(x), y).backward()


def aws_loop(path: str, taps: list[tuple[str, int]]) -> dict:
    """The notebook's way: trial.tensor(name).value(step) for every tensor and step."""
    from smdebug.trials import create_trial

    trial = create_trial(path)
    ranks = {}
    for module, call in taps:
        act, grad = f"{module}_{call}_output_0", f"gradient/{module}_{call}_ReLU_output"
        total = 0
        for step in trial.tensor(act).steps():
            a, g = trial.tensor(act).value(step), trial.tensor(grad).value(step)
            total = total + np.mean(a * g, axis=(0, 2, 3))
        ranks[(module, call)] = np.abs(total) / np.linalg.norm(total)
    return ranks


def raw_read(path: str) -> int:
    return sum(len(f.read_bytes()) for f in Path(path, "events").rglob("*.tfevents"))


def main() -> None:
    torch.set_num_threads(1)
    model = torchvision.models.resnet18(num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/trial"
        make_trial(path, model)
        nbytes = raw_read(path)
        t0 = time.perf_counter(); raw_read(path); raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        trial = open_trial(path, model, torch.zeros(1, 3, SIZE, SIZE))
        table = rank(model, None, trial=trial, criterion="taylor_aws")
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        aws = aws_loop(path, list(trial.taps))
        loop = time.perf_counter() - t0
        rows = table[table.layer == "layer1.0.conv1"].normalized.to_numpy()
        assert np.allclose(rows, aws[("layer1.0.relu", 0)], rtol=1e-4), "the two readers disagree"
    print(f"trial: {STEPS} steps, {nbytes / 1e6:.0f} MB in event files, {len(trial.taps)} taps")
    print(f"ranking: aws-loop {loop:.2f} s, ours {ours:.2f} s, raw-read {raw:.2f} s, speed-up {loop / ours:.1f}")


if __name__ == "__main__":
    sys.exit(main())
