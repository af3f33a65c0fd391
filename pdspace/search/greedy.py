"""The paper's greedy staged search S0 -> S1 -> S2 -> S3 -> S4 (`pdspace-search --search greedy`).

Each stage is a sweep (a `pdspace-train -m space=...` subprocess: a crash or kill never
takes the search down with it) plus a refinement that pins one dimension and writes the
next space into `<search dir>/conf/space/`; a stage's winner is the option that `pdspace-refine`
ranks first by pdspace's one ordering rule (`pdspace.search.ordering`: more tasks, higher mean,
more runs, then the name), the rule the search's final pick and its confirmation use.
Rerunning the same command skips finished stages and, inside a half-finished stage, every
completed job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.config import plain
from pdspace.design.space import parse_dimension, tunable_constraint
from pdspace.search.engine import SearchSpec, Setting, run_sweep, space_file
from pdspace.search.narrowing import write_space
from pdspace.search.plans import dimension_options
from pdspace.search.refine import refine

log = logging.getLogger("pdspace.search")


@dataclass(frozen=True)
class Stage:
    """One greedy step: study `dimension` and pin its winner."""

    key: str
    dimension: str
    # controlled: every option of the dimension is expanded on each sampled design (few options);
    # otherwise designs are sampled at random and grouped by their option (15 masks / 15 strategy sets)
    controlled: bool


def stages(num_groups: int = 4) -> tuple[Stage, ...]:
    """The paper's stages for G groups: grouping, allocation, tunable groups, then each group's strategies."""
    return (Stage("S1", "grouping", True), Stage("S2", "allocation", True), Stage("S3", "tunable", False),
            *(Stage(f"S4g{k}", f"strategy_g{k}", False) for k in range(1, num_groups + 1)))


STAGES = stages()


def run_stage(stage: Stage, source: str, conf: Path, sweep: Path, spec: SearchSpec, setting: Setting) -> None:
    """Sweep one stage's space (controlled stages split --samples over the dimension's options)."""
    samples = spec.samples
    if stage.controlled:
        letters = plain(OmegaConf.load(space_file(conf, source, setting.config_dir)).space).get("letters")
        samples = max(1, spec.samples // len(dimension_options(stage.dimension, setting.num_layers,
                                                               setting.num_groups, letters)))
    run_sweep(f"stage {stage.key} ({stage.dimension})", source, conf, sweep, spec, setting,
              [f"space.num_samples={samples}", f"space.controlled={stage.dimension if stage.controlled else 'null'}"])


def search_greedy(spec: SearchSpec, setting: Setting, root: Path, state: dict[str, Any],
                  state_path: Path) -> tuple[dict[str, Any], list[Path]]:
    """Run (or resume) every stage; returns the final space and the stages' sweep dirs."""
    conf = root / "conf"
    source = spec.space
    sweeps = []
    for stage in stages(setting.num_groups):
        name = f"{spec.name}_{stage.key}"
        sweep = root / stage.key
        if state["stages"].get(stage.key, {}).get("space") == name and (conf / "space" / f"{name}.yaml").exists():
            log.info("stage %s done before: %s", stage.key, state["stages"][stage.key]["winner"])
            source = name
            sweeps += [sweep] if state["stages"][stage.key]["sweep"] else []
            continue
        path = space_file(conf, source, setting.config_dir)
        untuned = _untuned_group(stage, path, setting.num_groups)
        if untuned:
            # the group's strategy cannot matter: carry the space over unchanged instead of training
            block = OmegaConf.to_container(OmegaConf.load(path).space, resolve=True)
            write_space({**block, "name": name}, conf / "space" / f"{name}.yaml",
                        provenance={"pdspace-search": f"stage {stage.key} skipped", "reason": untuned})
            winner = "-"
        else:
            run_stage(stage, source, conf, sweep, spec, setting)
            block = OmegaConf.to_container(OmegaConf.load(sweep / "multirun.yaml").space, resolve=True)
            winner = refine(sweep, stage.dimension, space=block, config_dir=conf, name=name, wandb=spec.wandb).winner
            sweeps.append(sweep)
        state["stages"][stage.key] = {"dimension": stage.dimension, "winner": winner, "space": name,
                                      "sweep": None if untuned else str(sweep)}
        results.write_json(state_path, state)
        source = name
    return plain(OmegaConf.load(space_file(conf, source, setting.config_dir)).space), sweeps


def _untuned_group(stage: Stage, space_file: Path, num_groups: int) -> str | None:
    """Why a strategy_gk stage has nothing to compare, reading the space file's tunable groups."""
    tunable = plain(OmegaConf.create({"t": OmegaConf.load(space_file).space.tunable})).get("t")
    return untuned_reason(stage, tunable, num_groups)


def untuned_reason(stage: Stage, tunable: Any, num_groups: int) -> str | None:
    """Why a strategy_gk stage has nothing to compare (group k untuned in every allowed mask), else None."""
    group = parse_dimension(stage.dimension)[1]
    if group is None:
        return None
    k = group - 1
    if any(mask[k] for mask in tunable_constraint(tunable, num_groups).enumerate()):
        return None
    return f"group {k + 1} is not tuned in this space (tunable: {tunable})"
