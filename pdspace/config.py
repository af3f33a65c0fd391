"""The config contract: Hydra structured-config schemas, value checks, fingerprints and one-line errors.

The schemas (dataclasses in Hydra's ConfigStore, the first entry of `train.yaml`'s defaults list)
type the `space:`, `peft:`, `data:`, `backbone:` blocks and the four dimension groups, so a wrong
type or an unknown key fails while Hydra composes. `check_config` adds the value checks a type
cannot express (positive sample counts, a budget in (0, 1), ...). Every such problem reaches the
user as one line naming it and its fix (`one_line_errors`), never as a traceback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from pdspace.design import registry
from pdspace.errors import PDSpaceError

SCHEMA_NAME = "pdspace_train_schema"
# the packaged configs (pdspace/conf links to the top-level conf/)
CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(PDSpaceError, ValueError):
    """A config value pdspace cannot use; the message names it and the fix."""


@dataclass
class DimensionConf:
    """One design dimension: a concrete value or a constraint (`any`, a pattern, a list)."""

    choice: Any = MISSING


@dataclass
class BackboneConf:
    """A hub id / folder (`path`) or a random architecture (`arch`), with config overrides."""

    name: str = MISSING
    path: Optional[str] = None
    arch: Optional[str] = None
    tokenizer: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- the peft: block
# Built from the strategy registry: beside its own keys (full_finetune, sizes, train_head), `peft.<name>_<option>`
# for every option of every registered strategy, typed and defaulted by that strategy's options dataclass, and
# `peft.sizes.<size_name>` for every sized strategy. A strategy registered later rebuilds and re-stores it
# (`_registry_changed`), so a plug-in imported before Hydra composes has its keys too.

_OPTION_TYPES = (bool, int, float, str)


def _schema_type(hint: Any) -> Any:
    """An option's annotation as the schema types it: bool, int, float, str or Optional of one; Any otherwise."""
    args = set(typing.get_args(hint))
    optional = typing.get_origin(hint) is typing.Union and len(args) == 2 and type(None) in args
    return hint if hint in _OPTION_TYPES or (optional and args <= {type(None), *_OPTION_TYPES}) else Any


def _schema_default(value: Any) -> Any:
    return value if value is None or isinstance(value, _OPTION_TYPES) else field(
        default_factory=lambda: copy.deepcopy(value))


def _peft_schemas() -> tuple[type, type]:
    """(SizesConf, PeftConf) of the strategies registered now."""
    from pdspace.peft.strategies import option_defaults, option_types  # (its import registers the shipped ones)

    sizes = make_dataclass("SizesConf", [(s.size_name, Optional[int], None) for s in registry.strategies().values()
                                         if s.size_name])
    sizes.__doc__ = ("Fixed module sizes (`peft.sizes.lora_rank=8`): every tuned layer gets them and the budget "
                     "solver is skipped. One key per registered sized strategy; all null (the default): no fixed "
                     "sizes, the solver sizes every module.")
    types = option_types()
    peft = make_dataclass("PeftConf", [
        ("full_finetune", bool, False),
        # fixed sizes instead of the budget solver; a node (never null by default), so that `peft.sizes.lora_rank=8`
        # and `peft.sizes={lora_rank: 8}` both work: OmegaConf cannot set a key of, or merge a dict into, a null node
        ("sizes", Optional[sizes], field(default_factory=sizes)),
        ("train_head", bool, True),
        *((key, _schema_type(types[key]), _schema_default(value)) for key, value in option_defaults().items()),
    ])
    peft.__doc__ = ("How the strategy modules are built (the budget solver sizes them): full fine-tuning, fixed "
                    "sizes, the task head, and every registered strategy's options as `<name>_<option>` "
                    "(lora_alpha, ...) with the defaults of its options dataclass.")
    sizes.__module__ = peft.__module__ = __name__
    return sizes, peft


SizesConf, PeftConf = _peft_schemas()


@dataclass
class DataConf:
    """Batching and caching of the tokenised data."""

    batch_size: int = 32
    effective_batch_size: Optional[int] = None
    eval_batch_size: int = 64
    eval_sorted: bool = True
    num_workers: int = 0
    num_proc: Optional[int] = None
    cache_dir: Optional[str] = None
    subset_seed: int = 0


@dataclass
class SchedulerConf:
    """A transformers learning-rate schedule by name."""

    name: str = "linear"
    warmup_ratio: float = 0.06


