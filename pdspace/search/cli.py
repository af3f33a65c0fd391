"""`pdspace-search`: one entry point for every search strategy, resumable.

- `--strategy greedy` (default): the paper's staged search S0 -> S1 -> ... -> S4 (`pdspace.search.greedy`);
- `--strategy random|tpe|gp [--pruner successive_halving|hyperband] [--trials N]`: one sweep of the start
  space, designs drawn at random (today's plans) or proposed by an Optuna study (`pdspace.search.study`),
  weak ones stopped early by the pruner.

Every sweep runs as a `pdspace-train -m` subprocess (SIGINT/SIGTERM are passed on to it and waited
for); rerunning the same command resumes it. The search ends with a *concrete* design: the best
design it trained that lies in the final space (mean objective over its tasks), saved as the
experiment preset `<dir>/conf/experiment/<name>.yaml` with every setting the search's jobs ran with,
and printed as the `pdspace-train` command that trains exactly it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.config import PDSpaceError, one_line, plain
from pdspace.design.space import Design, DesignSpace

log = logging.getLogger("pdspace.search")
STATE_FILE = "search.json"
STRATEGIES = ("greedy", "random", "tpe", "gp")


class SearchError(PDSpaceError):
    """A search that cannot start or a stage that could not finish; the message says what to do."""


def _state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


@dataclass
class Setting:
    """What every job of the search runs with: the backbone's shape and the user's config dir."""

    num_layers: int
    num_groups: int
    config_dir: Path | None

    def hydra_args(self) -> list[str]:
        """Arguments that add the user's config dir to a job's search path."""
        return [f"hydra.searchpath=[file://{self.config_dir}]"] if self.config_dir else []


def _popen_forwarding(cmd: list[str]) -> int:
    """Run `cmd`, passing SIGINT/SIGTERM on to it and waiting for it, so a killed search leaves no orphan."""
    proc = subprocess.Popen(cmd)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        name = signal.Signals(received[0]).name
        raise SearchError(f"interrupted by {name}; the stage was stopped and its finished jobs are kept; rerun the "
                          "same command to resume")
    return code


def run_sweep(label: str, source: str, conf: Path, sweep: Path, args: argparse.Namespace, overrides: list[str],
              setting: Setting, extra: Sequence[str]) -> None:
    """Sweep space `source` in a subprocess (resuming whatever it finished before); `extra` sets the space's keys."""
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "--config-dir", str(conf), f"space={source}", *extra,
           f"space.tasks=[{','.join(args.tasks)}]", f"space.seeds=[{','.join(map(str, args.seeds))}]",
           # the sweep's own config composes with the first task, so task-specific keys (task.synthetic_size) exist
           f"space.seed={args.seed}", f"hydra.sweep.dir={sweep}", f"task={args.tasks[0]}", *setting.hydra_args(),
           *overrides]
    log.info("%s: %s", label, " ".join(cmd[2:]))
    code = _popen_forwarding(cmd)
    if code != 0:
        raise SearchError(f"{label} ended with exit code {code}; its finished jobs are kept in {sweep}; fix the "
                          "cause and rerun the same command to resume")


def check_args(args: argparse.Namespace, overrides: list[str], conf: Path) -> Setting:
    """Refuse bad input before anything is launched; the backbone's layer and group counts."""
    from pdspace.data.tasks import DataError, get_task

    if args.samples < 1:
        raise SearchError(f"--samples {args.samples} trains nothing; give a positive number, e.g. --samples 20")
    for task in args.tasks:
        try:
            get_task(task)
        except DataError as e:
            raise SearchError(f"--tasks: {e}") from None
    config_dir = Path(args.config_dir).resolve() if args.config_dir else None
    if config_dir and not config_dir.is_dir():
        raise SearchError(f"--config-dir {config_dir} is not a directory")
    space_file(conf, args.space, config_dir)  # exists?
    cfg = compose([f"task={args.tasks[0]}", *overrides], config_dir)
    from pdspace.search.plans import budget_check

    num_layers, _ = budget_check(cfg.backbone, cfg.budget_fraction, cfg.get("peft"))
    return Setting(num_layers, int(cfg.num_groups), config_dir)


