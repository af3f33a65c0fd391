"""`pdspace-search`: one entry point for every search strategy, resumable.

- `--strategy greedy` (default): the paper's staged search S0 -> S1 -> ... -> S4 (`pdspace.search.greedy`);
- `--strategy random|tpe|gp [--pruner successive_halving|hyperband] [--trials N]`: one sweep of the start
  space, designs drawn at random (today's plans) or proposed by an Optuna study (`pdspace.search.study`),
  weak ones stopped early by the pruner.

Every search ends with a confirmation stage (`pdspace.search.confirm`): the top `--confirm-k` designs
(default 3) that the sweeps trained inside the final space, ranked by pdspace's one ordering rule
(`pdspace.search.ordering`: more tasks, higher mean objective, more runs, design id), are trained again,
with the uniform Adapter, Prefix, LoRA and BitFit baselines (and full fine-tuning with
`--confirm-full-ft`) at the same budget and settings, over `--confirm-seeds` (default 0,1,2). The found
design is the candidate with the best mean over those seeds (same rule); `<dir>/confirm_report.md`
compares it with the baselines and the other candidates. `--confirm-k 0` skips the stage: the found
design is then the best design of the sweeps themselves. The confirmation's flags may change on a
rerun: only the confirmation trains again (in its own dir), never the search's sweeps.

Every sweep (the confirmation too) runs as a `pdspace-train -m` subprocess (SIGINT/SIGTERM are passed
on to it and waited for); rerunning the same command resumes it, and completed jobs are never trained
again. The found design is saved as the experiment preset `<dir>/conf/experiment/<name>.yaml` with every
setting the search's jobs ran with, and printed as the `pdspace-train` command that trains exactly it.
`<dir>/search.json` keeps the state: stages, the confirmation (candidates, baselines, seeds, means),
the found design, and the compute (`compute.epochs`: evaluations trained over every sweep,
`compute.confirm_epochs`: those of the confirmation).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace import results
from pdspace.config import PDSpaceError, one_line, plain
from pdspace.design.space import Design, DesignSpace
from pdspace.search.ordering import Standing, ranked, standings

log = logging.getLogger("pdspace.search")
STATE_FILE = "search.json"
STRATEGIES = ("greedy", "random", "tpe", "gp")


class SearchError(PDSpaceError):
    """A search that cannot start or a stage that could not finish; the message says what to do."""


class SearchInterrupted(SearchError):
    """SIGINT or SIGTERM stopped the search (and its stage); the console script exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the stage was stopped and its finished jobs "
                         "are kept; rerun the same command to resume")
        self.signum = signum


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


def _state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


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


def run_sweep(label: str, source: str, conf: Path, sweep: Path, args: argparse.Namespace, overrides: list[str],
              setting: Setting, extra: Sequence[str]) -> None:
    """Sweep space `source` in a subprocess (resuming whatever it finished before); `extra` sets the space's keys."""
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "--config-dir", str(conf), f"space={source}", *extra,
           f"space.tasks=[{','.join(args.tasks)}]", f"space.seeds=[{','.join(map(str, args.seeds))}]",
           # the sweep's own config composes with the first task, so task-specific keys (task.synthetic_size) exist
           f"space.seed={args.seed}", f"hydra.sweep.dir={sweep}", f"task={args.tasks[0]}", *setting.hydra_args(),
           *overrides]
    run_multirun(label, cmd, sweep)


def run_multirun(label: str, cmd: list[str], sweep: Path) -> None:
    """Run one `pdspace-train -m` command line; a non-zero exit is a SearchError that says how to resume."""
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
    if args.trials is not None and args.trials < 1:
        raise SearchError(f"--trials {args.trials} trains nothing; give a positive number, e.g. --trials 20")
    if args.confirm_k < 0:
        raise SearchError(f"--confirm-k {args.confirm_k} is negative; give the number of designs to confirm, "
                          "e.g. --confirm-k 3, or --confirm-k 0 to skip the confirmation")
    confirm_seeds(args)
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

    num_layers, check = budget_check(cfg.backbone, cfg.budget_fraction, cfg.get("peft"))
    return Setting(num_layers, int(cfg.num_groups), config_dir, check)


