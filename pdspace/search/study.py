"""Model-based, multi-fidelity design search with Optuna: the design space as search parameters, job-side
trials that report every evaluation and stop when pruned, and the study report.

A study lives in its storage (SQLite in the sweep dir by default, any SQLAlchemy URL for several
machines). The sweeper only creates it and launches one job per trial slot; each job loads the
study, asks for its trial, turns the trial's parameters into a design (redrawing designs the budget
cannot build), trains it, reports the objective after every evaluation, stops when the pruner says
so, and tells the study how it ended. So pruning works with every Hydra launcher and with jobs on
several machines. Optuna provides every sampler and pruner; pdspace writes none.

Search parameters (`design_params`), chosen so that a model-based sampler can learn from them:
- grouping: G-1 integer cut points in [1, L-1] (neighbouring splits are neighbours), mapped to the
  nearest composition the space allows;
- allocation: a categorical over the allowed allocations;
- tunable groups: one flag per group, mapped to the nearest allowed mask;
- strategies: for each tuned group, one flag per strategy letter (sets sharing letters are
  neighbours), conditional on the group being tuned, mapped to the nearest allowed set.
A dimension the space fixes to one value is no parameter at all. With `space.search_lr=true` the base
learning rate and the scale of each strategy letter the design uses are parameters too (log-uniform).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pdspace.config import ConfigError, plain
from pdspace.design.space import Design, DesignSpace
from pdspace.job import RunPruned

log = logging.getLogger("pdspace.study")
SEARCHES = ("random", "tpe", "gp", "de")
PRUNERS = ("none", "successive_halving", "hyperband", "median")
# what a study can optimise: the task objective (maximised) and costs (minimised)
OBJECTIVES = {"score": "maximize", "trainable_params": "minimize", "step_time": "minimize"}
STUDY_FILE = "study.db"


# ------------------------------------------------------------------------------------- parameters


def _nearest(values: Sequence[Any], vector: Sequence[float], embed: Callable[[Any], Sequence[float]]) -> Any:
    """The value whose embedding is closest to `vector` in L1 distance (ties: the first in `values`)."""
    return min(values, key=lambda v: sum(abs(a - b) for a, b in zip(embed(v), vector)))


def _cuts(groups: Sequence[int]) -> list[int]:
    out, total = [], 0
    for n in groups[:-1]:
        total += n
        out.append(total)
    return out


def design_params(trial: Any, space: DesignSpace) -> Design:
    """Suggest a design of `space` through `trial` (an Optuna trial or anything with its `suggest_*`)."""
    L, G = space.num_layers, space.num_groups
    groupings = space.grouping.enumerate()
    if len(groupings) == 1:
        groups = groupings[0]
    else:
        raw = sorted(trial.suggest_int(f"cut_{k}", 1, L - 1) for k in range(1, G))
        groups = _nearest(groupings, raw, _cuts)
    allocations = space.allocation.enumerate()
    allocation = allocations[0] if len(allocations) == 1 else trial.suggest_categorical("allocation", allocations)
    masks = space.tunable.enumerate()
    if len(masks) == 1:
        mask = masks[0]
    else:
        flags = [trial.suggest_categorical(f"tune_g{k + 1}", [True, False]) for k in range(G)]
        mask = _nearest(masks, [float(f) for f in flags], lambda m: [float(b) for b in m])
    strategies = []
    for k, (tuned, constraint) in enumerate(zip(mask, space.strategies.per_group)):
        sets = constraint.enumerate()
        if not tuned:
            strategies.append("")
        elif len(sets) == 1:
            strategies.append(sets[0])
        else:
            letters = "".join(sorted({ch for s in sets for ch in s}, key=_letter_order(sets)))
            chosen = [float(trial.suggest_categorical(f"g{k + 1}_{ch}", [True, False])) for ch in letters]
            strategies.append(_nearest(sets, chosen, lambda s, letters=letters: [float(ch in s) for ch in letters]))
    return Design(groups, allocation, mask, strategies)


def job_seed(spec: StudySpec, slot: int) -> int:
    """The sampler seed of trial slot `slot` (each job builds its own sampler)."""
    return spec.seed * 100_003 + slot


def design_vector(design: Design, letters: str) -> list[float]:
    """A design as the search parameters see it: cut points, allocation, tunable flags, strategy letters."""
    from pdspace.design.space import ALLOCATIONS

    return [*map(float, _cuts(design.groups)), *(float(design.allocation == a) for a in ALLOCATIONS),
            *map(float, design.tunable), *(float(ch in s) for s in design.strategies for ch in letters)]


def _letter_order(sets: Sequence[str]) -> Callable[[str], int]:
    order = {ch: i for i, ch in enumerate(dict.fromkeys(ch for s in sorted(sets, key=len) for ch in s))}
    return lambda ch: order[ch]


# ------------------------------------------------------------------------------------- settings


@dataclass
class StudySpec:
    """What a `space:` block asks of a study, checked."""

    search: str
    pruner: str
    objectives: list[str]
    trials: int
    storage: str
    name: str
    seed: int
    startup_trials: int
    max_resource: int
    # the base learning rate and each strategy's scale are search parameters too
    search_lr: bool = False

    @property
    def directions(self) -> list[str]:
        """Optuna's directions, one per objective."""
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        """Whether the study has a Pareto front rather than one best trial."""
        return len(self.objectives) > 1

    def uses_study(self) -> bool:
        """Random search without a pruner keeps today's plain plan and needs no study."""
        return self.search != "random" or self.pruner != "none"


