"""What the notebooks and the Voila app share: sizes from the environment and a tracked baseline.

`PRUNE_EXPLORER_FAST=1` (CI, Binder) trains on a small scikit-learn digits subset at 16 px so a
notebook runs top to bottom in about a minute on 2 CPU cores; otherwise a Fashion-MNIST subset
(the `make demo` setup) is used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..workspace import BASELINE, Workspace

from .serve import APP_TRAIN_ENV, FAST_ENV, SCRIPTS_ENV, TRUST_ENV, WORKSPACE_ENV  # what `prune-explorer app` sets


def fast() -> bool:
    return os.environ.get(FAST_ENV, "").lower() in {"1", "true", "yes"}


def train_args(small: bool | None = None) -> dict[str, Any]:
    """train.py arguments (dataset, sizes, batch, the demo's fine-tuning recipe) for the notebooks' jobs
    (`small`: the digits setup; None: as `fast()` says)."""
    if fast() if small is None else small:
        return dict(dataset="digits", image_size=16, subset=256, val_subset=128, batch_size=32, capture="compact")
    from ..loop import demo_config

    config = demo_config()
    return {k: v for k, v in config.hyperparameters(config.epochs).items() if k != "epochs"}


def workspace(default: str = "workspace") -> Path:
    return Path(os.environ.get(WORKSPACE_ENV, default)).resolve()


def baseline_hyperparameters(epochs: int | None = None, small: bool | None = None) -> dict[str, Any]:
    """The arguments of the baseline job the notebooks and the app train: the small digits setup when
    `small` (None: `fast()`), else the demo's baseline recipe (its own learning rate)."""
    if fast() if small is None else small:
        return {**train_args(True), "epochs": epochs or 1}
    from ..loop import demo_config

    config = demo_config()
    return config.hyperparameters(epochs or config.baseline_epochs, baseline=True)


def describe_baseline(model: str = "resnet18", small: bool | None = None) -> str:
    """What training the baseline means, in one line (what `prune-explorer app` asks before it starts)."""
    hp = baseline_hyperparameters(small=small)
    images = f"{hp['subset']:,} training images" if hp.get("subset") else "the full training set"
    size = f", {hp['image_size']} px" if hp.get("image_size") else ""
    return (f"{model} on {hp.get('dataset')} ({images}{size}), {hp['epochs']} epoch(s), batch {hp.get('batch_size')}"
            f"{', lr ' + str(hp['lr']) if hp.get('lr') else ''}"
            f"{' ' + hp['lr_schedule'] if hp.get('lr_schedule') else ''}")


def served_options() -> dict[str, Any]:
    """What the `prune-explorer app` launch allowed, for every panel and queue in the app: the modules
    model files may name (`trust_code`) and where training scripts may come from (`scripts`: a
    folder, or False — no script fields, prune_explorer.jobs.train only)."""
    return {"trust_code": os.environ.get(TRUST_ENV) or None, "scripts": os.environ.get(SCRIPTS_ENV) or False}


def ensure_baseline(root: str | os.PathLike, model: str = "resnet18", epochs: int | None = None, *,
                    trust_code: Any = None, scripts: Any = True) -> str:
    """Train and track the baseline iteration once (reused when already in the workspace and trained
    with these settings — the loop's check — refused with the differences named otherwise).
    `trust_code` / `scripts`: as `JobQueue`'s (the app passes `served_options()`)."""
    hp = baseline_hyperparameters(epochs)
    space = Workspace(root, trust_code=trust_code)
    with space.queue(scripts=scripts) as queue:
        space.ensure_baseline(queue, model, hp)
    return BASELINE


def train_baseline_once(root: str | os.PathLike, model: str = "resnet18", epochs: int | None = None,
                        **options: Any) -> bool:
    """Train the baseline when the workspace has none (True); else leave it (False) without importing
    the tracker or the job queue, so a panel on an existing workspace opens fast. `ensure_baseline`
    then checks its settings in the panel's background.

    Under `prune-explorer app` ($PRUNE_EXPLORER_APP_TRAIN_BASELINE set) it trains only when the app
    was told to (--demo, or the user said yes): never a silent 6-epoch job behind a "Running…" page."""
    if Workspace(root).has_model(BASELINE):
        return False
    if os.environ.get(APP_TRAIN_ENV, "1") != "1":
        raise RuntimeError(f"{Path(root)} has no baseline, and this app was not asked to train one: start it with "
                           f"`prune-explorer app --demo` (trains {describe_baseline(model)}), or make one first "
                           "with `prune-explorer demo`")
    ensure_baseline(root, model, epochs, **options)
    return True


def confirm_baseline(root: str | os.PathLike, small: bool = False) -> bool:
    """`prune-explorer app` on a workspace without a baseline: say what the page would train, then ask
    (a terminal) or refuse (no terminal: --demo says yes)."""
    import sys

    print(f"prune-explorer app: {root} has no baseline model. The app's page would first train one in its kernel: "
          f"{describe_baseline(small=small or None)}; the page shows 'Running…' until it is done.", file=sys.stderr)
    if not sys.stdin.isatty():
        print("prune-explorer app: refused: pass --demo to train it there, or open a workspace that has one "
              f"(`prune-explorer demo --workspace {root}` makes one with the same baseline)", file=sys.stderr)
        return False
    try:
        answer = input("Train it now? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("prune-explorer app: nothing started", file=sys.stderr)
    return False
