"""The replay benchmark: search strategies run against a recorded design table (`pdspace-bench replay`).

A trial "trains" by reading a recorded learning curve (one of the design's seeds, drawn at random:
the noise a live run has) up to the evaluation it is allowed, so a strategy can be run hundreds of
times at no training cost, as NAS-Bench-201 and HPOBench do. Each strategy goes through the search
code the live path uses: random plans (`plans.make_plan`), the greedy stages, winner rule and
narrowing (`greedy.stages`, `analysis.analyse`, `narrowing.narrowed_space`), Optuna studies through
`study.TrialJob` (samplers, pruners, the design as parameters) and the found design (`engine.best_design`).
The strategies are the searches of `pdspace-search` (`engine.SEARCHES`) and a study search with a pruner,
`SEARCH+PRUNER` (`STRATEGIES`).
Only the recorded designs exist: random and greedy draw among them, a study's suggestion is mapped to
the nearest recorded design it has not tried yet in that repeat (a live sampler's suggestions are new
designs; a projection onto a small table would otherwise repeat a few), and greedy stages are uncontrolled (a random table holds few controlled
expansions).

The result, per strategy and compute budget (training epochs spent), is the distribution over repeats
of the regret of the returned design: the table's best mean score minus the returned design's mean
score (both over its seeds, each seed's best evaluation as in result.json).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdspace.bench import table as table_io
from pdspace.bench.replay_report import normalised
from pdspace.design.space import Design, DesignSpace, normalize_strategies
from pdspace.search import study
from pdspace.search.engine import PRUNERS, SEARCHES, SearchError, best_design, ranked_designs


def strategy_name(search: str, pruner: str = "none") -> str:
    """A replayed strategy's name: the search (`pdspace-search --search`), `+PRUNER` when a pruner stops weak
    designs early (`--pruner`)."""
    return search if pruner == "none" else f"{search}+{pruner}"


# every strategy replay runs: each search of pdspace-search, and each study search with each pruner
STRATEGIES = (*SEARCHES, *(strategy_name(s, p) for s in study.SEARCHES for p in PRUNERS if p != "none"))
# the searches replay runs as plans, with no sampler: greedy's stages and random search's (the study's first)
PLANNED = (*(s for s in SEARCHES if s not in study.SEARCHES), study.SEARCHES[0])
DEFAULT_STRATEGIES = "greedy,random,tpe,tpe+hyperband"
# a strategy's suffix for the confirmation stage after its search (`pdspace-search --confirm-k`, its default)
CONFIRM = "confirm"
CONFIRM_K, CONFIRM_SEEDS = 3, 3


@dataclass
class Recorded:
    """The full-length curves of one design (one per seed)."""

    design: Design
    curves: list[list[float]] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Mean over seeds of the best evaluation (what a run's result.json calls its objective)."""
        return statistics.fmean(max(c) for c in self.curves)


class TableSpace:
    """The recorded designs (of a space), sampled the way `DesignSpace.sample` is, for `plans.make_plan`."""

    def __init__(self, designs: Sequence[Design], space: DesignSpace | None = None) -> None:
        self.designs = sorted((d for d in designs if space is None or space.contains(d)), key=str)
        self._members = set(self.designs)
        self.size = len(self.designs)

    def __iter__(self) -> Any:
        return iter(self.designs)

    def contains(self, design: Design) -> bool:
        """Whether `design` is recorded here."""
        return design in self._members

    def sample(self, n: int, seed: int = 0, accept: Any = None) -> list[Design]:
        """`n` distinct recorded designs in a seeded order (a prefix of the order for a larger `n`)."""
        order = list(self.designs)
        random.Random(seed).shuffle(order)
        return [d for d in order if accept is None or accept(d)][:n]


