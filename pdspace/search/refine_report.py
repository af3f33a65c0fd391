"""Refinement's report: the options' table (console and markdown), the EDF and box plots, refine_report.md
and .json in the sweep dir, and (with W&B on) the same in one W&B run (`pdspace.tracking.log_report`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pdspace import results as results_io
from pdspace.search.analysis import Analysis


def _rows(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    def num(x: float | None, digits: int = 4) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"

    header = ["option", "n", "failed", "mean", "median", "best", "std", "best-of", "per-task means"]
    rows = [[o.option + (" *" if o.option == analysis.winner else ""), str(o.n), str(o.failed), num(o.mean),
             num(o.median), num(o.best), num(o.std), num(o.best_of, 2),
             " ".join(f"{t}={v:.4f}" for t, v in o.per_task.items()) or "-"] for o in analysis.options]
    return header, rows


def format_table(analysis: Analysis) -> str:
    """A compact plain-text table of the options (winner marked *), for the console."""
    header, rows = _rows(analysis)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _plots(analysis: Analysis, sweep: Path) -> tuple[Path, Path]:
    # a bare Figure renders with Agg and leaves pyplot's global backend alone
    from matplotlib.figure import Figure

    metric = "/".join(analysis.metrics)
    shown = [o for o in analysis.options if o.n]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for i, o in enumerate(shown):
        err = np.sort(1 - np.array(o.edf["x"]))
        # past ten options the colours repeat: change the line style with them
        ax.step(np.concatenate([[err[0]], err]), np.concatenate([[0], o.edf["y"]]), where="post",
                linestyle=("-", "--", ":")[i // 10 % 3],
                label=f"{o.option}  {o.n} | {err.min():.3f} | {err.mean():.3f}")
    ax.set(xlabel=f"error (1 - {metric})", ylabel="cumulative prob.", title=f"{analysis.dimension}: EDF of errors")
    ax.legend(title="option  n | min | mean", fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    edf = sweep / f"edf_{analysis.dimension}.png"
    fig.savefig(edf, dpi=120)
    fig = Figure(figsize=(max(4, 1 + 0.8 * len(shown)), 4), layout="constrained")
    ax = fig.subplots()
    ax.boxplot([o.edf["x"] for o in shown], tick_labels=[o.option for o in shown])
    ax.set(ylabel=metric, title=f"{analysis.dimension}: {metric} per option")
    ax.grid(alpha=0.3, axis="y")
    box = sweep / f"box_{analysis.dimension}.png"
    fig.savefig(box, dpi=120)
    return edf, box


def report(analysis: Analysis, sweep_dir: str | Path) -> dict[str, Path]:
    """Write refine_report.md/.json and the EDF and box plots into the sweep dir; returns their paths."""
    sweep = Path(sweep_dir)
    paths = {"md": sweep / "refine_report.md", "json": sweep / "refine_report.json"}
    paths["edf"], paths["box"] = _plots(analysis, sweep)
    analysis.files.update({k: str(v) for k, v in paths.items()})
    header, rows = _rows(analysis)
    a = analysis
    md = [f"# Refinement of `{a.dimension}` over `{sweep}`", "",
          f"{a.n_results} results ({a.n_completed} completed, {a.n_failed} failed or without objective"
          f"{f', {a.n_pruned} pruned' if a.n_pruned else ''}"
          f"{f', {len(a.unreadable)} unreadable result files' if a.unreadable else ''}); "
          f"tasks: {', '.join(a.tasks)}; metric: {', '.join(a.metrics)}; best-of: {a.bootstrap} bootstrap "
          f"resamples (seed {a.seed}).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(r) + " |" for r in rows), "",
          f"**Winner: {a.winner}**" + (f" ({a.note})" if a.note else ""), "",
          *([f"Test: {a.test_line()}.", ""] if a.test else []), f"Rule: {a.rule}.", ""]
    if a.unreadable:
        md += ["Unreadable result files (not counted above):", "",
               *(f"- `{p}`: {why.removeprefix(f'{p}: ')}" for p, why in a.unreadable.items()), ""]
    if "space" in a.files:
        md += [f"Narrowed space: `{a.files['space']}`", ""]
    md += [f"![EDF of errors]({paths['edf'].name})", "", f"![{a.dimension} box plot]({paths['box'].name})", ""]
    paths["md"].write_text("\n".join(md))
    results_io.write_json(paths["json"], a.to_dict())
    return paths


def log_wandb(analysis: Analysis, sweep: Path) -> None:
    """The report's table and plots in one W&B run of the sweep's group; a failure only warns (the files stand)."""
    from pdspace.tracking import log_report

    def fill(run: Any, wandb: Any) -> None:
        header, rows = _rows(analysis)
        run.log({"refine/table": wandb.Table(columns=header, data=rows),
                 "refine/edf": wandb.Image(analysis.files["edf"]), "refine/box": wandb.Image(analysis.files["box"])})
        run.summary["winner"] = analysis.winner

    log_report("refine", f"refine-{analysis.dimension}", fill, what="the refinement", sweep=sweep,
               config={"dimension": analysis.dimension, "rule": analysis.rule, "sweep_dir": str(sweep)})
