"""Paired significance tests and confidence intervals for comparing two methods.

Two tests, as the paper's tables need them (`pdspace-report` uses both):

- `paired_t`: a paired t-test over training seeds (seed i of A against seed i of B), with the
  Student-t 95 % interval of the mean difference. It sees only the seed-to-seed spread.
- `paired_bootstrap`: the paired bootstrap over examples and seeds (Berg-Kirkpatrick et al., 2012;
  Dror et al., 2018) from per-example predictions: every replicate resamples the example indices and
  the seeds (seed i of A stays paired with seed i of B) and re-scores both systems, so it sees the
  test-set sampling and the seed spread together, for any metric (Matthews, F1, correlations).

`score_fn` re-scores predictions as pdspace scores a task (`pdspace.data.tasks`), vectorised over
leading axes so a bootstrap scores all its replicates at once; `load_predictions` reads the
`predictions.npz` file a run writes beside its `result.json`.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from pdspace.data.tasks import TaskSpec, get_task

# elements of one gathered (replicates, seeds, examples) block: bounds a bootstrap's memory (~32 MB of int64)
_CHUNK_ELEMENTS = 4_000_000

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PairedT:
    """A paired t-test of a - b: n pairs, mean and std (ddof=1) of the differences, t, two-sided p, CI."""

    n: int
    mean_diff: float | None
    std_diff: float | None
    t: float | None
    p: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of metric(A) - metric(B): observed delta, two-sided p, percentile CI."""

    delta: float
    p: float
    ci_low: float
    ci_high: float
    n_boot: int
    n_seeds: int
    n_examples: int


def _rounding(a: np.ndarray, b: np.ndarray) -> float:
    """What counts as zero (a spread, a difference) for values of the size of `a` and `b`."""
    return 1e-12 * max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))


