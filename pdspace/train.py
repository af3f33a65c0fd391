"""`pdspace-train`: the Hydra entry point and the pipeline of one run.

The pipeline reads top to bottom in `_run`: seed -> backbone -> design -> patch -> data -> module ->
trainer -> fit -> result; each step returns what the next needs. The job's life around it (its dir's
lock, the run already there, status, signals, errors, timings, the last result.json) is `pdspace.job`'s:
in a multirun a failed job returns NaN so the others go on, a single run exits with one error line. A
study's job talks to its trial through one object (`pdspace.search.study.TrialJob`).

Bad input of a single run (what `check_config` finds) is one error line and writes nothing; a sweep's job
records it in its result.json, so the sweep's summary counts it. An unreadable resume checkpoint is moved
aside (`last.ckpt.unreadable-<time>`) and the job trains from scratch, saying so.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pdspace import results, tracking
from pdspace.config import CONF_DIR, check_config, fixed_sizes, one_line_errors, plain
from pdspace.design.space import Design, DesignSpace
from pdspace.errors import PDSpaceError, exit_error, exit_interrupted
from pdspace.job import PENDING, Job, JobFailed, JobInterrupted, JobRefused, RunPruned, run_job
from pdspace.peft.full import FULL_DESIGN_ID, FullFinetune
from pdspace.results import CHECKPOINT_FILE, FIT_STATE_FILE, LAST_CHECKPOINT, PREDICTIONS_FILE

log = logging.getLogger("pdspace")


def run(cfg: DictConfig) -> float:
    """One job: returns the best value of the task's objective (NaN when the job failed or was not run)."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        # bad input of a single run: one line (ConfigError), and nothing written; a sweep's job records it instead
        check_config(cfg)
    out = Path(HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.get("output_dir") or ".")
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    # SLURM-managed tasks (one process per GPU) each run the whole job; only rank 0 reports
    rank0 = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0
    return run_job(out, config, lambda job: _run(cfg, job), lambda prior: _fields(cfg, prior), multirun=multirun,
                   rank0=rank0)


def _run(cfg: DictConfig, job: Job) -> float:
    import lightning as L

    from pdspace.backbones import backbone_for
    from pdspace.data import PDSpaceDataModule, task_spec
    from pdspace.module import PEFTModule

    trial = _start(cfg, job)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    spec = task_spec(plain(cfg.task))
    bb = backbone_for(cfg.backbone, spec, int(cfg.seed), meta=bool(cfg.dry_run))
    design = _design(cfg, bb.model, trial, job)
    report = _patch(cfg, bb.model, design)
    job.record.update(backbone_cached=bb.cached, **_design_fields(design),
                      params={k: v for k, v in report.to_dict().items() if k != "design"})
    tracking.describe_job(job.loggers, f"{cfg.task.name}.{job.record['design_id']}.seed{cfg.seed}", job.record)
    job.clock.lap("model_s")
    if cfg.dry_run:
        print(report.table())
        job.record.update(status="dry_run", timings=dict(job.clock.marks))
        return float("nan")
    log.info("%s on %s\n%s", cfg.task.name, cfg.backbone.name, report.table())
    dm = PDSpaceDataModule.from_config(cfg.task, cfg.data, spec, bb, seed=int(cfg.seed))
    job.record["data"] = {"rows": dm.num_rows, "cache": dm.cache_info}
    job.clock.lap("data_s")
    module = PEFTModule.from_config(cfg, spec, bb, job.out / CHECKPOINT_FILE if cfg.save_checkpoint else None)
    trainer, timer, resume = _trainer(cfg, job, module, trial)
    job.clock.lap("setup_s")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
    except RunPruned:
        # the curve up to the pruning point, for the study report and the design table
        job.record.update(metrics={"per_epoch": module.history, "best": module.best}, pruned_at=len(module.history),
                          objective={"name": module.objective, "value": None}, global_step=trainer.global_step)
        raise
    job.clock.lap("fit_s")
    job.record.update(_outcome(cfg, job, module, trainer, timer))
    best = job.record["objective"]["value"]
    log.info("best %s = %.4f (epoch %d)", module.objective, best, module.best["epoch"])
    return best


