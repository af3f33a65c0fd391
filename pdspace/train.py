"""`pdspace-train`: the Hydra entry point. One job = compose -> design -> patch -> train -> result.json.

A job dir holds one run: its `result.json` (status `running` while it trains), its resume
checkpoint and its W&B run. A failing job writes `status: failed` (with the error); an
interrupted one (SIGINT, SIGTERM) `status: interrupted`. In a multirun a failed job returns NaN
so the other jobs go on; a single run exits with one error line. A job dir that already holds
a completed run with the same settings is not trained again; one whose completed, running,
interrupted or pruned run was made with other settings is refused, naming the keys that differ. A
failed (or dry) run with other settings is kept beside it as `result.failed-<n>.json` (its
checkpoints likewise) and the job runs afresh: fix the cause, relaunch the same dir.

Bad input of a single run (what `check_config` finds) is one error line and writes nothing; a
sweep's job records it in its result.json, so the sweep's summary counts it. A write the disk
refuses (full, read-only) is one line naming the path. An unreadable resume checkpoint is moved
aside (`last.ckpt.unreadable-<time>`) and the job trains from scratch, saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pdspace import results, tracking
from pdspace.config import (CONF_DIR, check_config, differing_keys, fingerprint, fixed_sizes, one_line_errors,
                            plain)
from pdspace.design.space import Design, DesignSpace
from pdspace.errors import PDSpaceError
from pdspace.results import CHECKPOINT_FILE, PREDICTIONS_FILE, RESULT_FILE

log = logging.getLogger("pdspace")
FIT_STATE_FILE = "fit_state.json"
VERSIONED = ("pdspace", "torch", "lightning", "transformers", "peft", "optuna", "hydra-core", "omegaconf",
             "datasets", "torchmetrics", "wandb")


def build_design(cfg: DictConfig, num_layers: int) -> Design:
    """The run's design: each dimension's `choice` is a value, or a constraint drawn from with `design_seed`.

    The training `seed` plays no part, so a sweep over `seed` repeats one design.
    """
    space = DesignSpace(num_layers, int(cfg.num_groups), grouping=plain(cfg.grouping.choice),
                        allocation=plain(cfg.allocation.choice), tunable=plain(cfg.tunable.choice),
                        strategies=plain(cfg.strategy.choice))
    return space.sample_one(random.Random(int(cfg.design_seed)))


def design_dims(design: Design) -> dict[str, Any]:
    """Flat design dimensions (for W&B filters and tables)."""
    dims = {"design_id": str(design), "grouping": "-".join(map(str, design.groups)),
            "allocation": design.allocation, "tunable": "".join("1" if t else "0" for t in design.tunable)}
    dims.update({f"strategy_g{i + 1}": "+".join(s) or "-" for i, s in enumerate(design.strategies)})
    return dims


FULL_DESIGN_ID = "full"


class FullFinetune:
    """Full fine-tuning: every parameter trains; reports the counts the way `PatchReport` does."""

    def __init__(self, model: Any) -> None:
        from pdspace.peft.patch import count_params

        model.requires_grad_(True)
        self.backbone_params, self.head_params = count_params(model)

    def to_dict(self) -> dict[str, Any]:
        """The `params` entry of result.json: trainable = the whole backbone, fraction 1.0."""
        return {"backbone_params": self.backbone_params, "trainable_params": self.backbone_params,
                "head_params": self.head_params, "target_params": self.backbone_params, "budget_fraction": None,
                "fraction": 1.0, "layers": [], "notes": ["full fine-tuning: every backbone and head parameter trains"]}

    def table(self) -> str:
        """One line per count (what a dry run prints)."""
        return (f"design {FULL_DESIGN_ID} (full fine-tuning)\nbackbone params  {self.backbone_params:,}\n"
                f"trainable        {self.backbone_params:,} (100% of backbone)\ntask head        {self.head_params:,}")


def set_accumulation(trainer: Any, batch_size: int, effective: int | None) -> dict[str, Any]:
    """Set `accumulate_grad_batches` so that per-device batch x devices x steps reaches `effective`; the numbers."""
    world = int(trainer.world_size)
    if effective:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(f"data.effective_batch_size={effective} sets accumulate_grad_batches itself; drop "
                             f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}")
        trainer.accumulate_grad_batches = math.ceil(int(effective) / (batch_size * world))
    accumulate = int(trainer.accumulate_grad_batches)
    return {"per_device": batch_size, "devices": world, "accumulate_grad_batches": accumulate,
            "effective": batch_size * world * accumulate, "requested_effective": effective}


def _method(cfg: DictConfig) -> str | None:
    # the preset's `method:`, else the experiment preset's name (pdspace-report's default row label)
    if cfg.get("method"):
        return str(cfg.method)
    choice = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    return str(choice) if choice else None


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _global_rank() -> int:
    # SLURM-managed tasks (one process per GPU) each run the whole job; only rank 0 reports
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _output_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_dir") or ".")


class _Clock:
    """Wall time split into setup / train / eval."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = self.marks.get(name, 0.0) + now - getattr(self, "_last", self.t0)
        self._last = now