def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedT:
    """Paired t-test of a - b over positions (seeds); p and CI are None below two pairs.

    Where the differences have zero variance (to rounding) scipy's `ttest_rel` gives nan (equal) or
    t = ±inf, p = 0 (a constant nonzero difference); here equal pairs give t = 0, p = 1 and the CI
    [0, 0], a constant nonzero difference gives t = ±inf, p = 0 and the CI [d, d]. Elsewhere t and p
    are scipy's.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    if d.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired_t: a and b must be equal-length 1-D sequences, got shape {d.shape}")
    n = len(d)
    if n < 2:
        return PairedT(n, float(d[0]) if n else None, None, None, None, None, None)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    tol = _rounding(a, b)
    if np.ptp(d) <= tol:
        # zero spread (to rounding): decided as the limit of ever smaller spreads would decide it
        if abs(mean) <= tol:
            return PairedT(n, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
        return PairedT(n, mean, 0.0, math.copysign(math.inf, mean), 0.0, mean, mean)
    se = std / math.sqrt(n)
    t = mean / se
    p = float(2 * sps.t.sf(abs(t), n - 1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return PairedT(n, mean, std, t, p, mean - half, mean + half)


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(t, p) of Welch's two-sided t-test of mean(a) against mean(b) (unequal variances), at least two values each.

    Where both samples have zero spread (to rounding) scipy gives nan; here, as in `paired_t`, equal means give
    t = 0, p = 1 and unequal ones t = ±inf, p = 0. Elsewhere t and p are scipy's `ttest_ind(equal_var=False)`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch_t: a and b must be 1-D with at least two values each, got {len(a)} and {len(b)}")
    diff = float(a.mean() - b.mean())
    tol = _rounding(a, b)
    if np.ptp(a) <= tol and np.ptp(b) <= tol:
        return (0.0, 1.0) if abs(diff) <= tol else (math.copysign(math.inf, diff), 0.0)
    t, p = sps.ttest_ind(a, b, equal_var=False)
    return float(t), float(p)


def bootstrap_mean_ci(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean of `diffs` (None below two values)."""
    d = np.asarray(diffs, dtype=float).reshape(-1)
    if len(d) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    low, high = np.quantile(d[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap(pred_a: Any, pred_b: Any, gold: Any, metric: Scorer, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Bootstrap:
    """Paired bootstrap over examples and seeds of metric(A) - metric(B), averaged over seeds.

    `pred_a`, `pred_b`: (seeds, examples) arrays (or lists of per-seed arrays; one 1-D array is one
    seed), row i of A paired with row i of B; `gold`: (examples,); `metric`: a `score_fn` scorer.
    p = (#{|delta* - delta| >= |delta|} + 1) / (n_boot + 1): the replicates centred on the observed
    delta stand for the null distribution (Berg-Kirkpatrick et al., 2012, with the +1 correction).
    """
    a, b, g = np.atleast_2d(np.asarray(pred_a)), np.atleast_2d(np.asarray(pred_b)), np.asarray(gold).reshape(-1)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(g):
        raise ValueError(f"paired_bootstrap: predictions {a.shape} and {b.shape} must both be (seeds, "
                         f"{len(g)} examples)")
    n_seeds, n = a.shape
    observed = float(np.mean(metric(a, g) - metric(b, g)))
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    chunk = max(1, _CHUNK_ELEMENTS // (n_seeds * n))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        ex = rng.integers(0, n, size=(k, n))
        sd = rng.integers(0, n_seeds, size=(k, n_seeds))
        # one example resample per replicate, shared by its resampled seeds and by both systems
        rows, cols, g_k = sd[:, :, None], ex[:, None, :], g[ex][:, None, :]
        deltas[start:start + k] = (metric(a[rows, cols], g_k) - metric(b[rows, cols], g_k)).mean(axis=1)
    count = int(np.sum(np.abs(deltas - observed) >= abs(observed)))
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return Bootstrap(observed, (count + 1) / (n_boot + 1), float(low), float(high), n_boot, n_seeds, n)


# ------------------------------------------------------------------------------- task scores


def _labels(pred: np.ndarray, n_labels: int) -> np.ndarray:
    # an answer that is no label (-1) is a label of its own, n_labels, as make_metrics(text_to_text=True) scores it
    pred = np.asarray(pred)
    return np.where((pred < 0) | (pred >= n_labels), n_labels, pred)


def _accuracy(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> np.ndarray:
    return np.mean(_labels(pred, n_labels) == gold, axis=-1)


def _matthews(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> np.ndarray:
    # sklearn's multiclass formula over the confusion counts (binary: the usual MCC); undefined reads 0
    pred = _labels(pred, n_labels)
    s = pred.shape[-1]
    c = np.sum(pred == gold, axis=-1).astype(float)
    p_k = np.stack([np.sum(pred == k, axis=-1) for k in range(n_labels + 1)], -1).astype(float)
    t_k = np.stack([np.sum(gold == k, axis=-1) for k in range(n_labels + 1)], -1).astype(float)
    cov_pt = c * s - np.sum(p_k * t_k, axis=-1)
    denom = (s * s - np.sum(p_k**2, axis=-1)) * (s * s - np.sum(t_k**2, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, cov_pt / np.sqrt(np.where(denom > 0, denom, 1.0)), 0.0)


def _f1(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> np.ndarray:
    # F1 of class 1 for two labels, else the macro mean over the real labels (an empty class scores 0)
    pred = _labels(pred, n_labels)
    gold = np.broadcast_to(gold, pred.shape)

    def f1(k: int) -> np.ndarray:
        tp = np.sum((pred == k) & (gold == k), axis=-1)
        size = np.sum(pred == k, axis=-1) + np.sum(gold == k, axis=-1)
        return np.where(size > 0, 2 * tp / np.maximum(size, 1), 0.0)

    return f1(1) if n_labels == 2 else np.mean([f1(k) for k in range(n_labels)], axis=0)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    x, y = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
    denom = np.sqrt(np.sum(x * x, axis=-1) * np.sum(y * y, axis=-1))
    # a constant side has no correlation: 0, as pdspace's metrics read it (never NaN)
    return np.where(denom > 0, np.sum(x * y, axis=-1) / np.where(denom > 0, denom, 1.0), 0.0).clip(-1, 1)


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # gold is ranked at its own shape (once per replicate, not once per seed): ranking is the cost here
    return _pearson(sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1))


_CLASS_METRICS = {"accuracy": _accuracy, "matthews": _matthews, "f1": _f1}
_SCORE_METRICS = {"pearson": _pearson, "spearman": _spearman}


def score_fn(task: str | TaskSpec, objective: str | None = None) -> Scorer:
    """(pred, gold) -> score of `task`'s objective (default: the task's), over the last axis, as pdspace scores it.

    Classification: `accuracy`, `matthews`, `f1` (class 1 for two labels, else macro) on class ids,
    an id outside the labels (-1: an answer that is no label) being a label of its own (always wrong);
    regression: `pearson`, `spearman` (0 where undefined); `score`: the mean of the task's metrics.
    Leading axes broadcast (one score per replicate and seed). Fractions, as in result.json.
    """
    spec = get_task(task)
    name = objective or spec.objective
    names = list(spec.metrics) if name == "score" else [name]
    fns: list[Scorer] = []
    for m in names:
        if m in _CLASS_METRICS and spec.kind == "classification":
            fns.append(lambda p, g, f=_CLASS_METRICS[m]: f(p, g, spec.num_labels))  # type: ignore[misc]
        elif m in _SCORE_METRICS and spec.kind == "regression":
            fns.append(_SCORE_METRICS[m])
        else:
            raise ValueError(f"score_fn({spec.name}): no per-example score for {m!r} ({spec.kind} task)")
    if len(fns) == 1:
        return fns[0]
    return lambda p, g: np.mean([f(p, g) for f in fns], axis=0)


def marks(p: float | None) -> str:
    """The paper's significance marks: '**' for p < 0.01, '*' for p < 0.05, else ''."""
    if p is None or not math.isfinite(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


NOT_SIGNIFICANT = "not significant at 0.05 (the data do not separate them)"


def format_p(p: float) -> str:
    """A p-value in a sentence: three decimals, or two significant digits below 0.001."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# ------------------------------------------------------------------------------- predictions.npz


def _eval_row(result: Mapping[str, Any], epoch: np.ndarray, step: np.ndarray, n_rows: int) -> int | None:
    """The predictions row of the evaluation that gave the run's objective."""
    metrics = result.get("metrics") or {}
    best, curve = metrics.get("best") or {}, [e for e in metrics.get("per_epoch") or [] if isinstance(e, Mapping)]
    target: Mapping[str, Any] | None = best if isinstance(best, Mapping) and "epoch" in best and "step" in best \
        else None
    if target is None:
        name = (result.get("objective") or {}).get("name")
        values = [float(e[name]) if isinstance(e.get(name), (int, float)) else -math.inf for e in curve]
        if not values or max(values) == -math.inf:
            return None
        j = int(np.argmax(values))  # the first evaluation with the highest objective
        if "epoch" not in curve[j] or "step" not in curve[j]:
            return j if n_rows == len(curve) else None
        target = curve[j]
    try:
        hits = np.flatnonzero((epoch == int(target["epoch"])) & (step == int(target["step"])))
    except (TypeError, ValueError):
        return None
    return int(hits[0]) if len(hits) == 1 else None


def load_predictions(result_path_or_dir: str | Path, result: Mapping[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(index, gold, pred) of the run's best evaluation from its predictions.npz; None if absent or unusable."""
    name = result.get("predictions")
    if not name or not isinstance(name, str):
        return None
    base = Path(result_path_or_dir)
    path = (base.parent if base.suffix == ".json" else base) / name
    try:
        with np.load(path, allow_pickle=False) as f:
            index, gold, pred, epoch, step = (np.asarray(f[k]) for k in ("index", "gold", "pred", "epoch", "step"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n = len(index) if index.ndim == 1 else -1
    if n < 1 or gold.shape != (n,) or pred.ndim != 2 or pred.shape[1] != n or epoch.shape != step.shape \
            or epoch.shape != (pred.shape[0],) or len(np.unique(index)) != n:
        return None
    row = _eval_row(result, epoch, step, pred.shape[0])
    return None if row is None else (index, gold, pred[row])