@dataclass
class SpaceConf:
    """A design space to sample (`-m space=...`): four constraints plus the plan's settings."""

    name: str = "space"
    grouping: Any = "any"
    allocation: Any = "any"
    tunable: Any = "any"
    strategy: Any = "any"
    num_samples: int = 100
    seed: int = 0
    controlled: Optional[str] = None
    tasks: list[str] = field(default_factory=lambda: ["sst2"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # null: the top-level max_failure_rate
    max_failure_rate: Optional[float] = None
    num_groups: Optional[int] = None
    # the strategy letters the space draws from (the paper's four; a registered fifth such as I opens more)
    letters: str = "APBL"
    # how designs are chosen: random (the plan above), tpe, gp or de (Optuna studies, one per task)
    search: str = "random"
    # stop weak designs early: none, successive_halving, hyperband, median (resources = evaluations)
    pruner: str = "none"
    # trials of a tpe/gp/de study per task (null: num_samples)
    trials: Optional[int] = None
    # studies (tpe, gp, de, or random with a pruner) also search optimizer.lr and optimizer.lr_scale per letter
    search_lr: bool = False
    # what a study optimises: [score], or [score, trainable_params | step_time] for a Pareto front
    objectives: list[str] = field(default_factory=lambda: ["score"])
    # the study's SQLAlchemy URL (null: sqlite:///<sweep dir>/study.db)
    storage: Optional[str] = None
    # random trials before the model (null: max(4, min(10, trials // 4)))
    startup_trials: Optional[int] = None
    # evaluations of a full run, Hyperband's max resource (null: trainer.max_epochs x evaluations per epoch)
    max_resource: Optional[int] = None


@dataclass
class TrainingConf:
    """How the training step runs (not what it computes)."""

    # torch.compile the patched model (see pdspace.compile); false: eager
    compile: bool = False
    # torch.compile's mode (null: its default)
    compile_mode: Optional[str] = None
    # regional: each transformer block; model: the whole forward (see pdspace.compile)
    compile_scope: str = "regional"
    # inductor's on-disk compile cache (null: TORCHINDUCTOR_CACHE_DIR, else ~/.cache/pdspace/compile)
    compile_cache_dir: Optional[str] = None


@dataclass
class TrainConf:
    """The schema of `train.yaml` (free-form blocks such as trainer and optimizer stay `Any`)."""

    seed: int = 0
    design_seed: int = 0
    budget_fraction: Optional[float] = 0.005
    num_groups: int = 4
    labels: dict[str, Any] = field(default_factory=dict)
    method: Optional[str] = None
    dry_run: bool = False
    max_failure_rate: float = 0.25
    backbone: BackboneConf = field(default_factory=BackboneConf)
    task: Any = None
    grouping: DimensionConf = field(default_factory=DimensionConf)
    allocation: DimensionConf = field(default_factory=DimensionConf)
    tunable: DimensionConf = field(default_factory=DimensionConf)
    strategy: DimensionConf = field(default_factory=DimensionConf)
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None
    space: Optional[SpaceConf] = None
    # built from the strategy registry (the current class: rebuilt when a strategy registers late)
    peft: PeftConf = field(default_factory=lambda: PeftConf())
    optimizer: Any = None
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    data: DataConf = field(default_factory=DataConf)
    save_checkpoint: bool = True
    ckpt_path: Optional[str] = "last"
    checkpoint_every_n_steps: int = 100
    train: TrainingConf = field(default_factory=TrainingConf)


def register() -> None:
    """Put the schema into Hydra's ConfigStore and register the `pdspace.uid` resolver; idempotent."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConf, provider="pdspace")
    if not OmegaConf.has_resolver("pdspace.uid"):
        # cached per config: one value for a run dir, and (Hydra copies the cache) for every job of a sweep
        OmegaConf.register_new_resolver("pdspace.uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


register()


# ------------------------------------------------------------------------------------------ values


def plain(value: Any) -> Any:
    """A config node as plain Python containers (other values pass through)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _number(cfg: Any, key: str, kind: type, low: float | None = None, *, optional: bool = True,
            exclusive: bool = False, example: str = "", prefix: str = "") -> None:
    value = _get_value(cfg, key)
    key = prefix + key
    if value is None:
        if optional:
            return
        raise ConfigError(f"{key} is not set; give {example or 'a value'}")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if ok and low is not None:
        ok = value > low if exclusive else value >= low
    if not ok:
        what = {int: "an integer", float: "a number"}[kind]
        bound = "" if low is None else f" {'>' if exclusive else '>='} {low:g}"
        raise ConfigError(f"{key}={value!r} is not {what}{bound}; give e.g. {example or key + '=1'}")


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# blocks with a schema; `+block.key=...` (Hydra's force-add) gets past composition, so they are checked again
TYPED_BLOCKS = {"peft": PeftConf, "data": DataConf, "scheduler": SchedulerConf, "backbone": BackboneConf,
                "train": TrainingConf,
                "space": SpaceConf, "grouping": DimensionConf, "allocation": DimensionConf, "tunable": DimensionConf,
                "strategy": DimensionConf}


def _registry_changed() -> None:
    """A strategy was registered or removed: rebuild the `peft:` schema from the registry and store it again."""
    global SizesConf, PeftConf
    SizesConf, PeftConf = _peft_schemas()
    TYPED_BLOCKS["peft"] = PeftConf
    register()


registry.on_change(_registry_changed)


def _check_known_keys(cfg: Any) -> None:
    # `+key=value` force-adds a top-level key the schema does not know; nothing would ever read it
    top = set(TrainConf.__dataclass_fields__) | {"hydra", "output_dir"}  # output_dir: a run without Hydra
    keys = cfg.keys() if (isinstance(cfg, Mapping) or OmegaConf.is_dict(cfg)) else []
    unknown_top = sorted(set(map(str, keys)) - top)
    if unknown_top:
        raise ConfigError(f"{unknown_top[0]}: Key {unknown_top[0]!r} not in 'TrainConf', so nothing would read it; "
                          "check the spelling (+key=value adds a key only inside a free-form block: labels, trainer, "
                          "callbacks, logger, optimizer)")
    for block, schema in TYPED_BLOCKS.items():
        node = _get_value(cfg, block)
        if not isinstance(node, Mapping) and not OmegaConf.is_dict(node):
            continue
        known = set(schema.__dataclass_fields__)
        unknown = sorted(set(map(str, node.keys())) - known)
        if unknown:
            raise ConfigError(f"{block}.{unknown[0]}: Key {unknown[0]!r} not in {schema.__name__!r}; known keys of "
                              f"{block}: {', '.join(sorted(known))}")


def _check_lr_scale(scales: Any) -> None:
    # a typo in a letter would silently train that strategy at the base rate
    if scales is None:
        return
    from pdspace.peft.strategies import strategies

    known = [*strategies(), "head", "backbone"]
    if not (isinstance(scales, Mapping) or OmegaConf.is_dict(scales)):
        raise ConfigError(f"optimizer.lr_scale={scales!r} must map names to numbers, e.g. optimizer.lr_scale.P=10")
    for name, value in scales.items():
        if str(name) not in known:
            raise ConfigError(f"optimizer.lr_scale.{name}: unknown group; use a strategy letter or head/backbone "
                              f"({', '.join(known)}), e.g. optimizer.lr_scale.P=10")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"optimizer.lr_scale.{name}={value!r} is not a number > 0; give e.g. "
                              f"optimizer.lr_scale.{name}=10")


def fixed_sizes(sizes: Any) -> Any:
    """The fixed module sizes a `peft.sizes` value gives, without the unset (null) ones; None when it gives none
    (the budget solver sizes the modules). A list (one mapping per layer, from Python) keeps its length."""
    sizes = plain(sizes)
    if isinstance(sizes, Mapping):
        return {str(k): v for k, v in sizes.items() if v is not None} or None
    if isinstance(sizes, (list, tuple)):
        return [{str(k): v for k, v in dict(row).items() if v is not None} for row in sizes] or None
    return sizes


def _check_sizes(sizes: Any) -> None:
    # a size of 0 or a misspelt size name would fail only once the model is patched, as a traceback
    if sizes is None:
        return
    if not isinstance(sizes, Mapping):
        raise ConfigError(f"peft.sizes={sizes!r} must map module sizes to integers, e.g. peft.sizes.lora_rank=8")
    names = {s.size_name: letter for letter, s in registry.strategies().items() if s.size_name}
    for name, value in sizes.items():
        if str(name) not in names and str(name) not in names.values():
            raise ConfigError(f"peft.sizes.{name}: not a module size; use {', '.join(names)}, e.g. "
                              "peft.sizes.lora_rank=8")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"peft.sizes.{name}={value!r} is not an integer >= 1; give e.g. peft.sizes.{name}=8, "
                              "or null to let the budget solver size it")


