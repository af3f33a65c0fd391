"""The search engine's primitives, shared by every search (greedy, random, tpe, gp, de) and its confirmation.

The search side of pdspace, bottom up (each module imports only those above it in this list):

- `pdspace.search.ordering` (the one rule of "best"), `pdspace.search.plans` (a sweep's designs),
  `pdspace.search.study` (Optuna studies);
- `pdspace.search.engine` (this module): what a search is given (`SearchSpec`, plain fields, no argparse),
  its checks, the backbone's shape (`Setting`), the one list of searches (`SEARCHES`), running a sweep as a
  `pdspace-train -m` subprocess (signals forwarded, no orphans), ranking the completed designs of a final
  space, and the found design's experiment preset and command (`finish`);
- refinement, `pdspace-refine`: `pdspace.search.analysis` (an option's statistics, the winner),
  `pdspace.search.narrowing` (the narrowed space), `pdspace.search.refine_report` (its report), run by
  `pdspace.search.refine`;
- `pdspace.search.greedy`: the paper's staged search S0 -> S4 (each stage refined by `pdspace.search.refine`);
- `pdspace.search.confirm`: the confirmation stage that retrains the top designs and the baselines;
- `pdspace.search.runner`: one search from start (or resume) to the found design: `search(spec)`;
- `pdspace.search.cli`: `pdspace-search`, the command line of `runner.search`.

(`pdspace.search.sweeps` and `study_report` are the sweeper's side: a multirun's jobs and a study's report.)

A search's stored state is `<dir>/search.json` (`STATE_FILE`); its settings keep the search under the key
`strategy`, as searches started before this layout stored it, so those resume.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.config import PDSpaceError
from pdspace.design.space import Design, DesignSpace
from pdspace.search import study
from pdspace.search.ordering import Standing, ranked, standings

log = logging.getLogger("pdspace.search")
STATE_FILE = "search.json"
# the one list of searches: the greedy stages, and the one-sweep searches of a study (random plans, TPE, GP)
SEARCHES = ("greedy", *study.SEARCHES)
PRUNERS = study.PRUNERS


class SearchError(PDSpaceError):
    """A search that cannot start or a stage that could not finish; the message says what to do."""


class SearchInterrupted(SearchError):
    """SIGINT or SIGTERM stopped the search (and its stage); the console script exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the stage was stopped and its finished jobs "
                         "are kept; rerun the same command to resume")
        self.signum = signum


@dataclass
class SearchSpec:
    """What one search is asked to do, as plain values (the flags of `pdspace-search`, same names and defaults).

    `search`: one of `SEARCHES`; `pruner`, `trials`: a one-sweep search's (random/tpe/gp/de); `samples`: designs per
    greedy stage (and a one-sweep search's trials when `trials` is None); `confirm_seeds`: a list of seeds or
    their comma-separated text; `overrides`: KEY=VALUE arguments every `pdspace-train` job gets."""

    dir: str | Path = "multirun/search"
    name: str = "found"
    space: str = "S0"
    config_dir: str | Path | None = None
    # the default: random search, which no strategy beat in the replay of design table v2 (README)
    search: str = "random"
    pruner: str = "none"
    trials: int | None = None
    tasks: Sequence[str] = field(default_factory=lambda: ["sst2"])
    seeds: Sequence[int] = field(default_factory=lambda: [0])
    samples: int = 20
    seed: int = 0
    wandb: bool = False
    confirm_k: int = 3
    confirm_seeds: str | Sequence[int] = (0, 1, 2)
    confirm_full_ft: bool = False
    overrides: Sequence[str] = field(default_factory=list)


@dataclass
class Setting:
    """What every job of the search runs with: the backbone's shape, the user's config dir, and the budget
    check (`check(design)`: why the budget cannot build `design`, None when it can)."""

    num_layers: int
    num_groups: int
    config_dir: Path | None
    check: Callable[[Design], str | None] | None = None

    def hydra_args(self) -> list[str]:
        """Arguments that add the user's config dir to a job's search path."""
        return [f"hydra.searchpath=[file://{self.config_dir}]"] if self.config_dir else []


def load_state(path: Path) -> dict[str, Any]:
    """A search's state (search.json), or the empty state of a new search."""
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


# ------------------------------------------------------------------------------------- running sweeps


def _stage_preexec() -> None:
    # in the child, before exec: its own process group (a signal to the search's group is forwarded once, not
    # delivered twice), and on Linux SIGTERM from the kernel when the search dies, even by SIGKILL, so a stage
    # never outlives its search. Other systems have no parent-death signal: there only a SIGKILL of the search
    # itself can leave its stage running (SIGINT and SIGTERM are forwarded and waited for).
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the search died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _popen_forwarding(cmd: list[str]) -> int:
    """Run `cmd` in its own process group, passing SIGINT/SIGTERM on to it and waiting for it, and (Linux) ended
    by the kernel if the search dies: a killed search leaves no orphan."""
    proc = subprocess.Popen(cmd, preexec_fn=_stage_preexec)
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
        raise SearchInterrupted(received[0])
    return code


