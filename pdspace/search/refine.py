"""`pdspace-refine`: compare the options of one dimension over a finished sweep, pick the winner, and
write the narrowed design space (one refinement step of the paper, analysed the pycls/GraphGym way).

The jobs' `result.json` files are the source of truth (W&B is only a mirror). The report
(`refine_report.md`/`.json`, `edf_<dim>.png`, `box_<dim>.png`) goes into the sweep dir; the
narrowed space goes to `<config_dir>/space/<name>.yaml`, where `config_dir` defaults to
`<sweep_dir>/conf`: refinement never edits the source tree, the narrowed space stays with the
results it came from, and the next sweep uses it with `--config-dir <sweep_dir>/conf`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from pdspace.design.space import (
    DEFAULT_NUM_GROUPS,
    GROUPING_PATTERNS,
    Design,
    allocation_constraint,
    grouping_matches,
    normalize_strategies,
    tunable_constraint,
)
from pdspace import results as results_io
from pdspace.results import finite
from pdspace.search.ordering import rank_key
from pdspace.tracking import wandb_mode

log = logging.getLogger("pdspace")
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

    def option(self, name: str) -> OptionStats:
        """The stats of option `name`."""
        return next(o for o in self.options if o.option == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN as null)."""
        return finite(asdict(self))


def _group_of(dimension: str) -> int | None:
    """k of 'strategy_gk'; None for the other dimensions; ValueError for an unknown one."""
    if dimension in ("grouping", "allocation", "tunable"):
        return None
    m = re.fullmatch(r"strategy_g([1-9]\d*)", dimension)
    if not m:
        raise ValueError(f"unknown dimension {dimension!r}; use grouping, allocation, tunable or "
                         "strategy_g1 ... strategy_gG (one group's strategy set)")
    return int(m.group(1))


def load_results(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every `<job>/result.json` of a sweep dir (each with its `_path`), and (path, why) for the unreadable ones."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep} does not exist")
    return results_io.read_all(results_io.sweep_paths(sweep))


def option_of(result: Mapping[str, Any], dimension: str) -> str:
    """The option of `dimension` a result belongs to: its sweeper label, else derived from its design."""
    k = _group_of(dimension)
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
        return "".join("1" if t else "0" for t in design.tunable)
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


def analyse(results: Sequence[Mapping[str, Any]], dimension: str, *, rule: str = "mean", bootstrap: int = 1000,
            seed: int = 0, unreadable: Sequence[tuple[str, str]] = ()) -> Analysis:
    """Compare the options of `dimension` over a sweep's results and pick the winner by `rule` (see RULES)."""
    _group_of(dimension)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    points: list[tuple[str, str, float]] = []
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
                    unreadable=dict(unreadable), n_pruned=pruned)


def _num_groups(space: Mapping[str, Any]) -> int:
    strategy, tunable = space.get("strategy"), space.get("tunable")
    if isinstance(strategy, list):
        return len(strategy)
    if isinstance(tunable, str) and tunable not in ("any", "all"):
        return len(tunable)
    if isinstance(tunable, list) and tunable:
        return len(tunable[0])
    return int(space.get("num_groups") or DEFAULT_NUM_GROUPS)


def narrowed_space(space: Mapping[str, Any], dimension: str, winner: str) -> dict[str, Any]:
    """A copy of a `space:` block with `dimension` pinned to `winner` and `controlled` reset to null."""
    k = _group_of(dimension)
    out = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else copy.deepcopy(dict(space))
    out["controlled"] = None
    if winner in UNPINNABLE:
        raise ValueError(f"cannot pin {dimension} to {winner!r}: it names no value of the dimension")
    if dimension == "grouping":
        if winner in GROUPING_PATTERNS:
            out["grouping"] = winner
        elif re.fullmatch(r"\d+([-,]\d+)*", winner):
            out["grouping"] = [int(n) for n in re.split(r"[-,]", winner)]
        else:
            raise ValueError(f"cannot pin grouping to {winner!r}: use a pattern ({', '.join(GROUPING_PATTERNS)}) "
                             "or group sizes such as 1-2-2-1")
    elif dimension == "allocation":
        out["allocation"] = allocation_constraint(winner).enumerate()[0]
    elif dimension == "tunable":
        tunable_constraint(winner, len(winner))
        out["tunable"] = winner
    else:
        strategy = out.get("strategy", "any")
        per_group = list(strategy) if isinstance(strategy, (list, tuple)) else [strategy] * _num_groups(out)
        if k > len(per_group):
            raise ValueError(f"cannot pin {dimension}: the space has {len(per_group)} groups")
        per_group[k - 1] = normalize_strategies(winner, k - 1)
        out["strategy"] = per_group
    return out


