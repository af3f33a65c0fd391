"""Differential evolution over the design's search parameters, as an Optuna sampler (`space.search=de`).

With `space.pruner=hyperband` it is a DEHB-style search (Awad et al., IJCAI 2021): differential evolution
proposes the designs and Hyperband's brackets stop the weak ones early. It is written here, not taken from
the `dehb` package, whose numpy < 2 pin cannot share an environment with pdspace's torch.

Each trial's parameters come from one DE/rand/1/bin step over the population (the study's best finished
trials, `population` of them, each scored by its last reported objective, so a pruned design counts at the
fidelity it reached): a mutant `a + F (b - c)` of three distinct members, crossed with a fourth member (each
parameter from the mutant with probability `crossover`, at least one). Parameters are handled in a unit
encoding: integers and floats scaled to [0, 1] over their range, categoricals as their index over the
choices. A parameter some parents lack (a strategy flag of a group they leave untuned) is drawn at random,
as are all parameters until `startup` trials have finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState


def _encode(value: Any, dist: BaseDistribution) -> float:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices.index(value) / max(1, len(dist.choices) - 1)
    low, high = dist.low, dist.high
    return 0.0 if high == low else (float(value) - low) / (high - low)


def _decode(u: float, dist: BaseDistribution) -> Any:
    u = min(1.0, max(0.0, u))
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(round(u * (len(dist.choices) - 1)))]
    value = dist.low + u * (dist.high - dist.low)
    if isinstance(dist, IntDistribution):
        step = dist.step
        return int(min(dist.high, max(dist.low, dist.low + round((value - dist.low) / step) * step)))
    assert isinstance(dist, FloatDistribution)
    return float(value)


class DESampler(optuna.samplers.BaseSampler):
    """DE/rand/1/bin proposals from the study's finished trials (see the module docstring)."""

    def __init__(self, seed: int | None = None, startup: int = 10, population: int = 20, mutation: float = 0.5,
                 crossover: float = 0.5) -> None:
        self._rng = np.random.default_rng(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self.startup, self.population, self.mutation, self.crossover = max(4, startup), population, mutation, crossover
        self._parents: dict[int, list[FrozenTrial]] = {}
        self._cross: dict[int, dict[str, bool]] = {}

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        pool = self._pool(study)
        if len(pool) >= self.startup:
            # a, b, c (the mutant) and the member it is crossed with, distinct
            picks = self._rng.choice(len(pool), size=4, replace=False)
            self._parents[trial.number] = [pool[i] for i in picks]
            self._cross[trial.number] = {}

    def _pool(self, study: optuna.Study) -> list[FrozenTrial]:
        scored = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            value = t.value if t.state == TrialState.COMPLETE else (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
            if value is not None:
                scored.append((value, t.number, t))
        best_first = sorted(scored, key=lambda x: (-x[0], x[1])) if study.direction.name == "MAXIMIZE" \
            else sorted(scored, key=lambda x: (x[0], x[1]))
        return [t for _, _, t in best_first[:self.population]]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        parents = self._parents.get(trial.number)
        if not parents or any(param_name not in p.params for p in parents):
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        a, b, c, target = (_encode(p.params[param_name], param_distribution) for p in parents)
        cross = self._cross[trial.number]
        # binomial crossover; the last parameter asked takes the mutant if no earlier one did
        take = bool(self._rng.random() < self.crossover) or (not any(cross.values()) and self._last(trial, param_name))
        cross[param_name] = take
        return _decode(a + self.mutation * (b - c) if take else target, param_distribution)

    def _last(self, trial: FrozenTrial, name: str) -> bool:
        # whether `name` is the last parameter the parents share that this trial has not asked yet
        shared = set.intersection(*(set(p.params) for p in self._parents[trial.number]))
        return not (shared - set(self._cross[trial.number]) - {name})

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._parents.pop(trial.number, None)
        self._cross.pop(trial.number, None)