class Oracle:
    """Trains a design by reading one of its recorded curves; counts the epochs read."""

    def __init__(self, recorded: Mapping[Design, Recorded], rng: random.Random) -> None:
        self.recorded, self.rng, self.spent = recorded, rng, 0

    def observe(self, design: Design) -> list[float]:
        """A recorded curve of `design` (a seed drawn at random)."""
        return list(self.rng.choice(self.recorded[design].curves))


def _result(design: Design, task: str, curve: Sequence[float]) -> dict[str, Any]:
    # what a live job's result.json holds for the search code to read
    return {"status": "completed", "design": design.to_dict(), "design_id": str(design), "task": task,
            "objective": {"name": "objective", "value": max(curve)}, "metrics": {"per_epoch": []}}


@dataclass
class Setup:
    """The table as the strategies see it."""

    task: str
    recorded: dict[Design, Recorded]
    epochs: int
    num_layers: int
    num_groups: int
    letters: str

    @property
    def best(self) -> float:
        """The table's best mean score."""
        return max(r.score for r in self.recorded.values())

    @property
    def spread(self) -> float:
        """The range of the table's design means (best - worst): a regret divided by it is normalised (CARP-S's
        per-task min-max), comparable across tasks."""
        return self.best - min(r.score for r in self.recorded.values())

    @property
    def compute(self) -> int:
        """Epochs the table itself cost: every recorded full-length run."""
        return self.epochs * sum(len(r.curves) for r in self.recorded.values())

    def space_block(self, **changes: Any) -> dict[str, Any]:
        """The unconstrained space over the table's letters, as a `space:` block."""
        return {"name": "replay", "grouping": "any", "allocation": "any", "tunable": "any", "strategy": "any",
                "letters": self.letters, "num_samples": 1, "seed": 0, "controlled": None, "tasks": [self.task],
                "seeds": [0], **changes}

    def space(self, block: Mapping[str, Any] | None = None) -> DesignSpace:
        """The DesignSpace of a block (default: the unconstrained one)."""
        from pdspace.search.plans import space_of

        return space_of(block or self.space_block(), self.num_layers, self.num_groups)


def setup(rows: Sequence[Mapping[str, Any]], task: str | None = None) -> Setup:
    """The full-length completed runs of one task, grouped by design."""
    tasks = sorted({r["task"] for r in rows})
    task = task or (tasks[0] if len(tasks) == 1 else None)
    if task not in tasks:
        raise SystemExit(f"pdspace-bench: error: choose a task with --task (the table has {', '.join(tasks)})")
    mine = [r for r in rows if r["task"] == task and r["status"] == "completed"]
    if not mine:
        raise SystemExit(f"pdspace-bench: error: the table has no completed run of task {task}; replay needs "
                         "full-length curves")
    epochs = max(r["epochs"] for r in mine)
    recorded: dict[Design, Recorded] = {}
    for r in mine:
        if r["epochs"] == epochs:
            design = Design.parse(r["design_id"])
            recorded.setdefault(design, Recorded(design)).curves.append(list(map(float, r["curve"])))
    designs = list(recorded)
    used = {c for d in designs for s in d.strategies for c in s}
    # the paper's letters at least, in canonical order, and any other the table's designs use
    letters = normalize_strategies("APBL" + "".join(sorted(used)))
    return Setup(task, recorded, epochs, designs[0].num_layers, designs[0].num_groups, letters)


# ------------------------------------------------------------------------------------- strategies


# what a search finished by a budget: its results, its final space, the epochs it spent
Outcome = tuple[list[dict[str, Any]], DesignSpace, int]


def _best(s: Setup, found: Sequence[Mapping[str, Any]], space: DesignSpace) -> Design:
    # the search's pick in its final space, else in the unconstrained space over the table's letters
    try:
        return best_design(found, space)[0]
    except SearchError:
        return best_design(found, s.space())[0]


