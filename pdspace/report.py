"""`pdspace-report RUN_DIRS...`: the paper's results table from finished runs' `result.json` files.

A row is one design on one backbone, with its method label: runs of different designs never share
a cell (a preset swept over strategies gives one row per strategy). Columns are the tasks and their
average. A cell is the task's objective x 100, mean ± sample standard deviation (ddof=1; one run
shows no ±) over the row's completed runs on that task (its seeds), with their number n. The
average is the mean over tasks of the cell means, given only when the row has every task of the
table. Runs that did not complete, and unreadable result files, are counted in a footnote.

Significance (`pdspace.stats`): per column, every row is compared with the column's best row (the
highest mean; ties: more runs, then the row's label, by pdspace.search.ordering's one rule) by a
paired t-test over the seeds both rows share (runs paired by their `seed`) and, where both rows have
`predictions.npz` for those seeds on the same examples, a paired bootstrap over examples and seeds.
A cell carries the paper's * (p < 0.05) or ** (p < 0.01) when the row is worse than the best and
every test run agrees (the larger p); `significance_table` lists differences, CIs and p-values.
The average column compares per-seed task averages (seeds both rows have in every task), by the t-test.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdspace import results as results_io
from pdspace import stats
from pdspace.data.tasks import DataError, get_task, task_spec
from pdspace.errors import cannot_write, exit_error, warning_lines
from pdspace.results import RESULT_FILE
from pdspace.search.ordering import rank_key
from pdspace.tracking import log_report

MISSING = "–"
# the paper's column order (GLUE as in its tables); other tasks follow alphabetically
TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
NOTE = ("Cells: objective × 100, mean ± sample std (ddof=1) over seeds, n = completed runs; average = mean of "
        "the task means, only for rows with every task; trainable % = trainable PEFT params / backbone params "
        "(task head apart; † = below the budget: fixed-size modules such as BitFit cannot use all of it).")
AVERAGE = "average"
N_BOOT = 2000
TESTS_NOTE = ("Tests: paired t-test over seeds (n = seeds both rows share), 95 % CI of the mean difference; paired "
              "bootstrap over examples and seeds (Berg-Kirkpatrick et al., 2012), {n_boot} replicates; * p < 0.05, "
              "** p < 0.01 against the best row (highest mean; ties: more runs, then the row's name), marked only "
              "where the row is worse and every test run agrees (the larger p). Δ = row − best (× 100) over the "
              "shared seeds; the average compares per-seed task averages (seeds both rows have in every task), "
              "by the t-test only; n < 2: no test.")
# predictions must reproduce the run's objective to this tolerance (float32 metrics) to be used
SCORE_TOLERANCE = 1e-4


@dataclass
class Row:
    """One method on one backbone: objective values (x 100) per task and trainable fractions."""

    method: str
    backbone: str
    design: str = "-"
    values: dict[str, list[float]] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)
    below_budget: bool = False
    # per task, (result, path of its result.json) of every run in `values`, in the same order
    runs: dict[str, list[tuple[Mapping[str, Any], str | None]]] = field(default_factory=dict)

    def seed_values(self, task: str) -> dict[Any, float]:
        """Objective x 100 per training seed of `task` (a seed run twice counts once, with its mean)."""
        by_seed: dict[Any, list[float]] = {}
        for (r, _), v in zip(self.runs.get(task, []), self.values.get(task, [])):
            if r.get("seed") is not None:  # a run without a seed pairs with nothing
                by_seed.setdefault(r["seed"], []).append(v)
        return {s: statistics.fmean(v) for s, v in by_seed.items()}

    def seed_averages(self, tasks: Sequence[str]) -> dict[Any, float]:
        """Per seed that has a run of every task, the mean over `tasks` of its objectives (x 100)."""
        per_task = [self.seed_values(t) for t in tasks]
        seeds = set.intersection(*(set(v) for v in per_task)) if per_task else set()
        return {s: statistics.fmean(v[s] for v in per_task) for s in seeds}

    def mean(self, task: str) -> float | None:
        """Mean over runs of `task` (None when the row has no run of it)."""
        vals = self.values.get(task)
        return statistics.fmean(vals) if vals else None

    def std(self, task: str) -> float | None:
        """Sample standard deviation (ddof=1) over runs of `task`; None below two runs."""
        vals = self.values.get(task) or []
        return statistics.stdev(vals) if len(vals) > 1 else None

    def average(self, tasks: Sequence[str]) -> float | None:
        """Mean over `tasks` of the task means; None unless every task has runs."""
        means = [self.mean(t) for t in tasks]
        return statistics.fmean(means) if means and all(m is not None for m in means) else None

    @property
    def trainable_pct(self) -> float | None:
        """Mean trainable fraction x 100."""
        return statistics.fmean(self.fractions) * 100 if self.fractions else None


@dataclass(frozen=True)
class Comparison:
    """One row against its column's best row: n shared seeds, mean difference (x 100), its CI, the p-values."""

    n: int
    diff: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    p_t: float | None = None
    p_boot: float | None = None

    @property
    def p(self) -> float | None:
        """The p-value behind the mark: the larger of the tests run, so a mark needs every test to agree."""
        ps = [p for p in (self.p_t, self.p_boot) if p is not None]
        return max(ps) if ps else None

    @property
    def mark(self) -> str:
        """'*' / '**' where the row is significantly worse than the best, else ''."""
        return stats.marks(self.p) if self.diff is not None and self.diff < 0 else ""


