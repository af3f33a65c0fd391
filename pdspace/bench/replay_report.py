"""The replay's numbers for comparing search strategies (replay v2): normalised regret with bootstrap 95 %
confidence intervals, average ranks across tasks and budgets, each strategy against random search, one
CSV row per repeat and budget, and anytime curves with bands.

A regret is divided by the range of the table's design means on its task (CARP-S's per-task min-max
normalisation), so 0 is the table's best design and 1 its worst, whatever the task's metric. Intervals are
percentile bootstraps over the repeats (each repeat an independent seeded run of the strategy).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOOT = 1000
# {task: {strategy: {budget: [normalised regret per repeat]}}}
Norm = Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]]


def normalised(regret: float, spread: float) -> float:
    """A regret divided by the table's range of design means (a table of one score: 0)."""
    return regret / spread if spread > 0 else 0.0


def normalise(regrets: Mapping[str, Mapping[int, Sequence[float]]], spread: float) -> dict[str, dict[int, list[float]]]:
    """Every regret `normalised`, per strategy and budget."""
    return {st: {b: [normalised(r, spread) for r in v] for b, v in per.items()} for st, per in regrets.items()}


def _boot_means(x: np.ndarray, rng: np.random.Generator, boot: int) -> np.ndarray:
    # the means of `boot` resamples of x (with replacement, each as long as x)
    return x[rng.integers(0, x.size, size=(boot, x.size))].mean(axis=1)