def check_config(cfg: Any) -> None:
    """Value checks that types cannot express (every count and size in one place); raises `ConfigError` with the
    fix."""
    _check_known_keys(cfg)
    _check_sizes(plain(_get_value(cfg, "peft.sizes")))
    budget = _get_value(cfg, "budget_fraction")
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget < 1):
        raise ConfigError(f"budget_fraction={budget!r} must lie in (0, 1); give e.g. budget_fraction=0.005 "
                          "(0.5 %), or null for BitFit's natural size")
    for key in ("task.max_train_samples", "task.max_eval_samples"):
        _number(cfg, key, int, 1, example=f"{key}=2000, or null for the whole split")
    for key in ("task.max_length", "task.max_target_length"):
        _number(cfg, key, int, 1, example=f"{key}=128, or null for the task's default")
    max_epochs = _get_value(cfg, "trainer.max_epochs")
    if max_epochs is not None and max_epochs != -1:
        _number(cfg, "trainer.max_epochs", int, 1, example="trainer.max_epochs=3")
    _number(cfg, "optimizer.lr", float, 0, exclusive=True, example="optimizer.lr=5e-5")
    _check_lr_scale(_get_value(cfg, "optimizer.lr_scale"))
    _number(cfg, "data.batch_size", int, 1, optional=False, example="data.batch_size=32")
    _number(cfg, "data.eval_batch_size", int, 1, example="data.eval_batch_size=64")
    _number(cfg, "data.effective_batch_size", int, 1, example="data.effective_batch_size=128")
    _number(cfg, "num_groups", int, 1, optional=False, example="num_groups=4")
    _number(cfg, "max_failure_rate", float, 0, example="max_failure_rate=0.25")
    _number(cfg, "checkpoint_every_n_steps", int, 1, example="checkpoint_every_n_steps=100")
    _number(cfg, "data.num_workers", int, 0, example="data.num_workers=0")
    _number(cfg, "data.num_proc", int, 1,
            example="data.num_proc=4, or null for the default (one process for a fast tokenizer)")
    _number(cfg, "task.synthetic_size", int, 1, example="task.synthetic_size=512, or null for the default (512 rows)")
    if _get_value(cfg, "task.name") == "files":
        missing = [k for k in ("train", "validation") if _missing(cfg, f"task.{k}")]
        if missing:
            raise ConfigError(f"task=files needs your data files: set {' and '.join(f'task.{k}=PATH' for k in missing)}"
                              " (CSV/TSV or JSONL with the columns task.text_fields and task.label_field)")
    space = _get_value(cfg, "space")
    if space:
        check_space(space)


