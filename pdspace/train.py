"""`pdspace-train`: the Hydra entry point. One job = compose -> design -> patch -> train -> result.json.

A failing job writes `status: failed` (with the error) to its `result.json`; in a multirun
it returns NaN so the other jobs go on, in a single run it exits with one error line.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import platform
import random
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from pdspace.design.space import Design, DesignSpace

log = logging.getLogger("pdspace")
# the packaged configs (pdspace/conf links to the top-level conf/)
CONF_DIR = Path(__file__).resolve().parent / "conf"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "best_trainable.pt"
FIT_STATE_FILE = "fit_state.json"
VERSIONED = ("pdspace", "torch", "lightning", "transformers", "hydra-core", "omegaconf", "datasets",
             "torchmetrics", "wandb")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def build_design(cfg: DictConfig, num_layers: int) -> Design:
    """The run's design: each dimension's `choice` is a value or a constraint sampled with `seed`."""
    space = DesignSpace(num_layers, int(cfg.num_groups), grouping=_plain(cfg.grouping.choice),
                        allocation=_plain(cfg.allocation.choice), tunable=_plain(cfg.tunable.choice),
                        strategies=_plain(cfg.strategy.choice))
    return space.sample_one(random.Random(int(cfg.seed)))


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


def finite(x: Any) -> Any:
    """`x` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write `result.json` atomically (a sweep reader never sees half a file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(result), indent=2, default=str))
    tmp.replace(path)


def _global_rank() -> int:
    # SLURM-managed tasks (one process per GPU) each run the whole job; only rank 0 reports
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _output_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_dir") or ".")


def wandb_mode(explicit: str | None) -> str:
    """The W&B mode to use: the explicit one, $WANDB_MODE, online with an API key, else offline."""
    if explicit:
        return explicit
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    # no API key: keep the run locally; `wandb sync` uploads it later
    return "offline"


def make_loggers(cfg: DictConfig, out: Path, run_name: str) -> list[Any]:
    """Instantiate the configured Lightning loggers with pdspace's defaults filled in."""
    loggers = []
    for key, conf in (cfg.get("logger") or {}).items():
        conf = OmegaConf.to_container(conf, resolve=True)
        target = conf.get("_target_", "")
        if conf.get("save_dir") is None:
            conf["save_dir"] = str(out)
        if target.endswith("WandbLogger"):
            conf["mode"] = wandb_mode(conf.get("mode"))
            if conf.get("group") is None and _in_multirun():
                conf["group"] = Path(HydraConfig.get().sweep.dir).name
            conf["name"] = conf.get("name") or run_name
        logger = hydra.utils.instantiate(conf)
        if target.endswith("WandbLogger"):
            # start the W&B run now, so that a job failing before training still shows up (as failed)
            logger.experiment
        loggers.append(logger)
    return loggers


def _finish(loggers: list[Any], failed: bool) -> None:
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            # a failed job still ends its W&B run, marked failed, so dashboards show it
            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
        else:
            lg.finalize("failed" if failed else "success")