def mean_ci(values: Sequence[float], rng: np.random.Generator, boot: int = BOOT,
            level: float = 0.95) -> tuple[float, float, float]:
    """The mean and its percentile-bootstrap interval (NaNs for no values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    means = _boot_means(x, rng, boot)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summary(norm: Norm, seed: int = 0, boot: int = BOOT) -> dict[str, dict[str, dict[int, tuple[float, ...]]]]:
    """Per task, strategy and budget: (mean, CI low, CI high, repeats) of the normalised regret."""
    rng = np.random.default_rng(seed)
    return {task: {st: {b: (*mean_ci(v, rng, boot), len(v)) for b, v in per.items()} for st, per in by.items()}
            for task, by in norm.items()}


def _cells(norm: Norm) -> list[tuple[str, int]]:
    # the (task, budget) cells where every strategy has a result: ranks compare like with like
    return [(task, b) for task, by in norm.items() for b in sorted({b for per in by.values() for b in per})
            if all(per.get(b) for per in by.values())]


def _rank_rows(means: np.ndarray) -> np.ndarray:
    # ranks (1 = lowest regret; ties share their mean rank) along the last axis
    order = means.argsort(axis=-1, kind="stable")
    ranks = np.empty_like(means)
    np.put_along_axis(ranks, order, np.arange(1, means.shape[-1] + 1, dtype=float), axis=-1)
    for idx in np.ndindex(means.shape[:-1]):
        row, r = means[idx], ranks[idx]
        for value in np.unique(row):
            tied = row == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
    return ranks


def average_ranks(norm: Norm, seed: int = 0, boot: int = BOOT) -> dict[str, tuple[float, float, float]]:
    """Each strategy's rank (1 = best) averaged over every (task, budget) cell where all have results, with a
    bootstrap interval (the repeats of every strategy and cell resampled together)."""
    cells = _cells(norm)
    strategies = sorted({st for by in norm.values() for st in by})
    if not cells:
        return {st: (math.nan, math.nan, math.nan) for st in strategies}
    rng = np.random.default_rng(seed)
    point = np.empty((len(cells), len(strategies)))
    draws = np.empty((boot, len(cells), len(strategies)))
    for i, (task, b) in enumerate(cells):
        for j, st in enumerate(strategies):
            x = np.asarray(norm[task][st][b], dtype=float)
            point[i, j] = x.mean()
            draws[:, i, j] = _boot_means(x, rng, boot)
    mean_rank = _rank_rows(point).mean(axis=0)
    boot_rank = _rank_rows(draws).mean(axis=1)
    return {st: (float(mean_rank[j]), float(np.quantile(boot_rank[:, j], 0.025)),
                 float(np.quantile(boot_rank[:, j], 0.975))) for j, st in enumerate(strategies)}


def versus(norm: Norm, baseline: str, budgets: Mapping[str, int], seed: int = 0,
           boot: int = BOOT) -> dict[str, tuple[float, float, float]]:
    """Each strategy's mean normalised regret minus the baseline's (negative: better), averaged over tasks at
    each task's budget in `budgets`, with a bootstrap interval (both sides' repeats resampled)."""
    rng = np.random.default_rng(seed)
    out = {}
    strategies = sorted({st for by in norm.values() for st in by} - {baseline})
    for st in strategies:
        point, draws = [], []
        for task, by in norm.items():
            b = budgets[task]
            x, y = np.asarray(by.get(st, {}).get(b) or [], float), np.asarray(by.get(baseline, {}).get(b) or [], float)
            if not x.size or not y.size:
                continue
            point.append(x.mean() - y.mean())
            draws.append(_boot_means(x, rng, boot) - _boot_means(y, rng, boot))
        if point:
            d = np.mean(draws, axis=0)
            out[st] = (float(np.mean(point)), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975)))
    return out


def markdown(summ: Mapping[str, Mapping[str, Mapping[int, tuple[float, ...]]]],
             ranks: Mapping[str, tuple[float, float, float]]) -> str:
    """Per task: mean normalised regret x 100 [95 % CI] per strategy and budget; the average rank last."""
    parts = []
    for task, by in summ.items():
        budgets = sorted({b for per in by.values() for b in per})
        lines = [f"**{task}** (normalised regret x 100: 0 = the table's best design, 100 = its worst)", "",
                 "| strategy | " + " | ".join(f"{b} ep." for b in budgets) + " | average rank [95 % CI] |",
                 "|---|" + "---:|" * (len(budgets) + 1)]
        for st, per in by.items():
            cells = [f"{100 * per[b][0]:.1f} [{100 * per[b][1]:.1f}, {100 * per[b][2]:.1f}]"
                     if b in per and per[b][3] else "– (over budget)" for b in budgets]
            r = ranks.get(st, (math.nan,) * 3)
            lines.append(f"| {st} | " + " | ".join(cells) + f" | {r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}] |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def versus_markdown(vs: Mapping[str, tuple[float, float, float]], baseline: str, where: str) -> str:
    """One line per strategy: its regret minus the baseline's, and whether the interval excludes zero."""
    lines = [f"| strategy | normalised regret x 100 minus {baseline}'s, {where} [95 % CI] | |", "|---|---:|---|"]
    for st, (d, lo, hi) in sorted(vs.items(), key=lambda kv: kv[1][0]):
        verdict = "better" if hi < 0 else "worse" if lo > 0 else "no difference shown"
        lines.append(f"| {st} | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {verdict} |")
    return "\n".join(lines)


CSV_FIELDS = ("task", "strategy", "budget", "repeat", "regret", "normalised_regret", "spent", "design_id")


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One row per task, strategy, repeat and budget."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows({k: r[k] for k in CSV_FIELDS} for r in records)
    return path


def plot(summ: Mapping[str, Mapping[str, Mapping[int, tuple[float, ...]]]], path: Path, title: str) -> Path:
    """Anytime curves: mean normalised regret and its 95 % band vs epochs spent, one panel per task."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(summ), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(summ)))
    for ax, (task, by) in zip(axes, summ.items()):
        budgets = sorted({b for per in by.values() for b in per})
        for i, (st, per) in enumerate(by.items()):
            xs = [b for b in budgets if b in per and per[b][3]]
            ax.plot(xs, [100 * per[b][0] for b in xs], marker="o", ms=3, color=f"C{i % 10}",
                    ls="-" if i < 10 else "--", label=st)
            ax.fill_between(xs, [100 * per[b][1] for b in xs], [100 * per[b][2] for b in xs], color=f"C{i % 10}",
                            alpha=0.12)
        ax.set(xscale="log", xlabel="training epochs spent", ylabel="normalised regret x 100", title=f"{title}: {task}")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
    fig.savefig(path, dpi=120)
    return path