def run_sweep(label: str, source: str, conf: Path, sweep: Path, spec: SearchSpec, setting: Setting,
              extra: Sequence[str]) -> None:
    """Sweep space `source` in a subprocess (resuming whatever it finished before); `extra` sets the space's keys."""
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "--config-dir", str(conf), f"space={source}", *extra,
           f"space.tasks=[{','.join(spec.tasks)}]", f"space.seeds=[{','.join(map(str, spec.seeds))}]",
           # the sweep's own config composes with the first task, so task-specific keys (task.synthetic_size) exist
           f"space.seed={spec.seed}", f"hydra.sweep.dir={sweep}", f"task={spec.tasks[0]}", *setting.hydra_args(),
           *spec.overrides]
    run_multirun(label, cmd, sweep)


def run_multirun(label: str, cmd: list[str], sweep: Path) -> None:
    """Run one `pdspace-train -m` command line; a non-zero exit is a SearchError that says how to resume."""
    log.info("%s: %s", label, " ".join(cmd[2:]))
    code = _popen_forwarding(cmd)
    if code != 0:
        raise SearchError(f"{label} ended with exit code {code}; its finished jobs are kept in {sweep}; fix the "
                          "cause and rerun the same command to resume")


# ------------------------------------------------------------------------------------- checks and config


def check_spec(spec: SearchSpec, conf: Path) -> Setting:
    """Refuse bad input before anything is launched; the backbone's layer and group counts."""
    from pdspace.data.tasks import DataError, get_task
    from pdspace.search.plans import budget_check

    if spec.search not in SEARCHES:
        raise SearchError(f"unknown search {spec.search!r}; use one of {', '.join(SEARCHES)}")
    if spec.pruner not in PRUNERS:
        raise SearchError(f"unknown pruner {spec.pruner!r}; use one of {', '.join(PRUNERS)}")
    if spec.samples < 1:
        raise SearchError(f"--samples {spec.samples} trains nothing; give a positive number, e.g. --samples 20")
    if spec.trials is not None and spec.trials < 1:
        raise SearchError(f"--trials {spec.trials} trains nothing; give a positive number, e.g. --trials 20")
    if spec.confirm_k < 0:
        raise SearchError(f"--confirm-k {spec.confirm_k} is negative; give the number of designs to confirm, "
                          "e.g. --confirm-k 3, or --confirm-k 0 to skip the confirmation")
    confirm_seeds(spec)
    for task in spec.tasks:
        try:
            get_task(task)
        except DataError as e:
            raise SearchError(f"--tasks: {e}") from None
    config_dir = Path(spec.config_dir).resolve() if spec.config_dir else None
    if config_dir and not config_dir.is_dir():
        raise SearchError(f"--config-dir {config_dir} is not a directory")
    space_file(conf, spec.space, config_dir)  # exists?
    cfg = compose([f"task={spec.tasks[0]}", *spec.overrides], config_dir)
    num_layers, check = budget_check(cfg.backbone, cfg.budget_fraction, cfg.get("peft"))
    return Setting(num_layers, int(cfg.num_groups), config_dir, check)


def confirm_seeds(spec: SearchSpec) -> list[int]:
    """The training seeds of the confirmation stage (`--confirm-seeds 0,1,2`); a SearchError if none or bad."""
    given = spec.confirm_seeds
    text = (str(given) if isinstance(given, str) else ",".join(map(str, given))).strip()
    try:
        seeds = [int(x) for x in text.split(",")] if text else []
    except ValueError:
        raise SearchError(f"--confirm-seeds {text!r} is not a list of integers; give training seeds such as "
                          "--confirm-seeds 0,1,2") from None
    if not seeds:
        raise SearchError("--confirm-seeds is empty; give training seeds such as --confirm-seeds 0,1,2 (or skip "
                          "the confirmation with --confirm-k 0)")
    if len(set(seeds)) != len(seeds):
        raise SearchError(f"--confirm-seeds {text} repeats a seed; give each seed once, e.g. --confirm-seeds 0,1,2")
    return seeds


