"""`pdspace-search`: the paper's greedy staged search S0 -> S1 -> S2 -> S3 -> S4, resumable.

Each stage is a sweep (a `pdspace-train -m space=...` subprocess: a crash or kill never
takes the search down with it) plus a refinement that pins one dimension and writes the
next space into `<search dir>/conf/space/`. Rerunning the same command skips finished
stages and, inside a half-finished stage, every completed job.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace.sweep import dimension_options

log = logging.getLogger("pdspace.search")
STATE_FILE = "search.json"


@dataclass(frozen=True)
class Stage:
    """One greedy step: study `dimension` and pin its winner."""

    key: str
    dimension: str
    # controlled: every option of the dimension is expanded on each sampled design (few options);
    # otherwise designs are sampled at random and grouped by their option (15 masks / 15 strategy sets)
    controlled: bool


STAGES = (Stage("S1", "grouping", True), Stage("S2", "allocation", True), Stage("S3", "tunable", False),
          *(Stage(f"S4g{k}", f"strategy_g{k}", False) for k in range(1, 5)))


class SearchError(RuntimeError):
    """A stage that could not finish; the message says how to resume."""


def _state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def run_stage(stage: Stage, source: str, conf: Path, sweep: Path, args: argparse.Namespace,
              overrides: list[str], num_layers: int) -> None:
    """Sweep one stage's space in a subprocess (resuming whatever it finished before)."""
    samples = args.samples
    if stage.controlled:
        samples = max(1, args.samples // len(dimension_options(stage.dimension, num_layers)))
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "--config-dir", str(conf), f"space={source}",
           f"space.num_samples={samples}", f"space.controlled={stage.dimension if stage.controlled else 'null'}",
           f"space.tasks=[{','.join(args.tasks)}]", f"space.seeds=[{','.join(map(str, args.seeds))}]",
           f"space.seed={args.seed}", f"hydra.sweep.dir={sweep}", *overrides]
    log.info("stage %s (%s): %s", stage.key, stage.dimension, " ".join(cmd[2:]))
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SearchError(f"stage {stage.key} ({stage.dimension}) ended with exit code {proc.returncode}; its "
                          f"finished jobs are kept in {sweep}; fix the cause and rerun the same command to resume")


def search(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) every stage; returns the final state (winners, final space, command)."""
    from pdspace.refine import refine, write_space

    root = Path(args.dir).resolve()
    conf = root / "conf"
    (conf / "space").mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    state = _state(state_path)
    settings = {"space": args.space, "tasks": args.tasks, "seeds": args.seeds, "samples": args.samples,
                "seed": args.seed, "name": args.name, "overrides": overrides}
    if state.get("settings", settings) != settings:
        raise SearchError(f"{state_path} was started with other settings {state['settings']}; rerun with those to "
                          "resume, or choose a new --dir")
    state["settings"] = settings
    num_layers = _num_layers(overrides)
    source = args.space
    for stage in STAGES:
        name = f"{args.name}_{stage.key}"
        sweep = root / stage.key
        if state["stages"].get(stage.key, {}).get("space") == name and (conf / "space" / f"{name}.yaml").exists():
            log.info("stage %s done before: %s", stage.key, state["stages"][stage.key]["winner"])
            source = name
            continue
        untuned = _untuned_group(stage, _space_file(conf, source))
        if untuned:
            # the group's strategy cannot matter: carry the space over unchanged instead of training
            block = OmegaConf.to_container(OmegaConf.load(_space_file(conf, source)).space, resolve=True)
            write_space({**block, "name": name}, conf / "space" / f"{name}.yaml",
                        provenance={"pdspace-search": f"stage {stage.key} skipped", "reason": untuned})
            winner = "-"
        else:
            run_stage(stage, source, conf, sweep, args, overrides, num_layers)
            block = OmegaConf.to_container(OmegaConf.load(sweep / "multirun.yaml").space, resolve=True)
            winner = refine(sweep, stage.dimension, space=block, config_dir=conf, name=name, wandb=args.wandb).winner
        state["stages"][stage.key] = {"dimension": stage.dimension, "winner": winner, "space": name,
                                      "sweep": None if untuned else str(sweep)}
        _save_state(state_path, state)
        source = name
    final = OmegaConf.load(_space_file(conf, source)).space
    state["final"] = _write_final(final, conf, args.name)
    _save_state(state_path, state)
    return state


def _space_file(conf: Path, name: str) -> Path:
    from pdspace.train import CONF_DIR

    local = conf / "space" / f"{name}.yaml"
    return local if local.exists() else CONF_DIR / "space" / f"{name}.yaml"


def _untuned_group(stage: Stage, space_file: Path) -> str | None:
    """Why a strategy_gk stage has nothing to compare (group k untuned in every allowed mask), else None."""
    if not stage.dimension.startswith("strategy_g"):
        return None
    from pdspace.design.space import tunable_constraint

    k = int(stage.dimension[10:]) - 1
    tunable = OmegaConf.to_container(OmegaConf.create({"t": OmegaConf.load(space_file).space.tunable})).get("t")
    if any(mask[k] for mask in tunable_constraint(tunable).enumerate()):
        return None
    return f"group {k + 1} is not tuned in this space (tunable: {tunable})"


def _num_layers(overrides: list[str]) -> int:
    """Layer count of the backbone the jobs will compose (the controlled stages need it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdspace.backbones import backbone_layers
    from pdspace.train import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])
    GlobalHydra.instance().clear()
    return backbone_layers(cfg.backbone)