def study_spec(block: Mapping[str, Any], sweep_dir: str | Path, task: str, max_epochs: int | None,
               evals_per_epoch: float = 1.0) -> StudySpec:
    """The study settings of a `space:` block for one task (a study optimises one task); raises `ConfigError`."""
    search = str(block.get("search") or "random")
    pruner = str(block.get("pruner") or "none")
    objectives = list(block.get("objectives") or ["score"])
    if search not in SEARCHES:
        raise ConfigError(f"space.search={search!r} is not one of {', '.join(SEARCHES)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"space.pruner={pruner!r} is not one of {', '.join(PRUNERS)}")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or objectives[0] != "score" or len(set(objectives)) != len(objectives):
        raise ConfigError(f"space.objectives={objectives} must start with score and add any of "
                          f"{', '.join(o for o in OBJECTIVES if o != 'score')}, e.g. [score,trainable_params]")
    if len(objectives) > 1 and pruner != "none":
        raise ConfigError("a multi-objective study cannot prune (Optuna's pruners compare one value); "
                          "set space.pruner=none or one objective")
    # null: one trial per num_samples; 0 is refused, never read as "unset"
    trials = block.get("trials")
    trials = int(block.get("num_samples") or 0) if trials is None else int(trials)
    if trials < 1:
        raise ConfigError(f"space.trials={trials} runs nothing; give a positive number, e.g. space.trials=20")
    storage = block.get("storage") or f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}"
    startup = block.get("startup_trials")
    startup = int(startup) if startup is not None else max(4, min(10, trials // 4))
    resource = block.get("max_resource") or max(1, round((max_epochs or 1) * evals_per_epoch))
    return StudySpec(search, pruner, objectives, trials, str(storage), f"{block.get('name', 'space')}.{task}",
                     int(block.get("seed") or 0), startup, int(resource), bool(block.get("search_lr")))


def make_sampler(spec: StudySpec, seed: int) -> Any:
    """The sampler for `spec.search`: Optuna's TPE (multivariate, conditional groups), GP or random sampler, or
    differential evolution (`pdspace.search.de`)."""
    if spec.search == "tpe":
        # `group` (conditional parameters sampled jointly) is Optuna-experimental, chosen on purpose: no warning in
        # every job that loads the study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed,
                                              n_startup_trials=spec.startup_trials)
    if spec.search == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.startup_trials,
                                         warn_independent_sampling=False)
    if spec.search == "de":
        from pdspace.search.de import DESampler

        return DESampler(seed=seed, startup=spec.startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: StudySpec) -> Any:
    """Optuna's pruner for `spec.pruner`; resources are evaluations (one per epoch by default)."""
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.max_resource, reduction_factor=3)
    if spec.pruner == "median":
        # the median stopping rule (Golovin et al., 2017): a trial whose objective after evaluation k is below
        # the median of the earlier trials' at k stops, once the study's first random trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def storage_url(url: str) -> str:
    """The SQLAlchemy URL to open for `space.storage`.

    A plain `postgresql://` URL becomes `postgresql+psycopg2://` where psycopg2 is importable and
    psycopg (3) is not: SQLAlchemy 2.1 maps plain `postgresql://` to psycopg 3, while
    `pdspace[postgres]` installs psycopg2. Any other URL (and one naming its driver) passes unchanged."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is not None \
            and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _storage(url: str) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    url = storage_url(url)
    # several workers on one SQLite file: wait for the lock instead of failing at once
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as e:
        raise ConfigError(f"space.storage={redact(url)}: no database driver for it ({e}); install one, e.g. "
                          "pip install 'pdspace[postgres]' for postgresql+psycopg2://") from None
    except SQLAlchemyError as e:
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:300]
        fix = ("check that its folder exists and is writable" if url.startswith("sqlite") else
               "check the host, database and credentials of space.storage")
        raise ConfigError(f"cannot open the study storage {redact(url)} ({reason}); {fix}, or drop space.storage "
                          "for SQLite in the sweep dir") from None


def open_study(spec: StudySpec, *, seed: int = 0, create: bool = False, storage: Any = None) -> Any:
    """Load (or create) the study with this job's sampler and the spec's pruner (`storage`: an Optuna storage
    object instead of the spec's URL, e.g. a replay's in-memory one)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = dict(study_name=spec.name, storage=storage if storage is not None else _storage(spec.storage),
                  sampler=make_sampler(spec, seed), pruner=make_pruner(spec))
    if create:
        study = optuna.create_study(directions=spec.directions, load_if_exists=True, **kwargs)
        settings = {"search": spec.search, "pruner": spec.pruner, "objectives": spec.objectives}
        old = {k: study.user_attrs.get(k) for k in settings}
        if all(v is None for v in old.values()):
            for k, v in settings.items():
                study.set_user_attr(k, v)
        elif old != settings:
            raise ConfigError(f"study {spec.name!r} in {redact(spec.storage)} was made with {old}, not {settings}; "
                              "relaunch with those settings, or choose a new hydra.sweep.dir / space.storage")
        return study
    return optuna.load_study(**kwargs)


