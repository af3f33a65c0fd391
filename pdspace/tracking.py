"""Loggers (W&B, CSV) for runs and reports: W&B mode, one run per job dir, names, tags, the objective key.

W&B is a mirror of the result files: a failure to log never fails a job or a report.
"""

from __future__ import annotations

import logging
import netrc
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import OmegaConf

log = logging.getLogger("pdspace")
# every run logs its task objective under this key, with a `max` summary: dashboards sort any sweep by it
OBJECTIVE_KEY = "objective"


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


def new_run_id() -> str:
    """A fresh W&B run id (kept in result.json, so a resumed job continues the same run)."""
    return uuid.uuid4().hex[:12]


def make_loggers(logger_cfg: Any, out: Path, *, name: str, group: str | None, run_id: str | None,
                 config: dict[str, Any]) -> list[Any]:
    """Instantiate the configured Lightning loggers; a W&B run starts now, with `config` logged, resuming `run_id`."""
    loggers = []
    for conf in (logger_cfg or {}).values():
        conf = OmegaConf.to_container(conf, resolve=True) if OmegaConf.is_config(conf) else dict(conf)
        target = conf.get("_target_", "")
        if conf.get("save_dir") is None:
            conf["save_dir"] = str(out)
        wandb = target.endswith("WandbLogger")
        if wandb:
            conf["mode"] = wandb_mode(conf.get("mode"))
            conf["group"] = conf.get("group") or group
            conf["name"] = conf.get("name") or name
            if run_id:
                conf.update(id=run_id, resume="allow")
        logger = hydra.utils.instantiate(conf)
        if wandb:
            # the run starts before anything can fail, with the composed config, so a failed job shows its design
            run = logger.experiment
            run.config.update(config, allow_val_change=True)
            run.define_metric(OBJECTIVE_KEY, summary="max")
        loggers.append(logger)
    return loggers


def wandb_run(loggers: list[Any]) -> Any:
    """The W&B run among `loggers` (None without one)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            return lg.experiment
    return None


def describe(loggers: list[Any], *, name: str | None = None, config: dict[str, Any] | None = None,
             tags: list[str] | None = None) -> None:
    """Rename the W&B run, add config entries and tags (no-op without W&B)."""
    run = wandb_run(loggers)
    if run is None:
        return
    try:
        if name:
            run.name = name
        if config:
            run.config.update(config, allow_val_change=True)
        if tags:
            run.tags = tuple(sorted(set(run.tags or ()) | set(tags)))
    except Exception as e:  # noqa: BLE001 - W&B is a mirror
        warnings.warn(f"W&B update failed ({type(e).__name__}: {e})", stacklevel=2)


def describe_job(loggers: list[Any], name: str, record: dict[str, Any]) -> None:
    """Name a job's W&B run and add its design dimensions and parameter counts as config columns."""
    params = {f"params/{k}": record["params"][k] for k in ("backbone_params", "trainable_params", "head_params",
                                                          "fraction")}
    describe(loggers, name=name, config={**{f"design/{k}": v for k, v in record["design_dims"].items()}, **params})


def finish(loggers: list[Any], status: str) -> None:
    """End every logger; a W&B run of a failed or interrupted job is marked failed (exit code 1)."""
    bad = status in ("failed", "interrupted")
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if bad else 0)
        else:
            lg.finalize("failed" if bad else "success")


def log_report(job_type: str, name: str, fill: Callable[[Any, Any], None], *, what: str,
               sweep: Path | None = None, config: dict[str, Any] | None = None) -> None:
    """One W&B run of a report (pdspace-report, a study's report, a refinement): `fill(run, wandb)` logs into
    it; `what` names it in a warning. The mode as for jobs; grouped under the sweep dir's name, if any. A
    failure only warns: W&B mirrors the files on disk, which are the result."""
    try:
        import wandb

        where = {"group": sweep.resolve().name, "dir": str(sweep)} if sweep is not None else {}
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pdspace"), job_type=job_type, name=name,
                         mode=wandb_mode(None), reinit="create_new", config=config or {}, **where)
        fill(run, wandb)
        run.finish()
    except Exception as e:  # noqa: BLE001 - W&B is a mirror
        warnings.warn(f"W&B logging of {what} failed ({type(e).__name__}: {e}); the files on disk "
                      "stand", stacklevel=2)


def quiet() -> None:
    """Keep transformers, tokenizers and Lightning to what a pdspace user needs to read."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_warnings()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def quiet_warnings() -> None:
    """The warnings filters of `quiet()` alone (no import): upstream deprecations a pdspace user cannot act on."""
    _ignore(".*does not have many workers.*")
    _ignore(".*srun.*")
    # peft's PeftModel reads transformers' deprecated name (transformers 5.2x); nothing a pdspace user can change
    _ignore(".*is_gradient_checkpointing.*", FutureWarning)
    # Lightning 2.6 reads torch's deprecated pytree name (torch 2.13); nothing a pdspace user can change
    _ignore(r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    _quiet_launcher_schemas()


def _quiet_launcher_schemas() -> None:
    # pdspace's launcher configs (conf/hydra/launcher/joblib.yaml, ...) keep the plugins' names, so Hydra 1.3
    # validates them against each plugin's schema of that name, as pdspace wants, and warns that 1.1 deprecated it
    _ignore(r"\s*'hydra/launcher/[^']+' is validated against ConfigStore schema with the same name")


def _ignore(message: str, category: type[Warning] = Warning) -> None:
    """`warnings.filterwarnings("ignore", ...)` where that filter is not there yet: each call of it makes Python
    show again every warning it showed once (so each job of a sweep would repeat them)."""
    import warnings

    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == message and f[2] is category
               for f in warnings.filters):
        warnings.filterwarnings("ignore", message=message, category=category)


# also on import: a launcher's worker process imports this module (unpickling the task function, which refers to
# it) and composes the job's config before the job (and run_job's quiet()) runs
_quiet_launcher_schemas()
