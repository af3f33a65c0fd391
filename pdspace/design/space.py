"""The four design-space dimensions as data: designs, per-dimension constraints, design spaces.

A *design* is one point: layer groups, an allocation pattern, the tuned groups, and per
group a set of PEFT strategies, each named by the letter it registered with
(`pdspace.design.registry`, the one registry; `pdspace.peft.strategies` registers the
shipped ones). A *constraint* is the set of values one dimension may take; a `DesignSpace` combines four
constraints and samples distinct designs.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pdspace.design import registry
from pdspace.design.registry import STRATEGY_LETTERS

ALLOCATIONS = ("increasing", "uniform", "decreasing")
GROUPING_PATTERNS = ("increasing", "uniform", "decreasing", "spindle", "bottleneck", "any")
DEFAULT_NUM_GROUPS = 4


def _letters_help(letters: Iterable[str]) -> str:
    known = registry.strategies()
    return ", ".join(f"{ch} ({known[ch].title})" for ch in letters if ch in known)


def normalize_strategies(value: str | Iterable[str], group: int | None = None) -> str:
    """Canonical strategy string for one group: registered letters in canonical order (A, P, B, L, ...), e.g. 'APB'."""
    letters = value.replace("+", "").replace(" ", "") if isinstance(value, str) else "".join(value)
    where = f" in group {group + 1}" if group is not None else ""
    known = registry.strategies()
    for ch in letters:
        if ch.upper() not in known:
            raise ValueError(f"unknown strategy letter {ch!r}{where}; use letters from {_letters_help(known)}, "
                             "e.g. 'A+L'")
    upper = {ch.upper() for ch in letters}
    return "".join(ch for ch in known if ch in upper)


def strategy_sets(letters: str | None = None) -> tuple[str, ...]:
    """Every non-empty strategy set over `letters` (None: the paper's A, P, B, L), smallest sets first."""
    pool = normalize_strategies(STRATEGY_LETTERS if letters is None else letters)
    if not pool:
        raise ValueError("a design space needs at least one strategy letter, e.g. letters='APBL'")
    return _subsets(pool)


def _subsets(pool: str) -> tuple[str, ...]:
    return tuple("".join(c) for k in range(1, len(pool) + 1) for c in itertools.combinations(pool, k))


def mask_text(mask: Iterable[bool]) -> str:
    """A tunable mask as its 0/1 string ('1101')."""
    return "".join("1" if t else "0" for t in mask)


def parse_dimension(name: str, num_groups: int | None = None) -> tuple[str, int | None]:
    """A dimension name as (dimension, group): ('grouping', None) ... ('strategy', k) for 'strategy_gk'
    (k from 1, at most `num_groups` when given); ValueError naming the known ones otherwise."""
    if name in ("grouping", "allocation", "tunable"):
        return name, None
    m = re.fullmatch(r"strategy_g([1-9]\d*)", str(name))
    if m and (num_groups is None or int(m.group(1)) <= num_groups):
        return "strategy", int(m.group(1))
    last = f"strategy_g{num_groups}" if num_groups else "strategy_gG"
    raise ValueError(f"unknown dimension {name!r}; use grouping, allocation, tunable or strategy_g1 ... {last} "
                     "(one group's strategy set)")


def _parse_mask(value: str | int | Sequence[bool] | Sequence[int], num_groups: int | None = None) -> tuple[bool, ...]:
    """A tunable mask from any form a user types: '1001', 1001 (what the shell leaves of '1001'), [1,0,0,1].

    An integer lost its leading zeros on the way (0110 -> 110): it is padded back to `num_groups` digits.
    """
    if isinstance(value, bool):
        raise ValueError(f"tunable mask {value!r} must be a string of 0/1 per group, e.g. '1101'")
    if isinstance(value, int):
        text = str(value)
        if num_groups is not None and len(text) < num_groups and not set(text) - {"0", "1"}:
            text = text.zfill(num_groups)
        value = text
    if isinstance(value, str):
        if not value or set(value) - {"0", "1"}:
            raise ValueError(f"tunable mask {value!r} must be a string of 0/1 per group, e.g. '1101'")
        return tuple(ch == "1" for ch in value)
    items = list(value)
    if any(v not in (0, 1) for v in items):
        raise ValueError(f"tunable mask {items!r} must hold one 0/1 (or true/false) per group, e.g. [1,1,0,1]")
    return tuple(bool(v) for v in items)


@dataclass(frozen=True)
class Design:
    """One point of the design space; frozen, hashable and round-trips through `str`/`parse`.

    Groups that are not tuned carry no strategies (normalised to ''), so two designs that
    differ only in an untuned group's strategies are the same design.
    """

    groups: tuple[int, ...]
    allocation: str
    tunable: tuple[bool, ...]
    strategies: tuple[str, ...]

    def __init__(
        self,
        groups: Sequence[int],
        allocation: str = "uniform",
        tunable: Sequence[bool] | str | None = None,
        strategies: Sequence[str | Iterable[str]] = (),
    ) -> None:
        groups_t = tuple(int(n) for n in groups)
        if not groups_t or any(n < 1 for n in groups_t):
            raise ValueError(f"groups {list(groups_t)} must be a non-empty list of positive layer counts")
        g = len(groups_t)
        if allocation not in ALLOCATIONS:
            raise ValueError(f"unknown allocation {allocation!r}; use one of {', '.join(ALLOCATIONS)}")
        mask = (True,) * g if tunable is None else _parse_mask(tunable, g)
        if len(mask) != g:
            raise ValueError(f"tunable has {len(mask)} entries but there are {g} groups; give one per group")
        if not any(mask):
            raise ValueError("tunable set is empty: at least one group must be tuned")
        if len(strategies) != g:
            raise ValueError(f"strategies has {len(strategies)} entries but there are {g} groups; give one per group")
        strat = []
        for i, (tuned, s) in enumerate(zip(mask, strategies)):
            norm = normalize_strategies(s, group=i)
            if tuned and not norm:
                raise ValueError(f"group {i + 1} is tuned but has no strategy; give it letters from A, P, B, L")
            strat.append(norm if tuned else "")
        object.__setattr__(self, "groups", groups_t)
        object.__setattr__(self, "allocation", allocation)
        object.__setattr__(self, "tunable", mask)
        object.__setattr__(self, "strategies", tuple(strat))

    @property
    def num_layers(self) -> int:
        """Total number of layers the design covers."""
        return sum(self.groups)

    @property
    def num_groups(self) -> int:
        """Number of layer groups."""
        return len(self.groups)

    def group_ranges(self) -> list[range]:
        """Layer indices (in the one encoder-then-decoder stack) of each group."""
        bounds = [0, *itertools.accumulate(self.groups)]
        return [range(a, b) for a, b in zip(bounds, bounds[1:])]

    def layer_group(self) -> list[int]:
        """Group index of every layer."""
        return [g for g, n in enumerate(self.groups) for _ in range(n)]

    @property
    def mask(self) -> str:
        """The tuned groups as a 0/1 string, one digit per group ('1101')."""
        return mask_text(self.tunable)

    def choices(self) -> dict[str, Any]:
        """The four dimensions' `choice` values that pin exactly this design (a preset's or a job's overrides);
        an untuned group's strategies do not matter, so they read 'any' (the design blanks them)."""
        return {"grouping": list(self.groups), "allocation": self.allocation, "tunable": self.mask,
                "strategy": [s or "any" for s in self.strategies]}

    def __str__(self) -> str:
        strat = "|".join("+".join(s) if s else "-" for s in self.strategies)
        return f"g{'-'.join(map(str, self.groups))}.alloc-{self.allocation}.tune-{self.mask}.{strat}"

    @classmethod
    def parse(cls, text: str) -> Design:
        """Inverse of `str(design)`, e.g. 'g4-8-8-4.alloc-uniform.tune-1111.A+L|A+P|A+P+B|P+B+L'."""
        parts = text.strip().split(".")
        if len(parts) != 4 or not parts[0].startswith("g") or not parts[1].startswith("alloc-") \
                or not parts[2].startswith("tune-"):
            raise ValueError(
                f"cannot parse design id {text!r}; expected the form "
                "'g4-8-8-4.alloc-uniform.tune-1111.A+L|A+P|A+P+B|P+B+L'"
            )
        try:
            groups = [int(n) for n in parts[0][1:].split("-")]
        except ValueError as err:
            raise ValueError(f"cannot parse group sizes in design id {text!r}") from err
        strategies = ["" if s == "-" else s for s in parts[3].split("|")]
        return cls(groups, parts[1][len("alloc-"):], parts[2][len("tune-"):], strategies)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "id": str(self),
            "groups": list(self.groups),
            "allocation": self.allocation,
            "tunable": list(self.tunable),
            "strategies": ["+".join(s) for s in self.strategies],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Design:
        """Inverse of `to_dict` (the 'id' key, if present, is checked against the fields)."""
        design = cls(data["groups"], data["allocation"], data["tunable"], data["strategies"])
        if "id" in data and data["id"] != str(design):
            raise ValueError(f"design id {data['id']!r} does not match its fields ({design})")
        return design


# ---------------------------------------------------------------------------------------------
# Grouping patterns


def _non_decreasing(c: Sequence[int]) -> bool:
    return all(a <= b for a, b in zip(c, c[1:]))


def _unimodal(c: Sequence[int], up_then_down: bool) -> bool:
    sign = 1 if up_then_down else -1
    k = 0
    while k + 1 < len(c) and sign * (c[k + 1] - c[k]) >= 0:
        k += 1
    return all(sign * (a - b) >= 0 for a, b in zip(c[k:], c[k + 1:]))


def grouping_matches(pattern: str, c: Sequence[int]) -> bool:
    """Whether composition `c` (layers per group) follows a grouping pattern.

    - uniform: sizes as equal as integers allow (max - min <= 1; all equal when G divides
      the layer count). On other counts it can overlap the patterns below: for 6 layers,
      [1, 2, 2, 1] is both uniform and spindle.
    - increasing: n1 <= n2 <= ... <= nG and n1 < nG (non-decreasing, not uniform).
    - decreasing: the mirror image of increasing.
    - spindle (G >= 3): rises then falls (unimodal) and every middle group is strictly
      larger than both end groups, e.g. [4, 8, 8, 4]; for G = 4: n2, n3 > max(n1, n4).
    - bottleneck (G >= 3): falls then rises and every middle group is strictly smaller
      than both end groups, e.g. [8, 4, 4, 8].
    - any: every composition (each group >= 1 layer).
    """
    if pattern == "any":
        return True
    if pattern == "uniform":
        return max(c) - min(c) <= 1
    if pattern == "increasing":
        return _non_decreasing(c) and c[0] < c[-1]
    if pattern == "decreasing":
        return _non_decreasing(c[::-1]) and c[0] > c[-1]
    if pattern in ("spindle", "bottleneck"):
        if len(c) < 3:
            return False
        middle = c[1:-1]
        if pattern == "spindle":
            return _unimodal(c, True) and min(middle) > max(c[0], c[-1])
        return _unimodal(c, False) and max(middle) < min(c[0], c[-1])
    raise ValueError(f"unknown grouping pattern {pattern!r}; use one of {', '.join(GROUPING_PATTERNS)}")


def compositions(num_layers: int, num_groups: int) -> Iterator[tuple[int, ...]]:
    """All ways to split `num_layers` consecutive layers into `num_groups` non-empty groups."""
    for cuts in itertools.combinations(range(1, num_layers), num_groups - 1):
        bounds = (0, *cuts, num_layers)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def scaled_grouping(ratio: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Scale a group-size ratio (e.g. 1:2:2:1) to `num_layers` by largest remainders."""
    total = sum(ratio)
    exact = [r * num_layers / total for r in ratio]
    sizes = [max(1, math.floor(x)) for x in exact]
    order = sorted(range(len(ratio)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    i = 0
    while sum(sizes) < num_layers:
        sizes[order[i % len(order)]] += 1
        i += 1
    if sum(sizes) != num_layers:
        raise ValueError(f"cannot scale group ratio {list(ratio)} to {num_layers} layers: too few layers")
    return tuple(sizes)


# ---------------------------------------------------------------------------------------------
# Constraints: one per dimension, all finite sets with contains / enumerate / sample


class Constraint:
    """A finite set of allowed values of one dimension."""

    description: str

    def enumerate(self) -> list:
        """All allowed values, in a fixed order."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        """Whether `value` is allowed."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Any:
        """One allowed value drawn uniformly with `rng`."""
        values = self.enumerate()
        return values[rng.randrange(len(values))]

    def __len__(self) -> int:
        return len(self.enumerate())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class GroupingConstraint(Constraint):
    """Allowed group sizes: a pattern name (see `grouping_matches`) or an explicit list."""

    def __init__(
        self,
        spec: str | Sequence[Sequence[int]] | Sequence[int],
        num_layers: int,
        num_groups: int = DEFAULT_NUM_GROUPS,
    ) -> None:
        if num_groups < 1 or num_layers < num_groups:
            raise ValueError(
                f"cannot split {num_layers} layers into {num_groups} non-empty groups; use num_groups <= {num_layers}"
            )
        self.num_layers, self.num_groups = num_layers, num_groups
        if isinstance(spec, str):
            if spec not in GROUPING_PATTERNS:
                raise ValueError(f"unknown grouping pattern {spec!r}; use one of {', '.join(GROUPING_PATTERNS)}")
            self.pattern: str | None = spec
            self._values = [c for c in compositions(num_layers, num_groups) if grouping_matches(spec, c)]
            self.description = spec
        else:
            explicit = [spec] if spec and isinstance(spec[0], int) else spec
            self.pattern = None
            self._values = []
            for c in explicit:
                c = tuple(int(n) for n in c)
                if len(c) != num_groups or sum(c) != num_layers or min(c) < 1:
                    raise ValueError(
                        f"groups {list(c)} do not fit the backbone: give {num_groups} positive sizes summing to "
                        f"its {num_layers} layers, or a pattern such as 'uniform' or 'spindle'"
                    )
                self._values.append(c)
            self.description = ",".join("-".join(map(str, c)) for c in self._values)
        if not self._values:
            raise ValueError(
                f"grouping {self.description!r} allows no split of {num_layers} layers into {num_groups} groups; "
                "choose another pattern or change num_groups"
            )
        self._set = set(self._values)

    def enumerate(self) -> list[tuple[int, ...]]:
        return list(self._values)

    def contains(self, value: Sequence[int]) -> bool:
        return tuple(value) in self._set


class ChoiceConstraint(Constraint):
    """A dimension whose allowed values are listed explicitly ('any' = every value, or `any_values`)."""

    def __init__(self, spec: Any, universe: Sequence[Any], parse: Any = lambda v: v, label: str = "value",
                 any_values: Sequence[Any] | None = None) -> None:
        any_values = list(universe if any_values is None else any_values)
        if isinstance(spec, str) and spec == "any":
            values = list(any_values)
        else:
            items = [spec] if isinstance(spec, str) or not isinstance(spec, Iterable) else list(spec)
            values = []
            for item in items:
                v = parse(item)
                if v not in universe:
                    raise ValueError(f"{label} {item!r} is not allowed; use one of {self._show(universe)} or 'any'")
                if v not in values:
                    values.append(v)
        if not values:
            raise ValueError(f"the {label} constraint is empty; list at least one value or use 'any'")
        self._values = values
        self._set = set(values)
        self.description = "any" if self._set == set(any_values) else ",".join(map(self._fmt, values))

    @staticmethod
    def _fmt(v: Any) -> str:
        if isinstance(v, tuple):
            return mask_text(v)
        return str(v)

    def _show(self, universe: Sequence[Any]) -> str:
        return ", ".join(self._fmt(v) for v in list(universe)[:8]) + (" ..." if len(universe) > 8 else "")

    def enumerate(self) -> list:
        return list(self._values)

    def contains(self, value: Any) -> bool:
        return value in self._set


def allocation_constraint(spec: str | Sequence[str] = "any") -> ChoiceConstraint:
    """Allowed allocation patterns: 'any' or a subset of increasing/uniform/decreasing."""
    return ChoiceConstraint(spec, ALLOCATIONS, label="allocation")


def all_masks(num_groups: int) -> list[tuple[bool, ...]]:
    """Every non-empty tunable-group mask, all groups first."""
    masks = [m for m in itertools.product((True, False), repeat=num_groups) if any(m)]
    return masks


def tunable_constraint(spec: Any = "any", num_groups: int = DEFAULT_NUM_GROUPS) -> ChoiceConstraint:
    """Allowed tunable masks: 'any' (every non-empty subset), 'all', one mask or a list of masks.

    A mask is any form `_parse_mask` takes: '1101', 1101, [1,1,0,1] or [true,true,false,true].
    """
    if isinstance(spec, str) and spec == "all":
        spec = ["1" * num_groups]
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(v, (bool, int)) and v in (0, 1) for v in spec) \
            and len(spec) == num_groups and not (num_groups == 1 and isinstance(spec[0], int)):
        spec = [list(spec)]  # one mask given as a list of flags, not a list of masks
    return ChoiceConstraint(spec, all_masks(num_groups), parse=lambda v: _parse_mask(v, num_groups),
                            label="tunable mask")


# the paper's 15 strategy sets; `strategy_sets(letters)` gives those of other letters
ALL_STRATEGY_SETS = _subsets(STRATEGY_LETTERS)


class StrategyConstraint(Constraint):
    """Allowed strategy sets per group: 'any', or per group 'any' / a set / a list of sets.

    `letters` (None: the paper's 'APBL') is the strategy pool: 'any' means every non-empty set of
    it. A set named explicitly may use any registered letter.
    """

    def __init__(self, spec: Any = "any", num_groups: int = DEFAULT_NUM_GROUPS, letters: str | None = None) -> None:
        per_group = [spec] * num_groups if isinstance(spec, str) else list(spec)
        if len(per_group) != num_groups:
            raise ValueError(
                f"strategy constraint has {len(per_group)} entries but there are {num_groups} groups; give one per group"
            )
        pool = strategy_sets(letters)
        self.letters = pool[-1]  # the whole pool, canonical order
        universe = strategy_sets("".join(registry.strategies()))
        self.per_group = [
            ChoiceConstraint(s, universe, parse=lambda v, i=i: normalize_strategies(v, i),
                             label=f"group {i + 1} strategy set", any_values=pool)
            for i, s in enumerate(per_group)
        ]
        self.num_groups = num_groups
        self.description = "|".join(c.description for c in self.per_group)

    def enumerate(self) -> list[tuple[str, ...]]:
        return list(itertools.product(*(c.enumerate() for c in self.per_group)))

    def __len__(self) -> int:
        return math.prod(len(c) for c in self.per_group)

    def contains(self, value: Sequence[str]) -> bool:
        return len(value) == self.num_groups and all(
            c.contains(normalize_strategies(v)) for c, v in zip(self.per_group, value)
        )

    def contains_masked(self, value: Sequence[str], mask: Sequence[bool]) -> bool:
        """Like `contains`, ignoring groups that are not tuned."""
        return all(not t or c.contains(normalize_strategies(v)) for c, v, t in zip(self.per_group, value, mask))

    def sample(self, rng: random.Random) -> tuple[str, ...]:
        return tuple(c.sample(rng) for c in self.per_group)


# ---------------------------------------------------------------------------------------------


class DesignSpace:
    """Four per-dimension constraints over a backbone with `num_layers` layers.

    `letters` (None: the paper's 'APBL') is the pool of strategies a group's 'any' draws from;
    a registered extra such as IA3 ('APBLI') opens more sets. `sample` draws each dimension
    independently and uniformly from its constraint (as the paper does), then de-duplicates;
    designs differing only in untuned groups' strategies count as one.
    """

    def __init__(
        self,
        num_layers: int,
        num_groups: int = DEFAULT_NUM_GROUPS,
        grouping: Any = "any",
        allocation: Any = "any",
        tunable: Any = "any",
        strategies: Any = "any",
        letters: str | None = None,
    ) -> None:
        self.num_layers, self.num_groups = num_layers, num_groups
        self.grouping = GroupingConstraint(grouping, num_layers, num_groups)
        self.allocation = allocation_constraint(allocation)
        self.tunable = tunable_constraint(tunable, num_groups)
        self.strategies = StrategyConstraint(strategies, num_groups, letters)
        self.letters = self.strategies.letters

    @classmethod
    def from_block(cls, block: Mapping[str, Any], num_layers: int, num_groups: int = DEFAULT_NUM_GROUPS) -> DesignSpace:
        """The space a `space:` block (as plain containers) describes on a backbone of `num_layers` layers: its
        four constraints and its `letters` (an absent key: 'any'; the paper's letters). The one builder of a
        space from config: a sweep's plan, a study's trials and a search's final space all use it."""
        return cls(num_layers, num_groups, grouping=block.get("grouping", "any"),
                   allocation=block.get("allocation", "any"), tunable=block.get("tunable", "any"),
                   strategies=block.get("strategy", "any"), letters=block.get("letters"))

    def __repr__(self) -> str:
        letters = "" if self.letters == STRATEGY_LETTERS else f", letters={self.letters}"
        return (f"DesignSpace(layers={self.num_layers}, grouping={self.grouping.description}, "
                f"allocation={self.allocation.description}, tunable={self.tunable.description}, "
                f"strategies={self.strategies.description}{letters})")

    def contains(self, design: Design) -> bool:
        """Whether `design` lies in this space."""
        return (
            design.num_groups == self.num_groups
            and self.grouping.contains(design.groups)
            and self.allocation.contains(design.allocation)
            and self.tunable.contains(design.tunable)
            and self.strategies.contains_masked(design.strategies, design.tunable)
        )

    @property
    def size(self) -> int:
        """Exact number of distinct designs in the space."""
        per_group = [len(c) for c in self.strategies.per_group]
        strategy_count = sum(
            math.prod(n for n, t in zip(per_group, mask) if t) for mask in self.tunable.enumerate()
        )
        return len(self.grouping) * len(self.allocation) * strategy_count

    def __iter__(self) -> Iterator[Design]:
        for groups, alloc, mask in itertools.product(
            self.grouping.enumerate(), self.allocation.enumerate(), self.tunable.enumerate()
        ):
            choices = [c.enumerate() if t else [""] for c, t in zip(self.strategies.per_group, mask)]
            for strat in itertools.product(*choices):
                yield Design(groups, alloc, mask, strat)

    def sample_one(self, rng: random.Random) -> Design:
        """One design, each dimension drawn independently."""
        mask = self.tunable.sample(rng)
        return Design(self.grouping.sample(rng), self.allocation.sample(rng), mask, self.strategies.sample(rng))

    def sample(self, n: int, seed: int = 0, accept: Callable[[Design], bool] | None = None) -> list[Design]:
        """`n` distinct designs (all of them, shuffled, when the space has fewer), reproducible from `seed`.

        `accept` rejects draws (e.g. designs the budget cannot build): a rejected design is redrawn,
        and is asked about once. With every draw accepted the sequence is the same as without it.
        """
        rng = random.Random(seed)
        size = self.size
        ok = accept or (lambda d: True)
        if n >= size or (2 * n > size and size <= 200_000):
            everything = list(self)
            rng.shuffle(everything)
            return list(itertools.islice((d for d in everything if ok(d)), n))
        seen: dict[Design, bool] = {}
        taken = 0
        while taken < n:
            design = self.sample_one(rng)
            if design not in seen:
                seen[design] = ok(design)
                taken += seen[design]
                if len(seen) >= size and taken < n:
                    break  # every design was drawn: fewer than n pass `accept`
        return [d for d, good in seen.items() if good]


# ---------------------------------------------------------------------------------------------
# Designs from the paper, by name

SPINDLE_RATIO = (1, 2, 2, 1)
PAPER_STRATEGIES = {
    # S4-model, found on T5-base: G1=A+L, G2=A+P, G3=A+P+B, G4=P+B+L
    "s4-model": ("AL", "AP", "APB", "PBL"),
    # S4-3b-model, found on T5-3b: G1=P+L, G2=A+L, G3=P+B+L, G4=A+P+B
    "s4-3b-model": ("PL", "AL", "PBL", "APB"),
}
UNIFORM_BASELINES = {"adapter": "A", "prefix": "P", "lora": "L", "bitfit": "B"}
NAMED_DESIGNS = (*PAPER_STRATEGIES, *UNIFORM_BASELINES)


def named_design(name: str, num_layers: int) -> Design:
    """A paper design scaled to a backbone: 's4-model', 's4-3b-model', or a uniform baseline.

    The S4 designs use spindle grouping in the ratio 1:2:2:1 (T5-base's 24 layers give
    [4, 8, 8, 4]), uniform allocation and all groups tuned. Baselines ('adapter', 'prefix',
    'lora', 'bitfit') put one method in every layer, over 4 near-equal groups.
    """
    key = name.lower().replace("_", "-")
    if key in PAPER_STRATEGIES:
        if num_layers < 6:
            raise ValueError(f"design {name!r} needs at least 6 layers for its spindle grouping; got {num_layers}")
        return Design(scaled_grouping(SPINDLE_RATIO, num_layers), "uniform", None, PAPER_STRATEGIES[key])
    if key in UNIFORM_BASELINES:
        g = min(DEFAULT_NUM_GROUPS, num_layers)
        return Design(scaled_grouping((1,) * g, num_layers), "uniform", None, (UNIFORM_BASELINES[key],) * g)
    raise ValueError(f"unknown design name {name!r}; use one of {', '.join(NAMED_DESIGNS)}")
