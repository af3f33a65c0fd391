"""The one rule that orders "best" in pdspace, ties included.

Whatever is ranked (designs in the search's final pick, the study report's best and top-k, the
confirmation stage's candidates; the options of one dimension in `pdspace-refine` and so in the
greedy stages' winners), each is summarised by its completed runs with a finite objective:

1. **coverage**: the number of tasks it has such a run on; more first (a design measured on one
   task does not beat one measured on all);
2. **mean**: the mean, over those tasks, of its per-task mean objective (every task counts once,
   whatever its number of runs); higher first;
3. **runs**: the number of such runs; more first (the better-measured of two equal means);
4. **name**: the design id (or the option's name) as a string, ascending: the final, deterministic
   tie-break, so every report and the search name the same one.

Objectives are maximised (the task score). Something without a run (mean NaN) comes last.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


def rank_key(coverage: int, mean: float, runs: int, name: str) -> tuple[int, float, int, str]:
    """The sort key of the rule (smaller sorts first): more tasks, higher mean, more runs, name ascending."""
    score = -mean if isinstance(mean, (int, float)) and math.isfinite(mean) else math.inf
    return (-int(coverage), score, -int(runs), str(name))


@dataclass(frozen=True)
class Standing:
    """What the rule knows of one ranked thing: its name and its objective values per task."""

    name: str
    values: Mapping[str, Sequence[float]] = field(default_factory=dict)

    @property
    def per_task(self) -> dict[str, float]:
        """The mean objective per task (tasks without a value left out)."""
        return {t: statistics.fmean(v) for t, v in self.values.items() if v}

    @property
    def coverage(self) -> int:
        """Tasks with at least one value."""
        return len(self.per_task)

    @property
    def mean(self) -> float:
        """The mean over tasks of the per-task means (NaN without values)."""
        per_task = self.per_task
        return statistics.fmean(per_task.values()) if per_task else math.nan

    @property
    def runs(self) -> int:
        """The number of values."""
        return sum(len(v) for v in self.values.values())

    @property
    def std(self) -> float:
        """The sample standard deviation over every value (NaN with fewer than two)."""
        flat = [x for v in self.values.values() for x in v]
        return statistics.stdev(flat) if len(flat) > 1 else math.nan

    def key(self) -> tuple[int, float, int, str]:
        """The rule's sort key (see the module docstring)."""
        return rank_key(self.coverage, self.mean, self.runs, self.name)


def standings(points: Iterable[tuple[str, str, float]]) -> dict[str, Standing]:
    """`(name, task, value)` points grouped into one standing per name."""
    grouped: dict[str, dict[str, list[float]]] = {}
    for name, task, value in points:
        grouped.setdefault(str(name), {}).setdefault(str(task), []).append(float(value))
    return {name: Standing(name, values) for name, values in grouped.items()}


def ranked(items: Iterable[Standing]) -> list[Standing]:
    """The standings best first."""
    return sorted(items, key=Standing.key)
