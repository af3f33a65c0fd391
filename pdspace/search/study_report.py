"""The study report: best design and top-k with their curves (designs ranked by pdspace's one rule,
`pdspace.search.ordering`, so the report names the design the search picks), parameter importances
(fANOVA), the optimisation history, the pruned runs and where they stopped, the Pareto front of a
multi-objective study; markdown + PNG in the sweep dir (beside refine_report.md), and to W&B when it is on."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pdspace import results
from pdspace.search.ordering import Standing, rank_key, ranked, standings
from pdspace.search.study import StudySpec, open_study, redact

log = logging.getLogger("pdspace.study")
TOP_K = 5
RULE = "higher mean objective, then more trials, then the design id"


def _jobs_by_trial(sweep_dir: Path, task: str) -> dict[int, dict[str, Any]]:
    found, _ = results.read_all(results.sweep_paths(sweep_dir))
    return {r["trial"]["number"]: r for r in found
            if r.get("task") == task and isinstance((r.get("trial") or {}).get("number"), int)}


def rank_trials(done: Sequence[Any]) -> list[tuple[Standing, list[Any]]]:
    """Completed trials grouped by design and ranked best first by pdspace's rule (`pdspace.search.ordering`):
    the mean first objective over a design's trials, then more trials, then the design id."""
    by_design: dict[str, list[Any]] = {}
    for t in sorted(done, key=lambda t: t.number):
        by_design.setdefault(str(t.user_attrs.get("design_id")), []).append(t)
    table = standings((d, "study", t.values[0]) for d, trials in by_design.items() for t in trials)
    return [(s, by_design[s.name]) for s in ranked(table.values())]


def _importances(study: Any) -> dict[str, float] | str:
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, target=(
                (lambda t: t.values[0]) if len(study.directions) > 1 else None)))
    except Exception as e:  # noqa: BLE001 - too few or constant trials: say why, keep the report
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"


def _plots(study: Any, spec: StudySpec, jobs: Mapping[int, Mapping[str, Any]], top: list[Any],
           out: Path, stem: str) -> dict[str, Path]:
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    paths = {}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    xs = [t.number for t in done]
    ys = [t.values[0] for t in done]
    ax.scatter(xs, ys, s=14, label="completed")
    best, run = [], -math.inf
    for y in ys:
        run = max(run, y)
        best.append(run)
    ax.step(xs, best, where="post", color="C1", label="best so far")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               s=14, marker="x", color="grey", label="pruned (last value)")
    ax.set(xlabel="trial", ylabel=spec.objectives[0], title=f"{spec.name}: optimisation history")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    paths["history"] = out / f"{stem}_history.png"
    fig.savefig(paths["history"], dpi=120)

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for t in pruned:
        curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        ax.plot(sorted(t.intermediate_values), curve, color="lightgrey", lw=1)
    for i, t in enumerate(top):
        curve = results.curve(jobs.get(t.number, {}))
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", lw=1.5, label=f"#{t.number} {t.values[0]:.3f}",
                    color=f"C{i}")
    ax.set(xlabel="evaluation", ylabel=spec.objectives[0], title="top designs (grey: pruned)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    paths["curves"] = out / f"{stem}_curves.png"
    fig.savefig(paths["curves"], dpi=120)

    if spec.multi_objective:
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        front = {t.number for t in study.best_trials}
        ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=14, color="lightgrey", label="trials")
        pts = sorted((t.values[1], t.values[0]) for t in done if t.number in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="C3", label="Pareto front")
        ax.set(xlabel=spec.objectives[1], ylabel=spec.objectives[0], title="Pareto front")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        paths["pareto"] = out / f"{stem}_pareto.png"
        fig.savefig(paths["pareto"], dpi=120)
    return paths


def study_report(spec: StudySpec, sweep_dir: str | Path, *, wandb: bool = False) -> dict[str, Any]:
    """Write `study_<task>.md` and its plots into the sweep dir; returns the report's numbers."""
    from optuna.trial import TrialState

    sweep = Path(sweep_dir)
    study = open_study(spec)
    task = spec.name.rsplit(".", 1)[-1]
    jobs = _jobs_by_trial(sweep, task)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState}
    infeasible = sum("infeasible" in t.user_attrs for t in study.trials)
    ranking = rank_trials(done)
    top = [trials[0] for _, trials in ranking[:TOP_K]]
    stem = f"study_{task}"
    paths = _plots(study, spec, jobs, top, sweep, stem) if done else {}
    importances = _importances(study) if len(done) >= 2 else "n/a (fewer than two completed trials)"
    epochs = sum(len((r.get("metrics") or {}).get("per_epoch") or []) for r in jobs.values())
    md = [f"# Study `{spec.name}` ({spec.search}, pruner {spec.pruner})", "",
          f"Storage `{redact(spec.storage)}`; objectives {spec.objectives} ({', '.join(spec.directions)}); "
          f"{len(study.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in states.items() if n)
          + (f" ({infeasible} of the failed: designs the budget cannot build, rejected before training)"
             if infeasible else "") + f"; {epochs} evaluations trained in all.", ""]
    md += _ranking_md(spec, ranking, jobs) + _pruned_md(spec, study) + _pareto_md(spec, study)
    md += _importances_md(importances) + ["", *(f"![{k}]({p.name})" for k, p in paths.items()), ""]
    (sweep / f"{stem}.md").write_text("\n".join(md))
    summary = {"study": spec.name, "trials": len(study.trials), "states": states, "infeasible": infeasible,
               "evaluations": epochs, "best": None if not top else {
                   "trial": top[0].number, "trials": [t.number for t in ranking[0][1]],
                   "design_id": ranking[0][0].name, "values": list(top[0].values), "mean": ranking[0][0].mean},
               "importances": importances, "files": {k: str(p) for k, p in paths.items()}}
    results.write_json(sweep / f"{stem}.json", summary)
    if wandb:
        _log_wandb(summary, md, sweep)
    return summary