def _precision(trainer_cfg: DictConfig) -> str:
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    gpu = torch.cuda.is_available() and trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


class JobFailed(RuntimeError):
    """A single run failed; its result.json holds the traceback (`path`; None for a user error, whose message
    names the fix)."""

    def __init__(self, error: str, path: Path | None) -> None:
        super().__init__(error)
        self.path = path


class JobRefused(RuntimeError):
    """The job was not run and nothing was written: its dir is busy or holds a run with other settings."""


class JobInterrupted(BaseException):
    """SIGTERM or SIGINT reached a running job (a BaseException, like KeyboardInterrupt, so nothing swallows it)."""


# the signals that reached the running job: an exception raised in a signal handler can land where Python only
# prints it (a __del__, a weakref callback), so pdspace.module.InterruptCheck raises it again at the next batch
_PENDING: list[str] = []


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    # SIGTERM (a scheduler's stop, `kill`) and Ctrl-C end the job alike: result.json says interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _PENDING.append(signal.Signals(signum).name)
        raise JobInterrupted(_PENDING[-1])

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _PENDING.clear()


# what a replaced run leaves beside its result.json: kept under the same suffix, never resumed from
RUN_FILES = ("checkpoints/last.ckpt", CHECKPOINT_FILE, PREDICTIONS_FILE, FIT_STATE_FILE)


def _prior(out: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run already in `out` (None: none, unreadable, or a failed / dry run with other settings, which is kept
    aside); refuses a completed, running, interrupted or pruned one made with other settings."""
    path = out / RESULT_FILE
    if not path.exists():
        return None
    try:
        prior = results.read(path)
    except results.ResultError:
        return None  # half a file from a killed process: run the job again
    old = prior.get("config")
    if isinstance(old, dict) and fingerprint(old) != fingerprint(config):
        keys = differing_keys(old, config)
        changed = f"{'; '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        if prior["status"] in results.REPLACEABLE_STATUSES:
            kept = keep_aside(out, prior["status"])
            log.info("%s held a %s run made with other settings (%s); kept it as %s, this job runs afresh", out,
                     prior["status"], changed, kept)
            return None
        raise JobRefused(f"{out} holds a {prior['status']} run made with other settings ({changed}); relaunch with "
                         "the same settings to resume it, or choose a new dir (hydra.run.dir / hydra.sweep.dir)")
    return prior


def keep_aside(out: Path, status: str) -> Path:
    """Rename the run in `out` (result.json and its checkpoints) to `<name>.<status>-<n>`; the kept result's path."""
    n = 1
    while (out / f"result.{status}-{n}.json").exists():
        n += 1
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).replace(out / f"{name}.{status}-{n}")
    kept = out / f"result.{status}-{n}.json"
    (out / RESULT_FILE).replace(kept)
    return kept


def _where(out: Path) -> str:
    return f"run dir {out}; result {out / RESULT_FILE}"


