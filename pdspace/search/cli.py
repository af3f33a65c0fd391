"""`pdspace-search`: one entry point for every search (greedy, random, tpe, gp, de), resumable.

- `--search random|tpe|gp|de [--pruner successive_halving|hyperband|median] [--trials N]`: one sweep of the start
  space, designs drawn at random (today's plans; the default, the best or level with the best in the replay of
  design table v2) or proposed by an Optuna study (`pdspace.search.study`), weak ones stopped early by the pruner;
- `--search greedy`: the paper's staged search S0 -> S1 -> ... -> S4 (`pdspace.search.greedy`).

(`--strategy` is the old name of `--search`: it still works, with a deprecation warning.)

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

This module is the command line only: it parses the flags into a `pdspace.search.engine.SearchSpec`, runs
`pdspace.search.runner.search` on it and prints the outcome; from Python, call `search` directly.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pdspace.config import one_line
from pdspace.errors import exit_error, exit_interrupted
from pdspace.search.engine import PRUNERS, SEARCHES, SearchInterrupted, SearchSpec
from pdspace.search.runner import search

PROG = "pdspace-search"
# the searches that run as one sweep of a study (all but greedy's stages), as the help names them
ONE_SWEEP = "/".join(s for s in SEARCHES if s != "greedy")


class _Deprecated(argparse.Action):
    """An old flag name: one warning line on stderr, then it sets what the new flag sets."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"{parser.prog}: warning: {option_string} is deprecated; use --search\n")
        setattr(namespace, self.dest, values)


def parser() -> argparse.ArgumentParser:
    """The flags of `pdspace-search`; their defaults are `SearchSpec`'s."""
    d = SearchSpec()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                epilog="Extra KEY=VALUE arguments go to every pdspace-train job "
                                       "(e.g. backbone=minilm trainer.max_epochs=1 task.max_train_samples=2000).")
    p.add_argument("--dir", default=d.dir, help="search dir (sweeps, spaces, state); reuse to resume")
    p.add_argument("--name", default=d.name, help="prefix of the spaces and configs the search writes")
    p.add_argument("--space", default=d.space, help="the starting space (a space/NAME.yaml of the config dirs)")
    p.add_argument("--config-dir", default=d.config_dir, help="your config dir (spaces, presets, backbones), "
                                                              "searched before the packaged one")
    p.add_argument("--search", default=d.search, choices=SEARCHES,
                   help=f"greedy: the paper's stages S0->S4; {ONE_SWEEP}: one sweep of --trials designs")
    p.add_argument("--strategy", dest="search", choices=SEARCHES, action=_Deprecated, default=argparse.SUPPRESS,
                   help="deprecated: the old name of --search")
    p.add_argument("--pruner", default=d.pruner, choices=PRUNERS, help=f"stop weak designs early ({ONE_SWEEP})")
    p.add_argument("--trials", default=d.trials, type=int,
                   help=f"designs a {ONE_SWEEP} search trains (default: --samples)")
    p.add_argument("--tasks", default=list(d.tasks), type=lambda s: s.split(","), help="comma-separated tasks")
    p.add_argument("--seeds", default=list(d.seeds), type=lambda s: [int(x) for x in s.split(",")],
                   help="training seeds")
    p.add_argument("--samples", default=d.samples, type=int, help="designs per stage (controlled: split over "
                                                                  "options)")
    p.add_argument("--seed", default=d.seed, type=int, help="sampling seed")
    p.add_argument("--wandb", action="store_true", help="log each refinement report to W&B")
    p.add_argument("--confirm-k", default=d.confirm_k, type=int,
                   help="retrain the top K designs of the search (and the uniform baselines) over --confirm-seeds "
                        "and pick the best mean; 0: no confirmation")
    p.add_argument("--confirm-seeds", default=",".join(map(str, d.confirm_seeds)),
                   help="comma-separated training seeds of the confirmation")
    p.add_argument("--confirm-full-ft", action="store_true", help="add full fine-tuning to the confirmation's "
                                                                  "baselines")
    return p


def parse(argv: Sequence[str] | None = None) -> SearchSpec:
    """The search a command line asks for (argparse's usage errors exit 2)."""
    p = parser()
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognised arguments {bad}; pass job overrides as KEY=VALUE")
    return SearchSpec(dir=args.dir, name=args.name, space=args.space, config_dir=args.config_dir,
                      search=args.search, pruner=args.pruner, trials=args.trials, tasks=args.tasks,
                      seeds=args.seeds, samples=args.samples, seed=args.seed, wandb=args.wandb,
                      confirm_k=args.confirm_k, confirm_seeds=args.confirm_seeds,
                      confirm_full_ft=args.confirm_full_ft, overrides=overrides)


def summary(state: Mapping[str, Any]) -> str:
    """What the search prints at the end: the confirmation's report, the found design, compute, its preset."""
    final = state["final"]
    lines = []
    if state.get("confirm"):
        c = state["confirm"]
        lines.append(Path(c["report"]).read_text())
        std = c["candidates"][c["found"]]["std"]
        lines.append(f"found design: {final['design_id']} (confirmed: mean objective {final['score']:.4f}"
                     f"{f' ± {std:.4f}' if std is not None else ''} over {final['runs']} runs, seeds "
                     f"{','.join(map(str, c['seeds']))}; {final['search']['score']:.4f} over "
                     f"{final['search']['runs']} runs in the search)")
        if c.get("vs_baseline"):
            lines.append(c["vs_baseline"]["line"])
    else:
        lines.append(f"found design: {final['design_id']} (mean objective {final['score']:.4f} over "
                     f"{final['runs']} runs)")
    compute = state["compute"]
    lines.append(f"compute: {compute['epochs']} evaluations trained ({compute['search_epochs']} in the search, "
                 f"{compute['confirm_epochs']} in the confirmation)")
    lines.append(f"preset: {final['preset']}")
    lines.append("train it with:\n  " + final["command"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console script `pdspace-search`: user errors exit 1 with one line, SIGINT/SIGTERM 128 + the signal."""
    spec = parse(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    from pdspace.tracking import quiet

    quiet()
    try:
        state = search(spec)
    except Exception as e:  # noqa: BLE001 - user errors as one line; anything else keeps its traceback
        line = one_line(e, "--dir") or (str(e) if isinstance(e, ValueError) else None)
        if line is None:
            raise
        if isinstance(e, SearchInterrupted):
            exit_interrupted(PROG, e.signum, line)
        exit_error(PROG, line)
    print(summary(state))


if __name__ == "__main__":
    main()