def compose(overrides: Sequence[str], config_dir: Path | None = None) -> Any:
    """The config the search's jobs compose (without the space), for its layer count and checks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdspace.config import check_config
    from pdspace.config import CONF_DIR

    GlobalHydra.instance().clear()
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("train", overrides=[*[o for o in overrides if not o.startswith("hydra.")], *extra])
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
    return cfg


def space_file(conf: Path, name: str, config_dir: Path | None = None) -> Path:
    from pdspace.config import CONF_DIR

    dirs = [conf, *([config_dir] if config_dir else []), CONF_DIR]
    for d in dirs:
        path = d / "space" / f"{name}.yaml"
        if path.exists():
            return path
    known = sorted({p.stem for d in dirs for p in (d / "space").glob("*.yaml")})
    raise SearchError(f"unknown space {name!r}; known: {', '.join(known)} (add yours with --config-dir DIR, as "
                      "DIR/space/NAME.yaml)")


def best_design(found: Sequence[Mapping[str, Any]], space: DesignSpace) -> tuple[Design, dict[str, Any]]:
    """The best completed design inside `space`: highest mean over tasks of its per-task mean objective.

    Designs with results on more tasks come first (a design seen on one task does not beat one
    measured on all); ties go to more runs, then to the design id.
    """
    per: dict[Design, dict[str, list[float]]] = {}
    for r in found:
        value = results.objective(r)
        if value is None or not r.get("design"):
            continue
        design = Design.from_dict(r["design"])
        if space.contains(design):
            per.setdefault(design, {}).setdefault(str(r.get("task")), []).append(value)
    if not per:
        raise SearchError("no completed run of the search lies in its final space; rerun the search to resume it")

    def key(item: tuple[Design, dict[str, list[float]]]) -> tuple:
        design, tasks = item
        score = statistics.fmean(statistics.fmean(v) for v in tasks.values())
        return (-len(tasks), -score, -sum(map(len, tasks.values())), str(design))

    design, tasks = min(per.items(), key=key)
    return design, {"score": statistics.fmean(statistics.fmean(v) for v in tasks.values()),
                    "per_task": {t: statistics.fmean(v) for t, v in tasks.items()},
                    "runs": sum(map(len, tasks.values()))}


def _config_groups(config_dir: Path | None) -> set[str]:
    from pdspace.config import CONF_DIR

    return {p.name for d in (CONF_DIR, config_dir) if d for p in d.iterdir() if p.is_dir() and p.name != "hydra"}


def preset(design: Design, name: str, task: str, seed: int, overrides: Sequence[str],
           config_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """An experiment preset (`@package _global_`) that pins `design` on the search's setting, and the
    overrides that no preset can express (kept for the command line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = _config_groups(config_dir)
    defaults: list[Any] = [{"override /task": task}]
    values: dict[str, Any] = {"seed": seed}
    rest: list[str] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete() or key == "experiment" or override.package:
            rest.append(override.input_line)
        elif key in groups and "." not in key:
            defaults.append({f"override /{key}": override.value()})
        else:
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = override.value()
    values.update({
        "method": name,
        "grouping": {"choice": list(design.groups)},
        "allocation": {"choice": design.allocation},
        "tunable": {"choice": "".join("1" if t else "0" for t in design.tunable)},
        # an untuned group's strategies do not matter: 'any' keeps the design legal and the same
        "strategy": {"choice": [s or "any" for s in design.strategies]},
    })
    return {"defaults": defaults, **values}, rest


def finish(final: Mapping[str, Any], sweeps: Sequence[Path], conf: Path, args: argparse.Namespace,
           overrides: list[str], setting: Setting) -> dict[str, Any]:
    """Pick the found design, write its preset and return the command that trains exactly it."""
    found = []
    for sweep in sweeps:
        found += results.read_all(results.sweep_paths(sweep))[0]
    space = DesignSpace(setting.num_layers, setting.num_groups, grouping=final.get("grouping", "any"),
                        allocation=final.get("allocation", "any"), tunable=final.get("tunable", "any"),
                        strategies=final.get("strategy", "any"))
    design, stats = best_design(found, space)
    body, rest = preset(design, args.name, args.tasks[0], args.seeds[0], overrides, setting.config_dir)
    path = conf / "experiment" / f"{args.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["# @package _global_", f"# found by pdspace-search ({args.name}): {design}",
              f"# mean objective {stats['score']:.4f} over {stats['runs']} runs in the search "
              f"({', '.join(f'{t}={v:.4f}' for t, v in stats['per_task'].items())})"]
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body)))
    words = ["pdspace-train"] + (["-m"] if len(args.tasks) > 1 or len(args.seeds) > 1 else [])
    words += ["--config-dir", str(conf), f"experiment={args.name}", *setting.hydra_args(), *rest]
    if len(args.tasks) > 1:
        words.append(f"task={','.join(args.tasks)}")
    if len(args.seeds) > 1:
        words.append(f"seed={','.join(map(str, args.seeds))}")
    return {"design_id": str(design), "design": design.to_dict(), **stats, "preset": str(path),
            "command": shlex.join(words)}


