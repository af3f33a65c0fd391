"""The confirmation stage that ends every `pdspace-search` (every search of `pdspace.search.engine.SEARCHES`,
with or without a pruner).

A search's sweeps train each design once (one training seed), so a lucky run can decide. The stage
retrains the top `--confirm-k` designs of the sweeps (inside the final space, ranked by pdspace's one
rule, `pdspace.search.ordering`) and the uniform baselines at the same budget and settings (Adapter,
Prefix, LoRA, BitFit: uniform groups, uniform allocation, every group tuned, one letter in every
group; BitFit at its natural size; full fine-tuning with `--confirm-full-ft`) over the
`--confirm-seeds`. Each candidate and baseline is an experiment preset in `<dir>/conf/experiment/`
(`<name>_confirm_<i>.yaml`, `<name>_adapter.yaml`, ...; `method:` is its row label, `top1`,
`adapter`, ...) written by the same `preset()` as the found design's, so every setting of the
search's jobs is pinned in it, and one resumable `pdspace-train -m experiment=... seed=...` multirun
trains them in `<dir>/confirm-k<K>-seeds<S..>[-fullft]/` (a dir per confirmation setting, so that
other confirmation settings never touch the search's sweeps or another setting's jobs): the pdspace
sweeper skips completed jobs on a relaunch and refuses changed settings; a finished confirmation is
not launched again. The found design is the candidate (never a baseline) with the best mean over
the seeds (same rule); `<dir>/confirm_report.md` is the results table (`pdspace.report`) of the
candidates and baselines, mean ± std over the seeds (with the report's confidence intervals and
p-values where it computes them), under a line that tests the found design against the best baseline
(`versus_baseline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.design.space import UNIFORM_BASELINES, Design, scaled_grouping
from pdspace.search.engine import SearchError, SearchSpec, Setting, confirm_seeds, preset, run_multirun
from pdspace.search.ordering import Standing, rank_key, standings

log = logging.getLogger("pdspace.search")
CONFIRM_DIR = "confirm"
REPORT_FILE = "confirm_report.md"
FULL_FT = "full_finetune"


@dataclass(frozen=True)
class Entry:
    """One row of the confirmation: a candidate of the search or a baseline, and its experiment preset."""

    label: str
    preset: str
    kind: str  # "candidate" or "baseline"
    design: Design | None  # None: full fine-tuning (no design)


def confirm_dir(k: int, seeds: Sequence[int], full_ft: bool) -> str:
    """The confirmation's sweep dir name: one per setting, since its jobs are numbered (candidate, seed)."""
    return f"{CONFIRM_DIR}-k{k}-seeds{'-'.join(map(str, seeds))}" + ("-fullft" if full_ft else "")


def baseline_design(letter: str, num_layers: int, num_groups: int) -> Design:
    """A uniform baseline: near-equal groups, uniform allocation, every group tuned, `letter` in every group."""
    return Design(scaled_grouping((1,) * num_groups, num_layers), "uniform", None, (letter,) * num_groups)


def entries(top: Sequence[tuple[Design, Standing]], spec: SearchSpec,
            setting: Setting) -> tuple[list[Entry], dict[str, str]]:
    """The candidates and baselines to train, and the baselines the budget cannot build (label -> why)."""
    rows = [Entry(f"top{i}", f"{spec.name}_confirm_{i}", "candidate", d) for i, (d, _) in enumerate(top, 1)]
    skipped = {}
    for label, letter in UNIFORM_BASELINES.items():
        design = baseline_design(letter, setting.num_layers, setting.num_groups)
        # BitFit has no size to solve: it trains at its natural size whatever the budget
        why = None if letter == "B" or setting.check is None else setting.check(design)
        if why:
            skipped[label] = why
            log.warning("confirmation: baseline %s (%s) left out: %s", label, design, why)
            continue
        rows.append(Entry(label, f"{spec.name}_{label}", "baseline", design))
    if spec.confirm_full_ft:
        rows.append(Entry(FULL_FT, f"{spec.name}_{FULL_FT}", "baseline", None))
    return rows, skipped


