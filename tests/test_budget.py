import pytest

from pdspace import apply_design
from pdspace.archs import build_model
from pdspace.design import BudgetError, Design, StrategyCost, named_design, solve_budget
from pdspace.peft import layer_map

COSTS = {"A": StrategyCost(fixed=10, unit=21), "P": StrategyCost(unit=20), "L": StrategyCost(unit=40),
         "B": StrategyCost(fixed=50)}


def costs(n):
    return [dict(COSTS) for _ in range(n)]


def test_exact_target_when_integers_allow():
    # 4 layers of LoRA, unit 40: 0.5 % of 64,000 = 320 = 4 layers x rank 2 x 40
    sol = solve_budget(Design([2, 2], strategies=["L", "L"]), costs(4), 64_000, 0.005)
    assert sol.target_params == 320 and sol.trainable_params == 320
    assert [row["L"] for row in sol.sizes] == [2, 2, 2, 2]
    assert sol.fraction == pytest.approx(0.005)


def test_bitfit_is_taken_first_and_the_rest_split_equally():
    # one layer, A+P+B: budget 1,000; BitFit 50, then 950 / 2 = 475 each: P = 475 / 20, A = (475 - 10) / 21
    sol = solve_budget(Design([1], strategies=["APB"]), costs(1), 200_000, 0.005)
    row = sol.sizes[0]
    assert row["B"] == 1
    assert abs(row["P"] - 475 / 20) <= 1 and abs(row["A"] - 465 / 21) <= 1
    assert abs(sol.trainable_params - 1000) <= 20 / 2  # within half the smallest unit


def test_allocation_patterns_order_layer_budgets():
    for alloc, cmp in [("increasing", lambda a, b: a < b), ("decreasing", lambda a, b: a > b)]:
        sol = solve_budget(Design([4], alloc, None, ["P"]), costs(4), 1_000_000, 0.005)
        sizes = [row["P"] for row in sol.sizes]
        assert all(cmp(a, b) for a, b in zip(sizes, sizes[1:])), (alloc, sizes)
        assert abs(sol.trainable_params - 5000) <= 10


def test_untuned_groups_get_nothing_and_fixed_only_layers_cost_their_fixed_size():
    sol = solve_budget(Design([1, 1, 2], "uniform", "011", ["A", "B", "L"]), costs(4), 100_000, 0.005)
    assert sol.sizes[0] == {} and sol.layer_params[0] == 0
    assert sol.sizes[1] == {"B": 1} and sol.layer_params[1] == 50
    # the LoRA layers share what BitFit left: (500 - 50) / 2 = 225 -> rank 225/40 ~ 5.6
    assert sol.trainable_params == pytest.approx(500, abs=20)


def test_bitfit_alone_natural_size_and_over_budget():
    sol = solve_budget(Design([2], strategies=["B"]), costs(2), 10_000, None)
    assert sol.trainable_params == 100 and sol.budget_fraction is None
    with pytest.raises(BudgetError, match=r"below the fixed cost of this design's BitFit biases \(100 params"):
        solve_budget(Design([2], strategies=["B"]), costs(2), 10_000, 0.005)
    under = solve_budget(Design([2], strategies=["B"]), costs(2), 100_000, 0.005)
    assert under.trainable_params == 100 and "budget_fraction=null" in under.notes[0]


def test_unreachable_budget_names_the_group():
    with pytest.raises(BudgetError, match=r"group 2 \(layers 2-3\): lora in layer 2 would get lora_rank=0.\d+ < 1"):
        # 120 params over 4 layers: adapter (30 - 10) / 21 ~ 0.95 fits, group 2's P+L gives LoRA 15 / 40
        solve_budget(Design([2, 2], strategies=["A", "PL"]), costs(4), 24_000, 0.005)
    with pytest.raises(BudgetError, match=r"group 1 \(layers 0-0\): layer 0 gets .* BitFit biases alone cost 50"):
        solve_budget(Design([1, 1], strategies=["AB", "A"]), costs(2), 16_000, 0.005)
    with pytest.raises(BudgetError, match="budget_fraction=None .* only fits designs"):
        solve_budget(Design([1], strategies=["A"]), costs(1), 10_000, None)
    with pytest.raises(BudgetError, match=r"must lie in \(0, 1\)"):
        solve_budget(Design([1], strategies=["A"]), costs(1), 10_000, 5.0)


@pytest.mark.parametrize("arch, head", [("t5-base", "seq2seq"), ("roberta-base", "base"), ("bart-base", "seq2seq")])
def test_s4_design_hits_half_a_percent_on_real_architectures(arch, head):
    model = build_model(arch, head, device="meta")
    design = named_design("s4-model", len(layer_map(model)))
    report = apply_design(model, design, budget_fraction=0.005)
    print(f"\n{arch}\n{report.table()}")
    assert report.backbone_params == {"t5-base": 222_903_552, "roberta-base": 124_645_632,
                                      "bart-base": 139_420_416}[arch]
    assert abs(report.trainable_params - 0.005 * report.backbone_params) / (0.005 * report.backbone_params) < 0.005
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == report.trainable_params + report.head_params