class _Clock:
    """Wall time split into setup / train / eval."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = self.marks.get(name, 0.0) + now - getattr(self, "_last", self.t0)
        self._last = now


def _task_spec(task: DictConfig) -> Any:
    from pdspace.data import files_task, get_task

    if task.name == "files":
        return files_task("files", task.kind, tuple(task.text_fields), task.label_field, int(task.num_labels),
                          tuple(task.get("label_words") or ()))
    return get_task(task.name)


def _precision(trainer_cfg: DictConfig) -> str:
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    gpu = torch.cuda.is_available() and trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def run(cfg: DictConfig) -> float:
    """One job: returns the best value of the task's objective (NaN when the job failed)."""
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    result: dict[str, Any] = {
        "status": "running", "error": None, "seed": int(cfg.seed), "task": cfg.task.name,
        "backbone": cfg.backbone.name, "budget_fraction": cfg.budget_fraction, "output_dir": str(out),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "labels": _plain(cfg.get("labels")) or {}, "method": _method(cfg),
        "host": {"hostname": platform.node(), "pid": os.getpid()},
    }
    loggers: list[Any] = []
    failed = False
    try:
        result["config"] = OmegaConf.to_container(cfg, resolve=True)
        run_name = f"{cfg.task.name}.{cfg.backbone.name}.seed{cfg.seed}"
        if cfg.get("space") and not _in_multirun():
            log.warning("space=%s samples designs only in a multirun (add -m); this run trains the design "
                        "the dimension groups give", cfg.space.get("name"))
        if not cfg.dry_run:
            loggers = make_loggers(cfg, out, run_name)
        objective = _run(cfg, out, result, loggers, clock)
    except Exception as e:  # noqa: BLE001 - every failure must end in result.json
        failed = True
        result["status"] = "failed"
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        objective = float("nan")
        if _in_multirun():
            log.error("job failed: %s (traceback in %s)", result["error"], out / RESULT_FILE)
    finally:
        clock.lap("teardown")
        result["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result["timings"] = {**result.get("timings", {}), "total_s": time.perf_counter() - clock.t0}
        if _global_rank() == 0:
            write_result(out / RESULT_FILE, result)
        _finish(loggers, failed)
    if failed and not _in_multirun():
        raise JobFailed(result["error"], out / RESULT_FILE)
    return objective


class JobFailed(RuntimeError):
    """A single run failed; its result.json holds the traceback."""

    def __init__(self, error: str, path: Path) -> None:
        super().__init__(error)
        self.path = path


def _run(cfg: DictConfig, out: Path, result: dict[str, Any], loggers: list[Any], clock: _Clock) -> float:
    import lightning as L

    from pdspace.backbones import load_backbone
    from pdspace.peft.families import layer_map
    from pdspace.peft.patch import apply_design

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    spec = _task_spec(cfg.task)
    bb_cfg = cfg.backbone
    bb = load_backbone(bb_cfg.name, bb_cfg.path, arch=bb_cfg.arch, tokenizer=bb_cfg.tokenizer,
                       num_labels=spec.num_labels if spec.kind == "classification" else 1,
                       text_to_text=True if spec.kind == "seq2seq" else None, seed=int(cfg.seed),
                       overrides=_plain(bb_cfg.get("overrides")) or None, meta=bool(cfg.dry_run))
    result["backbone_cached"] = bb.cached
    peft = OmegaConf.to_container(cfg.peft, resolve=True)
    if peft.pop("full_finetune", False):
        # full fine-tuning: a baseline outside the design space, so no design is built or patched
        report: Any = FullFinetune(bb.model)
        result.update(design_id=FULL_DESIGN_ID, design=None, design_dims={"design_id": FULL_DESIGN_ID})
    else:
        num_layers = len(layer_map(bb.model))
        design = build_design(cfg, num_layers)
        result.update(design_id=str(design), design=design.to_dict(), design_dims=design_dims(design))
        report = apply_design(bb.model, design, cfg.budget_fraction, **peft)
    result["params"] = {k: v for k, v in report.to_dict().items() if k != "design"}
    clock.lap("model_s")
    if cfg.dry_run:
        print(report.table())
        result["status"] = "dry_run"
        result["timings"] = dict(clock.marks)
        return float("nan")

    from pdspace.data import PDSpaceDataModule
    from pdspace.module import EvalTimer, FitState, PEFTModule

    log.info("%s on %s\n%s", cfg.task.name, cfg.backbone.name, report.table())

    task = cfg.task
    dm = PDSpaceDataModule(
        spec, bb.tokenizer, text_to_text=bb.text_to_text, max_length=task.get("max_length"),
        max_target_length=task.get("max_target_length"), max_train_samples=task.get("max_train_samples"),
        max_eval_samples=task.get("max_eval_samples"), batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
        subset_seed=cfg.data.subset_seed, glue_dir=task.get("glue_dir"),
        files={"train": task.train, "validation": task.validation} if task.name == "files" else None,
        cache_dir=cfg.data.cache_dir, synthetic_size=task.get("synthetic_size"))
    dm.setup("fit")
    result["data"] = {"rows": dm.num_rows, "cache": dm.cache_info}
    clock.lap("data_s")

    ckpt = out / CHECKPOINT_FILE if cfg.save_checkpoint else None
    module = PEFTModule(bb.model, spec, bb.tokenizer, text_to_text=bb.text_to_text,
                        optimizer=hydra.utils.instantiate(cfg.optimizer), scheduler=cfg.scheduler.name,
                        warmup_ratio=cfg.scheduler.warmup_ratio, max_target_length=task.get("max_target_length"),
                        checkpoint_path=ckpt)
    hparams = {**result["config"], **{f"design/{k}": v for k, v in result["design_dims"].items()},
               **{f"params/{k}": result["params"][k] for k in ("backbone_params", "trainable_params",
                                                                "head_params", "fraction")}}
    for lg in loggers:
        lg.log_hyperparams(hparams)
    timer = EvalTimer()
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [
        timer, FitState(out / FIT_STATE_FILE)]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(precision=_precision(cfg.trainer), default_root_dir=str(out))
    resume = cfg.get("ckpt_path")
    if resume:
        from lightning.pytorch.callbacks import ModelCheckpoint

        # last.ckpt only (trainable tensors + optimizer + loops), refreshed every few steps
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                         every_n_train_steps=int(cfg.checkpoint_every_n_steps)))
        trainer_cfg["enable_checkpointing"] = True
        found = sorted((out / "checkpoints").glob("last*.ckpt"))
        if found:
            step = torch.load(found[-1], map_location="cpu", weights_only=False).get("global_step")
            result["resumed_from"] = {"path": str(found[-1]), "global_step": step}
            log.info("resuming from %s (step %s)", found[-1], step)
    trainer = hydra.utils.instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks,
                                      enable_progress_bar=bool(cfg.get("callbacks")))
    result["batch"] = set_accumulation(trainer, int(cfg.data.batch_size), cfg.data.get("effective_batch_size"))
    clock.lap("setup_s")
    trainer.fit(module, datamodule=dm, ckpt_path=resume if resume and result.get("resumed_from") else None)
    clock.lap("fit_s")
    if not module.history and (out / FIT_STATE_FILE).exists():
        # a spawning strategy (ddp_spawn) trained copies of the module: rank 0 left its metrics on disk
        state = json.loads((out / FIT_STATE_FILE).read_text())
        module.history, module.best = state["history"], state["best"]
    if not module.history:
        raise RuntimeError("training ended without a validation epoch; set trainer.limit_val_batches > 0")
    fit = clock.marks.pop("fit_s")
    result["timings"] = {**clock.marks, "train_s": fit - timer.seconds, "eval_s": timer.seconds}
    result["metrics"] = {"per_epoch": module.history, "best": module.best}
    result["world_size"] = trainer.world_size
    result["global_step"] = trainer.global_step
    best = module.best[module.objective]
    result["objective"] = {"name": module.objective, "value": best}
    if ckpt is not None and ckpt.exists():
        result["checkpoint"] = str(ckpt)
    result["status"] = "completed"
    log.info("best %s = %.4f (epoch %d)", module.objective, best, module.best["epoch"])
    return best


