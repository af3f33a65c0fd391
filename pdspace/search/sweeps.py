"""A multirun's life in the pdspace sweeper: plan the jobs, skip the done ones, refuse changed settings,
launch the rest through any Hydra launcher, summarise, and fail past the allowed failure rate.

A space sweep trains the tasks of `space.tasks`, each job its own. A `task=` on the command line
only composes the sweep's config (so that task-specific keys such as `task.synthetic_size` exist):
with `space.tasks` given too it must be one of them, else the sweep is refused with one line;
without it, `space.tasks` follows it (`task=X` sweeps X, not the space file's tasks).

`multirun.yaml` (the sweep's config, which greedy and refine read) is written only once the
sweep is accepted: a refused relaunch leaves the old one in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdspace import results
from pdspace.config import ConfigError, PDSpaceError, check_config, differing_keys, fingerprint
from pdspace.search.study import StudySpec, open_study, study_spec

log = logging.getLogger("pdspace.sweeper")


class SweepFailed(PDSpaceError):
    """More jobs failed than the sweep allows (every job's result is on disk)."""


@dataclass
class SweepJob:
    """One job of a sweep: its number (= its subdir) and its overrides."""

    idx: int
    overrides: list[str]
    label: str


def plan_jobs(config: Any, arguments: Sequence[str], parser: Any) -> tuple[list[SweepJob], Path]:
    """The sweep's jobs: designs sampled from `config.space`, or the grid of the command line's sweeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from pdspace.search.plans import budget_check, load_or_write_plan, make_plan

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    check_config(config)
    parsed = parser.parse_overrides(list(arguments))
    block = config.get("space")
    if not block:
        # job numbers follow Hydra's basic sweeper (the cartesian product, last key fastest)
        combos = [list(c) for batch in BasicSweeper.split_arguments(parsed, None) for c in batch]
        return [SweepJob(i, [*c, f"hydra.sweep.subdir={i}"], " ".join(o.split("=", 1)[1] for o in c) or "-")
                for i, c in enumerate(combos)], sweep_dir
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if swept:
        raise ConfigError(f"the space sampler makes its own jobs; instead of {swept} set space.tasks=[..], "
                          "space.seeds=[..] or space.num_samples")
    arguments = space_tasks(config, parsed, arguments)
    num_layers, check = budget_check(config.backbone, config.budget_fraction, config.get("peft"))
    specs = study_specs(config, sweep_dir)
    for spec in specs.values():
        if spec.uses_study():
            open_study(spec, create=True)  # first: an unreachable storage is refused before anything is written
    first = next(iter(specs.values()))
    if first.search != "random":
        jobs = study_jobs(block, specs, sweep_dir, num_layers, arguments)
    else:
        plan = make_plan(block, num_layers, int(config.get("num_groups", 4)), check)
        load_or_write_plan(sweep_dir, block, num_layers, plan)
        if plan.rejected:
            log.info("%d sampled designs cannot be built at budget_fraction=%s and were redrawn (listed in %s)",
                     len(plan.rejected), config.budget_fraction, sweep_dir / "samples.yaml")
        # with a pruner, each job reports its curve to the study of its task (its design stays the plan's)
        slot = (lambda j: [f"+labels.trial_slot={j.idx}"]) if first.uses_study() else (lambda j: [])
        jobs = [SweepJob(j.idx, j.overrides() + slot(j) + list(arguments), f"{j.task} {j.design}")
                for j in plan.jobs]
    return jobs, sweep_dir


def space_tasks(config: Any, parsed: Sequence[Any], arguments: Sequence[str]) -> list[str]:
    """Reconcile a command-line `task=` with `space.tasks` (see the module docstring); the arguments every job
    gets (without `task=`: each job pins its own task, which a later `task=` would override)."""
    from omegaconf import OmegaConf, read_write

    chosen = [o for o in parsed if o.key_or_group == "task" and not o.is_delete()]
    if not chosen:
        return list(arguments)
    task = str(chosen[-1].value())
    tasks = [str(t) for t in config.space.tasks]
    given = any(o.key_or_group == "space.tasks" for o in parsed)
    if given and task not in tasks:
        raise ConfigError(f"task={task} conflicts with space.tasks=[{','.join(tasks)}]: a space sweep trains the tasks "
                          f"in space.tasks; set space.tasks=[{task}] (or add {task} to it)")
    rest = [a for a, o in zip(arguments, parsed) if o not in chosen]
    if given:
        return rest
    if tasks != [task]:
        log.info("space.tasks=[%s]: it follows task=%s (the space lists [%s])", task, task, ",".join(tasks))
        with read_write(config):
            OmegaConf.update(config, "space.tasks", [task])
    return [*rest, f"space.tasks=[{task}]"]


def study_specs(config: Any, sweep_dir: Path) -> dict[str, StudySpec]:
    """The study settings of a space sweep, one study per task."""
    from pdspace.search.study import _evals_per_epoch

    block = config.space
    trainer = config.get("trainer") or {}
    evals = _evals_per_epoch(trainer.get("val_check_interval"))
    specs = {str(t): study_spec(block, sweep_dir, str(t), trainer.get("max_epochs"), evals) for t in block.tasks}
    if next(iter(specs.values())).search != "random" and len(block.seeds) > 1:
        raise ConfigError("a study trains each trial once, with one seed: set space.seeds=[0] (train the found "
                          "design over more seeds afterwards)")
    return specs


def study_jobs(block: Any, specs: dict[str, StudySpec], sweep_dir: Path, num_layers: int,
               arguments: Sequence[str]) -> list[SweepJob]:
    """One job per trial slot and task; each job asks its task's study for its design."""
    from pdspace.search.plans import PLAN_FILE, Plan, load_or_write_plan

    jobs, rows = [], []
    seed = int(block.seeds[0])
    for task, spec in specs.items():
        for slot in range(spec.trials):
            idx = len(jobs)
            jobs.append(SweepJob(idx, [f"task={task}", f"seed={seed}", f"hydra.sweep.subdir={idx}",
                                       f"+labels.trial_slot={slot}", f"+labels.space={block.get('name', 'space')}",
                                       *arguments], f"{task} trial slot {slot} ({spec.search})"))
            rows.append({"idx": idx, "task": task, "seed": seed, "slot": slot, "search": spec.search,
                         "pruner": spec.pruner, "objectives": spec.objectives})
    plan = Plan([], {})
    load_or_write_plan(sweep_dir, block, num_layers, plan, rows=rows)
    log.info("%s study on %s: %d trials per task, pruner %s (plan in %s)", next(iter(specs.values())).search,
             ", ".join(specs), next(iter(specs.values())).trials, next(iter(specs.values())).pruner,
             sweep_dir / PLAN_FILE)
    return jobs


def pending_jobs(jobs: Sequence[SweepJob], sweep_dir: Path,
                 job_config: Callable[[list[str]], dict[str, Any]]) -> list[SweepJob]:
    """The jobs to launch: not completed before, not running elsewhere; raises `ConfigError` when a job dir holds
    a completed, running, interrupted or pruned run made with other settings (a failed or dry one is replaced:
    the job keeps it aside as result.failed-<n>.json and runs)."""
    pending, refused, done, busy = [], [], 0, 0
    for job in jobs:
        job_dir = sweep_dir / str(job.idx)
        if results.is_locked(job_dir):
            busy += 1  # another process trains it right now
            continue
        try:
            prior = results.read(job_dir / results.RESULT_FILE) if (job_dir / results.RESULT_FILE).exists() else None
        except results.ResultError:
            prior = None
        compared = prior is not None and prior["status"] not in results.REPLACEABLE_STATUSES
        if compared and isinstance(prior.get("config"), dict):
            new = job_config(job.overrides)
            if fingerprint(prior["config"]) != fingerprint(new):
                refused.append(f"job {job.idx}: {'; '.join(differing_keys(prior['config'], new)[:6])}")
                continue
        if prior is not None and prior["status"] == "completed":
            done += 1
            continue
        pending.append(job)
    if refused:
        raise ConfigError(f"{len(refused)} job dirs of {sweep_dir} hold runs made with other settings "
                          f"({' | '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}); relaunch with the same "
                          "settings to resume, or choose a new hydra.sweep.dir")
    log.info("sweep %s: %d jobs, %d completed before, %d running elsewhere, launching %d", sweep_dir, len(jobs),
             done, busy, len(pending))
    return pending


def launch_plan(jobs: Sequence[SweepJob], sweep_dir: Path, config: Any, launcher: Any,
                job_config: Callable[[list[str]], dict[str, Any]],
                accepted: Callable[[], None] | None = None) -> list[Any]:
    """Launch the jobs not completed before (refusing dirs that hold other settings); summarise; check failures.

    `accepted()` runs once the sweep is accepted, before any job (the sweeper writes multirun.yaml there)."""
    pending = pending_jobs(jobs, sweep_dir, job_config)
    if accepted is not None:
        accepted()
    returns = launcher.launch([j.overrides for j in pending], initial_job_idx=0) if pending else []
    limit = config.space.get("max_failure_rate") if config.get("space") else None
    try:
        summarise(jobs, sweep_dir, config.max_failure_rate if limit is None else limit)
    finally:
        if config.get("space"):
            from pdspace.search.study_report import write_study_reports

            write_study_reports(study_specs(config, sweep_dir), sweep_dir, wandb=_wandb_on(config))
    return [returns]


def _wandb_on(config: Any) -> bool:
    return any("Wandb" in str((c or {}).get("_target_", "")) for c in (config.get("logger") or {}).values())


def summarise(jobs: Sequence[SweepJob], sweep_dir: Path, max_failure_rate: float) -> None:
    """Log one line per job; raise `SweepFailed` (after the lines) when too many jobs failed."""
    lines, failed = [], []
    for job in jobs:
        path = sweep_dir / str(job.idx) / results.RESULT_FILE
        try:
            r = results.read(path)
            status, error = r["status"], r.get("error") or r.get("status_note")
        except results.ResultError as e:
            r, status, error = {}, "unreadable" if path.exists() else "missing", str(e) if path.exists() else None
        if status in (*results.FAILED_STATUSES, "unreadable", "missing"):
            failed.append(job.idx)
        value = results.objective(r)
        shown = f"{value:.4f}" if value is not None else "-"
        lines.append(f"  {job.idx:>4} {status:<11} {shown:>8}  {job.label}" + (f"  ({error})" if error else ""))
    completed = len(jobs) - len(failed)
    log.info("\n".join([f"sweep {sweep_dir}: {completed}/{len(jobs)} jobs without failure", *lines]))
    if jobs and len(failed) / len(jobs) > max_failure_rate:
        raise SweepFailed(f"{len(failed)} of {len(jobs)} jobs did not complete (jobs {failed[:10]}"
                          f"{' ...' if len(failed) > 10 else ''}); the sweep allows a failure rate of "
                          f"{max_failure_rate}; see their result.json under {sweep_dir}, fix the cause and relaunch "
                          "the same command to resume")