# ------------------------------------------------------------------------------------------- steps


def _fields(cfg: DictConfig, prior: Mapping[str, Any] | None) -> dict[str, Any]:
    """The record's own first fields (the job shell adds status, host, versions, config ...)."""
    wandb_id = ((prior or {}).get("tracking") or {}).get("wandb_id") or tracking.new_run_id()
    # the preset's `method:`, else the experiment preset's name (pdspace-report's default row label)
    preset = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    return {"seed": cfg.seed, "design_seed": cfg.design_seed, "task": OmegaConf.select(cfg, "task.name"),
            "backbone": OmegaConf.select(cfg, "backbone.name"), "budget_fraction": cfg.budget_fraction,
            "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
            "labels": plain(cfg.get("labels")) or {}, "method": str(cfg.get("method") or preset or "") or None,
            "tracking": {"wandb_id": wandb_id}}


def _start(cfg: DictConfig, job: Job) -> Any:
    """Checks, loggers, and a study's trial (None outside a study), told how the job ends."""
    check_config(cfg)
    if cfg.get("space") and not job.multirun:
        log.warning("space=%s samples designs only in a multirun (add -m); this run trains the design the "
                    "dimension groups give", cfg.space.get("name"))
    if not job.rank0:
        return None
    if not cfg.dry_run:
        group = Path(HydraConfig.get().sweep.dir).name if job.multirun else None
        job.loggers += tracking.make_loggers(cfg.get("logger"), job.out, name=f"{cfg.task.name}.{job.out.name}",
                                             group=group, run_id=job.record["tracking"]["wandb_id"],
                                             config=job.record["config"])
    if not job.multirun:
        return None
    from pdspace.search.study import job_for

    trial = job_for(cfg, Path(HydraConfig.get().sweep.dir), job.prior)
    if trial is not None:
        job.on_end.append(trial.end)
    return trial


def build_design(cfg: DictConfig, num_layers: int) -> Design:
    """The run's design: each dimension's `choice` is a value, or a constraint drawn from with `design_seed`.

    The training `seed` plays no part, so a sweep over `seed` repeats one design.
    """
    choices = {d: plain(cfg[d].choice) for d in ("grouping", "allocation", "tunable", "strategy")}
    space = DesignSpace.from_block(choices, num_layers, int(cfg.num_groups))
    return space.sample_one(random.Random(int(cfg.design_seed)))


def _design(cfg: DictConfig, model: Any, trial: Any, job: Job) -> Design | None:
    """The design to patch (None: full fine-tuning): the dimension groups', or the study trial's."""
    from pdspace.peft.families import layer_map

    if cfg.peft.full_finetune:
        return None  # a baseline outside the design space: no design is built or patched
    num_layers = len(layer_map(model))
    if trial is None:
        return build_design(cfg, num_layers)
    design, chosen = trial.design(cfg, model, num_layers, planned=lambda: build_design(cfg, num_layers))
    for key, value in chosen.items():
        OmegaConf.update(cfg, f"optimizer.{key}", value, force_add=True)
    job.record["trial"] = {**trial.info(), **({"learning_rates": chosen} if chosen else {})}
    # recorded while running: a killed job's relaunch finds its trial, fails it and trains its parameters again
    job.save()
    return design


def _patch(cfg: DictConfig, model: Any, design: Design | None) -> Any:
    """Insert the design's modules (sized by the budget solver, or `peft.sizes`); what it built."""
    from pdspace.peft.patch import apply_design

    if design is None:
        return FullFinetune(model)  # every parameter trains
    peft = OmegaConf.to_container(cfg.peft, resolve=True)
    peft.pop("full_finetune", None)
    peft["sizes"] = fixed_sizes(peft.get("sizes"))
    return apply_design(model, design, cfg.budget_fraction, **peft)


def _design_fields(design: Design | None) -> dict[str, Any]:
    if design is None:
        return {"design_id": FULL_DESIGN_ID, "design": None, "design_dims": {"design_id": FULL_DESIGN_ID}}
    return {"design_id": str(design), "design": design.to_dict(), "design_dims": design_dims(design)}


