"""The `pdspace` Hydra sweeper: samples designs from `config.space`, writes the plan, launches, resumes."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("pdspace.sweeper")


@dataclass
class PDSpaceSweeperConf:
    _target_: str = "hydra_plugins.pdspace_sweeper.sweeper.PDSpaceSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="pdspace", node=PDSpaceSweeperConf, provider="pdspace")


class SweepFailed(RuntimeError):
    """More jobs failed than `space.max_failure_rate` allows (their results are all on disk)."""


class PDSpaceSweeper(Sweeper):
    """Samples the sweep's jobs from the `space:` block of the config and hands them to the launcher."""

    def __init__(self) -> None:
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from pdspace.backbones import backbone_layers
        from pdspace.sweep import job_status, load_or_write_plan, make_plan

        config = self.config
        block = config.get("space")
        if not block:
            raise ValueError("the pdspace sweeper needs a design space: add space=S0 (or another conf/space file)")
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(arguments)
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        if swept:
            raise ValueError(f"the pdspace sweeper samples its own jobs; instead of {swept} set space.tasks=[..], "
                             "space.seeds=[..] or space.num_samples")
        num_layers = backbone_layers(config.backbone)
        jobs = make_plan(block, num_layers, int(config.get("num_groups", 4)))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        load_or_write_plan(sweep_dir, block, num_layers, jobs)
        pending = [j for j in jobs if job_status(sweep_dir, j.idx) != "completed"]
        log.info("space %s on %d layers: %d jobs planned (%s), %d already completed, launching %d",
                 block.get("name"), num_layers, len(jobs), sweep_dir / "samples.yaml", len(jobs) - len(pending),
                 len(pending))
        returns = self.launcher.launch([j.overrides() + list(arguments) for j in pending], initial_job_idx=0) \
            if pending else []
        failed = [j.idx for j in jobs if job_status(sweep_dir, j.idx) != "completed"]
        rate = len(failed) / len(jobs)
        if rate > float(block.get("max_failure_rate", 0.25)):
            raise SweepFailed(f"{len(failed)} of {len(jobs)} jobs did not complete (jobs {failed[:10]}); the "
                              f"space allows a failure rate of {block.get('max_failure_rate', 0.25)}; see their "
                              f"result.json under {sweep_dir}, fix the cause and relaunch to resume")
        return [returns]