def confirm(s: Setup, found: Sequence[Mapping[str, Any]], space: DesignSpace, k: int, seeds: int,
            rng: random.Random) -> tuple[Design, int]:
    """The confirmation stage (`pdspace-search --confirm-k K`, `pdspace.search.confirm`): the top `k` designs
    of the search (in its final space, else the table's whole space) trained again over `seeds` seeds (each a
    recorded curve drawn at random, as the search's own runs are), the best mean wins (ties: the design id);
    the design and the epochs it cost."""
    top = ranked_designs(found, space) or ranked_designs(found, s.space())
    candidates = [d for d, _ in top[:k]]
    oracle = Oracle(s.recorded, rng)
    means = {d: statistics.fmean(max(oracle.observe(d)) for _ in range(seeds)) for d in candidates}
    return min(candidates, key=lambda d: (-means[d], str(d))), len(candidates) * seeds * s.epochs


def run_random(s: Setup, budgets: Sequence[int], seed: int) -> dict[int, Outcome]:
    """Random search: `budget / epochs` designs of one seeded plan, each trained in full."""
    from pdspace.search.plans import make_plan

    oracle = Oracle(s.recorded, random.Random(seed))
    if not budgets:
        return {}
    n = max(budgets) // s.epochs
    plan = make_plan(s.space_block(num_samples=n, seed=seed), s.num_layers, s.num_groups,
                     space=TableSpace(list(s.recorded)))
    found: list[dict[str, Any]] = []
    marks: dict[int, tuple[int, int]] = {}
    for job in plan.jobs:
        found.append(_result(job.design, s.task, oracle.observe(job.design)))
        oracle.spent += s.epochs
        _mark(marks, budgets, len(found), oracle.spent)
    return _outcomes(found, marks, s.space())


def _mark(marks: dict[int, tuple[int, int]], budgets: Sequence[int], n_found: int, spent: int) -> None:
    # per budget: how many finished designs (and epochs) the search had when it last stayed within it
    for b in budgets:
        if spent <= b and n_found:
            marks[b] = (n_found, spent)


def _outcomes(found: Sequence[Mapping[str, Any]], marks: Mapping[int, tuple[int, int]],
              space: DesignSpace) -> dict[int, Outcome]:
    # what the search had finished at each budget
    return {b: (list(found[:n]), space, spent) for b, (n, spent) in marks.items()}