def compose(overrides: Sequence[str], config_dir: Path | None = None) -> Any:
    """The config the search's jobs compose (without the space), for its layer count and checks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdspace.config import CONF_DIR, check_config

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
    """The file of space `name`: the search's own spaces first, then the user's config dir, then the packaged."""
    from pdspace.config import CONF_DIR

    dirs = [conf, *([config_dir] if config_dir else []), CONF_DIR]
    for d in dirs:
        path = d / "space" / f"{name}.yaml"
        if path.exists():
            return path
    known = sorted({p.stem for d in dirs for p in (d / "space").glob("*.yaml")})
    raise SearchError(f"unknown space {name!r}; known: {', '.join(known)} (add yours with --config-dir DIR, as "
                      "DIR/space/NAME.yaml)")


# ------------------------------------------------------------------------------------- ranking


def final_space(final: Mapping[str, Any], setting: Setting) -> DesignSpace:
    """The search's final space (a `space:` block, its `letters` included) on the backbone's layers and groups."""
    return DesignSpace.from_block(final, setting.num_layers, setting.num_groups)


def ranked_designs(found: Sequence[Mapping[str, Any]], space: DesignSpace) -> list[tuple[Design, Standing]]:
    """The completed designs inside `space`, best first by pdspace's rule (`pdspace.search.ordering`): results on
    more tasks first, then the higher mean over tasks of the per-task mean objective, then more runs, then the
    design id."""
    designs: dict[str, Design] = {}
    points = []
    for r in found:
        value = results.objective(r)
        if value is None or not r.get("design"):
            continue
        design = Design.from_dict(r["design"])
        if space.contains(design):
            designs[str(design)] = design
            points.append((str(design), str(r.get("task")), value))
    return [(designs[s.name], s) for s in ranked(standings(points).values())]


def best_design(found: Sequence[Mapping[str, Any]], space: DesignSpace) -> tuple[Design, dict[str, Any]]:
    """The best completed design inside `space` by pdspace's rule (see `ranked_designs`), and its numbers."""
    top = ranked_designs(found, space)
    if not top:
        raise SearchError("no completed run of the search lies in its final space; rerun the search to resume it")
    design, standing = top[0]
    return design, design_stats(standing)


def design_stats(standing: Standing) -> dict[str, Any]:
    """A standing's numbers as search.json records them."""
    return {"score": standing.mean, "per_task": standing.per_task, "runs": standing.runs}


def evaluations(sweeps: Sequence[Path]) -> int:
    """Evaluations trained in the sweep dirs: the learning-curve points of every completed or pruned run."""
    found: list[dict[str, Any]] = []
    for sweep in sweeps:
        found += results.read_all(results.sweep_paths(sweep))[0] if sweep.is_dir() else []
    return sum(len((r.get("metrics") or {}).get("per_epoch") or []) for r in found
               if r.get("status") in ("completed", "pruned"))


# ------------------------------------------------------------------------------------- the found design


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
    values["method"] = name
    values.update({dimension: {"choice": choice} for dimension, choice in design.choices().items()})
    return {"defaults": defaults, **values}, rest


def finish(design: Design, stats: Mapping[str, Any], conf: Path, spec: SearchSpec, setting: Setting,
           confirmed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the found design's preset and return it with the command that trains exactly it.

    `stats`: the design's numbers in the search's sweeps; `confirmed`: its numbers over the confirmation's
    seeds (None when the stage is off): those decided, so they are the `score` the search reports."""
    body, rest = preset(design, spec.name, spec.tasks[0], spec.seeds[0], spec.overrides, setting.config_dir)
    path = conf / "experiment" / f"{spec.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["# @package _global_", f"# found by pdspace-search ({spec.name}): {design}",
              f"# mean objective {stats['score']:.4f} over {stats['runs']} runs in the search "
              f"({', '.join(f'{t}={v:.4f}' for t, v in stats['per_task'].items())})"]
    if confirmed:
        std = f" ± {confirmed['std']:.4f}" if confirmed["std"] is not None else ""
        header.append(f"# confirmed: mean {confirmed['score']:.4f}{std} over "
                      f"{confirmed['runs']} runs (seeds {','.join(map(str, confirmed['seeds']))}), the best of "
                      f"{confirmed['candidates']} candidates; see {confirmed['report']}")
        if confirmed.get("vs_baseline"):
            header.append(f"# {confirmed['vs_baseline']['line']}")
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body)))
    words = ["pdspace-train"] + (["-m"] if len(spec.tasks) > 1 or len(spec.seeds) > 1 else [])
    words += ["--config-dir", str(conf), f"experiment={spec.name}", *setting.hydra_args(), *rest]
    if len(spec.tasks) > 1:
        words.append(f"task={','.join(spec.tasks)}")
    if len(spec.seeds) > 1:
        words.append(f"seed={','.join(map(str, spec.seeds))}")
    decided = confirmed or stats
    return {"design_id": str(design), "design": design.to_dict(), "score": decided["score"],
            "per_task": decided["per_task"], "runs": decided["runs"], "confirmed": bool(confirmed),
            "search": dict(stats), "preset": str(path), "command": shlex.join(words)}