def check_space(space: Any) -> None:
    """Checks of a `space:` block (sample count, tasks, seeds)."""
    from pdspace.data.tasks import DataError, get_task

    _number(space, "num_samples", int, 1, optional=False, example="space.num_samples=20", prefix="space.")
    _number(space, "max_failure_rate", float, 0, example="space.max_failure_rate=0.25", prefix="space.")
    # null means "use num_samples"; 0 is no such request (it trains nothing)
    _number(space, "trials", int, 1, example="space.trials=20, or null for space.num_samples", prefix="space.")
    _number(space, "startup_trials", int, 0, example="space.startup_trials=10, or null for the default",
            prefix="space.")
    _number(space, "max_resource", int, 1, example="space.max_resource=3, or null for trainer.max_epochs",
            prefix="space.")
    _number(space, "num_groups", int, 1, example="space.num_groups=4, or null for num_groups", prefix="space.")
    tasks = plain(_get_value(space, "tasks")) or []
    if not tasks:
        raise ConfigError("the space lists no tasks; set space.tasks=[sst2] (or several)")
    for task in tasks:
        if str(task) == "files":
            continue  # your own files (task=files task.train=... task.validation=...)
        try:
            get_task(str(task))
        except DataError as e:
            raise ConfigError(f"space.tasks: {e}") from None
    seeds = plain(_get_value(space, "seeds")) or []
    if not seeds:
        raise ConfigError("the space lists no training seeds; set space.seeds=[0] (or several)")


def _get_value(cfg: Any, key: str) -> Any:
    if OmegaConf.is_config(cfg):
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return _get(cfg, key)


def _missing(cfg: Any, key: str) -> bool:
    if OmegaConf.is_config(cfg):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return node is None or leaf not in node or OmegaConf.is_missing(node, leaf) or node[leaf] is None
    return _get(cfg, key) in (None, "???")


