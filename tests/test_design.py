import json
import random

import pytest

from pdspace.design import Design, DesignSpace, GroupingConstraint, grouping_matches, named_design
from pdspace.design.space import StrategyConstraint, compositions, tunable_constraint

S4 = Design(groups=[4, 8, 8, 4], allocation="uniform", tunable=[True] * 4, strategies=["AL", "AP", "APB", "PBL"])


def test_design_id_round_trip_and_json():
    assert str(S4) == "g4-8-8-4.alloc-uniform.tune-1111.A+L|A+P|A+P+B|P+B+L"
    assert Design.parse(str(S4)) == S4
    assert Design.from_dict(json.loads(json.dumps(S4.to_dict()))) == S4
    assert hash(Design.parse(str(S4))) == hash(S4)
    assert {S4, Design.parse(str(S4))} == {S4}


def test_design_normalises_letters_and_untuned_groups():
    a = Design([2, 2], "increasing", "10", ["L+a", "P"])
    b = Design([2, 2], "increasing", [True, False], ["AL", "B"])
    assert a == b and a.strategies == ("AL", "")
    assert str(a) == "g2-2.alloc-increasing.tune-10.A+L|-"
    assert Design.parse(str(a)) == a
    with pytest.raises(AttributeError):
        a.groups = (1, 3)  # frozen


def test_design_group_ranges():
    assert [list(r) for r in Design([1, 2, 1], strategies=["A"] * 3).group_ranges()] == [[0], [1, 2], [3]]
    assert S4.layer_group()[:5] == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(groups=[2, 2], strategies=["AX", "A"]), "unknown strategy letter 'X' in group 1"),
        (dict(groups=[2, 2], tunable="00", strategies=["A", "A"]), "tunable set is empty"),
        (dict(groups=[2, 2], tunable="1", strategies=["A", "A"]), "tunable has 1 entries but there are 2 groups"),
        (dict(groups=[2, 2], strategies=["A", ""]), "group 2 is tuned but has no strategy"),
        (dict(groups=[2, 0], strategies=["A", "A"]), "positive layer counts"),
        (dict(groups=[2, 2], allocation="spiky", strategies=["A", "A"]), "unknown allocation 'spiky'"),
    ],
)
def test_design_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Design(**kwargs)


def test_parse_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse design id"):
        Design.parse("spindle please")


@pytest.mark.parametrize(
    "pattern, yes, no",
    [
        ("uniform", [6, 6, 6, 6], [5, 6, 6, 7]),
        ("increasing", [2, 2, 8, 12], [6, 6, 6, 6]),
        ("decreasing", [12, 8, 2, 2], [2, 8, 12, 2]),
        ("spindle", [4, 8, 8, 4], [4, 8, 8, 8]),
        ("spindle", [3, 9, 8, 4], [8, 4, 8, 4]),
        ("bottleneck", [8, 4, 4, 8], [4, 8, 8, 4]),
        ("any", [1, 1, 1, 21], None),
    ],
)
def test_grouping_patterns(pattern, yes, no):
    assert grouping_matches(pattern, yes)
    if no is not None:
        assert not grouping_matches(pattern, no)


def test_grouping_patterns_are_disjoint_and_counted():
    named = ["increasing", "uniform", "decreasing", "spindle", "bottleneck"]
    sets = {p: set(GroupingConstraint(p, 24).enumerate()) for p in named}
    for i, p in enumerate(named):
        for q in named[i + 1:]:
            assert not sets[p] & sets[q], (p, q)
    assert len(GroupingConstraint("any", 24)) == 1771  # C(23, 3)
    assert sets["uniform"] == {(6, 6, 6, 6)}
    assert (4, 8, 8, 4) in sets["spindle"]
    assert all(sum(c) == 24 and min(c) >= 1 for c in compositions(24, 4))


def test_grouping_constraint_errors():
    with pytest.raises(ValueError, match="allows no split of 5 layers into 4 groups"):
        GroupingConstraint("spindle", 5)
    assert set(GroupingConstraint("uniform", 6).enumerate()) == {
        c for c in compositions(6, 4) if sorted(c) == [1, 1, 2, 2]}
    with pytest.raises(ValueError, match="summing to its 24 layers"):
        GroupingConstraint([[4, 8, 8, 5]], 24)
    with pytest.raises(ValueError, match="unknown grouping pattern"):
        GroupingConstraint("wobbly", 24)


