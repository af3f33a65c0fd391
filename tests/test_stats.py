"""pdspace.stats: paired t over seeds, bootstrap CIs, the paired bootstrap over examples, task scores, predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from sklearn import metrics as skm

from pdspace import stats
from pdspace.data.tasks import add_score, files_task, get_task, make_metrics

# ------------------------------------------------------------------------------- paired t


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_t_matches_scipy_and_the_student_interval(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(80, 2, n), rng.normal(79, 2, n)
    res, ref = stats.paired_t(a, b), sps.ttest_rel(a, b)
    assert res.n == n
    assert res.t == pytest.approx(ref.statistic, rel=1e-12) and res.p == pytest.approx(ref.pvalue, rel=1e-10)
    d = a - b
    assert res.mean_diff == pytest.approx(d.mean()) and res.std_diff == pytest.approx(d.std(ddof=1))
    half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert (res.ci_low, res.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    # the interval excludes 0 exactly when the two-sided test rejects at 5 %
    assert (res.ci_low > 0 or res.ci_high < 0) == (res.p < 0.05)


def test_paired_t_below_two_pairs_gives_no_test():
    one = stats.paired_t([90.0], [88.0])
    assert one.n == 1 and one.mean_diff == 2.0 and one.p is None and one.ci_low is None and one.t is None
    none = stats.paired_t([], [])
    assert none.n == 0 and none.mean_diff is None and none.p is None
    with pytest.raises(ValueError):
        stats.paired_t([1.0, 2.0], [1.0, 2.0, 3.0])


def test_paired_t_zero_variance_is_decided_not_nan():
    same = stats.paired_t([90.0, 91.0, 92.0], [90.0, 91.0, 92.0])
    assert (same.t, same.p, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
    # a constant shift: scipy's t = inf, p = 0, even when float rounding leaves a spread of 1e-14
    a = np.array([0.9012, 0.9234, 0.9456]) * 100
    shifted = stats.paired_t(a, a * 1.0 - 2.0)
    assert shifted.t == math.inf and shifted.p == 0.0 and shifted.ci_low == pytest.approx(2.0)
    assert stats.paired_t(a - 2.0, a).t == -math.inf


# ------------------------------------------------------------------------------- bootstrap CI of a mean


def test_bootstrap_mean_ci_agrees_with_scipy_bootstrap():
    d = np.random.default_rng(3).normal(1.0, 2.0, 15)
    low, high = stats.bootstrap_mean_ci(d, n_boot=20000, seed=0)
    ref = sps.bootstrap((d,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(1)).confidence_interval
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert abs(low - ref.low) < 0.1 * se and abs(high - ref.high) < 0.1 * se
    assert low < d.mean() < high
    assert stats.bootstrap_mean_ci(d, n_boot=500, seed=4) == stats.bootstrap_mean_ci(d, n_boot=500, seed=4)
    narrow = stats.bootstrap_mean_ci(d, n_boot=20000, seed=0, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert stats.bootstrap_mean_ci([1.0]) is None


# ------------------------------------------------------------------------------- paired bootstrap


def _noisy(gold: np.ndarray, wrong: float, rng: np.random.Generator, seeds: int = 3) -> np.ndarray:
    flips = rng.random((seeds, len(gold))) < wrong
    return np.where(flips, 1 - gold, gold)


ACC = stats.score_fn("sst2")


def test_paired_bootstrap_of_identical_systems_gives_p_one():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 300)
    a = _noisy(gold, 0.2, rng)
    res = stats.paired_bootstrap(a, a.copy(), gold, ACC, n_boot=500)
    assert res.delta == 0.0 and res.p == 1.0 and res.ci_low == res.ci_high == 0.0
    assert (res.n_boot, res.n_seeds, res.n_examples) == (500, 3, 300)


def test_paired_bootstrap_of_a_system_better_on_every_example():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 200)
    good, bad = np.repeat(gold[None], 3, 0), _noisy(gold, 0.3, rng)
    res = stats.paired_bootstrap(good, bad, gold, ACC, n_boot=2000)
    assert res.p == pytest.approx(1 / 2001) and res.p < 0.01
    assert res.delta == pytest.approx(np.mean(1 - ACC(bad, gold))) and 0 < res.ci_low < res.delta < res.ci_high
    # the direction does not matter to a two-sided test
    assert stats.paired_bootstrap(bad, good, gold, ACC, n_boot=2000).p == res.p


def test_paired_bootstrap_is_reproducible_and_accepts_lists_of_seeds():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 2, 150)
    a, b = _noisy(gold, 0.2, rng), _noisy(gold, 0.25, rng)
    first = stats.paired_bootstrap(a, b, gold, ACC, n_boot=400, seed=7)
    assert stats.paired_bootstrap(list(a), list(b), gold.tolist(), ACC, n_boot=400, seed=7) == first
    assert stats.paired_bootstrap(a, b, gold, ACC, n_boot=400, seed=8) != first
    one_seed = stats.paired_bootstrap(a[0], b[0], gold, ACC, n_boot=100)  # a 1-D array is one seed
    assert one_seed.n_seeds == 1 and one_seed.delta == pytest.approx(ACC(a[0], gold) - ACC(b[0], gold))
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, b[:2], gold, ACC)
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, b, gold[:-1], ACC)


@pytest.mark.parametrize("chunk_elements", [stats._CHUNK_ELEMENTS, 1000])
def test_paired_bootstrap_equals_a_loop_over_replicates_with_sklearn(monkeypatch, chunk_elements):
    # the same draws, replicate by replicate: seeds and examples resampled, seed i of A paired with seed i of B
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 2, 60)
    a, b = _noisy(gold, 0.2, rng, 4), _noisy(gold, 0.3, rng, 4)
    a[0, :5] = -1  # answers that are no label: a class of their own
    n_boot = 300
    res = stats.paired_bootstrap(a, b, gold, stats.score_fn("cola"), n_boot=n_boot, seed=3)

    draws = np.random.default_rng(3)
    chunk = max(1, chunk_elements // (4 * 60))
    deltas = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        ex, sd = draws.integers(0, 60, (k, 60)), draws.integers(0, 4, (k, 4))
        for e, s in zip(ex, sd):
            deltas.append(np.mean([skm.matthews_corrcoef(gold[e], a[i, e]) - skm.matthews_corrcoef(gold[e], b[i, e])
                                   for i in s]))
    deltas = np.array(deltas)
    observed = np.mean([skm.matthews_corrcoef(gold, a[i]) - skm.matthews_corrcoef(gold, b[i]) for i in range(4)])
    assert res.delta == pytest.approx(observed, abs=1e-12)
    count = np.sum(np.abs(deltas - observed) >= abs(observed) - 1e-12)
    assert res.p == pytest.approx((count + 1) / (n_boot + 1))
    assert (res.ci_low, res.ci_high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-12)


# ------------------------------------------------------------------------------- task scores


def _with_invalid(pred: np.ndarray, rng: np.random.Generator, rate: float = 0.1) -> np.ndarray:
    return np.where(rng.random(pred.shape) < rate, -1, pred)


def _sk_f1(gold, pred, n):
    return skm.f1_score(gold, pred, labels=[1] if n == 2 else list(range(n)), average="macro", zero_division=0)


SKLEARN = {
    "accuracy": lambda g, p, n: skm.accuracy_score(g, p),
    "matthews": lambda g, p, n: skm.matthews_corrcoef(g, p),
    "f1": _sk_f1,
}


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "mnli", "files3"])
def test_classification_scores_match_sklearn_and_pdspace_metrics(task):
    spec = files_task("mine", "classification", "text", num_labels=3, metrics=("accuracy", "matthews", "f1")) \
        if task == "files3" else get_task(task)
    n = spec.num_labels
    rng = np.random.default_rng(len(task))
    gold = rng.integers(0, n, 500)
    pred = _with_invalid(np.where(rng.random(500) < 0.7, gold, rng.integers(0, n, 500)), rng)
    fn = stats.score_fn(spec)
    expected = np.mean([SKLEARN[m](gold, pred, n) for m in spec.metrics])
    assert fn(pred, gold) == pytest.approx(expected, abs=1e-12)
    # and as the run scored it (text-to-text metrics: -1 is a label of its own)
    metrics = make_metrics(spec, text_to_text=True)
    metrics.update(torch.tensor(pred), torch.tensor(gold))
    run = add_score(spec, {k: v.item() for k, v in metrics.compute().items()})[spec.objective]
    assert fn(pred, gold) == pytest.approx(run, abs=1e-5)
    for m in spec.metrics:
        assert stats.score_fn(spec, m)(pred, gold) == pytest.approx(SKLEARN[m](gold, pred, n), abs=1e-12)


@pytest.mark.parametrize("task", ["cola", "mrpc", "stsb"])
def test_scores_broadcast_over_leading_axes(task):
    spec = get_task(task)
    rng = np.random.default_rng(11)
    if spec.kind == "regression":
        gold = rng.uniform(0, 5, (4, 1, 80))
        pred = gold + rng.normal(0, 1, (4, 3, 80))
    else:
        gold = rng.integers(0, 2, (4, 1, 80))
        pred = _with_invalid(np.where(rng.random((4, 3, 80)) < 0.7, gold, 1 - gold), rng)
    fn = stats.score_fn(spec)
    batched = fn(pred, gold)
    assert batched.shape == (4, 3)
    assert batched == pytest.approx(np.array([[fn(pred[i, j], gold[i, 0]) for j in range(3)] for i in range(4)]))


def test_regression_scores_match_scipy_with_ties_and_constants():
    spec = get_task("stsb")
    rng = np.random.default_rng(4)
    gold = np.round(rng.uniform(0, 5, 300) / 0.2) * 0.2  # ties, as STS-B's gold scores have
    pred = np.round((gold + rng.normal(0, 1, 300)) / 0.2) * 0.2
    fn = stats.score_fn(spec)
    pearson, spearman = sps.pearsonr(pred, gold)[0], sps.spearmanr(pred, gold)[0]
    assert stats.score_fn(spec, "pearson")(pred, gold) == pytest.approx(pearson, abs=1e-12)
    assert stats.score_fn(spec, "spearman")(pred, gold) == pytest.approx(spearman, abs=1e-12)
    assert fn(pred, gold) == pytest.approx((pearson + spearman) / 2, abs=1e-12)
    # constant predictions have no correlation: 0, as pdspace's metrics report it, never NaN
    assert fn(np.full(300, 2.0), gold) == 0.0
    assert stats.score_fn("cola")(np.zeros(50, int), np.random.default_rng(0).integers(0, 2, 50)) == 0.0


def test_score_fn_refuses_what_it_cannot_score_per_example():
    with pytest.raises(ValueError, match="rougeL"):
        stats.score_fn("xsum")
    with pytest.raises(ValueError, match="pearson"):
        stats.score_fn("sst2", "pearson")


def test_marks():
    assert [stats.marks(p) for p in (None, math.nan, 0.0, 0.0099, 0.01, 0.0499, 0.05, 0.5)] == \
        ["", "", "**", "**", "*", "*", "", ""]


# ------------------------------------------------------------------------------- predictions.npz


def _write_predictions(tmp_path, pred_rows, result_extra=None, **arrays):
    gold = np.array([0, 1, 1, 0], dtype=np.int64)
    data = {"index": np.array([3, 0, 1, 2], dtype=np.int64), "gold": gold,
            "pred": np.array(pred_rows, dtype=np.int64), "epoch": np.arange(len(pred_rows), dtype=np.int64),
            "step": np.arange(len(pred_rows), dtype=np.int64) * 10 + 10, **arrays}
    np.savez(tmp_path / "predictions.npz", **data)
    per_epoch = [{"epoch": e, "step": 10 * e + 10, "accuracy": float(np.mean(np.array(r) == gold))}
                 for e, r in enumerate(pred_rows)]
    result = {"predictions": "predictions.npz", "objective": {"name": "accuracy"},
              "metrics": {"per_epoch": per_epoch, "best": max(per_epoch, key=lambda e: e["accuracy"])},
              **(result_extra or {})}
    return result


def test_load_predictions_takes_the_best_evaluation(tmp_path):
    rows = [[1, 1, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0]]
    result = _write_predictions(tmp_path, rows)
    for where in (tmp_path, tmp_path / "result.json"):
        index, gold, pred = stats.load_predictions(where, result)
        assert index.tolist() == [3, 0, 1, 2] and gold.tolist() == [0, 1, 1, 0] and pred.tolist() == rows[1]
    # without best's epoch/step: the first evaluation with the highest objective
    result["metrics"]["best"] = {"accuracy": 1.0}
    assert stats.load_predictions(tmp_path, result)[2].tolist() == rows[1]
    result["metrics"]["best"] = {"epoch": 2, "step": 30}
    assert stats.load_predictions(tmp_path, result)[2].tolist() == rows[2]


def test_load_predictions_returns_none_for_missing_or_bad_files(tmp_path):
    rows = [[1, 1, 1, 1], [0, 1, 1, 0]]
    result = _write_predictions(tmp_path, rows)
    assert stats.load_predictions(tmp_path, {**result, "predictions": None}) is None
    assert stats.load_predictions(tmp_path, {**result, "predictions": "other.npz"}) is None
    no_eval = {**result, "metrics": {"per_epoch": result["metrics"]["per_epoch"], "best": {"epoch": 5, "step": 1}}}
    assert stats.load_predictions(tmp_path, no_eval) is None
    (tmp_path / "predictions.npz").write_bytes(b"PK\x03\x04 garbled")
    assert stats.load_predictions(tmp_path, result) is None
    _write_predictions(tmp_path, rows, gold=np.array([0, 1, 1]))  # gold of the wrong length
    assert stats.load_predictions(tmp_path, result) is None
    _write_predictions(tmp_path, rows, epoch=np.array([0]))  # fewer evaluations than prediction rows
    assert stats.load_predictions(tmp_path, result) is None
    np.savez(tmp_path / "predictions.npz", index=np.arange(4), gold=np.zeros(4))  # no pred
    assert stats.load_predictions(tmp_path, result) is None