def write_space(space_block: Mapping[str, Any], path: str | Path, *, provenance: Mapping[str, Any]) -> Path:
    """Write a space config file (`space:` block after the sweeper override) with a `#` provenance header."""
    path = Path(path)
    header = ["# @package _global_"] + [f"# {k}: {' '.join(str(v).split())}" for k, v in provenance.items()]
    body = OmegaConf.to_yaml({"defaults": [{"override /hydra/sweeper": "pdspace"}], "space": dict(space_block)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body)
    return path


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
          f"**Winner: {a.winner}**" + (f" ({a.note})" if a.note else ""), "", f"Rule: {a.rule}.", ""]
    if a.unreadable:
        md += ["Unreadable result files (not counted above):", "",
               *(f"- `{p}`: {why}" for p, why in a.unreadable.items()), ""]
    if "space" in a.files:
        md += [f"Narrowed space: `{a.files['space']}`", ""]
    md += [f"![EDF of errors]({paths['edf'].name})", "", f"![{a.dimension} box plot]({paths['box'].name})", ""]
    paths["md"].write_text("\n".join(md))
    results_io.write_json(paths["json"], a.to_dict())
    return paths


def _log_wandb(analysis: Analysis, sweep: Path) -> None:
    try:
        import wandb

        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pdspace"), job_type="refine",
                         group=sweep.resolve().name, name=f"refine-{analysis.dimension}", dir=str(sweep),
                         mode=wandb_mode(None), reinit="create_new",
                         config={"dimension": analysis.dimension, "rule": analysis.rule, "sweep_dir": str(sweep)})
        header, rows = _rows(analysis)
        run.log({"refine/table": wandb.Table(columns=header, data=rows),
                 "refine/edf": wandb.Image(analysis.files["edf"]), "refine/box": wandb.Image(analysis.files["box"])})
        run.summary["winner"] = analysis.winner
        run.finish()
    except Exception as e:  # noqa: BLE001 - W&B is a mirror; the files on disk are the result
        warnings.warn(f"W&B logging of the refinement failed ({type(e).__name__}: {e}); the report files stand",
                      stacklevel=2)


