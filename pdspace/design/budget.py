"""Turn a design plus a trainable-parameter budget into integer module sizes per layer.

The solver only sees costs: for each layer and strategy, a module of size `s` costs
`fixed + unit * s` parameters (BitFit: `unit == 0`, a fixed cost). Sizes are the adapter
width (A), prefix length (P) and LoRA rank (L).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pdspace.design.space import STRATEGY_NAMES, Design

DEFAULT_BUDGET_FRACTION = 0.005
SIZE_NAMES = {"A": "adapter_dim", "P": "prefix_len", "L": "lora_rank"}


class BudgetError(ValueError):
    """The budget cannot be met by this design on this backbone."""


@dataclass(frozen=True)
class StrategyCost:
    """Parameters of one strategy's module in one layer: `fixed + unit * size`."""

    fixed: int = 0
    unit: int = 0

    def params(self, size: int) -> int:
        """Parameter count at `size` (ignored for fixed-cost strategies)."""
        return self.fixed + self.unit * size if self.unit else self.fixed


@dataclass
class BudgetSolution:
    """Solved sizes: `sizes[layer]` maps strategy letter to size (1 for BitFit)."""

    backbone_params: int
    budget_fraction: float | None
    target_params: int
    sizes: list[dict[str, int]] = field(default_factory=list)
    layer_params: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_params(self) -> int:
        """Achieved count of trainable PEFT parameters."""
        return sum(self.layer_params)

    @property
    def fraction(self) -> float:
        """Achieved count as a fraction of the backbone's parameters."""
        return self.trainable_params / self.backbone_params


def allocation_weights(allocation: str, n: int) -> list[float]:
    """Per-layer weights of the tuned layers, in stack order (rank 1..n among tuned layers)."""
    if allocation == "uniform":
        return [1.0] * n
    ranks = [float(i + 1) for i in range(n)]
    if allocation == "increasing":
        return ranks
    if allocation == "decreasing":
        return ranks[::-1]
    raise ValueError(f"unknown allocation {allocation!r}")


def _group_label(design: Design, group: int) -> str:
    r = design.group_ranges()[group]
    return f"group {group + 1} (layers {r.start}-{r.stop - 1})"


def solve_budget(
    design: Design,
    costs: Sequence[Mapping[str, StrategyCost]],
    backbone_params: int,
    budget_fraction: float | None = DEFAULT_BUDGET_FRACTION,
) -> BudgetSolution:
    """Integer sizes that bring the total of `design`'s modules as close to the budget as integers allow.

    Allocation weights give each tuned layer its share of the target; a layer's BitFit cost
    is taken first and the rest is split equally between its other strategies. Layers with
    only fixed-cost strategies cost exactly that, and their surplus or deficit is shared by
    the other layers. `budget_fraction=None` means natural size (BitFit-only designs).
    """
    if len(costs) != design.num_layers:
        raise ValueError(f"design covers {design.num_layers} layers but costs were given for {len(costs)}")
    layer_group = design.layer_group()
    strategies = [design.strategies[g] for g in layer_group]
    tuned = [i for i, g in enumerate(layer_group) if design.tunable[g]]
    sizeable = [i for i in tuned if any(costs[i][s].unit for s in strategies[i])]
    fixed_cost = [sum(costs[i][s].fixed for s in strategies[i] if not costs[i][s].unit) for i in range(len(costs))]

    if budget_fraction is None:
        if sizeable:
            raise BudgetError(
                "budget_fraction=None (natural size) only fits designs whose modules have a fixed size (BitFit); "
                f"{design} has sized modules, so give a budget_fraction such as {DEFAULT_BUDGET_FRACTION}"
            )
        target = sum(fixed_cost[i] for i in tuned)
    else:
        if not 0 < budget_fraction < 1:
            raise BudgetError(f"budget_fraction={budget_fraction} must lie in (0, 1), e.g. 0.005 for 0.5 %")
        target = round(budget_fraction * backbone_params)
    sol = BudgetSolution(backbone_params, budget_fraction, target)

    fixed_only_total = sum(fixed_cost[i] for i in tuned if i not in sizeable)
    all_fixed = sum(fixed_cost[i] for i in tuned)
    if budget_fraction is not None and all_fixed > target:
        raise BudgetError(
            f"the budget of {target:,} params ({budget_fraction:.3%} of {backbone_params:,}) is below the fixed "
            f"cost of this design's BitFit biases ({all_fixed:,} params, {all_fixed / backbone_params:.3%}); "
            "raise budget_fraction or use BitFit in fewer groups"
        )

    real: dict[tuple[int, str], float] = {}
    if sizeable:
        weights = allocation_weights(design.allocation, len(tuned))
        w_of = dict(zip(tuned, weights))
        total_w = sum(w_of[i] for i in sizeable)
        spendable = target - fixed_only_total
        for i in sizeable:
            share = spendable * w_of[i] / total_w - fixed_cost[i]
            sized = [s for s in strategies[i] if costs[i][s].unit]
            label = _group_label(design, layer_group[i])
            if share <= 0:
                raise BudgetError(
                    f"{label}: layer {i} gets {spendable * w_of[i] / total_w:,.0f} params but its BitFit biases "
                    f"alone cost {fixed_cost[i]:,}; raise budget_fraction or drop BitFit from this group"
                )
            for s in sized:
                c = costs[i][s]
                x = (share / len(sized) - c.fixed) / c.unit
                if x < 0.5:
                    raise BudgetError(
                        f"{label}: {STRATEGY_NAMES[s]} in layer {i} would get {SIZE_NAMES[s]}={x:.2f} < 1 "
                        f"(its share is {share / len(sized):,.0f} params, size 1 costs {c.params(1):,}); raise "
                        "budget_fraction, tune fewer groups or give this group fewer strategies"
                    )
                real[(i, s)] = x
    sizes = {k: max(1, math.floor(x)) for k, x in real.items()}
    _round_to_target(sizes, real, costs, target, sum(fixed_cost[i] for i in tuned))

    for i, strat in enumerate(strategies):
        row: dict[str, int] = {}
        params = 0
        if i in tuned:
            for s in strat:
                row[s] = sizes.get((i, s), 1)
                params += costs[i][s].params(row[s])
        sol.sizes.append(row)
        sol.layer_params.append(params)
    if budget_fraction is not None and not sizeable and sol.trainable_params < target:
        sol.notes.append(
            f"fixed-size modules reach {sol.trainable_params:,} of the {target:,}-param budget; "
            "use budget_fraction=null to state BitFit's natural size"
        )
    return sol


def _round_to_target(
    sizes: dict[tuple[int, str], int],
    real: Mapping[tuple[int, str], float],
    costs: Sequence[Mapping[str, StrategyCost]],
    target: int,
    fixed: int,
) -> None:
    """Step sizes by +-1, largest rounding error first, while that brings the total closer to `target`."""
    def total() -> int:
        return fixed + sum(costs[i][s].fixed + costs[i][s].unit * n for (i, s), n in sizes.items())

    current = total()
    changed = True
    while changed and current != target:
        changed = False
        up = current < target
        order = sorted(sizes, key=lambda k: real[k] - sizes[k], reverse=up)
        for key in order:
            unit = costs[key[0]][key[1]].unit
            step = unit if up else -unit
            if not up and sizes[key] <= 1:
                continue
            if abs(target - current - step) < abs(target - current):
                sizes[key] += 1 if up else -1
                current += step
                changed = True
            if (current < target) != up:
                break