@dataclass
class Report:
    """The table: rows, task columns, the runs left out by status, and each row against its column's best."""

    rows: list[Row]
    tasks: list[str]
    excluded: dict[str, int]
    n_files: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)  # column (task or AVERAGE) -> index of its best row
    comparisons: dict[tuple[int, str], Comparison] = field(default_factory=dict)  # (row index, column)
    n_boot: int = N_BOOT
    seed_test_only: int = 0  # task comparisons with n >= 2 and no bootstrap (predictions missing)
    bad_predictions: int = 0  # runs naming a predictions file that is unreadable or does not reproduce them


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    """Every `result.json` under `paths` (recursively; a path may also be a result.json itself)."""
    return results_io.find(paths)


def lookup(result: Mapping[str, Any], key: str) -> Any:
    """`result[a][b]...` for a dotted key 'a.b...'; None when any part is missing."""
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def method_of(result: Mapping[str, Any], key: str | None = None) -> str:
    """The method label: `key`'s value; by default labels.method, else the preset's `method`, else the design id."""
    if key:
        value = lookup(result, key)
    else:
        value = ((result.get("labels") or {}).get("method") or result.get("method")
                 or (result.get("config") or {}).get("method") or result.get("design_id"))
    if isinstance(value, (list, tuple)):
        value = "-".join(map(str, value))
    return "?" if value is None else str(value)


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def build(results: Sequence[Mapping[str, Any]], method_key: str | None = None,
          unreadable: Sequence[tuple[str, str]] = (), paths: Sequence[str | Path | None] | None = None,
          n_boot: int = N_BOOT) -> Report:
    """Group completed runs into rows, one per (method label, backbone, design), count the others by status,
    and compare every row with each column's best row.

    `paths`: each result's result.json (to find its predictions.npz); by default the `_path` that
    `pdspace.results.read` sets.
    """
    rows: dict[tuple[str, str, str], Row] = {}
    excluded: dict[str, int] = {}
    tasks: set[str] = set()
    if paths is not None and len(paths) != len(results):
        raise ValueError(f"build: {len(paths)} paths for {len(results)} results")
    for k, r in enumerate(results):
        value = lookup(r, "objective.value")
        ok = r.get("status") == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok:
            # a completed run without a finite objective (NaN stored as null) counts as failed too
            status = r.get("status") if r.get("status") != "completed" else "failed"
            excluded[str(status)] = excluded.get(str(status), 0) + 1
            continue
        method, backbone, task = method_of(r, method_key), str(r.get("backbone", "?")), str(r.get("task", "?"))
        design = str(r.get("design_id") or "-")
        row = rows.setdefault((method, backbone, design), Row(method, backbone, design))
        row.values.setdefault(task, []).append(float(value) * 100)
        path = paths[k] if paths is not None else r.get("_path")
        row.runs.setdefault(task, []).append((r, None if path is None else str(path)))
        fraction = lookup(r, "params.fraction")
        if isinstance(fraction, (int, float)):
            row.fractions.append(float(fraction))
        row.below_budget |= bool(lookup(r, "params.below_budget"))
        tasks.add(task)
    report = Report([rows[k] for k in sorted(rows)], sorted(tasks, key=_task_key), excluded,
                    len(results) + len(unreadable), list(unreadable), n_boot=n_boot)
    _compare(report)
    return report