def sweep_space(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The `space:` block a sweep dir was sampled from (its samples.yaml, else its multirun.yaml); None if neither."""
    sweep = Path(sweep_dir)
    for name in ("samples.yaml", "multirun.yaml"):
        path = sweep / name
        if path.exists():
            space = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("space")
            if space:
                return space
    return None


def refine(sweep_dir: str | Path, dimension: str, *, space_file: str | Path | None = None,
           space: Mapping[str, Any] | None = None, config_dir: str | Path | None = None, name: str | None = None,
           rule: str = "mean", wandb: bool = False) -> Analysis:
    """Analyse a sweep over `dimension`, write the report and the narrowed space file.

    The source space is `space`, else `space_file`, else the one the sweep was sampled from (its
    samples.yaml); a sweep without a space (a plain grid) gets a report and no narrowed space.
    """
    sweep = Path(sweep_dir)
    found, unreadable = load_results(sweep)
    for path, why in unreadable:
        warnings.warn(f"unreadable result file {path}: {why}", stacklevel=2)
    analysis = analyse(found, dimension, rule=rule, unreadable=unreadable)
    if space_file is not None:
        loaded = OmegaConf.to_container(OmegaConf.load(space_file), resolve=True)
        space = loaded.get("space", loaded)
    elif space is None:
        space = sweep_space(sweep)
        if space is None and (config_dir or name):
            raise ValueError(f"{sweep} holds no samples.yaml or multirun.yaml with a space: block, so there is no "
                             "space to narrow; give --space-file")
    narrowed = target = None
    if space is not None:
        # narrow before writing anything, so a winner no space can hold fails cleanly
        narrowed = narrowed_space(space, dimension, analysis.winner)
        source = narrowed.get("name") or (Path(space_file).stem if space_file else "space")
        narrowed["name"] = name = name or f"{source}_{dimension}"
        target = Path(config_dir or sweep / "conf") / "space" / f"{name}.yaml"
        analysis.files["space"] = str(target)
    report(analysis, sweep)
    if narrowed is not None:
        write_space(narrowed, target, provenance={
            name: f"{source} with {dimension} = {analysis.winner}, written by pdspace-refine",
            "source sweep": sweep.resolve(), "source space": space_file or source, "dimension": dimension,
            "metric": ", ".join(analysis.metrics), "rule": analysis.rule,
            "results": f"{analysis.n_results} ({analysis.n_completed} completed, {analysis.n_failed} failed)",
            "winner": analysis.winner,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")})
    if wandb:
        _log_wandb(analysis, sweep)
    return analysis


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `pdspace-refine`: bad input exits 2 with one error line."""
    parser = argparse.ArgumentParser(prog="pdspace-refine", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a finished sweep dir (one folder per job, each with result.json)")
    parser.add_argument("--dimension", required=True, help="grouping, allocation, tunable or strategy_g1..G")
    parser.add_argument("--space-file", help="the sweep's source space yaml (default: the space its samples.yaml "
                                             "records)")
    parser.add_argument("--config-dir", help="where the narrowed space goes, as <dir>/space/<name>.yaml "
                                             "(default: <sweep_dir>/conf)")
    parser.add_argument("--name", help="the narrowed space's name (default: <source name>_<dimension>)")
    parser.add_argument("--rule", default="mean", choices=sorted(RULES), help="how the winner is chosen")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to a W&B run")
    args = parser.parse_args(argv)
    # warnings (a skipped result.json) as one line each, not with the source line Python adds
    with warnings.catch_warnings(record=True) as caught:
        try:
            analysis, error = refine(args.sweep_dir, args.dimension, space_file=args.space_file,
                                     config_dir=args.config_dir, name=args.name, rule=args.rule,
                                     wandb=args.wandb), None
        except (OSError, ValueError) as e:
            error = e
    for w in caught:
        print(f"pdspace-refine: warning: {w.message}", file=sys.stderr)
    if error is not None:
        print(f"pdspace-refine: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_table(analysis))
    print(f"\nwinner: {analysis.winner}" + (f" ({analysis.note})" if analysis.note else ""))
    print(f"rule: {analysis.rule}")
    print("wrote:\n" + "\n".join(f"  {p}" for p in analysis.files.values()))
    return 0


class RefineCallback(Callback):
    """At the end of a multirun, refine its sweep over `dimension` (default: `space.controlled`); never raises."""

    def __init__(self, dimension: str | None = None, config_dir: str | None = None, name: str | None = None,
                 wandb: bool = False) -> None:
        self.dimension, self.config_dir, self.name, self.wandb = dimension, config_dir, name, wandb

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Refine the finished sweep; an error is logged, never raised, so the sweep's results stand."""
        try:
            space = config.get("space")
            space = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else space
            dimension = self.dimension or (space or {}).get("controlled")
            if not dimension:
                log.info("refine: no dimension given and space.controlled is not set; nothing to refine")
                return
            analysis = refine(config.hydra.sweep.dir, dimension, space=space, config_dir=self.config_dir,
                              name=self.name, wandb=self.wandb)
            log.info("refine %s: winner %s\n%s\nwrote %s", dimension, analysis.winner, format_table(analysis),
                     ", ".join(analysis.files.values()))
        except Exception as e:  # noqa: BLE001 - a refinement error must not cost the sweep its results
            log.error("refine failed: %s: %s", type(e).__name__, e)


if __name__ == "__main__":
    sys.exit(main())
