"""`pdspace-report RUN_DIRS...`: the paper's results table from finished runs' `result.json` files.

A row is one design on one backbone, with its method label: runs of different designs never share
a cell (a preset swept over strategies gives one row per strategy). Columns are the tasks and their
average. A cell is the task's objective x 100, mean ± sample standard deviation (ddof=1; one run
shows no ±) over the row's completed runs on that task (its seeds), with their number n. The
average is the mean over tasks of the cell means, given only when the row has every task of the
table. Runs that did not complete, and unreadable result files, are counted in a footnote.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdspace import results as results_io
from pdspace.results import RESULT_FILE
from pdspace.tracking import wandb_mode

MISSING = "–"
# the paper's column order (GLUE as in its tables); other tasks follow alphabetically
TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
NOTE = ("Cells: objective × 100, mean ± sample std (ddof=1) over seeds, n = completed runs; average = mean of "
        "the task means, only for rows with every task; trainable % = trainable PEFT params / backbone params "
        "(task head apart; † = below the budget: fixed-size modules such as BitFit cannot use all of it).")


@dataclass
class Row:
    """One method on one backbone: objective values (x 100) per task and trainable fractions."""

    method: str
    backbone: str
    design: str = "-"
    values: dict[str, list[float]] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)
    below_budget: bool = False

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


@dataclass
class Report:
    """The table: rows, task columns, and the runs left out by status."""

    rows: list[Row]
    tasks: list[str]
    excluded: dict[str, int]
    n_files: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)


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
          unreadable: Sequence[tuple[str, str]] = ()) -> Report:
    """Group completed runs into rows, one per (method label, backbone, design); count the others by status."""
    rows: dict[tuple[str, str, str], Row] = {}
    excluded: dict[str, int] = {}
    tasks: set[str] = set()
    for r in results:
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
        fraction = lookup(r, "params.fraction")
        if isinstance(fraction, (int, float)):
            row.fractions.append(float(fraction))
        row.below_budget |= bool(lookup(r, "params.below_budget"))
        tasks.add(task)
    return Report([rows[k] for k in sorted(rows)], sorted(tasks, key=_task_key), excluded,
                  len(results) + len(unreadable), list(unreadable))


def _num(x: float | None, digits: int) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def cell(row: Row, task: str) -> str:
    """'mean ± std (n=k)' with one decimal; the missing mark when the row has no run of `task`."""
    mean = row.mean(task)
    if mean is None:
        return MISSING
    std = row.std(task)
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "") + f" (n={len(row.values[task])})"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the markdown table."""
    header = ["method", "backbone", "design", "trainable %", *report.tasks, "average"]
    body = [[row.method, row.backbone, "" if row.design == row.method else row.design,
             _num(row.trainable_pct, 3) + (" †" if row.below_budget else ""), *(cell(row, t) for t in report.tasks),
             _num(row.average(report.tasks), 1)] for row in report.rows]
    return header, body


def footnotes(report: Report) -> list[str]:
    """The cell legend and the runs left out."""
    notes = [NOTE]
    if report.excluded:
        parts = ", ".join(f"{n} {status}" for status, n in sorted(report.excluded.items()))
        notes.append(f"Excluded: {parts} of {report.n_files} runs (not completed).")
    if report.unreadable:
        notes.append(f"Unreadable: {len(report.unreadable)} result files ("
                     + "; ".join(f"{p}: {why}" for p, why in report.unreadable[:5]) + ").")
    return notes


def to_markdown(report: Report) -> str:
    """The table as markdown, with its footnotes."""
    header, body = table_rows(report)
    align = ["---", "---", "---"] + ["---:"] * (len(header) - 3)
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, align, *body)]
    return "\n".join(lines + [""] + footnotes(report)) + "\n"


def to_csv(report: Report) -> str:
    """Machine-readable numbers (x 100, 4 decimals; empty when missing): mean, std and n per task."""
    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "backbone", "design", "trainable_pct"]
                    + [f"{t}{s}" for t in report.tasks for s in ("", "_std", "_n")] + ["average"])
    for row in report.rows:
        cells = []
        for t in report.tasks:
            cells += [num(row.mean(t)), num(row.std(t)), str(len(row.values.get(t, [])))]
        writer.writerow([row.method, row.backbone, row.design, num(row.trainable_pct), *cells,
                         num(row.average(report.tasks))])
    return out.getvalue()


def log_wandb(report: Report) -> None:
    """Log the table to a W&B run (mode from $WANDB_MODE or the API key); a failure only warns."""
    try:
        import wandb

        header, body = table_rows(report)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pdspace"), job_type="report", name="report",
                         mode=wandb_mode(None), reinit="create_new")
        run.log({"report/table": wandb.Table(columns=header, data=body)})
        run.finish()
    except Exception as e:  # noqa: BLE001 - W&B is a mirror; the table on stdout and disk is the result
        warnings.warn(f"W&B logging of the report failed ({type(e).__name__}: {e})", stacklevel=2)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `pdspace-report`: bad input exits 2 with one error line."""
    parser = argparse.ArgumentParser(prog="pdspace-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run or sweep dirs, searched recursively for result.json")
    parser.add_argument("--method-key", help="dotted result.json key naming a row, e.g. design_id or "
                                             "labels.strategy (default: labels.method, else method, else design_id)")
    parser.add_argument("--out", help="also write report.md and report.csv into this dir")
    parser.add_argument("--wandb", action="store_true", help="also log the table to a W&B run")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            paths = find_results(args.run_dirs)
            if not paths:
                raise FileNotFoundError(f"no {RESULT_FILE} found under {', '.join(args.run_dirs)}")
            results, unreadable = results_io.read_all(paths)
            if not results:
                raise FileNotFoundError(f"no readable {RESULT_FILE} under {', '.join(args.run_dirs)}")
            report, error = build(results, args.method_key, unreadable), None
        except OSError as e:
            error = e
    for w in caught:
        print(f"pdspace-report: warning: {w.message}", file=sys.stderr)
    if error is not None:
        print(f"pdspace-report: error: {error}", file=sys.stderr)
        sys.exit(2)
    markdown = to_markdown(report)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown)
        (out / "report.csv").write_text(to_csv(report))
    if args.wandb:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log_wandb(report)
        for w in caught:
            print(f"pdspace-report: warning: {w.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