# a run's predictions sorted by example index: (index, gold, pred, the scorer of its objective)
_Verified = tuple[np.ndarray, np.ndarray, np.ndarray, stats.Scorer]


class _Predictions:
    """Each run's verified predictions, loaded once."""

    def __init__(self) -> None:
        self.cache: dict[str, _Verified | None] = {}
        self.bad = 0

    def get(self, result: Mapping[str, Any], path: str | None) -> _Verified | None:
        """The run's predictions, or None when it has none or they do not reproduce its objective."""
        if path is None or not result.get("predictions"):
            return None
        if path not in self.cache:
            self.cache[path] = self._load(result, path)
            self.bad += self.cache[path] is None
        return self.cache[path]

    @staticmethod
    def _load(result: Mapping[str, Any], path: str) -> _Verified | None:
        loaded = stats.load_predictions(path, result)
        if loaded is None:
            return None
        order = loaded[0].argsort()
        index, gold, pred = (x[order] for x in loaded)
        try:
            config_task = (result.get("config") or {}).get("task")
            spec = task_spec(config_task) if isinstance(config_task, Mapping) and "name" in config_task \
                else get_task(str(result.get("task")))
            score = stats.score_fn(spec, (result.get("objective") or {}).get("name"))
            # a file that does not reproduce the run's objective would test something else
            ok = abs(float(score(pred, gold)) - float(result["objective"]["value"])) <= SCORE_TOLERANCE
        except (DataError, KeyError, TypeError, ValueError):
            return None
        return (index, gold, pred, score) if ok else None


def _pair(row: Row, best: Row, task: str, preds: _Predictions, n_boot: int) -> Comparison:
    """`row` against `best` on `task`: paired t over shared seeds, paired bootstrap where predictions allow."""
    a, b = row.seed_values(task), best.seed_values(task)
    seeds = sorted(set(a) & set(b), key=str)
    t = stats.paired_t([a[s] for s in seeds], [b[s] for s in seeds])
    p_boot = None
    if t.p is not None:
        sides = []
        for r in (row, best):
            # one run per shared seed, or the pairing of predictions with seeds is ambiguous
            by_seed = {run.get("seed"): (run, path) for run, path in r.runs[task]}
            if len(by_seed) != len(r.runs[task]):
                break
            sides.append([preds.get(*by_seed[s]) for s in seeds])
        loaded = [p for side in sides for p in side]
        if len(sides) == 2 and all(p is not None for p in loaded) \
                and all(np.array_equal(p[0], loaded[0][0]) and np.array_equal(p[1], loaded[0][1]) for p in loaded):
            gold, score = loaded[0][1], loaded[0][3]
            boot = stats.paired_bootstrap([p[2] for p in sides[0]], [p[2] for p in sides[1]], gold, score,
                                          n_boot=n_boot, seed=0)
            p_boot = boot.p
    return Comparison(t.n, t.mean_diff, t.ci_low, t.ci_high, t.p, p_boot)


def _compare(report: Report) -> None:
    """Fill `report.best` and `report.comparisons` ("best": pdspace.search.ordering's rule, ties included)."""
    preds = _Predictions()
    for col in (*report.tasks, AVERAGE):
        means = [row.average(report.tasks) if col == AVERAGE else row.mean(col) for row in report.rows]
        present = [i for i, m in enumerate(means) if m is not None]
        if not present:
            continue
        def key(i: int) -> tuple:
            row = report.rows[i]
            runs = sum(len(v) for v in row.values.values()) if col == AVERAGE else len(row.values[col])
            return rank_key(1, means[i], runs, f"{row.method} {row.backbone} {row.design}")

        b = min(present, key=key)
        report.best[col] = b
        for i in present:
            if i == b:
                continue
            comp = compare(report, i, b, col, preds)
            report.comparisons[(i, col)] = comp
            report.seed_test_only += col != AVERAGE and comp.p_t is not None and comp.p_boot is None
    report.bad_predictions = preds.bad


