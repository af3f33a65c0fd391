"""Refinement's narrowing: a `space:` block with one dimension pinned to the winning option, written as a
space config file (`<config_dir>/space/<name>.yaml`) with a provenance header, and the space a sweep was
sampled from (what a refinement narrows when it is given none)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace.design.space import (
    DEFAULT_NUM_GROUPS,
    GROUPING_PATTERNS,
    allocation_constraint,
    normalize_strategies,
    parse_dimension,
    tunable_constraint,
)
from pdspace.search.analysis import UNPINNABLE, Analysis


def _num_groups(space: Mapping[str, Any]) -> int:
    strategy, tunable = space.get("strategy"), space.get("tunable")
    if isinstance(strategy, list):
        return len(strategy)
    if isinstance(tunable, str) and tunable not in ("any", "all"):
        return len(tunable)
    if isinstance(tunable, list) and tunable:
        return len(tunable[0])
    return int(space.get("num_groups") or DEFAULT_NUM_GROUPS)


def narrowed_space(space: Mapping[str, Any], dimension: str, winner: str) -> dict[str, Any]:
    """A copy of a `space:` block with `dimension` pinned to `winner` and `controlled` reset to null."""
    k = parse_dimension(dimension)[1]
    out = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else copy.deepcopy(dict(space))
    out["controlled"] = None
    if winner in UNPINNABLE:
        raise ValueError(f"cannot pin {dimension} to {winner!r}: it names no value of the dimension")
    if dimension == "grouping":
        if winner in GROUPING_PATTERNS:
            out["grouping"] = winner
        elif re.fullmatch(r"\d+([-,]\d+)*", winner):
            out["grouping"] = [int(n) for n in re.split(r"[-,]", winner)]
        else:
            raise ValueError(f"cannot pin grouping to {winner!r}: use a pattern ({', '.join(GROUPING_PATTERNS)}) "
                             "or group sizes such as 1-2-2-1")
    elif dimension == "allocation":
        out["allocation"] = allocation_constraint(winner).enumerate()[0]
    elif dimension == "tunable":
        tunable_constraint(winner, len(winner))
        out["tunable"] = winner
    else:
        strategy = out.get("strategy", "any")
        per_group = list(strategy) if isinstance(strategy, (list, tuple)) else [strategy] * _num_groups(out)
        if k > len(per_group):
            raise ValueError(f"cannot pin {dimension}: the space has {len(per_group)} groups")
        per_group[k - 1] = normalize_strategies(winner, k - 1)
        out["strategy"] = per_group
    return out


def write_space(space_block: Mapping[str, Any], path: str | Path, *, provenance: Mapping[str, Any]) -> Path:
    """Write a space config file (`space:` block after the sweeper override) with a `#` provenance header."""
    path = Path(path)
    header = ["# @package _global_"] + [f"# {k}: {' '.join(str(v).split())}" for k, v in provenance.items()]
    body = OmegaConf.to_yaml({"defaults": [{"override /hydra/sweeper": "pdspace"}], "space": dict(space_block)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body)
    return path


def sweep_space(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The `space:` block a sweep dir was sampled from (its samples.yaml, else its multirun.yaml); None if neither."""
    sweep = Path(sweep_dir)
    for name in ("samples.yaml", "multirun.yaml"):
        path = sweep / name
        if path.exists():
            space = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("space")
            if space:
                return space
    return None


def write_narrowed(narrowed: Mapping[str, Any], target: Path, analysis: Analysis, *, sweep: Path, source: str,
                   space_file: str | Path | None) -> Path:
    """Write a refinement's narrowed space with its provenance: where it came from, the rule and the winner."""
    dimension = analysis.dimension
    return write_space(narrowed, target, provenance={
        narrowed["name"]: f"{source} with {dimension} = {analysis.winner}, written by pdspace-refine",
        "source sweep": sweep.resolve(), "source space": space_file or source, "dimension": dimension,
        "metric": ", ".join(analysis.metrics), "rule": analysis.rule,
        "results": f"{analysis.n_results} ({analysis.n_completed} completed, {analysis.n_failed} failed)",
        "winner": analysis.winner,
        **({"test": analysis.test_line()} if analysis.test else {}),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")})