def design_dims(design: Design) -> dict[str, Any]:
    """Flat design dimensions (for W&B filters and tables)."""
    dims = {"design_id": str(design), "grouping": "-".join(map(str, design.groups)),
            "allocation": design.allocation, "tunable": design.mask}
    dims.update({f"strategy_g{i + 1}": "+".join(s) or "-" for i, s in enumerate(design.strategies)})
    return dims


def _trainer(cfg: DictConfig, job: Job, module: Any, trial: Any) -> tuple[Any, Any, str | None]:
    """The Lightning trainer (`trainer:` plus pdspace's callbacks), its eval timer, and the checkpoint to resume
    from (None: from scratch)."""
    from pdspace.callbacks import EvalTimer, FitState, InterruptCheck, ResumeCheckpoint
    from pdspace.module import set_accumulation

    timer = EvalTimer()
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [
        timer, FitState(job.out / FIT_STATE_FILE), InterruptCheck(PENDING, JobInterrupted)] + (
        [trial.callback(module.objective)] if trial else [])
    resume = None
    if cfg.get("ckpt_path"):
        # last.ckpt every few steps and after each validation: a relaunch continues from it at the same batch
        keeper = ResumeCheckpoint(job.out / LAST_CHECKPOINT, int(cfg.checkpoint_every_n_steps))
        callbacks.append(keeper)
        resume, found = keeper.resume_point()
        job.record.update(found)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(precision=_precision(cfg.trainer), default_root_dir=str(job.out))
    trainer = hydra.utils.instantiate(trainer_cfg, logger=job.loggers or False, callbacks=callbacks,
                                      enable_progress_bar=bool(cfg.get("callbacks")))
    job.record["optimizer"] = module.learning_rates
    job.record["batch"] = set_accumulation(trainer, int(cfg.data.batch_size), cfg.data.get("effective_batch_size"))
    return trainer, timer, resume


def _outcome(cfg: DictConfig, job: Job, module: Any, trainer: Any, timer: Any) -> dict[str, Any]:
    """What the fit leaves in result.json: metrics, the objective, timings, predictions, the checkpoint."""
    from pdspace.callbacks import FitState

    out = job.out
    FitState(out / FIT_STATE_FILE).restore(module)
    if not module.history:
        raise RuntimeError("training ended without a validation epoch; set trainer.limit_val_batches > 0 and "
                           "trainer.max_epochs >= 1")
    marks = dict(job.clock.marks)
    fit = marks.pop("fit_s")
    done = {"timings": {**marks, "train_s": fit - timer.seconds, "eval_s": timer.seconds},
            "metrics": {"per_epoch": module.history, "best": module.best}, "world_size": trainer.world_size,
            "global_step": trainer.global_step, "objective": {"name": module.objective,
                                                              "value": module.best[module.objective]}}
    if module.compile:
        done["compile"] = module.compile_stats()
    predictions = module.predictions()
    if predictions is not None and job.rank0:
        results.write_arrays(out / PREDICTIONS_FILE, predictions)
        done["predictions"] = PREDICTIONS_FILE
    if cfg.save_checkpoint and (out / CHECKPOINT_FILE).exists():
        done["checkpoint"] = str(out / CHECKPOINT_FILE)
    return done


# ------------------------------------------------------------------------------------------- parts


def _precision(trainer_cfg: DictConfig) -> str:
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    gpu = torch.cuda.is_available() and trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


# ------------------------------------------------------------------------------------------- entry


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra task function."""
    try:
        return run(cfg)
    except JobFailed as e:
        # SystemExit passes through Hydra's handler: one error line instead of a traceback wall
        exit_error("pdspace-train", f"{e}" + (f" (traceback in {e.path})" if e.path else ""))
    except (JobRefused, PDSpaceError) as e:
        # a busy or refused dir, or bad input that a single run refuses before writing anything
        exit_error("pdspace-train", e)


def cli() -> None:
    """Console script `pdspace-train` (exit codes: `pdspace.errors`)."""
    import signal

    tracking.quiet()
    with one_line_errors("pdspace-train"):
        try:
            main()
        except JobInterrupted as e:
            exit_interrupted("pdspace-train", int(getattr(signal, str(e), signal.SIGTERM)))


if __name__ == "__main__":
    cli()
