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

WORKSPACE_ENV = "PRUNE_EXPLORER_WORKSPACE"
TRUST_ENV = "PRUNE_EXPLORER_TRUST_MODEL_CODE"  # set by `prune-explorer app --trust-model-code`
SCRIPTS_ENV = "PRUNE_EXPLORER_ALLOW_SCRIPTS"  # set by `prune-explorer app --allow-scripts DIR`


def fast() -> bool:
    return os.environ.get("PRUNE_EXPLORER_FAST", "").lower() in {"1", "true", "yes"}


def train_args() -> dict[str, Any]:
    """train.py arguments (dataset, sizes, batch, the demo's fine-tuning recipe) for the notebooks' jobs."""
    if fast():
        return dict(dataset="digits", image_size=16, subset=256, val_subset=128, batch_size=32, capture="compact")
    from ..loop import demo_config

    config = demo_config()
    return {k: v for k, v in config.hyperparameters(config.epochs).items() if k != "epochs"}


def workspace(default: str = "workspace") -> Path:
    return Path(os.environ.get(WORKSPACE_ENV, default)).resolve()


def served_options() -> dict[str, Any]:
    """What the `prune-explorer app` launch allowed, for every panel and queue in the app: the modules
    model files may name (`trust_code`) and where training scripts may come from (`scripts`: a
    folder, or False — no script fields, prune_explorer.train only)."""
    return {"trust_code": os.environ.get(TRUST_ENV) or None, "scripts": os.environ.get(SCRIPTS_ENV) or False}


def ensure_baseline(root: str | os.PathLike, model: str = "resnet18", epochs: int | None = None, *,
                    trust_code: Any = None, scripts: Any = True) -> str:
    """Train and track the baseline iteration once (reused when already in the workspace and trained
    with these settings — the loop's check — refused with the differences named otherwise).
    `trust_code` / `scripts`: as `JobQueue`'s (the app passes `served_options()`)."""
    if fast():
        hp = {**train_args(), "epochs": epochs or 1}
    else:  # the demo's baseline recipe (its own learning rate)
        from ..loop import demo_config

        config = demo_config()
        hp = config.hyperparameters(epochs or config.baseline_epochs, baseline=True)
    space = Workspace(root, trust_code=trust_code)
    with space.queue(scripts=scripts) as queue:
        space.ensure_baseline(queue, model, hp)
    return BASELINE


def train_baseline_once(root: str | os.PathLike, model: str = "resnet18", epochs: int | None = None,
                        **options: Any) -> bool:
    """Train the baseline when the workspace has none (True); else leave it (False) without importing
    the tracker or the job queue, so a panel on an existing workspace opens fast. `ensure_baseline`
    then checks its settings in the panel's background."""
    if Workspace(root).has_model(BASELINE):
        return False
    ensure_baseline(root, model, epochs, **options)
    return True