def run(cfg: DictConfig) -> float:
    """One job: returns the best value of the task's objective (NaN when the job failed or was not run)."""
    out = _output_dir(cfg)
    if not _in_multirun():
        # bad input of a single run: one line (ConfigError), and nothing written; a sweep's job records it instead
        check_config(cfg)
    rank0 = _global_rank() == 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        with results.job_lock(out) if rank0 else contextlib.nullcontext():
            config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            prior = _prior(out, config) if rank0 else None
            if prior is not None and prior["status"] == "completed":
                log.info("already completed with the same settings, not trained again; %s", _where(out))
                value = results.objective(prior)
                return float("nan") if value is None else value
            return _job(cfg, out, config, prior, rank0)
    except (results.JobBusy, JobRefused) as e:
        if not _in_multirun():
            sys.exit(f"pdspace-train: error: {e}")
        log.error("job not run: %s", e)
        return float("nan")
    except OSError as e:
        # the disk refused the job's first write (its dir, lock or result.json): nothing ran
        line = results.disk_error(e, out, _dir_key())
        if line is None:
            raise
        if not _in_multirun():
            sys.exit(f"pdspace-train: error: {line}")
        log.error("job not run: %s", line)
        return float("nan")


def _dir_key() -> str:
    return "hydra.sweep.dir" if _in_multirun() else "hydra.run.dir"


def _write_final(out: Path, result: dict[str, Any]) -> str | None:
    """Write the job's last result.json; on a full disk try once more without the traceback. None, or why not."""
    try:
        results.write(out / RESULT_FILE, result)
        return None
    except OSError as e:
        line = results.disk_error(e, out, _dir_key()) or f"cannot write {out / RESULT_FILE}: {e}"
    try:
        results.write(out / RESULT_FILE, {k: v for k, v in result.items() if k != "traceback"})
        return None
    except OSError:
        return line