def compare(report: Report, i: int, j: int, col: str, preds: _Predictions | None = None) -> Comparison:
    """Row `i` against row `j` on column `col` (a task: paired t over shared seeds, and the paired bootstrap
    where predictions allow; AVERAGE: paired t over per-seed task averages), as the table compares a row with
    its column's best."""
    row, other = report.rows[i], report.rows[j]
    if col != AVERAGE:
        return _pair(row, other, col, preds or _Predictions(), report.n_boot)
    a, c = row.seed_averages(report.tasks), other.seed_averages(report.tasks)
    seeds = sorted(set(a) & set(c), key=str)
    t = stats.paired_t([a[s] for s in seeds], [c[s] for s in seeds])
    return Comparison(t.n, t.mean_diff, t.ci_low, t.ci_high, t.p)


def _num(x: float | None, digits: int) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def cell(row: Row, task: str, mark: str = "") -> str:
    """'mean ± std (n=k)' with one decimal, then `mark`; the missing mark when the row has no run of `task`."""
    mean = row.mean(task)
    if mean is None:
        return MISSING
    std = row.std(task)
    return (f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "") + f" (n={len(row.values[task])})"
            + (f" {mark}" if mark else ""))


def _mark(report: Report, i: int, col: str) -> str:
    comp = report.comparisons.get((i, col))
    return comp.mark if comp else ""


def _label(row: Row) -> list[str]:
    return [row.method, row.backbone, "" if row.design == row.method else row.design]


def md_row(cells: Sequence[str]) -> str:
    """One markdown table row; a `|` inside a cell (design ids: `A|P|B|L`) is escaped, so it splits no cell."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the markdown table (cells marked * / ** against their column's best)."""
    header = ["method", "backbone", "design", "trainable %", *report.tasks, "average"]
    body = []
    for i, row in enumerate(report.rows):
        average, mark = _num(row.average(report.tasks), 1), _mark(report, i, AVERAGE)
        body.append([*_label(row), _num(row.trainable_pct, 3) + (" †" if row.below_budget else ""),
                     *(cell(row, t, _mark(report, i, t)) for t in report.tasks),
                     average + (f" {mark}" if mark else "")])
    return header, body


def _p(p: float | None, n: int) -> str:
    if p is None:
        return "n < 2" if n < 2 else MISSING
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def significance_table(report: Report) -> str:
    """Markdown: per column, its best row and every other row's difference to it, 95 % CI and p-values."""
    if not report.comparisons:
        return ""
    header = ["column", "method", "backbone", "design", "n", "Δ vs best", "95 % CI", "p (t)", "p (bootstrap)"]
    lines = [header, ["---"] * 4 + ["---:"] * 5]
    for col in (*report.tasks, AVERAGE):
        if col not in report.best:
            continue
        lines.append([col, *_label(report.rows[report.best[col]]), "", "best", "", "", ""])
        for i, row in enumerate(report.rows):
            comp = report.comparisons.get((i, col))
            if comp is None:
                continue
            diff = MISSING if comp.diff is None else f"{comp.diff:+.2f}" + (f" {comp.mark}" if comp.mark else "")
            ci = "n < 2" if comp.ci_low is None else f"[{comp.ci_low:+.2f}, {comp.ci_high:+.2f}]"
            lines.append([col, *_label(row), str(comp.n), diff, ci, _p(comp.p_t, comp.n),
                          "" if col == AVERAGE else _p(comp.p_boot, comp.n)])
    notes = [TESTS_NOTE.format(n_boot=report.n_boot)]
    if report.seed_test_only:
        notes.append(f"Seed test only ({MISSING} under p (bootstrap)) for {report.seed_test_only} comparisons: "
                     f"the two rows lack {results_io.PREDICTIONS_FILE} for the same seeds and examples.")
    if report.bad_predictions:
        notes.append(f"Unusable {results_io.PREDICTIONS_FILE}: {report.bad_predictions} runs (unreadable, or not "
                     "reproducing the run's objective); their rows get the seed test only.")
    return "\n".join([md_row(cells) for cells in lines] + [""] + notes) + "\n"


