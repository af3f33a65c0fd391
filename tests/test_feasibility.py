"""Every design of the unconstrained space S0 fits the paper's 0.5 % budget, whatever its allocation ramp."""

import time

import pytest

from pdspace import DesignSpace
from pdspace.archs import build_model
from pdspace.design import BudgetError, solve_budget
from pdspace.design.budget import allocation_weights
from pdspace.peft import layer_map
from pdspace.peft.patch import count_params, layer_costs

NUM_SAMPLES = 2000


def _floor(costs, strategies):
    # by hand: BitFit plus k times the dearest of the k sized strategies at size 0.5 (equal split within a layer)
    sized = [costs[s] for s in strategies if costs[s].unit]
    return sum(costs[s].fixed for s in strategies if not costs[s].unit) + len(sized) * max(
        (c.fixed + c.unit / 2 for c in sized), default=0)


def _plain_ramp_starves_a_layer(design, costs, backbone, fraction):
    """Whether the plain proportional ramp (the solver before floors) leaves some layer below its floor."""
    groups = design.layer_group()
    strategies = [design.strategies[g] for g in groups]
    tuned = [i for i, g in enumerate(groups) if design.tunable[g]]
    sized = [i for i in tuned if any(costs[i][s].unit for s in strategies[i])]
    if not sized:
        return False
    w = dict(zip(tuned, allocation_weights(design.allocation, len(tuned))))
    spendable = round(fraction * backbone) - sum(_floor(costs[i], strategies[i]) for i in tuned if i not in sized)
    total_w = sum(w[i] for i in sized)
    return any(spendable * w[i] / total_w < _floor(costs[i], strategies[i]) for i in sized)


@pytest.mark.parametrize("arch, head", [("t5-base", "seq2seq"), ("roberta-base", "base"), ("bart-base", "seq2seq")])
def test_no_s0_design_is_infeasible_at_half_a_percent(arch, head):
    start = time.perf_counter()
    model = build_model(arch, head, device="meta")
    layers = layer_map(model)
    costs = [layer_costs(layer) for layer in layers]
    backbone = count_params(model)[0]
    starved, infeasible = 0, []
    for design in DesignSpace(len(layers), 4).sample(NUM_SAMPLES, seed=0):
        starved += _plain_ramp_starves_a_layer(design, costs, backbone, 0.005)
        try:
            sol = solve_budget(design, costs, backbone, 0.005)
        except BudgetError as err:
            infeasible.append(f"{design}: {err}")
            continue
        assert all(n >= 1 for row in sol.sizes for n in row.values())
    print(f"\n{arch}: {starved} of {NUM_SAMPLES} S0 designs starve a layer on the plain ramp (infeasible before "
          f"floors), {len(infeasible)} infeasible now ({time.perf_counter() - start:.1f} s)")
    assert starved > 0  # the sample does exercise the floors
    assert not infeasible, infeasible[:3]
