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
    ramp's proportions (see `_layer_shares`).
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


@dataclass(frozen=True)
class _Layers:
    """What the solver reads off a design, per layer of the stack."""

    group: list[int]  # the layer's group
    strategies: list[str]  # the letters of the layer's group ('' where the group is not tuned)
    tuned: list[int]  # the tuned layers
    sizeable: list[int]  # the tuned layers with a sized module (Adapter, Prefix, LoRA): they share the budget
    fixed_cost: list[int]  # per layer, the cost of its fixed-size modules (BitFit, IA3)


def solve_budget(
    design: Design,
    costs: Sequence[Mapping[str, StrategyCost]],
    backbone_params: int,
    budget_fraction: float | None = DEFAULT_BUDGET_FRACTION,
) -> BudgetSolution:
    """Integer sizes that bring the total of `design`'s modules as close to the budget as integers allow.

    The tuned layers with sized modules (Adapter width, Prefix length, LoRA rank) share what the budget leaves
    after the fixed-size modules (BitFit, IA3): each gets its allocation's share, water-filled so that none
    falls below the cost of its smallest modules (`_layer_shares`, which says why a design that fits with
    uniform allocation fits with any). Within a layer, the fixed-size modules' cost is taken first and the
    rest is split equally between its sized strategies (`_exact_sizes`); sizes are then rounded and stepped by
    +-1 towards the exact target (`_round_to_target`). Layers with only fixed-cost strategies cost exactly
    that, and their surplus or deficit is shared by the other layers. `budget_fraction=None` means natural
    size (designs of fixed-size modules only). Raises `BudgetError`, naming the group and the fix, when the
    budget cannot buy the design.
    """
    layers = _layers(design, costs)
    target = _target(design, layers, backbone_params, budget_fraction)
    sol = BudgetSolution(backbone_params, budget_fraction, target)
    if budget_fraction is not None:
        _check_fixed_cost(layers, costs, target, backbone_params, budget_fraction)
    real = _exact_sizes(design, layers, costs, target, sol.notes) if layers.sizeable else {}
    sizes = {k: max(1, math.floor(x)) for k, x in real.items()}
    _round_to_target(sizes, real, costs, target, sum(layers.fixed_cost[i] for i in layers.tuned))
    _fill_solution(sol, layers, costs, sizes)
    return sol


def _layers(design: Design, costs: Sequence[Mapping[str, StrategyCost]]) -> _Layers:
    if len(costs) != design.num_layers:
        raise ValueError(f"design covers {design.num_layers} layers but costs were given for {len(costs)}")
    layer_group = design.layer_group()
    strategies = [design.strategies[g] for g in layer_group]
    tuned = [i for i, g in enumerate(layer_group) if design.tunable[g]]
    sizeable = [i for i in tuned if any(costs[i][s].unit for s in strategies[i])]
    fixed_cost = [sum(costs[i][s].fixed for s in strategies[i] if not costs[i][s].unit) for i in range(len(costs))]
    return _Layers(layer_group, strategies, tuned, sizeable, fixed_cost)


def _target(design: Design, layers: _Layers, backbone_params: int, budget_fraction: float | None) -> int:
    """The parameter count to reach: the budget, or at natural size (None) what the fixed-size modules cost."""
    if budget_fraction is None:
        if layers.sizeable:
            raise BudgetError(
                "budget_fraction=None (natural size) only fits designs whose modules have a fixed size (BitFit, IA3); "
                f"{design} has sized modules, so give a budget_fraction such as {DEFAULT_BUDGET_FRACTION}"
            )
        return sum(layers.fixed_cost[i] for i in layers.tuned)
    if not 0 < budget_fraction < 1:
        raise BudgetError(f"budget_fraction={budget_fraction} must lie in (0, 1), e.g. 0.005 for 0.5 %")
    return round(budget_fraction * backbone_params)


def _check_fixed_cost(layers: _Layers, costs: Sequence[Mapping[str, StrategyCost]], target: int,
                      backbone_params: int, budget_fraction: float) -> None:
    """The fixed-size modules of the tuned layers must fit in the budget on their own."""
    all_fixed = sum(layers.fixed_cost[i] for i in layers.tuned)
    if all_fixed > target:
        fixed = _fixed_titles("".join(layers.strategies[i] for i in layers.tuned), costs[layers.tuned[0]])
        raise BudgetError(
            f"the budget of {target:,} params ({budget_fraction:.3%} of {backbone_params:,}) is below the fixed "
            f"cost of this design's {fixed} modules ({all_fixed:,} params, {all_fixed / backbone_params:.3%}); "
            f"raise budget_fraction or use {fixed} in fewer groups"
        )