def write_preset(entry: Entry, conf: Path, spec: SearchSpec, setting: Setting,
                 template: Design) -> tuple[list[str], str]:
    """Write an entry's experiment preset (the search's settings, its design pinned, `method:` its label);
    returns the overrides no preset can express (for the command line) and the preset's text."""
    # the seed here is the search's (the confirmation's command line sweeps `seed`), so every confirmation
    # setting writes the same preset
    body, rest = preset(entry.design or template, entry.label, spec.tasks[0], spec.seeds[0], spec.overrides,
                        setting.config_dir)
    header = [f"# {entry.kind} of the confirmation of pdspace-search ({spec.name})"]
    if entry.design is None:
        # full fine-tuning: no design is built, every backbone and head parameter trains
        for key in ("grouping", "allocation", "tunable", "strategy"):
            body.pop(key, None)
        body["peft"] = {**(body.get("peft") or {}), "full_finetune": True}
        body["budget_fraction"] = None
        header.append("# full fine-tuning")
    else:
        if set("".join(entry.design.strategies)) == {"B"}:
            body["budget_fraction"] = None  # BitFit alone: its natural size (the budget has nothing to size)
        header.append(f"# design {entry.design}")
    path = conf / "experiment" / f"{entry.preset}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(["# @package _global_", *header]) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body))
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return rest, text


def _key(c: Mapping[str, Any]) -> tuple:
    # pdspace's rule over a candidate's confirmation runs (mean None: no run, last)
    return rank_key(len(c["per_task"]), math.nan if c["mean"] is None else c["mean"], c["runs"], c["design_id"])


def _fmt(x: float) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _mean_std(c: Mapping[str, Any]) -> str:
    # one run has no spread: no "±"
    return _fmt(c["mean"]) + (f" ± {_fmt(c['std'])}" if c["std"] is not None else "")


