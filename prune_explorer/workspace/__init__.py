"""The workspace on disk (WORKSPACE/: iterations, jobs, exports, the loop's results): `workspace.Workspace`."""
from __future__ import annotations

from .workspace import (BASELINE, LATENCY_TABLE, PRUNED, WEIGHT_CRITERIA, Iteration, Ranked, Step, StepTarget,
                        Workspace)

__all__ = ["BASELINE", "LATENCY_TABLE", "PRUNED", "WEIGHT_CRITERIA", "Iteration", "Ranked", "Step", "StepTarget",
           "Workspace"]
