"""Turn a design plus a trainable-parameter budget into integer module sizes per layer.

The solver only sees costs: for each layer and strategy, a module of size `s` costs
`fixed + unit * s` parameters (BitFit, IA3: `unit == 0`, a fixed cost). Sizes are what each
registered strategy calls its size: adapter width (A), prefix length (P), LoRA rank (L).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pdspace.design import registry
from pdspace.design.space import Design
from pdspace.errors import PDSpaceError

DEFAULT_BUDGET_FRACTION = 0.005


class BudgetError(PDSpaceError, ValueError):
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
    """Per-layer ramp weights of the tuned layers, in stack order (rank 1..n among tuned layers).

    The weights are each tuned layer's *ideal* share of the budget: `uniform` gives every
    layer weight 1, `increasing` gives the k-th tuned layer weight k, `decreasing` the mirror
    image. `solve_budget` turns them into shares by water-filling, so a layer whose ideal share
    cannot buy its smallest modules is raised to that minimum and the other layers keep the
    ramp's proportions (see `solve_budget`).
    """
    if allocation == "uniform":
        return [1.0] * n
    ranks = [float(i + 1) for i in range(n)]
    if allocation == "increasing":
        return ranks
    if allocation == "decreasing":
        return ranks[::-1]
    raise ValueError(f"unknown allocation {allocation!r}")


def _fixed_titles(letters: Iterable[str], costs: Mapping[str, StrategyCost]) -> str:
    """'BitFit', 'BitFit/IA3': the fixed-size strategies among `letters` (what a user would drop)."""
    return "/".join(registry.strategies()[s].title for s in dict.fromkeys(letters) if not costs[s].unit)


def _group_label(design: Design, group: int) -> str:
    r = design.group_ranges()[group]
    return f"group {group + 1} (layers {r.start}-{r.stop - 1})"


def layer_floor(layer_costs: Mapping[str, StrategyCost], strategies: str) -> float:
    """Smallest share (BitFit included) at which every sized strategy of the layer rounds to size 1.

    A layer's share, less its BitFit cost, is split equally between its sized strategies and
    size 0.5 is the least that rounds to 1, so the strategy whose size 0.5 costs most sets
    the floor: `bitfit + k * max(fixed + unit / 2)` over the layer's k sized strategies.
    """
    sized = [layer_costs[s] for s in strategies if layer_costs[s].unit]
    fixed = sum(layer_costs[s].fixed for s in strategies if not layer_costs[s].unit)
    return fixed + len(sized) * max((c.fixed + c.unit / 2 for c in sized), default=0.0)


def water_fill(
    spendable: float, weights: Sequence[float], floors: Sequence[float]
) -> tuple[list[float], set[int]] | None:
    """Shares `max(floor_i, lam * w_i)` summing to `spendable`, and the clamped indices; None if the floors exceed it.

    While no layer is below its floor this is exactly `spendable * w_i / sum(w)` (the plain ramp).
    Clamping a layer only lowers `lam`, so layers are clamped until none of the rest falls
    below its floor (at most n passes).
    """
    if sum(floors) > spendable:
        return None
    clamped: set[int] = set()
    while True:
        free_w = sum(w for i, w in enumerate(weights) if i not in clamped)
        rest = spendable - sum(floors[i] for i in clamped)
        below = {i for i, w in enumerate(weights) if i not in clamped and rest * w / free_w < floors[i]}
        if not below:
            return [floors[i] if i in clamped else rest * w / free_w for i, w in enumerate(weights)], clamped
        clamped |= below


def solve_budget(
    design: Design,
    costs: Sequence[Mapping[str, StrategyCost]],
    backbone_params: int,
    budget_fraction: float | None = DEFAULT_BUDGET_FRACTION,
) -> BudgetSolution:
    """Integer sizes that bring the total of `design`'s modules as close to the budget as integers allow.

    Allocation ramps: the tuned layers with sized modules (Adapter width, Prefix length, LoRA
    rank) share the budget left after the tuned layers with BitFit alone. The allocation's
    weights over the tuned layers (uniform 1, ..., 1; increasing 1, 2, ..., n; decreasing
    n, ..., 1) give each layer its ideal share `lam * w_i`. Each layer also has a floor, the cost
    of its minimum module set: its BitFit biases plus, for its k sized strategies, k times the
    dearest of them at size 0.5, the smallest size that rounds to 1 (the share is split equally
    between the strategies, so the dearest one decides). A layer gets `max(floor_i, lam * w_i)`,
    with `lam` chosen so that the shares add up to the budget (water-filling): layers at their
    floor are clamped, the rest keep the ramp's proportions. So a design fits, whatever its
    allocation, exactly when its floors fit in the budget; it fits whenever its uniform twin
    does; and a ramp in which every layer already affords its floor gets the plain proportional
    shares `B * w_i / sum(w)`, i.e. the sizes it got before floors were introduced.

    Why a design that fits with uniform allocation fits with any ramp: uniform gives every
    sized layer `B / m` (B the spendable budget, m the sized layers), so it fits exactly when
    `B / m >= floor_i` for every layer, hence `sum(floor_i) <= m * max(floor_i) <= B`. The
    water-filled total `sum(max(floor_i, lam * w_i))` is continuous and non-decreasing in
    `lam`, equals `sum(floor_i) <= B` at `lam = 0` and grows without bound, so some `lam`
    meets B exactly; every share is then at least its floor, so every sized strategy gets a
    size >= 0.5, which rounds to >= 1.

    Within a layer, BitFit's cost is taken first and the rest is split equally between its
    other strategies; sizes are then rounded and stepped by +-1 towards the exact target.
    Layers with only fixed-cost strategies cost exactly that, and their surplus or deficit is
    shared by the other layers. `budget_fraction=None` means natural size (BitFit-only designs).
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
                "budget_fraction=None (natural size) only fits designs whose modules have a fixed size (BitFit, IA3); "
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
        fixed = _fixed_titles("".join(strategies[i] for i in tuned), costs[tuned[0]])
        raise BudgetError(
            f"the budget of {target:,} params ({budget_fraction:.3%} of {backbone_params:,}) is below the fixed "
            f"cost of this design's {fixed} modules ({all_fixed:,} params, {all_fixed / backbone_params:.3%}); "
            f"raise budget_fraction or use {fixed} in fewer groups"
        )

    real: dict[tuple[int, str], float] = {}
    if sizeable:
        weights = allocation_weights(design.allocation, len(tuned))
        w_of = dict(zip(tuned, weights))
        spendable = target - fixed_only_total
        floors = [layer_floor(costs[i], strategies[i]) for i in sizeable]
        solved = water_fill(spendable, [w_of[i] for i in sizeable], floors)
        shortfall = ""
        if solved is not None:
            filled, clamped = solved
            if clamped:
                raised = ", ".join(str(sizeable[k]) for k in sorted(clamped))
                sol.notes.append(f"{design.allocation} allocation: layer(s) {raised} raised to their smallest "
                                 "modules (their share of the ramp could not buy size 1); the other layers keep its "
                                 "proportions")
        else:
            # not even the minimum modules fit: name the first layer the plain ramp starves, and the totals
            total_w = sum(w_of[i] for i in sizeable)
            filled = [spendable * w_of[i] / total_w for i in sizeable]
            shortfall = (f"the smallest modules of all tuned layers need {sum(floors):,.0f} params, more than the "
                         f"{spendable:,} to spend; ")
        for i, layer_share in zip(sizeable, filled):
            share = layer_share - fixed_cost[i]
            sized = [s for s in strategies[i] if costs[i][s].unit]
            label = _group_label(design, layer_group[i])
            if share <= 0:
                fixed = _fixed_titles(strategies[i], costs[i])
                raise BudgetError(
                    f"{label}: layer {i} gets {layer_share:,.0f} params but its {fixed} modules alone cost "
                    f"{fixed_cost[i]:,}; {shortfall}raise budget_fraction or drop {fixed} from this group"
                )
            for s in sized:
                c = costs[i][s]
                x = (share / len(sized) - c.fixed) / c.unit
                # a layer clamped at its floor gets x = 0.5 up to float error
                if x < 0.5 - 1e-9:
                    info = registry.strategies()[s]
                    raise BudgetError(
                        f"{label}: {info.name} in layer {i} would get {info.size_name}={x:.2f} < 0.5, which "
                        f"rounds to 0 (its share is {share / len(sized):,.0f} params, size 1 costs {c.params(1):,}); "
                        f"{shortfall}raise budget_fraction, tune fewer groups or give this group fewer strategies"
                    )
                real[(i, s)] = x
        if shortfall:  # a plain-ramp share within float error of its floor slipped through
            raise BudgetError(f"{design}: {shortfall}raise budget_fraction or tune fewer groups")
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
            "use budget_fraction=null to state their natural size"
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
