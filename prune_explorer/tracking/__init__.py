"""Iteration history: MLflow (default) and SageMaker Experiments, read back as one DataFrame."""
from __future__ import annotations

from .mlflow_tracker import HISTORY_COLUMNS, Tracker, history_frame

__all__ = ["HISTORY_COLUMNS", "Tracker", "history_frame"]