def redact(url: str) -> str:
    """A storage URL without its password."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


# ------------------------------------------------------------------------------------- the job side


class Pruned(optuna.TrialPruned, RunPruned):
    """The study's pruner stopped the trial: Optuna's signal, and to the job shell a pruned run."""


class TrialJob:
    """One job's trial, the one object through which a study and a training job talk: `design` (ask),
    `callback` (report every evaluation; raises `Pruned`), `end` (tell the study how the job ended).
    A replay drives the same object with `ask`, `report` and `tell` directly."""

    def __init__(self, spec: StudySpec, slot: int, prior: Mapping[str, Any] | None, storage: Any = None) -> None:
        self.spec, self.slot = spec, slot
        # each job loads the study with its own sampler (a replay passes its in-memory storage)
        self.study = open_study(spec, seed=job_seed(spec, slot), storage=storage)
        self.trial: optuna.Trial | None = None
        self.rejected: list[str] = []
        self._retry(prior)

    def _retry(self, prior: Mapping[str, Any] | None) -> None:
        # a killed job left its trial RUNNING: fail it and queue its parameters, so this job trains them again
        from optuna.trial import TrialState

        number = ((prior or {}).get("trial") or {}).get("number")
        if number is None:
            return
        frozen = self.study.trials[number] if number < len(self.study.trials) else None
        if frozen is not None and frozen.state == TrialState.RUNNING:
            self.study.tell(number, state=TrialState.FAIL)
            if frozen.params:
                self.study.enqueue_trial(frozen.params, user_attrs={"retry_of": number})
            log.info("trial %d of a killed job marked failed and queued again", number)

    def ask(self, space: DesignSpace | None, check: Callable[[Design], str | None],
            fixed: Design | None = None, project: Callable[[Design], Design] | None = None) -> Design:
        """The trial's design: `fixed` (random search, the plan's design) or suggested from `space`
        (mapped by `project`, e.g. onto the designs a replay table holds).

        A suggested design the budget cannot build is told FAIL (user attribute `infeasible`) and a
        new trial is asked, before anything trains."""
        from optuna.trial import TrialState

        for _ in range(200):
            trial = self.study.ask()
            design = fixed if fixed is not None else design_params(trial, space)
            if project is not None and fixed is None:
                design = project(design)
            why = None if fixed is not None else check(design)
            trial.set_user_attr("design_id", str(design))
            trial.set_user_attr("slot", self.slot)
            if why is None:
                self.trial = trial
                return design
            trial.set_user_attr("infeasible", why)
            self.study.tell(trial, state=TrialState.FAIL)
            self.rejected.append(str(design))
        raise ConfigError(f"200 designs in a row that the budget cannot build ({why}); raise budget_fraction or "
                          "narrow the space")

    def design(self, cfg: Any, model: Any, num_layers: int,
               planned: Callable[[], Design]) -> tuple[Design, dict[str, float]]:
        """A study job's design and its learning-rate overrides (`optimizer.*` keys, {} without `search_lr`): the
        plan's design (`planned()`) for a random search, else one suggested within the job's space that the
        budget can build."""
        from pdspace.search.plans import design_check

        if self.spec.search == "random":
            design = self.ask(None, lambda d: None, fixed=planned())
        else:
            space = DesignSpace.from_block(plain(cfg.space), num_layers, int(cfg.num_groups))
            design = self.ask(space, design_check(model, cfg.budget_fraction, cfg.get("peft")))
        letters = [ch for tuned, st in zip(design.tunable, design.strategies) if tuned for ch in st]
        return design, self.ask_learning_rates(float(cfg.optimizer.lr), letters)

    def end(self, status: str, record: Mapping[str, Any]) -> None:
        """The job's end hook: tell the study a completed trial's objective values, or that it was pruned or
        failed (a dry run trains nothing: failed, so the study does not wait for it). An interrupted job's trial
        stays running: its relaunch fails it and trains its parameters again (`_retry`)."""
        if status == "interrupted":
            return
        if status == "completed":
            self.tell("completed", objective_values(self.spec, record))
        else:
            self.tell("pruned" if status == "pruned" else "failed")

    def ask_learning_rates(self, lr: float, letters: Sequence[str]) -> dict[str, float]:
        """With `search_lr`: the trial's base learning rate (log-uniform within 10x of `lr`) and the scale of
        each strategy letter the design uses (log-uniform in [0.1, 100]), as `optimizer.*` keys; else {}."""
        if not self.spec.search_lr or self.trial is None:
            return {}
        chosen = {"lr": self.trial.suggest_float("lr", lr / 10, lr * 10, log=True)}
        for letter in sorted(set(letters)):
            chosen[f"lr_scale.{letter}"] = self.trial.suggest_float(f"lr_scale_{letter}", 0.1, 100.0, log=True)
        return chosen

    def info(self) -> dict[str, Any]:
        """What result.json records of the trial."""
        return {"study": self.spec.name, "storage": redact(self.spec.storage), "search": self.spec.search,
                "pruner": self.spec.pruner, "number": None if self.trial is None else self.trial.number,
                "slot": self.slot, "rejected": list(self.rejected)}

    def callback(self, objective: str) -> Any:
        """A Lightning callback that reports each evaluation and raises `Pruned` when told to."""
        return _reporter_class()(self, objective)

    def report(self, step: int, value: float) -> None:
        """Report the objective after evaluation `step` (1, 2, ...); raise `Pruned` if the pruner says so."""
        if self.trial is None or self.spec.multi_objective:
            return
        self.trial.report(value, step)
        # at the last evaluation the training is done: pruning it would only throw its result away
        if self.spec.pruner != "none" and step < self.spec.max_resource and self.trial.should_prune():
            raise Pruned(f"pruned after evaluation {step} ({value:.4f})")

    def tell(self, state: str, values: Sequence[float] | None = None) -> None:
        """Tell the study how the trial ended: complete (with `values`), pruned or failed."""
        from optuna.trial import TrialState

        if self.trial is None:
            return
        if state == "completed":
            self.study.tell(self.trial, list(values) if self.spec.multi_objective else values[0])
        else:
            self.study.tell(self.trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)


@functools.cache
def _reporter_class() -> type:
    """The Lightning callback class (made on first use: a study, a replay or the sweeper asks and tells without
    importing Lightning)."""
    import lightning as L

    class _Reporter(L.Callback):
        """Reports the objective of every evaluation to the trial (the resumed history first)."""

        def __init__(self, job: TrialJob, objective: str) -> None:
            self.job, self.objective = job, objective
            self.reported = 0

        def _flush(self, module: Any) -> None:
            history = getattr(module, "history", [])
            while self.reported < len(history):
                self.reported += 1
                self.job.report(self.reported, float(history[self.reported - 1][self.objective]))

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self._flush(module)  # a resumed run: its earlier evaluations go to the retried trial

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            if not trainer.sanity_checking:
                self._flush(module)

    return _Reporter


def job_for(cfg: Any, sweep_dir: Path, prior: Mapping[str, Any] | None) -> TrialJob | None:
    """The trial of a sweep job whose space asks for a study (None for other jobs)."""
    block = cfg.get("space")
    slot = (cfg.get("labels") or {}).get("trial_slot")
    if not block or slot is None:
        return None
    spec = study_spec(block, sweep_dir, str(cfg.task.name), cfg.trainer.get("max_epochs"),
                      _evals_per_epoch(cfg.trainer.get("val_check_interval")))
    return TrialJob(spec, int(slot), prior) if spec.uses_study() else None


def _evals_per_epoch(val_check_interval: Any) -> float:
    # a float < 1 evaluates several times an epoch; an int (steps) is unknown ahead: count one per epoch
    return 1.0 / float(val_check_interval) if isinstance(val_check_interval, float) and val_check_interval < 1 \
        else 1.0


def objective_values(spec: StudySpec, result: Mapping[str, Any]) -> list[float]:
    """A completed job's values for the study's objectives."""
    values = []
    for name in spec.objectives:
        if name == "score":
            values.append(float(result["objective"]["value"]))
        elif name == "trainable_params":
            values.append(float(result["params"]["trainable_params"]))
        else:  # step_time: training seconds per optimiser step
            values.append(float(result["timings"]["train_s"]) / max(1, int(result.get("global_step") or 1)))
    return values


def storage_path(spec: StudySpec) -> str | None:
    """The SQLite file of a study (None for a server)."""
    return spec.storage.split("sqlite:///", 1)[1] if spec.storage.startswith("sqlite:///") else None