class SweepSummary(Callback):
    """At the end of a multirun, print one line per job from the jobs' result.json files."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        paths = sorted(sweep.glob(f"*/{RESULT_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name))
        rows = [json.loads(p.read_text()) for p in paths]
        done = sum(r.get("status") == "completed" for r in rows)
        lines = [f"sweep {sweep}: {done}/{len(rows)} jobs completed"]
        for r in rows:
            value = (r.get("objective") or {}).get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else "-"
            lines.append(f"  {Path(r['output_dir']).name:>4} {r['status']:<9} {shown:>8}  {r.get('design_id', '-')}"
                         + (f"  ({r['error']})" if r.get("error") else ""))
        log.info("\n".join(lines))


def _quiet() -> None:
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*srun.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra task function."""
    try:
        return run(cfg)
    except JobFailed as e:
        # SystemExit passes through Hydra's handler: one error line instead of a traceback wall
        sys.exit(f"pdspace-train: error: {e}\n(traceback in {e.path})")


def cli() -> None:
    """Console script `pdspace-train`: a failed single run exits 1 with one error line."""
    _quiet()
    _check_overrides(sys.argv[1:])
    main()


def _check_overrides(argv: list[str]) -> None:
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = get_args_parser().parse_known_args(argv)[0].overrides
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as e:
            reason = str(e).splitlines()[0]
            sys.exit(f"pdspace-train: error: malformed override {override!r} ({reason}); write key=value, "
                     "quote lists for the shell (e.g. 'grouping.choice=[1,2,2,1]'), see "
                     "https://hydra.cc/docs/advanced/override_grammar/basic/")


if __name__ == "__main__":
    cli()