def _job(cfg: DictConfig, out: Path, config: dict[str, Any], prior: dict[str, Any] | None, rank0: bool) -> float:
    clock = _Clock()
    wandb_id = ((prior or {}).get("tracking") or {}).get("wandb_id") or tracking.new_run_id()
    result: dict[str, Any] = {
        "status": "running", "error": None, "seed": cfg.seed, "design_seed": cfg.design_seed,
        "task": OmegaConf.select(cfg, "task.name"), "backbone": OmegaConf.select(cfg, "backbone.name"),
        "budget_fraction": cfg.budget_fraction, "output_dir": str(out),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "labels": plain(cfg.get("labels")) or {}, "method": _method(cfg),
        "host": {"hostname": platform.node(), "pid": os.getpid()}, "config": config,
        "fingerprint": fingerprint(config), "tracking": {"wandb_id": wandb_id},
    }
    if rank0:
        results.write(out / RESULT_FILE, result)
    loggers: list[Any] = []
    trial: Any = None
    try:
        with _signals_interrupt():
            check_config(cfg)
            if cfg.get("space") and not _in_multirun():
                log.warning("space=%s samples designs only in a multirun (add -m); this run trains the design "
                            "the dimension groups give", cfg.space.get("name"))
            if not cfg.dry_run and rank0:
                group = Path(HydraConfig.get().sweep.dir).name if _in_multirun() else None
                loggers = tracking.make_loggers(cfg.get("logger"), out, name=f"{cfg.task.name}.{out.name}",
                                                group=group, run_id=wandb_id, config=config)
            if _in_multirun() and rank0:
                from pdspace.search.study import job_for

                # a study's job: its trial (asked below, once the backbone is known) picks or logs its design
                trial = job_for(cfg, Path(HydraConfig.get().sweep.dir), prior)
            objective = _run(cfg, out, result, loggers, clock, trial)
    except (JobInterrupted, KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C into SystemExit(1) after its own clean-up
        result["status"] = "interrupted"
        result["error"] = f"interrupted ({e if isinstance(e, JobInterrupted) else 'SIGINT'})"
        log.error("job interrupted; relaunch it in the same dir to resume from its last checkpoint (%s)",
                  "same hydra.sweep.dir" if _in_multirun() else f"hydra.run.dir={out}")
        raise
    except Exception as e:  # noqa: BLE001 - every failure must end in result.json
        objective = float("nan")
        if type(e).__name__ == "TrialPruned":
            # stopped by the study's pruner: neither a failure nor a finished design
            result["status"], result["error"] = "pruned", str(e)
            trial.tell("pruned")
            tracking.describe(loggers, tags=["pruned"])
        else:
            result["status"] = "failed"
            # a user error's message names the fix, so does a full or read-only disk; anything else keeps its type
            # (the traceback is in result.json)
            disk = results.disk_error(e, out, _dir_key()) or _stream_write_error(e, out)
            result["user_error"] = isinstance(e, PDSpaceError) or disk is not None
            result["error"] = disk or (str(e) if isinstance(e, PDSpaceError) else f"{type(e).__name__}: {e}")
            result["traceback"] = traceback.format_exc()
            if trial is not None:
                trial.tell("failed")
            if _in_multirun():
                log.error("job failed: %s (traceback in %s)", result["error"], out / RESULT_FILE)
    finally:
        clock.lap("teardown")
        result["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result["timings"] = {**result.get("timings", {}), "total_s": time.perf_counter() - clock.t0}
        unwritten = None
        if rank0:
            # a full disk must not hide the job's own error behind a traceback of this write
            unwritten = _write_final(out, result)
            if unwritten is None:
                log.info("%s: %s", result["status"], _where(out))
            else:
                log.error("%s, but its result.json could not be written: %s", result["status"], unwritten)
        tracking.finish(loggers, result["status"])
    if result["status"] == "failed" and not _in_multirun():
        raise JobFailed(result["error"], None if result.get("user_error") or unwritten else out / RESULT_FILE)
    if unwritten is not None:
        # trained, but nothing says so on disk: a sweep's summary counts the job as not completed
        if not _in_multirun():
            raise JobFailed(unwritten, None)
        return float("nan")
    return objective


def _stream_write_error(e: BaseException, out: Path) -> str | None:
    # torch.save reports a failed file write as a RuntimeError of its zip writer, without errno or path
    text = str(e)
    if not isinstance(e, RuntimeError) or not any(m in text for m in ("StreamWriter failed", "file write failed")):
        return None
    import shutil

    try:
        full = shutil.disk_usage(out).free < 1 << 20
    except OSError:
        full = False
    reason = "No space left on device" if full else text.strip().splitlines()[-1][:200]
    return (f"cannot write in {out}: {reason}; "
            f"{'free space or ' if full else ''}choose another {_dir_key()}")


def _run(cfg: DictConfig, out: Path, result: dict[str, Any], loggers: list[Any], clock: _Clock,
         trial: Any = None) -> float:
    import lightning as L

    from pdspace.backbones import backbone_for
    from pdspace.data import task_spec
    from pdspace.peft.families import layer_map
    from pdspace.peft.patch import apply_design

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    spec = task_spec(plain(cfg.task))
    bb = backbone_for(cfg.backbone, spec, int(cfg.seed), meta=bool(cfg.dry_run))
    result["backbone_cached"] = bb.cached
    peft = OmegaConf.to_container(cfg.peft, resolve=True)
    peft["sizes"] = fixed_sizes(peft.get("sizes"))
    if peft.pop("full_finetune", False):
        # full fine-tuning: a baseline outside the design space, so no design is built or patched
        report: Any = FullFinetune(bb.model)
        result.update(design_id=FULL_DESIGN_ID, design=None, design_dims={"design_id": FULL_DESIGN_ID})
    else:
        num_layers = len(layer_map(bb.model))
        design = (_trial_design(cfg, bb.model, num_layers, trial, out, result) if trial
                  else build_design(cfg, num_layers))
        result.update(design_id=str(design), design=design.to_dict(), design_dims=design_dims(design))
        report = apply_design(bb.model, design, cfg.budget_fraction, **peft)
    result["params"] = {k: v for k, v in report.to_dict().items() if k != "design"}
    tracking.describe(loggers, name=f"{cfg.task.name}.{result['design_id']}.seed{cfg.seed}",
                      config={**{f"design/{k}": v for k, v in result["design_dims"].items()},
                              **{f"params/{k}": result["params"][k] for k in ("backbone_params", "trainable_params",
                                                                              "head_params", "fraction")}})
    clock.lap("model_s")
    if cfg.dry_run:
        print(report.table())
        if trial is not None:
            trial.tell("failed")  # a dry run trains nothing: the study must not wait for it
        result["status"] = "dry_run"
        result["timings"] = dict(clock.marks)
        return float("nan")

    from pdspace.data import PDSpaceDataModule
    from pdspace.module import EvalTimer, FitState, InterruptCheck, PEFTModule, ResumeCheckpoint

    log.info("%s on %s\n%s", cfg.task.name, cfg.backbone.name, report.table())

    task = cfg.task
    dm = PDSpaceDataModule(
        spec, bb.tokenizer, text_to_text=bb.text_to_text, max_length=task.get("max_length"),
        max_target_length=task.get("max_target_length"), max_train_samples=task.get("max_train_samples"),
        max_eval_samples=task.get("max_eval_samples"), batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
        subset_seed=cfg.data.subset_seed, glue_dir=task.get("glue_dir"),
        files={"train": task.train, "validation": task.validation} if task.name == "files" else None,
        cache_dir=cfg.data.cache_dir, synthetic_size=task.get("synthetic_size"), seed=int(cfg.seed))
    dm.setup("fit")
    result["data"] = {"rows": dm.num_rows, "cache": dm.cache_info}
    clock.lap("data_s")

    ckpt = out / CHECKPOINT_FILE if cfg.save_checkpoint else None
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    lr_scale = optimizer.pop("lr_scale", None) or {}
    result["optimizer"] = learning_rates(bb.model, float(optimizer.get("lr", 0.0)), lr_scale)
    module = PEFTModule(bb.model, spec, bb.tokenizer, text_to_text=bb.text_to_text, lr_scale=lr_scale,
                        optimizer=hydra.utils.instantiate(optimizer), scheduler=cfg.scheduler.name,
                        warmup_ratio=cfg.scheduler.warmup_ratio, max_target_length=task.get("max_target_length"),
                        checkpoint_path=ckpt, generation=plain(task.get("generation")),
                        compile=bool(cfg.train.compile), compile_mode=cfg.train.compile_mode)
    timer = EvalTimer()
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [
        timer, FitState(out / FIT_STATE_FILE), InterruptCheck(_PENDING, JobInterrupted)] + (
        [trial.callback(module.objective)] if trial else [])
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(precision=_precision(cfg.trainer), default_root_dir=str(out))
    resume = cfg.get("ckpt_path")
    if resume:
        # last.ckpt (trainable tensors, optimizer, loops, RNG, metric history), every few steps and after each
        # validation; a relaunch continues from it at the same batch
        last = out / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(ResumeCheckpoint(last, int(cfg.checkpoint_every_n_steps)))
        if last.exists():
            step, why = _checkpoint_step(last)
            if why is None:
                result["resumed_from"] = {"path": str(last), "global_step": step}
                log.info("resuming from %s (step %s)", last, step)
            else:
                # a half-written or corrupted file: every relaunch would fail on it, so it goes aside
                aside = last.with_name(f"{last.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
                last.replace(aside)
                result["resumed_from"], result["discarded_checkpoint"] = None, str(aside)
                log.warning("checkpoint %s is unreadable (%s); moved it to %s, this job trains from scratch "
                            "(ckpt_path=null trains without resume checkpoints)", last, why, aside)
    trainer = hydra.utils.instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks,
                                      enable_progress_bar=bool(cfg.get("callbacks")))
    result["batch"] = set_accumulation(trainer, int(cfg.data.batch_size), cfg.data.get("effective_batch_size"))
    clock.lap("setup_s")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=(result.get("resumed_from") or {}).get("path"))
    except Exception as e:
        if type(e).__name__ == "TrialPruned":
            # the curve up to the pruning point, for the study report and the design table
            result["metrics"] = {"per_epoch": module.history, "best": module.best}
            result["objective"] = {"name": module.objective, "value": None}
            result["pruned_at"] = len(module.history)
            result["global_step"] = trainer.global_step
        raise
    clock.lap("fit_s")
    if not module.history and (out / FIT_STATE_FILE).exists():
        # a spawning strategy (ddp_spawn) trained copies of the module: rank 0 left its metrics on disk
        state = json.loads((out / FIT_STATE_FILE).read_text())
        module.history, module.best = state["history"], state["best"]
    if not module.history:
        raise RuntimeError("training ended without a validation epoch; set trainer.limit_val_batches > 0 and "
                           "trainer.max_epochs >= 1")
    fit = clock.marks.pop("fit_s")
    result["timings"] = {**clock.marks, "train_s": fit - timer.seconds, "eval_s": timer.seconds}
    result["metrics"] = {"per_epoch": module.history, "best": module.best}
    result["world_size"] = trainer.world_size
    result["global_step"] = trainer.global_step
    if module.compile:
        result["compile"] = module.compile_stats()
    best = module.best[module.objective]
    result["objective"] = {"name": module.objective, "value": best}
    predictions = module.predictions()
    if predictions is not None and _global_rank() == 0:
        results.write_arrays(out / PREDICTIONS_FILE, predictions)
        result["predictions"] = PREDICTIONS_FILE
    if ckpt is not None and ckpt.exists():
        result["checkpoint"] = str(ckpt)
    if trial is not None:
        from pdspace.search.study import objective_values

        trial.tell("completed", objective_values(trial.spec, result))
    result["status"] = "completed"
    log.info("best %s = %.4f (epoch %d)", module.objective, best, module.best["epoch"])
    return best


def _checkpoint_step(path: Path) -> tuple[Any, str | None]:
    """(global step, None) of a readable Lightning checkpoint; (None, why) for one that cannot be resumed from."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle, zip and EOF errors alike: the file cannot be resumed from
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return None, f"{type(e).__name__}: {first}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return None, "not a Lightning checkpoint"
    return ckpt["global_step"], None


def learning_rates(model: Any, lr: float, lr_scale: Mapping[str, float]) -> dict[str, Any]:
    """The effective learning rate of every optimizer group (what result.json records)."""
    from pdspace.module import learning_rate_groups

    return {"lr": lr, "groups": {g["name"]: {"lr": lr * g["lr_scale"], "lr_scale": g["lr_scale"], "params": g["numel"]}
                                 for g in learning_rate_groups(model, lr_scale)}}


def _trial_design(cfg: DictConfig, model: Any, num_layers: int, trial: Any, out: Path,
                  result: dict[str, Any]) -> Design:
    """A study job's design: suggested by its trial (tpe/gp), or the plan's (random search), logged to the trial."""
    from pdspace.search.plans import design_check, space_of

    if trial.spec.search == "random":
        design = trial.ask(None, lambda d: None, fixed=build_design(cfg, num_layers))
    else:
        space = space_of(cfg.space, num_layers, int(cfg.num_groups))
        design = trial.ask(space, design_check(model, cfg.budget_fraction, cfg.get("peft")))
    chosen = trial.ask_learning_rates(float(cfg.optimizer.lr),
                                      [ch for i, st in enumerate(design.strategies) if design.tunable[i] for ch in st])
    for key, value in chosen.items():
        OmegaConf.update(cfg, f"optimizer.{key}", value, force_add=True)
    result["trial"] = {**trial.info(), **({"learning_rates": chosen} if chosen else {})}
    # recorded while running: a killed job's relaunch finds its trial, fails it and trains its parameters again
    results.write(out / RESULT_FILE, {**result, "status": "running"})
    return design


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra task function."""
    try:
        return run(cfg)
    except JobFailed as e:
        # SystemExit passes through Hydra's handler: one error line instead of a traceback wall
        sys.exit(f"pdspace-train: error: {e}" + (f" (traceback in {e.path})" if e.path else ""))
    except PDSpaceError as e:
        # bad input that a single run refuses before writing anything (a sweep's job records it instead)
        sys.exit(f"pdspace-train: error: {e}")


def cli() -> None:
    """Console script `pdspace-train`: bad input and a failed single run exit 1 with one error line."""
    tracking.quiet()
    with one_line_errors("pdspace-train"):
        try:
            main()
        except JobInterrupted as e:
            sys.stderr.write(f"pdspace-train: interrupted by {e}\n")
            raise SystemExit(128 + getattr(signal, str(e), signal.SIGTERM)) from None


if __name__ == "__main__":
    cli()
