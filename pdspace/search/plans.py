"""Sweep plans: designs sampled from a space (optionally controlled), crossed with tasks and seeds.

The plan is written to `samples.yaml` in the sweep dir before anything runs; relaunching
the same sweep dir reuses it and skips jobs whose `result.json` says completed (resume).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace.design.space import (
    ALL_STRATEGY_SETS,
    ALLOCATIONS,
    GROUPING_PATTERNS,
    Design,
    DesignSpace,
    GroupingConstraint,
    all_masks,
)

PLAN_FILE = "samples.yaml"
SPACE_KEYS = ("grouping", "allocation", "tunable", "strategy")


class PlanError(ValueError):
    """A space or sweep dir that cannot give a plan, with the fix in the message."""


@dataclasses.dataclass
class Job:
    """One planned run: a concrete design on one task with one seed."""

    idx: int
    design: Design
    task: str
    seed: int
    labels: dict[str, str]

    def overrides(self) -> list[str]:
        """Hydra overrides that pin this job's design, task and seed (and its sweep subdir)."""
        d = self.design
        # untuned groups get "any": the job's Design blanks them, and "" is not a legal set
        strategies = ",".join(s or "any" for s in d.strategies)
        mask = "".join("1" if t else "0" for t in d.tunable)
        out = [f"task={self.task}", f"seed={self.seed}", f"grouping.choice=[{','.join(map(str, d.groups))}]",
               f"allocation.choice={d.allocation}", f"tunable.choice='{mask}'", f"strategy.choice=[{strategies}]",
               f"hydra.sweep.subdir={self.idx}"]
        return out + [f"+labels.{k}='{v}'" for k, v in self.labels.items()]

    def to_dict(self) -> dict[str, Any]:
        """Plain form for samples.yaml."""
        return {"idx": self.idx, "design_id": str(self.design), "task": self.task, "seed": self.seed,
                "labels": dict(self.labels)}


def space_of(block: Mapping[str, Any], num_layers: int, num_groups: int = 4) -> DesignSpace:
    """The DesignSpace a `space:` config block describes, for a backbone with `num_layers` layers."""
    plain = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else dict(block)
    return DesignSpace(num_layers, num_groups, grouping=plain.get("grouping", "any"),
                       allocation=plain.get("allocation", "any"), tunable=plain.get("tunable", "any"),
                       strategies=plain.get("strategy", "any"))


def dimension_options(dimension: str, num_layers: int, num_groups: int = 4) -> list[str]:
    """Every option of a dimension (what a controlled sweep expands)."""
    if dimension == "grouping":
        options = []
        for p in GROUPING_PATTERNS[:-1]:
            try:
                GroupingConstraint(p, num_layers, num_groups)
                options.append(p)
            except ValueError:  # a pattern with no split of this many layers is no option
                pass
        return options
    if dimension == "allocation":
        return list(ALLOCATIONS)
    if dimension == "tunable":
        return ["".join("1" if t else "0" for t in m) for m in all_masks(num_groups)]
    if dimension.startswith("strategy_g") and dimension[10:].isdigit() and 1 <= int(dimension[10:]) <= num_groups:
        return list(ALL_STRATEGY_SETS)
    raise PlanError(f"unknown dimension {dimension!r}; use grouping, allocation, tunable or strategy_g1..g{num_groups}")


def _with_option(design: Design, dimension: str, option: str, num_layers: int, rng: random.Random) -> Design:
    groups, alloc = design.groups, design.allocation
    mask, strategies = list(design.tunable), list(design.strategies)
    if dimension == "grouping":
        groups = GroupingConstraint(option, num_layers, design.num_groups).sample(rng)
    elif dimension == "allocation":
        alloc = option
    elif dimension == "tunable":
        mask = [c == "1" for c in option]
        # a group switched on needs a strategy set: draw one
        strategies = [s or rng.choice(ALL_STRATEGY_SETS) for s in strategies]
    else:
        k = int(dimension[10:]) - 1
        mask[k], strategies[k] = True, option
        strategies = [s or rng.choice(ALL_STRATEGY_SETS) for s in strategies]
    return Design(groups, alloc, mask, [s if t else "" for s, t in zip(strategies, mask)])


def make_plan(block: Mapping[str, Any], num_layers: int, num_groups: int = 4) -> list[Job]:
    """Jobs for a `space:` block: `num_samples` distinct designs (seeded), each expanded over every option
    of the `controlled` dimension when one is set, crossed with `tasks` and `seeds`."""
    space = space_of(block, num_layers, num_groups)
    n, seed = int(block.get("num_samples", 10)), int(block.get("seed", 0))
    tasks, seeds = list(block.get("tasks") or []), [int(s) for s in (block.get("seeds") or [0])]
    if not tasks:
        raise PlanError("the space lists no tasks; set space.tasks=[sst2] (or several)")
    controlled = block.get("controlled")
    # keyed by (design, option): where patterns overlap (6 layers: [1,2,2,1] is uniform and spindle)
    # each option still gets its own runs
    designs: dict[tuple[Design, str], dict[str, str]] = {}
    if controlled:
        rng = random.Random(seed)
        options = dimension_options(controlled, num_layers, num_groups)
        for base in space.sample(n, seed):
            for option in options:
                designs.setdefault((_with_option(base, controlled, option, num_layers, rng), option),
                                   {controlled: option})
    else:
        designs = {(d, ""): {} for d in space.sample(n, seed)}
    jobs = []
    for (design, _), labels in designs.items():
        for task in tasks:
            for s in seeds:
                jobs.append(Job(len(jobs), design, str(task), s, {**labels, "space": str(block.get("name", "space"))}))
    return jobs


def job_status(sweep_dir: Path, idx: int) -> str | None:
    """The status in a job's result.json, or None when it has none (not run, or killed)."""
    path = Path(sweep_dir) / str(idx) / "result.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def load_or_write_plan(sweep_dir: Path, block: Mapping[str, Any], num_layers: int, jobs: Sequence[Job]) -> None:
    """Write samples.yaml, or check that an existing one (a resumed sweep) holds the same plan."""
    path = Path(sweep_dir) / PLAN_FILE
    plain = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else dict(block)
    plan = {"space": plain, "num_layers": num_layers, "jobs": [j.to_dict() for j in jobs]}
    if path.exists():
        old = OmegaConf.to_container(OmegaConf.load(path))
        # the jobs are the plan: other space keys (e.g. max_failure_rate) may change on a resume
        if (old.get("num_layers"), old.get("jobs")) != (num_layers, plan["jobs"]):
            raise PlanError(f"{path} holds a different plan (another space, sample count or seed); "
                            "resume with the same settings or choose a new hydra.sweep.dir")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    OmegaConf.save(OmegaConf.create(plan), tmp)
    tmp.replace(path)