def _layer_shares(design: Design, layers: _Layers, costs: Sequence[Mapping[str, StrategyCost]], target: int,
                  notes: list[str]) -> tuple[list[float], str]:
    """Each sizeable layer's share of the budget (fixed-size modules included), and '' or why even the
    smallest modules do not fit (then the shares are the plain ramp's, for the error to name a layer).

    The allocation's weights over the tuned layers (uniform 1, ..., 1; increasing 1, 2, ..., n; decreasing
    n, ..., 1) give each layer its ideal share `lam * w_i`. Each layer also has a floor, the cost of its
    minimum module set (`layer_floor`). A layer gets `max(floor_i, lam * w_i)`, with `lam` chosen so that the
    shares add up to the budget (`water_fill`): layers at their floor are clamped, the rest keep the ramp's
    proportions. So a design fits, whatever its allocation, exactly when its floors fit in the budget; it
    fits whenever its uniform twin does; and a ramp in which every layer already affords its floor gets the
    plain proportional shares `B * w_i / sum(w)`, i.e. the sizes it got before floors were introduced.

    Why a design that fits with uniform allocation fits with any ramp: uniform gives every sized layer
    `B / m` (B the spendable budget, m the sized layers), so it fits exactly when `B / m >= floor_i` for
    every layer, hence `sum(floor_i) <= m * max(floor_i) <= B`. The water-filled total
    `sum(max(floor_i, lam * w_i))` is continuous and non-decreasing in `lam`, equals `sum(floor_i) <= B` at
    `lam = 0` and grows without bound, so some `lam` meets B exactly; every share is then at least its floor,
    so every sized strategy gets a size >= 0.5, which rounds to >= 1.
    """
    sizeable = layers.sizeable
    w_of = dict(zip(layers.tuned, allocation_weights(design.allocation, len(layers.tuned))))
    spendable = target - sum(layers.fixed_cost[i] for i in layers.tuned if i not in sizeable)
    floors = [layer_floor(costs[i], layers.strategies[i]) for i in sizeable]
    solved = water_fill(spendable, [w_of[i] for i in sizeable], floors)
    if solved is None:
        # not even the minimum modules fit: name the first layer the plain ramp starves, and the totals
        total_w = sum(w_of[i] for i in sizeable)
        return [spendable * w_of[i] / total_w for i in sizeable], (
            f"the smallest modules of all tuned layers need {sum(floors):,.0f} params, more than the "
            f"{spendable:,} to spend; ")
    filled, clamped = solved
    if clamped:
        raised = ", ".join(str(sizeable[k]) for k in sorted(clamped))
        notes.append(f"{design.allocation} allocation: layer(s) {raised} raised to their smallest modules (their "
                     "share of the ramp could not buy size 1); the other layers keep its proportions")
    return filled, ""


def _exact_sizes(design: Design, layers: _Layers, costs: Sequence[Mapping[str, StrategyCost]], target: int,
                 notes: list[str]) -> dict[tuple[int, str], float]:
    """The real-valued size of every sized module: its layer's share, less the layer's fixed-size modules,
    split equally between the layer's sized strategies."""
    filled, shortfall = _layer_shares(design, layers, costs, target, notes)
    real: dict[tuple[int, str], float] = {}
    for i, layer_share in zip(layers.sizeable, filled):
        share = layer_share - layers.fixed_cost[i]
        sized = [s for s in layers.strategies[i] if costs[i][s].unit]
        label = _group_label(design, layers.group[i])
        if share <= 0:
            fixed = _fixed_titles(layers.strategies[i], costs[i])
            raise BudgetError(
                f"{label}: layer {i} gets {layer_share:,.0f} params but its {fixed} modules alone cost "
                f"{layers.fixed_cost[i]:,}; {shortfall}raise budget_fraction or drop {fixed} from this group"
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
    return real


def _fill_solution(sol: BudgetSolution, layers: _Layers, costs: Sequence[Mapping[str, StrategyCost]],
                   sizes: Mapping[tuple[int, str], int]) -> None:
    """Every layer's sizes (1 for a fixed-size module, nothing for an untuned layer) and parameters into `sol`."""
    tuned = set(layers.tuned)
    for i, strat in enumerate(layers.strategies):
        row = {s: sizes.get((i, s), 1) for s in strat} if i in tuned else {}
        sol.sizes.append(row)
        sol.layer_params.append(sum(costs[i][s].params(n) for s, n in row.items()))
    if sol.budget_fraction is not None and not layers.sizeable and sol.trainable_params < sol.target_params:
        sol.notes.append(
            f"fixed-size modules reach {sol.trainable_params:,} of the {sol.target_params:,}-param budget; "
            "use budget_fraction=null to state their natural size"
        )


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