def footnotes(report: Report) -> list[str]:
    """The cell legend and the runs left out."""
    notes = [NOTE]
    if report.excluded:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(report.excluded.items()))
        notes.append(f"Excluded: {parts} of {report.n_files} runs (not completed).")
    if report.unreadable:
        notes.append(f"Unreadable: {len(report.unreadable)} result files ("
                     + "; ".join(why for _, why in report.unreadable[:5]) + ").")  # each `why` starts with its path
    return notes


def to_markdown(report: Report) -> str:
    """The table as markdown, with its footnotes."""
    header, body = table_rows(report)
    align = ["---", "---", "---"] + ["---:"] * (len(header) - 3)
    lines = [md_row(cells) for cells in (header, align, *body)]
    significance = significance_table(report)
    return "\n".join(lines + [""] + footnotes(report)) + "\n" + ("\n" + significance if significance else "")


SIG_COLUMNS = ("n_paired", "diff", "ci_low", "ci_high", "p_t", "p_boot")


def to_csv(report: Report) -> str:
    """Machine-readable numbers (x 100, 4 decimals; empty when missing): mean, std and n per task, then
    per task and the average the comparison with the column's best (shared seeds, difference, CI, p-values;
    empty for the best row itself)."""
    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    def sig(i: int, col: str) -> list[str]:
        c = report.comparisons.get((i, col))
        if c is None:
            return [""] * len(SIG_COLUMNS)
        return [str(c.n), num(c.diff), num(c.ci_low), num(c.ci_high),
                *("" if p is None else f"{p:.4g}" for p in (c.p_t, c.p_boot))]

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "backbone", "design", "trainable_pct"]
                    + [f"{t}{s}" for t in report.tasks for s in ("", "_std", "_n", *(f"_{c}" for c in SIG_COLUMNS))]
                    + [AVERAGE, *(f"{AVERAGE}_{c}" for c in SIG_COLUMNS)])
    for i, row in enumerate(report.rows):
        cells = []
        for t in report.tasks:
            cells += [num(row.mean(t)), num(row.std(t)), str(len(row.values.get(t, []))), *sig(i, t)]
        writer.writerow([row.method, row.backbone, row.design, num(row.trainable_pct), *cells,
                         num(row.average(report.tasks)), *sig(i, AVERAGE)])
    return out.getvalue()


def log_wandb(report: Report) -> None:
    """Log the table to a W&B run (mode from $WANDB_MODE or the API key); a failure only warns."""
    header, body = table_rows(report)
    log_report("report", "report", lambda run, wandb: run.log({"report/table": wandb.Table(columns=header,
                                                                                          data=body)}),
               what="the report")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `pdspace-report`: bad input exits 1 with one error line (`pdspace.errors`)."""
    parser = argparse.ArgumentParser(prog="pdspace-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run or sweep dirs, searched recursively for result.json")
    parser.add_argument("--method-key", help="dotted result.json key naming a row, e.g. design_id or "
                                             "labels.strategy (default: labels.method, else method, else design_id)")
    parser.add_argument("--out", help="also write report.md and report.csv into this dir")
    parser.add_argument("--wandb", action="store_true", help="also log the table to a W&B run")
    args = parser.parse_args(argv)
    try:
        with warning_lines("pdspace-report"):
            paths = find_results(args.run_dirs)
            if not paths:
                raise FileNotFoundError(f"no {RESULT_FILE} found under {', '.join(args.run_dirs)}")
            results, unreadable = results_io.read_all(paths)
            if not results:
                raise FileNotFoundError(f"no readable {RESULT_FILE} under {', '.join(args.run_dirs)}")
            if args.method_key and all(lookup(r, args.method_key) is None for r in results):
                raise LookupError(f"--method-key {args.method_key}: no {RESULT_FILE} has this key; name one they "
                                  "have, e.g. --method-key design_id")
            report = build(results, args.method_key, unreadable, paths=[r.get("_path") for r in results])
    except (OSError, LookupError) as e:
        exit_error("pdspace-report", e)
    markdown = to_markdown(report)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.md").write_text(markdown)
            (out / "report.csv").write_text(to_csv(report))
        except OSError as e:
            exit_error("pdspace-report", cannot_write(out, e, "--out"))
    if args.wandb:
        with warning_lines("pdspace-report"):
            log_wandb(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
