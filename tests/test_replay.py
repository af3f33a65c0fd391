"""Design tables and the replay benchmark: collected curves, exact regret of random search on a hand-made table,
every strategy against the shipped table, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pdspace.bench import replay, table
from pdspace.bench.__main__ import main
from pdspace.design.space import Design

SHIPPED_V2 = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_sst2_table_v2.parquet"
SHIPPED = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_sst2_table.parquet"


def _row(design: Design, seed: int, curve: list[float], task: str = "toy") -> dict:
    return {"design_id": str(design), "grouping": "", "allocation": design.allocation, "tunable": "", "strategies": "",
            "task": task, "seed": seed, "backbone": "toy", "budget_fraction": 0.005, "trainable_params": 1,
            "fraction": 0.005, "objective": "accuracy", "curve": curve, "epochs": len(curve), "best": max(curve),
            "train_s_per_epoch": 1.0, "status": "completed", "method": "", "source": ""}


TOY = [Design([1, 1, 1, 1], "uniform", None, [s] * 4) for s in ("A", "P", "B", "L", "AL")]


def test_table_collects_sweeps_with_their_curves(launch, tmp_path):
    launch("backbone=tiny-bert", "task=synthetic_cls", "space=S0", "space.num_samples=2",
           "space.tasks=[synthetic_cls]", "trainer.max_epochs=2", "task.max_train_samples=32",
           "task.max_eval_samples=16", "data.batch_size=16", multirun=True)
    rows = table.collect([tmp_path / "sweep"])
    assert len(rows) == 2 and all(r["epochs"] == 2 and len(r["curve"]) == 2 for r in rows)
    assert all(r["best"] == max(r["curve"]) and r["train_s_per_epoch"] > 0 for r in rows)
    # no machine's paths: each source relative to the sweep dir's parent, or to --relative-to
    assert sorted(r["source"] for r in rows) == ["sweep/0/result.json", "sweep/1/result.json"]
    assert sorted(r["source"] for r in table.collect([tmp_path / "sweep"], tmp_path / "sweep")) == \
        ["0/result.json", "1/result.json"]
    # the best evaluation's per-example predictions, as predictions.npz holds them (16 dev examples)
    for r in rows:
        with np.load(tmp_path / Path(r["source"]).parent / "predictions.npz") as f:
            assert r["pred_index"] == f["index"].tolist() and r["gold"] == f["gold"].tolist()
            assert r["pred"] in f["pred"].tolist() and len(r["pred"]) == 16
    for suffix in ("parquet", "csv"):
        path = table.write(rows, tmp_path / f"t.{suffix}")
        back = table.read(path)
        assert [(r["design_id"], r["curve"], r["seed"], r["pred"], r["source"]) for r in back] == \
            [(r["design_id"], r["curve"], r["seed"], r["pred"], r["source"]) for r in rows]


def test_random_search_replayed_has_the_exact_regret_distribution():
    # five designs scoring 0.5 ... 0.9, one evaluation each: random search with 2 epochs keeps the better of
    # 2 designs drawn without replacement: regret 0 / 0.1 / 0.2 / 0.3 with probability 4/10, 3/10, 2/10, 1/10
    rows = [_row(d, 0, [0.5 + 0.1 * i]) for i, d in enumerate(TOY)]
    setup = replay.setup(rows)
    regrets = replay.replay(setup, ["random"], [2], repeats=2000, seed=7)["random"][2]
    freq = {r: sum(abs(x - r) < 1e-9 for x in regrets) / len(regrets) for r in (0.0, 0.1, 0.2, 0.3)}
    assert sum(freq.values()) == pytest.approx(1.0)
    for r, p in zip((0.0, 0.1, 0.2, 0.3), (0.4, 0.3, 0.2, 0.1)):
        assert freq[r] == pytest.approx(p, abs=0.035), freq
    assert sum(regrets) / len(regrets) == pytest.approx(0.1, abs=0.01)  # the exact expectation


def test_replay_is_deterministic_for_a_fixed_seed():
    rows = [_row(d, s, [0.4 + 0.1 * i + 0.01 * s, 0.5 + 0.1 * i]) for i, d in enumerate(TOY) for s in (0, 1)]
    setup = replay.setup(rows)
    strategies, budgets = ["greedy", "random", "tpe", "tpe+hyperband"], [4, 8]
    a = replay.replay(setup, strategies, budgets, repeats=3, seed=1)
    assert a == replay.replay(setup, strategies, budgets, repeats=3, seed=1)
    assert a == replay.replay(setup, strategies, budgets, repeats=3, seed=1, jobs=2)


@pytest.mark.skipif(not SHIPPED_V2.exists(), reason=f"{SHIPPED_V2} not recorded yet")
def test_the_v2_table_has_three_seeds_a_design_the_full_dev_set_and_no_machine_paths():
    rows = table.read(SHIPPED_V2)
    setup = replay.setup(rows)
    # 30 S0 designs, S4 and the four uniform baselines (a drawn S0 design may coincide with one of them)
    assert len(setup.recorded) >= 33 and setup.epochs == 3
    assert all(len(r.curves) == 3 for r in setup.recorded.values())
    assert {r["seed"] for r in rows} == {0, 1, 2}
    assert all(not r["source"].startswith("/") and ".." not in r["source"] for r in rows)
    # every run's per-example dev predictions: SST-2's 872 dev sentences, each run's the same examples
    assert all(len(r["pred"]) == len(r["gold"]) == 872 for r in rows)
    assert len({tuple(r["pred_index"]) for r in rows}) == 1


@pytest.mark.skipif(not SHIPPED.exists(), reason=f"{SHIPPED} not recorded yet")
def test_every_strategy_runs_against_the_shipped_table(tmp_path, capsys):
    rows = table.read(SHIPPED)
    setup = replay.setup(rows)
    assert len(setup.recorded) >= 60 and setup.epochs == 3
    main(["replay", str(SHIPPED), "--strategies", ",".join(replay.STRATEGIES), "--budgets", "12,24",
                           "--repeats", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # its regrets, the design it found, its normalised regrets and rank, and (all but random) its gap to random
    assert all(out.count(f"| {s} |") == 3 + (s != "random") for s in replay.STRATEGIES)
    assert (tmp_path / "replay.png").exists() and (tmp_path / "replay.md").exists()


def test_an_unknown_strategy_is_one_line(tmp_path, capsys):
    path = table.write([_row(d, 0, [0.5 + 0.1 * i]) for i, d in enumerate(TOY)], tmp_path / "t.csv")
    with pytest.raises(SystemExit, match="unknown strategy 'bohb'.*tpe\\+hyperband"):
        main(["replay", str(path), "--strategies", "random,bohb", "--repeats", "1"])


def test_replay_cli_prints_regrets_and_found_designs(tmp_path, capsys):
    path = table.write([_row(d, 0, [0.5 + 0.1 * i]) for i, d in enumerate(TOY)], tmp_path / "t.csv")
    main(["replay", str(path), "--strategies", "random,greedy", "--budgets", "1,5", "--repeats", "4", "--jobs", "1",
          "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    # with every design's single epoch spent, random search has found the best one: regret 0, and it says which
    assert "| random | " in out and f"| random | `{TOY[-1]}` | 100% | 0.9000 |" in out
    assert (tmp_path / "out" / "replay.png").stat().st_size > 0


def test_a_strategy_that_cannot_stay_within_a_budget_has_no_result_there():
    # greedy trains at least one design per stage (3 + G = 7 stages of 2 epochs here): 4 epochs cannot pay for it
    rows = [_row(d, 0, [0.4 + 0.1 * i, 0.5 + 0.1 * i]) for i, d in enumerate(TOY)]
    regrets = replay.replay(replay.setup(rows), ["greedy", "random"], [4, 64], repeats=2, seed=0)
    assert regrets["greedy"][4] == [] and len(regrets["greedy"][64]) == 2
    assert len(regrets["random"][4]) == 2  # two designs of 2 epochs
    assert "– (over budget)" in replay.markdown(regrets, [4, 64], 0.01)


def test_the_strategies_are_the_searches_and_the_study_searches_with_a_pruner():
    from pdspace.search import study
    from pdspace.search.engine import PRUNERS, SEARCHES

    assert replay.STRATEGIES[:len(SEARCHES)] == SEARCHES
    assert set(replay.STRATEGIES[len(SEARCHES):]) == {f"{s}+{p}" for s in study.SEARCHES for p in PRUNERS[1:]}
    assert all(s in replay.STRATEGIES for s in replay.DEFAULT_STRATEGIES.split(","))
    assert replay.parse_strategy("tpe+hyperband") == ("tpe", "hyperband")
    assert replay.parse_strategy("random+none") == ("random", "none")
    for bad in ("greedy+hyperband", "greedy+none", "tpe+bohb", "bohb"):
        with pytest.raises(SystemExit, match=re.escape(f"unknown strategy '{bad}'; use greedy, random, or a sampler")):
            replay.parse_strategy(bad)


def test_bootstrap_intervals_agree_with_scipy():
    from scipy import stats as sps

    from pdspace.bench import replay_report as rr

    x = np.random.default_rng(3).normal(0.2, 0.05, 200)
    mean, lo, hi = rr.mean_ci(x, np.random.default_rng(0), boot=4000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert mean == pytest.approx(x.mean()) and lo < mean < hi
    assert lo == pytest.approx(ref.low, abs=0.002) and hi == pytest.approx(ref.high, abs=0.002)
    assert rr.mean_ci([0.3] * 5, np.random.default_rng(0)) == pytest.approx((0.3, 0.3, 0.3))


def test_ranks_share_ties_as_scipy_ranks_them():
    from scipy import stats as sps

    from pdspace.bench import replay_report as rr

    means = np.random.default_rng(0).integers(0, 4, size=(50, 6)).astype(float)  # many ties
    assert np.array_equal(rr._rank_rows(means), np.vstack([sps.rankdata(row) for row in means]))


def test_average_ranks_and_the_comparison_with_random_by_hand():
    from pdspace.bench import replay_report as rr

    # a: always 0.1, b: always 0.3 of the range, c: 0.1 at 8 epochs (tied with a: 1.5 each) and 0.5 at 16:
    # ranks a (1.5 + 1) / 2, b (3 + 2) / 2, c (1.5 + 3) / 2
    norm = {"t": {"a": {8: [0.1] * 4, 16: [0.1] * 4}, "b": {8: [0.3] * 4, 16: [0.3] * 4},
                  "c": {8: [0.1] * 4, 16: [0.5] * 4}}}
    ranks = rr.average_ranks(norm)
    assert {k: v[0] for k, v in ranks.items()} == {"a": 1.25, "b": 2.5, "c": 2.25}
    assert ranks["a"] == (1.25, 1.25, 1.25)  # no noise, no interval
    vs = rr.versus(norm, "b", {"t": 16})
    assert vs["a"] == pytest.approx((-0.2, -0.2, -0.2)) and vs["c"] == pytest.approx((0.2, 0.2, 0.2))
    text = rr.versus_markdown(vs, "b", "t at 16 epochs")
    assert "| a | -20.0 [-20.0, -20.0] | better |" in text and "| c | +20.0 [+20.0, +20.0] | worse |" in text
    assert rr.normalise({"a": {8: [0.02, 0.04]}}, 0.2)["a"][8] == pytest.approx([0.1, 0.2])


def test_the_confirmation_stage_is_paid_from_the_budget_and_picks_by_the_retrained_mean():
    # five designs, one deterministic curve each (0.5 ... 0.9, 2 epochs): confirming the top 2 over 2 seeds
    # costs 2 x 2 x 2 = 8 epochs, so a budget of 18 leaves the search 10 (all five designs) and it returns the best
    rows = [_row(d, 0, [0.4 + 0.1 * i, 0.5 + 0.1 * i]) for i, d in enumerate(TOY)]
    s = replay.setup(rows)
    out = replay.replay_once(s, "random+confirm", [8, 18], seed=0, confirm_k=2, confirm_seeds=2)
    assert 8 not in out  # nothing is left for the search itself
    regret, spent, design = out[18]
    assert (regret, spent, design) == (0.0, 18, str(TOY[-1]))
    plain = replay.replay_once(s, "random", [10], seed=0)
    assert plain[10][1] == 10 and plain[10][2] == design


def test_replay_writes_one_csv_row_per_repeat_and_budget(tmp_path, capsys):
    import csv

    rows = [_row(d, s, [0.4 + 0.1 * i + 0.01 * s, 0.5 + 0.1 * i]) for i, d in enumerate(TOY) for s in (0, 1)]
    path = table.write(rows, tmp_path / "t.csv")
    main(["replay", str(path), "--strategies", "random,tpe+median,random+confirm", "--budgets", "4,30",
          "--repeats", "3", "--jobs", "1", "--confirm-k", "2", "--confirm-seeds", "1", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "average rank [95 % CI]" in out and "minus random's" in out
    with (tmp_path / "o" / "replay.csv").open() as f:
        got = list(csv.DictReader(f))
    # random and tpe+median at both budgets, random+confirm only at 30 (its confirmation costs 2 x 1 x 2 = 4)
    assert len(got) == 3 * (2 + 2 + 1)
    assert {(r["strategy"], r["budget"]) for r in got} == {("random", "4"), ("random", "30"), ("tpe+median", "4"),
                                                          ("tpe+median", "30"), ("random+confirm", "30")}
    # design means 0.5 ... 0.9 (each seed's best evaluation): a range of 0.4
    assert all(float(r["normalised_regret"]) == pytest.approx(float(r["regret"]) / 0.4) for r in got)
    assert (tmp_path / "o" / "replay.png").stat().st_size > 0


def test_a_study_replayed_tries_each_recorded_design_once_before_repeating_one():
    # five designs of one epoch each: 5 trials of a TPE study see all five (its suggestions, projected onto the
    # table, would otherwise collide on the nearest few), and a sixth repeats one
    rows = [_row(d, 0, [0.5 + 0.1 * i]) for i, d in enumerate(TOY)]
    s = replay.setup(rows)
    found, _, spent = replay.run_study(s, "tpe", "none", [5], seed=0)[5]
    assert spent == 5 and sorted(r["design_id"] for r in found) == sorted(map(str, TOY))
    found6, _, _ = replay.run_study(s, "tpe", "none", [6], seed=0)[6]
    assert len(found6) == 6 and len({r["design_id"] for r in found6}) == 5
