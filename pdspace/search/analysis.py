"""Refinement's analysis: the options of one dimension compared over a finished sweep, and the winner.

Each result belongs to one option of the dimension (its sweeper label, else derived from its design);
an option's numbers (`OptionStats`: runs, failures, mean/median/best/std, per-task means, its share of
the best run over bootstrap resamples, its empirical distribution) and the winner by a rule of `RULES`
(pdspace's one ordering rule, `pdspace.search.ordering`). `pdspace.search.narrowing` pins the winner in a
space, `pdspace.search.refine_report` writes the report, `pdspace.search.refine` runs the three.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdspace import results as results_io
from pdspace.design.space import DEFAULT_NUM_GROUPS, Design, grouping_matches, normalize_strategies, parse_dimension
from pdspace.results import finite
from pdspace.search.ordering import rank_key
from pdspace.stats import NOT_SIGNIFICANT, format_p, paired_t, welch_t

# uniform first: [1, 2, 2, 1] on 6 layers is as even as it gets, whatever else it also matches
DERIVED_GROUPINGS = ("uniform", "increasing", "decreasing", "spindle", "bottleneck")
# options that name no value a space can pin: a group left untuned, no grouping pattern, no design at all
UNPINNABLE = ("-", "other", "?")
RULES = {
    "mean": "highest mean objective averaged over tasks (an option's score is the mean, over the tasks it has "
            "results on, of its per-task mean, so every task counts once whatever its number of runs), among the "
            "options with results on the most tasks; ties go to more results, then to the alphabetically first "
            "option (pdspace's one ordering rule, pdspace.search.ordering); only completed runs with a finite "
            "objective count; options without such runs, and '-' (group untuned), 'other' (no grouping pattern) "
            "and '?' (no design), cannot win",
}


@dataclass
class OptionStats:
    """One option's numbers; `mean` is the rule's score (per-task means averaged over tasks)."""

    option: str
    n: int
    failed: int
    mean: float
    median: float
    best: float
    std: float
    per_task: dict[str, float]
    best_of: float | None
    edf: dict[str, list[float]]


@dataclass
class WinnerTest:
    """The winner against the runner-up (the next option by the rule). Paired t-test over the runs that differ only
    in the studied dimension (a controlled sweep's jobs of one sample: same task, seed, backbone and other
    dimensions), where there are two such pairs or more; else Welch's t-test over the two options' runs on their one
    task, at least two each; else none (`why`). `diff`: winner minus runner-up (the mean pair difference, or the
    difference of the means); `n`: the pairs, or the runs of both options."""

    against: str
    test: str  # "paired t", "Welch t" or "none"
    n: int
    diff: float | None = None
    p: float | None = None
    why: str = ""

    def line(self, dimension: str) -> str:
        """One line for the console and the report."""
        if self.p is None or self.diff is None:
            return f"against {self.against or '-'}: no test ({self.why})"
        what = (f"{self.n} pairs of runs that differ only in {dimension}" if self.test == "paired t"
                else f"{self.n} runs, unpaired")
        verdict = "significant at 0.05" if self.p < 0.05 else NOT_SIGNIFICANT
        return (f"against {self.against} (runner-up): {self.diff:+.4f} over {what}, {self.test}-test "
                f"p = {format_p(self.p)}, {verdict}")


@dataclass
class Analysis:
    """A dimension's options compared over one sweep, ranked best first, and the winner."""

    dimension: str
    winner: str
    rule: str
    metrics: list[str]
    tasks: list[str]
    n_results: int
    n_completed: int
    n_failed: int
    options: list[OptionStats]
    note: str = ""
    bootstrap: int = 0
    seed: int = 0
    files: dict[str, str] = field(default_factory=dict)
    # result files that could not be read (path -> why), and runs stopped early by a pruner (neither failed nor done)
    unreadable: dict[str, str] = field(default_factory=dict)
    n_pruned: int = 0
    test: WinnerTest | None = None  # the winner against the runner-up

    def test_line(self) -> str:
        """The winner's test against the runner-up in one line ('' where there is none)."""
        return self.test.line(self.dimension) if self.test else ""

    def option(self, name: str) -> OptionStats:
        """The stats of option `name`."""
        return next(o for o in self.options if o.option == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN as null)."""
        return finite(asdict(self))


def load_results(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every `<job>/result.json` of a sweep dir (each with its `_path`), and (path, why) for the unreadable ones."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep} does not exist")
    return results_io.read_all(results_io.sweep_paths(sweep))


def option_of(result: Mapping[str, Any], dimension: str) -> str:
    """The option of `dimension` a result belongs to: its sweeper label, else derived from its design."""
    k = parse_dimension(dimension)[1]
    label = (result.get("labels") or {}).get(dimension)
    if label is not None:
        if isinstance(label, (list, tuple)):
            return "-".join(map(str, label))
        if dimension == "tunable" and isinstance(label, int):
            # a mask such as 0111 can arrive as an int (a Hydra override); restore its leading zeros
            return str(label).zfill(len((result.get("design") or {}).get("groups") or ()) or DEFAULT_NUM_GROUPS)
        label = str(label)
        return label if k is None or label in UNPINNABLE else "+".join(normalize_strategies(label))
    design = Design.from_dict(result["design"])
    if dimension == "grouping":
        return next((p for p in DERIVED_GROUPINGS if grouping_matches(p, design.groups)), "other")
    if dimension == "allocation":
        return design.allocation
    if dimension == "tunable":
        return design.mask
    if k > design.num_groups:
        raise ValueError(f"{dimension}: design {design} has only {design.num_groups} groups")
    return "+".join(design.strategies[k - 1]) or "-"


def _best_of(points: list[tuple[str, str, float]], options: list[str], bootstrap: int, seed: int) -> np.ndarray:
    """Per option, how often it holds the best run of a bootstrap resample, per task, averaged over tasks."""
    rng = np.random.default_rng(seed)
    tasks = sorted({t for t, _, _ in points})
    freq = np.zeros(len(options))
    for task in tasks:
        opt = np.array([options.index(o) for t, o, _ in points if t == task])
        val = np.array([v for t, _, v in points if t == task])
        idx = rng.integers(0, len(val), size=(bootstrap, len(val)))
        top = val[idx] == val[idx].max(axis=1, keepdims=True)
        holds = np.stack([(top & (opt[idx] == j)).any(axis=1) for j in range(len(options))], axis=1)
        # options tied at the top of a resample share its win, so frequencies sum to 1
        freq += (holds / holds.sum(axis=1, keepdims=True)).mean(axis=0)
    return freq / len(tasks)


def _pair_key(result: Mapping[str, Any], dimension: str) -> tuple[Any, ...] | None:
    """What the runs of one controlled sample share beyond `dimension`: task, seed, backbone and the design's other
    dimensions. None for `tunable` (its options change which groups carry strategies) and without a design."""
    kind, k = parse_dimension(dimension)
    try:
        d = Design.from_dict(result["design"])
    except (KeyError, TypeError, ValueError):
        return None
    rest: tuple[Any, ...]
    if kind == "grouping":
        rest = (d.allocation, d.tunable, d.strategies)
    elif kind == "allocation":
        rest = (d.groups, d.tunable, d.strategies)
    elif kind == "strategy":
        rest = (d.groups, d.allocation, d.tunable, d.strategies[:k - 1] + d.strategies[k:])
    else:
        return None
    return (result.get("task"), result.get("seed"), result.get("backbone"), *rest)


def _winner_test(points: list[tuple[str, str, float]], keys: list[tuple[Any, ...] | None], winner: str,
                 against: str | None) -> WinnerTest:
    """`WinnerTest` of `winner` against `against` over the completed runs (`points`, with their `_pair_key`s)."""
    if against is None:
        return WinnerTest("", "none", 0, why="no other option has completed results")
    seen: dict[str, dict[Any, float]] = {winner: {}, against: {}}
    twice = set()  # a key an option has more than once pairs nothing
    for (_, option, value), key in zip(points, keys):
        if option in seen and key is not None:
            if key in seen[option]:
                twice.add(key)
            seen[option][key] = value
    shared = [k for k in seen[winner] if k in seen[against] and k not in twice]
    if len(shared) >= 2:
        pt = paired_t([seen[winner][k] for k in shared], [seen[against][k] for k in shared])
        return WinnerTest(against, "paired t", pt.n, pt.mean_diff, pt.p)
    a, b = ([v for _, o, v in points if o == name] for name in (winner, against))
    if len({task for task, o, _ in points if o in (winner, against)}) == 1 and len(a) >= 2 and len(b) >= 2:
        return WinnerTest(against, "Welch t", len(a) + len(b), float(np.mean(a) - np.mean(b)), welch_t(a, b)[1])
    n = len(shared)
    return WinnerTest(against, "none", n, why=f"{n} pair{'' if n == 1 else 's'} of runs that differ only in the "
                      "dimension, 2 needed, and not two runs each on one task")


def analyse(results: Sequence[Mapping[str, Any]], dimension: str, *, rule: str = "mean", bootstrap: int = 1000,
            seed: int = 0, unreadable: Sequence[tuple[str, str]] = ()) -> Analysis:
    """Compare the options of `dimension` over a sweep's results and pick the winner by `rule` (see RULES)."""
    parse_dimension(dimension)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    points: list[tuple[str, str, float]] = []
    keys: list[tuple[Any, ...] | None] = []  # each point's `_pair_key`
    failed: dict[str, int] = {}
    metrics: set[str] = set()
    pruned = 0
    for r in results:
        if r.get("status") in ("pruned", "dry_run"):
            # stopped early by a pruner, or never trained: neither a failure nor a finished design
            pruned += r.get("status") == "pruned"
            continue
        try:
            option = option_of(r, dimension)
        except (KeyError, TypeError):  # no label and no design: a job that failed before building one
            option = "?"
        failed.setdefault(option, 0)
        value = results_io.objective(r)
        if value is None:
            failed[option] += 1
            continue
        points.append((str(r.get("task") or "-"), option, value))
        keys.append(_pair_key(r, dimension))
        metrics.add(str((r.get("objective") or {}).get("name") or "objective"))
    if not points:
        raise ValueError(f"the sweep has no completed results with a finite objective ({len(results)} results read)")
    names = sorted(failed)
    best_of = _best_of(points, names, bootstrap, seed) if bootstrap > 0 else [None] * len(names)
    stats = []
    for name, share in zip(names, best_of):
        vals = np.array([v for _, o, v in points if o == name])
        per_task = {t: float(np.mean([v for t2, o, v in points if o == name and t2 == t]))
                    for t in sorted({t for t, o, _ in points if o == name})}
        has = len(vals) > 0
        stats.append(OptionStats(
            option=name, n=len(vals), failed=failed[name],
            mean=float(np.mean(list(per_task.values()))) if has else math.nan,
            median=float(np.median(vals)) if has else math.nan, best=float(vals.max()) if has else math.nan,
            std=float(vals.std()) if has else math.nan, per_task=per_task,
            best_of=None if share is None else float(share),
            edf={"x": sorted(vals.tolist()), "y": [(i + 1) / len(vals) for i in range(len(vals))]}))
    # pdspace's one ordering rule (pdspace.search.ordering): more tasks, higher mean, more runs, then the name
    stats.sort(key=lambda s: rank_key(len(s.per_task), s.mean, s.n, s.option))
    eligible = [s for s in stats if s.n and s.option not in UNPINNABLE]
    if not eligible:
        raise ValueError(f"no option of {dimension} can win: the completed runs only have "
                         f"{', '.join(s.option for s in stats if s.n)}, which no space can pin")
    winner = eligible[0].option
    note = f"only one option ({winner}) has completed results: it wins without a comparison" \
        if len(eligible) == 1 else ""
    n_failed = sum(failed.values())
    return Analysis(dimension, winner, f"{rule}: {RULES[rule]}", sorted(metrics), sorted({t for t, _, _ in points}),
                    len(points) + n_failed, len(points), n_failed, stats, note, bootstrap, seed,
                    unreadable=dict(unreadable), n_pruned=pruned,
                    test=_winner_test(points, keys, winner, eligible[1].option if len(eligible) > 1 else None))
