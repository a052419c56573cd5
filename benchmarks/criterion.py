"""How well each criterion predicts a filter's real importance (Molchanov et al. 2017, Table 1 style).

A small CNN is trained a few epochs on sklearn digits while CaptureHook records a compact trial.
Oracle per layer: the held-out loss increase when that filter alone is zeroed. Printed: the
per-layer Spearman correlation of each criterion's ranking with the oracle, and their mean."""
from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

from prune_explorer.signals.capture import CaptureHook
from prune_explorer.signals.ranking import rank
from prune_explorer.signals.trials import open_trial

CRITERIA = ["taylor", "taylor_aws", "l1", "mean_activation", "random"]
EPOCHS, BATCH = 6, 32


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def data():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def train(model, train_set, trial_dir):
    x, y = train_set
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with CaptureHook(model, trial_dir, save_every=10, example_inputs=x[:1]) as hook:
        for epoch in range(EPOCHS):
            model.train()
            for i in range(0, len(x), BATCH):
                hook.step()
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i:i + BATCH]), y[i:i + BATCH]).backward()
                opt.step()


def oracle(model, group, held_out) -> np.ndarray:
    """Loss increase on held-out data when each channel of the group is zeroed at its taps."""
    x, y = held_out
    model.eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        base = nn.functional.cross_entropy(model(x), y).item()
        increase = np.zeros(group.size)
        for c in range(group.size):
            def zero(module, inputs, output, c=c):
                output = output.clone()
                output[:, c] = 0
                return output
            handles = [modules[t.module].register_forward_hook(zero) for t in group.taps]
            increase[c] = nn.functional.cross_entropy(model(x), y).item() - base
            for h in handles:
                h.remove()
    return increase


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_set, held_out = data()
    model = DigitsCNN()
    with tempfile.TemporaryDirectory() as tmp:
        train(model, train_set, f"{tmp}/trial")
        trial = open_trial(f"{tmp}/trial", model, train_set[0][:1])
    with torch.no_grad():
        model.eval()
        accuracy = (model(held_out[0]).argmax(1) == held_out[1]).float().mean().item()
    print(f"DigitsCNN after {EPOCHS} epochs: held-out accuracy {accuracy:.3f}, trial of {trial.steps_used} steps")
    tables = {c: rank(model, None, trial=trial, criterion=c) for c in CRITERIA if c != "random"}
    rng = np.random.default_rng(0)
    rows = []
    for group in trial.graph.prunable():
        truth = oracle(model, group, held_out)
        row = {"layer": group.name}
        for c in CRITERIA:
            scores = rng.random(group.size) if c == "random" else tables[c][tables[c].group == group.id].score
            row[c] = spearmanr(scores, truth).statistic
        rows.append(row)
    print(f"{'layer':<14}" + "".join(f"{c:>17}" for c in CRITERIA))
    for row in rows:
        print(f"{row['layer']:<14}" + "".join(f"{row[c]:>17.3f}" for c in CRITERIA))
    mean = {c: float(np.mean([r[c] for r in rows])) for c in CRITERIA}
    print("criterion: spearman " + ", ".join(f"{c} {mean[c]:.2f}" for c in CRITERIA))


if __name__ == "__main__":
    sys.exit(main())
