"""Sweep plans: designs sampled from a space (optionally controlled), crossed with tasks and seeds.

The plan is written to `samples.yaml` in the sweep dir before anything runs; relaunching
the same sweep dir reuses it and skips jobs whose `result.json` says completed (resume).
Designs the budget cannot build are redrawn while planning and counted in the plan, never
trained and failed: otherwise a sweep would compare options on different subsets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pdspace.config import ConfigError, fixed_sizes, plain
from pdspace.design.space import (
    ALLOCATIONS,
    GROUPING_PATTERNS,
    Design,
    DesignSpace,
    GroupingConstraint,
    all_masks,
    mask_text,
    parse_dimension,
    strategy_sets,
)

PLAN_FILE = "samples.yaml"
SPACE_KEYS = ("grouping", "allocation", "tunable", "strategy")


class PlanError(ConfigError):
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
        # untuned groups' strategies read "any": the job's Design blanks them, and "" is not a legal set
        c = self.design.choices()
        out = [f"task={self.task}", f"seed={self.seed}", f"grouping.choice=[{','.join(map(str, c['grouping']))}]",
               f"allocation.choice={c['allocation']}", f"tunable.choice='{c['tunable']}'",
               f"strategy.choice=[{','.join(c['strategy'])}]", f"hydra.sweep.subdir={self.idx}"]
        return out + [f"+labels.{k}='{v}'" for k, v in self.labels.items()]

    def to_dict(self) -> dict[str, Any]:
        """Plain form for samples.yaml."""
        return {"idx": self.idx, "design_id": str(self.design), "task": self.task, "seed": self.seed,
                "labels": dict(self.labels)}


def space_of(block: Mapping[str, Any], num_layers: int, num_groups: int = 4) -> DesignSpace:
    """The DesignSpace a `space:` config block describes, for a backbone with `num_layers` layers
    (`DesignSpace.from_block` of the block as plain containers)."""
    return DesignSpace.from_block(plain(block), num_layers, num_groups)


def dimension_options(dimension: str, num_layers: int, num_groups: int = 4, letters: str | None = None) -> list[str]:
    """Every option of a dimension (what a controlled sweep expands); strategy sets over the space's letters."""
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
        return [mask_text(m) for m in all_masks(num_groups)]
    try:
        parse_dimension(dimension, num_groups)
    except ValueError as e:
        raise PlanError(str(e)) from None
    return list(strategy_sets(letters))


def _with_option(design: Design, dimension: str, option: str, num_layers: int, rng: random.Random,
                 letters: str | None = None) -> Design:
    groups, alloc = design.groups, design.allocation
    sets = strategy_sets(letters)
    mask, strategies = list(design.tunable), list(design.strategies)
    if dimension == "grouping":
        groups = GroupingConstraint(option, num_layers, design.num_groups).sample(rng)
    elif dimension == "allocation":
        alloc = option
    elif dimension == "tunable":
        mask = [c == "1" for c in option]
        # a group switched on needs a strategy set: draw one
        strategies = [s or rng.choice(sets) for s in strategies]
    else:
        k = parse_dimension(dimension)[1] - 1
        mask[k], strategies[k] = True, option
        strategies = [s or rng.choice(sets) for s in strategies]
    return Design(groups, alloc, mask, [s if t else "" for s, t in zip(strategies, mask)])


@dataclasses.dataclass
class Plan:
    """A sweep's jobs, and the designs drawn but rejected (design id -> why) before any training."""

    jobs: list[Job]
    rejected: dict[str, str] = dataclasses.field(default_factory=dict)


Check = Callable[[Design], "str | None"]


