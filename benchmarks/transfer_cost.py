"""The pretrained demo's cost on this machine, measured, and the run times it implies.

Measured here, with torch's default threads: training images per second of the demo's model
(EfficientNet-Lite0, ImageNet weights, new 10-class head) at the demo's input size with the compact
capture hook on, as the jobs run; evaluation images per second; one job's fixed cost (a real
train.py job that trains one step: process start, imports, data, model, saving, measuring); and one
prune step (trace, rank, plan, cut). The demo's and the transfer benchmark's run times are projected
from them, every pruned model costing what the baseline costs (an upper bound: they only get
cheaper). CPU time per image is printed too: a busy machine inflates it less than wall time.

    python benchmarks/transfer_cost.py        # or: python benchmarks/transfer.py --cost
"""
from __future__ import annotations

import contextlib
import io
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prune_explorer.loop import LoopConfig, pretrained_demo_config

TRAIN_BATCHES = 10  # timed training steps (after 2 warm-up steps)
EVAL_IMAGES = 1024
BENCHMARK_METHODS = 4  # taylor, l1, random, tp-magnitude


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def throughput(config: LoopConfig) -> dict[str, float]:
    """Training and evaluation images per second (wall) and CPU ms per image of the demo's model."""
    from prune_explorer.jobs.data import load_dataset
    from prune_explorer.model.zoo import build_model, replace_head
    from prune_explorer.signals.capture import CaptureHook

    model = build_model(config.model, weights=config.weights, **config.model_kwargs)
    replace_head(model, 10)
    train, val, _, _ = load_dataset(config.dataset, config.data_dir, image_size=config.image_size,
                                    subset=(TRAIN_BATCHES + 2) * config.batch_size, val_subset=EVAL_IMAGES,
                                    normalize="imagenet", augment=True, download=False)
    loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    timed = {"wall": 0.0, "cpu": 0.0, "images": 0}
    with tempfile.TemporaryDirectory() as tmp, CaptureHook(model, f"{tmp}/trial", mode="compact", save_every=50) as hook:
        model.train()
        for step, (x, y) in enumerate(loader):
            wall, cpu = time.perf_counter(), _cpu()
            hook.step()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step >= 2:
                timed["wall"] += time.perf_counter() - wall
                timed["cpu"] += _cpu() - cpu
                timed["images"] += len(y)
    model.eval()
    wall, cpu = time.perf_counter(), _cpu()
    with torch.no_grad():
        for x, _ in torch.utils.data.DataLoader(val, batch_size=config.batch_size):
            model(x)
    eval_wall, eval_cpu = time.perf_counter() - wall, _cpu() - cpu
    return {"train_rate": timed["images"] / timed["wall"], "train_cpu_ms": 1000 * timed["cpu"] / timed["images"],
            "eval_rate": len(val) / eval_wall, "eval_cpu_ms": 1000 * eval_cpu / len(val)}


def job_overhead(config: LoopConfig) -> tuple[float, float]:
    """Wall and CPU seconds of a real train.py job that trains one step on one batch and evaluates one batch."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        args = config.hyperparameters(1, baseline=True)
        args.update(subset=config.batch_size, val_subset=config.batch_size, max_steps=1, out_dir=tmp)
        command = [sys.executable, "-m", "prune_explorer.jobs.train", "--model", config.model]
        for key, value in args.items():
            command += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"the timing job failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)


def prune_step_seconds(config: LoopConfig) -> float:
    """One rank → plan → cut of the demo's model (weights ranking: the trial read is small next to it)."""
    from prune_explorer.model.graph import ChannelGraph
    from prune_explorer.model.plan import PrunePlan
    from prune_explorer.model.surgery import prune
    from prune_explorer.model.zoo import build_model, replace_head
    from prune_explorer.signals.ranking import rank

    model = build_model(config.model, weights=config.weights, **config.model_kwargs)
    replace_head(model, 10)
    x = torch.zeros(1, 3, config.image_size, config.image_size)
    start = time.perf_counter()
    graph = ChannelGraph.trace(model.eval(), x)
    plan = PrunePlan.lowest(rank(model, x, criterion="l1", graph=graph), graph, n=config.per_iteration,
                            scheme=config.scheme)
    prune(model, plan, x, graph=graph)
    return time.perf_counter() - start


def surgery_demo_seconds() -> float:
    from prune_explorer import demo

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        demo.main(demo.EFFICIENTNET_LITE0)
    return time.perf_counter() - start


def loop_seconds(config: LoopConfig, cost: dict[str, float], val_images: int, curves: int = 1) -> float:
    """Baseline once, then `curves` curves of config.iterations fine-tunes, each at the baseline's cost."""
    epoch = (config.subset or 0) / cost["train_rate"] + val_images / cost["eval_rate"]
    baseline = cost["job"] + config.baseline_epochs * epoch
    iteration = cost["job"] + cost["prune"] + config.epochs * epoch
    return baseline + curves * config.iterations * iteration


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from transfer import transfer_config

    demo = pretrained_demo_config(tempfile.mkdtemp(prefix="transfer-cost-"))
    cost = throughput(demo)
    job_wall, job_cpu = job_overhead(demo)
    cost.update(job=job_wall, prune=prune_step_seconds(demo), surgery=surgery_demo_seconds())
    print(f"cost at 3x{demo.image_size}x{demo.image_size}, batch {demo.batch_size}, {torch.get_num_threads()} threads: "
          f"train {cost['train_rate']:.0f} img/s (CPU {cost['train_cpu_ms']:.1f} ms/img, capture on), "
          f"eval {cost['eval_rate']:.0f} img/s (CPU {cost['eval_cpu_ms']:.1f} ms/img); one job's fixed cost "
          f"{job_wall:.1f} s (CPU {job_cpu:.1f} s), one prune step {cost['prune']:.1f} s, the surgery table "
          f"{cost['surgery']:.1f} s")
    bench = transfer_config(Path(demo.workspace), 0)
    print(projection("as measured", demo, bench, cost))
    # A busy machine stretches wall time (and many threads collapse under it); CPU time per image
    # stretches less: two idle cores at SCALING of two-thread efficiency run 2 x SCALING / CPU-time images a second.
    idle = {**cost, "train_rate": 2 * SCALING * 1000 / cost["train_cpu_ms"],
            "eval_rate": 2 * SCALING * 1000 / cost["eval_cpu_ms"], "job": job_cpu}  # start-up: one thread's work
    print(projection(f"on 2 idle cores from the CPU time ({idle['train_rate']:.0f} / {idle['eval_rate']:.0f} img/s)",
                     demo, bench, idle))
    return 0


SCALING = 0.85  # two threads' speed-up over one on two cores, per thread


def projection(label: str, demo: LoopConfig, bench: LoopConfig, cost: dict[str, float]) -> str:
    demo_s = cost["surgery"] + loop_seconds(demo, cost, demo.val_subset or 10_000)
    bench_s = loop_seconds(bench, cost, bench.val_subset or 10_000, curves=BENCHMARK_METHODS)
    return (f"projected {label}, upper bounds: demo --pretrained {demo_s / 60:.1f} min ({demo.subset} train / "
            f"{demo.val_subset} val images, {demo.baseline_epochs} + {demo.iterations} x {demo.epochs} epochs); "
            f"transfer benchmark {bench_s / 60:.0f} min per seed ({BENCHMARK_METHODS} methods x {bench.iterations} "
            f"iterations, {bench.val_subset or 10_000} val images), {2 * bench_s / 60:.0f} min for two seeds")


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