def test_other_constraints():
    tun = tunable_constraint("any")
    assert len(tun) == 15 and tun.contains((True, False, False, False)) and not tun.contains((False,) * 4)
    assert tunable_constraint("all").enumerate() == [(True,) * 4]
    strat = StrategyConstraint(["AL", "any", ["AP", "P+B"], "L"])
    assert len(strat) == 1 * 15 * 2 * 1
    assert strat.contains(["A+L", "PBL", "BP", "L"]) and not strat.contains(["AP", "P", "P", "L"])
    with pytest.raises(ValueError, match="unknown strategy letter 'Z' in group 3"):
        StrategyConstraint(["A", "A", "Z", "A"])


@pytest.mark.parametrize("grouping", ["spindle", "any"])
def test_sampling_1000_legal_distinct_reproducible(grouping):
    space = DesignSpace(24, grouping=grouping)
    designs = space.sample(1000, seed=7)
    assert len(designs) == 1000 and len(set(designs)) == 1000
    assert all(space.contains(d) for d in designs)
    assert all(grouping_matches(grouping, d.groups) for d in designs)
    assert space.sample(1000, seed=7) == designs
    assert space.sample(1000, seed=8) != designs
    # every grouping value is reachable: the sampler is not stuck on a few values
    assert len({d.groups for d in designs}) > 150


def test_small_space_is_exhausted_exactly():
    space = DesignSpace(6, grouping="spindle", allocation="uniform", tunable="all",
                       strategies=["AL", "any", "any", ["P", "B"]])
    assert space.size == 1 * 1 * 1 * (15 * 15 * 2)
    everything = space.sample(10_000, seed=0)
    assert len(everything) == space.size == len(set(everything)) == len(list(space))
    assert all(space.contains(d) for d in everything)


def test_space_size_counts_untuned_groups_once():
    space = DesignSpace(4, grouping="any", allocation="uniform", tunable="any", strategies="any")
    assert space.size == len(set(space)) == sum(15 ** sum(m) for m in tunable_constraint("any").enumerate())
    assert not space.contains(Design([1, 1, 1, 1], "uniform", None, ["A"] * 4).__class__(
        [2, 1, 1, 1], "uniform", None, ["A"] * 4))


def test_named_designs():
    assert named_design("s4-model", 24) == S4
    assert str(named_design("s4-3b-model", 48)) == "g8-16-16-8.alloc-uniform.tune-1111.P+L|A+L|P+B+L|A+P+B"
    assert named_design("s4-model", 12).groups == (2, 4, 4, 2)
    assert named_design("s4-model", 6).groups == (1, 2, 2, 1)
    assert grouping_matches("spindle", named_design("s4-model", 8).groups)
    lora = named_design("lora", 12)
    assert lora.strategies == ("L",) * 4 and sum(lora.groups) == 12
    with pytest.raises(ValueError, match="unknown design name"):
        named_design("s5-model", 24)


def test_sample_one_uses_rng_only():
    space = DesignSpace(12)
    assert space.sample_one(random.Random(3)) == space.sample_one(random.Random(3))


def test_a_space_names_its_letters_and_the_paper_keeps_four():
    paper, five = DesignSpace(24), DesignSpace(24, letters="APBLI")
    assert paper.letters == "APBL" and five.letters == "APBLI" and repr(five).endswith("letters=APBLI)")
    # sampling the paper's space is unchanged by a fifth registered strategy; the wider space draws it
    assert paper.sample(200, seed=0) == DesignSpace(24, letters="LBPA").sample(200, seed=0)
    assert not any("I" in s for d in paper.sample(500, seed=0) for s in d.strategies)
    assert any("I" in s for d in five.sample(50, seed=0) for s in d.strategies)
    assert all(five.contains(d) for d in five.sample(200, seed=1))
    assert DesignSpace(4, grouping="any", allocation="uniform", tunable="all", letters="APBLI").size == 31 ** 4
    # 'any' means the space's letters; a set named explicitly may use any registered letter
    strat = StrategyConstraint(["LI", "any", "any", "any"], letters="AL")
    assert len(strat) == 1 * 3 ** 3 and strat.description == "LI|any|any|any"
    assert not strat.contains(["LI", "P", "A", "A"]) and strat.contains(["I+L", "A", "AL", "L"])
    with pytest.raises(ValueError, match=r"unknown strategy letter 'X'; use letters from A \(Adapter\), P \(Prefix\), "
                                         r"B \(BitFit\), L \(LoRA\), I \(IA3\)"):
        DesignSpace(24, letters="APBX")


def test_ia3_designs_keep_the_canonical_letter_order():
    d = Design([2, 2], "uniform", None, ["i+L", "IAB"])
    assert d.strategies == ("LI", "ABI") and str(d) == "g2-2.alloc-uniform.tune-11.L+I|A+B+I"
    assert Design.parse(str(d)) == d
