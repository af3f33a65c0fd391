import pytest

from pdspace import apply_design
from pdspace.archs import build_model
import random

from pdspace.design import BudgetError, Design, StrategyCost, budget, named_design, solve_budget
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
    with pytest.raises(BudgetError, match=r"below the fixed cost of this design's BitFit modules \(100 params"):
        solve_budget(Design([2], strategies=["B"]), costs(2), 10_000, 0.005)
    under = solve_budget(Design([2], strategies=["B"]), costs(2), 100_000, 0.005)
    assert under.trainable_params == 100 and "budget_fraction=null" in under.notes[0]


def test_unreachable_budget_names_the_group():
    # sizes round to 1 from 0.5 up: the message states that threshold; floors: A 20.5 x 2, P+L 2 x 20 x 2 = 121 > 120
    with pytest.raises(BudgetError, match=r"group 2 \(layers 2-3\): lora in layer 2 would get lora_rank=0.38 < 0.5, "
                                          r"which rounds to 0 .* smallest modules of all tuned layers need 121 params, "
                                          r"more than the 120 to spend"):
        # 120 params over 4 layers: adapter (30 - 10) / 21 ~ 0.95 fits, group 2's P+L gives LoRA 15 / 40
        solve_budget(Design([2, 2], strategies=["A", "PL"]), costs(4), 24_000, 0.005)
    with pytest.raises(BudgetError, match=r"group 1 \(layers 0-0\): layer 0 gets .* BitFit modules alone cost 50"):
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


def test_layer_floor_is_k_times_the_dearest_strategy_at_size_half():
    # A at size 0.5 costs 10 + 10.5 = 20.5, P 10, L 20; a layer's share is split equally, so A+P needs 2 x 20.5
    assert budget.layer_floor(COSTS, "AP") == 41
    assert budget.layer_floor(COSTS, "APBL") == 50 + 3 * 20.5
    assert budget.layer_floor(COSTS, "P") == 10 and budget.layer_floor(COSTS, "B") == 50


def test_water_fill_by_hand():
    # nobody below its floor: exactly the plain proportional shares (bit for bit, so fitting ramps keep their sizes)
    plain = [100 * w / 10.0 for w in (1.0, 2.0, 3.0, 4.0)]
    assert budget.water_fill(100, [1.0, 2.0, 3.0, 4.0], [5, 5, 5, 5]) == (plain, set())
    # lam = 10: layer 0 (10 < 30) is clamped; then lam = 70 / 9 puts layer 1 at 15.6 < 18: clamped too;
    # the last two share 100 - 48 = 52 as 3 : 4
    shares, clamped = budget.water_fill(100, [1.0, 2.0, 3.0, 4.0], [30, 18, 10, 10])
    assert shares == pytest.approx([30, 18, 52 * 3 / 7, 52 * 4 / 7]) and clamped == {0, 1}
    assert budget.water_fill(100, [1.0, 1.0], [60, 50]) is None


def test_ramp_that_starves_its_lightest_layer_lifts_it_to_its_floor():
    # increasing over 4 layers, target 300: plain shares 30, 60, 90, 120, but layer 0's A+L needs
    # 2 x max(10 + 21 / 2, 40 / 2) = 41 (today's solver refused: adapter_dim 0.24). Water-filling: layer 0 gets 41,
    # the P layers share 259 as 2 : 3 : 4 -> 57.6, 86.3, 115.1 -> prefix_len 2.88, 4.32, 5.76 -> 2, 4, 5;
    # layer 0: A (20.5 - 10) / 21 = 0.5 and L 20.5 / 40 -> 1 and 1. Total 31 + 40 + 220 = 291 (one more P unit: 311)
    design = Design([1, 3], "increasing", None, ["AL", "P"])
    sol = solve_budget(design, costs(4), 60_000, 0.005)
    assert sol.sizes == [{"A": 1, "L": 1}, {"P": 2}, {"P": 4}, {"P": 5}]
    assert sol.trainable_params == 291
    assert sol.notes == ["increasing allocation: layer(s) 0 raised to their smallest modules (their share of the ramp "
                         "could not buy size 1); the other layers keep its proportions"]
    # the mirror image: decreasing ramp, lightest layer last
    mirror = solve_budget(Design([3, 1], "decreasing", None, ["P", "AL"]), costs(4), 60_000, 0.005)
    assert mirror.sizes == sol.sizes[::-1]


def test_ramp_that_fits_keeps_the_plain_proportional_sizes():
    # 5,000 over P layers with weights 1..4: 500, 1000, 1500, 2000 params = prefix_len 25, 50, 75, 100 exactly
    sol = solve_budget(Design([4], "increasing", None, ["P"]), costs(4), 1_000_000, 0.005)
    assert [row["P"] for row in sol.sizes] == [25, 50, 75, 100] and sol.notes == []


def test_every_ramp_fits_when_its_uniform_twin_fits():
    rng = random.Random(0)
    letters = ["A", "P", "L", "AB", "PL", "AL", "APL", "APBL", "PB", "B", "LB"]
    checked = 0
    for _ in range(3000):
        groups = [rng.randint(1, 4) for _ in range(4)]
        n = sum(groups)
        layer_costs = [{"A": StrategyCost(fixed=rng.randint(5, 40), unit=rng.randint(10, 80)),
                        "P": StrategyCost(unit=rng.randint(5, 60)), "L": StrategyCost(unit=rng.randint(10, 120)),
                        "B": StrategyCost(fixed=rng.randint(5, 60))} for _ in range(n)]
        mask = [rng.random() < 0.8 for _ in groups]
        mask[rng.randrange(4)] = True
        strategies = [rng.choice(letters) for _ in groups]
        backbone = rng.randint(5_000, 200_000)
        try:
            solve_budget(Design(groups, "uniform", mask, strategies), layer_costs, backbone, 0.01)
        except BudgetError:
            continue
        checked += 1
        for alloc in ("increasing", "decreasing"):
            sol = solve_budget(Design(groups, alloc, mask, strategies), layer_costs, backbone, 0.01)
            assert all(n >= 1 for row in sol.sizes for n in row.values())
    assert checked > 500