def _write_final(space: Any, conf: Path, name: str) -> dict[str, Any]:
    """Save the found design as grouping/<name>.yaml + strategy/<name>.yaml; return the command that uses it."""
    strategy = OmegaConf.to_container(space.strategy, resolve=True) if OmegaConf.is_config(space.strategy) \
        else space.strategy
    for group, value, what in (("grouping", space.grouping, "grouping"), ("strategy", strategy, "strategies")):
        (conf / group).mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create({"choice": value}))
        (conf / group / f"{name}.yaml").write_text(f"# {what} found by pdspace-search ({name})\n{text}")
    tunable = str(space.tunable)
    tune = "tunable=all" if tunable in ("all", "1" * len(tunable)) else f"tunable.choice='{tunable}'"
    command = (f"pdspace-train --config-dir {conf} grouping={name} strategy={name} "
               f"allocation={space.allocation} {tune}")
    return {"grouping": OmegaConf.to_container(space.grouping) if OmegaConf.is_config(space.grouping)
            else space.grouping, "allocation": space.allocation, "tunable": tunable, "strategy": strategy,
            "command": command}


def main(argv: list[str] | None = None) -> None:
    """Console script `pdspace-search`."""
    p = argparse.ArgumentParser(prog="pdspace-search", description=__doc__.splitlines()[0],
                                epilog="Extra KEY=VALUE arguments go to every pdspace-train job "
                                       "(e.g. backbone=minilm trainer.max_epochs=1 task.max_train_samples=2000).")
    p.add_argument("--dir", default="multirun/search", help="search dir (sweeps, spaces, state); reuse to resume")
    p.add_argument("--name", default="found", help="prefix of the spaces and configs the search writes")
    p.add_argument("--space", default="S0", help="the starting space (a conf/space file)")
    p.add_argument("--tasks", default="sst2", type=lambda s: s.split(","), help="comma-separated tasks")
    p.add_argument("--seeds", default=[0], type=lambda s: [int(x) for x in s.split(",")], help="training seeds")
    p.add_argument("--samples", default=20, type=int, help="designs per stage (controlled: split over options)")
    p.add_argument("--seed", default=0, type=int, help="sampling seed")
    p.add_argument("--wandb", action="store_true", help="log each refinement report to W&B")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognised arguments {bad}; pass job overrides as KEY=VALUE")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        state = search(args, overrides)
    except (SearchError, ValueError) as e:
        sys.exit(f"pdspace-search: error: {e}")
    print("found design space:", {k: v for k, v in state["final"].items() if k != "command"})
    print("train it with:\n  " + state["final"]["command"])


if __name__ == "__main__":
    main()