def confirm_seeds(args: argparse.Namespace) -> list[int]:
    """The training seeds of the confirmation stage (`--confirm-seeds 0,1,2`); a SearchError if none or bad."""
    text = str(args.confirm_seeds).strip()
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


def final_space(final: Mapping[str, Any], setting: Setting) -> DesignSpace:
    """The search's final space (a `space:` block) on the backbone's layers and groups."""
    return DesignSpace(setting.num_layers, setting.num_groups, grouping=final.get("grouping", "any"),
                       allocation=final.get("allocation", "any"), tunable=final.get("tunable", "any"),
                       strategies=final.get("strategy", "any"))


def finish(design: Design, stats: Mapping[str, Any], conf: Path, args: argparse.Namespace, overrides: list[str],
           setting: Setting, confirmed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the found design's preset and return it with the command that trains exactly it.

    `stats`: the design's numbers in the search's sweeps; `confirmed`: its numbers over the confirmation's
    seeds (None when the stage is off): those decided, so they are the `score` the search reports."""
    body, rest = preset(design, args.name, args.tasks[0], args.seeds[0], overrides, setting.config_dir)
    path = conf / "experiment" / f"{args.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["# @package _global_", f"# found by pdspace-search ({args.name}): {design}",
              f"# mean objective {stats['score']:.4f} over {stats['runs']} runs in the search "
              f"({', '.join(f'{t}={v:.4f}' for t, v in stats['per_task'].items())})"]
    if confirmed:
        std = f" ± {confirmed['std']:.4f}" if confirmed["std"] is not None else ""
        header.append(f"# confirmed: mean {confirmed['score']:.4f}{std} over "
                      f"{confirmed['runs']} runs (seeds {','.join(map(str, confirmed['seeds']))}), the best of "
                      f"{confirmed['candidates']} candidates; see {confirmed['report']}")
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body)))
    words = ["pdspace-train"] + (["-m"] if len(args.tasks) > 1 or len(args.seeds) > 1 else [])
    words += ["--config-dir", str(conf), f"experiment={args.name}", *setting.hydra_args(), *rest]
    if len(args.tasks) > 1:
        words.append(f"task={','.join(args.tasks)}")
    if len(args.seeds) > 1:
        words.append(f"seed={','.join(map(str, args.seeds))}")
    decided = confirmed or stats
    return {"design_id": str(design), "design": design.to_dict(), "score": decided["score"],
            "per_task": decided["per_task"], "runs": decided["runs"], "confirmed": bool(confirmed),
            "search": dict(stats), "preset": str(path), "command": shlex.join(words)}


def search(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Run (or resume) the search and its confirmation; returns its state (for greedy the stages; the
    confirmation; the found design, preset, command; the compute)."""
    root = Path(args.dir).resolve()
    conf = root / "conf"
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"stages": {}}
    setting = check_args(args, overrides, conf)
    (conf / "space").mkdir(parents=True, exist_ok=True)
    settings = {"strategy": args.strategy, "space": args.space, "tasks": args.tasks, "seeds": args.seeds,
                "samples": args.samples, "seed": args.seed, "name": args.name, "overrides": overrides,
                "config_dir": str(setting.config_dir) if setting.config_dir else None}
    if args.strategy != "greedy":
        settings.update(pruner=args.pruner, trials=args.trials)
    # the confirmation's settings are no search settings: changing them retrains only the confirmation
    # (in a sweep dir of its own per setting), never the search's sweeps
    old = {"config_dir": None, "strategy": "greedy", **state.get("settings", settings)}
    if old != settings:
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        then = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={settings.get(k)!r}" for k in changed)
        raise SearchError(f"{state_path} was started with other settings ({then}; now {now}); rerun with those to "
                          "resume, or choose a new --dir")
    state["settings"] = settings
    if args.strategy == "greedy":
        from pdspace.search.greedy import search_greedy

        final, sweeps = search_greedy(args, overrides, setting, root, state, state_path)
    else:
        sweep = root / args.strategy
        if (state["stages"].get(args.strategy) or {}).get("done") and sweep.is_dir():
            # finished before (like a greedy stage): a rerun goes straight on to the confirmation
            log.info("%s search done before: %s", args.strategy, sweep)
        else:
            trials = args.trials if args.trials is not None else args.samples
            run_sweep(f"{args.strategy} search", args.space, conf, sweep, args, overrides, setting,
                      [f"space.search={args.strategy}", f"space.pruner={args.pruner}", f"space.trials={trials}",
                       f"space.num_samples={trials}", "space.controlled=null"])
            # done only without a failed job: a rerun retries those (the sweeper skips the completed ones)
            statuses = {r.get("status") for r in results.read_all(results.sweep_paths(sweep))[0]}
            state["stages"][args.strategy] = {"sweep": str(sweep), "done": statuses <= {"completed", "pruned"}}
            results.write_json(state_path, state)
        final = plain(OmegaConf.load(space_file(conf, args.space, setting.config_dir)).space)
        sweeps = [sweep]
    state["final_space"] = {k: final.get(k) for k in ("grouping", "allocation", "tunable", "strategy")}
    found = []
    for sweep in sweeps:
        found += results.read_all(results.sweep_paths(sweep))[0]
    top = ranked_designs(found, final_space(final, setting))
    if not top:
        raise SearchError("no completed run of the search lies in its final space; rerun the search to resume it")
    confirm_dirs: list[Path] = []
    if args.confirm_k > 0:
        from pdspace.search.confirm import run_confirmation

        state["confirm"] = run_confirmation(top[:args.confirm_k], root, args, overrides, setting,
                                            previous=state.get("confirm"))
        results.write_json(state_path, state)
        confirm_dirs = [Path(state["confirm"]["sweep"])]
        c = state["confirm"]
        chosen = c["candidates"][c["found"]]
        design, standing = next((d, s) for d, s in top if str(d) == chosen["design_id"])
        confirmed = {"score": chosen["mean"], "std": chosen["std"], "runs": chosen["runs"],
                     "per_task": chosen["per_task"], "seeds": c["seeds"], "candidates": len(c["candidates"]),
                     "report": c["report"], "label": c["found"]}
        state["final"] = finish(design, design_stats(standing), conf, args, overrides, setting, confirmed=confirmed)
    else:
        state.pop("confirm", None)
        design, standing = top[0]
        state["final"] = finish(design, design_stats(standing), conf, args, overrides, setting)
    total, confirm_epochs = evaluations(sweeps), evaluations(confirm_dirs)
    state["compute"] = {"epochs": total + confirm_epochs, "confirm_epochs": confirm_epochs,
                        "search_epochs": total}
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
    p.add_argument("--confirm-k", default=3, type=int, help="retrain the top K designs of the search (and the "
                                                            "uniform baselines) over --confirm-seeds and pick "
                                                            "the best mean; 0: no confirmation")
    p.add_argument("--confirm-seeds", default="0,1,2", help="comma-separated training seeds of the confirmation")
    p.add_argument("--confirm-full-ft", action="store_true", help="add full fine-tuning to the confirmation's "
                                                                  "baselines")
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
        if isinstance(e, SearchInterrupted):
            sys.stderr.write(f"pdspace-search: {line}\n")
            sys.exit(128 + e.signum)
        sys.exit(f"pdspace-search: error: {line}")
    final = state["final"]
    if state.get("confirm"):
        c = state["confirm"]
        print(Path(c["report"]).read_text())
        std = c["candidates"][c["found"]]["std"]
        print(f"found design: {final['design_id']} (confirmed: mean objective {final['score']:.4f}"
              f"{f' ± {std:.4f}' if std is not None else ''} over {final['runs']} runs, seeds "
              f"{','.join(map(str, c['seeds']))}; {final['search']['score']:.4f} over {final['search']['runs']} "
              "runs in the search)")
    else:
        print(f"found design: {final['design_id']} (mean objective {final['score']:.4f} over {final['runs']} runs)")
    compute = state["compute"]
    print(f"compute: {compute['epochs']} evaluations trained ({compute['search_epochs']} in the search, "
          f"{compute['confirm_epochs']} in the confirmation)")
    print(f"preset: {final['preset']}")
    print("train it with:\n  " + final["command"])


if __name__ == "__main__":
    main()
