"""Moved to `prune_explorer.model.costs` (budgets in `model/plan.py` need it too); kept for old imports."""
from ..model.costs import Cost, CostModel

__all__ = ["Cost", "CostModel"]