def run_greedy(s: Setup, budget: int, seed: int) -> Outcome:
    """The paper's greedy stages, each sampling `budget / (epochs x stages)` recorded designs of its space."""
    from pdspace.search.analysis import analyse
    from pdspace.search.greedy import stages, untuned_reason
    from pdspace.search.narrowing import narrowed_space
    from pdspace.search.plans import make_plan

    oracle = Oracle(s.recorded, random.Random(seed))
    all_stages = stages(s.num_groups)
    n = max(1, budget // (s.epochs * len(all_stages)))
    block = s.space_block()
    found_all: list[dict[str, Any]] = []
    for k, stage in enumerate(all_stages):
        if untuned_reason(stage, block["tunable"], s.num_groups):
            continue
        pool = TableSpace(list(s.recorded), s.space(block))
        if pool.size == 0:
            break
        plan = make_plan({**block, "num_samples": n, "seed": seed * 31 + k}, s.num_layers, s.num_groups, space=pool)
        found = [_result(j.design, s.task, oracle.observe(j.design)) for j in plan.jobs]
        oracle.spent += s.epochs * len(found)
        found_all += found
        try:
            winner = analyse(found, stage.dimension, bootstrap=0).winner
            block = narrowed_space(block, stage.dimension, winner)
        except ValueError:
            break  # nothing left to compare: the search stops with what it has
    return found_all, s.space(block), oracle.spent


def run_study(s: Setup, search: str, pruner: str, budgets: Sequence[int], seed: int) -> dict[int, Outcome]:
    """An Optuna study (sampler + pruner) through the live job-side trial code, until the budget is spent."""
    import optuna

    from pdspace.search.study import StudySpec, TrialJob, study_spec

    if not budgets:
        return {}
    spec: StudySpec = study_spec({"name": "replay", "search": search, "pruner": pruner,
                                  "trials": max(budgets) // s.epochs, "seed": seed, "max_resource": s.epochs},
                                 ".", s.task, s.epochs)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
    designs = list(s.recorded)
    vectors = np.array([_vector(d, s.letters) for d in designs])
    tried = np.zeros(len(designs), dtype=bool)

    def nearest(design: Design) -> Design:
        # the nearest recorded design not yet tried in this repeat (all tried: the nearest of all): a live
        # sampler's suggestions are new designs, so a projection onto the table must not repeat them
        free = ~tried if not tried.all() else np.ones(len(designs), dtype=bool)
        distance = np.abs(vectors - np.array(_vector(design, s.letters))).sum(axis=1)
        j = int(np.where(free, distance, np.inf).argmin())
        tried[j] = True
        return designs[j]

    oracle = Oracle(s.recorded, random.Random(seed))
    space = s.space()
    found: list[dict[str, Any]] = []
    marks: dict[int, tuple[int, int]] = {}
    slot = 0
    while oracle.spent < max(budgets):
        job = TrialJob(spec, slot, None, storage=storage)
        design = job.ask(space, lambda d: None, project=nearest)
        curve = oracle.observe(design)
        try:
            for step, value in enumerate(curve, 1):
                oracle.spent += 1
                job.report(step, value)
            job.tell("completed", [max(curve)])
            found.append(_result(design, s.task, curve))
        except optuna.TrialPruned:
            job.tell("pruned")
        slot += 1
        _mark(marks, budgets, len(found), oracle.spent)
    return _outcomes(found, marks, space)


def _vector(design: Design, letters: str) -> list[float]:
    from pdspace.search.study import design_vector

    return design_vector(design, letters)


def split_confirm(strategy: str) -> tuple[str, bool]:
    """(the strategy without its `+confirm`, whether it ends with the confirmation stage)."""
    base = strategy.removesuffix(f"+{CONFIRM}")
    return base, base != strategy


def parse_strategy(strategy: str) -> tuple[str, str]:
    """(search, pruner) of a strategy of `STRATEGIES`, with or without `+confirm` (`SEARCH+none` reads as
    SEARCH); SystemExit (one line) for one replay cannot run."""
    search, plus, pruner = split_confirm(strategy)[0].partition("+")
    pruner = pruner or "none"
    if strategy_name(search, pruner) in STRATEGIES and (not plus or search in study.SEARCHES):
        return search, pruner
    pruners = ", ".join(f"+{p}" for p in PRUNERS if p != "none")
    raise SystemExit(f"pdspace-bench: error: unknown strategy {strategy!r}; use {', '.join(PLANNED)}, or a sampler "
                     f"({', '.join(study.SEARCHES)}) with an optional pruner ({pruners}), e.g. "
                     f"{DEFAULT_STRATEGIES.rsplit(',', 1)[-1]}; add +{CONFIRM} for the confirmation stage")


def check_strategy(strategy: str) -> None:
    """Raise SystemExit (one line) for a strategy replay cannot run."""
    parse_strategy(strategy)


def replay_once(s: Setup, strategy: str, budgets: Sequence[int], seed: int, confirm_k: int = CONFIRM_K,
                confirm_seeds: int = CONFIRM_SEEDS) -> dict[int, tuple[float, int, str]]:
    """One repeat of one strategy: per budget, the returned design's regret, the epochs it spent (the
    confirmation's included) and its id. With `+confirm` the search gets what the confirmation leaves of the
    budget (`confirm_k` x `confirm_seeds` full runs)."""
    base, confirmed = split_confirm(strategy)
    search, pruner = parse_strategy(base)
    cost = confirm_k * confirm_seeds * s.epochs if confirmed else 0
    inner = sorted({b - cost for b in budgets if b - cost >= 1})
    if base == "greedy":
        outcomes = {b: run_greedy(s, b, seed) for b in inner}
    elif base == "random":
        outcomes = run_random(s, inner, seed)
    else:  # a study, its sampler `search` (random+none too: Optuna's random sampler through the study code)
        outcomes = run_study(s, search, pruner, inner, seed)
    rng = random.Random(seed * 7919 + 17)
    out = {}
    for b in budgets:
        if b - cost not in outcomes:
            continue
        found, space, spent = outcomes[b - cost]
        if confirmed:
            design, extra = confirm(s, found, space, confirm_k, confirm_seeds, rng)
            spent += extra
        else:
            design = _best(s, found, space)
        # a strategy that cannot stay within a budget (greedy needs a design per stage) has no result there
        if spent <= b:
            out[b] = (s.best - s.recorded[design].score, spent, str(design))
    return out


def _repeat(args: tuple[Setup, str, tuple[int, ...], int, int, int]) -> tuple[str, int, dict[int, tuple[float, int, str]]]:
    s, strategy, budgets, seed, k, seeds = args
    return strategy, seed, replay_once(s, strategy, budgets, seed, k, seeds)


def replay(s: Setup, strategies: Sequence[str], budgets: Sequence[int], repeats: int, seed: int = 0,
           jobs: int = 1, found: dict[str, dict[int, list[str]]] | None = None, confirm_k: int = CONFIRM_K,
           confirm_seeds: int = CONFIRM_SEEDS, records: list[dict[str, Any]] | None = None
           ) -> dict[str, dict[int, list[float]]]:
    """Regrets per strategy and budget over `repeats` seeded repeats (deterministic for a fixed `seed`).

    `found` (a dict), if given, is filled with the design each repeat returned, per strategy and budget;
    `records` (a list), with one row per repeat and budget (the CSV's).
    """
    for strat in strategies:
        check_strategy(strat)
    tasks = [(s, strat, tuple(budgets), seed + r, confirm_k, confirm_seeds) for strat in strategies
             for r in range(repeats)]
    if jobs > 1:
        import multiprocessing

        # spawn, not fork: a forked child of a process that already ran torch's thread pool (GP sampler) can hang
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_repeat, tasks, chunksize=max(1, len(tasks) // (4 * jobs))))
    else:
        done = [_repeat(t) for t in tasks]
    out: dict[str, dict[int, list[float]]] = {strat: {b: [] for b in budgets} for strat in strategies}
    for strat, rep, per_budget in sorted(done, key=lambda x: (x[0], x[1])):
        for b in budgets:
            if b in per_budget:
                regret, spent, design = per_budget[b]
                out[strat][b].append(regret)
                if found is not None:
                    found.setdefault(strat, {}).setdefault(b, []).append(design)
                if records is not None:
                    records.append({"task": s.task, "strategy": strat, "budget": b, "repeat": rep - seed,
                                    "regret": regret, "normalised_regret": normalised(regret, s.spread),
                                    "spent": spent, "design_id": design})
    return out


# ------------------------------------------------------------------------------------- output


def _q(values: Sequence[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


def markdown(regrets: Mapping[str, Mapping[int, list[float]]], budgets: Sequence[int], threshold: float) -> str:
    """Median [q25, q75] regret (x 100) per strategy and budget, and the budget each needs to reach `threshold`."""
    lines = ["| strategy | " + " | ".join(f"{b} ep." for b in budgets) + f" | epochs to median regret ≤ {threshold:g} |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for strat, per in regrets.items():
        cells = []
        for b in budgets:
            v = per.get(b) or []
            cells.append(f"{100 * _q(v, .5):.2f} [{100 * _q(v, .25):.2f}, {100 * _q(v, .75):.2f}]" if v else
                         "– (over budget)")
        reach = next((b for b in budgets if per.get(b) and _q(per[b], .5) <= threshold), None)
        lines.append(f"| {strat} | " + " | ".join(cells) + f" | {reach if reach is not None else '> ' + str(max(budgets))} |")
    return "\n".join(lines)


def plot(regrets: Mapping[str, Mapping[int, list[float]]], budgets: Sequence[int], path: Path, title: str) -> Path:
    """Median regret and its interquartile band vs epochs spent, one line per strategy."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, (strat, per) in enumerate(regrets.items()):
        xs = [b for b in budgets if per.get(b)]
        ax.plot(xs, [100 * _q(per[b], .5) for b in xs], marker="o", color=f"C{i}", label=strat)
        ax.fill_between(xs, [100 * _q(per[b], .25) for b in xs], [100 * _q(per[b], .75) for b in xs],
                        color=f"C{i}", alpha=0.15)
    ax.set(xscale="log", xlabel="training epochs spent", ylabel="regret (objective x 100)", title=title)
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def add_parser(sub: Any) -> None:
    """`pdspace-bench replay TABLE --strategies ... --budgets ... --repeats N`."""
    p = sub.add_parser("replay", help="replay search strategies against a recorded design table")
    p.add_argument("table", help="a table written by `pdspace-bench table`")
    p.add_argument("--task", default=None, help="the task to replay (default: every task of the table)")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES, help=f"comma-separated, of {', '.join(STRATEGIES)}")
    p.add_argument("--budgets", default=None, help="comma-separated epoch budgets (default: 4 to 32 designs' worth)")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.01, help="regret for the 'epochs to reach' column")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--confirm-k", type=int, default=CONFIRM_K, help="designs a +confirm strategy trains again")
    p.add_argument("--confirm-seeds", type=int, default=CONFIRM_SEEDS, help="seeds of each confirmed design")
    p.add_argument("--out", default=None, help="also write replay.md, replay.json, replay.csv and replay.png here")
    p.set_defaults(run=run)


def found_markdown(s: Setup, found: Mapping[str, Mapping[int, list[str]]], budget: int) -> str:
    """Per strategy, the design it returned most often at `budget` epochs, how often, and its table score."""
    from collections import Counter

    lines = [f"| strategy | design returned most often at {budget} epochs | share of repeats | mean score |",
             "|---|---|---:|---:|"]
    for strat, per in found.items():
        ids = per.get(budget) or []
        if not ids:
            continue
        design, n = Counter(ids).most_common(1)[0]
        lines.append(f"| {strat} | `{design}` | {n / len(ids):.0%} | {s.recorded[Design.parse(design)].score:.4f} |")
    return "\n".join(lines)


def _error(message: str) -> SystemExit:
    return SystemExit(f"pdspace-bench: error: {message}")


def parse_budgets(text: str | None) -> list[int] | None:
    """`--budgets 12,24`: positive integers (epochs); None for the default; raises SystemExit (one line)."""
    if text is None:
        return None
    try:
        budgets = [int(b) for b in text.split(",")]
    except ValueError:
        budgets = []
    if not budgets or any(b < 1 for b in budgets):
        raise _error(f"--budgets {text}: give comma-separated positive numbers of training epochs, e.g. "
                     "--budgets 12,24,48")
    return budgets


def check_args(args: argparse.Namespace) -> list[int] | None:
    """Refuse counts that replay nothing before the table is read; the budgets given (None: the default)."""
    if args.repeats < 1:
        raise _error(f"--repeats {args.repeats} replays nothing; give a positive number, e.g. --repeats 100")
    if args.confirm_k < 1 or args.confirm_seeds < 1:
        raise _error(f"--confirm-k {args.confirm_k} --confirm-seeds {args.confirm_seeds}: give positive numbers, "
                     "e.g. --confirm-k 3 --confirm-seeds 3")
    if args.jobs is not None and args.jobs < 1:
        raise _error(f"--jobs {args.jobs}: give a positive number of processes, or leave it out for every core")
    for strategy in [x.strip() for x in args.strategies.split(",") if x.strip()] or [""]:
        check_strategy(strategy)
    return parse_budgets(args.budgets)


def default_budgets(s: Setup) -> list[int]:
    """4 to 32 designs' worth of epochs, and a quarter of what the table itself cost."""
    return sorted({s.epochs * k for k in (4, 8, 16, 32)} | {max(s.epochs, s.compute // 4)})


def _replay_task(s: Setup, args: argparse.Namespace, budgets: list[int] | None,
                 records: list[dict[str, Any]]) -> dict[str, Any]:
    # one task's replay: its regrets, found designs, budgets and the markdown of the raw regrets
    import os

    t0 = time.perf_counter()
    budgets = budgets or default_budgets(s)
    if min(budgets) < s.epochs:
        raise _error(f"--budgets {args.budgets}: a budget below {s.epochs} epochs (one design of the table, trained "
                     f"in full) finds nothing; give budgets >= {s.epochs}, e.g. --budgets {s.epochs * 4},"
                     f"{s.epochs * 8}")
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    found: dict[str, dict[int, list[str]]] = {}
    regrets = replay(s, strategies, budgets, args.repeats, args.seed, args.jobs or os.cpu_count() or 1, found,
                     args.confirm_k, args.confirm_seeds, records)
    best = max(s.recorded.values(), key=lambda r: r.score)
    quarter = min(budgets, key=lambda b: (abs(b - s.compute / 4), b))
    head = (f"{s.task}: {len(s.recorded)} recorded designs ({sum(len(r.curves) for r in s.recorded.values())} runs, "
            f"{s.epochs} evaluations each; the table cost {s.compute} epochs), best mean score {s.best:.4f} "
            f"(`{best.design}`), range of design means {s.spread:.4f}; {args.repeats} repeats per strategy, seed "
            f"{args.seed}; confirmation: top {args.confirm_k} x {args.confirm_seeds} seeds; cells: median [q25, q75] "
            f"regret x 100 ({time.perf_counter() - t0:.0f} s)")
    md = head + "\n\n" + markdown(regrets, budgets, args.threshold) + "\n\n" + found_markdown(s, found, max(budgets))
    return {"task": s.task, "budgets": budgets, "regrets": regrets, "found": found, "best": s.best,
            "best_design": str(best.design), "spread": s.spread, "compute": s.compute, "quarter": quarter, "md": md}


def run(args: argparse.Namespace) -> None:
    """Replay every task (or `--task`), print the tables, write the files."""
    import json

    from pdspace.bench import replay_report as rr

    budgets = check_args(args)
    try:
        rows = table_io.read(args.table)
    except table_io.TableError as e:
        raise _error(str(e)) from None
    tasks = [args.task] if args.task else sorted({r["task"] for r in rows})
    records: list[dict[str, Any]] = []
    done = [_replay_task(setup(rows, task), args, budgets, records) for task in tasks]
    norm = {d["task"]: rr.normalise(d["regrets"], d["spread"]) for d in done}
    summ, ranks = rr.summary(norm, args.seed), rr.average_ranks(norm, args.seed)
    quarters = {d["task"]: d["quarter"] for d in done}
    where = ", ".join(f"{t} at {b} epochs (~1/4 of the table's compute)" for t, b in quarters.items())
    vs = rr.versus(norm, "random", quarters, args.seed) if any("random" in d["regrets"] for d in done) else {}
    md = "\n\n".join(d["md"] for d in done) + "\n\n" + rr.markdown(summ, ranks)
    if vs:
        md += "\n\n" + rr.versus_markdown(vs, "random", where)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay.md").write_text(md + "\n")
        (out / "replay.json").write_text(json.dumps({"tasks": [{k: v for k, v in d.items() if k != "md"} for d in done],
                                                     "ranks": ranks, "versus_random": vs}))
        rr.write_csv(records, out / "replay.csv")
        rr.plot(summ, out / "replay.png", f"{args.repeats} repeats")
        print(f"wrote {out / 'replay.md'}, replay.json, replay.csv, replay.png")
