"""What the loop and `prune-explorer history` show of a workspace's iterations: the table (with each
iteration's recipe id, and the training script when a job ran the user's own), the params-vs-accuracy
plot of every lineage, and CSV files written whole (temp file, then rename)."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd

from ..workspace.layout import Layout, atomic_write
from ..workspace.workspace import DEFAULT_SCRIPT, FORMER_DEFAULT_SCRIPT


def read_history(workspace: str | os.PathLike, tracker: str = "mlflow", tracking_uri: str | None = None,
                 experiment: str | None = None, region: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The tracked iterations of a workspace with their recipe ids, and the legend of those recipes.
    FileNotFoundError when the default MLflow store is not there; a tracker's own errors as they come."""
    from . import recorded_recipe
    from .run import LoopConfig, loop_tracker

    store = Layout(workspace).mlflow_db
    if tracker == "mlflow" and tracking_uri is None and not store.exists():
        if not os.path.isdir(workspace):
            raise FileNotFoundError(f"no workspace at {workspace}: `prune-explorer run --workspace {workspace}` "
                                    "starts one")
        raise FileNotFoundError(f"{workspace} has no tracked iteration yet (no MLflow store at {store})")
    config = LoopConfig(workspace=str(workspace), tracker=tracker, tracking_uri=tracking_uri, experiment=experiment,
                        region=region)
    history = loop_tracker(config.validate()).history()
    return history, recorded_recipe.annotate(history, workspace)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """`table` as CSV at `path`, through a temp file beside it and one rename: never half a file."""
    atomic_write(path, lambda f: table.to_csv(f, index=False))


def format_history(history: pd.DataFrame) -> str:
    """The summary table printed at the end of a run and by `prune-explorer history`."""
    if history.empty:
        return "(no tracked iterations)"
    own_script = history.get("script", pd.Series(dtype=object)).map(
        lambda s: isinstance(s, str) and s not in ("", DEFAULT_SCRIPT, FORMER_DEFAULT_SCRIPT))
    columns = ["iteration", "parent", "status", "criterion", "filters_removed", "params", "macs", "latency_ms",
               "accuracy"] + [c for c in ("recipe",) if c in history and history[c].astype(bool).any()] \
        + (["script"] if own_script.any() else [])  # the training script, when a job ran the user's own
    view = history[columns].copy()
    view["accuracy"] = view["accuracy"].map(lambda a: "" if pd.isna(a) else f"{100 * a:.2f}%")
    view["latency_ms"] = view["latency_ms"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    for column in ("filters_removed", "params", "macs"):
        view[column] = view[column].map(lambda v: "" if pd.isna(v) else f"{int(v):,}").astype(object)
    return view.astype(object).fillna("").to_string(index=False)


def plot_history(history: pd.DataFrame, path: "str | os.PathLike | Any") -> None:
    """Params (log scale) vs best accuracy, one point per iteration, labelled, a line from each to its parent
    (every lineage of the workspace, branches included); `path` a file name or a binary file."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    done = history.dropna(subset=["params", "accuracy"])
    at = {row["iteration"]: (float(row["params"]), 100 * row["accuracy"]) for _, row in done.iterrows()}
    for _, row in done.iterrows():
        if row.get("parent") in at:
            (x0, y0), (x1, y1) = at[row["parent"]], at[row["iteration"]]
            axes.plot([x0, x1], [y0, y1], "-", color="C0", linewidth=1)
    axes.plot(done["params"].astype(float), 100 * done["accuracy"], "o", color="C0")
    for _, row in done.iterrows():
        axes.annotate(row["iteration"], (float(row["params"]), 100 * row["accuracy"]), fontsize=7,
                      xytext=(3, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("parameters")
    axes.set_ylabel("validation accuracy (%)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
