"""`pdspace-refine`: compare the options of one dimension over a finished sweep, pick the winner, and
write the narrowed design space (one refinement step of the paper, analysed the pycls/GraphGym way).

The jobs' `result.json` files are the source of truth (W&B is only a mirror). The report
(`refine_report.md`/`.json`, `edf_<dim>.png`, `box_<dim>.png`) goes into the sweep dir; the
narrowed space goes to `<config_dir>/space/<name>.yaml`, where `config_dir` defaults to
`<sweep_dir>/conf`: refinement never edits the source tree, the narrowed space stays with the
results it came from, and the next sweep uses it with `--config-dir <sweep_dir>/conf`.

This module runs a refinement (`refine`, the console script, the Hydra callback `RefineCallback`); its
three parts live beside it: `pdspace.search.analysis` (per-option statistics, the winner rules),
`pdspace.search.narrowing` (the narrowed space and its file), `pdspace.search.refine_report` (table,
plots, markdown, W&B).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from pdspace.errors import exit_error, warning_lines
from pdspace.search.analysis import RULES, Analysis, analyse, load_results
from pdspace.search.narrowing import narrowed_space, sweep_space, write_narrowed
from pdspace.search.refine_report import format_table, log_wandb, report

log = logging.getLogger("pdspace")


def refine(sweep_dir: str | Path, dimension: str, *, space_file: str | Path | None = None,
           space: Mapping[str, Any] | None = None, config_dir: str | Path | None = None, name: str | None = None,
           rule: str = "mean", wandb: bool = False) -> Analysis:
    """Analyse a sweep over `dimension`, write the report and the narrowed space file.

    The source space is `space`, else `space_file`, else the one the sweep was sampled from (its
    samples.yaml); a sweep without a space (a plain grid) gets a report and no narrowed space.
    """
    sweep = Path(sweep_dir)
    found, unreadable = load_results(sweep)
    for _, why in unreadable:
        warnings.warn(f"unreadable result file {why}", stacklevel=2)  # `why` starts with the path
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
        write_narrowed(narrowed, target, analysis, sweep=sweep, source=source, space_file=space_file)
    if wandb:
        log_wandb(analysis, sweep)
    return analysis


def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `pdspace-refine`: bad input exits 1 with one error line (a malformed command line: 2)."""
    args = _parser().parse_args(argv)
    # warnings (a skipped result.json) as one line each, not with the source line Python adds
    try:
        with warning_lines("pdspace-refine"):
            analysis = refine(args.sweep_dir, args.dimension, space_file=args.space_file, config_dir=args.config_dir,
                              name=args.name, rule=args.rule, wandb=args.wandb)
    except (OSError, ValueError) as e:
        from pdspace.results import disk_error

        # the narrowed space goes under --config-dir; a write there that fails names that option as the fix
        written = args.config_dir and Path(str(getattr(e, "filename", None) or "/")).absolute().is_relative_to(
            Path(args.config_dir).absolute())
        exit_error("pdspace-refine", (disk_error(e, dir_key="--config-dir") if written else None) or e)
    print(format_table(analysis))
    print(f"\nwinner: {analysis.winner}" + (f" ({analysis.note})" if analysis.note else ""))
    if analysis.test:
        print(f"test: {analysis.test_line()}")
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
            test = f"test: {analysis.test_line()}\n" if analysis.test else ""
            log.info("refine %s: winner %s\n%s\n%swrote %s", dimension, analysis.winner, format_table(analysis), test,
                     ", ".join(analysis.files.values()))
        except Exception as e:  # noqa: BLE001 - a refinement error must not cost the sweep its results
            log.error("refine failed: %s: %s", type(e).__name__, e)


if __name__ == "__main__":
    sys.exit(main())
