"""The `pdspace` Hydra sweeper, a thin adapter to `pdspace.search`: every multirun of pdspace-train goes through it.

With a `space:` block it samples designs (`pdspace.search.plans`); without one it sweeps the
command line's values like Hydra's basic sweeper. Either way it numbers the jobs by their place
in the sweep, skips jobs completed before with the same settings (resume), refuses a relaunch
whose settings differ from what a job dir holds (then `multirun.yaml` keeps the accepted sweep's
config), and ends with a per-job summary, failing the sweep past `max_failure_rate`.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("pdspace.sweeper")


@dataclass
class PDSpaceSweeperConf:
    _target_: str = "hydra_plugins.pdspace_sweeper.sweeper.PDSpaceSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="pdspace", node=PDSpaceSweeperConf, provider="pdspace")


class PDSpaceSweeper(Sweeper):
    """Plans the sweep's jobs (sampled designs or the command line's grid), then launches the pending ones."""

    def __init__(self) -> None:
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from pdspace.search.plans import save_yaml
        from pdspace.search.sweeps import launch_plan, plan_jobs

        jobs, sweep_dir = plan_jobs(self.config, arguments, OverridesParser.create(
            config_loader=self.hydra_context.config_loader))
        # only an accepted sweep replaces multirun.yaml (greedy and refine read it): a refused relaunch keeps the old
        return launch_plan(jobs, sweep_dir, self.config, self.launcher, self._job_config,
                           accepted=lambda: save_yaml(self.config, sweep_dir / "multirun.yaml"))

    def _job_config(self, overrides: list[str]) -> dict[str, Any]:
        """A job's composed config (what its result.json holds as `config`)."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)