def run_confirmation(top: Sequence[tuple[Design, Standing]], root: Path, spec: SearchSpec, setting: Setting,
                     previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) the confirmation, write its report; returns what search.json keeps of it.

    `previous`: what search.json kept of an earlier confirmation; when it ran the very same presets and
    command and every one of its runs is completed, nothing is launched (a finished stage is skipped)."""
    seeds = confirm_seeds(spec)
    sweep = root / confirm_dir(spec.confirm_k, seeds, spec.confirm_full_ft)
    rows, skipped = entries(top, spec, setting)
    found, unreadable, inputs = _train(rows, len(top), root / "conf", sweep, spec, setting, seeds, previous)
    by_label = {e.label: e for e in rows}
    points = []
    for r in found:
        value = results.objective(r)
        entry = by_label.get(str(r.get("method")))
        if value is not None and entry is not None:
            points.append((entry.label, str(r.get("task")), value))
    table = standings(points)
    search_stats = {f"top{i}": s for i, (_, s) in enumerate(top, 1)}
    candidates = {e.label: _numbers(e, table, search_stats) for e in rows if e.kind == "candidate"}
    baselines = {e.label: _numbers(e, table, search_stats) for e in rows if e.kind == "baseline"}
    # the same rule as everywhere, over the confirmation's runs, the design id as the last tie-break
    best = min(candidates.values(), key=_key)
    if not best["runs"]:
        raise SearchError(f"no candidate of the confirmation completed a run (see the result.json files under "
                          f"{sweep}); fix the cause and rerun the same command to resume")
    winner = best["label"]
    from pdspace import report as report_mod

    labels = {e.label for e in rows}
    # each result's `_path` leads the report to its predictions.npz (the paired bootstrap over examples)
    report = report_mod.build([r for r in found if str(r.get("method")) in labels], method_key="method",
                              unreadable=list(unreadable))
    versus = versus_baseline(report, winner, baselines)
    report_path = write_report(root / REPORT_FILE, report, rows, candidates, baselines, winner, seeds, spec,
                               skipped, versus)
    return {"sweep": str(sweep), "inputs": inputs, "seeds": seeds, "k": spec.confirm_k,
            "full_ft": bool(spec.confirm_full_ft), "candidates": candidates, "baselines": baselines,
            "skipped_baselines": skipped, "found": winner, "found_design": candidates[winner]["design_id"],
            "vs_baseline": versus, "report": str(report_path)}


def versus_baseline(report: Any, winner: str, baselines: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The found design against the best baseline (pdspace's rule over the confirmation's runs), as the results
    table tests a row against another: on the one task (paired t over the seeds both trained, and the paired
    bootstrap over examples where predictions allow) or, with several tasks, on the per-seed task average (paired
    t). None without a baseline that trained; `line` says it in words."""
    from pdspace.report import AVERAGE, compare
    from pdspace.stats import NOT_SIGNIFICANT, format_p

    trained = [b for b in baselines.values() if b["runs"]]
    index = {row.method: i for i, row in enumerate(report.rows)}
    if not trained or winner not in index:
        return None
    base = min(trained, key=_key)
    col = report.tasks[0] if len(report.tasks) == 1 else AVERAGE
    comp = compare(report, index[winner], index[base["label"]], col)
    where = f"on {col}" if col != AVERAGE else "on the task average"
    head = f"against the best baseline, {base['label']} ({where}, objective × 100): "
    if comp.p is None:
        diff = "no run on a shared seed" if comp.diff is None else f"{comp.diff:+.2f} over {comp.n} seed"
        line = head + f"{diff}: no test (it needs two seeds or more that both trained; give e.g. --confirm-seeds 0,1,2)"
    else:
        tests = f"paired t-test p = {format_p(comp.p_t)}" + (
            f", paired bootstrap p = {format_p(comp.p_boot)}" if comp.p_boot is not None else "")
        if comp.p < 0.05:
            verdict = f"the found design is significantly {'better' if comp.diff > 0 else 'worse'} at 0.05"
        else:
            verdict = NOT_SIGNIFICANT
        line = (head + f"{comp.diff:+.2f} over {comp.n} seeds, 95 % CI [{comp.ci_low:+.2f}, {comp.ci_high:+.2f}], "
                f"{tests}; {verdict}")
    return results.finite({"against": base["label"], "design_id": base["design_id"], "column": col, "n": comp.n,
                           "diff": comp.diff, "ci": [comp.ci_low, comp.ci_high], "p_t": comp.p_t,
                           "p_boot": comp.p_boot, "p": comp.p, "line": line})


def _train(rows: Sequence[Entry], n_candidates: int, conf: Path, sweep: Path, spec: SearchSpec, setting: Setting,
           seeds: Sequence[int], previous: Mapping[str, Any] | None
           ) -> tuple[list[dict[str, Any]], list[tuple[str, str]], str]:
    """Write the entries' presets and train them over the seeds, unless `previous` did exactly that to the end;
    returns the confirmation's results, its unreadable result files and the hash of its inputs."""
    template = next(e.design for e in rows if e.design is not None)
    rest: list[str] = []
    texts = []
    for entry in rows:
        rest, text = write_preset(entry, conf, spec, setting, template)
        texts.append(text)
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "--config-dir", str(conf),
           f"experiment={','.join(e.preset for e in rows)}", f"seed={','.join(map(str, seeds))}",
           *([f"task={','.join(spec.tasks)}"] if len(spec.tasks) > 1 else []), f"hydra.sweep.dir={sweep}",
           *setting.hydra_args(), *rest]
    inputs = hashlib.sha256(json.dumps([cmd[1:], texts]).encode()).hexdigest()[:16]
    want = {(e.label, s, t) for e in rows for s in seeds for t in spec.tasks}
    found, unreadable = results.read_all(results.sweep_paths(sweep)) if sweep.is_dir() else ([], [])
    have = {(r.get("method"), r.get("seed"), r.get("task")) for r in found if r.get("status") == "completed"}
    if previous and previous.get("inputs") == inputs and want <= have:
        log.info("confirmation done before: %s", sweep)
    else:
        run_multirun(f"confirmation ({n_candidates} candidates, {len(rows) - n_candidates} baselines, seeds "
                     f"{','.join(map(str, seeds))})", cmd, sweep)
        found, unreadable = results.read_all(results.sweep_paths(sweep))
    return found, unreadable, inputs


