"""Design spaces (dimensions, constraints, sampling, ids), the strategy registry and the budget solver."""

from pdspace.design.budget import (
    DEFAULT_BUDGET_FRACTION,
    BudgetError,
    BudgetSolution,
    StrategyCost,
    solve_budget,
)
from pdspace.design.registry import StrategyInfo
from pdspace.design.space import (
    ALLOCATIONS,
    GROUPING_PATTERNS,
    NAMED_DESIGNS,
    STRATEGY_LETTERS,
    Design,
    DesignSpace,
    GroupingConstraint,
    StrategyConstraint,
    allocation_constraint,
    grouping_matches,
    named_design,
    tunable_constraint,
)

__all__ = [
    "ALLOCATIONS", "DEFAULT_BUDGET_FRACTION", "GROUPING_PATTERNS", "NAMED_DESIGNS", "STRATEGY_LETTERS",
    "BudgetError", "BudgetSolution", "Design", "DesignSpace", "GroupingConstraint", "StrategyConstraint",
    "StrategyCost", "StrategyInfo", "allocation_constraint", "grouping_matches", "named_design", "solve_budget",
    "tunable_constraint",
]
