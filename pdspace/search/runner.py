"""One search from start (or resume) to its found design: `search(SearchSpec(...))`, what `pdspace-search` runs.

The search's sweeps (the greedy stages, `pdspace.search.greedy`, or one sweep of a random/tpe/gp/de study),
then its confirmation (`pdspace.search.confirm`) of the top designs in the final space, then the found
design's preset and command (`pdspace.search.engine.finish`); `<dir>/search.json` keeps the state after
every step, so the same spec again resumes where it stopped and trains no completed job twice.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.config import plain
from pdspace.design.space import Design
from pdspace.search.confirm import run_confirmation
from pdspace.search.engine import (
    STATE_FILE,
    SearchError,
    SearchSpec,
    Setting,
    check_spec,
    design_stats,
    evaluations,
    final_space,
    finish,
    load_state,
    ranked_designs,
    run_sweep,
    space_file,
)
from pdspace.search.greedy import search_greedy
from pdspace.search.ordering import Standing

log = logging.getLogger("pdspace.search")


def search(spec: SearchSpec) -> dict[str, Any]:
    """Run (or resume) the search and its confirmation; returns its state (for greedy the stages; the
    confirmation; the found design, preset, command; the compute)."""
    root = Path(spec.dir).resolve()
    conf = root / "conf"
    state_path = root / STATE_FILE
    state = load_state(state_path)
    setting = check_spec(spec, conf)
    (conf / "space").mkdir(parents=True, exist_ok=True)
    state["settings"] = _settings(spec, setting, state, state_path)
    if spec.search == "greedy":
        final, sweeps = search_greedy(spec, setting, root, state, state_path)
    else:
        final, sweeps = search_sweep(spec, setting, root, state, state_path)
    state["final_space"] = {k: final.get(k) for k in ("grouping", "allocation", "tunable", "strategy")}
    if final.get("letters"):
        state["final_space"]["letters"] = final["letters"]
    found = []
    for sweep in sweeps:
        found += results.read_all(results.sweep_paths(sweep))[0]
    top = ranked_designs(found, final_space(final, setting))
    if not top:
        raise SearchError("no completed run of the search lies in its final space; rerun the search to resume it")
    confirm_dirs = _decide(top, spec, setting, root, state, state_path)
    total, confirm_epochs = evaluations(sweeps), evaluations(confirm_dirs)
    state["compute"] = {"epochs": total + confirm_epochs, "confirm_epochs": confirm_epochs,
                        "search_epochs": total}
    results.write_json(state_path, state)
    return state


def _settings(spec: SearchSpec, setting: Setting, state: dict[str, Any], state_path: Path) -> dict[str, Any]:
    """The search's settings as search.json keeps them; a SearchError when the dir was started with others.

    The search is stored under `strategy` (its name when the dir format was set), so older dirs resume."""
    settings = {"strategy": spec.search, "space": spec.space, "tasks": list(spec.tasks), "seeds": list(spec.seeds),
                "samples": spec.samples, "seed": spec.seed, "name": spec.name, "overrides": list(spec.overrides),
                "config_dir": str(setting.config_dir) if setting.config_dir else None}
    if spec.search != "greedy":
        settings.update(pruner=spec.pruner, trials=spec.trials)
    # the confirmation's settings are no search settings: changing them retrains only the confirmation
    # (in a sweep dir of its own per setting), never the search's sweeps
    old = {"config_dir": None, "strategy": "greedy", **state.get("settings", settings)}
    if old != settings:
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        then = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={settings.get(k)!r}" for k in changed)
        raise SearchError(f"{state_path} was started with other settings ({then}; now {now}); rerun with those to "
                          "resume, or choose a new --dir")
    return settings


def search_sweep(spec: SearchSpec, setting: Setting, root: Path, state: dict[str, Any],
                 state_path: Path) -> tuple[dict[str, Any], list[Path]]:
    """A random/tpe/gp/de search: one sweep of the start space (`--trials` designs, the pruner stopping weak ones
    early), resumed or skipped when done; returns its final space (the start space) and its sweep dir."""
    conf = root / "conf"
    sweep = root / spec.search
    if (state["stages"].get(spec.search) or {}).get("done") and sweep.is_dir():
        # finished before (like a greedy stage): a rerun goes straight on to the confirmation
        log.info("%s search done before: %s", spec.search, sweep)
    else:
        trials = spec.trials if spec.trials is not None else spec.samples
        run_sweep(f"{spec.search} search", spec.space, conf, sweep, spec, setting,
                  [f"space.search={spec.search}", f"space.pruner={spec.pruner}", f"space.trials={trials}",
                   f"space.num_samples={trials}", "space.controlled=null"])
        # done only without a failed job: a rerun retries those (the sweeper skips the completed ones)
        statuses = {r.get("status") for r in results.read_all(results.sweep_paths(sweep))[0]}
        state["stages"][spec.search] = {"sweep": str(sweep), "done": statuses <= {"completed", "pruned"}}
        results.write_json(state_path, state)
    return plain(OmegaConf.load(space_file(conf, spec.space, setting.config_dir)).space), [sweep]


def _decide(top: Sequence[tuple[Design, Standing]], spec: SearchSpec, setting: Setting, root: Path,
            state: dict[str, Any], state_path: Path) -> list[Path]:
    """The found design: the confirmation's winner among the top `confirm_k` (the search's best without it),
    written as state["final"]; returns the confirmation's sweep dirs."""
    conf = root / "conf"
    if spec.confirm_k <= 0:
        state.pop("confirm", None)
        design, standing = top[0]
        state["final"] = finish(design, design_stats(standing), conf, spec, setting)
        return []
    state["confirm"] = c = run_confirmation(top[:spec.confirm_k], root, spec, setting, previous=state.get("confirm"))
    results.write_json(state_path, state)
    chosen = c["candidates"][c["found"]]
    design, standing = next((d, s) for d, s in top if str(d) == chosen["design_id"])
    confirmed = {"score": chosen["mean"], "std": chosen["std"], "runs": chosen["runs"],
                 "per_task": chosen["per_task"], "seeds": c["seeds"], "candidates": len(c["candidates"]),
                 "report": c["report"], "label": c["found"], "vs_baseline": c.get("vs_baseline")}
    state["final"] = finish(design, design_stats(standing), conf, spec, setting, confirmed=confirmed)
    return [Path(c["sweep"])]