def _ranking_md(spec: StudySpec, ranking: Sequence[tuple[Standing, list[Any]]],
                jobs: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The best design and the top-k table, ranked by pdspace's rule (nothing without a completed trial)."""
    if not ranking:
        return []
    best, best_trials = ranking[0]
    md = [f"**Best design: `{best.name}`** ({spec.objectives[0]} {best.mean:.4f}"
          + (f", mean of {best.runs} trials" if best.runs > 1 else "")
          + f", trial {', '.join(str(t.number) for t in best_trials)})", "",
          f"Designs ranked by pdspace's rule ({RULE}); a design trained in several trials shows their means.",
          "", "| rank | trials | design | " + " | ".join(spec.objectives) + " | curve |",
          "|---|---|---|" + "---|" * len(spec.objectives) + "---|"]
    for i, (standing, trials) in enumerate(ranking[:TOP_K], 1):
        curve = " ".join(f"{v:.3f}" for v in results.curve(jobs.get(trials[0].number, {})))
        means = [sum(t.values[j] for t in trials) / len(trials) for j in range(len(spec.objectives))]
        md.append(f"| {i} | {', '.join(str(t.number) for t in trials)} | `{standing.name}` | "
                  + " | ".join(f"{v:.4g}" for v in means) + f" | {curve} |")
    return md + [""]


def _pruned_md(spec: StudySpec, study: Any) -> list[str]:
    """The pruned trials and the evaluation each stopped after (nothing when none was pruned)."""
    from optuna.trial import TrialState

    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    if not pruned:
        return []
    md = ["Pruned runs (stopped after evaluation k of at most " + str(spec.max_resource) + "):", "",
          "| trial | design | stopped after | last value |", "|---|---|---|---|"]
    for t in pruned:
        last = max(t.intermediate_values) if t.intermediate_values else 0
        value = f"{t.intermediate_values[last]:.4f}" if t.intermediate_values else "-"
        md.append(f"| {t.number} | `{t.user_attrs.get('design_id')}` | {last} | {value} |")
    return md + [""]


def _pareto_md(spec: StudySpec, study: Any) -> list[str]:
    """A multi-objective study's Pareto front (nothing for one objective)."""
    if not spec.multi_objective:
        return []
    md = ["Pareto front:", "", "| trial | design | " + " | ".join(spec.objectives) + " |",
          "|---|---|" + "---|" * len(spec.objectives)]
    for t in sorted(study.best_trials, key=lambda t: rank_key(1, t.values[0], 1, t.user_attrs.get("design_id"))):
        md.append(f"| {t.number} | `{t.user_attrs.get('design_id')}` | "
                  + " | ".join(f"{v:.4g}" for v in t.values) + " |")
    return md + [""]


def _importances_md(importances: Mapping[str, float] | str) -> list[str]:
    md = ["Parameter importances (fANOVA on the first objective, over the parameters every completed trial has; "
          "a strategy flag exists only where its group is tuned):", ""]
    if isinstance(importances, dict):
        return md + ["| parameter | importance |", "|---|---|",
                     *(f"| {k} | {v:.3f} |" for k, v in importances.items())]
    return md + [importances]


def write_study_reports(specs: Mapping[str, StudySpec], sweep_dir: str | Path, *, wandb: bool = False) -> None:
    """A report per study of a sweep; a failure is logged, never raised (the sweep's results stand)."""
    for spec in specs.values():
        if not spec.uses_study():
            continue
        try:
            summary = study_report(spec, sweep_dir, wandb=wandb)
            task = spec.name.rsplit(".", 1)[-1]
            log.info("study %s: best %s; report %s", spec.name, summary["best"], Path(sweep_dir) / f"study_{task}.md")
        except Exception as e:  # noqa: BLE001
            log.error("study report of %s failed: %s: %s", spec.name, type(e).__name__, e)


def _log_wandb(summary: Mapping[str, Any], md: list[str], sweep: Path) -> None:
    from pdspace.tracking import log_report

    def fill(run: Any, wandb: Any) -> None:
        run.log({f"study/{k}": wandb.Image(v) for k, v in summary["files"].items()})
        run.log({"study/report": wandb.Html("<pre>" + "\n".join(md) + "</pre>")})
        if summary["best"]:
            run.summary["best_design"] = summary["best"]["design_id"]

    log_report("study", f"study-{summary['study']}", fill, what="the study report", sweep=sweep,
               config={"study": summary["study"]})