# ------------------------------------------------------------------------------------- fingerprints

# keys that never change what a job computes: where things go, how they are logged, how a sweep is run
NON_RESULT_KEYS = ("labels", "logger", "callbacks", "space", "method", "dry_run", "max_failure_rate", "ckpt_path",
                   "train.compile", "train.compile_mode", "train.compile_scope", "train.compile_cache_dir",
                   "checkpoint_every_n_steps", "save_checkpoint", "data.cache_dir", "data.num_workers",
                   "data.num_proc", "data.eval_batch_size", "data.eval_sorted", "task.glue_dir",
                   "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                   "trainer.enable_checkpointing")


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a composed config (plain dict) that determines a job's result."""
    out = json.loads(json.dumps(plain(config), default=str))
    out.pop("hydra", None)
    peft = out.get("peft")
    if isinstance(peft, dict) and "sizes" in peft:
        # null and a node of null sizes ask for the same (the budget solver): results written before agree
        peft["sizes"] = fixed_sizes(peft["sizes"])
    if isinstance(peft, dict):
        # a strategy option added since a result was written reads as its default there: a new option's default
        # computes what the strategy did before it existed (ia3_feedforward=true is the IA3 of before)
        from pdspace.peft.strategies import option_defaults

        for key, value in option_defaults().items():
            peft.setdefault(key, value)
    for key in NON_RESULT_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = _get(out, parent) if parent else out
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def fingerprint(config: Mapping[str, Any]) -> str:
    """A short hash of `settings(config)`: equal for two jobs that compute the same thing."""
    text = json.dumps(settings(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between the settings of two configs, with both values."""
    a, b = dict(_flat(settings(old))), dict(_flat(settings(new)))
    return [f"{k} ({a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r})" for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


# ------------------------------------------------------------------------------------- one line


OVERRIDE_HINT = ("write key=value, quote lists for the shell (e.g. 'grouping.choice=[1,2,2,1]'), see "
                 "https://hydra.cc/docs/advanced/override_grammar/basic/")


def check_overrides(argv: list[str]) -> None:
    """Parse each command-line override alone, so a malformed one is named (Hydra's parser does not say which)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    for override in get_args_parser().parse_known_args(argv)[0].overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as e:
            raise ConfigError(f"malformed override {override!r} ({str(e).splitlines()[0]}); {OVERRIDE_HINT}") from None


# a launcher config's name prefix -> the modules it runs on (those of the `scale` extra)
LAUNCHER_MODULES = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "submitit": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
                    "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}


def check_launcher(argv: list[str]) -> None:
    """A `hydra/launcher=NAME` whose plugin or library is not installed, named before anything is launched (it
    would otherwise fail with a traceback after the sweep had started writing)."""
    import importlib.util

    for arg in argv:
        if not arg.lstrip("+~").startswith("hydra/launcher="):
            continue
        name = arg.split("=", 1)[1]
        for prefix, modules in LAUNCHER_MODULES.items():
            missing = [m.split(".")[-1] for m in modules
                       if name.startswith(prefix) and importlib.util.find_spec(m) is None]
            if missing:
                what, verb = " and ".join(missing), "is" if len(missing) == 1 else "are"
                raise ConfigError(f"hydra/launcher={name} needs {what}, which {verb} not installed; "
                                  "pip install -e \".[scale]\" (see the README's Run at scale)")


def one_line(ex: BaseException, dir_key: str = "hydra.run.dir") -> str | None:
    """A config/user error, or a full / read-only disk, as one line with its fix; None for anything else (a bug
    keeps its traceback). `dir_key` is the setting that moves the output elsewhere."""
    from hydra.errors import (ConfigCompositionException, MissingConfigException, OverrideParseException,
                              SearchPathException)
    from omegaconf.errors import OmegaConfBaseException

    from pdspace.results import disk_error

    if isinstance(ex, PDSpaceError):
        return str(ex)
    disk = disk_error(ex, dir_key=dir_key)
    if disk is not None:
        return disk
    if isinstance(ex, OverrideParseException):
        reason = str(ex).splitlines()[0].strip()
        return f"malformed override ({reason}); {OVERRIDE_HINT}"
    if isinstance(ex, ValueError):  # Hydra's own flags (--shell-completion without install=...)
        usage = _hydra_usage_line(ex)
        if usage is not None:
            return usage
    if isinstance(ex, SearchPathException):  # --config-dir names no directory
        return f"{ex}; give --config-dir an existing directory"
    if isinstance(ex, MissingConfigException):
        text = str(ex)
        primary = _primary_config_line(text)
        if primary is not None:
            return primary
        m = re.search(r"Could not find '([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        what = m.group(1) if m else text.splitlines()[0]
        known = f"; known: {', '.join(options)}" if options else ""
        return f"unknown config {what!r}{known}"
    cause = ex.__cause__ if isinstance(ex, ConfigCompositionException) else ex
    if isinstance(cause, OmegaConfBaseException):
        return _omegaconf_line(cause, str(ex) if cause is not ex else "")
    if isinstance(ex, ConfigCompositionException):
        return " ".join(str(ex).split())
    return None


def _primary_config_line(text: str) -> str | None:
    """Hydra's own lines for a primary config (--config-name) or its directory (--config-path) it cannot find."""
    m = re.search(r"Cannot find primary config '([^']+)'", text)
    if m:
        return (f"unknown config {m.group(1)!r} (--config-name): no such file in the config search path; "
                "drop --config-name for pdspace's 'train', or add the directory that holds it with --config-dir DIR")
    m = re.search(r"config (directory|module) '([^']+)'", text)
    if m and text.startswith("Primary config"):
        return (f"config {m.group(1)} {m.group(2)!r} (--config-path) not found; drop --config-path, or add your "
                "configs with --config-dir DIR")
    return None


def _hydra_usage_line(ex: ValueError) -> str | None:
    """A ValueError that Hydra's command line raised outside its own error handler (two of -m, --cfg, --info,
    ...; --resolve without --cfg) as one line; None for any other ValueError."""
    import hydra

    tb = ex.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or Path(hydra.__file__).parent not in Path(tb.tb_frame.f_code.co_filename).parents:
        return None
    if str(ex).startswith("Only one of"):
        return ("-r/--run, -m/--multirun, -c/--cfg, -i/--info and -sc/--shell-completion exclude each other; give "
                "one (to print a sweep job's config, give its overrides without -m: pdspace-train --cfg job "
                "grouping=uniform)")
    if str(ex).startswith("Expecting one subcommand"):
        return f"--shell-completion: {ex}; e.g. pdspace-train --shell-completion install=bash"
    return str(ex)


def _omegaconf_line(err: Any, context: str) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    key = getattr(err, "full_key", None) or "?"
    message = str(err).splitlines()[0].strip()
    m = re.search(r"override '?([^'\s]+?)'?\.?(\s|$)", context)
    where = m.group(1) if m else key
    if isinstance(err, MissingMandatoryValue):
        return f"{key} has no value; set {key}=..."
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):  # a new key: Key ... not in struct
        known = _known_keys(err)
        return f"{where}: {message}" + (f"; known keys: {', '.join(known)}" if known else "") + \
            " (add a new key with +key=value only where a block is free-form)"
    if isinstance(err, ValidationError):
        m2 = re.search(r"could not be converted to (\w+)", message)
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(
            m2.group(1) if m2 else "", "a value of the right type")
        return f"{where}: {message}; give {kind}"
    return f"{where}: {message}"


def _known_keys(err: Any) -> list[str]:
    node = getattr(err, "parent_node", None) or getattr(err, "object_type", None)
    try:
        if OmegaConf.is_config(node):
            return sorted(str(k) for k in node.keys())
        if isinstance(node, type):
            return sorted(node.__dataclass_fields__)
    except Exception:  # noqa: BLE001 - only a hint
        pass
    return []


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Inside: Hydra reports config/user errors as `prog: error: <one line>` (exit 1), bugs as before."""
    import hydra._internal.hydra as hydra_core
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    try:
        check_overrides(sys.argv[1:])
        check_launcher(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"{prog}: error: {e}")

    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as ex:
            line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else one_line(ex, dir_key)
            if line is None:
                error = ex

                def again() -> Any:
                    raise error
                return original(again)
            sys.exit(f"{prog}: error: {line}")

    hydra_utils.run_and_report = hydra_core.run_and_report = run_and_report
    try:
        yield
    except ValueError as ex:  # Hydra's command-line checks raise outside run_and_report
        line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else _hydra_usage_line(ex)
        if line is None:
            raise
        sys.exit(f"{prog}: error: {line}")
    finally:
        hydra_utils.run_and_report = hydra_core.run_and_report = original