def make_plan(block: Mapping[str, Any], num_layers: int, num_groups: int = 4, check: Check | None = None,
              space: Any = None) -> Plan:
    """Jobs for a `space:` block: `num_samples` distinct designs (seeded), each expanded over every option
    of the `controlled` dimension when one is set, crossed with `tasks` and `seeds`.

    `check(design)` says why a design cannot be built (None: it can); such a draw is redrawn (a controlled
    base design is redrawn when any of its expansions fails) and listed in `Plan.rejected`. `space`
    replaces the block's DesignSpace by anything that samples alike (a replay's recorded designs).
    """
    space = space if space is not None else space_of(block, num_layers, num_groups)
    n, seed = int(block.get("num_samples", 10)), int(block.get("seed", 0))
    tasks, seeds = list(block.get("tasks") or []), [int(s) for s in (block.get("seeds") or [0])]
    if not tasks:
        raise PlanError("the space lists no tasks; set space.tasks=[sst2] (or several)")
    if n < 1:
        raise PlanError(f"space.num_samples={n} plans nothing; give a positive number, e.g. space.num_samples=20")
    controlled = block.get("controlled")
    rejected: dict[str, str] = {}

    def ok(design: Design) -> bool:
        why = check(design) if check else None
        if why:
            rejected[str(design)] = why
        return why is None

    # keyed by (design, option): where patterns overlap (6 layers: [1,2,2,1] is uniform and spindle)
    # each option still gets its own runs
    designs: dict[tuple[Design, str], dict[str, str]] = {}
    if controlled:
        rng = random.Random(seed)
        letters = block.get("letters")
        options = dimension_options(controlled, num_layers, num_groups, letters)
        expansions: dict[Design, list[tuple[Design, str]]] = {}

        def ok_base(base: Design) -> bool:
            # expanded here, once per base in draw order: with every design buildable, the same plan as ever
            expansions[base] = [(_with_option(base, controlled, o, num_layers, rng, letters), o) for o in options]
            return all([ok(d) for d, _ in expansions[base]])

        for base in space.sample(n, seed, accept=ok_base):
            for design, option in expansions[base]:
                designs.setdefault((design, option), {controlled: option})
    else:
        designs = {(d, ""): {} for d in space.sample(n, seed, accept=ok)}
    if not designs:
        example = next(iter(rejected.values()), "")
        raise PlanError(f"no design of space {block.get('name')!r} can be built at this budget ({len(rejected)} "
                        f"rejected, e.g. {example}); raise budget_fraction or narrow the space")
    jobs = []
    for (design, _), labels in designs.items():
        for task in tasks:
            for s in seeds:
                jobs.append(Job(len(jobs), design, str(task), s, {**labels, "space": str(block.get("name", "space"))}))
    return Plan(jobs, rejected)


def budget_check(backbone: Mapping[str, Any], budget_fraction: float | None,
                 peft: Mapping[str, Any] | None = None) -> tuple[int, Check]:
    """(layer count, check) for a backbone config: `check(design)` says why the budget solver cannot build
    `design` (None: it can). The backbone is built on the meta device from its config: no weights."""
    from pdspace.backbones import load_backbone
    from pdspace.peft.families import layer_map

    bb = plain(backbone)
    model = load_backbone(bb["name"], bb.get("path"), arch=bb.get("arch"), tokenizer=bb.get("tokenizer"),
                          overrides=bb.get("overrides") or None, meta=True).model
    return len(layer_map(model)), design_check(model, budget_fraction, peft)


def design_check(model: Any, budget_fraction: float | None, peft: Mapping[str, Any] | None = None) -> Check:
    """`check(design)`: why the budget solver cannot build `design` on `model` (None: it can)."""
    from pdspace.design.budget import BudgetError, solve_budget
    from pdspace.peft.families import layer_map
    from pdspace.peft.patch import count_params, layer_costs

    peft = plain(peft) or {}
    if peft.get("full_finetune") or fixed_sizes(peft.get("sizes")):
        return lambda design: None  # nothing to solve
    # the strategy options change costs (e.g. a second adapter, a reparameterised prefix)
    options = {k: v for k, v in peft.items() if k not in ("full_finetune", "sizes", "train_head")}
    costs = [layer_costs(layer, **options) for layer in layer_map(model)]
    total = count_params(model)[0]

    def check(design: Design) -> str | None:
        try:
            solve_budget(design, costs, total, budget_fraction)
        except BudgetError as e:
            return str(e)
        return None

    return check


def load_or_write_plan(sweep_dir: Path, block: Mapping[str, Any], num_layers: int, plan: Plan,
                       rows: list[dict[str, Any]] | None = None) -> None:
    """Write samples.yaml, or check that an existing one (a resumed sweep) holds the same plan.

    `rows` replace the plan's jobs where a study, not the plan, picks the designs (one row per trial slot)."""
    path = Path(sweep_dir) / PLAN_FILE
    data = {"space": plain(block), "num_layers": num_layers,
            "jobs": rows if rows is not None else [j.to_dict() for j in plan.jobs],
            "rejected": {"count": len(plan.rejected), "designs": dict(plan.rejected)}}
    if path.exists():
        old = OmegaConf.to_container(OmegaConf.load(path))
        # the jobs are the plan: other space keys (e.g. max_failure_rate) may change on a resume
        if (old.get("num_layers"), old.get("jobs")) != (num_layers, data["jobs"]):
            raise PlanError(f"{path} holds a different plan (another space, sample count, seed or budget); "
                            "resume with the same settings or choose a new hydra.sweep.dir")
        return
    save_yaml(data, path)


def save_yaml(data: Any, path: Path) -> None:
    """Write a config as YAML atomically (two sweeps launched into one dir at once both write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        OmegaConf.save(data if OmegaConf.is_config(data) else OmegaConf.create(data), tmp)
        tmp.replace(path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a full disk leaves no empty temp file behind
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from e  # the file the user knows, not its temp
        raise