def search(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) the search; returns its state (for greedy the stages; the found design, preset, command)."""
    root = Path(args.dir).resolve()
    conf = root / "conf"
    (conf / "space").mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"stages": {}}
    setting = check_args(args, overrides, conf)
    settings = {"strategy": args.strategy, "space": args.space, "tasks": args.tasks, "seeds": args.seeds,
                "samples": args.samples, "seed": args.seed, "name": args.name, "overrides": overrides,
                "config_dir": str(setting.config_dir) if setting.config_dir else None}
    if args.strategy != "greedy":
        settings.update(pruner=args.pruner, trials=args.trials)
    old = {"config_dir": None, "strategy": "greedy", **state.get("settings", settings)}
    if old != settings:
        raise SearchError(f"{state_path} was started with other settings {state['settings']}; rerun with those to "
                          "resume, or choose a new --dir")
    state["settings"] = settings
    if args.strategy == "greedy":
        from pdspace.search.greedy import search_greedy

        final, sweeps = search_greedy(args, overrides, setting, root, state, state_path)
    else:
        sweep = root / args.strategy
        trials = args.trials or args.samples
        run_sweep(f"{args.strategy} search", args.space, conf, sweep, args, overrides, setting,
                  [f"space.search={args.strategy}", f"space.pruner={args.pruner}", f"space.trials={trials}",
                   f"space.num_samples={trials}", "space.controlled=null"])
        final = plain(OmegaConf.load(space_file(conf, args.space, setting.config_dir)).space)
        sweeps = [sweep]
    state["final_space"] = {k: final.get(k) for k in ("grouping", "allocation", "tunable", "strategy")}
    state["final"] = finish(final, sweeps, conf, args, overrides, setting)
    results.write_json(state_path, state)
    return state


def main(argv: list[str] | None = None) -> None:
    """Console script `pdspace-search`."""
    p = argparse.ArgumentParser(prog="pdspace-search", description=__doc__.splitlines()[0],
                                epilog="Extra KEY=VALUE arguments go to every pdspace-train job "
                                       "(e.g. backbone=minilm trainer.max_epochs=1 task.max_train_samples=2000).")
    p.add_argument("--dir", default="multirun/search", help="search dir (sweeps, spaces, state); reuse to resume")
    p.add_argument("--name", default="found", help="prefix of the spaces and configs the search writes")
    p.add_argument("--space", default="S0", help="the starting space (a space/NAME.yaml of the config dirs)")
    p.add_argument("--config-dir", default=None, help="your config dir (spaces, presets, backbones), searched "
                                                     "before the packaged one")
    p.add_argument("--strategy", default="greedy", choices=STRATEGIES,
                   help="greedy: the paper's stages S0->S4; random/tpe/gp: one sweep of --trials designs")
    p.add_argument("--pruner", default="none", choices=("none", "successive_halving", "hyperband"),
                   help="stop weak designs early (random/tpe/gp)")
    p.add_argument("--trials", default=None, type=int, help="designs a random/tpe/gp search trains (default: "
                                                             "--samples)")
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
    from pdspace.tracking import quiet

    quiet()
    try:
        state = search(args, overrides)
    except Exception as e:  # noqa: BLE001 - user errors as one line; anything else keeps its traceback
        line = one_line(e) or (str(e) if isinstance(e, ValueError) else None)
        if line is None:
            raise
        sys.exit(f"pdspace-search: error: {line}")
    final = state["final"]
    print(f"found design: {final['design_id']} (mean objective {final['score']:.4f} over {final['runs']} runs)")
    print(f"preset: {final['preset']}")
    print("train it with:\n  " + final["command"])


if __name__ == "__main__":
    main()