def _numbers(entry: Entry, table: Mapping[str, Standing], search_stats: Mapping[str, Standing]) -> dict[str, Any]:
    """An entry's numbers over the confirmation's runs (and a candidate's in the search), as search.json keeps
    them."""
    s = table.get(entry.label, Standing(entry.label))
    out = {"label": entry.label, "preset": entry.preset,
           "design_id": str(entry.design) if entry.design else "full", "mean": s.mean, "std": s.std,
           "runs": s.runs, "per_task": s.per_task}
    if entry.kind == "candidate":
        out["search"] = {"score": search_stats[entry.label].mean, "runs": search_stats[entry.label].runs,
                         "per_task": search_stats[entry.label].per_task}
    return results.finite(out)  # NaN (no run, or one run's std) as None, as search.json keeps it


def write_report(path: Path, report: Any, rows: Sequence[Entry], candidates: Mapping[str, Mapping[str, Any]],
                 baselines: Mapping[str, Mapping[str, Any]], winner: str, seeds: Sequence[int],
                 spec: SearchSpec, skipped: Mapping[str, str], versus: Mapping[str, Any] | None = None) -> Path:
    """confirm_report.md: the found design and its test against the best baseline, the ranking of the
    candidates, and the results table with the baselines (`report`, a `pdspace.report.Report`: mean ± std over
    the seeds and what significance it computes)."""
    from pdspace.report import md_row, to_markdown

    table = to_markdown(report)
    c = candidates[winner]
    md = [f"# Confirmation of pdspace-search `{spec.name}`", "",
          f"**Found design: `{c['design_id']}`** ({winner}: mean objective {_mean_std(c)} "
          f"over {c['runs']} runs, seeds {','.join(map(str, seeds))}; {_fmt(c['search']['score'])} over "
          f"{c['search']['runs']} runs in the search).", "",
          *([versus["line"][0].upper() + versus["line"][1:] + ".", ""] if versus else []),
          (f"The top {len(candidates)} designs" if len(candidates) > 1 else "The best design")
          + " of the search in its final space (by pdspace's rule: more tasks, higher mean, more runs, design id) "
          "and the uniform baselines at the same budget and settings, each trained over the same seeds; the found "
          "design is the candidate with the best mean here (same rule).", "",
          md_row(["rank", "method", "design", "search mean (runs)", "confirmation mean ± std (runs)"]),
          "|---|---|---|---|---|"]
    order = sorted(candidates.values(), key=_key)
    for i, c in enumerate(order, 1):
        md.append(md_row([str(i), c["label"] + (" (found)" if c["label"] == winner else ""), c["design_id"],
                          f"{_fmt(c['search']['score'])} ({c['search']['runs']})", f"{_mean_std(c)} ({c['runs']})"]))
    for b in baselines.values():
        md.append(md_row(["-", b["label"], b["design_id"], "-", f"{_mean_std(b)} ({b['runs']})"]))
    md += ["", "Results table (objective × 100):", "", table]
    if skipped:
        md += ["Baselines the budget cannot build (left out): "
               + "; ".join(f"{k}: {why}" for k, why in skipped.items()), ""]
    path.write_text("\n".join(md))
    return path
