"""Cost of capture on resnet18 training steps (CPU, batch 32, 64x64): no hook vs CaptureHook
compact vs full vs smdebug's stock hook with the AWS example's include_regex.

Configurations run interleaved, one step each per round, so load from other processes hits all
of them alike, in rotating order. The last line compares median step times with no hook; the
mean, which includes the saving steps and every hiccup of a shared machine, is printed too."""
from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from prune_explorer.signals import capture
from prune_explorer.signals.capture import CaptureHook

BATCH, SIZE, ROUNDS, WARMUP, SAVE_EVERY = 32, 64, 20, 1, 5
STOCK_REGEX = [r".*relu_output", r".*bn.*running_(mean|var)", r".*weight", r".*bias"]


def stock_hook(model: nn.Module, out_dir: str):
    import prune_explorer.signals.smdebug_compat  # noqa: F401
    import smdebug.pytorch as smd
    from smdebug.core.save_config import SaveConfig

    hook = smd.Hook(out_dir=out_dir, include_regex=STOCK_REGEX, save_config=SaveConfig(save_interval=SAVE_EVERY))
    hook.register_module(model)
    return hook


def time_accumulation() -> list[float]:
    """Wrap the compact hook's per-step statistics so their own cost is measured too."""
    spent: list[float] = []
    add = capture._Accumulator.add

    def timed(self, a, g):
        t0 = time.perf_counter()
        add(self, a, g)
        spent.append(time.perf_counter() - t0)

    capture._Accumulator.add = timed
    return spent


def main() -> None:
    torch.set_num_threads(1)  # 2 threads thrash when other processes share the cores
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    tmp = tempfile.mkdtemp()
    spent = time_accumulation()
    # "control" is a second copy without a hook: its ratio is the noise floor of this machine
    configs = {name: copy.deepcopy(base) for name in ("none", "control", "compact", "full", "stock")}
    hooks = {
        "compact": CaptureHook(configs["compact"], f"{tmp}/compact", mode="compact", save_every=SAVE_EVERY,
                               example_inputs=x[:1]),
        "full": CaptureHook(configs["full"], f"{tmp}/full", mode="full", save_every=SAVE_EVERY, example_inputs=x[:1]),
        "stock": stock_hook(configs["stock"], f"{tmp}/stock"),
    }
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in configs}
    names = list(configs)
    for step in range(WARMUP + ROUNDS):
        for name in names[step % len(names):] + names[:step % len(names)]:   # rotate: no position bias
            model = configs[name]
            t0 = time.perf_counter()
            if isinstance(hooks.get(name), CaptureHook):
                hooks[name].step()
            optimizers[name].zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizers[name].step()
            if step >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    for name, hook in hooks.items():
        hook.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}    # includes the saving steps
    saved = {k: len(list(Path(tmp, k, "index").rglob("*.json"))) for k in hooks}
    per_step = {k: sum(f.stat().st_size for f in Path(tmp, k, "events").rglob("*.tfevents")) / max(saved[k], 1)
                for k in hooks}
    print("median step time: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in median.items()))
    print("mean step time:   " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in mean.items()))
    print("bytes per saved step: " + ", ".join(f"{k} {v / 1e3:.1f} kB ({saved[k]} saved)" for k, v in per_step.items()))
    taps = len(hooks["compact"].taps)
    hook_work = sum(spent) / (WARMUP + ROUNDS)
    print(f"compact statistics on {taps} taps: {hook_work * 1e3:.0f} ms per step "
          f"({100 * hook_work / median['none']:.1f}% of a step without hook)")
    print(f"compact writes {100 * per_step['compact'] / per_step['full']:.3f}% of full's bytes")
    by_mean = {k: mean[k] / mean["none"] for k in hooks}
    print("mean step time vs no hook (saving steps included, noisier): "
          + ", ".join(f"{k} {v:.2f} x" for k, v in by_mean.items()))
    ratio = {k: median[k] / median["none"] for k in hooks}
    print(f"noise floor: control (no hook, second copy) {median['control'] / median['none']:.2f} x")
    print(f"capture: compact {ratio['compact']:.2f} x, full {ratio['full']:.2f} x, stock {ratio['stock']:.2f} x "
          "(step time vs no hook)")


if __name__ == "__main__":
    sys.exit(main())
