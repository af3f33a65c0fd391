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


@pytest.mark.skipif(not SHIPPED.exists(), reason=f"{SHIPPED} not recorded yet")
def test_every_strategy_runs_against_the_shipped_table(tmp_path, capsys):
    rows = table.read(SHIPPED)
    setup = replay.setup(rows)
    assert len(setup.recorded) >= 60 and setup.epochs == 3
    main(["replay", str(SHIPPED), "--strategies", ",".join(replay.STRATEGIES), "--budgets", "12,24",
                           "--repeats", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert all(out.count(f"| {s} |") == 2 for s in replay.STRATEGIES)  # its regrets and the design it found
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
